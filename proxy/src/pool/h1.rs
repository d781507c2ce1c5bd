//! HTTP/1.1 to upstreams, spoken directly on the pooled socket. The request head (with a
//! small body) goes out in one write; the response head is parsed from a buffer the
//! connection keeps; the body is read by whoever polls it. No connection task and no
//! channels stand between the proxy and the socket, which is where a general-purpose
//! client spends its time per request. A response whose body is already in the buffer
//! when its head is parsed gives its connection back to the pool at once.
//!
//! The request body is sent while the response is read, so an upstream that answers
//! early (413, say) or streams its answer as it reads is served as it would be directly.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::io::Io;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode, Version};
use tokio::io::AsyncWrite;

use super::Checkin;
use crate::body::{BoxError, ProxyBody, empty, full};
use crate::http1::framing::{
    Decoded, Decoder, Framing, FramingError, MAX_HEADERS, MAX_LINE, encode_chunk, encode_last_chunk, put_content_length,
};
use crate::http1::{connection_has, connection_listed, field_values, has_field, is_hop_by_hop};

/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed before a response")]
    Closed,
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head over {MAX_LINE} bytes")]
    HeadTooLarge,
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("{0}")]
    Framing(#[from] FramingError),
    #[error("request body: {0}")]
    RequestBody(BoxError),
}

/// One upstream connection and the bytes read from it but not yet used.
pub struct Conn {
    io: Io,
    /// Read, not yet consumed.
    buf: BytesMut,
    /// Encoded, not yet written; kept between requests so a head costs no allocation.
    out: BytesMut,
}

/// A write buffer larger than this (a request body went through it) is not kept idle.
const KEPT_WRITE_BUFFER: usize = 4 * 1024;

impl Conn {
    pub fn new(io: Io) -> Conn {
        Conn { io, buf: BytesMut::with_capacity(READ_CHUNK), out: BytesMut::new() }
    }

    /// Readies the connection to go back to the pool.
    fn idle(mut self) -> Conn {
        if self.out.capacity() > KEPT_WRITE_BUFFER {
            self.out = BytesMut::new();
        }
        self
    }

