//! Reports, batched as Istio's sidecar did (100 entries or 1 s after the first), sent in the
//! background so no response waits; a bounded buffer counts what it drops; flushed on
//! graceful shutdown.
//!
//! Each request's attributes are encoded to the wire while they are still borrowed from
//! the request ([`Entry`], a self-contained `CompressedAttributes`), and appended to the
//! worker's open batch when the response is done: no owned copy of the attributes, no
//! batch-wide word table, no second encoding. A batch is sent as those bytes. Each step
//! had cost more than proxying the request (callgrind, `bench/scripts/proxy-instructions.sh`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use mixr_proto::istio::mixer::v1::ReportResponse;
use mixr_proto::istio::mixer::v1::report_request::RepeatedAttributesSemantics;
use mixr_rules::bag::Encoder;
use mixr_rules::bag::encode::{WireEntry, wire};
use mixr_rules::value::Value;
use prometheus::IntCounter;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;

/// One request's Report entry, on the wire already; the response's attributes are added
/// when it is done.
#[derive(Debug)]
pub struct Entry {
    wire: WireEntry,
    /// The request's `traceparent`, if it had one.
    traceparent: Option<String>,
}

impl Entry {
    pub fn new<'v>(attrs: impl IntoIterator<Item = (&'static str, &'v Value<'v>)>, traceparent: Option<&str>) -> Entry {
        let mut wire = WireEntry::new();
        wire.extend(attrs);
        Entry { wire, traceparent: traceparent.map(str::to_string) }
    }

    pub fn push(&mut self, name: &'static str, value: &Value<'_>) {
        self.wire.push(name, value);
    }

    pub fn extend<'v>(&mut self, attrs: impl IntoIterator<Item = (&'static str, &'v Value<'v>)>) {
        self.wire.extend(attrs);
    }
}

const BATCH: usize = 100;
/// Full batches waiting for a call slot: bounded (with the open batch, about the 2,000
/// entries the sidecar always allowed), so a slow mixr costs dropped (and counted)
/// entries, never the sidecar's memory.
const QUEUED: usize = 20;
/// Report calls in flight at once, so one slow answer does not stall the batching.
const IN_FLIGHT: usize = 4;
/// How long the first entry of a batch waits for the others.
const LINGER: Duration = Duration::from_secs(1);

/// A batch: its entries as `ReportRequest.attributes` fields, ready to send.
#[derive(Default)]
struct Batch {
    body: Vec<u8>,
    entries: usize,
    /// A Report call has one metadata set for many requests, so it carries the first
    /// traced request's `traceparent`.
    traceparent: Option<String>,
}

/// What the requests of a worker and its sending task share.
struct State {
    open: Batch,
    /// When the open batch got its first entry.
    opened: Option<Instant>,
    full: VecDeque<Batch>,
    flushes: Vec<oneshot::Sender<()>>,
    /// Every [`Reporter`] is gone: send what is left and stop.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held across anything that can panic but an allocation; a
        // poisoned state is still consistent batches.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A worker's reporter; its clones share the open batch. The last one dropped has the
/// rest sent.
#[derive(Clone)]
pub struct Reporter {
    inner: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    dropped: IntCounter,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reporter")
    }
}

/// Sends a message already encoded (a whole `ReportRequest`) as it is, and decodes the
/// answer with prost. The bytes are copied into tonic's buffer in one go: prost's encoder
/// would copy them through `BufMut`, a growing chunk at a time.
#[derive(Debug, Default, Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ReportResponse;
    type Encoder = RawCodec;
    type Decoder = <tonic_prost::ProstCodec<ReportResponse, ReportResponse> as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic::codec::Codec::decoder(&mut tonic_prost::ProstCodec::<ReportResponse, ReportResponse>::default())
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.reserve(item.len());
        dst.put_slice(&item);
        Ok(())
    }
}

const REPORT_PATH: &str = "/istio.mixer.v1.Mixer/Report";

