//! Logs and traces. Logs go to stderr (text for people, coloured only on a terminal; one
//! flat JSON object a line for collectors, `ts`, `level`, `msg`, then fields). With an OTLP
//! endpoint, spans of the `mixr_rpc` target (one per call, children per adapter call) are
//! exported; logs never carry them, and without an endpoint nobody listens to that target,
//! so creating those spans costs next to nothing.

use std::sync::Arc;

use mixr_otlp::{PipelineProcessor, SpanPipeline};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use mixr_otlp::logfmt::LogFormat;

/// Where server spans go, and which share of traces to keep.
#[derive(Debug, Clone)]
pub struct TraceExport {
    pub pipeline: Arc<SpanPipeline>,
    pub sampling: f64,
}

/// Installs the global subscriber. Returns the tracer provider to keep alive, if any.
pub fn init(format: LogFormat, level: &str, traces: Option<TraceExport>) -> Option<SdkTracerProvider> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level))
        .add_directive("mixr_rpc=off".parse().unwrap_or_else(|_| LevelFilter::OFF.into()));
    let logs = mixr_otlp::logfmt::stderr_layer(format).with_filter(filter);
    let (otel, provider) = match traces {
        Some(t) => {
            let provider = SdkTracerProvider::builder()
                .with_span_processor(PipelineProcessor::new(t.pipeline, "mixr"))
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(t.sampling))))
                .with_resource(Resource::builder_empty().with_service_name("mixr").build())
                .build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("mixr"))
                .with_filter(Targets::new().with_target("mixr_rpc", LevelFilter::INFO));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry().with(logs).with(otel).try_init();
    provider
}
