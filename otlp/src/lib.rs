//! Exporting spans over OTLP/gRPC from inside a tokio runtime.
//!
//! The SDK's own batch processor runs its exporter on a thread of its own, where the tonic
//! exporter has no runtime. [`SpanPipeline`] queues finished spans (bounded; overflow is
//! counted, never blocking a request) and a tokio task exports them in batches, one
//! exporter per service name. [`PipelineProcessor`] feeds it the spans the SDK finishes.
//!
//! Beside spans, what both binaries share in front of operators: [`logfmt`], the log
//! formats (`--log-format text|json`), and [`probe`], the health-check subcommand.
//!
//! Users: the server's own spans, the `tracing` adapter's report spans (both through
//! `mixr-adapters`/`mixr-server`) and the sidecar's request spans. It depends on no other
//! mixr crate, so the sidecar can use it without the adapters.

pub mod logfmt;
pub mod probe;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::{mpsc, oneshot};

const BATCH: usize = 512;
const QUEUE: usize = 8192;

enum Msg {
    /// A span and the service it belongs to.
    Span(Box<SpanData>, Arc<str>),
    Flush(oneshot::Sender<()>),
}

/// A queue of spans and the task exporting them to one OTLP endpoint.
#[derive(Debug)]
pub struct SpanPipeline {
    tx: mpsc::Sender<Msg>,
    dropped: AtomicU64,
    exported: Arc<AtomicU64>,
    endpoint: String,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Span(..) => "Span",
            Msg::Flush(_) => "Flush",
        })
    }
}

fn exporter(endpoint: &str, service: &str) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let mut e = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    e.set_resource(&Resource::builder_empty().with_service_name(service.to_string()).build());
    Ok(e)
}

impl SpanPipeline {
    /// Starts exporting to `endpoint` (`http://host:4317`). Must run inside a tokio runtime.
    pub fn start(endpoint: &str) -> Result<Arc<SpanPipeline>, String> {
        // Build one exporter now so a malformed endpoint is a config error, not a log line.
        exporter(endpoint, "mixr")?;
        let rt =
            tokio::runtime::Handle::try_current().map_err(|_| "no async runtime to export spans from".to_string())?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let exported = Arc::new(AtomicU64::new(0));
        rt.spawn(run(endpoint.to_string(), rx, exported.clone()));
        Ok(Arc::new(SpanPipeline { tx, dropped: AtomicU64::new(0), exported, endpoint: endpoint.to_string() }))
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Queues a span of `service`; returns false (and counts it) when the queue is full.
    pub fn send(&self, span: SpanData, service: Arc<str>) -> bool {
        if self.tx.try_send(Msg::Span(Box::new(span), service)).is_ok() {
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    /// Exports everything queued so far.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run(endpoint: String, mut rx: mpsc::Receiver<Msg>, exported: Arc<AtomicU64>) {
    let mut exporters: HashMap<Arc<str>, opentelemetry_otlp::SpanExporter> = HashMap::new();
    let mut pending: HashMap<Arc<str>, Vec<SpanData>> = HashMap::new();
    let mut count = 0usize;
    let failing = AtomicBool::new(false);
    loop {
        let msg = match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some(m)) => Some(m),
            Ok(None) => return,
            Err(_) => None,
        };
        let mut flushed = None;
        match msg {
            Some(Msg::Span(span, service)) => {
                pending.entry(service).or_default().push(*span);
                count += 1;
                if count < BATCH {
                    continue;
                }
            }
            Some(Msg::Flush(done)) => flushed = Some(done),
            None => {}
        }
        for (service, batch) in pending.drain() {
            if batch.is_empty() {
                continue;
            }
            if !exporters.contains_key(&service) {
                match exporter(&endpoint, &service) {
                    Ok(e) => {
                        exporters.insert(service.clone(), e);
                    }
                    Err(e) => {
                        tracing::warn!(endpoint = %endpoint, error = %e, "cannot build OTLP exporter");
                        continue;
                    }
                }
            }
            let n = batch.len() as u64;
            if let Some(e) = exporters.get(&service) {
                match e.export(batch).await {
                    Ok(()) => {
                        exported.fetch_add(n, Ordering::Relaxed);
                        if failing.swap(false, Ordering::Relaxed) {
                            tracing::info!(endpoint = %endpoint, "span export recovered");
                        }
                    }
                    Err(err) => {
                        if !failing.swap(true, Ordering::Relaxed) {
                            tracing::warn!(endpoint = %endpoint, error = %err, "span export failed; spans dropped");
                        }
                    }
                }
            }
        }
        count = 0;
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

/// Feeds spans the SDK finishes (mixr's own server spans) into a pipeline.
#[derive(Debug)]
pub struct PipelineProcessor {
    pipeline: Arc<SpanPipeline>,
    service: Arc<str>,
}

impl PipelineProcessor {
    pub fn new(pipeline: Arc<SpanPipeline>, service: &str) -> PipelineProcessor {
        PipelineProcessor { pipeline, service: service.into() }
    }
}

impl SpanProcessor for PipelineProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.pipeline.send(span, self.service.clone());
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}
