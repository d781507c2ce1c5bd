//! A connection hyper serves (h2c, and HTTP/1.1 the fast path handed over) under the
//! listener's limits. hyper bounds the time to an HTTP/1.1 request head itself
//! (`header_read_timeout`); the rest is here:
//!
//! - idle time: a connection with no request in progress (none being handled, no
//!   response body being sent) for the idle timeout is closed, as Envoy's `idle_timeout`
//!   closes a connection without active streams. For HTTP/2 this also bounds a caller
//!   that trickles a request's HEADERS, since a request counts from its dispatch;
//! - request bodies ([`ClientBody`]): a body that stalls for the body timeout fails, and
//!   so does one whose framing is malformed; on HTTP/1.1 the request is then answered
//!   408 or 400 (not a 503 for the upstream exchange it broke) and the connection closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Response, header};
use tokio::time::{Instant, Sleep};

use crate::body::{BoxError, ProxyBody, reply};

/// What went wrong with a request body on an HTTP/1.1 connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// The caller's framing was malformed (a bad chunk size or chunk end), or the body
    /// ended early.
    Malformed = 1,
    TimedOut = 2,
}

impl BodyFault {
    /// The answer to the request whose body failed; the connection cannot carry another.
    pub fn response(self) -> Response<ProxyBody> {
        let mut resp = match self {
            BodyFault::Malformed => reply(400, "malformed request body\n"),
            BodyFault::TimedOut => reply(408, "request body timed out\n"),
        };
        resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        resp
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("request body: {0}")]
    Read(#[from] hyper::Error),
    #[error("request body: nothing for {0:?}")]
    TimedOut(Duration),
}

/// One hyper-served connection's requests in progress.
#[derive(Debug)]
pub struct ConnState {
    epoch: Instant,
    busy: AtomicUsize,
    /// When `busy` last fell to zero, in milliseconds from `epoch`.
    quiet_since: AtomicU64,
    /// The current HTTP/1.1 request's body fault, if any (0: none).
    fault: AtomicU8,
}

impl ConnState {
    pub fn new() -> Arc<ConnState> {
        Arc::new(ConnState {
            epoch: Instant::now(),
            busy: AtomicUsize::new(0),
            quiet_since: AtomicU64::new(0),
            fault: AtomicU8::new(0),
        })
    }

    /// A request begins: in progress until the returned guard (kept with its response
    /// body) is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.fault.store(0, Ordering::Release);
        Busy(self.clone())
    }

    fn record(&self, fault: BodyFault) {
        let _ = self.fault.compare_exchange(0, fault as u8, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn fault(&self) -> Option<BodyFault> {
        match self.fault.load(Ordering::Acquire) {
            1 => Some(BodyFault::Malformed),
            2 => Some(BodyFault::TimedOut),
            _ => None,
        }
    }

    /// How long no request has been in progress, or `None` while one is.
    fn quiet_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.quiet_since.load(Ordering::Acquire));
        Some(self.epoch.elapsed().saturating_sub(since))
    }

    /// Resolves once no request has been in progress for `timeout`.
    pub fn idle(&self, timeout: Duration) -> IdleWatch<'_> {
        IdleWatch { conn: self, timeout, timer: Box::pin(tokio::time::sleep(timeout)), armed: false }
    }
}

/// See [`ConnState::idle`]. It is polled at every wake of the connection's task (beside
/// hyper's connection), so after its timer has this task's waker it only reads whether
/// the timer elapsed: polling the timer itself each time would also spend the task's
/// coop budget, and make hyper yield more often.
pub struct IdleWatch<'c> {
    conn: &'c ConnState,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// Polled since it was last reset (see `http1::server`'s connection clock).
    armed: bool,
}

impl Future for IdleWatch<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            let fired = if this.armed {
                this.timer.is_elapsed()
            } else {
                this.armed = true;
                std::pin::pin!(tokio::task::coop::unconstrained(this.timer.as_mut())).poll(cx).is_ready()
            };
            if !fired {
                return Poll::Pending;
            }
            let next = match this.conn.quiet_for() {
                Some(quiet) if quiet >= this.timeout => return Poll::Ready(()),
                Some(quiet) => this.timeout - quiet,
                None => this.timeout,
            };
            this.timer.as_mut().reset(Instant::now() + next);
            this.armed = false;
        }
    }
}

/// A request in progress.
#[derive(Debug)]
pub struct Busy(Arc<ConnState>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            let now = self.0.epoch.elapsed().as_millis() as u64;
            self.0.quiet_since.store(now, Ordering::Release);
        }
    }
}

/// A response body that keeps its request in progress until it is sent or dropped.
pub struct Tracked {
    body: ProxyBody,
    _busy: Busy,
}

impl Tracked {
    pub fn new(body: ProxyBody, busy: Busy) -> Tracked {
        Tracked { body, _busy: busy }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body hyper reads from the caller: trailers cleaned
/// (`http1::strip_trailer_fields`), at most `timeout` between frames, and failures
/// recorded on the connection (HTTP/1.1 only: HTTP/2 fails the stream alone).
pub struct ClientBody {
    inner: Incoming,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    conn: Option<Arc<ConnState>>,
    failed: bool,
}

impl ClientBody {
    pub fn new(inner: Incoming, timeout: Duration, conn: Option<Arc<ConnState>>) -> ClientBody {
        ClientBody { inner, timeout, timer: None, conn, failed: false }
    }

    fn fail(&mut self, fault: BodyFault, error: ClientBodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.failed = true;
        if let Some(c) = &self.conn {
            c.record(fault);
        }
        Poll::Ready(Some(Err(Box::new(error))))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = Instant::now() + self.timeout;
                if let Some(t) = self.timer.as_mut() {
                    t.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(crate::body::clean_trailers(frame))))
            }
            Poll::Ready(Some(Err(e))) => self.fail(BodyFault::Malformed, ClientBodyError::Read(e)),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    return self.fail(BodyFault::TimedOut, ClientBodyError::TimedOut(timeout));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves a connection with hyper (HTTP/1.1, or HTTP/2 by its preface or ALPN) under
/// `limits`, as the listeners' fallback does: idle connections close, request bodies are
/// timed and a failed HTTP/1.1 body ends the connection with 400 or 408. `open` rides on
/// upgrade requests, so a spliced connection counts until it ends. For connections that
/// do not start on a listener's fast path (TLS, where the gateway terminates it).
pub async fn serve_hyper<IO, H, F>(
    io: IO,
    limits: crate::listener::Limits,
    open: Arc<crate::listener::OpenConnection>,
    handle: H,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(hyper::Request<ProxyBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send,
{
    use http_body_util::BodyExt;
    let state = ConnState::new();
    let conn = state.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let handle = handle.clone();
        let conn = conn.clone();
        let open = open.clone();
        async move {
            let busy = conn.begin();
            if req.headers().contains_key(header::UPGRADE) {
                req.extensions_mut().insert(open);
            }
            let h1 = req.version() != hyper::Version::HTTP_2;
            let req = req.map(|b| ClientBody::new(b, limits.body_timeout, h1.then(|| conn.clone())).boxed_unsync());
            let mut resp = Box::pin(handle(req)).await;
            if let Some(fault) = conn.fault().filter(|_| h1) {
                resp = fault.response();
            }
            Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked::new(body, busy)))
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.head_timeout.min(limits.idle_timeout));
    let serve = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), svc);
    tokio::select! {
        biased;
        result = serve => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended");
            }
        }
        () = state.idle(limits.idle_timeout) => tracing::debug!("idle connection closed"),
    }
}
