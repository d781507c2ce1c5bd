//! HTTP/1.1 on the wire, our own where hyper's generality costs per request: the
//! listener's fast path ([`server`]) and, in the pool, the upstream client
//! (`pool::h1`). Both share body framing ([`framing`]) and the hop-by-hop rules here.
//! Anything the fast path does not take (h2c, upgrades, `Expect`, HTTP/1.0, streamed
//! request bodies) is handed, bytes and all, to hyper.

use hyper::HeaderMap;
use hyper::header::{self, HeaderName};

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

/// The field names a `Connection` header lists (rarely any).
pub fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect()
}

pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}
