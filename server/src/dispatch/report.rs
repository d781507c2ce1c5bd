//! Report: every entry is matched against the rules; report instances are built and
//! handed to report adapters in one batch per handler and instance.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use mixr_rules::bag::{Bag, Referenced};
use mixr_rules::snapshot::InstanceValues;
use mixr_rules::templates::Variety;

use crate::grpc::trace::adapter_span;
use crate::metrics::{AdapterVariety, Metrics};
use crate::runtime::Runtime;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReportOutcome {
    pub instances_dispatched: usize,
    pub instance_errors: usize,
}

/// When each instance's dropped entries were last logged. Instance names come from the
/// config, so the map stays small.
#[derive(Debug, Default)]
struct Throttle(Mutex<HashMap<String, Instant>>);

impl Throttle {
    fn due(&self, instance: &str) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match last.get(instance) {
            Some(t) if t.elapsed() < Duration::from_secs(60) => false,
            _ => {
                last.insert(instance.to_string(), Instant::now());
                true
            }
        }
    }
}

fn dropped_warnings() -> &'static Throttle {
    static THROTTLE: OnceLock<Throttle> = OnceLock::new();
    THROTTLE.get_or_init(Throttle::default)
}

pub fn report(rt: &Runtime, bags: &[Bag<'_>], metrics: &Metrics) -> ReportOutcome {
    let snapshot = &rt.snapshot;
    let mut batches: BTreeMap<(usize, usize), Vec<InstanceValues>> = BTreeMap::new();
    let mut outcome = ReportOutcome::default();
    for bag in bags {
        // Report answers carry no referenced attributes; the record is discarded.
        let mut refs = Referenced::new();
        let matched = snapshot.matching_rules(bag, &mut refs);
        for (rule, _) in &matched.errors {
            metrics.expression_errors.with_label_values(&[snapshot.rules[*rule].name.as_str()]).inc();
        }
        for &r in &matched.rules {
            for action in &snapshot.rules[r].actions {
                if rt.handlers.get(action.handler).and_then(|h| h.report.as_ref()).is_none() {
                    continue;
                }
                for &i in &action.instances {
                    let instance = &snapshot.instances[i];
                    if instance.template.variety() != Variety::Report {
                        continue;
                    }
                    match instance.eval(bag, &mut refs) {
                        Ok(values) => batches.entry((action.handler, i)).or_default().push(values),
                        Err(e) => {
                            outcome.instance_errors += 1;
                            metrics.instance_errors.with_label_values(&[instance.full_name.as_str()]).inc();
                            if dropped_warnings().due(&instance.full_name) {
                                tracing::warn!(
                                    instance = %instance.full_name,
                                    error = %e,
                                    "report entry dropped for this instance: it could not be built (logged at most once a minute per instance)"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    for ((h, i), values) in batches {
        if let Some(handler) = rt.handlers.get(h).and_then(|h| h.report.as_ref()) {
            outcome.instances_dispatched += values.len();
            let started = std::time::Instant::now();
            let name = rt.handler_name(h);
            adapter_span(&name, "report").in_scope(|| handler.report(&snapshot.instances[i].full_name, &values));
            if let Some(m) = rt.handler_metrics(h) {
                m.call(AdapterVariety::Report, true, started);
            }
        }
    }
    outcome
}
