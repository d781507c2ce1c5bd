//! The sidecar's Prometheus stats (port 15090): its own request counts and durations,
//! upstream pool, retry, mirror and ejection counts, and the process's figures.
//!
//! Istio's `istio_*` request metrics come from mixr, fed by the Reports sidecars send
//! (as Mixer's were): the sidecar's own series are `mixr_proxy_*`, so a `sum()` over
//! both never counts a request twice.

use std::sync::Mutex;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

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
    /// Connections closed as accepted, their listener at its `--max-connections`.
    pub connections_refused: IntCounterVec,
    /// Inbound requests authorization denied, by the policy that decided.
    pub authz_denied: IntCounterVec,
    /// Inbound connections by how the mTLS mode took them.
    pub inbound_mtls: IntCounterVec,
}

impl Stats {
    pub fn new() -> Stats {
        let registry = Registry::new();
        let labels = ["reporter", "source_workload", "destination_service", "response_code", "route"];
        let requests =
            IntCounterVec::new(Opts::new("mixr_proxy_requests_total", "Requests through the sidecar."), &labels)
                .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new("mixr_proxy_request_duration_seconds", "Request duration through the sidecar.")
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
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
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "mixr_proxy_downstream_connections_refused_total",
                "Connections closed as they were accepted, the listener holding --max-connections, by listener.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let authz_denied = IntCounterVec::new(
            Opts::new(
                "mixr_proxy_authz_denied_total",
                "Inbound requests denied by AuthorizationPolicy or RBAC (403), by the policy that decided.",
            ),
            &["policy"],
        )
        .expect("valid metric");
        let inbound_mtls = IntCounterVec::new(
            Opts::new(
                "mixr_proxy_inbound_mtls_connections_total",
                "Inbound connections by outcome: mtls, plaintext, or refused_REASON (plaintext to STRICT, handshake, timeout, no_certificate, no_identity).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for c in [
            Box::new(connections_refused.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(inbound_mtls.clone()),
            Box::new(authz_denied.clone()),
            Box::new(overflows.clone()),
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
        let _ = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
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
            connections_refused,
            authz_denied,
            inbound_mtls,
        }
    }
}

/// A worker's recently used request label sets and their metrics, so a request finds its
/// counter and histogram without hashing its labels into both families. Label values
/// come from the config (destination services, routes), never from callers, but the
/// cache is bounded all the same: past the bound, lookups go to the families.
#[derive(Default)]
pub struct MetricCache(Mutex<Vec<([String; 5], IntCounter, Histogram)>>);

const CACHED_LABEL_SETS: usize = 64;

impl Stats {
    /// Counts one request and its duration under `labels` (see `new` for their order).
    pub fn record_request(&self, cache: &MetricCache, labels: [&str; 5], seconds: f64) {
        let mut sets = cache.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, count, duration)) = sets.iter().find(|(k, _, _)| k.iter().zip(labels).all(|(a, b)| a == b)) {
            count.inc();
            duration.observe(seconds);
            return;
        }
        let (count, duration) = (self.requests.with_label_values(&labels), self.duration.with_label_values(&labels));
        count.inc();
        duration.observe(seconds);
        if sets.len() < CACHED_LABEL_SETS {
            sets.push((labels.map(str::to_string), count, duration));
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}
