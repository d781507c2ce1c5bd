//! Server spans: one per call, continuing the caller's W3C trace (`traceparent`).

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::MetadataMap;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// A server span named `name`, child of the caller's span when it sent `traceparent`.
pub fn rpc_span(name: &'static str, metadata: &MetadataMap) -> Span {
    let span =
        tracing::info_span!(target: "mixr_rpc", "rpc", otel.name = name, otel.kind = "server", rpc.system = "grpc");
    if !span.is_disabled() && metadata.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&Metadata(metadata));
        let _ = span.set_parent(cx);
    }
    span
}

/// A child span around one adapter call.
pub fn adapter_span(handler: &str, variety: &'static str) -> Span {
    tracing::info_span!(target: "mixr_rpc", "adapter", otel.name = format!("{variety} {handler}"), handler = handler, variety = variety)
}
