//! What every request goes through as it arrives, on both listeners and whichever
//! protocol or code path (the HTTP/1.1 fast path, hyper's HTTP/1.1 or h2c) read it, before
//! anything looks at it. The request that leaves here is the one that is checked with
//! mixr, routed, reported and forwarded: the proxy and the app cannot disagree about it.
//!
//! - Host (RFC 9112 §3.2): an HTTP/1.1 request without one, or with more than one, or with
//!   an invalid one, is refused; an absolute-form target (or HTTP/2's `:authority`)
//!   replaces it (RFC 9112 §3.2.2); userinfo in the target is refused.
//! - The caller's hop-by-hop fields go ([`fields::strip_hop_by_hop`]), `h2c` upgrades
//!   with them.
//! - Repeated fields are combined into one ([`fields::combine_repeated`]).
//! - The path is normalized ([`path`]), unless turned off.
//!
//! Refusals are 400s, and the connection closes after them.

pub mod fields;
pub mod host;
pub mod path;

use hyper::header::{self, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Uri, Version};

/// Per-listener choices.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Normalize request paths (`--no-normalize-path` turns it off).
    pub normalize_path: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { normalize_path: true }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("HTTP/1.1 request without a Host field")]
    MissingHost,
    #[error("more than one Host field")]
    RepeatedHost,
    #[error("invalid Host: {0}")]
    Host(#[from] host::HostError),
    #[error("userinfo in the request target")]
    Userinfo,
    #[error("invalid path: {0}")]
    Path(#[from] path::PathError),
    #[error("invalid request target")]
    Target,
}

/// Readies `req` for the proxy, or says why it is refused.
pub fn admit<B>(req: &mut Request<B>, options: Options) -> Result<(), Rejection> {
    // One pass over the (few) fields for what the rules below ask about.
    let mut hosts = 0;
    let mut te = 0;
    let mut hop = false;
    for (name, value) in req.headers() {
        if name == header::HOST {
            hosts += 1;
            host::validate(value.as_bytes())?;
        } else {
            te += usize::from(name == header::TE);
            hop |= fields::is_hop_by_hop(name, value);
        }
    }
    // `TE: trailers` twice would otherwise be combined into "trailers, trailers" below.
    hop |= te > 1;
    match hosts {
        0 if req.version() == Version::HTTP_11 => return Err(Rejection::MissingHost),
        0 | 1 => {}
        _ => return Err(Rejection::RepeatedHost),
    }
    if let Some(authority) = req.uri().authority() {
        if authority.as_str().contains('@') {
            return Err(Rejection::Userinfo);
        }
        let host = crate::http1::field_values(req.headers(), &header::HOST).next();
        if host.is_some_and(|h| h.as_bytes() != authority.as_str().as_bytes()) {
            let value = HeaderValue::from_str(authority.as_str()).map_err(|_| Rejection::Target)?;
            req.headers_mut().insert(header::HOST, value);
        }
    }
    if hop {
        fields::strip_hop_by_hop(req.headers_mut());
    }
    if req.headers().len() != req.headers().keys_len() {
        fields::combine_repeated(req.headers_mut());
    }
    if options.normalize_path {
        normalize_target(req.uri_mut())?;
    }
    Ok(())
}

/// Puts the normalized path in the target, keeping the query as it came.
fn normalize_target(uri: &mut Uri) -> Result<(), Rejection> {
    // `*` (OPTIONS) and authority-form (CONNECT) have no path to normalize.
    if !uri.path().starts_with('/') {
        return Ok(());
    }
    let Some(path) = path::normalize(uri.path())? else { return Ok(()) };
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(target).map_err(|_| Rejection::Target)?);
    *uri = Uri::from_parts(parts).map_err(|_| Rejection::Target)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, target: &str, fields: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(target);
        for (k, v) in fields {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn admitted(mut req: Request<()>) -> Result<Request<()>, Rejection> {
        admit(&mut req, Options::default()).map(|()| req)
    }

    #[test]
    fn host_rules() {
        let h11 = Version::HTTP_11;
        assert_eq!(admitted(request(h11, "/", &[])).unwrap_err(), Rejection::MissingHost);
        assert_eq!(admitted(request(h11, "/", &[("host", "a"), ("host", "a")])).unwrap_err(), Rejection::RepeatedHost);
        assert!(admitted(request(Version::HTTP_10, "/", &[])).is_ok(), "HTTP/1.0 may leave Host out");
        assert!(admitted(request(Version::HTTP_2, "http://a/", &[])).is_ok(), "HTTP/2 has :authority");
        assert_eq!(
            admitted(request(h11, "/", &[("host", "a@b")])).unwrap_err(),
            Rejection::Host(host::HostError::Userinfo)
        );
        assert_eq!(admitted(request(h11, "http://u@a/", &[("host", "a")])).unwrap_err(), Rejection::Userinfo);
        let req = admitted(request(h11, "http://good:80/x", &[("host", "evil")])).unwrap();
        assert_eq!(req.headers()["host"], "good:80", "the absolute-form target replaces Host");
        assert_eq!(req.uri().authority().unwrap().as_str(), "good:80");
    }

    /// Found by the `http1_head` fuzz target: two `TE: trailers` fields left a TE of
    /// "trailers, trailers", which upstream clients do not read as `trailers`.
    #[test]
    fn repeated_te_trailers_is_one_te_trailers() {
        let wire = b"-POST /%61dmin//x HTTP/1.1\r\nHost: reviews\r\nContent-Length: 5\r\nTE: trailers\r\nent-Length: 5\r\nTE: trailers\r\n\r\nhello";
        let mut req = crate::http1::server::read_request(wire).unwrap().unwrap();
        admit(&mut req, Options::default()).unwrap();
        assert_eq!(req.headers().get_all(header::TE).iter().collect::<Vec<_>>(), ["trailers"]);
        assert_eq!(req.uri().path(), "/admin/x");
    }

    /// Found by the `http1_head` fuzz target: a TE of "traiLers" was kept as it came
    /// (with an h2c upgrade that was not one, the Connection field not naming it).
    #[test]
    fn te_trailers_in_any_case_becomes_trailers() {
        let wire = b"POST /%61dmin?/x HTTP/1.1\r\nHost: reviews\r\nContenqqqqqqqpgrade: h2c/1.1\r\nHot-Length: 2\r\nTE: traiLers\r\n\r\nhello";
        let mut req = crate::http1::server::read_request(wire).unwrap().unwrap();
        admit(&mut req, Options::default()).unwrap();
        assert_eq!(req.headers().get_all(header::TE).iter().collect::<Vec<_>>(), ["trailers"]);
        assert_eq!(req.uri().path_and_query().unwrap().as_str(), "/admin?/x");
    }

    #[test]
    fn paths_are_normalized_and_queries_kept() {
        let req = admitted(request(Version::HTTP_11, "/a/../%62//c?x=/../y&z=%2e", &[("host", "a")])).unwrap();
        assert_eq!(req.uri().path_and_query().unwrap().as_str(), "/b/c?x=/../y&z=%2e");
        let req = admitted(request(Version::HTTP_11, "http://h/a/./b", &[("host", "h")])).unwrap();
        assert_eq!(req.uri().to_string(), "http://h/a/b");
        let mut req = request(Version::HTTP_11, "/a/../b", &[("host", "a")]);
        admit(&mut req, Options { normalize_path: false }).unwrap();
        assert_eq!(req.uri().path(), "/a/../b", "normalization can be turned off");
        assert_eq!(
            admitted(request(Version::HTTP_11, "/a%zz", &[("host", "a")])).unwrap_err(),
            Rejection::Path(path::PathError::BadEscape)
        );
        assert!(admitted(request(Version::HTTP_11, "*", &[("host", "a")])).is_ok());
    }
}
