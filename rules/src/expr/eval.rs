//! Evaluation of compiled programs straight against a bag.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use super::compile::{ArithOp, CmpOp, EqKind, Func, Op, Program, is_lookup};
use super::functions::{dns_eq, email_eq, glob_match, ip_eq, parse_ip, uri_eq, valid_dns_name, valid_email, valid_uri};
use crate::bag::{Bag, Referenced};
use crate::value::{Duration, OwnedValue, Timestamp, Value, parse_duration, parse_timestamp};

/// Why an evaluation produced no value. `Absent` is what `a | b` recovers from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("attribute {0} is absent")]
    Absent(Arc<str>),
    #[error("key {key:?} is absent from {map}")]
    AbsentKey { map: String, key: String },
    #[error("{0}")]
    Invalid(String),
}

/// Outputs of check actions, for header operations (`ACTION.output.FIELD`).
pub type Outputs = HashMap<String, HashMap<String, String>>;

/// Outputs of an attribute-generating adapter, for attribute bindings (`$out.FIELD`): only
/// the fields the adapter set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GeneratedValues {
    fields: Vec<(&'static str, OwnedValue)>,
}

impl GeneratedValues {
    pub fn new() -> GeneratedValues {
        GeneratedValues::default()
    }

    pub fn set(&mut self, field: &'static str, value: OwnedValue) {
        match self.fields.iter_mut().find(|(f, _)| *f == field) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((field, value)),
        }
    }

    pub fn get(&self, field: &str) -> Option<&OwnedValue> {
        self.fields.iter().find(|(f, _)| *f == field).map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &OwnedValue)> {
        self.fields.iter().map(|(f, v)| (*f, v))
    }
}

struct Ctx<'s, 'o> {
    bag: &'s Bag<'s>,
    /// Outputs live for one call only, shorter than the bag: values read from them are
    /// copied out.
    outputs: Option<&'o Outputs>,
    generated: Option<&'o GeneratedValues>,
}

impl Program {
    /// Evaluates against `bag`, recording every attribute looked at in `refs`.
    pub fn eval<'s>(&'s self, bag: &'s Bag<'s>, refs: &mut Referenced<'s>) -> Result<Value<'s>, EvalError> {
        eval(&self.op, &Ctx { bag, outputs: None, generated: None }, refs)
    }

    /// Like [`Program::eval`], with check action outputs in scope.
    pub fn eval_with_outputs<'s>(
        &'s self,
        bag: &'s Bag<'s>,
        outputs: &Outputs,
        refs: &mut Referenced<'s>,
    ) -> Result<Value<'s>, EvalError> {
        eval(&self.op, &Ctx { bag, outputs: Some(outputs), generated: None }, refs)
    }

    /// Like [`Program::eval`], with an attribute generator's outputs in scope (`$out`).
    pub fn eval_generated<'s>(
        &'s self,
        bag: &'s Bag<'s>,
        generated: &GeneratedValues,
        refs: &mut Referenced<'s>,
    ) -> Result<Value<'s>, EvalError> {
        eval(&self.op, &Ctx { bag, outputs: None, generated: Some(generated) }, refs)
    }

    /// Evaluates a boolean program (a rule's match).
    pub fn eval_bool<'s>(&'s self, bag: &'s Bag<'s>, refs: &mut Referenced<'s>) -> Result<bool, EvalError> {
        match self.eval(bag, refs)? {
            Value::Bool(b) => Ok(b),
            other => Err(type_error("BOOL", &other)),
        }
    }
}

fn type_error(want: &str, got: &Value<'_>) -> EvalError {
    EvalError::Invalid(format!("expected {want}, found {got:?}"))
}

