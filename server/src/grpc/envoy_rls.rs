//! Envoy's rate-limit service (`envoy.service.ratelimit.v3.RateLimitService`), answered by
//! the same quota handlers, instances and rules as Mixer Check quotas.
//!
//! Each descriptor is matched on its own, with attributes `ratelimit.domain` (the domain)
//! and `ratelimit.descriptor` (its entries as a string map; a repeated key keeps its last
//! value). Every quota instance of the matching rules is charged the descriptor's
//! `hits_addend` (else the request's; 0 means 1). One status per descriptor, in order.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus, RateLimit};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use mixr_adapters::QuotaLimit;
use mixr_adapters::variety::code;
use mixr_rules::bag::{Bag, Referenced};
use mixr_rules::value::{MapVal, StringMap, Value};
use tonic::{Request, Response};

use tracing::Instrument;

use super::Shared;
use super::trace::rpc_span;
use crate::dispatch::quota::{self, Selection};
use crate::metrics::MethodMetrics;

#[derive(Debug, Clone)]
pub struct RlsService {
    shared: Shared,
    metrics: MethodMetrics,
    /// Add draft-IETF `X-RateLimit-*` headers to answers.
    headers: bool,
}

impl RlsService {
    pub fn new(shared: Shared, headers: bool) -> RlsService {
        RlsService { metrics: MethodMetrics::new(&shared.metrics, "rls", "should_rate_limit"), shared, headers }
    }

    pub fn into_server(self) -> RateLimitServiceServer<RlsService> {
        RateLimitServiceServer::new(self)
    }
}

pub fn descriptor_bag<'a>(domain: &'a str, d: &'a RateLimitDescriptor) -> Bag<'a> {
    let entries = d.entries.iter().map(|e| (Cow::Borrowed(e.key.as_str()), Cow::Borrowed(e.value.as_str()))).collect();
    Bag::from_pairs(vec![
        ("ratelimit.domain", Value::String(Cow::Borrowed(domain))),
        ("ratelimit.descriptor", Value::StringMap(MapVal::from(StringMap::new(entries)))),
    ])
}

/// RLS units and their length in seconds.
const UNITS: [(u64, Unit); 7] = [
    (1, Unit::Second),
    (60, Unit::Minute),
    (3600, Unit::Hour),
    (86_400, Unit::Day),
    (7 * 86_400, Unit::Week),
    (30 * 86_400, Unit::Month),
    (365 * 86_400, Unit::Year),
];

/// A limit as Envoy states it: requests per unit of time. A window that is exactly a unit
/// keeps its number; any other window is stated per the smallest unit that holds it, as
/// the whole number of requests that rate allows there (5 per 10 s is 30 per MINUTE),
/// rounded down so a client is never told it may send more than it may.
pub fn rls_limit(max_amount: i64, window: Duration) -> (u32, Unit) {
    let max = max_amount.max(0) as u128;
    let window_ns = window.as_nanos().max(1);
    let (secs, unit) = UNITS.iter().copied().find(|(s, _)| window_ns <= *s as u128 * 1_000_000_000).unwrap_or(UNITS[6]);
    let per_unit = max * secs as u128 * 1_000_000_000 / window_ns;
    (per_unit.min(u32::MAX as u128) as u32, unit)
}

fn status(code: Code, limit: Option<(&QuotaLimit, &str)>) -> DescriptorStatus {
    DescriptorStatus {
        code: code as i32,
        current_limit: limit.map(|(l, name)| {
            let (requests_per_unit, unit) = rls_limit(l.max_amount, l.window);
            RateLimit { name: name.to_string(), requests_per_unit, unit: unit as i32 }
        }),
        limit_remaining: limit.map_or(0, |(l, _)| l.remaining.clamp(0, u32::MAX as i64) as u32),
        duration_until_reset: limit.map(|(l, _)| envoy_types::pb::google::protobuf::Duration {
            seconds: l.reset_after.as_secs() as i64,
            nanos: l.reset_after.subsec_nanos() as i32,
        }),
        ..Default::default()
    }
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue { key: key.into(), value, ..Default::default() }
}

