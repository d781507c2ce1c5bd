//! `tracing`: `tracespan` instances (from proxies' Reports) become OTLP spans with the ids,
//! names, times and tags the instance gives, exported to Jaeger or any OTLP receiver.
//!
//! `endpoint` defaults to the server's `--otlp-endpoint`. With neither, the handler still
//! loads (so a sample config works anywhere) but drops spans, counting them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use mixr_rules::config::{ConfigError, HandlerDoc};
use mixr_rules::snapshot::InstanceValues;
use mixr_rules::templates::Template;
use mixr_rules::value::{Timestamp, Value};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::registry::{AdapterInfo, BuildContext, Handler};
use crate::variety::{BoxFuture, ReportHandler};
use mixr_otlp::SpanPipeline;

pub fn info() -> AdapterInfo {
    AdapterInfo {
        name: "tracing",
        templates: &[Template::TraceSpan],
        validate: |d| parse(d).map(drop),
        validate_instances: None,
        build,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub endpoint: Option<String>,
}

pub fn parse(doc: &HandlerDoc) -> Result<Params, ConfigError> {
    let o = doc.params().obj()?;
    let endpoint = o.get("endpoint", |p| {
        let e = p.text()?;
        if e.starts_with("http://") || e.starts_with("https://") {
            Ok(e)
        } else {
            Err(p.error(format!("{e:?} must be an http:// or https:// OTLP/gRPC address")))
        }
    })?;
    o.finish()?;
    Ok(Params { endpoint })
}

pub struct TraceSpans {
    pipeline: Option<Arc<SpanPipeline>>,
    skipped: AtomicU64,
}

impl TraceSpans {
    pub fn new(pipeline: Option<Arc<SpanPipeline>>) -> TraceSpans {
        TraceSpans { pipeline, skipped: AtomicU64::new(0) }
    }

    /// Instances that could not become spans (bad ids) or had nowhere to go.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

fn text(i: &InstanceValues, f: &str) -> Option<String> {
    i.field(f).map(|v| v.to_text()).filter(|s| !s.is_empty())
}

fn time(i: &InstanceValues, f: &str) -> Option<SystemTime> {
    match i.field(f) {
        Some(Value::Timestamp(Timestamp { seconds, nanos })) if *seconds >= 0 => {
            Some(SystemTime::UNIX_EPOCH + Duration::new(*seconds as u64, *nanos as u32))
        }
        _ => None,
    }
}

fn attribute(key: &str, v: &Value<'_>) -> KeyValue {
    match v {
        Value::Int64(n) => KeyValue::new(key.to_string(), *n),
        Value::Double(d) => KeyValue::new(key.to_string(), *d),
        Value::Bool(b) => KeyValue::new(key.to_string(), *b),
        other => KeyValue::new(key.to_string(), other.to_text()),
    }
}

/// Builds a span from a tracespan instance; `None` when its ids are unusable.
pub fn span_data(i: &InstanceValues) -> Option<(SpanData, String)> {
    let trace_id = TraceId::from_hex(&text(i, "trace_id")?).ok().filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(&text(i, "span_id")?).ok().filter(|s| *s != SpanId::INVALID)?;
    let parent_span_id = text(i, "parent_span_id").and_then(|p| SpanId::from_hex(&p).ok()).unwrap_or(SpanId::INVALID);
    let client = matches!(i.field("client_span"), Some(Value::Bool(true)));
    let start_time = time(i, "start_time").unwrap_or_else(SystemTime::now);
    let end_time = time(i, "end_time").unwrap_or(start_time);
    let mut attributes: Vec<KeyValue> = i.map("span_tags").iter().map(|(k, v)| attribute(k, v)).collect();
    let code = match i.field("http_status_code") {
        Some(Value::Int64(c)) if *c > 0 => {
            attributes.push(KeyValue::new("http.status_code", *c));
            *c
        }
        _ => 0,
    };
    for (field, key) in [("request_size", "http.request_size"), ("response_size", "http.response_size")] {
        if let Some(Value::Int64(n)) = i.field(field) {
            attributes.push(KeyValue::new(key, *n));
        }
    }
    let service =
        if client { text(i, "source_name") } else { text(i, "destination_name") }.unwrap_or_else(|| "unknown".into());
    let data = SpanData {
        span_context: SpanContext::new(trace_id, span_id, TraceFlags::SAMPLED, false, TraceState::default()),
        parent_span_id,
        parent_span_is_remote: false,
        span_kind: if client { SpanKind::Client } else { SpanKind::Server },
        name: text(i, "span_name").unwrap_or_else(|| "unnamed".into()).into(),
        start_time,
        end_time,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if code >= 500 { Status::error(format!("HTTP {code}")) } else { Status::Unset },
        instrumentation_scope: InstrumentationScope::builder("mixr.tracespan").build(),
    };
    Some((data, service))
}

impl ReportHandler for TraceSpans {
    fn report(&self, _instance_name: &str, instances: &[InstanceValues]) {
        for i in instances {
            match (&self.pipeline, span_data(i)) {
                (Some(p), Some((span, service))) => {
                    if !p.send(span, service.into()) {
                        self.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(p) = &self.pipeline {
                p.flush().await;
            }
        })
    }
}

fn build(doc: &HandlerDoc, ctx: &BuildContext) -> Result<Handler, ConfigError> {
    let params = parse(doc)?;
    let endpoint = params.endpoint.or_else(|| ctx.otlp_endpoint.clone());
    let pipeline = match endpoint {
        Some(e) => Some(
            SpanPipeline::start(&e)
                .map_err(|err| ConfigError::new(&doc.loc, format!("{}.endpoint", doc.params_path), err))?,
        ),
        None => {
            tracing::warn!(handler = %doc.display_name(), "tracing adapter has no endpoint (set params.endpoint or --otlp-endpoint): spans are dropped");
            None
        }
    };
    Ok(Handler { check: None, quota: None, report: Some(Arc::new(TraceSpans::new(pipeline))), generator: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(fields: Vec<(&'static str, Value<'static>)>) -> InstanceValues {
        InstanceValues {
            fields,
            maps: vec![(
                "span_tags",
                vec![("user".into(), Value::String("jason".into())), ("retries".into(), Value::Int64(2))],
            )],
        }
    }

    #[test]
    fn instances_become_spans() {
        let i = inst(vec![
            ("trace_id", Value::String("4bf92f3577b34da6a3ce929d0e0e4736".into())),
            ("span_id", Value::String("00f067aa0ba902b7".into())),
            ("parent_span_id", Value::String("1111111111111111".into())),
            ("span_name", Value::String("GET /reviews".into())),
            ("start_time", Value::Timestamp(Timestamp { seconds: 1_700_000_000, nanos: 0 })),
            ("end_time", Value::Timestamp(Timestamp { seconds: 1_700_000_000, nanos: 5_000_000 })),
            ("http_status_code", Value::Int64(503)),
            ("client_span", Value::Bool(false)),
            ("destination_name", Value::String("reviews".into())),
        ]);
        let (s, service) = span_data(&i).unwrap();
        assert_eq!(service, "reviews");
        assert_eq!(s.name, "GET /reviews");
        assert_eq!(s.parent_span_id, SpanId::from_hex("1111111111111111").unwrap());
        assert_eq!(s.end_time.duration_since(s.start_time).unwrap(), Duration::from_millis(5));
        assert_eq!(s.span_kind, SpanKind::Server);
        assert!(matches!(s.status, Status::Error { .. }));
        assert!(s.attributes.contains(&KeyValue::new("user", "jason")));
        assert!(s.attributes.contains(&KeyValue::new("retries", 2)));
    }

    #[test]
    fn bad_ids_are_rejected() {
        assert!(
            span_data(&inst(vec![
                ("trace_id", Value::String("xyz".into())),
                ("span_id", Value::String("00f067aa0ba902b7".into()))
            ]))
            .is_none()
        );
        assert!(
            span_data(&inst(vec![
                ("trace_id", Value::String("00000000000000000000000000000000".into())),
                ("span_id", Value::String("00f067aa0ba902b7".into()))
            ]))
            .is_none()
        );
    }
}