/// Evaluates a lookup (an attribute, a map entry, an output, or a default chain ending in
/// one): `Ok(None)` when what it reads is absent, which `|` and `has()` recover from. Any
/// other failure, including an absent attribute deeper inside (a map's computed key), is
/// an error.
fn lookup<'s>(op: &'s Op, ctx: &Ctx<'s, '_>, refs: &mut Referenced<'s>) -> Result<Option<Value<'s>>, EvalError> {
    match op {
        Op::Attr(name) => {
            let v = ctx.bag.get(name);
            refs.attribute(name, v.is_some());
            Ok(v.map(Value::reborrow))
        }
        Op::MapKey { .. } | Op::Index(..) => match map_entry(op, ctx, refs)? {
            Entry::Found(v) => Ok(Some(v)),
            Entry::MissingKey | Entry::AbsentMap(_) => Ok(None),
        },
        Op::Output { action, field } => Ok(ctx
            .outputs
            .and_then(|o| o.get(action.as_ref()))
            .and_then(|fields| fields.get(field.as_ref()))
            .map(|v| Value::String(Cow::Owned(v.clone())))),
        Op::Generated(field) => Ok(ctx.generated.and_then(|g| g.get(field)).map(|v| v.clone().into_owned())),
        Op::Default(first, rest) => match lookup(first, ctx, refs)? {
            Some(v) => Ok(Some(v)),
            None if is_lookup(rest) => lookup(rest, ctx, refs),
            None => eval(rest, ctx, refs).map(Some),
        },
        other => eval(other, ctx, refs).map(Some),
    }
}

/// What a map-entry lookup (`m["k"]`, `m.k`) found.
enum Entry<'s> {
    Found(Value<'s>),
    MissingKey,
    /// The map itself is absent; the error to give when nothing recovers from it.
    AbsentMap(EvalError),
}

fn map_entry<'s>(op: &'s Op, ctx: &Ctx<'s, '_>, refs: &mut Referenced<'s>) -> Result<Entry<'s>, EvalError> {
    let (map, key): (&'s Op, Cow<'s, str>) = match op {
        Op::MapKey { attr, key } => {
            return Ok(match ctx.bag.get(attr) {
                Some(Value::StringMap(m)) => {
                    let v = m.get(key);
                    refs.map_key(attr, Cow::Borrowed(key), v.is_some());
                    v.map_or(Entry::MissingKey, |v| Entry::Found(Value::String(Cow::Borrowed(v))))
                }
                Some(other) => {
                    refs.attribute(attr, true);
                    return Err(type_error("STRING_MAP", other));
                }
                None => {
                    refs.attribute(attr, false);
                    Entry::AbsentMap(EvalError::Absent(attr.clone()))
                }
            });
        }
        Op::Index(map, key) => {
            // The key is not a lookup `|` recovers from: its absence is an error.
            let key = eval(key, ctx, refs)?;
            (map.as_ref(), Cow::Owned(str_of(&key)?.to_string()))
        }
        _ => return Err(EvalError::Invalid("not a map lookup".into())),
    };
    // A computed key on an attribute map records the key it used.
    if let Op::Attr(attr) = map {
        return Ok(match ctx.bag.get(attr) {
            Some(Value::StringMap(m)) => {
                let found = m.get(&key);
                let entry = found.map_or(Entry::MissingKey, |v| Entry::Found(Value::String(Cow::Borrowed(v))));
                refs.map_key(attr, key, matches!(entry, Entry::Found(_)));
                entry
            }
            Some(other) => return Err(type_error("STRING_MAP", other)),
            None => {
                refs.attribute(attr, false);
                Entry::AbsentMap(EvalError::Absent(attr.clone()))
            }
        });
    }
    let map = if is_lookup(map) {
        match lookup(map, ctx, refs)? {
            Some(m) => m,
            None => return Ok(Entry::AbsentMap(EvalError::Invalid("the indexed map is absent".into()))),
        }
    } else {
        eval(map, ctx, refs)?
    };
    match map {
        Value::StringMap(m) => {
            Ok(m.get(&key).map_or(Entry::MissingKey, |v| Entry::Found(Value::String(Cow::Owned(v.to_string())))))
        }
        other => Err(type_error("STRING_MAP", &other)),
    }
}

