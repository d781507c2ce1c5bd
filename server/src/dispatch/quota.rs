//! Quota allocation for the rules a request matched: Mixer Check's named quotas, and the
//! Envoy APIs (which charge every quota their rules select).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use mixr_adapters::variety::code;
use mixr_adapters::{QuotaArgs, QuotaLimit, QuotaResult, Status};
use mixr_rules::bag::{Bag, Referenced};
use mixr_rules::templates::Template;

use tracing::Instrument;

use crate::grpc::trace::adapter_span;
use crate::metrics::{AdapterVariety, Allocation, Metrics};
use crate::runtime::Runtime;

/// Which quota instances of the matched rules to charge.
#[derive(Debug, Clone, Copy)]
pub enum Selection<'a> {
    /// Instances whose short (or full) name equals this, ignoring case (Mixer Check).
    Named(&'a str),
    /// Every quota instance (ext_authz, rate-limit service).
    All,
}

#[derive(Debug)]
pub struct QuotaOutcome<'s> {
    pub status: Status,
    pub granted: i64,
    pub valid_duration: Duration,
    /// The most restrictive limit among the handlers that answered.
    pub limit: Option<QuotaLimit>,
    /// Which instance set that limit.
    pub limit_instance: Option<String>,
    pub referenced: Referenced<'s>,
    /// False when no rule selected a quota instance (the request was granted in full).
    pub configured: bool,
}

/// Quota names asked for that no rule selects (Mixer granted them silently; we log each
/// name once and count every occurrence). Names come from callers, so both are bounded:
/// the first [`UNCONFIGURED_NAMES`] names are logged and get a series of their own, the
/// rest are counted as `other`.
#[derive(Debug, Default)]
pub struct Unconfigured(Mutex<HashSet<String>>);

/// Distinct unconfigured quota names logged and labelled by name.
pub const UNCONFIGURED_NAMES: usize = 100;

impl Unconfigured {
    /// The metric label for `name`, and whether it is seen for the first time.
    fn note<'n>(&self, name: &'n str) -> (&'n str, bool) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(name) {
            (name, false)
        } else if seen.len() < UNCONFIGURED_NAMES {
            seen.insert(name.to_string());
            (name, true)
        } else {
            ("other", false)
        }
    }
}

/// Allocates `amount` from the quota instances `selection` picks among `matched_rules`.
#[allow(clippy::too_many_arguments)]
pub async fn allocate<'s>(
    rt: &'s Runtime,
    bag: &'s Bag<'s>,
    matched_rules: &[usize],
    selection: Selection<'_>,
    amount: i64,
    best_effort: bool,
    dedup_id: &str,
    metrics: &Metrics,
    unconfigured: &Unconfigured,
) -> QuotaOutcome<'s> {
    let snapshot = &rt.snapshot;
    let mut targets: Vec<(usize, usize)> = Vec::new();
    for &r in matched_rules {
        for action in &snapshot.rules[r].actions {
            if rt.handlers.get(action.handler).and_then(|h| h.quota.as_ref()).is_none() {
                continue;
            }
            for &i in &action.instances {
                let inst = &snapshot.instances[i];
                let selected = inst.template == Template::Quota
                    && match selection {
                        Selection::All => true,
                        Selection::Named(n) => {
                            inst.name.eq_ignore_ascii_case(n) || inst.full_name.eq_ignore_ascii_case(n)
                        }
                    };
                if selected && !targets.contains(&(action.handler, i)) {
                    targets.push((action.handler, i));
                }
            }
        }
    }
    let mut referenced = Referenced::new();
    if targets.is_empty() {
        if let Selection::Named(name) = selection {
            let (label, first_time) = unconfigured.note(name);
            metrics.quota_unconfigured.with_label_values(&[label]).inc();
            if first_time {
                tracing::warn!(
                    quota = name,
                    "quota requested but no rule selects it: granted in full (logged once per name)"
                );
            }
        }
        return QuotaOutcome {
            status: Status::ok(),
            granted: amount,
            valid_duration: Duration::from_secs(60),
            limit: None,
            limit_instance: None,
            referenced,
            configured: false,
        };
    }

    let mut outcome = QuotaOutcome {
        status: Status::ok(),
        granted: amount,
        valid_duration: Duration::MAX,
        limit: None,
        limit_instance: None,
        referenced: Referenced::new(),
        configured: true,
    };
    for (h, i) in targets {
        let inst = &snapshot.instances[i];
        let Some(handler) = rt.handlers.get(h).and_then(|h| h.quota.as_ref()) else { continue };
        let result = match inst.eval(bag, &mut referenced) {
            Ok(values) => {
                let args = QuotaArgs {
                    dedup_id: if dedup_id.is_empty() { String::new() } else { format!("{dedup_id}{}", inst.name) },
                    amount,
                    best_effort,
                };
                let started = std::time::Instant::now();
                let r = handler
                    .alloc(&values, &inst.full_name, args)
                    .instrument(adapter_span(&rt.handler_name(h), "quota"))
                    .await;
                if let Some(m) = rt.handler_metrics(h) {
                    m.call(AdapterVariety::Quota, r.status.is_ok(), started);
                }
                r
            }
            Err(e) => {
                metrics.instance_errors.with_label_values(&[inst.full_name.as_str()]).inc();
                QuotaResult::failed(Status::new(code::INTERNAL, format!("instance {}: {e}", inst.full_name)))
            }
        };
        let allocation = if !result.status.is_ok() {
            Allocation::Error
        } else if result.granted < amount {
            Allocation::Denied
        } else {
            Allocation::Granted
        };
        if let Some(m) = rt.handler_metrics(h) {
            m.allocation(allocation);
        }
        if !result.status.is_ok() && outcome.status.is_ok() {
            let handler_name = rt.handler_name(h);
            outcome.status = Status::new(result.status.code, format!("{handler_name}:{}", result.status.message));
        }
        outcome.granted = outcome.granted.min(result.granted);
        outcome.valid_duration = outcome.valid_duration.min(result.valid_duration);
        if let Some(l) = result.limit
            && outcome.limit.is_none_or(|cur| l.remaining < cur.remaining)
        {
            outcome.limit = Some(l);
            outcome.limit_instance = Some(inst.name.clone());
        }
    }
    if outcome.valid_duration == Duration::MAX {
        outcome.valid_duration = Duration::ZERO;
    }
    outcome.referenced = referenced;
    outcome
}
