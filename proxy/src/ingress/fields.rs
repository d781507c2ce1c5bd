//! A request's header fields as the proxy passes them on: the caller's hop-by-hop fields
//! taken off at the door, repeated fields combined into one.

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};

use crate::http1::{connection_has, connection_listed, field_values};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Whether a field belongs to the caller's connection and must go before anything else
/// looks at the request. `TE: trailers` alone is end to end in practice (gRPC) and kept;
/// any other TE (`Trailers` included) is rewritten as exactly that, or goes.
pub fn is_hop_by_hop(name: &HeaderName, value: &HeaderValue) -> bool {
    if name == header::TE {
        return value.as_bytes() != b"trailers";
    }
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == HTTP2_SETTINGS
}

/// Fields a caller's `Connection` may not name: the Host is end to end, and the message's
/// framing was the listener's to read (the proxy frames what it sends itself).
fn protected(name: &HeaderName) -> bool {
    name == header::HOST || name == header::CONTENT_LENGTH
}

/// Takes the caller's hop-by-hop fields off: `Connection` and every field it names (bar
/// the protected ones), `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `TE` (but
/// `trailers`) and `Upgrade`. Done as the request arrives, so the fields the proxy adds
/// later (the identity header, `traceparent`, header operations) are never among those a
/// caller's `Connection` names.
///
/// An upgrade keeps `Connection: upgrade` and its `Upgrade` protocols, except `h2c`: the
/// proxy does not switch a connection to HTTP/2 through an HTTP/1.1 upgrade (as nginx
/// does not), since the streams that followed would reach the app unchecked; without
/// other protocols the request goes on as plain HTTP/1.1.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = connection_listed(headers);
    let protocols: Vec<HeaderValue> = field_values(headers, &header::UPGRADE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !is_h2c(p))
        .filter_map(|p| HeaderValue::from_str(p).ok())
        .collect();
    let upgrading = !protocols.is_empty() && connection_has(headers, "upgrade");
    let trailers = field_values(headers, &header::TE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers")));
    for name in &listed {
        if !protected(name) {
            headers.remove(name);
        }
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION, HTTP2_SETTINGS, header::TRANSFER_ENCODING, header::TE] {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    headers.remove(header::CONNECTION);
    headers.remove(header::UPGRADE);
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        for p in protocols {
            headers.append(header::UPGRADE, p);
        }
    }
}

/// `h2c`, or `h2c/...` with a version.
fn is_h2c(protocol: &str) -> bool {
    let name = protocol.split('/').next().unwrap_or(protocol);
    name.eq_ignore_ascii_case("h2c")
}

/// Combines each field that came more than once into one value (RFC 9110 §5.3): the
/// values in order joined by `, `, or by `; ` for `Cookie` (RFC 6265 §5.4). Checks,
/// routing and the app then all read the same value; otherwise a policy reading the
/// last `end-user` and an app reading the first would disagree. `Content-Length`
/// repeats only with equal values (the listener saw to that) and keeps one.
pub fn combine_repeated(headers: &mut HeaderMap) {
    let repeated: Vec<HeaderName> =
        headers.keys().filter(|k| headers.get_all(*k).iter().nth(1).is_some()).cloned().collect();
    for name in repeated {
        let combined = if name == header::CONTENT_LENGTH {
            headers.get(&name).cloned()
        } else {
            let separator: &[u8] = if name == header::COOKIE { b"; " } else { b", " };
            let mut joined = Vec::new();
            for (i, v) in headers.get_all(&name).iter().enumerate() {
                if i > 0 {
                    joined.extend_from_slice(separator);
                }
                joined.extend_from_slice(v.as_bytes());
            }
            // Each part was a valid value, and so is the separator.
            HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)).ok()
        };
        if let Some(v) = combined {
            headers.insert(name, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in fields {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn pairs(h: &HeaderMap) -> Vec<(String, String)> {
        h.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string())).collect()
    }

    #[test]
    fn connection_takes_only_the_callers_own_fields() {
        let mut h = map(&[
            ("host", "reviews"),
            ("connection", "keep-alive, host, x-hop, content-length"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("content-length", "0"),
            ("te", "trailers, deflate"),
            ("x-end", "2"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut got = pairs(&h);
        got.sort();
        let want = [("content-length", "0"), ("host", "reviews"), ("te", "trailers"), ("x-end", "2")];
        assert_eq!(got, want.map(|(k, v)| (k.to_string(), v.to_string())));
    }

    #[test]
    fn h2c_upgrades_are_dropped_and_others_kept() {
        let mut h = map(&[
            ("host", "a"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(pairs(&h), [("host".to_string(), "a".to_string())]);
        let mut h = map(&[("connection", "upgrade"), ("upgrade", "h2c, websocket")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h.get_all("upgrade").iter().collect::<Vec<_>>(), ["websocket"]);
        // An Upgrade the Connection field does not name is no upgrade at all.
        let mut h = map(&[("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn repeated_fields_become_one() {
        let mut h = map(&[
            ("end-user", "eve"),
            ("x-one", "1"),
            ("end-user", "bob"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("content-length", "5"),
            ("content-length", "5"),
        ]);
        combine_repeated(&mut h);
        assert_eq!(h.len(), h.keys_len());
        assert_eq!(h["end-user"], "eve, bob");
        assert_eq!(h["cookie"], "a=1; b=2");
        assert_eq!(h["content-length"], "5");
        assert_eq!(h["x-one"], "1");
    }
}
