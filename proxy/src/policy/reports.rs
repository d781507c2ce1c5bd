//! Reports, batched as Istio's sidecar did (100 entries or 1 s after the first), sent in the
//! background so no response waits; a bounded buffer counts what it drops; flushed on
//! graceful shutdown.
//!
//! A batch is encoded straight to the wire (`Encoder::encode_wire`) and sent as those
//! bytes: building prost's map-based messages and encoding them again had cost more than
//! proxying the request (callgrind, `bench/scripts/proxy-instructions.sh`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use mixr_proto::istio::mixer::v1::ReportResponse;
use mixr_proto::istio::mixer::v1::report_request::RepeatedAttributesSemantics;
use mixr_rules::bag::Encoder;
use mixr_rules::bag::encode::wire;
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

/// A message already encoded (a whole `ReportRequest`), sent as it is.
#[derive(Debug, Default, Clone, PartialEq)]
struct Encoded(Bytes);

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever sent, never read.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

const REPORT_PATH: &str = "/istio.mixer.v1.Mixer/Report";

impl Reporter {
    pub fn start(client: Channel, dropped: IntCounter) -> Reporter {
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
async fn send(client: &Channel, pending: &mut Batch, state: &Arc<Sender>) {
    let batch = &mut pending.entries;
    if batch.is_empty() {
        return;
    }
    let traceparent = pending.traceparent.take();
    let mut enc = Encoder::new();
    let mut wired = Vec::with_capacity(batch.len());
    for entry in batch.iter() {
        let mut out = Vec::with_capacity(256);
        enc.encode_wire(entry.iter().map(|(n, v)| (*n, v)), &mut out);
        wired.push(out);
    }
    let body = wire::report_request(
        &wired,
        &enc.into_words(),
        Encoder::global_word_count(),
        RepeatedAttributesSemantics::IndependentEncoding as i32,
    );
    batch.clear();
    let Ok(permit) = state.slots.clone().acquire_owned().await else { return };
    let mut grpc = tonic::client::Grpc::new(client.clone());
    let state = state.clone();
    tokio::spawn(async move {
        // Reports are not retried (as in Istio); a failure is logged once per streak.
        let mut call = tonic::Request::new(Encoded(body.into()));
        if let Some(tp) = traceparent.and_then(|t| t.parse().ok()) {
            call.metadata_mut().insert("traceparent", tp);
        }
        let report = async {
            grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let codec = tonic_prost::ProstCodec::<Encoded, ReportResponse>::default();
            grpc.unary(call, tonic::codegen::http::uri::PathAndQuery::from_static(REPORT_PATH), codec).await
        };
        match tokio::time::timeout(Duration::from_secs(5), report).await {
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

async fn run(client: Channel, mut rx: mpsc::Receiver<Msg>) {
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