fn eval<'s>(op: &'s Op, ctx: &Ctx<'s, '_>, refs: &mut Referenced<'s>) -> Result<Value<'s>, EvalError> {
    match op {
        Op::Const(v) => Ok(v.reborrow()),
        Op::Attr(name) => match ctx.bag.get(name) {
            Some(v) => {
                refs.attribute(name, true);
                Ok(v.reborrow())
            }
            None => {
                refs.attribute(name, false);
                Err(EvalError::Absent(name.clone()))
            }
        },
        // Mixer read a missing key of a present map as "": `request.headers["x"] != "a"`
        // holds when the header is absent. An absent map stays an error.
        Op::MapKey { .. } | Op::Index(..) => match map_entry(op, ctx, refs)? {
            Entry::Found(v) => Ok(v),
            Entry::MissingKey => Ok(Value::String(Cow::Borrowed(""))),
            Entry::AbsentMap(e) => Err(e),
        },
        Op::Output { action, field } => lookup(op, ctx, refs)?
            .ok_or_else(|| EvalError::AbsentKey { map: format!("{action}.output"), key: field.to_string() }),
        Op::Generated(field) => {
            lookup(op, ctx, refs)?.ok_or_else(|| EvalError::AbsentKey { map: "$out".into(), key: field.to_string() })
        }
        Op::Has(inner) => Ok(Value::Bool(lookup(inner, ctx, refs)?.is_some())),
        Op::Default(first, rest) => match lookup(first, ctx, refs)? {
            Some(v) => Ok(v),
            None => eval(rest, ctx, refs),
        },
        Op::All(terms) => {
            for t in terms {
                if !bool_of(eval(t, ctx, refs)?)? {
                    return Ok(Value::Bool(false));
                }
            }
            Ok(Value::Bool(true))
        }
        Op::Any(terms) => {
            for t in terms {
                if bool_of(eval(t, ctx, refs)?)? {
                    return Ok(Value::Bool(true));
                }
            }
            Ok(Value::Bool(false))
        }
        Op::Not(a) => Ok(Value::Bool(!bool_of(eval(a, ctx, refs)?)?)),
        Op::Eq(a, b, kind) => {
            let (x, y) = (eval(a, ctx, refs)?, eval(b, ctx, refs)?);
            Ok(Value::Bool(equal(&x, &y, *kind)?))
        }
        Op::Ne(a, b, kind) => {
            let (x, y) = (eval(a, ctx, refs)?, eval(b, ctx, refs)?);
            Ok(Value::Bool(!equal(&x, &y, *kind)?))
        }
        Op::Cmp(cmp, a, b) => {
            let (x, y) = (eval(a, ctx, refs)?, eval(b, ctx, refs)?);
            let ord = order(&x, &y)?;
            Ok(Value::Bool(match cmp {
                CmpOp::Lt => ord.is_lt(),
                CmpOp::Le => ord.is_le(),
                CmpOp::Gt => ord.is_gt(),
                CmpOp::Ge => ord.is_ge(),
            }))
        }
        Op::Arith(aop, a, b) => {
            let (x, y) = (eval(a, ctx, refs)?, eval(b, ctx, refs)?);
            arith(*aop, x, y)
        }
        Op::Neg(a) => match eval(a, ctx, refs)? {
            Value::Int64(i) => {
                i.checked_neg().map(Value::Int64).ok_or_else(|| EvalError::Invalid("integer overflow".into()))
            }
            Value::Double(d) => Ok(Value::Double(-d)),
            Value::Duration(d) => Ok(Value::Duration(Duration::from_nanos(-d.as_nanos()))),
            other => Err(type_error("a number", &other)),
        },
        Op::Ternary(c, a, b) => {
            if bool_of(eval(c, ctx, refs)?)? {
                eval(a, ctx, refs)
            } else {
                eval(b, ctx, refs)
            }
        }
        Op::Matches(re, subject) => {
            let s = eval(subject, ctx, refs)?;
            Ok(Value::Bool(re.is_match(str_of(&s)?)))
        }
        Op::MatchesDynamic { pattern, subject, cache } => {
            let p = eval(pattern, ctx, refs)?;
            let s = eval(subject, ctx, refs)?;
            let re = cache.get(str_of(&p)?).map_err(EvalError::Invalid)?;
            Ok(Value::Bool(re.is_match(str_of(&s)?)))
        }
        Op::Call(f, args) => call(*f, args, ctx, refs),
    }
}

