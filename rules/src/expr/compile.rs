//! Type-checking compiler from syntax tree to [`Program`].

use std::sync::Arc;

use regex::Regex;

use super::ExprError;
use super::functions::{parse_ip, valid_dns_name, valid_email, valid_uri};
use super::parse::{Ast, BinaryOp, Node, UnaryOp, parse};
use super::regex_cache::RegexCache;
use crate::manifest::Manifest;
use crate::value::{MapVal, OwnedValue, StringMap, Value, ValueType, parse_duration, parse_timestamp};

/// What the compiler may resolve names against.
#[derive(Debug, Clone, Copy)]
pub struct CompileOptions<'m> {
    pub manifest: &'m Manifest,
    /// Names of check actions whose outputs may be read as `NAME.output.FIELD`.
    pub actions: &'m [String],
    /// Output fields of an attribute-generating template, read as `$out.FIELD`.
    pub generated: &'m [(&'static str, ValueType)],
}

impl<'m> CompileOptions<'m> {
    /// Names resolve against `manifest` only.
    pub fn new(manifest: &'m Manifest) -> CompileOptions<'m> {
        CompileOptions { manifest, actions: &[], generated: &[] }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EqKind {
    Exact,
    Dns,
    Email,
    Uri,
    Ip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Glob,
    StartsWith,
    EndsWith,
    Contains,
    ToLower,
    Size,
    Ip,
    Timestamp,
    DnsName,
    Email,
    Uri,
    Duration,
    ToString,
    ToInt,
    ToDouble,
}

/// Compiled expression tree. Names are `Arc<str>` so an absent-attribute error is cheap.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Const(OwnedValue),
    Attr(Arc<str>),
    MapKey {
        attr: Arc<str>,
        key: Arc<str>,
    },
    Index(Box<Op>, Box<Op>),
    Output {
        action: Arc<str>,
        field: Arc<str>,
    },
    /// `$out.FIELD`: an output of the attribute generator being bound.
    Generated(&'static str),
    Has(Box<Op>),
    /// `a | b`; `a` is always a lookup (see [`is_lookup`]): another left operand cannot be
    /// absent, so the default would be dead and is compiled away.
    Default(Box<Op>, Box<Op>),
    /// `&&` and `||` chains, flat: evaluated left to right, short-circuiting.
    All(Vec<Op>),
    Any(Vec<Op>),
    Not(Box<Op>),
    Eq(Box<Op>, Box<Op>, EqKind),
    Ne(Box<Op>, Box<Op>, EqKind),
    Cmp(CmpOp, Box<Op>, Box<Op>),
    Arith(ArithOp, Box<Op>, Box<Op>),
    Neg(Box<Op>),
    Ternary(Box<Op>, Box<Op>, Box<Op>),
    Matches(Arc<Regex>, Box<Op>),
    /// A pattern known only per request, compiled on first use through a bounded cache.
    MatchesDynamic {
        pattern: Box<Op>,
        subject: Box<Op>,
        cache: Arc<RegexCache>,
    },
    Call(Func, Vec<Op>),
}

/// A compiled, type-checked expression.
#[derive(Debug, Clone)]
pub struct Program {
    pub(crate) op: Op,
    ty: ValueType,
    text: String,
}

/// What an equality test in a rule's match compares: an attribute or one key of a map.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexKey {
    pub attr: Arc<str>,
    pub map_key: Option<Arc<str>>,
}

impl Program {
    pub fn ty(&self) -> ValueType {
        self.ty
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// A program that always yields `value` (an empty match is `true`).
    pub fn constant(value: OwnedValue, ty: ValueType) -> Program {
        let text = value.to_text();
        Program { op: Op::Const(value), ty, text }
    }

    /// Whether this program is the constant `true` (an always-matching rule).
    pub fn is_always_true(&self) -> bool {
        matches!(self.op, Op::Const(Value::Bool(true)))
    }

    /// The `ATTR == "literal"` tests that must all hold for this (boolean) program to be
    /// true: the conjuncts of its top-level `&&` chain. Used to index rules.
    pub fn required_equalities(&self) -> Vec<(IndexKey, String)> {
        let mut out = Vec::new();
        collect_equalities(&self.op, &mut out);
        out
    }
}

fn collect_equalities(op: &Op, out: &mut Vec<(IndexKey, String)>) {
    match op {
        Op::All(terms) => {
            for t in terms {
                collect_equalities(t, out);
            }
        }
        Op::Eq(a, b, EqKind::Exact) => {
            let (lhs, rhs) = match (a.as_ref(), b.as_ref()) {
                (Op::Const(Value::String(s)), other) | (other, Op::Const(Value::String(s))) => (other, s),
                _ => return,
            };
            let key = match lhs {
                Op::Attr(name) => IndexKey { attr: name.clone(), map_key: None },
                Op::MapKey { attr, key } => IndexKey { attr: attr.clone(), map_key: Some(key.clone()) },
                _ => return,
            };
            out.push((key, rhs.to_string()));
        }
        _ => {}
    }
}

/// Compiles `text`; with `expected`, the result must have that type.
pub fn compile(text: &str, expected: Option<ValueType>, opts: CompileOptions<'_>) -> Result<Program, ExprError> {
    let ast = parse(text)?;
    let (op, ty) = Compiler { opts }.node(&ast)?;
    if let Some(want) = expected
        && !assignable(ty, want)
    {
        return Err(ExprError::new(0, format!("expression has type {ty}, expected {want}")));
    }
    Ok(Program { op, ty, text: text.to_string() })
}

/// A value of type `have` may be used where `want` is expected (typed strings accept
/// plain strings: a `DNS_NAME` field may be fed from a `STRING` attribute).
pub fn assignable(have: ValueType, want: ValueType) -> bool {
    have == want || (have.is_stringy() && want.is_stringy())
}

struct Compiler<'m> {
    opts: CompileOptions<'m>,
}

type Typed = (Op, ValueType);

fn dotted(node: &Node) -> Option<String> {
    match &node.ast {
        Ast::Ident(s) => Some(s.clone()),
        Ast::Select(t, f) => dotted(t).map(|p| format!("{p}.{f}")),
        _ => None,
    }
}

impl Compiler<'_> {
    fn node(&self, n: &Node) -> Result<Typed, ExprError> {
        match &n.ast {
            Ast::Str(s) => Ok((Op::Const(Value::String(s.clone().into())), ValueType::String)),
            Ast::Int(i) => Ok((Op::Const(Value::Int64(*i)), ValueType::Int64)),
            Ast::Double(d) => Ok((Op::Const(Value::Double(*d)), ValueType::Double)),
            Ast::Bool(b) => Ok((Op::Const(Value::Bool(*b)), ValueType::Bool)),
            Ast::Ident(_) | Ast::Select(..) => self.name(n),
            Ast::Index(target, key) => self.index(target, key),
            Ast::Call { target, name, args } => self.call(n.pos, target.as_deref(), name, args),
            Ast::Unary(UnaryOp::Not, x) => {
                let op = self.expect(x, ValueType::Bool)?;
                Ok((Op::Not(Box::new(op)), ValueType::Bool))
            }
            Ast::Unary(UnaryOp::Neg, x) => {
                let (op, ty) = self.node(x)?;
                if !matches!(ty, ValueType::Int64 | ValueType::Double | ValueType::Duration) {
                    return Err(ExprError::new(x.pos, format!("cannot negate {ty}")));
                }
                Ok((Op::Neg(Box::new(op)), ty))
            }
            Ast::Binary(op, a, b) => self.binary(*op, a, b),
            Ast::Logical(op, terms) => {
                let ops = terms.iter().map(|t| self.expect(t, ValueType::Bool)).collect::<Result<Vec<_>, _>>()?;
                Ok((if *op == BinaryOp::And { Op::All(ops) } else { Op::Any(ops) }, ValueType::Bool))
            }
            Ast::Ternary(c, a, b) => {
                let c = self.expect(c, ValueType::Bool)?;
                let (a_op, a_ty) = self.node(a)?;
                let (b_op, b_ty) = self.node(b)?;
                let ty = unify(a_ty, b_ty)
                    .ok_or_else(|| ExprError::new(b.pos, format!("branches have types {a_ty} and {b_ty}")))?;
                Ok((Op::Ternary(Box::new(c), Box::new(a_op), Box::new(b_op)), ty))
            }
        }
    }

    fn expect(&self, n: &Node, want: ValueType) -> Result<Op, ExprError> {
        let (op, ty) = self.node(n)?;
        if !assignable(ty, want) {
            return Err(ExprError::new(n.pos, format!("expected {want}, found {ty}")));
        }
        Ok(op)
    }

    fn name(&self, n: &Node) -> Result<Typed, ExprError> {
        let Some(full) = dotted(n) else {
            // A field of a computed value: CEL's `map.key` on a map-typed expression.
            let Ast::Select(target, field) = &n.ast else {
                return Err(ExprError::new(n.pos, "unsupported expression"));
            };
            let (op, ty) = self.node(target)?;
            if ty != ValueType::StringMap {
                return Err(ExprError::new(n.pos, format!("cannot select field {field:?} of {ty}")));
            }
            let key = Op::Const(Value::String(field.clone().into()));
            return Ok((Op::Index(Box::new(op), Box::new(key)), ValueType::String));
        };
        if let Some(field) = full.strip_prefix("$out.") {
            return match self.opts.generated.iter().find(|(name, _)| *name == field) {
                Some((name, ty)) => Ok((Op::Generated(name), *ty)),
                None if self.opts.generated.is_empty() => {
                    Err(ExprError::new(n.pos, "$out is only defined in the attribute bindings of an instance"))
                }
                None => Err(ExprError::new(n.pos, format!("unknown output field {field:?}"))),
            };
        }
        let manifest = self.opts.manifest;
        if let Some(ty) = manifest.type_of(&full) {
            return Ok((Op::Attr(full.into()), ty));
        }
        let parts: Vec<&str> = full.split('.').collect();
        if parts.len() == 3 && parts[1] == "output" && self.opts.actions.iter().any(|a| a == parts[0]) {
            return Ok((Op::Output { action: parts[0].into(), field: parts[2].into() }, ValueType::String));
        }
        // CEL field selection on a map attribute: `source.labels.app`.
        if let Some((map, key)) = full.rsplit_once('.')
            && manifest.type_of(map) == Some(ValueType::StringMap)
        {
            return Ok((Op::MapKey { attr: map.into(), key: key.into() }, ValueType::String));
        }
        Err(ExprError::new(n.pos, format!("unknown attribute {full} (declare it in an attributemanifest)")))
    }

    fn index(&self, target: &Node, key: &Node) -> Result<Typed, ExprError> {
        let (t_op, t_ty) = self.node(target)?;
        if t_ty != ValueType::StringMap {
            return Err(ExprError::new(target.pos, format!("cannot index a value of type {t_ty}")));
        }
        let (k_op, k_ty) = self.node(key)?;
        if !k_ty.is_stringy() {
            return Err(ExprError::new(key.pos, format!("map keys are strings, found {k_ty}")));
        }
        let op = match (t_op, k_op) {
            (Op::Attr(attr), Op::Const(Value::String(k))) => Op::MapKey { attr, key: k.as_ref().into() },
            (t, k) => Op::Index(Box::new(t), Box::new(k)),
        };
        Ok((op, ValueType::String))
    }

    fn binary(&self, op: BinaryOp, a: &Node, b: &Node) -> Result<Typed, ExprError> {
        match op {
            BinaryOp::And | BinaryOp::Or => {
                let terms = vec![self.expect(a, ValueType::Bool)?, self.expect(b, ValueType::Bool)?];
                Ok((if op == BinaryOp::And { Op::All(terms) } else { Op::Any(terms) }, ValueType::Bool))
            }
            BinaryOp::Default => {
                let (x, xt) = self.node(a)?;
                let (y, yt) = self.node(b)?;
                // A string literal default takes the type it defaults: `response.duration | "0ms"`.
                let (y, yt) = match coerce_literal(y, yt, xt) {
                    Ok(typed) => typed,
                    Err(text) => {
                        return Err(ExprError::new(b.pos, format!("default {text:?} is not a valid {xt}")));
                    }
                };
                let ty = unify(xt, yt)
                    .ok_or_else(|| ExprError::new(b.pos, format!("default of type {yt} for a value of type {xt}")))?;
                if !is_lookup(&x) {
                    return Ok((x, ty));
                }
                Ok((Op::Default(Box::new(x), Box::new(y)), ty))
            }
            BinaryOp::In => {
                let (k, kt) = self.node(a)?;
                let (m, mt) = self.node(b)?;
                if mt != ValueType::StringMap || !kt.is_stringy() {
                    return Err(ExprError::new(a.pos, format!("'in' needs a string and a map, found {kt} and {mt}")));
                }
                let lookup = match (m, k) {
                    (Op::Attr(attr), Op::Const(Value::String(key))) => Op::MapKey { attr, key: key.as_ref().into() },
                    (m, k) => Op::Index(Box::new(m), Box::new(k)),
                };
                Ok((Op::Has(Box::new(lookup)), ValueType::Bool))
            }
            BinaryOp::Eq | BinaryOp::Ne => {
                let (x, xt) = self.node(a)?;
                let (y, yt) = self.node(b)?;
                let (x, y, kind) = equality(x, xt, y, yt).map_err(|m| ExprError::new(a.pos, m))?;
                let op = if op == BinaryOp::Eq {
                    Op::Eq(Box::new(x), Box::new(y), kind)
                } else {
                    Op::Ne(Box::new(x), Box::new(y), kind)
                };
                Ok((op, ValueType::Bool))
            }
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
                let (x, xt) = self.node(a)?;
                let (y, yt) = self.node(b)?;
                let (x, xt) = coerce_literal(x, xt, yt).map_err(|t| invalid_literal(b.pos, &t, yt))?;
                let (y, yt) = coerce_literal(y, yt, xt).map_err(|t| invalid_literal(a.pos, &t, xt))?;
                let ok = xt == yt
                    && matches!(
                        xt,
                        ValueType::Int64
                            | ValueType::Double
                            | ValueType::String
                            | ValueType::Timestamp
                            | ValueType::Duration
                    );
                if !ok {
                    return Err(ExprError::new(a.pos, format!("cannot order {xt} and {yt}")));
                }
                let cmp = match op {
                    BinaryOp::Lt => CmpOp::Lt,
                    BinaryOp::Le => CmpOp::Le,
                    BinaryOp::Gt => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                Ok((Op::Cmp(cmp, Box::new(x), Box::new(y)), ValueType::Bool))
            }
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => {
                let (x, xt) = self.node(a)?;
                let (y, yt) = self.node(b)?;
                use ValueType::*;
                let ty = match (op, xt, yt) {
                    (_, Int64, Int64) => Int64,
                    (_, Int64 | Double, Int64 | Double) => Double,
                    (BinaryOp::Add, l, r) if l.is_stringy() && r.is_stringy() => String,
                    (BinaryOp::Add | BinaryOp::Sub, Duration, Duration) => Duration,
                    (BinaryOp::Add | BinaryOp::Sub, Timestamp, Duration) => Timestamp,
                    (BinaryOp::Sub, Timestamp, Timestamp) => Duration,
                    _ => {
                        return Err(ExprError::new(a.pos, format!("cannot apply {op:?} to {xt} and {yt}")));
                    }
                };
                let arith = match op {
                    BinaryOp::Add => ArithOp::Add,
                    BinaryOp::Sub => ArithOp::Sub,
                    BinaryOp::Mul => ArithOp::Mul,
                    BinaryOp::Div => ArithOp::Div,
                    _ => ArithOp::Rem,
                };
                Ok((Op::Arith(arith, Box::new(x), Box::new(y)), ty))
            }
        }
    }

    fn call(&self, pos: usize, target: Option<&Node>, name: &str, args: &[Node]) -> Result<Typed, ExprError> {
        use ValueType as T;
        let arity = |n: usize| -> Result<(), ExprError> {
            if args.len() != n {
                return Err(ExprError::new(pos, format!("{name}() takes {n} argument(s), got {}", args.len())));
            }
            Ok(())
        };
        if let Some(recv) = target {
            return match name {
                "matches" => {
                    arity(1)?;
                    self.matches(pos, recv, &args[0])
                }
                "startsWith" | "endsWith" | "contains" => {
                    arity(1)?;
                    let f = match name {
                        "startsWith" => Func::StartsWith,
                        "endsWith" => Func::EndsWith,
                        _ => Func::Contains,
                    };
                    let r = self.expect(recv, T::String)?;
                    let a = self.expect(&args[0], T::String)?;
                    Ok((Op::Call(f, vec![r, a]), T::Bool))
                }
                "size" => {
                    arity(0)?;
                    self.size(recv)
                }
                "toLower" | "lowerAscii" => {
                    arity(0)?;
                    let r = self.expect(recv, T::String)?;
                    Ok((Op::Call(Func::ToLower, vec![r]), T::String))
                }
                _ => Err(ExprError::new(pos, format!("unknown method {name}()"))),
            };
        }
        match name {
            "match" => {
                arity(2)?;
                let a = self.expect(&args[0], T::String)?;
                let b = self.expect(&args[1], T::String)?;
                Ok((Op::Call(Func::Glob, vec![a, b]), T::Bool))
            }
            "matches" => {
                arity(2)?;
                self.matches(pos, &args[1], &args[0])
            }
            "startsWith" | "endsWith" | "contains" => {
                arity(2)?;
                let f = match name {
                    "startsWith" => Func::StartsWith,
                    "endsWith" => Func::EndsWith,
                    _ => Func::Contains,
                };
                let a = self.expect(&args[0], T::String)?;
                let b = self.expect(&args[1], T::String)?;
                Ok((Op::Call(f, vec![a, b]), T::Bool))
            }
            "ip" | "timestamp" | "dnsName" | "email" | "uri" | "duration" => {
                arity(1)?;
                let (f, ty) = match name {
                    "ip" => (Func::Ip, T::IpAddress),
                    "timestamp" => (Func::Timestamp, T::Timestamp),
                    "dnsName" => (Func::DnsName, T::DnsName),
                    "email" => (Func::Email, T::EmailAddress),
                    "uri" => (Func::Uri, T::Uri),
                    _ => (Func::Duration, T::Duration),
                };
                let arg = self.expect(&args[0], T::String)?;
                if let Op::Const(Value::String(s)) = &arg {
                    let folded = literal(f, s)
                        .ok_or_else(|| ExprError::new(args[0].pos, format!("{s:?} is not a valid {name}")))?;
                    return Ok((Op::Const(folded), ty));
                }
                Ok((Op::Call(f, vec![arg]), ty))
            }
            "emptyStringMap" => {
                arity(0)?;
                Ok((Op::Const(Value::StringMap(MapVal::from(StringMap::default()))), T::StringMap))
            }
            "conditional" => {
                arity(3)?;
                let c = self.expect(&args[0], T::Bool)?;
                let (a, at) = self.node(&args[1])?;
                let (b, bt) = self.node(&args[2])?;
                let ty = unify(at, bt)
                    .ok_or_else(|| ExprError::new(args[2].pos, format!("branches have types {at} and {bt}")))?;
                Ok((Op::Ternary(Box::new(c), Box::new(a), Box::new(b)), ty))
            }
            "toLower" => {
                arity(1)?;
                let a = self.expect(&args[0], T::String)?;
                Ok((Op::Call(Func::ToLower, vec![a]), T::String))
            }
            "size" => {
                arity(1)?;
                self.size(&args[0])
            }
            "has" => {
                arity(1)?;
                let (op, _) = self.node(&args[0])?;
                if !is_lookup(&op) {
                    return Err(ExprError::new(args[0].pos, "has() needs an attribute or a map entry"));
                }
                Ok((Op::Has(Box::new(op)), T::Bool))
            }
            "string" => {
                arity(1)?;
                let (a, _) = self.node(&args[0])?;
                Ok((Op::Call(Func::ToString, vec![a]), T::String))
            }
            "int" | "double" => {
                arity(1)?;
                let (a, at) = self.node(&args[0])?;
                if !matches!(at, T::Int64 | T::Double | T::String) {
                    return Err(ExprError::new(args[0].pos, format!("cannot convert {at} to {name}")));
                }
                let (f, ty) = if name == "int" { (Func::ToInt, T::Int64) } else { (Func::ToDouble, T::Double) };
                Ok((Op::Call(f, vec![a]), ty))
            }
            _ => Err(ExprError::new(pos, format!("unknown function {name}()"))),
        }
    }

    fn size(&self, x: &Node) -> Result<Typed, ExprError> {
        let (op, ty) = self.node(x)?;
        if !(ty.is_stringy() || ty == ValueType::StringMap) {
            return Err(ExprError::new(x.pos, format!("size() of {ty}")));
        }
        Ok((Op::Call(Func::Size, vec![op]), ValueType::Int64))
    }

    /// Mixer writes `"regex".matches(str)`; CEL writes `str.matches("regex")`. A string
    /// literal is the pattern either way, compiled here once. Without a literal, the first
    /// of `pattern_first, other` is the pattern: the receiver in Mixer's method form,
    /// the second argument in CEL's function form `matches(str, regex)`.
    fn matches(&self, pos: usize, pattern_first: &Node, other: &Node) -> Result<Typed, ExprError> {
        let (pattern, subject) = match (&pattern_first.ast, &other.ast) {
            (Ast::Str(p), _) => (p, other),
            (_, Ast::Str(p)) => (p, pattern_first),
            _ => {
                let pattern = self.expect(pattern_first, ValueType::String)?;
                let subject = self.expect(other, ValueType::String)?;
                let op = Op::MatchesDynamic {
                    pattern: Box::new(pattern),
                    subject: Box::new(subject),
                    cache: Arc::new(RegexCache::default()),
                };
                return Ok((op, ValueType::Bool));
            }
        };
        // Go's regexp.MatchString finds a match anywhere, as does RE2 in CEL.
        let re = Regex::new(pattern).map_err(|e| ExprError::new(pos, format!("invalid regex {pattern:?}: {e}")))?;
        let subject = self.expect(subject, ValueType::String)?;
        Ok((Op::Matches(Arc::new(re), Box::new(subject)), ValueType::Bool))
    }
}

/// Parses a typed literal at compile time.
fn literal(f: Func, s: &str) -> Option<OwnedValue> {
    Some(match f {
        Func::Ip => Value::Bytes(parse_ip(s)?.into()),
        Func::Timestamp => Value::Timestamp(parse_timestamp(s)?),
        Func::Duration => Value::Duration(parse_duration(s)?),
        Func::DnsName if valid_dns_name(s) => Value::String(s.to_string().into()),
        Func::Email if valid_email(s) => Value::String(s.to_string().into()),
        Func::Uri if valid_uri(s) => Value::String(s.to_string().into()),
        _ => return None,
    })
}

/// A string literal next to a typed value takes that type ("10ms" against a duration);
/// `Err` holds a literal that is not a valid value of that type.
fn coerce_literal(op: Op, ty: ValueType, other: ValueType) -> Result<(Op, ValueType), String> {
    if let Op::Const(Value::String(s)) = &op {
        let f = match other {
            ValueType::Duration => Func::Duration,
            ValueType::Timestamp => Func::Timestamp,
            ValueType::IpAddress => Func::Ip,
            ValueType::DnsName => Func::DnsName,
            ValueType::EmailAddress => Func::Email,
            ValueType::Uri => Func::Uri,
            _ => return Ok((op, ty)),
        };
        return match literal(f, s) {
            Some(v) => Ok((Op::Const(v), other)),
            None => Err(s.to_string()),
        };
    }
    Ok((op, ty))
}

fn invalid_literal(pos: usize, text: &str, ty: ValueType) -> ExprError {
    ExprError::new(pos, format!("{text:?} is not a valid {ty}"))
}

/// Values of different types do not compare, as Mixer's type checker said (INT64 with
/// DOUBLE, STRING with DNS_NAME...); a string literal takes the other side's type.
fn equality(x: Op, xt: ValueType, y: Op, yt: ValueType) -> Result<(Op, Op, EqKind), String> {
    use ValueType as T;
    let (x, xt) = coerce_literal(x, xt, yt).map_err(|t| format!("{t:?} is not a valid {yt}"))?;
    let (y, yt) = coerce_literal(y, yt, xt).map_err(|t| format!("{t:?} is not a valid {xt}"))?;
    if xt != yt {
        let hint =
            if xt == T::Duration || yt == T::Duration { " (a duration literal looks like \"10ms\")" } else { "" };
        return Err(format!("cannot compare {xt} with {yt}{hint}"));
    }
    Ok((
        x,
        y,
        match xt {
            T::DnsName => EqKind::Dns,
            T::EmailAddress => EqKind::Email,
            T::Uri => EqKind::Uri,
            T::IpAddress => EqKind::Ip,
            _ => EqKind::Exact,
        },
    ))
}

/// Whether `op` reads an attribute, a map entry or an output: what `|` falls back from
/// when it is absent. A default chain counts when its last operand does.
pub(crate) fn is_lookup(op: &Op) -> bool {
    match op {
        Op::Attr(_) | Op::MapKey { .. } | Op::Index(..) | Op::Output { .. } | Op::Generated(_) => true,
        Op::Default(_, last) => is_lookup(last),
        _ => false,
    }
}

fn unify(a: ValueType, b: ValueType) -> Option<ValueType> {
    if a == b {
        Some(a)
    } else if a.is_stringy() && b.is_stringy() {
        Some(if a == ValueType::String { b } else { a })
    } else {
        None
    }
}