impl RlsService {
    async fn answer(&self, req: &RateLimitRequest) -> Result<RateLimitResponse, tonic::Status> {
        let rt = self.shared.store.current_full();
        let mut statuses = Vec::with_capacity(req.descriptors.len());
        let mut over = false;
        let mut tightest: Option<QuotaLimit> = None;
        for d in &req.descriptors {
            let hits = match d.hits_addend.as_ref().map(|h| h.value) {
                Some(h) if h > 0 => h,
                _ => u64::from(req.hits_addend.max(1)),
            };
            let hits = i64::try_from(hits).unwrap_or(i64::MAX);
            let bag = descriptor_bag(&req.domain, d);
            let mut refs = Referenced::new();
            let matched = rt.snapshot.matching_rules(&bag, &mut refs);
            let q = quota::allocate(
                &rt,
                &bag,
                &matched.rules,
                Selection::All,
                hits,
                false,
                "",
                &self.shared.metrics,
                &self.shared.unconfigured,
            )
            .await;
            if !q.status.is_ok() {
                // A backend that cannot answer (and fails closed): let Envoy apply its own
                // failure mode rather than invent a verdict.
                let c =
                    if q.status.code == code::UNAVAILABLE { tonic::Code::Unavailable } else { tonic::Code::Internal };
                return Err(tonic::Status::new(c, q.status.message));
            }
            if !q.configured {
                statuses.push(status(Code::Ok, None));
                continue;
            }
            let code = if q.granted < hits { Code::OverLimit } else { Code::Ok };
            over |= code == Code::OverLimit;
            let name = q.limit_instance.clone().unwrap_or_default();
            statuses.push(status(code, q.limit.as_ref().map(|l| (l, name.as_str()))));
            if let Some(l) = q.limit
                && tightest.is_none_or(|t| l.remaining < t.remaining)
            {
                tightest = Some(l);
            }
        }
        let mut response_headers_to_add = Vec::new();
        if self.headers
            && let Some(l) = tightest
        {
            response_headers_to_add.push(header(
                "X-RateLimit-Limit",
                format!("{}, {};w={}", l.max_amount, l.max_amount, l.window.as_secs().max(1)),
            ));
            response_headers_to_add.push(header("X-RateLimit-Remaining", l.remaining.max(0).to_string()));
            response_headers_to_add.push(header("X-RateLimit-Reset", l.reset_after.as_secs_f64().ceil().to_string()));
        }
        Ok(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            response_headers_to_add,
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl RateLimitService for RlsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, tonic::Status> {
        let _call = self.shared.in_flight.enter();
        let started = Instant::now();
        let span = rpc_span("envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", request.metadata());
        let result = self.answer(request.get_ref()).instrument(span).await;
        let code = match &result {
            Ok(r) if r.overall_code == Code::OverLimit as i32 => code::RESOURCE_EXHAUSTED,
            Ok(_) => 0,
            Err(s) => s.code() as i32,
        };
        self.metrics.observe(code, started);
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_no_unit_expresses_are_stated_per_the_smallest_unit_that_holds_them() {
        let cases = [
            (5, 1, (5, Unit::Second)),
            (5, 10, (30, Unit::Minute)),
            (5, 60, (5, Unit::Minute)),
            (5, 90, (200, Unit::Hour)),
            (5, 3600, (5, Unit::Hour)),
            (7, 45, (9, Unit::Minute)),
            (1, 86_400 * 2, (3, Unit::Week)),
        ];
        for (max, secs, want) in cases {
            assert_eq!(rls_limit(max, Duration::from_secs(secs)), want, "{max} per {secs}s");
        }
        assert_eq!(rls_limit(5, Duration::from_millis(500)), (10, Unit::Second));
        assert_eq!(rls_limit(u32::MAX as i64, Duration::from_millis(1)), (u32::MAX, Unit::Second), "saturates");
        assert_eq!(rls_limit(-1, Duration::from_secs(10)), (0, Unit::Minute));
    }
}
