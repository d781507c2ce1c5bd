//! The sidecar's Prometheus stats (port 15090): Istio-style request metrics and upstream
//! pool, retry, mirror and ejection counts.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct Stats {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub retries: IntCounter,
    pub retry_overflows: IntCounter,
    pub upstream_connections: IntCounter,
    pub mirrored: IntCounter,
    pub reports_dropped: IntCounter,
    pub check_cache: IntCounterVec,
    pub overflows: IntCounterVec,
    pub ejections: IntCounterVec,
}

impl Stats {
    pub fn new() -> Stats {
        let registry = Registry::new();
        let labels = ["reporter", "source_workload", "destination_service", "response_code", "route"];
        let requests = IntCounterVec::new(Opts::new("istio_requests_total", "Requests through the sidecar."), &labels)
            .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "istio_request_duration_milliseconds",
                "Request duration through the sidecar, in milliseconds.",
            )
            .buckets(vec![1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0]),
            &labels,
        )
        .expect("valid metric");
        let retries = IntCounter::new("mixr_proxy_upstream_retries_total", "Upstream attempts that were retries.")
            .expect("valid metric");
        let retry_overflows = IntCounter::new(
            "mixr_proxy_upstream_retry_overflow_total",
            "Retries not sent because the cluster's maxRetries were in flight.",
        )
        .expect("valid metric");
        let upstream_connections = IntCounter::new(
            "mixr_proxy_upstream_connections_opened_total",
            "Upstream TCP connections opened (pooled HTTP/1.1 and HTTP/2).",
        )
        .expect("valid metric");
        let mirrored = IntCounter::new("mixr_proxy_mirrored_requests_total", "Requests copied to a mirror.")
            .expect("valid metric");
        let reports_dropped =
            IntCounter::new("mixr_proxy_reports_dropped_total", "Report entries dropped because the buffer was full.")
                .expect("valid metric");
        let check_cache = IntCounterVec::new(
            Opts::new("mixr_proxy_check_cache_total", "Check cache lookups by result (hit, miss)."),
            &["result"],
        )
        .expect("valid metric");
        let overflows = IntCounterVec::new(
            Opts::new(
                "mixr_proxy_upstream_overflow_total",
                "Requests failed at once by a connection-pool limit, by cluster.",
            ),
            &["cluster"],
        )
        .expect("valid metric");
        let ejections = IntCounterVec::new(
            Opts::new("mixr_proxy_outlier_ejections_total", "Endpoints ejected by outlier detection, by cluster."),
            &["cluster"],
        )
        .expect("valid metric");
        for c in [
            Box::new(overflows.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(ejections.clone()),
            Box::new(requests.clone()),
            Box::new(duration.clone()),
            Box::new(retries.clone()),
            Box::new(retry_overflows.clone()),
            Box::new(upstream_connections.clone()),
            Box::new(mirrored.clone()),
            Box::new(reports_dropped.clone()),
            Box::new(check_cache.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Stats {
            registry,
            requests,
            duration,
            retries,
            retry_overflows,
            upstream_connections,
            mirrored,
            reports_dropped,
            check_cache,
            overflows,
            ejections,
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}
