//! HTTP/1.1 on the wire, our own where hyper's generality costs per request: the
//! listener's fast path ([`server`]) and, in the pool, the upstream client
//! (`pool::h1`). Both share body framing ([`framing`]) and the hop-by-hop rules here.
//! Anything the fast path does not take (h2c, upgrades, `Expect`, HTTP/1.0, streamed
//! request bodies) is handed, bytes and all, to hyper.

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};

pub mod framing;
pub mod server;

/// Fields that belong to one connection (RFC 9110 §7.6.1), plus those it names.
pub fn is_hop_by_hop(name: &HeaderName, listed: &[HeaderName]) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::TE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
        || listed.contains(name)
}

/// Whether `headers` hold `name`. Heads carry a handful of fields, and the fast paths ask
/// this several times per request: comparing names in a scan costs a fraction of hashing
/// one for a lookup.
pub fn has_field(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers.keys().any(|k| k == name)
}

/// Every value of `name`, in order, found by a scan (see [`has_field`]).
pub fn field_values<'a>(headers: &'a HeaderMap, name: &'a HeaderName) -> impl Iterator<Item = &'a HeaderValue> {
    headers.iter().filter(move |(k, _)| *k == name).map(|(_, v)| v)
}

/// The comma-separated tokens of every `Connection` value.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    field_values(headers, &header::CONNECTION).filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// The field names a `Connection` header lists (rarely any).
pub fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    connection_tokens(headers).filter_map(|t| HeaderName::try_from(t).ok()).collect()
}

pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

// The trailer rules live with the bodies that carry trailers; both HTTP/1.1 sides use them.
pub use crate::body::{forbidden_in_trailers, strip_trailer_fields};

/// 1xx, 204 and 304 responses have no content, so no framing either (RFC 9110 §8.6,
/// RFC 9112 §6.1): an upstream's `Content-Length` on them goes, whichever side serves
/// the response.
pub fn strip_bodiless_framing(status: hyper::StatusCode, headers: &mut HeaderMap) {
    let bodiless = status.is_informational()
        || status == hyper::StatusCode::NO_CONTENT
        || status == hyper::StatusCode::NOT_MODIFIED;
    if bodiless && (has_field(headers, &header::CONTENT_LENGTH) || has_field(headers, &header::TRANSFER_ENCODING)) {
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_lose_framing_and_hop_by_hop_fields() {
        let mut t = HeaderMap::new();
        for (k, v) in [
            ("grpc-status", "0"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("connection", "close"),
            ("keep-alive", "1"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("upgrade", "h2c"),
            ("host", "evil"),
            ("x-checksum", "abc"),
        ] {
            t.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_trailer_fields(&mut t);
        let mut names: Vec<&str> = t.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, ["grpc-status", "x-checksum"]);
    }

    #[test]
    fn bodiless_statuses_lose_their_length() {
        for (status, stripped) in [(204, true), (304, true), (200, false), (404, false)] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
            strip_bodiless_framing(hyper::StatusCode::from_u16(status).unwrap(), &mut h);
            assert_eq!(h.is_empty(), stripped, "{status}");
        }
    }
}
