//! Check: match rules, call check adapters, aggregate their answers.
//!
//! - status: OK, or the first failing handler's code; the message joins
//!   `handler:message` of every failing handler with ", ".
//! - validity: the minimum over the handlers that answered; with none, 1 minute and
//!   10000 uses (Mixer's answer when no rule applies).
//! - header operations of matching rules apply only when the check passed.

use std::collections::HashMap;
use std::time::Duration;

use mixr_adapters::variety::code;
use mixr_adapters::{CheckResult, Denial, Status};
use mixr_rules::bag::{Bag, Referenced};
use mixr_rules::config::model::HeaderOpKind;
use mixr_rules::expr::Outputs;
use mixr_rules::snapshot::CompiledHeaderOp;
use mixr_rules::templates::Variety;

use crate::grpc::trace::adapter_span;
use crate::metrics::{AdapterVariety, Metrics};
use crate::runtime::Runtime;

pub const DEFAULT_VALID_DURATION: Duration = Duration::from_secs(60);
pub const DEFAULT_VALID_USE_COUNT: i32 = 10000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderOp {
    pub name: String,
    pub value: String,
    pub operation: HeaderOpKind,
}

#[derive(Debug)]
pub struct CheckOutcome<'s> {
    pub status: Status,
    pub valid_duration: Duration,
    pub valid_use_count: i32,
    pub referenced: Referenced<'s>,
    pub request_header_ops: Vec<HeaderOp>,
    pub response_header_ops: Vec<HeaderOp>,
    /// Indices of the rules that matched (quota dispatch reuses them).
    pub matched_rules: Vec<usize>,
}

pub fn check<'s>(rt: &'s Runtime, bag: &'s Bag<'s>, metrics: &Metrics) -> CheckOutcome<'s> {
    let snapshot = &rt.snapshot;
    let mut refs = Referenced::new();
    let matched = snapshot.matching_rules(bag, &mut refs);
    for (rule, err) in &matched.errors {
        let name = &snapshot.rules[*rule].name;
        metrics.expression_errors.with_label_values(&[name.as_str()]).inc();
        tracing::debug!(rule = %name, error = %err, "rule match did not evaluate");
    }

    let mut status = Status::ok();
    let mut failures: Vec<String> = Vec::new();
    let mut valid: Option<(Duration, i32)> = None;
    let mut outputs = Outputs::new();

    for &r in &matched.rules {
        let rule = &snapshot.rules[r];
        for action in &rule.actions {
            let Some(handler) = rt.handlers.get(action.handler).and_then(|h| h.check.as_ref()) else {
                continue;
            };
            let handler_name = rt.handler_name(action.handler);
            let handler_metrics = rt.handler_metrics(action.handler);
            for &i in &action.instances {
                let instance = &snapshot.instances[i];
                if instance.template.variety() != Variety::Check {
                    continue;
                }
                let result = match instance.eval(bag, &mut refs) {
                    Ok(values) => {
                        let started = std::time::Instant::now();
                        let r = adapter_span(&handler_name, "check").in_scope(|| handler.check(&values));
                        if let Some(m) = handler_metrics {
                            m.call(
                                AdapterVariety::Check,
                                r.status.code != code::INTERNAL && r.status.code != code::UNAVAILABLE,
                                started,
                            );
                        }
                        r
                    }
                    Err(e) => {
                        // A check that cannot be evaluated must not pass silently.
                        metrics.instance_errors.with_label_values(&[instance.full_name.as_str()]).inc();
                        CheckResult {
                            status: Status::new(code::INTERNAL, format!("instance {}: {e}", instance.full_name)),
                            valid_duration: Duration::ZERO,
                            valid_use_count: 0,
                            output: HashMap::new(),
                        }
                    }
                };
                valid = Some(match valid {
                    None => (result.valid_duration, result.valid_use_count),
                    Some((d, n)) => (d.min(result.valid_duration), n.min(result.valid_use_count)),
                });
                if !result.status.is_ok() {
                    metrics.check_denials.with_label_values(&[rule.name.as_str(), handler_name.as_ref()]).inc();
                    failures.push(format!("{handler_name}:{}", result.status.message));
                    if status.is_ok() {
                        status = result.status.clone();
                    } else if status.direct_response.is_none() {
                        status.direct_response = result.status.direct_response.clone();
                    }
                }
                if let Some(name) = &action.name {
                    outputs.entry(name.clone()).or_default().extend(result.output);
                }
            }
        }
    }
    if !failures.is_empty() {
        status.message = failures.join(", ");
        record_denial(rt, bag, &status);
    }
    let (valid_duration, valid_use_count) = valid.unwrap_or((DEFAULT_VALID_DURATION, DEFAULT_VALID_USE_COUNT));

    let mut request_header_ops = Vec::new();
    let mut response_header_ops = Vec::new();
    if status.is_ok() {
        for &r in &matched.rules {
            let rule = &snapshot.rules[r];
            header_ops(&rule.request_header_operations, bag, &outputs, &mut refs, &mut request_header_ops);
            header_ops(&rule.response_header_operations, bag, &outputs, &mut refs, &mut response_header_ops);
        }
    }
    if let Some(dr) = &status.direct_response {
        for (name, value) in &dr.headers {
            response_header_ops.push(HeaderOp {
                name: name.clone(),
                value: value.clone(),
                operation: HeaderOpKind::Replace,
            });
        }
    }

    CheckOutcome {
        status,
        valid_duration,
        valid_use_count,
        referenced: refs,
        request_header_ops,
        response_header_ops,
        matched_rules: matched.rules,
    }
}

fn header_ops<'s>(
    ops: &'s [CompiledHeaderOp],
    bag: &'s Bag<'s>,
    outputs: &Outputs,
    refs: &mut Referenced<'s>,
    out: &mut Vec<HeaderOp>,
) {
    for op in ops {
        if op.operation == HeaderOpKind::Remove {
            out.push(HeaderOp { name: op.name.clone(), value: String::new(), operation: op.operation });
            continue;
        }
        for value in &op.values {
            match value.eval_with_outputs(bag, outputs, refs).map(|v| v.to_text()) {
                Ok(t) if !t.is_empty() => {
                    out.push(HeaderOp { name: op.name.clone(), value: t, operation: op.operation })
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(header = %op.name, error = %e, "header value did not evaluate; skipped")
                }
            }
        }
    }
}

/// Hands a denied Check to the report handlers that keep denials (a log store).
fn record_denial(rt: &Runtime, bag: &Bag<'_>, status: &Status) {
    let mut denial: Option<Denial> = None;
    for h in rt.handlers.handlers.iter().filter_map(|h| h.report.as_ref()) {
        if h.wants_check_denials() {
            let d = denial.get_or_insert_with(|| Denial {
                time: std::time::SystemTime::now(),
                code: status.code,
                message: status.message.clone(),
                attributes: bag.iter().map(|(n, v)| (n.to_string(), v.to_text())).collect(),
            });
            h.check_denied(d);
        }
    }
}
