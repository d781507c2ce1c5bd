//! Bodies that flow through the proxy: streamed from a peer, or made here.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

pub fn stream(body: hyper::body::Incoming) -> ProxyBody {
    body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

/// A response made by the proxy itself.
pub fn reply(status: u16, text: impl Into<String>) -> hyper::Response<ProxyBody> {
    let text = text.into();
    let mut r = hyper::Response::new(full(text));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    r
}
