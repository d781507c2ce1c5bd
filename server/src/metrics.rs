//! mixr's own metrics, registered once in the registry served on `/metrics`.

use std::sync::OnceLock;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Calls by API (`mixer`, later `ext_authz`, `rls`), method and result code name.
    pub calls: IntCounterVec,
    pub call_seconds: HistogramVec,
    pub report_entries: IntCounterVec,
    pub expression_errors: IntCounterVec,
    pub instance_errors: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_generation: IntGauge,
    pub quota_unconfigured: IntCounterVec,
    pub quota_allocations: IntCounterVec,
    pub adapter_calls: IntCounterVec,
    /// Checks a rule's handler refused, by rule and handler (names from the config: bounded).
    pub check_denials: IntCounterVec,
    pub adapter_seconds: HistogramVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let calls = IntCounterVec::new(
            Opts::new("mixr_calls_total", "Calls served, by API, method and result code."),
            &["api", "method", "code"],
        )
        .expect("valid metric");
        let call_seconds = HistogramVec::new(
            HistogramOpts::new("mixr_call_duration_seconds", "Time to serve a call, by API and method.")
                .buckets(vec![0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0]),
            &["api", "method"],
        )
        .expect("valid metric");
        let report_entries =
            IntCounterVec::new(Opts::new("mixr_report_entries_total", "Report entries received, by API."), &["api"])
                .expect("valid metric");
        let expression_errors = IntCounterVec::new(
            Opts::new(
                "mixr_expression_errors_total",
                "Rule matches that failed to evaluate (the rule did not apply), by rule.",
            ),
            &["rule"],
        )
        .expect("valid metric");
        let instance_errors = IntCounterVec::new(
            Opts::new(
                "mixr_instance_errors_total",
                "Instances that failed to build from a request's attributes, by instance.",
            ),
            &["instance"],
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new("mixr_config_reloads_total", "Config loads, by result (ok, failed)."),
            &["result"],
        )
        .expect("valid metric");
        let config_generation =
            IntGauge::new("mixr_config_generation", "Generation of the active config (1 is the first).")
                .expect("valid metric");
        let quota_unconfigured = IntCounterVec::new(
            Opts::new(
                "mixr_quota_unconfigured_total",
                "Quota names requested that no rule selects (granted in full), by quota.",
            ),
            &["quota"],
        )
        .expect("valid metric");
        let quota_allocations = IntCounterVec::new(
            Opts::new(
                "mixr_quota_allocations_total",
                "Quota allocations by handler and result (granted, denied, error).",
            ),
            &["handler", "result"],
        )
        .expect("valid metric");
        let adapter_calls = IntCounterVec::new(
            Opts::new(
                "mixr_adapter_calls_total",
                "Adapter calls by handler, variety (check, quota, report) and result (ok, error).",
            ),
            &["handler", "variety", "result"],
        )
        .expect("valid metric");
        let adapter_seconds = HistogramVec::new(
            HistogramOpts::new("mixr_adapter_duration_seconds", "Time spent in adapter calls, by handler and variety.")
                .buckets(vec![0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.25, 1.0]),
            &["handler", "variety"],
        )
        .expect("valid metric");
        let check_denials = IntCounterVec::new(
            Opts::new("mixr_check_denials_total", "Check answers that were not OK, by rule and handler."),
            &["rule", "handler"],
        )
        .expect("valid metric");
        for c in [
            Box::new(adapter_calls.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(check_denials.clone()),
            Box::new(adapter_seconds.clone()),
            Box::new(quota_unconfigured.clone()),
            Box::new(quota_allocations.clone()),
            Box::new(calls.clone()),
            Box::new(call_seconds.clone()),
            Box::new(report_entries.clone()),
            Box::new(expression_errors.clone()),
            Box::new(instance_errors.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_generation.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
        // process_start_time_seconds...: what an operator looks at first.
        let _ = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        Metrics {
            registry,
            calls,
            call_seconds,
            report_entries,
            expression_errors,
            instance_errors,
            config_reloads,
            config_generation,
            quota_unconfigured,
            quota_allocations,
            adapter_calls,
            adapter_seconds,
            check_denials,
        }
    }

    /// The text exposition of mixr's metrics and `extra` families (adapters'). Families of
    /// the same name are merged: a name may appear only once in the exposition.
    pub fn render(&self, extra: Vec<prometheus::proto::MetricFamily>) -> String {
        let mut out = String::new();
        let mut families = self.registry.gather();
        for f in extra {
            match families.iter_mut().find(|g| g.name() == f.name()) {
                Some(g) if g.get_field_type() == f.get_field_type() => {
                    for m in f.get_metric() {
                        g.mut_metric().push(m.clone());
                    }
                }
                Some(_) => tracing::warn!(metric = f.name(), "two adapters export this metric with different types"),
                None => families.push(f),
            }
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// What a handler was called for (the `variety` label of adapter metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterVariety {
    Check,
    Quota,
    Generate,
    Report,
}

impl AdapterVariety {
    pub fn label(self) -> &'static str {
        match self {
            AdapterVariety::Check => "check",
            AdapterVariety::Quota => "quota",
            AdapterVariety::Generate => "generate",
            AdapterVariety::Report => "report",
        }
    }
}

/// A quota allocation's result (the `result` label of `mixr_quota_allocations_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    Granted,
    Denied,
    Error,
}

impl Allocation {
    fn label(self) -> &'static str {
        match self {
            Allocation::Granted => "granted",
            Allocation::Denied => "denied",
            Allocation::Error => "error",
        }
    }
}

