//! The listener's HTTP/1.1 head parser, then `ingress`, on any bytes: nothing may panic,
//! and a request that is admitted is one the proxy can rely on (one Host at most, no
//! repeated fields, no hop-by-hop fields of the caller's, a normal path).
#![no_main]

use hyper::header::{self, HeaderName};
use libfuzzer_sys::fuzz_target;
use mixr_proxy::http1::server::read_request;
use mixr_proxy::ingress::{Options, admit, path};

fuzz_target!(|data: &[u8]| {
    let Ok(Some(mut req)) = read_request(data) else { return };
    if admit(&mut req, Options::default()).is_err() {
        return;
    }
    let headers = req.headers();
    assert!(headers.get_all(header::HOST).iter().count() <= 1);
    assert_eq!(headers.len(), headers.keys_len(), "repeated fields were combined");
    for name in ["keep-alive", "proxy-connection", "transfer-encoding", "http2-settings"] {
        assert!(!headers.contains_key(HeaderName::from_static(name)), "{name} left");
    }
    if let Some(te) = headers.get(header::TE) {
        assert_eq!(te, "trailers");
    }
    let p = req.uri().path();
    if p.starts_with('/') {
        assert_eq!(path::normalize(p), Ok(None), "the admitted path is normal: {p}");
    }
});
