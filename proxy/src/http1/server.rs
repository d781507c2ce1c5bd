//! The listener's HTTP/1.1 fast path: one loop per connection reads a request head into
//! a buffer the connection keeps, hands the request to the proxy and writes the response
//! head (with a small body) in one write. Requests arrive whole: without a body, or with
//! a content-length body of at most [`MAX_INLINE_BODY`] bytes, read before the request
//! is handled.
//!
//! The first request that is anything else hands the connection, with every byte read
//! so far, to [`Handle::fallback`] (hyper) for the rest of its life: the h2c preface,
//! upgrades and CONNECT, `Expect`, HTTP/1.0, chunked or larger bodies. Those keep
//! hyper's streaming and protocol handling; the fast path only takes the common case.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::framing::{MAX_HEADERS, MAX_LINE, encode_chunk, encode_last_chunk, put_content_length};
use super::{connection_has, connection_listed, field_values, has_field, is_hop_by_hop};
use crate::body::{ProxyBody, empty, full};

/// Request bodies up to this size are read whole before the request is handled; larger
/// ones stream through hyper.
pub const MAX_INLINE_BODY: u64 = 64 * 1024;
/// Response bytes gathered before a write.
const WRITE_CHUNK: usize = 64 * 1024;
const READ_CHUNK: usize = 8 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What serves the requests of one listener's connections, plain TCP by default (a
/// gateway's TLS streams too).
pub trait Handle<IO = TcpStream>: Send + Sync + 'static {
    fn handle(&self, req: Request<ProxyBody>) -> impl Future<Output = Response<ProxyBody>> + Send;

    /// Serves the rest of a connection the fast path does not take.
    fn fallback(&self, io: Rewind<IO>) -> impl Future<Output = ()> + Send;
}

