//! The attributes of one request, as Istio's sidecar extracted them.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::SystemTime;

use mixr_rules::value::{MapVal, StringMap, Timestamp, Value, ip_to_bytes};

use crate::identity::Identity;

pub fn now() -> Value<'static> {
    let d = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Value::Timestamp(Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 })
}

/// Attributes of an inbound request to this workload.
pub fn inbound<'a>(
    identity: &'a Identity,
    peer: SocketAddr,
    method: &'a str,
    path: &'a str,
    authority: &'a str,
    headers: &'a [(String, String)],
    grpc: bool,
) -> Vec<(&'static str, Value<'a>)> {
    let s = |v: &'a str| Value::String(Cow::Borrowed(v));
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let mut attrs = vec![
        ("source.ip", Value::Bytes(Cow::Owned(ip_to_bytes(peer.ip())))),
        ("source.port", Value::Int64(peer.port() as i64)),
        ("destination.workload.name", s(&identity.workload)),
        ("destination.workload.namespace", s(&identity.namespace)),
        ("destination.namespace", s(&identity.namespace)),
        (
            "destination.labels",
            Value::StringMap(MapVal::from(StringMap::new(
                identity.labels.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str()))).collect(),
            ))),
        ),
        ("destination.service.host", s(authority.split(':').next().unwrap_or(authority))),
        ("request.method", s(method)),
        ("request.path", s(path)),
        ("request.url_path", s(path.split('?').next().unwrap_or(path))),
        ("request.host", s(authority)),
        ("request.scheme", s("http")),
        ("request.time", now()),
        ("context.protocol", s(if grpc { "grpc" } else { "http" })),
        ("context.reporter.kind", s("inbound")),
        (
            "request.headers",
            Value::StringMap(MapVal::from(StringMap::new(
                headers.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str()))).collect(),
            ))),
        ),
    ];
    if let Some(ua) = header("user-agent") {
        attrs.push(("request.useragent", s(ua)));
    }
    if let Some(id) = header("x-request-id") {
        attrs.push(("request.id", s(id)));
    }
    if let Some(size) = header("content-length").and_then(|v| v.parse::<i64>().ok()) {
        attrs.push(("request.size", Value::Int64(size)));
    }
    if let Some(query) = path.split_once('?').map(|(_, q)| q) {
        let params = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (Cow::Borrowed(k), Cow::Borrowed(v))
            })
            .collect();
        attrs.push(("request.query_params", Value::StringMap(MapVal::from(StringMap::new(params)))));
    }
    attrs
}
