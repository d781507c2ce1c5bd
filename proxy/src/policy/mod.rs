//! Enforcement through mixr: a Check before inbound requests reach the app (with a cache
//! keyed by the answer's referenced attributes, and exact quotas asked per request), and
//! Reports of every request, batched in the background.
//!
//! - [`attributes`]: the request's attributes, as Istio's sidecar extracted them.
//! - [`cache`]: the check cache.
//! - [`reports`]: the report batcher.

pub mod attributes;
pub mod cache;
pub mod reports;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mixr_proto::istio::mixer::v1::CheckRequest;
use mixr_proto::istio::mixer::v1::check_request::QuotaParams;
use mixr_proto::istio::mixer::v1::mixer_client::MixerClient;
use mixr_rules::bag::Encoder;
use mixr_rules::config::quota_spec::{QuotaSpec, QuotaSpecBinding, StringMatch as QuotaMatch};
use mixr_rules::value::Value;
use tonic::transport::{Channel, Endpoint};

use crate::rand;

/// What to do when mixr cannot be reached in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPolicy {
    Open,
    Close,
}

#[derive(Debug, Clone)]
pub struct PolicyOptions {
    pub fail_policy: FailPolicy,
    /// The whole decision, retries included, within this.
    pub timeout: Duration,
    pub max_retries: u32,
    pub base_retry_wait: Duration,
    pub max_retry_wait: Duration,
    /// Istio's `disable_check_calls`: no Checks (nor quotas); Reports may still flow.
    pub disable_checks: bool,
    /// Istio's `disable_report_calls`.
    pub disable_reports: bool,
    /// TLS to mixr (`--mixr-ca`), with the workload certificate as client certificate.
    pub tls: Option<crate::certs::channel::MixrTls>,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            fail_policy: FailPolicy::Close,
            timeout: Duration::from_secs(1),
            max_retries: 3,
            base_retry_wait: Duration::from_millis(80),
            max_retry_wait: Duration::from_secs(1),
            disable_checks: false,
            disable_reports: false,
            tls: None,
        }
    }
}

/// The verdict for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allow { request_headers: Vec<(String, String, i32)>, response_headers: Vec<(String, String, i32)> },
    Deny { http_status: u16, body: String, headers: Vec<(String, String)> },
}

pub struct Policy {
    /// mixr's address; each worker opens its own channel to it.
    pub endpoint: Endpoint,
    options: PolicyOptions,
    /// QuotaSpec regexes, compiled at load.
    regexes: HashMap<String, regex::Regex>,
    pub cache: cache::CheckCache,
    quota_specs: Vec<QuotaSpec>,
    bindings: Vec<QuotaSpecBinding>,
    cache_hits: prometheus::IntCounter,
    cache_misses: prometheus::IntCounter,
}

/// A denial as Istio's sidecar answered it: the mapped HTTP status, body `CODE:message`.
pub fn deny(code: i32, message: &str) -> Verdict {
    Verdict::Deny {
        http_status: mixr_proto::http_status_for(code),
        body: format!("{}:{message}", mixr_proto::grpc_code_name(code)),
        headers: Vec::new(),
    }
}

impl Policy {
    pub fn new(
        mixr: &str,
        options: PolicyOptions,
        quota_specs: Vec<QuotaSpec>,
        bindings: Vec<QuotaSpecBinding>,
        cache_lookups: prometheus::IntCounterVec,
    ) -> Result<Policy, String> {
        let endpoint = crate::certs::endpoint(mixr, options.tls.is_some())
            .map_err(|e| format!("--mixr {mixr}: {e}"))?
            .tcp_nodelay(true)
            .connect_timeout(options.timeout);
        let mut regexes = HashMap::new();
        for spec in &quota_specs {
            for m in spec.rules.iter().flat_map(|r| &r.matches).flat_map(|m| m.clause.iter().map(|(_, sm)| sm)) {
                if let QuotaMatch::Regex(r) = m {
                    let re = regex::Regex::new(r)
                        .map_err(|e| format!("QuotaSpec {}/{}: regex {r:?}: {e}", spec.namespace, spec.name))?;
                    regexes.insert(r.clone(), re);
                }
            }
        }
        Ok(Policy {
            endpoint,
            regexes,
            options,
            cache: cache::CheckCache::new(10_000),
            quota_specs,
            bindings,
            cache_hits: cache_lookups.with_label_values(&["hit"]),
            cache_misses: cache_lookups.with_label_values(&["miss"]),
        })
    }