impl Reporter {
    pub fn start(client: Channel, dropped: IntCounter) -> Reporter {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                open: Batch::default(),
                opened: None,
                full: VecDeque::new(),
                flushes: Vec::new(),
                closed: false,
            }),
            wake: Notify::new(),
        });
        tokio::spawn(run(client, shared.clone()));
        Reporter { inner: Arc::new(Handle { shared, dropped }) }
    }

    /// Adds one entry to the open batch; never waits.
    pub fn report(&self, entry: Entry) {
        let shared = &self.inner.shared;
        let mut state = shared.lock();
        if state.open.entries >= BATCH {
            // The open batch is full only while the queue of full ones is.
            drop(state);
            self.inner.dropped.inc();
            return;
        }
        let first = state.open.entries == 0;
        if first {
            state.opened = Some(Instant::now());
            state.open.body.reserve(BATCH * (entry.wire.len() + 4));
        }
        entry.wire.append_to_report(&mut state.open.body);
        state.open.entries += 1;
        if state.open.traceparent.is_none() {
            state.open.traceparent = entry.traceparent;
        }
        let mut wake = first;
        if state.open.entries >= BATCH && state.full.len() < QUEUED {
            let batch = std::mem::take(&mut state.open);
            state.full.push_back(batch);
            state.opened = None;
            wake = true;
        }
        drop(state);
        if wake {
            shared.wake.notify_one();
        }
    }

    /// Sends everything queued (graceful shutdown).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        self.inner.shared.lock().flushes.push(done);
        self.inner.shared.wake.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
    }
}

/// What the sending task does next.
enum Next {
    Send(Batch),
    /// Send the open batch (if any), wait for every call, answer the flushes; then stop
    /// if closed.
    Flush(Option<Batch>, Vec<oneshot::Sender<()>>, bool),
    /// The open batch may wait until then.
    Until(Instant),
    Idle,
}

fn next(shared: &Shared) -> Next {
    let mut state = shared.lock();
    if let Some(batch) = state.full.pop_front() {
        // Room in the queue again: a full open batch joins it.
        if state.open.entries >= BATCH {
            let open = std::mem::take(&mut state.open);
            state.full.push_back(open);
            state.opened = None;
        }
        return Next::Send(batch);
    }
    if state.closed || !state.flushes.is_empty() {
        let open = (state.open.entries > 0).then(|| std::mem::take(&mut state.open));
        state.opened = None;
        return Next::Flush(open, std::mem::take(&mut state.flushes), state.closed);
    }
    match state.opened {
        Some(at) if at.elapsed() >= LINGER => {
            state.opened = None;
            Next::Send(std::mem::take(&mut state.open))
        }
        Some(at) => Next::Until(at + LINGER),
        None => Next::Idle,
    }
}

