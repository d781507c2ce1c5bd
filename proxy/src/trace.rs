//! A span per request, exported over OTLP when `--otlp-endpoint` is set. The span
//! continues the caller's W3C trace (`traceparent`), or starts one (sampled at
//! `--trace-sampling`), and its own `traceparent` goes upstream and to mixr, so the app's
//! spans and mixr's Check/Report spans are its children.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use hyper::header::HeaderValue;
use hyper::{Request, Response};
use mixr_otlp::SpanPipeline;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::body::ProxyBody;
use crate::role::Direction;

/// A W3C trace context: `00-<trace id>-<parent id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a `traceparent` value; anything malformed (or all-zero ids) is `None`, as the
    /// W3C spec asks.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceParent { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    pub fn to_header(self) -> String {
        format!("00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, u8::from(self.sampled))
    }
}

/// Exports request spans; shared by all workers.
pub struct Tracer {
    pipeline: Arc<SpanPipeline>,
    sampling: f64,
    service: Arc<str>,
}

/// One request's span, from its start until [`Tracer::finish`].
#[derive(Debug)]
pub struct RequestSpan {
    pub context: TraceParent,
    parent: Option<u64>,
    start: SystemTime,
}

fn nonzero_u64() -> u64 {
    loop {
        let v = crate::rand::next_u64();
        if v != 0 {
            return v;
        }
    }
}

impl Tracer {
    /// Exports to `endpoint` as service `service` (the workload); `sampling` in 0..=1 for
    /// traces this proxy starts. Must run inside a tokio runtime.
    pub fn start(endpoint: &str, sampling: f64, service: &str) -> Result<Tracer, String> {
        Ok(Tracer { pipeline: SpanPipeline::start(endpoint)?, sampling, service: service.into() })
    }

    /// Starts the span of a request that arrived with `incoming` (its `traceparent`).
    pub fn begin(&self, incoming: Option<&str>) -> RequestSpan {
        let parent = incoming.and_then(TraceParent::parse);
        let (trace_id, sampled) = match parent {
            Some(p) => (p.trace_id, p.sampled),
            None => (
                (u128::from(nonzero_u64()) << 64) | u128::from(crate::rand::next_u64()),
                crate::rand::chance(self.sampling * 100.0),
            ),
        };
        RequestSpan {
            context: TraceParent { trace_id, span_id: nonzero_u64(), sampled },
            parent: parent.map(|p| p.span_id),
            start: SystemTime::now(),
        }
    }

    /// Ends the span and queues it for export, if sampled.
    pub fn finish(&self, span: RequestSpan, dir: Direction, method: &str, authority: &str, path: &str, code: u16) {
        if !span.context.sampled {
            return;
        }
        let kind = match dir {
            Direction::Inbound => SpanKind::Server,
            Direction::Outbound => SpanKind::Client,
        };
        let name = format!("{} {}", dir.reporter_kind(), authority);
        let data = SpanData {
            span_context: SpanContext::new(
                TraceId::from(span.context.trace_id),
                SpanId::from(span.context.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: span.parent.map(SpanId::from).unwrap_or(SpanId::INVALID),
            parent_span_is_remote: span.parent.is_some(),
            span_kind: kind,
            name: Cow::Owned(name),
            start_time: span.start,
            end_time: SystemTime::now(),
            attributes: vec![
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("server.address", authority.to_string()),
                KeyValue::new("url.path", path.to_string()),
                KeyValue::new("http.response.status_code", i64::from(code)),
                KeyValue::new("mixr.reporter", dir.reporter()),
            ],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if code >= 500 { Status::error(format!("HTTP {code}")) } else { Status::Unset },
            instrumentation_scope: InstrumentationScope::builder("mixr-proxy").build(),
        };
        self.pipeline.send(data, self.service.clone());
    }

    pub async fn flush(&self) {
        self.pipeline.flush().await;
    }
}

impl RequestSpan {
    /// The `traceparent` naming this span, for the upstream request and mixr.
    pub fn header(&self) -> Option<HeaderValue> {
        HeaderValue::try_from(self.context.to_header()).ok()
    }
}

/// Runs `handle` on `req` inside a request span when tracing is on: the request goes on
/// with this span as the `traceparent`, and the span ends with the response.
pub async fn traced<F, Fut>(
    tracer: Option<&Tracer>,
    dir: Direction,
    mut req: Request<ProxyBody>,
    handle: F,
) -> Response<ProxyBody>
where
    F: FnOnce(Request<ProxyBody>) -> Fut,
    Fut: std::future::Future<Output = Response<ProxyBody>>,
{
    let Some(tracer) = tracer else { return handle(req).await };
    let incoming = req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok());
    let span = tracer.begin(incoming);
    if let Some(h) = span.header() {
        req.headers_mut().insert(TRACEPARENT, h);
    }
    let method = req.method().clone();
    let authority = crate::request::authority_of(&req);
    let path = req.uri().path().to_string();
    let resp = handle(req).await;
    tracer.finish(span, dir, method.as_str(), authority.as_str(), &path, resp.status().as_u16());
    resp
}

const TRACEPARENT: &str = "traceparent";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_malformed_values() {
        let v = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let p = TraceParent::parse(v).unwrap();
        assert_eq!(p.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(p.span_id, 0xb7ad6b7169203331);
        assert!(p.sampled);
        assert_eq!(p.to_header(), v);
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-xyz7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        assert!(!TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap().sampled);
    }
}