    /// A channel to mixr (connected when first used): plain, or TLS through
    /// `certs::channel` when `--mixr-ca` is given.
    pub fn channel(&self) -> Channel {
        match &self.options.tls {
            Some(tls) => self.endpoint.connect_with_connector_lazy(tls.connector()),
            None => self.endpoint.connect_lazy(),
        }
    }

    pub fn checks(&self) -> bool {
        !self.options.disable_checks
    }

    pub fn reports(&self) -> bool {
        !self.options.disable_reports
    }

    /// Quotas (name, charge) the QuotaSpecs bound to `service` ask of this request.
    pub fn quotas_for(&self, service: &str, namespace: &str, attrs: &[(&str, Value<'_>)]) -> Vec<(String, i64)> {
        let mut out: Vec<(String, i64)> = Vec::new();
        for b in &self.bindings {
            if !b.services.iter().any(|s| (s.name == service || s.name == "*") && s.namespace == namespace) {
                continue;
            }
            for r in &b.quota_specs {
                let Some(spec) = self.quota_specs.iter().find(|q| q.name == r.name && q.namespace == r.namespace)
                else {
                    continue;
                };
                for rule in &spec.rules {
                    let matched = rule.matches.is_empty()
                        || rule.matches.iter().any(|m| {
                            m.clause.iter().all(|(attr, sm)| {
                                let value = attrs.iter().find(|(n, _)| *n == attr.as_str()).map(|(_, v)| v.to_text());
                                value.is_some_and(|v| match sm {
                                    QuotaMatch::Exact(s) => v == *s,
                                    QuotaMatch::Prefix(p) => v.starts_with(p.as_str()),
                                    QuotaMatch::Regex(r) => self.regexes.get(r).is_some_and(|re| re.is_match(&v)),
                                })
                            })
                        });
                    if matched {
                        for q in &rule.quotas {
                            match out.iter_mut().find(|(n, _)| *n == q.quota) {
                                Some(e) => e.1 += q.charge,
                                None => out.push((q.quota.clone(), q.charge)),
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// A cached answer, when there is one. Quotas are never cached: a request that asks
    /// for one always goes to mixr, so no proxy grants more than the server allowed. Apart
    /// from `ask`, so a hit never builds the (large) future of a call.
    pub fn cached(&self, attrs: &[(&str, Value<'_>)], quotas: &[(String, i64)]) -> Option<Verdict> {
        if !quotas.is_empty() {
            return None;
        }
        let hit = self.cache.lookup(attrs, Instant::now());
        if hit.is_some() { &self.cache_hits } else { &self.cache_misses }.inc();
        hit
    }

    /// Asks mixr, retrying within the check timeout, and caches the answer.
    pub async fn ask(
        &self,
        mixr: &MixerClient<Channel>,
        attrs: &[(&str, Value<'_>)],
        quotas: &[(String, i64)],
        dedup: &str,
        traceparent: Option<&str>,
    ) -> Verdict {
        let req = CheckRequest {
            attributes: Some(Encoder::encode_message(attrs.iter().map(|(n, v)| (*n, v)))),
            global_word_count: Encoder::global_word_count(),
            deduplication_id: dedup.to_string(),
            quotas: quotas
                .iter()
                .map(|(n, a)| (n.clone(), QuotaParams { amount: *a, best_effort: false }))
                .collect::<HashMap<_, _>>(),
        };
        let deadline = Instant::now() + self.options.timeout;
        let mut wait = self.options.base_retry_wait;
        for attempt in 0..=self.options.max_retries {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut call = tonic::Request::new(req.clone());
            if let Some(tp) = traceparent.and_then(|t| t.parse().ok()) {
                call.metadata_mut().insert("traceparent", tp);
            }
            call.set_timeout(left);
            let mut client = mixr.clone();
            match tokio::time::timeout(left, client.check(call)).await {
                Ok(Ok(resp)) => return self.verdict(attrs, resp.into_inner(), quotas),
                Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                    return deny(3, status.message());
                }
                _ if attempt < self.options.max_retries => {
                    // Exponential backoff with jitter, never past the deadline.
                    let jittered =
                        wait / 2 + Duration::from_millis(rand::below(wait.as_millis() as u32 / 2 + 1) as u64);
                    tokio::time::sleep(jittered.min(deadline.saturating_duration_since(Instant::now()))).await;
                    wait = (wait * 2).min(self.options.max_retry_wait);
                }
                _ => break,
            }
        }
        match self.options.fail_policy {
            FailPolicy::Open => Verdict::Allow { request_headers: Vec::new(), response_headers: Vec::new() },
            FailPolicy::Close => deny(14, "mixr is unavailable"),
        }
    }

    fn verdict(
        &self,
        attrs: &[(&str, Value<'_>)],
        resp: mixr_proto::istio::mixer::v1::CheckResponse,
        quotas: &[(String, i64)],
    ) -> Verdict {
        let Some(p) = resp.precondition else { return deny(13, "mixr answered without a precondition") };
        let status = p.status.clone().unwrap_or_default();
        let directive = p.route_directive.clone().unwrap_or_default();
        let verdict = if status.code != 0 {
            match directive.direct_response_code {
                0 => deny(status.code, &status.message),
                code => Verdict::Deny {
                    http_status: u16::try_from(code).unwrap_or(500),
                    body: directive.direct_response_body.clone(),
                    headers: directive
                        .response_header_operations
                        .iter()
                        .map(|o| (o.name.clone(), o.value.clone()))
                        .collect(),
                },
            }
        } else {
            let exhausted =
                quotas.iter().find(|(name, amount)| resp.quotas.get(name).is_some_and(|q| q.granted_amount < *amount));
            if let Some((name, _)) = exhausted {
                return deny(8, &format!("Quota is exhausted for: {name}"));
            }
            let quota_failed = resp.quotas.values().find_map(|q| q.status.as_ref().filter(|s| s.code != 0).cloned());
            if let Some(s) = quota_failed {
                return deny(s.code, &s.message);
            }
            let ops = |v: &[mixr_proto::istio::mixer::v1::HeaderOperation]| {
                v.iter().map(|o| (o.name.clone(), o.value.clone(), o.operation)).collect()
            };
            Verdict::Allow {
                request_headers: ops(&directive.request_header_operations),
                response_headers: ops(&directive.response_header_operations),
            }
        };
        if quotas.is_empty() {
            self.cache.insert(attrs, &p, verdict.clone(), Instant::now());
        }
        verdict
    }
}

/// Applies a Check's header operations (REPLACE 0, REMOVE 1, APPEND 2).
pub fn apply_header_ops(headers: &mut hyper::HeaderMap, ops: &[(String, String, i32)]) {
    use hyper::header::{HeaderName, HeaderValue};
    for (name, value, op) in ops {
        let Ok(name) = HeaderName::try_from(name.as_str()) else { continue };
        match op {
            1 => {
                headers.remove(&name);
            }
            2 => {
                if let Ok(v) = HeaderValue::try_from(value.as_str()) {
                    headers.append(name, v);
                }
            }
            _ => {
                if let Ok(v) = HeaderValue::try_from(value.as_str()) {
                    headers.insert(name, v);
                }
            }
        }
    }
}