#[derive(Debug, Default)]
struct VarietySeries {
    ok: OnceLock<IntCounter>,
    error: OnceLock<IntCounter>,
    seconds: OnceLock<Histogram>,
}

/// One handler's self-metric series, kept with the config generation that defines the
/// handler. `with_label_values` hashes every label value and takes the vector's lock on
/// each call (three times per adapter call, and its display name was formatted each
/// time): per call on the Check and quota paths, that was measurable. Each series is
/// resolved on its first use, not up front, so `/metrics` still lists a series only once
/// the handler was called for it.
#[derive(Debug)]
pub struct HandlerMetrics {
    /// The handler's display name (`name.namespace`), the metrics' `handler` label.
    pub name: String,
    calls: IntCounterVec,
    seconds: HistogramVec,
    allocations: IntCounterVec,
    by_variety: [VarietySeries; 4],
    by_allocation: [OnceLock<IntCounter>; 3],
}

impl HandlerMetrics {
    pub fn new(metrics: &Metrics, name: String) -> HandlerMetrics {
        HandlerMetrics {
            name,
            calls: metrics.adapter_calls.clone(),
            seconds: metrics.adapter_seconds.clone(),
            allocations: metrics.quota_allocations.clone(),
            by_variety: Default::default(),
            by_allocation: Default::default(),
        }
    }

    /// Records one adapter call that started at `started`.
    pub fn call(&self, variety: AdapterVariety, ok: bool, started: std::time::Instant) {
        let series = &self.by_variety[variety as usize];
        let (cell, result) = if ok { (&series.ok, "ok") } else { (&series.error, "error") };
        cell.get_or_init(|| self.calls.with_label_values(&[self.name.as_str(), variety.label(), result])).inc();
        series
            .seconds
            .get_or_init(|| self.seconds.with_label_values(&[self.name.as_str(), variety.label()]))
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records one quota allocation's result.
    pub fn allocation(&self, result: Allocation) {
        self.by_allocation[result as usize]
            .get_or_init(|| self.allocations.with_label_values(&[self.name.as_str(), result.label()]))
            .inc();
    }
}

/// One method's call counters (by result code) and latency histogram, resolved once so
/// recording a call does not hash label values.
#[derive(Debug, Clone)]
pub struct MethodMetrics {
    by_code: Vec<IntCounter>,
    seconds: Histogram,
}

impl MethodMetrics {
    pub fn new(metrics: &Metrics, api: &str, method: &str) -> MethodMetrics {
        MethodMetrics {
            by_code: (0..=16).map(|c| metrics.calls.with_label_values(&[api, method, code_name(c)])).collect(),
            seconds: metrics.call_seconds.with_label_values(&[api, method]),
        }
    }

    pub fn observe(&self, code: i32, started: std::time::Instant) {
        let i = usize::try_from(code).ok().filter(|i| *i < self.by_code.len()).unwrap_or(2);
        self.by_code[i].inc();
        self.seconds.observe(started.elapsed().as_secs_f64());
    }
}

/// gRPC code names, for metric labels and the CLI.
pub fn code_name(code: i32) -> &'static str {
    mixr_proto::grpc_code_name(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(metrics: &Metrics, name: &str) -> Vec<String> {
        metrics.render(Vec::new()).lines().filter(|l| l.starts_with(name)).map(str::to_string).collect()
    }

    #[test]
    fn handler_series_appear_on_first_use_and_count_like_labelled_lookups() {
        let metrics = Metrics::new();
        let h = HandlerMetrics::new(&metrics, "deny.istio-system".into());
        assert!(lines(&metrics, "mixr_adapter_calls_total").is_empty(), "no series before a call");
        let started = std::time::Instant::now();
        h.call(AdapterVariety::Check, true, started);
        h.call(AdapterVariety::Check, true, started);
        h.call(AdapterVariety::Check, false, started);
        h.call(AdapterVariety::Quota, true, started);
        h.allocation(Allocation::Granted);
        h.allocation(Allocation::Denied);
        h.allocation(Allocation::Denied);
        let calls = |variety: &str, result: &str| {
            metrics.adapter_calls.with_label_values(&["deny.istio-system", variety, result]).get()
        };
        assert_eq!((calls("check", "ok"), calls("check", "error"), calls("quota", "ok")), (2, 1, 1));
        assert_eq!(lines(&metrics, "mixr_adapter_calls_total").len(), 3, "only the series used");
        assert_eq!(metrics.adapter_seconds.with_label_values(&["deny.istio-system", "check"]).get_sample_count(), 3);
        let alloc = |r: &str| metrics.quota_allocations.with_label_values(&["deny.istio-system", r]).get();
        assert_eq!((alloc("granted"), alloc("denied"), alloc("error")), (1, 2, 0));
    }
}
