//! One request at the gateway: admitted as every request is (`ingress`), matched to the
//! servers of its port by Host (on TLS, to the server its SNI chose), redirected to HTTPS
//! when the server says so, routed by the VirtualServices bound to those servers'
//! Gateways, checked through mixr with the gateway's attributes, then sent on by the
//! shared pipeline (`forward`) and reported.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::header::{HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response};

use super::Gateway;
use super::plan::PlanServer;
use crate::body::{ProxyBody, reply};
use crate::config::gateway::Server;
use crate::forward::{authority_of, header_pairs, is_grpc_headers};
use crate::listener::OpenConnection;
use crate::policy::Verdict;
use crate::policy::attributes::{GatewayRequest, ISTIO_ATTRIBUTES};
use crate::proxy::{Direction, UNKNOWN};
use crate::route::{RequestInfo, normalize_host};
use crate::worker::Worker;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What the handshake of a TLS connection settled.
#[derive(Debug)]
pub struct TlsInfo {
    pub sni: Option<String>,
    /// The verified client certificate's identity (MUTUAL).
    pub principal: Option<String>,
    /// The server the SNI chose; the connection's requests are its.
    pub server: PlanServer,
}

/// One accepted connection.
pub struct Conn {
    pub gw: Arc<Gateway>,
    pub worker: Arc<Worker>,
    /// The server port (as the Gateway names it) the connection came to.
    pub port: u16,
    pub peer: SocketAddr,
    pub tls: Option<Arc<TlsInfo>>,
}

/// A plain connection: the sidecar's fast path, hyper for the rest.
pub struct Plain {
    pub conn: Arc<Conn>,
    pub open: Arc<OpenConnection>,
}

/// A connection's requests on the fast path (plain TCP, or TLS once terminated), hyper
/// for the rest.
impl<IO> crate::http1::server::Handle<IO> for Plain
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    async fn handle(&self, req: Request<ProxyBody>) -> Response<ProxyBody> {
        self.conn.handle(req).await
    }

    async fn fallback(&self, io: crate::http1::server::Rewind<IO>) {
        let conn = self.conn.clone();
        crate::listener::conn::serve_hyper(io, conn.gw.proxy.limits, self.open.clone(), move |req| {
            let conn = conn.clone();
            async move { conn.handle(req).await }
        })
        .await;
    }
}

/// A server a request may use: its Gateway, the namespace its host entry allows, itself.
type Matched<'p> = (&'p str, Option<&'p str>, &'p Server);

impl Conn {
    pub async fn handle(&self, mut req: Request<ProxyBody>) -> Response<ProxyBody> {
        let proxy = &self.gw.proxy;
        let started = Instant::now();
        if let Err(why) = crate::ingress::admit(&mut req, proxy.ingress) {
            tracing::debug!(error = %why, "request refused");
            let mut resp = reply(400, format!("bad request: {why}\n"));
            resp.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            proxy.observe(&self.worker, Direction::Outbound, UNKNOWN, "", 400, started);
            return resp;
        }
        // An identity is the mesh's to assert, never a client's.
        req.headers_mut().remove(ISTIO_ATTRIBUTES);
        let mut resp = crate::trace::traced(proxy.tracer.as_ref(), Direction::Outbound, req, |req| {
            Box::pin(self.route(req, started))
        })
        .await;
        let status = resp.status();
        crate::http1::strip_bodiless_framing(status, resp.headers_mut());
        resp
    }

