//! Envoy's external authorization API (`envoy.service.auth.v3.Authorization/Check`),
//! answered by the same rules as Mixer Check. Each request's matched quota instances are
//! charged 1; an exhausted quota answers 429.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, attribute_context::Peer,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use mixr_adapters::Status;
use mixr_adapters::variety::code;
use mixr_proto::http_status_for;
use mixr_rules::bag::Bag;
use mixr_rules::config::model::HeaderOpKind;
use mixr_rules::value::{MapVal, StringMap, Timestamp, Value, ip_to_bytes};
use tonic::{Request, Response};

use tracing::Instrument;

use super::Shared;
use super::trace::rpc_span;
use crate::dispatch::quota::{self, Selection};
use crate::dispatch::{self, HeaderOp};
use crate::metrics::{MethodMetrics, code_name};

#[derive(Debug, Clone)]
pub struct AuthzService {
    shared: Shared,
    metrics: MethodMetrics,
}

impl AuthzService {
    pub fn new(shared: Shared) -> AuthzService {
        AuthzService { metrics: MethodMetrics::new(&shared.metrics, "ext_authz", "check"), shared }
    }

    pub fn into_server(self) -> AuthorizationServer<AuthzService> {
        AuthorizationServer::new(self)
    }
}

fn map_value<'a>(entries: impl Iterator<Item = (&'a String, &'a String)>, lowercase_keys: bool) -> Value<'a> {
    Value::StringMap(MapVal::from(StringMap::new(
        entries
            .map(|(k, v)| {
                let key = if lowercase_keys && k.bytes().any(|b| b.is_ascii_uppercase()) {
                    Cow::Owned(k.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(k.as_str())
                };
                (key, Cow::Borrowed(v.as_str()))
            })
            .collect(),
    )))
}

fn socket(address: &Option<Address>) -> Option<(Option<IpAddr>, Option<u32>)> {
    match address.as_ref()?.address.as_ref()? {
        AddressKind::SocketAddress(sa) => {
            let port = match sa.port_specifier {
                Some(PortSpecifier::PortValue(p)) => Some(p),
                _ => None,
            };
            Some((sa.address.parse().ok(), port))
        }
        _ => None,
    }
}

fn peer<'a>(prefix: &'static str, peer: &'a Peer, out: &mut Vec<(&'static str, Value<'a>)>) {
    let name = |field: &'static str| -> &'static str {
        match (prefix, field) {
            ("source", "ip") => "source.ip",
            ("source", "port") => "source.port",
            ("source", "principal") => "source.principal",
            ("source", "labels") => "source.labels",
            ("source", "service") => "source.name",
            ("destination", "ip") => "destination.ip",
            ("destination", "port") => "destination.port",
            ("destination", "principal") => "destination.principal",
            ("destination", "labels") => "destination.labels",
            _ => "destination.service.host",
        }
    };
    if let Some((ip, port)) = socket(&peer.address) {
        if let Some(ip) = ip {
            out.push((name("ip"), Value::Bytes(Cow::Owned(ip_to_bytes(ip)))));
        }
        if let Some(port) = port {
            out.push((name("port"), Value::Int64(port as i64)));
        }
    }
    if !peer.principal.is_empty() {
        out.push((name("principal"), Value::String(Cow::Borrowed(&peer.principal))));
    }
    if !peer.labels.is_empty() {
        out.push((name("labels"), map_value(peer.labels.iter(), false)));
    }
    if !peer.service.is_empty() {
        out.push((name("service"), Value::String(Cow::Borrowed(&peer.service))));
    }
}

/// Maps Envoy's AttributeContext onto Istio's attribute vocabulary.
pub fn attributes(ctx: &AttributeContext) -> Bag<'_> {
    let mut out: Vec<(&'static str, Value<'_>)> = Vec::with_capacity(24);
    if let Some(p) = &ctx.source {
        peer("source", p, &mut out);
    }
    if let Some(p) = &ctx.destination {
        peer("destination", p, &mut out);
    }
    if let Some(req) = &ctx.request {
        if let Some(t) = &req.time {
            out.push(("request.time", Value::Timestamp(Timestamp { seconds: t.seconds, nanos: t.nanos })));
        }
        if let Some(http) = &req.http {
            fn s(v: &str) -> Value<'_> {
                Value::String(Cow::Borrowed(v))
            }
            for (name, v) in [
                ("request.id", &http.id),
                ("request.method", &http.method),
                ("request.path", &http.path),
                ("request.host", &http.host),
                ("request.scheme", &http.scheme),
            ] {
                if !v.is_empty() {
                    out.push((name, s(v)));
                }
            }
            if !http.path.is_empty() {
                let (path, query) = http.path.split_once('?').unwrap_or((&http.path, &http.query));
                out.push(("request.url_path", Value::String(Cow::Borrowed(path))));
                if !query.is_empty() {
                    let params: Vec<(Cow<'_, str>, Cow<'_, str>)> = query
                        .split('&')
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once('=').unwrap_or((p, ""));
                            (Cow::Borrowed(k), Cow::Borrowed(v))
                        })
                        .collect();
                    out.push(("request.query_params", Value::StringMap(MapVal::from(StringMap::new(params)))));
                }
            }
            if http.size >= 0 {
                out.push(("request.size", Value::Int64(http.size)));
            }
            out.push(("request.headers", map_value(http.headers.iter(), true)));
            let header = |name: &str| http.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
            if let Some(ua) = header("user-agent") {
                out.push(("request.useragent", s(ua)));
            }
            if let Some(r) = header("referer") {
                out.push(("request.referer", s(r)));
            }
            let grpc = header("content-type").is_some_and(|ct| ct.starts_with("application/grpc"));
            out.push(("context.protocol", Value::String(Cow::Borrowed(if grpc { "grpc" } else { "http" }))));
        }
    }
    if let Some(tls) = &ctx.tls_session
        && !tls.sni.is_empty()
    {
        out.push(("connection.requested_server_name", Value::String(Cow::Borrowed(&tls.sni))));
    }
    if !ctx.context_extensions.is_empty() {
        out.push(("context.extensions", map_value(ctx.context_extensions.iter(), false)));
    }
    Bag::from_pairs(out)
}

