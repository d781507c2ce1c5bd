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
/// `labels` is this workload's labels as a map, built once (`destination_labels`).
#[allow(clippy::too_many_arguments)]
pub fn inbound<'a>(
    identity: &'a Identity,
    labels: &'a StringMap<'a>,
    peer: SocketAddr,
    method: &'a str,
    path: &'a str,
    authority: &'a str,
    headers: &[(&'a str, &'a str)],
    grpc: bool,
) -> Vec<(&'static str, Value<'a>)> {
    let s = |v: &'a str| Value::String(Cow::Borrowed(v));
    let mut attrs = Vec::with_capacity(24);
    attrs.extend([
        ("source.ip", Value::Bytes(Cow::Owned(ip_to_bytes(peer.ip())))),
        ("source.port", Value::Int64(peer.port() as i64)),
        ("destination.workload.name", s(&identity.workload)),
        ("destination.workload.namespace", s(&identity.namespace)),
        ("destination.namespace", s(&identity.namespace)),
        ("destination.labels", Value::StringMap(MapVal::Borrowed(labels))),
        ("destination.service.host", s(authority.split(':').next().unwrap_or(authority))),
        // The service this workload backs, as Kubernetes services select pods by `app`:
        // what Kiali's graph and Istio's dashboards group by (destination_service_name,
        // destination_service_namespace), whatever address the caller used.
        ("destination.service.name", s(backed_service(identity, authority))),
        ("destination.service.namespace", s(&identity.namespace)),
        ("context.reporter.kind", s("inbound")),
    ]);
    request_attributes(&mut attrs, method, path, authority, headers, grpc, "http");
    attrs
}

/// The `request.*` attributes and `context.protocol`, the same on every side.
fn request_attributes<'a>(
    attrs: &mut Vec<(&'static str, Value<'a>)>,
    method: &'a str,
    path: &'a str,
    authority: &'a str,
    headers: &[(&'a str, &'a str)],
    grpc: bool,
    scheme: &'static str,
) {
    let s = |v: &'a str| Value::String(Cow::Borrowed(v));
    let header = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    attrs.extend([
        ("request.method", s(method)),
        ("request.path", s(path)),
        ("request.url_path", s(path.split('?').next().unwrap_or(path))),
        ("request.host", s(authority)),
        ("request.scheme", Value::String(Cow::Borrowed(scheme))),
        ("request.time", now()),
        ("context.protocol", s(if grpc { "grpc" } else { "http" })),
        (
            "request.headers",
            Value::StringMap(MapVal::from(StringMap::new(
                headers.iter().map(|(k, v)| (Cow::Borrowed(*k), Cow::Borrowed(*v))).collect(),
            ))),
        ),
    ]);
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
}

/// A request as the gateway saw it, for its attributes.
#[derive(Debug)]
pub struct GatewayRequest<'a> {
    pub identity: &'a Identity,
    /// The gateway's labels as a map, built once.
    pub labels: &'a StringMap<'a>,
    /// The client: the connection's peer, or the address trusted hops forwarded for.
    pub client: std::net::IpAddr,
    pub peer: SocketAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub grpc: bool,
    /// For TLS connections: the SNI, and the verified client certificate's identity.
    pub tls: Option<(Option<&'a str>, Option<&'a str>)>,
    /// The route's destination: host, short name, namespace.
    pub destination: (&'a str, &'a str, &'a str),
}