fn bool_of(v: Value<'_>) -> Result<bool, EvalError> {
    match v {
        Value::Bool(b) => Ok(b),
        other => Err(type_error("BOOL", &other)),
    }
}

fn str_of<'v>(v: &'v Value<'_>) -> Result<&'v str, EvalError> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(type_error("STRING", other)),
    }
}

fn as_f64(v: &Value<'_>) -> Option<f64> {
    match v {
        Value::Int64(i) => Some(*i as f64),
        Value::Double(d) => Some(*d),
        _ => None,
    }
}

fn equal<'v>(x: &Value<'v>, y: &Value<'v>, kind: EqKind) -> Result<bool, EvalError> {
    let unparsable = |what: &str| EvalError::Invalid(format!("cannot compare {x:?} and {y:?}: not both valid {what}"));
    Ok(match (kind, x, y) {
        (EqKind::Dns, Value::String(a), Value::String(b)) => dns_eq(a, b),
        (EqKind::Email, Value::String(a), Value::String(b)) => {
            email_eq(a, b).ok_or_else(|| unparsable("email addresses"))?
        }
        (EqKind::Uri, Value::String(a), Value::String(b)) => uri_eq(a, b).ok_or_else(|| unparsable("URIs"))?,
        (EqKind::Ip, Value::Bytes(a), Value::Bytes(b)) => ip_eq(a, b),
        _ => x == y,
    })
}

fn order(x: &Value<'_>, y: &Value<'_>) -> Result<std::cmp::Ordering, EvalError> {
    let ord = match (x, y) {
        (Value::Int64(a), Value::Int64(b)) => Some(a.cmp(b)),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Timestamp(a), Value::Timestamp(b)) => Some(a.cmp(b)),
        (Value::Duration(a), Value::Duration(b)) => Some(a.cmp(b)),
        (a, b) => match (as_f64(a), as_f64(b)) {
            (Some(a), Some(b)) => a.partial_cmp(&b),
            _ => None,
        },
    };
    ord.ok_or_else(|| EvalError::Invalid(format!("cannot order {x:?} and {y:?}")))
}

fn arith<'s>(op: ArithOp, x: Value<'s>, y: Value<'s>) -> Result<Value<'s>, EvalError> {
    let overflow = || EvalError::Invalid("integer overflow or division by zero".into());
    Ok(match (op, x, y) {
        (ArithOp::Add, Value::String(a), Value::String(b)) => Value::String(Cow::Owned(format!("{a}{b}"))),
        (op, Value::Int64(a), Value::Int64(b)) => Value::Int64(
            match op {
                ArithOp::Add => a.checked_add(b),
                ArithOp::Sub => a.checked_sub(b),
                ArithOp::Mul => a.checked_mul(b),
                ArithOp::Div => a.checked_div(b),
                ArithOp::Rem => a.checked_rem(b),
            }
            .ok_or_else(overflow)?,
        ),
        (op, Value::Duration(a), Value::Duration(b)) => Value::Duration(Duration::from_nanos(match op {
            ArithOp::Add => a.as_nanos() + b.as_nanos(),
            _ => a.as_nanos() - b.as_nanos(),
        })),
        (op, Value::Timestamp(t), Value::Duration(d)) => {
            let base = t.seconds as i128 * 1_000_000_000 + t.nanos as i128;
            let n = if op == ArithOp::Add { base + d.as_nanos() } else { base - d.as_nanos() };
            Value::Timestamp(Timestamp {
                seconds: n.div_euclid(1_000_000_000) as i64,
                nanos: n.rem_euclid(1_000_000_000) as i32,
            })
        }
        (_, Value::Timestamp(a), Value::Timestamp(b)) => {
            let n = (a.seconds as i128 - b.seconds as i128) * 1_000_000_000 + (a.nanos - b.nanos) as i128;
            Value::Duration(Duration::from_nanos(n))
        }
        (op, a, b) => {
            let (Some(a), Some(b)) = (as_f64(&a), as_f64(&b)) else {
                return Err(EvalError::Invalid(format!("cannot apply {op:?} to {a:?} and {b:?}")));
            };
            Value::Double(match op {
                ArithOp::Add => a + b,
                ArithOp::Sub => a - b,
                ArithOp::Mul => a * b,
                ArithOp::Div => a / b,
                ArithOp::Rem => a % b,
            })
        }
    })
}

