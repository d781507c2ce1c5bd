//! Requests for destinations the mesh does not know, on connections the capture rules
//! redirected: passed to where they were going, or refused, per the outbound traffic
//! policy (`capture::OutboundPolicy`).

use std::net::SocketAddr;
use std::time::Instant;

use hyper::{Request, Response};

use crate::body::{ProxyBody, reply};
use crate::capture::registry::{BLACKHOLE, OutboundPolicy, PASSTHROUGH};
use crate::proxy::Proxy;
use crate::worker::Worker;

/// The `destination_service` the request is counted under.
pub fn service(proxy: &Proxy) -> &'static str {
    match proxy.outbound_policy {
        OutboundPolicy::AllowAny => PASSTHROUGH,
        OutboundPolicy::RegistryOnly => BLACKHOLE,
    }
}

/// Sends the request to `original` (ALLOW_ANY) or refuses it (REGISTRY_ONLY), and
/// reports it.
pub async fn forward(
    proxy: &Proxy,
    worker: &Worker,
    req: Request<ProxyBody>,
    original: SocketAddr,
    authority: &str,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path_and_query().map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let traceparent =
        worker.reporter.as_ref().and_then(|_| req.headers().get("traceparent")?.to_str().ok()).map(str::to_string);
    let resp = match proxy.outbound_policy {
        OutboundPolicy::RegistryOnly => reply(502, format!("{authority}: not a known service ({BLACKHOLE})\n")),
        OutboundPolicy::AllowAny => send(proxy, worker, req, original, authority).await,
    };
    if worker.reporter.is_some() {
        let mut attrs = crate::policy::attributes::outbound(&proxy.identity, method.as_str(), &path, authority);
        attrs.retain(|(name, _)| *name != "destination.service.host");
        attrs.push(("destination.service.host", mixr_rules::value::Value::String(service(proxy).into())));
        let entry = crate::policy::reports::Entry::new(attrs.iter().map(|(n, v)| (*n, v)), traceparent.as_deref());
        proxy.report(worker, Some(entry), &resp, started);
    }
    resp
}

async fn send(
    proxy: &Proxy,
    worker: &Worker,
    req: Request<ProxyBody>,
    original: SocketAddr,
    authority: &str,
) -> Response<ProxyBody> {
    let cluster = proxy.passthrough.get(original);
    let Some(target) = cluster.pick(None) else { return reply(503, "no healthy upstream\n") };
    if crate::upgrade::is_upgrade(&req) {
        return Box::pin(crate::upgrade::forward(&worker.pool, &target, req)).await;
    }
    let http2 = crate::forward::is_grpc_headers(req.headers()) || req.version() == hyper::Version::HTTP_2;
    let (parts, body) = req.into_parts();
    match crate::forward::send_upstream(&worker.pool, &target, &parts, body, http2, authority).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(error = %e, %original, "passthrough upstream unreachable");
            reply(503, "upstream connect error (passthrough)\n")
        }
    }
}
