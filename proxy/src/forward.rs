//! The request pipeline: route, redirect, fault, pick an upstream under pool limits, send
//! with timeout and retries, apply header operations.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, Uri};

use crate::body::{ProxyBody, empty, full, reply};
use crate::config::{Abort, Destination, HeaderOps, HttpRoute, RetryOn, StringMatch};
use crate::http1::field_values;
use crate::pool::{Pool, PoolError};
use crate::proxy::Proxy;
use crate::rand;
use crate::route::{RouteId, pick_weighted_index, total_weight};
use crate::upstream::{InFlight, Outcome, backoff, hash_of};
use crate::worker::Worker;
use hyper::http::request::Parts;
use hyper::http::uri::PathAndQuery;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Requests with bodies up to this size are kept so they can be retried.
const RETRY_BUFFER_LIMIT: u64 = 1 << 20;

pub use crate::request::{RequestAuthority, authority_of, header_pairs, is_grpc_headers};

/// Sends a request to the endpoint `target` over the worker's pool: HTTP/1.1 in origin
/// form with a Host header, or HTTP/2 with the caller's authority. The head is borrowed,
/// so a request that may be retried is not copied for HTTP/1.1.
pub async fn send_upstream(
    pool: &Pool,
    target: &InFlight,
    parts: &Parts,
    body: ProxyBody,
    http2: bool,
    authority: &str,
) -> Result<Response<ProxyBody>, PoolError> {
    if !http2 {
        return pool.send_h1_head(&target.target(), parts, Some(authority).filter(|a| !a.is_empty()), body).await;
    }
    let mut parts = parts.clone();
    let pq = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut uri = hyper::http::uri::Parts::default();
    let authority = if authority.is_empty() { target.endpoint().authority() } else { authority };
    uri.scheme = Some(hyper::http::uri::Scheme::HTTP);
    uri.authority = authority.parse().ok();
    uri.path_and_query = Some(pq);
    if let Ok(u) = Uri::from_parts(uri) {
        parts.uri = u;
    }
    parts.version = hyper::Version::HTTP_2;
    pool.send_h2(&target.target(), Request::from_parts(parts, body)).await
}

fn apply_ops(headers: &mut hyper::HeaderMap, ops: &HeaderOps) {
    for (k, v) in &ops.set {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
            headers.insert(k, v);
        }
    }
    for (k, v) in &ops.add {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
            headers.append(k, v);
        }
    }
    for k in &ops.remove {
        headers.remove(k.as_str());
    }
}

fn grpc_abort(code: i32) -> Response<ProxyBody> {
    let mut r = Response::new(empty());
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    r.headers_mut().insert("grpc-status", HeaderValue::from(code));
    r.headers_mut().insert("grpc-message", HeaderValue::from_static("fault filter abort"));
    r
}

fn retriable(on: &RetryOn, outcome: &Result<Response<ProxyBody>, ()>) -> bool {
    match outcome {
        Err(()) => {
            on.connect_failure
                || on.reset
                || on.gateway_error
                || on.five_xx
                || on.refused_stream
                || on.grpc_codes.contains(&14)
        }
        Ok(resp) => {
            let s = resp.status().as_u16();
            // Read only when a gRPC code could matter: every response passes through here.
            let grpc = || {
                let v = field_values(resp.headers(), &GRPC_STATUS).next()?.to_str().ok()?.parse::<i32>().ok()?;
                Some(on.grpc_codes.contains(&v))
            };
            (on.five_xx && s >= 500)
                || (on.gateway_error && (502..=504).contains(&s))
                || (on.retriable_4xx && s == 409)
                || on.status_codes.contains(&s)
                || (!on.grpc_codes.is_empty() && grpc() == Some(true))
        }
    }
}

/// A request body that can be sent again, when it is small and of known size.
enum SendBody {
    Buffered(Bytes),
    Streaming(Option<ProxyBody>),
}

impl SendBody {
    fn take(&mut self) -> Option<ProxyBody> {
        match self {
            SendBody::Buffered(b) => Some(full(b.clone())),
            SendBody::Streaming(s) => s.take(),
        }
    }
}