    async fn route(&self, mut req: Request<ProxyBody>, started: Instant) -> Response<ProxyBody> {
        let gw = &*self.gw;
        let proxy = &*gw.proxy;
        let plan = gw.plan.load();
        let authority = authority_of(&req);
        let authority = authority.as_str();
        let host = normalize_host(authority);
        let matched: Vec<Matched<'_>> = match &self.tls {
            Some(t) => t
                .server
                .server
                .host_match(&host)
                .map(|ns| (t.server.gateway.as_str(), ns, &t.server.server))
                .into_iter()
                .collect(),
            None => plan
                .ports
                .get(&self.port)
                .map(|p| {
                    p.servers
                        .iter()
                        .filter_map(|s| s.server.host_match(&host).map(|ns| (s.gateway.as_str(), ns, &s.server)))
                        .collect()
                })
                .unwrap_or_default(),
        };
        if matched.is_empty() {
            return super::listen::no_route(self, started);
        }
        let path_and_query = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        let path = path_and_query.as_str();
        if self.tls.is_none() && matched.iter().any(|(_, _, s)| s.tls.as_ref().is_some_and(|t| t.https_redirect)) {
            // The plain port means nothing to HTTPS: the default port is the client's.
            let mut resp = reply(301, "");
            if let Ok(loc) = HeaderValue::try_from(format!("https://{host}{path}")) {
                resp.headers_mut().insert(hyper::header::LOCATION, loc);
            }
            proxy.observe(&self.worker, Direction::Outbound, UNKNOWN, "", 301, started);
            return resp;
        }
        let tables = proxy.tables.load_full();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let method = req.method().clone();
        let info = RequestInfo {
            authority,
            path,
            method: method.as_str(),
            scheme,
            headers: req.headers(),
            port: Some(self.port),
        };
        let bound = |vs: &crate::config::VirtualService| {
            matched.iter().any(|(g, ns, _)| vs.binds_gateway(g) && ns.is_none_or(|n| n == vs.namespace))
        };
        let Some((route_id, route)) = tables.routes.find_allowed(&info, &proxy.identity.labels, bound) else {
            return super::listen::no_route(self, started);
        };
        let vs_namespace = tables.routes.virtual_service(route_id).map_or("", |vs| vs.namespace.as_str());
        let destination = route.route.first().map_or(UNKNOWN, |d| d.destination.host.as_str());
        let dest_name = destination.split('.').next().unwrap_or(destination);
        let dest_namespace = destination.split('.').nth(1).unwrap_or(vs_namespace);
        let xff = req.headers().get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok());
        let client = super::client_address(self.peer, xff, gw.options.trusted_hops);

        let checker = proxy.policy.as_ref().filter(|p| p.checks()).zip(self.worker.mixr.as_ref());
        let mut report = None;
        let mut request_ops = Vec::new();
        let mut response_ops = Vec::new();
        if checker.is_some() || self.worker.reporter.is_some() {
            let headers = header_pairs(req.headers());
            let tls = self.tls.as_ref().map(|t| (t.sni.as_deref(), t.principal.as_deref()));
            let attrs = crate::policy::attributes::gateway(&GatewayRequest {
                identity: &proxy.identity,
                labels: &gw.labels,
                client,
                peer: self.peer,
                method: method.as_str(),
                path,
                authority,
                headers: &headers,
                grpc: is_grpc_headers(req.headers()),
                tls,
                destination: (destination, dest_name, dest_namespace),
            });
            let header = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
            let verdict = match checker {
                Some((policy, mixr)) => {
                    let quotas = policy.quotas_for(dest_name, dest_namespace, &attrs);
                    match policy.cached(&attrs, &quotas) {
                        Some(hit) => Some(hit),
                        None => {
                            let dedup = header("x-request-id").unwrap_or_default();
                            Some(Box::pin(policy.ask(mixr, &attrs, &quotas, dedup, header("traceparent"))).await)
                        }
                    }
                }
                None => None,
            };
            let entry =
                self.worker.reporter.as_ref().map(|_| {
                    crate::policy::reports::Entry::new(attrs.iter().map(|(n, v)| (*n, v)), header("traceparent"))
                });
            match verdict {
                Some(Verdict::Deny { http_status, body, headers: extra }) => {
                    let mut resp = reply(http_status, body);
                    for (k, v) in extra {
                        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                            resp.headers_mut().insert(k, v);
                        }
                    }
                    let route_name = route.name.as_deref().unwrap_or("");
                    proxy.observe(
                        &self.worker,
                        Direction::Outbound,
                        destination,
                        route_name,
                        resp.status().as_u16(),
                        started,
                    );
                    proxy.report(&self.worker, entry, &resp, started);
                    return resp;
                }
                Some(Verdict::Allow { request_headers, response_headers }) => {
                    request_ops = request_headers;
                    response_ops = response_headers;
                    report = entry;
                }
                None => report = entry,
            }
        }
        crate::policy::apply_header_ops(req.headers_mut(), &request_ops);
        // As Envoy at the edge (`use_remote_address`): the peer joins the forwarded chain.
        let peer_ip = self.peer.ip().to_string();
        let forwarded = match req.headers().get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(chain) => format!("{chain}, {peer_ip}"),
            None => peer_ip,
        };
        if let Ok(v) = HeaderValue::try_from(forwarded) {
            req.headers_mut().insert(X_FORWARDED_FOR, v);
        }
        req.headers_mut().insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        let route_name = route.name.as_deref().unwrap_or("");
        let mut service = destination;
        let mut resp = proxy
            .outbound_route(
                &self.worker,
                req,
                (Some(route_id), route),
                &tables,
                (authority, path, scheme),
                self.peer,
                &mut service,
            )
            .await;
        // A mesh identity a callee's sidecar put on its response is the mesh's, never
        // the outside client's to see.
        resp.headers_mut().remove(ISTIO_ATTRIBUTES);
        crate::policy::apply_header_ops(resp.headers_mut(), &response_ops);
        proxy.observe(&self.worker, Direction::Outbound, service, route_name, resp.status().as_u16(), started);
        proxy.report(&self.worker, report, &resp, started);
        resp
    }
}