async fn run(client: Channel, shared: Arc<Shared>) {
    let sender = Arc::new(Sender { slots: Arc::new(Semaphore::new(IN_FLIGHT)), failing: AtomicBool::new(false) });
    loop {
        match next(&shared) {
            Next::Send(batch) => send(&client, batch, &sender).await,
            Next::Flush(open, flushes, closed) => {
                if let Some(batch) = open {
                    send(&client, batch, &sender).await;
                }
                sender.drain().await;
                for done in flushes {
                    let _ = done.send(());
                }
                if closed {
                    return;
                }
            }
            Next::Until(deadline) => {
                let _ = tokio::time::timeout_at(deadline, shared.wake.notified()).await;
            }
            Next::Idle => shared.wake.notified().await,
        }
    }
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

/// Sends one batch in the background, waiting only while `IN_FLIGHT` are already out.
async fn send(client: &Channel, batch: Batch, state: &Arc<Sender>) {
    let Batch { mut body, entries, traceparent } = batch;
    if entries == 0 {
        return;
    }
    wire::report_trailer(
        &mut body,
        Encoder::global_word_count(),
        RepeatedAttributesSemantics::IndependentEncoding as i32,
    );
    let Ok(permit) = state.slots.clone().acquire_owned().await else { return };
    let mut grpc = tonic::client::Grpc::new(client.clone());
    let state = state.clone();
    tokio::spawn(async move {
        // Reports are not retried (as in Istio); a failure is logged once per streak.
        let mut call = tonic::Request::new(Bytes::from(body));
        if let Some(tp) = traceparent.and_then(|t| t.parse().ok()) {
            call.metadata_mut().insert("traceparent", tp);
        }
        let report = async {
            grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            grpc.unary(call, tonic::codegen::http::uri::PathAndQuery::from_static(REPORT_PATH), RawCodec).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use mixr_proto::istio::mixer::v1::mixer_server::{Mixer, MixerServer};
    use mixr_proto::istio::mixer::v1::{CheckRequest, CheckResponse, ReportRequest};
    use mixr_rules::value::{MapVal, StringMap};

    /// A mixr that keeps the Reports it is sent.
    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<ReportRequest>>>);

    #[tonic::async_trait]
    impl Mixer for Recorder {
        async fn check(
            &self,
            _: tonic::Request<CheckRequest>,
        ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("check"))
        }

        async fn report(
            &self,
            req: tonic::Request<ReportRequest>,
        ) -> Result<tonic::Response<ReportResponse>, tonic::Status> {
            self.0.lock().unwrap().push(req.into_inner());
            Ok(tonic::Response::new(ReportResponse::default()))
        }
    }

    fn dropped() -> IntCounter {
        IntCounter::new("dropped", "dropped").unwrap()
    }

    fn entry(i: usize) -> Entry {
        let path = format!("/item/{i}");
        let headers = StringMap::new(vec![("x-user".into(), "jason".into()), (":method".into(), "GET".into())]);
        let attrs = [
            ("request.path", Value::String(path.as_str().into())),
            ("request.method", Value::String("GET".into())),
            ("destination.namespace", Value::String("default".into())),
            ("request.headers", Value::StringMap(MapVal::Borrowed(&headers))),
        ];
        let mut e = Entry::new(attrs.iter().map(|(n, v)| (*n, v)), None);
        e.push("response.code", &Value::Int64(200));
        e
    }

    #[tokio::test]
    async fn batches_reach_mixr_whole_and_a_flush_sends_the_rest() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mixr = Recorder::default();
        let svc = MixerServer::new(mixr.clone());
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming).await;
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
        let counter = dropped();
        let reporter = Reporter::start(channel, counter.clone());
        for i in 0..250 {
            reporter.report(entry(i));
        }
        reporter.flush().await;
        let reports = mixr.0.lock().unwrap().clone();
        let mut sizes: Vec<usize> = reports.iter().map(|r| r.attributes.len()).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, vec![50, 100, 100]);
        assert_eq!(counter.get(), 0);
        let manifest = mixr_rules::Manifest::builtin();
        let mut paths = Vec::new();
        for r in &reports {
            let bags = mixr_rules::bag::decode_report(
                &r.attributes,
                &r.default_words,
                r.global_word_count,
                r.repeated_attributes_semantics != RepeatedAttributesSemantics::IndependentEncoding as i32,
                &manifest,
            )
            .unwrap();
            for bag in bags {
                assert_eq!(bag.get("response.code"), Some(&Value::Int64(200)));
                assert_eq!(bag.get("destination.namespace").map(|v| v.to_text()).as_deref(), Some("default"));
                assert_eq!(
                    bag.get("request.headers").map(|v| v.to_text()).as_deref(),
                    Some(":method:GET,x-user:jason")
                );
                paths.push(bag.get("request.path").map(|v| v.to_text()).unwrap());
            }
        }
        paths.sort();
        let mut want: Vec<String> = (0..250).map(|i| format!("/item/{i}")).collect();
        want.sort();
        assert_eq!(paths, want);
    }

    #[tokio::test]
    async fn a_mixr_that_cannot_keep_up_costs_counted_entries_not_memory() {
        // Nothing listens, and the sending task does not run before the test yields: every
        // entry past the queue and the open batch is dropped.
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let counter = dropped();
        let reporter = Reporter::start(channel, counter.clone());
        let room = BATCH * (QUEUED + 1);
        for i in 0..room + 7 {
            reporter.report(entry(i));
        }
        assert_eq!(counter.get(), 7);
        let state = reporter.inner.shared.lock();
        assert_eq!((state.full.len(), state.open.entries), (QUEUED, BATCH));
    }
}
