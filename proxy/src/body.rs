//! Bodies that flow through the proxy: streamed from a peer, or made here.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// A body hyper reads from a peer, its trailers cleaned of fields no trailer may carry.
pub fn stream(body: Incoming) -> ProxyBody {
    Streamed(body).boxed_unsync()
}

struct Streamed(Incoming);

impl Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.0).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(clean_trailers(frame)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// A trailers frame without the fields trailers may not carry (see
/// [`strip_trailer_fields`]); data frames as they are.
pub fn clean_trailers(frame: Frame<Bytes>) -> Frame<Bytes> {
    match frame.into_trailers() {
        Ok(mut trailers) => {
            strip_trailer_fields(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }
}

/// A response made by the proxy itself.
pub fn reply(status: u16, text: impl Into<String>) -> hyper::Response<ProxyBody> {
    let text = text.into();
    let mut r = hyper::Response::new(full(text));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    r
}

/// Fields a trailer section may not carry (RFC 9110 §6.5.1): framing, routing,
/// authentication, request modifiers, how to process the content, and anything
/// hop-by-hop. A peer's trailers lose them before they go on, whichever protocol brought
/// them, so a trailer can never be read as framing or as the Host by whoever is next.
pub fn forbidden_in_trailers(name: &hyper::header::HeaderName) -> bool {
    const OTHERS: [&str; 4] = ["keep-alive", "proxy-connection", "www-authenticate", "proxy-authenticate"];
    name == hyper::header::CONTENT_LENGTH
        || name == hyper::header::TRANSFER_ENCODING
        || name == hyper::header::CONNECTION
        || name == hyper::header::TE
        || name == hyper::header::TRAILER
        || name == hyper::header::UPGRADE
        || name == hyper::header::HOST
        || name == hyper::header::CONTENT_TYPE
        || name == hyper::header::CONTENT_ENCODING
        || name == hyper::header::CONTENT_RANGE
        || name == hyper::header::AUTHORIZATION
        || name == hyper::header::PROXY_AUTHORIZATION
        || name == hyper::header::CACHE_CONTROL
        || name == hyper::header::EXPECT
        || name == hyper::header::MAX_FORWARDS
        || name == hyper::header::SET_COOKIE
        || OTHERS.contains(&name.as_str())
}

/// Takes the fields trailers may not carry out of `trailers`.
pub fn strip_trailer_fields(trailers: &mut hyper::HeaderMap) {
    if !trailers.keys().any(forbidden_in_trailers) {
        return;
    }
    let forbidden: Vec<hyper::header::HeaderName> =
        trailers.keys().filter(|k| forbidden_in_trailers(k)).cloned().collect();
    for name in forbidden {
        trailers.remove(name);
    }
}