/// A connection with bytes already read from it, replayed before the socket's own.
pub struct Rewind<IO = TcpStream> {
    read: Bytes,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            if self.read.is_empty() {
                // Let the read buffer go: hyper has buffers of its own for this connection.
                self.read = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What the bytes read so far hold.
enum Next {
    /// Read more.
    Partial,
    /// Complete; the `Parsed` given to `inspect` holds where its parts lie.
    Request {
        head_len: usize,
        body_len: usize,
    },
    /// Not for the fast path.
    Handoff,
    Bad(StatusCode),
}

/// A request head as positions in the buffer, so the request can share its bytes. One
/// per connection, filled again by each request.
struct Parsed {
    method: (usize, usize),
    target: (usize, usize),
    fields: [(u32, u32, u32, u32); MAX_HEADERS],
    count: usize,
}

fn inspect(buf: &[u8], parsed: &mut Parsed) -> Next {
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_LINE => {
            return Next::Bad(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        Ok(httparse::Status::Partial) => return Next::Partial,
        Err(httparse::Error::TooManyHeaders) => return Next::Bad(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(_) => return Next::Bad(StatusCode::BAD_REQUEST),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else { return Next::Bad(StatusCode::BAD_REQUEST) };
    if req.version != Some(1) || method == "CONNECT" {
        return Next::Handoff;
    }
    let mut body_len: Option<u64> = None;
    let (mut chunked, mut handoff) = (false, false);
    for field in req.headers.iter() {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = content_length(field.value) else { return Next::Bad(StatusCode::BAD_REQUEST) };
            if body_len.is_some_and(|b| b != n) {
                return Next::Bad(StatusCode::BAD_REQUEST);
            }
            body_len = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"expect") {
            handoff = true;
        }
    }
    // Both framings at once is how requests are smuggled past a parser that picks the
    // other one; RFC 9112 §6.1 lets a server refuse it, and nothing legitimate sends it.
    if chunked && body_len.is_some() {
        return Next::Bad(StatusCode::BAD_REQUEST);
    }
    if chunked || handoff {
        return Next::Handoff;
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_INLINE_BODY {
        return Next::Handoff;
    }
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    for (slot, f) in parsed.fields.iter_mut().zip(req.headers.iter()) {
        let (ns, ne) = span(f.name.as_bytes());
        let (vs, ve) = span(f.value);
        *slot = (ns as u32, ne as u32, vs as u32, ve as u32);
    }
    parsed.count = req.headers.len();
    parsed.method = span(method.as_bytes());
    parsed.target = span(target.as_bytes());
    Next::Request { head_len, body_len: body_len as usize }
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6), as hyper reads it on the connections it
/// serves: no sign, no list, nothing around the digits (httparse has taken the field's
/// surrounding spaces and tabs off). `str::parse` would take `+5`, and `str::trim` a
/// no-break space: a length other parsers read differently is how requests are smuggled.
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

impl Parsed {
    fn new() -> Parsed {
        Parsed { method: (0, 0), target: (0, 0), fields: [(0, 0, 0, 0); MAX_HEADERS], count: 0 }
    }
}

/// What the fast path makes of the first bytes a connection sends: the request it hands
/// to the proxy (`Ok(Some)`), nothing yet or nothing for it (`Ok(None)`: more to read, or
/// one for hyper), or the status it refuses it with. The fuzz targets in `proxy/fuzz`
/// drive the head parser through here: no input may panic it.
pub fn read_request(bytes: &[u8]) -> Result<Option<Request<ProxyBody>>, StatusCode> {
    let mut parsed = Parsed::new();
    match inspect(bytes, &mut parsed) {
        Next::Partial | Next::Handoff => Ok(None),
        Next::Bad(status) => Err(status),
        Next::Request { head_len, body_len } if bytes.len() < head_len + body_len => Ok(None),
        Next::Request { head_len, body_len } => {
            let buf = Bytes::copy_from_slice(&bytes[..head_len + body_len]);
            let body = if body_len == 0 { empty() } else { full(buf.slice(head_len..)) };
            build(buf.slice(..head_len), body, &parsed).map(Some).ok_or(StatusCode::BAD_REQUEST)
        }
    }
}

/// Builds the request from a head taken out of the buffer.
fn build(head: Bytes, body: ProxyBody, parsed: &Parsed) -> Option<Request<ProxyBody>> {
    let method = Method::from_bytes(&head[parsed.method.0..parsed.method.1]).ok()?;
    let uri = Uri::from_maybe_shared(head.slice(parsed.target.0..parsed.target.1)).ok()?;
    let mut headers = HeaderMap::with_capacity(parsed.count);
    for &(ns, ne, vs, ve) in &parsed.fields[..parsed.count] {
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        let name = HeaderName::from_bytes(&head[ns..ne]).ok()?;
        headers.append(name, HeaderValue::from_maybe_shared(head.slice(vs..ve)).ok()?);
    }
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some(req)
}

/// How long a caller may take; see `listener::Limits`.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub head: Duration,
    pub idle: Duration,
    pub body: Duration,
}

/// Serves one accepted connection until it closes.
///
/// Time is bounded by one deadline at a time: the connection's first request head must
/// be complete within the head timeout of the accept; later ones within the head timeout
/// of their first byte, after at most the idle timeout of waiting for it; a body must not
/// pause for longer than the body timeout. A caller that runs out of time gets 408 if it
/// had started a request, and the connection closes.
pub async fn serve<IO, H>(mut io: IO, handler: &H, timeouts: &Timeouts)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handle<IO>,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // Allocated by the first response written here, not for connections handed on.
    let mut out = BytesMut::new();
    let mut first = true;
    let mut parsed = Parsed::new();
    let mut deadline = Instant::now() + timeouts.head;
    // One timer for the connection's life. The deadline moves with each request; the
    // timer moves only when it fires before it or must fire sooner, so a request that
    // arrives whole costs no timer work.
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    let mut clock = Clock { timer, armed: false };
    loop {
        // The first request's time counts from the accept.
        let mut head_started = first;
        let next = loop {
            let mut partial = !buf.is_empty();
            if first && partial && H2_PREFACE.starts_with(&buf[..buf.len().min(H2_PREFACE.len())]) {
                if buf.len() >= H2_PREFACE.len() {
                    break Next::Handoff;
                }
            } else if partial {
                match inspect(&buf, &mut parsed) {
                    Next::Partial => {}
                    Next::Request { head_len, body_len, .. } if buf.len() < head_len + body_len => {
                        deadline = Instant::now() + timeouts.body;
                        partial = false;
                    }
                    next => break next,
                }
            }
            if partial && !head_started {
                head_started = true;
                deadline = Instant::now() + timeouts.head;
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 2 {
                buf.reserve(READ_CHUNK);
            }
            match read_by(&mut io, &mut buf, &mut clock, deadline).await {
                Read::Bytes => {}
                Read::Closed => return,
                Read::TimedOut if buf.is_empty() => return,
                Read::TimedOut => return refuse(&mut io, StatusCode::REQUEST_TIMEOUT).await,
            }
        };
        first = false;
        let (head_len, body_len) = match next {
            Next::Request { head_len, body_len } => (head_len, body_len),
            Next::Handoff => {
                drop(out);
                return handler.fallback(Rewind { read: buf.freeze(), io }).await;
            }
            Next::Bad(status) => return refuse(&mut io, status).await,
            Next::Partial => return,
        };
        let head = buf.split_to(head_len).freeze();
        let body = if body_len == 0 { empty() } else { full(buf.split_to(body_len).freeze()) };
        let Some(req) = build(head, body, &parsed) else { return refuse(&mut io, StatusCode::BAD_REQUEST).await };
        let keep_alive = !connection_has(req.headers(), "close");
        let head_only = req.method() == Method::HEAD;
        let trailers_ok =
            field_values(req.headers(), &header::TE).any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        let resp = handler.handle(req).await;
        match write_response(&mut io, &mut out, resp, head_only, trailers_ok, keep_alive).await {
            Ok(true) => {}
            _ => return,
        }
        deadline = Instant::now() + timeouts.idle;
    }
}

enum Read {
    Bytes,
    Closed,
    TimedOut,
}

/// The connection's one timer and whether it holds this task's waker.
struct Clock<'t> {
    timer: Pin<&'t mut Sleep>,
    /// Polled since it was last moved: it wakes this task when it fires. A spawned task's
    /// waker is the same at every poll, so the timer need not be polled again until it
    /// fires (it is then `is_elapsed`) or moves: a read that waits costs no timer work.
    armed: bool,
}

impl Clock<'_> {
    fn move_to(&mut self, deadline: Instant) {
        self.timer.as_mut().reset(deadline);
        self.armed = false;
    }

    /// Whether `deadline` has passed; otherwise the timer will wake the task by then.
    fn poll_passed(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        loop {
            let fired = if self.armed {
                self.timer.is_elapsed()
            } else {
                self.armed = true;
                // Outside the task's budget: a poll the budget refused would leave the
                // timer without the waker, and an idle connection would never time out.
                std::pin::pin!(tokio::task::coop::unconstrained(self.timer.as_mut())).poll(cx).is_ready()
            };
            if !fired {
                return false;
            }
            if self.timer.deadline() >= deadline {
                return true;
            }
            // It fired for an earlier deadline, since moved on.
            self.move_to(deadline);
        }
    }
}

/// Reads into `buf` unless `deadline` passes first.
async fn read_by<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    clock: &mut Clock<'_>,
    deadline: Instant,
) -> Read {
    if deadline < clock.timer.deadline() {
        clock.move_to(deadline);
    }
    std::future::poll_fn(|cx| {
        if let Poll::Ready(read) = tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
            return Poll::Ready(match read {
                Ok(0) | Err(_) => Read::Closed,
                Ok(_) => Read::Bytes,
            });
        }
        if clock.poll_passed(cx, deadline) { Poll::Ready(Read::TimedOut) } else { Poll::Pending }
    })
    .await
}