impl Proxy {
    /// Sends a routed request on; `service` becomes the destination service it goes to.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn outbound_route<'r>(
        &self,
        worker: &Worker,
        mut req: Request<ProxyBody>,
        (route_id, route): (Option<RouteId>, &'r HttpRoute),
        tables: &crate::proxy::Tables,
        (authority, path, scheme): (&str, &str, &str),
        peer: SocketAddr,
        service: &mut &'r str,
    ) -> Response<ProxyBody> {
        if let Some(r) = &route.redirect {
            let target_authority = r.authority.clone().unwrap_or_else(|| authority.to_string());
            let target_path = r.uri.clone().unwrap_or_else(|| path.to_string());
            let mut resp = reply(r.code, "");
            if let Ok(loc) = HeaderValue::try_from(format!("{scheme}://{target_authority}{target_path}")) {
                resp.headers_mut().insert(hyper::header::LOCATION, loc);
            }
            return resp;
        }
        if let Some(f) = &route.fault {
            if let Some((delay, pct)) = f.delay
                && rand::chance(pct)
            {
                tokio::time::sleep(delay).await;
            }
            if let Some((abort, pct)) = f.abort
                && rand::chance(pct)
            {
                return match abort {
                    Abort::Http(code) => reply(code, "fault filter abort"),
                    Abort::Grpc(code) => grpc_abort(code),
                };
            }
        }
        let Some(chosen_index) = pick_weighted_index(&route.route, rand::below(total_weight(&route.route))) else {
            return reply(503, "no healthy upstream (all weights are 0)\n");
        };
        let chosen = &route.route[chosen_index];
        *service = chosen.destination.host.as_str();
        // A route of the table has its clusters from config load; only the implicit route
        // to a service without a VirtualService looks its cluster up.
        let looked_up;
        let cluster = match route_id.and_then(|id| tables.route_clusters.get(id, chosen_index)) {
            Some(Ok(c)) => c,
            Some(Err(e)) => return reply(503, format!("{e}\n")),
            None => match self.clusters_for(tables).get(&tables.routes, &chosen.destination) {
                Ok(c) => {
                    looked_up = c;
                    &looked_up
                }
                Err(e) => return reply(503, format!("{e}\n")),
            },
        };
        if cluster.endpoint_count() == 0 {
            return reply(503, "no healthy upstream\n");
        }
        // Without a usable certificate an ISTIO_MUTUAL destination cannot be reached; the
        // caller learns why rather than a bare connect error.
        if let Some(tls) = &cluster.tls
            && let Err(e) = tls.ready(Some(&self.mesh))
        {
            return reply(503, format!("upstream connect error: {e}\n"));
        }
        if crate::upgrade::is_upgrade(&req) {
            let Some(target) = cluster.pick(None) else { return reply(503, "no healthy upstream\n") };
            return Box::pin(crate::upgrade::forward(&worker.pool, &target, req)).await;
        }
        // As the caller sent it, before the route's header operations.
        let hash = cluster.policy.consistent_hash.as_ref().and_then(|k| hash_of(k, req.headers(), Some(peer.ip())));
        // Request rewriting and header operations.
        if let Some(rw) = &route.rewrite {
            if let Some(uri) = &rw.uri {
                let (p, q) = path.split_once('?').map_or((path, None), |(p, q)| (p, Some(q)));
                let prefix = route.matches.iter().find_map(|m| match &m.uri {
                    Some(StringMatch::Prefix(pre)) if p.starts_with(pre.as_str()) => Some(pre.len()),
                    _ => None,
                });
                let rest = prefix.map(|n| &p[n..]).unwrap_or("");
                let new = format!("{uri}{rest}{}", q.map(|q| format!("?{q}")).unwrap_or_default());
                if let Ok(u) = new.parse::<Uri>() {
                    *req.uri_mut() = u;
                }
            }
            if let Some(a) = &rw.authority
                && let Ok(v) = HeaderValue::try_from(a.as_str())
            {
                req.headers_mut().insert(hyper::header::HOST, v);
            }
        }
        apply_ops(req.headers_mut(), &route.headers.request);
        apply_ops(req.headers_mut(), &chosen.headers.request);
        if self.policy.is_some() {
            req.headers_mut().insert(crate::policy::attributes::ISTIO_ATTRIBUTES, self.identity_header.clone());
        }

        let grpc = is_grpc_headers(req.headers());
        let http2 = grpc || req.version() == hyper::Version::HTTP_2;
        let retries = if route.retries.retry_on == RetryOn::default() { 0 } else { route.retries.attempts };
        // The body as the listener framed it: the caller's framing fields are gone.
        let size = hyper::body::Body::size_hint(req.body()).exact();
        let no_body = hyper::body::Body::is_end_stream(req.body())
            || size == Some(0)
            || (size.is_none()
                && req.version() == hyper::Version::HTTP_2
                && !grpc
                && matches!(
                    *req.method(),
                    hyper::Method::GET | hyper::Method::HEAD | hyper::Method::DELETE | hyper::Method::OPTIONS
                ));
        let (parts, incoming) = req.into_parts();
        let keep = retries > 0 || route.mirror.is_some();
        let mut body = if keep && no_body {
            SendBody::Buffered(Bytes::new())
        } else if keep && size.is_some_and(|s| s <= RETRY_BUFFER_LIMIT) {
            match incoming.collect().await {
                Ok(b) => SendBody::Buffered(b.to_bytes()),
                Err(_) => return reply(400, "request body could not be read\n"),
            }
        } else {
            SendBody::Streaming(Some(incoming))
        };
        let attempts = if matches!(body, SendBody::Buffered(_)) { retries + 1 } else { 1 };

        let send_all = async {
            let mut last: Result<Response<ProxyBody>, ()> = Err(());
            for attempt in 0..attempts {
                let mut _retry = None;
                if attempt > 0 {
                    match cluster.retry_permit() {
                        Some(p) => _retry = Some(p),
                        None => {
                            self.stats.retry_overflows.inc();
                            break;
                        }
                    }
                    self.stats.retries.inc();
                    tokio::time::sleep(backoff(attempt)).await;
                }
                let Some(admission) = cluster.admit(http2).await else {
                    self.stats.overflows.with_label_values(&[cluster.name.as_str()]).inc();
                    return Err(reply(503, "upstream overflow (connection pool limit)\n"));
                };
                let Some(target) = cluster.pick(hash) else { return Err(reply(503, "no healthy upstream\n")) };
                let Some(b) = body.take() else { break };
                let call = send_upstream(&worker.pool, &target, &parts, b, http2, authority);
                let result = match route.retries.per_try_timeout {
                    Some(t) => tokio::time::timeout(t, call).await.map_err(|_| ()).and_then(|r| r.map_err(|_| ())),
                    None => call.await.map_err(|_| ()),
                };
                drop(admission);
                let outcome = match &result {
                    Ok(r) => Outcome::Status(r.status().as_u16()),
                    Err(()) => Outcome::Failure,
                };
                if cluster.record(target.endpoint(), outcome) {
                    self.stats.ejections.with_label_values(&[cluster.name.as_str()]).inc();
                }
                let again = attempt + 1 < attempts && retriable(&route.retries.retry_on, &result);
                last = result;
                if !again {
                    break;
                }
            }
            Ok(last)
        };
        let result = match route.timeout {
            Some(t) => match tokio::time::timeout(t, send_all).await {
                Ok(r) => r,
                Err(_) => return reply(504, "upstream request timeout\n"),
            },
            None => send_all.await,
        };
        let mut resp = match result {
            Err(made) => return made,
            Ok(Ok(r)) => r,
            Ok(Err(())) => return reply(503, "upstream connect error or disconnect/reset before headers\n"),
        };
        apply_ops(resp.headers_mut(), &route.headers.response);
        apply_ops(resp.headers_mut(), &chosen.headers.response);
        if let Some(m) = &route.mirror
            && rand::chance(route.mirror_percentage)
        {
            self.mirror(worker, m.clone(), tables, &parts, body_for_mirror(&body));
        }
        resp
    }