/// Attributes of a request at the gateway, as Istio 1.4's ingress gateway sent them: the
/// gateway is the source (its workload, namespace and labels, `istio: ingressgateway`),
/// the client's address is `source.ip`, the routed service is the destination, and the
/// reporter kind is `outbound` (the gateway's Envoy ran the mixer filter as a client).
pub fn gateway<'a>(r: &GatewayRequest<'a>) -> Vec<(&'static str, Value<'a>)> {
    let s = |v: &'a str| Value::String(Cow::Borrowed(v));
    let uid = Value::String(Cow::Owned(r.identity.uid()));
    let mut attrs = Vec::with_capacity(32);
    attrs.extend([
        ("source.ip", Value::Bytes(Cow::Owned(ip_to_bytes(r.client)))),
        ("source.uid", uid.clone()),
        ("source.workload.name", s(&r.identity.workload)),
        ("source.workload.namespace", s(&r.identity.namespace)),
        ("source.namespace", s(&r.identity.namespace)),
        ("source.labels", Value::StringMap(MapVal::Borrowed(r.labels))),
        ("destination.service.host", s(r.destination.0)),
        ("destination.service.name", s(r.destination.1)),
        ("destination.service.namespace", s(r.destination.2)),
        ("context.reporter.kind", s("outbound")),
        ("context.reporter.uid", uid),
        ("connection.mtls", Value::Bool(r.tls.is_some_and(|(_, p)| p.is_some()))),
    ]);
    if r.client == r.peer.ip() {
        attrs.push(("source.port", Value::Int64(r.peer.port() as i64)));
    }
    if let Some((sni, principal)) = r.tls {
        if let Some(sni) = sni {
            attrs.push(("connection.requested_server_name", s(sni)));
        }
        if let Some(p) = principal {
            attrs.push(("source.principal", s(p)));
            attrs.push(("source.user", s(p)));
        }
    }
    let scheme = if r.tls.is_some() { "https" } else { "http" };
    request_attributes(&mut attrs, r.method, r.path, r.authority, r.headers, r.grpc, scheme);
    attrs
}

/// The service a workload backs: its `app` label, else the name the caller used.
fn backed_service<'a>(identity: &'a Identity, authority: &'a str) -> &'a str {
    match identity.labels.iter().find(|(k, _)| k == "app") {
        Some((_, app)) => app,
        None => crate::route::service_name(authority),
    }
}

/// The service an outbound request names and its namespace: `reviews.prod.svc...` is
/// `reviews` in `prod`; a short name (`reviews`) resolves in the caller's own namespace,
/// as Kubernetes DNS resolves it. An IP address names no service.
fn named_service<'a>(authority: &'a str, own_namespace: &'a str) -> Option<(&'a str, &'a str)> {
    let host = authority.split(':').next().unwrap_or(authority);
    if authority.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let mut labels = host.split('.');
    let name = labels.next().filter(|n| !n.is_empty())?;
    Some((name, labels.next().unwrap_or(own_namespace)))
}

/// This workload's labels as the `destination.labels` map.
pub fn destination_labels(identity: &Identity) -> StringMap<'static> {
    StringMap::new(identity.labels.iter().map(|(k, v)| (Cow::Owned(k.clone()), Cow::Owned(v.clone()))).collect())
}

/// The header that carries the caller's identity to the callee's sidecar, as Istio's did:
/// base64 of a serialized `istio.mixer.v1.Attributes`.
pub const ISTIO_ATTRIBUTES: &str = "x-istio-attributes";

/// Source attributes a peer may send in `x-istio-attributes`; anything else is ignored.
const PEER_ATTRIBUTES: [&str; 6] = [
    "source.workload.name",
    "source.workload.namespace",
    "source.namespace",
    "source.labels",
    "source.uid",
    "source.name",
];

/// This workload's identity as the `x-istio-attributes` value for outbound requests.
pub fn identity_header(identity: &Identity) -> String {
    use base64::Engine;
    use mixr_proto::istio::mixer::v1::Attributes;
    use mixr_proto::istio::mixer::v1::attributes::{AttributeValue, StringMap as WireMap, attribute_value::Value as V};
    use prost::Message;
    let s = |v: &str| AttributeValue { value: Some(V::StringValue(v.to_string())) };
    let mut a = Attributes::default();
    a.attributes.insert("source.workload.name".into(), s(&identity.workload));
    a.attributes.insert("source.workload.namespace".into(), s(&identity.namespace));
    a.attributes.insert("source.namespace".into(), s(&identity.namespace));
    a.attributes.insert("source.uid".into(), s(&identity.uid()));
    a.attributes.insert(
        "source.labels".into(),
        AttributeValue {
            value: Some(V::StringMapValue(WireMap { entries: identity.labels.iter().cloned().collect() })),
        },
    );
    base64::engine::general_purpose::STANDARD.encode(a.encode_to_vec())
}

/// The caller's source attributes from an `x-istio-attributes` value; bad input is ignored.
pub fn peer_attributes(header: &str) -> Vec<(&'static str, Value<'static>)> {
    use base64::Engine;
    use mixr_proto::istio::mixer::v1::Attributes;
    use prost::Message;
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(header.trim()) else { return Vec::new() };
    let Ok(attrs) = Attributes::decode(bytes.as_slice()) else { return Vec::new() };
    let Ok(bag) = mixr_rules::bag::decode_uncompressed(&attrs, &mixr_rules::Manifest::builtin()) else {
        return Vec::new();
    };
    PEER_ATTRIBUTES.iter().filter_map(|name| bag.get(name).map(|v| (*name, v.clone().into_owned()))).collect()
}