async fn refuse<IO: AsyncWrite + Unpin>(io: &mut IO, status: StatusCode) {
    let text = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let _ = io.write_all(text.as_bytes()).await;
    let _ = io.shutdown().await;
}

/// Writes a response; `Ok(false)` when the connection cannot carry another (either side
/// said `Connection: close`, or the body failed or did not match its length).
async fn write_response<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut BytesMut,
    resp: Response<ProxyBody>,
    head_only: bool,
    trailers_ok: bool,
    keep_alive: bool,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let no_content =
        status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let bodiless = head_only || no_content;
    // The proxy's own refusals close the connection.
    let keep_alive = keep_alive && !connection_has(&parts.headers, "close");
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let listed = connection_listed(&parts.headers);
    for (name, value) in &parts.headers {
        // An answer to HEAD keeps the length it describes; 1xx, 204 and 304 have none
        // (RFC 9110 §8.6); others get ours.
        if is_hop_by_hop(name, &listed) || (name == header::CONTENT_LENGTH && (no_content || !head_only)) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has_field(&parts.headers, &header::DATE) {
        out.extend_from_slice(b"date: ");
        with_date(|d| out.extend_from_slice(d.as_bytes()));
        out.extend_from_slice(b"\r\n");
    }
    let length = if bodiless { None } else { body.size_hint().exact() };
    let chunked = !bodiless && length.is_none();
    if let Some(n) = length {
        put_content_length(out, n);
    } else if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if bodiless {
        io.write_all(out).await?;
        return Ok(keep_alive);
    }
    let mut sent = 0u64;
    loop {
        // The head waits for the body only while the body has something at once.
        let frame = match poll_once(&mut body) {
            Some(frame) => frame,
            None => {
                io.write_all(out).await?;
                out.clear();
                body.frame().await
            }
        };
        match frame {
            None => {
                if chunked {
                    encode_last_chunk(out, None);
                }
                break;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed; closing the connection");
                io.write_all(out).await?;
                return Ok(false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    sent += data.len() as u64;
                    if chunked {
                        encode_chunk(out, &data);
                    } else {
                        out.extend_from_slice(&data);
                    }
                }
                Err(frame) => {
                    if chunked {
                        let trailers = frame.into_trailers().ok().filter(|_| trailers_ok);
                        encode_last_chunk(out, trailers.as_ref());
                    }
                    break;
                }
            },
        }
        if out.len() >= WRITE_CHUNK {
            io.write_all(out).await?;
            out.clear();
        }
    }
    io.write_all(out).await?;
    out.clear();
    Ok(keep_alive && length.is_none_or(|n| n == sent))
}

/// The body's next frame if it is ready now.
fn poll_once(body: &mut ProxyBody) -> Option<Option<Result<hyper::body::Frame<Bytes>, crate::body::BoxError>>> {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    match Pin::new(body).poll_frame(&mut cx) {
        Poll::Ready(frame) => Some(frame),
        Poll::Pending => None,
    }
}

/// The `Date` value, formatted once a second per thread.
fn with_date(f: impl FnOnce(&str)) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        f(&d.1);
    });
}

#[cfg(test)]
mod tests;
