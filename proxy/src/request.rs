//! What every role reads off a request head: its authority, its fields as text, whether
//! it is gRPC.

use hyper::Request;
use hyper::header::HeaderValue;

use crate::http1::field_values;

/// Headers as text pairs, for matching and attributes; values that are not text are left out.
pub fn header_pairs(headers: &hyper::HeaderMap) -> Vec<(&str, &str)> {
    headers.iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))).collect()
}

/// The authority a request names: its URI's, else its Host header's. It shares the
/// request's bytes, so it outlives the request without a copy.
#[derive(Debug, Clone)]
pub enum RequestAuthority {
    Uri(hyper::http::uri::Authority),
    Host(HeaderValue),
    Missing,
}

impl RequestAuthority {
    /// Empty when missing, or when the Host header is not text.
    pub fn as_str(&self) -> &str {
        match self {
            RequestAuthority::Uri(a) => a.as_str(),
            RequestAuthority::Host(h) => h.to_str().unwrap_or(""),
            RequestAuthority::Missing => "",
        }
    }
}

pub fn authority_of<B>(req: &Request<B>) -> RequestAuthority {
    match (req.uri().authority(), req.headers().get(hyper::header::HOST)) {
        (Some(a), _) => RequestAuthority::Uri(a.clone()),
        (None, Some(h)) => RequestAuthority::Host(h.clone()),
        (None, None) => RequestAuthority::Missing,
    }
}

pub fn is_grpc_headers(headers: &hyper::HeaderMap) -> bool {
    field_values(headers, &hyper::header::CONTENT_TYPE)
        .next()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}