fn call<'s>(f: Func, args: &'s [Op], ctx: &Ctx<'s, '_>, refs: &mut Referenced<'s>) -> Result<Value<'s>, EvalError> {
    let mut vals = Vec::with_capacity(args.len());
    for a in args {
        vals.push(eval(a, ctx, refs)?);
    }
    let invalid = |what: &str, v: &Value<'_>| EvalError::Invalid(format!("{v:?} is not a valid {what}"));
    Ok(match f {
        Func::Glob => Value::Bool(glob_match(str_of(&vals[0])?, str_of(&vals[1])?)),
        Func::StartsWith => Value::Bool(str_of(&vals[0])?.starts_with(str_of(&vals[1])?)),
        Func::EndsWith => Value::Bool(str_of(&vals[0])?.ends_with(str_of(&vals[1])?)),
        Func::Contains => Value::Bool(str_of(&vals[0])?.contains(str_of(&vals[1])?)),
        Func::ToLower => {
            let s = str_of(&vals[0])?;
            if s.bytes().any(|b| b.is_ascii_uppercase()) || !s.is_ascii() {
                Value::String(Cow::Owned(s.to_lowercase()))
            } else {
                vals.swap_remove(0)
            }
        }
        Func::Size => match &vals[0] {
            Value::String(s) => Value::Int64(s.chars().count() as i64),
            Value::StringMap(m) => Value::Int64(m.len() as i64),
            other => return Err(type_error("STRING or STRING_MAP", other)),
        },
        Func::Ip => {
            let v = &vals[0];
            Value::Bytes(parse_ip(str_of(v)?).ok_or_else(|| invalid("ip", v))?.into())
        }
        Func::Timestamp => {
            let v = &vals[0];
            Value::Timestamp(parse_timestamp(str_of(v)?).ok_or_else(|| invalid("timestamp", v))?)
        }
        Func::Duration => {
            let v = &vals[0];
            Value::Duration(parse_duration(str_of(v)?).ok_or_else(|| invalid("duration", v))?)
        }
        Func::DnsName | Func::Email | Func::Uri => {
            let v = vals.swap_remove(0);
            let (ok, what) = match f {
                Func::DnsName => (valid_dns_name(str_of(&v)?), "DNS name"),
                Func::Email => (valid_email(str_of(&v)?), "email address"),
                _ => (valid_uri(str_of(&v)?), "URI"),
            };
            if !ok {
                return Err(invalid(what, &v));
            }
            v
        }
        Func::ToString => match &vals[0] {
            Value::String(_) => vals.swap_remove(0),
            other => Value::String(Cow::Owned(other.to_text())),
        },
        Func::ToInt => match &vals[0] {
            Value::Int64(i) => Value::Int64(*i),
            Value::Double(d) => Value::Int64(*d as i64),
            v @ Value::String(s) => Value::Int64(s.trim().parse().map_err(|_| invalid("int", v))?),
            other => return Err(type_error("a number", other)),
        },
        Func::ToDouble => match &vals[0] {
            Value::Int64(i) => Value::Double(*i as f64),
            Value::Double(d) => Value::Double(*d),
            v @ Value::String(s) => Value::Double(s.trim().parse().map_err(|_| invalid("double", v))?),
            other => return Err(type_error("a number", other)),
        },
    })
}