fn header_option(op: &HeaderOp) -> HeaderValueOption {
    let action = match op.operation {
        HeaderOpKind::Append => HeaderAppendAction::AppendIfExistsOrAdd,
        _ => HeaderAppendAction::OverwriteIfExistsOrAdd,
    };
    HeaderValueOption {
        header: Some(HeaderValue { key: op.name.clone(), value: op.value.clone(), ..Default::default() }),
        append_action: action as i32,
        ..Default::default()
    }
}

fn denied(status: &Status, response_ops: &[HeaderOp]) -> CheckResponse {
    let (http, body) = match &status.direct_response {
        Some(dr) if dr.code != 0 => (dr.code as u16, dr.body.clone()),
        _ => (http_status_for(status.code), format!("{}:{}", code_name(status.code), status.message)),
    };
    CheckResponse {
        status: Some(RpcStatus { code: status.code, message: status.message.clone(), details: Vec::new() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers: response_ops.iter().filter(|o| o.operation != HeaderOpKind::Remove).map(header_option).collect(),
            body,
        })),
        dynamic_metadata: None,
    }
}

impl AuthzService {
    async fn answer(&self, req: &CheckRequest) -> CheckResponse {
        let empty = AttributeContext::default();
        let ctx = req.attributes.as_ref().unwrap_or(&empty);
        let rt = self.shared.store.current_full();
        let mut bag = attributes(ctx);
        dispatch::generate(&rt, &bag, &self.shared.metrics).apply(&mut bag);
        let outcome = dispatch::check(&rt, &bag, &self.shared.metrics);
        if !outcome.status.is_ok() {
            return denied(&outcome.status, &outcome.response_header_ops);
        }
        let request_id = ctx.request.as_ref().and_then(|r| r.http.as_ref()).map(|h| h.id.as_str()).unwrap_or("");
        let q = quota::allocate(
            &rt,
            &bag,
            &outcome.matched_rules,
            Selection::All,
            1,
            false,
            request_id,
            &self.shared.metrics,
            &self.shared.unconfigured,
        )
        .await;
        if !q.status.is_ok() {
            return denied(&q.status, &outcome.response_header_ops);
        }
        if q.granted < 1 {
            let name = q.limit_instance.as_deref().unwrap_or("quota");
            return denied(
                &Status::new(code::RESOURCE_EXHAUSTED, format!("quota exhausted for: {name}")),
                &outcome.response_header_ops,
            );
        }
        let ops = &outcome.request_header_ops;
        CheckResponse {
            status: Some(RpcStatus { code: 0, message: String::new(), details: Vec::new() }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: ops.iter().filter(|o| o.operation != HeaderOpKind::Remove).map(header_option).collect(),
                headers_to_remove: ops
                    .iter()
                    .filter(|o| o.operation == HeaderOpKind::Remove)
                    .map(|o| o.name.clone())
                    .collect(),
                response_headers_to_add: outcome
                    .response_header_ops
                    .iter()
                    .filter(|o| o.operation != HeaderOpKind::Remove)
                    .map(header_option)
                    .collect(),
                ..Default::default()
            })),
            dynamic_metadata: None,
        }
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, tonic::Status> {
        let _call = self.shared.in_flight.enter();
        let started = Instant::now();
        let span = rpc_span("envoy.service.auth.v3.Authorization/Check", request.metadata());
        let resp = self.answer(request.get_ref()).instrument(span).await;
        let code = resp.status.as_ref().map_or(0, |s| s.code);
        self.metrics.observe(code, started);
        Ok(Response::new(resp))
    }
}