/// The callee's identity from the `x-istio-attributes` its sidecar puts on the response
/// (the same value it sends as a caller), as the destination attributes of the caller's
/// Report: Istio's source-side telemetry names the destination workload, app and version
/// (Kiali's graph draws its edges from them), which only the callee knows.
pub fn callee_attributes(header: &str) -> Vec<(&'static str, Value<'static>)> {
    peer_attributes(header)
        .into_iter()
        .filter_map(|(name, v)| {
            let name = match name {
                "source.workload.name" => "destination.workload.name",
                "source.workload.namespace" => "destination.workload.namespace",
                "source.namespace" => "destination.namespace",
                "source.labels" => "destination.labels",
                "source.uid" => "destination.uid",
                _ => return None,
            };
            Some((name, v))
        })
        .collect()
}

/// Attributes of an outbound request from this workload (for its Report).
pub fn outbound<'a>(
    identity: &'a Identity,
    method: &'a str,
    path: &'a str,
    authority: &'a str,
) -> Vec<(&'static str, Value<'a>)> {
    let s = |v: &'a str| Value::String(Cow::Borrowed(v));
    let mut attrs = vec![
        ("source.workload.name", s(&identity.workload)),
        ("source.workload.namespace", s(&identity.namespace)),
        (
            "source.labels",
            Value::StringMap(MapVal::from(StringMap::new(
                identity.labels.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str()))).collect(),
            ))),
        ),
        ("destination.service.host", s(authority.split(':').next().unwrap_or(authority))),
        ("request.method", s(method)),
        ("request.path", s(path)),
        ("request.host", s(authority)),
        ("request.time", now()),
        ("context.protocol", s("http")),
        ("context.reporter.kind", s("outbound")),
    ];
    if let Some((name, namespace)) = named_service(authority, &identity.namespace) {
        attrs.push(("destination.service.name", s(name)));
        attrs.push(("destination.service.namespace", s(namespace)));
    }
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_travels_in_x_istio_attributes() {
        let id = Identity {
            workload: "reviews-v2".into(),
            namespace: "default".into(),
            labels: vec![("app".into(), "reviews".into())],
        };
        let attrs = peer_attributes(&identity_header(&id));
        let get = |n: &str| attrs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_text());
        assert_eq!(get("source.workload.name").as_deref(), Some("reviews-v2"));
        assert_eq!(get("source.labels").as_deref(), Some("app:reviews"));
        assert!(peer_attributes("not base64!").is_empty());
    }

    #[test]
    fn a_response_names_the_callee() {
        let id = Identity {
            workload: "ratings-v1".into(),
            namespace: "default".into(),
            labels: vec![("app".into(), "ratings".into()), ("version".into(), "v1".into())],
        };
        let attrs = callee_attributes(&identity_header(&id));
        let get = |n: &str| attrs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_text());
        assert_eq!(get("destination.workload.name").as_deref(), Some("ratings-v1"));
        assert_eq!(get("destination.workload.namespace").as_deref(), Some("default"));
        assert_eq!(get("destination.labels").as_deref(), Some("app:ratings,version:v1"));
        assert!(attrs.iter().all(|(k, _)| k.starts_with("destination.")), "{attrs:?}");
    }

    #[test]
    fn outbound_names_the_service_and_its_namespace() {
        let id = Identity { workload: "productpage-v1".into(), namespace: "default".into(), labels: vec![] };
        let get = |authority: &str, name: &str| {
            outbound(&id, "GET", "/", authority).iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_text())
        };
        assert_eq!(get("reviews:9080", "destination.service.name").as_deref(), Some("reviews"));
        assert_eq!(get("reviews:9080", "destination.service.namespace").as_deref(), Some("default"));
        assert_eq!(get("ratings.prod.svc.cluster.local", "destination.service.namespace").as_deref(), Some("prod"));
        assert_eq!(get("10.0.0.7:9080", "destination.service.name"), None);
        assert_eq!(get("[::1]:9080", "destination.service.name"), None);
    }
}
