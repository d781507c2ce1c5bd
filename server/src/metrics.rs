//! mixr's own metrics, registered once in the registry served on `/metrics`.

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
        for c in [
            Box::new(adapter_calls.clone()) as Box<dyn prometheus::core::Collector>,
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

impl Metrics {
    /// Records one adapter call.
    pub fn adapter_call(&self, handler: &str, variety: &str, ok: bool, started: std::time::Instant) {
        self.adapter_calls.with_label_values(&[handler, variety, if ok { "ok" } else { "error" }]).inc();
        self.adapter_seconds.with_label_values(&[handler, variety]).observe(started.elapsed().as_secs_f64());
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
