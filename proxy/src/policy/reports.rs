//! Reports, batched as Istio's sidecar did (100 entries or 1 s after the first), sent in the
//! background so no response waits; a bounded buffer counts what it drops; flushed on
//! graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mixr_proto::istio::mixer::v1::ReportRequest;
use mixr_proto::istio::mixer::v1::mixer_client::MixerClient;
use mixr_proto::istio::mixer::v1::report_request::RepeatedAttributesSemantics;
use mixr_rules::bag::Encoder;
use mixr_rules::value::OwnedValue;
use prometheus::IntCounter;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::transport::Channel;

pub type Entry = Vec<(&'static str, OwnedValue)>;

/// A request's attributes, owned so they outlive the request in the batch.
pub fn owned(attrs: Vec<(&'static str, mixr_rules::value::Value<'_>)>) -> Entry {
    attrs.into_iter().map(|(n, v)| (n, v.into_owned())).collect()
}

const BATCH: usize = 100;
/// Entries waiting for a batch: bounded, so a slow mixr costs dropped (and counted)
/// entries, never the sidecar's memory.
const BUFFER: usize = 2_000;
/// Report calls in flight at once, so one slow answer does not stall the batching.
const IN_FLIGHT: usize = 4;

enum Msg {
    /// An entry and its request's `traceparent`.
    Entry(Entry, Option<String>),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Clone)]
pub struct Reporter {
    tx: mpsc::Sender<Msg>,
    dropped: IntCounter,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl Reporter {
    pub fn start(client: MixerClient<Channel>, dropped: IntCounter) -> Reporter {
        let (tx, rx) = mpsc::channel(BUFFER);
        tokio::spawn(run(client, rx));
        Reporter { tx, dropped }
    }

    /// Queues one entry; never waits.
    pub fn report(&self, entry: Entry, traceparent: Option<String>) {
        if self.tx.try_send(Msg::Entry(entry, traceparent)).is_err() {
            self.dropped.inc();
        }
    }

    /// Sends everything queued (graceful shutdown).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
        }
    }
}

/// Entries waiting to be sent. A Report call has one metadata set for many requests, so
/// it carries the first traced request's `traceparent`.
#[derive(Default)]
struct Batch {
    entries: Vec<Entry>,
    traceparent: Option<String>,
}

/// Sends one batch in the background, waiting only while `IN_FLIGHT` are already out.
async fn send(client: &MixerClient<Channel>, pending: &mut Batch, state: &Arc<Sender>) {
    let batch = &mut pending.entries;
    if batch.is_empty() {
        return;
    }
    let traceparent = pending.traceparent.take();
    let mut enc = Encoder::new();
    let attributes = batch.iter().map(|e| enc.encode(e.iter().map(|(n, v)| (*n, v)))).collect();
    let req = ReportRequest {
        attributes,
        default_words: enc.into_words(),
        global_word_count: Encoder::global_word_count(),
        repeated_attributes_semantics: RepeatedAttributesSemantics::IndependentEncoding as i32,
    };
    batch.clear();
    let Ok(permit) = state.slots.clone().acquire_owned().await else { return };
    let mut client = client.clone();
    let state = state.clone();
    tokio::spawn(async move {
        // Reports are not retried (as in Istio); a failure is logged once per streak.
        let mut call = tonic::Request::new(req);
        if let Some(tp) = traceparent.and_then(|t| t.parse().ok()) {
            call.metadata_mut().insert("traceparent", tp);
        }
        match tokio::time::timeout(Duration::from_secs(5), client.report(call)).await {
            Ok(Ok(_)) => state.failing.store(false, Ordering::Relaxed),
            other => {
                if !state.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = ?other.err(), "report to mixr failed; entries dropped");
                }
            }
        }
        drop(permit);
    });
}

struct Sender {
    slots: Arc<Semaphore>,
    failing: AtomicBool,
}

impl Sender {
    /// Waits for every call in flight.
    async fn drain(&self) {
        let _ = self.slots.acquire_many(IN_FLIGHT as u32).await;
    }
}

async fn run(client: MixerClient<Channel>, mut rx: mpsc::Receiver<Msg>) {
    let mut batch = Batch::default();
    let state = Arc::new(Sender { slots: Arc::new(Semaphore::new(IN_FLIGHT)), failing: AtomicBool::new(false) });
    loop {
        let msg = if batch.entries.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    send(&client, &mut batch, &state).await;
                    continue;
                }
            }
        };
        match msg {
            Some(Msg::Entry(e, traceparent)) => {
                batch.entries.push(e);
                if batch.traceparent.is_none() {
                    batch.traceparent = traceparent;
                }
                if batch.entries.len() >= BATCH {
                    send(&client, &mut batch, &state).await;
                }
            }
            Some(Msg::Flush(done)) => {
                send(&client, &mut batch, &state).await;
                state.drain().await;
                let _ = done.send(());
            }
            None => {
                send(&client, &mut batch, &state).await;
                state.drain().await;
                return;
            }
        }
    }
}