    /// Sends a copy to the mirror (host `-shadow`), without waiting or looking at it.
    fn mirror(
        &self,
        worker: &Worker,
        d: Destination,
        tables: &crate::proxy::Tables,
        parts: &hyper::http::request::Parts,
        body: Option<Bytes>,
    ) {
        let Ok(cluster) = self.clusters_for(tables).get(&tables.routes, &d) else { return };
        let Some(target) = cluster.pick(None) else { return };
        let Some(body) = body else { return };
        let mut parts = parts.clone();
        let host = parts
            .headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let shadow = match host.rsplit_once(':') {
            Some((h, p)) => format!("{h}-shadow:{p}"),
            None => format!("{host}-shadow"),
        };
        if let Ok(v) = HeaderValue::try_from(shadow.as_str()) {
            parts.headers.insert(hyper::header::HOST, v);
        }
        let pool = worker.pool.clone();
        let mirrored = self.stats.mirrored.clone();
        tokio::spawn(async move {
            let send = send_upstream(&pool, &target, &parts, full(body), false, &shadow);
            if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(10), send).await {
                let _ = resp.into_body().collect().await;
                mirrored.inc();
            }
        });
    }
}

/// Only a kept (small, known-size) body can be mirrored: a streamed one went upstream.
fn body_for_mirror(body: &SendBody) -> Option<Bytes> {
    match body {
        SendBody::Buffered(b) => Some(b.clone()),
        SendBody::Streaming(_) => None,
    }
}