    /// Whether an idle connection can carry another request: the peer has neither closed
    /// it nor sent anything unasked. No system call unless the socket became readable.
    pub fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(super::io::tcp(&self.io).try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// A failed exchange. `replay` holds the request body when no response byte arrived and
/// none of the body was consumed, so the request can go again on another connection.
pub struct Failure {
    pub error: H1Error,
    pub replay: Option<ProxyBody>,
    /// Whether any of the request reached the socket.
    pub written: bool,
}

/// Writes the request head in origin form and says how the body follows. The body's own
/// framing is chosen here: its exact size when known, else chunked.
fn encode_head(parts: &Parts, host: Option<&str>, body: &ProxyBody, out: &mut BytesMut) -> Framing {
    let target = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    out.reserve(256);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // The caller's own hop-by-hop fields went as its request arrived (`ingress`); what a
    // `Connection` field names now was put there by the proxy's config. The Host is
    // never one of them.
    let listed = connection_listed(&parts.headers);
    for (name, value) in &parts.headers {
        // The caller's `Expect: 100-continue` was answered by our listener already.
        let keep = name == header::HOST || (name == header::TE && value.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if (is_hop_by_hop(name, &listed) && !keep) || name == header::CONTENT_LENGTH || name == header::EXPECT {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Only a value that cannot break the head out of its line.
    if let Some(host) = host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
        && !has_field(&parts.headers, &header::HOST)
    {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = if body.is_end_stream() {
        let bodiless = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE | Method::CONNECT
        );
        if !bodiless || has_field(&parts.headers, &header::CONTENT_LENGTH) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::Empty
    } else if let Some(n) = body.size_hint().exact() {
        put_content_length(out, n);
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// A parsed response head.
struct Head {
    response: Response<()>,
    framing: Framing,
    keep_alive: bool,
}

enum Parsed {
    Partial,
    /// A 1xx answer other than 101, consumed: the real one follows.
    Interim,
    Final(Head),
}

fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Parsed, H1Error> {
    // Left uninitialized: zeroing room for every possible field costs more than parsing.
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_LINE => return Err(H1Error::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(H1Error::Head(e)),
    };
    let status = parsed.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(H1Error::Invalid("status code"))?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    // Where each field lies in the head, so values can share its bytes once frozen.
    let base = buf.as_ptr() as usize;
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let count = parsed.headers.len();
    for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = (field.name.as_ptr() as usize - base) as u32;
        let value = (field.value.as_ptr() as usize - base) as u32;
        *span = (name, name + field.name.len() as u32, value, value + field.value.len() as u32);
    }
    let head = buf.split_to(len).freeze();
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(H1Error::Invalid("101 to a request that asked for no upgrade"));
        }
        return Ok(Parsed::Interim);
    }
    let mut headers = HeaderMap::with_capacity(count);
    for &(ns, ne, vs, ve) in &spans[..count] {
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|_| H1Error::Invalid("header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve)).map_err(|_| H1Error::Invalid("header value"))?;
        headers.append(name, value);
    }
    let framing = framing_of(&headers, status, method)?;
    let persistent = match version {
        Version::HTTP_11 => !connection_has(&headers, "close"),
        _ => connection_has(&headers, "keep-alive") && !connection_has(&headers, "close"),
    };
    let keep_alive = persistent && framing != Framing::UntilClose;
    let listed = connection_listed(&headers);
    let hop: Vec<HeaderName> = headers.keys().filter(|k| is_hop_by_hop(k, &listed)).cloned().collect();
    for name in hop {
        headers.remove(name);
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Parsed::Final(Head { response, framing, keep_alive }))
}

/// How the response body is delimited (RFC 9112 §6.3).
fn framing_of(headers: &HeaderMap, status: StatusCode, method: &Method) -> Result<Framing, H1Error> {
    if method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    if has_field(headers, &header::TRANSFER_ENCODING) {
        let last = field_values(headers, &header::TRANSFER_ENCODING)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .last();
        return Ok(if last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut length = None;
    for v in field_values(headers, &header::CONTENT_LENGTH) {
        for part in v.to_str().map_err(|_| H1Error::Invalid("content-length"))?.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(H1Error::Invalid("content-length"));
            }
            let n: u64 = part.parse().map_err(|_| H1Error::Invalid("content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Invalid("conflicting content-length values"));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

enum SendError {
    Io(io::Error),
    Body(BoxError),
}

/// One request and its response on one connection.
struct Exchange {
    conn: Conn,
    /// The rest of the request body.
    body: Option<ProxyBody>,
    chunked: bool,
    sent: bool,
    /// Writing failed; the response may still come, but the connection is done after it.
    write_failed: Option<io::Error>,
    body_touched: bool,
    written: bool,
    answered: bool,
}

impl Exchange {
    /// Writes what it can of the request; ready once all of it is out.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        loop {
            while !self.conn.out.is_empty() {
                let n = ready!(Pin::new(&mut self.conn.io).poll_write(cx, &self.conn.out)).map_err(SendError::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(SendError::Io(io::ErrorKind::WriteZero.into())));
                }
                self.conn.out.advance(n);
                self.written = true;
            }
            // TLS may hold written bytes back; they must be out before waiting on the body
            // or the response. (A no-op on TCP.)
            ready!(Pin::new(&mut self.conn.io).poll_flush(cx)).map_err(SendError::Io)?;
            let Some(body) = self.body.as_mut() else { return Poll::Ready(Ok(())) };
            if body.is_end_stream() {
                self.end_body(None);
                continue;
            }
            self.body_touched = true;
            match ready!(Pin::new(body).poll_frame(cx)) {
                None => self.end_body(None),
                Some(Err(e)) => return Poll::Ready(Err(SendError::Body(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if self.chunked => encode_chunk(&mut self.conn.out, &data),
                    Ok(data) => self.conn.out.extend_from_slice(&data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.end_body(Some(&trailers));
                        }
                    }
                },
            }
        }
    }

    fn end_body(&mut self, trailers: Option<&HeaderMap>) {
        self.body = None;
        if self.chunked {
            encode_last_chunk(&mut self.conn.out, trailers);
        }
    }

    /// Sends what it can, unless all is sent or sending failed. Ends the exchange only
    /// when the request body itself failed.
    fn poll_progress(&mut self, cx: &mut Context<'_>) -> Result<(), H1Error> {
        if self.sent || self.write_failed.is_some() {
            return Ok(());
        }
        match self.poll_send(cx) {
            Poll::Ready(Ok(())) => self.sent = true,
            Poll::Ready(Err(SendError::Io(e))) => self.write_failed = Some(e),
            Poll::Ready(Err(SendError::Body(e))) => return Err(H1Error::RequestBody(e)),
            Poll::Pending => {}
        }
        Ok(())
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.conn.buf.capacity() - self.conn.buf.len() < READ_CHUNK / 4 {
            self.conn.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.conn.io), cx, &mut self.conn.buf)
    }

    fn poll_head(&mut self, cx: &mut Context<'_>, method: &Method) -> Poll<Result<Head, H1Error>> {
        loop {
            self.poll_progress(cx)?;
            if !self.conn.buf.is_empty() {
                self.answered = true;
                match parse_head(&mut self.conn.buf, method)? {
                    Parsed::Final(head) => return Poll::Ready(Ok(head)),
                    Parsed::Interim => continue,
                    Parsed::Partial => {}
                }
            }
            match ready!(self.poll_read(cx)) {
                Ok(0) => return Poll::Ready(Err(self.write_failed.take().map_or(H1Error::Closed, H1Error::Io))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}

/// Sends `parts` with `body` on `conn` (with `host` when the head has no Host) and returns
/// the response once its head is read; `checkin` takes the connection back when the
/// response ends cleanly.
pub async fn send(
    mut conn: Conn,
    parts: &Parts,
    host: Option<&str>,
    body: ProxyBody,
    checkin: Option<Checkin>,
) -> Result<Response<ProxyBody>, Failure> {
    conn.out.clear();
    let framing = encode_head(parts, host, &body, &mut conn.out);
    let chunked = framing == Framing::Chunked;
    // A small body already in hand goes out with the head in one write.
    let body = match framing {
        Framing::Empty => None,
        _ => Some(body),
    };
    let mut ex = Exchange {
        conn,
        body,
        chunked,
        sent: false,
        write_failed: None,
        body_touched: false,
        written: false,
        answered: false,
    };
    let head = match poll_fn(|cx| ex.poll_head(cx, &parts.method)).await {
        Ok(head) => head,
        Err(error) => {
            let replay = match (ex.answered, ex.body_touched, ex.body.take()) {
                (true, _, _) | (_, true, _) => None,
                (false, false, Some(body)) => Some(body),
                (false, false, None) => Some(empty()),
            };
            return Err(Failure { error, replay, written: ex.written });
        }
    };
    let Head { response, framing, keep_alive } = head;
    let decoder = Decoder::new(framing);
    if ex.sent
        && ex.write_failed.is_none()
        && let Some(n) = decoder.remaining()
        && ex.conn.buf.len() as u64 >= n
    {
        // The whole body is here: the connection is free before the response goes on.
        let data = ex.conn.buf.split_to(n as usize).freeze();
        if keep_alive
            && ex.conn.buf.is_empty()
            && let Some(c) = checkin
        {
            c.put_back(ex.conn.idle());
        }
        return Ok(response.map(|()| if data.is_empty() { empty() } else { full(data) }));
    }
    let body = UpstreamBody { ex: Some(ex), decoder, keep_alive, checkin };
    Ok(response.map(|()| body.boxed_unsync()))
}

/// A response body read from the connection as it is polled.
struct UpstreamBody {
    ex: Option<Exchange>,
    decoder: Decoder,
    keep_alive: bool,
    checkin: Option<Checkin>,
}

impl UpstreamBody {
    /// The body ended: the connection goes back to the pool if it is clean.
    fn finish(&mut self) {
        let Some(ex) = self.ex.take() else { return };
        let clean = ex.sent && ex.write_failed.is_none() && ex.conn.buf.is_empty() && self.decoder.is_done();
        if self.keep_alive
            && clean
            && let Some(c) = self.checkin.take()
        {
            c.put_back(ex.conn.idle());
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.ex = None;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(ex) = this.ex.as_mut() else { return Poll::Ready(None) };
            if let Err(e) = ex.poll_progress(cx) {
                return this.fail(e);
            }
            match this.decoder.decode(&mut ex.conn.buf) {
                Err(e) => return this.fail(e),
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(trailers)) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => match ready!(ex.poll_read(cx)) {
                    Ok(0) => {
                        if let Err(e) = this.decoder.eof() {
                            return this.fail(e);
                        }
                        // Delimited by the close: nothing to give back.
                        this.ex = None;
                        return Poll::Ready(None);
                    }
                    Ok(_) => {}
                    Err(e) => return this.fail(e),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
