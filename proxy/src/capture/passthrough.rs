//! Outbound HTTP, on a redirected connection, for a Host that no route or service knows:
//! Istio's ALLOW_ANY sent it on to where the app was going (PassthroughCluster);
//! REGISTRY_ONLY answered 502 (BlackHoleCluster). A request made to the outbound listener
//! itself has nowhere else to go and keeps its `404 NR`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hyper::{Request, Response};

use super::registry::{BLACKHOLE, OutboundPolicy, PASSTHROUGH};
use crate::body::{ProxyBody, reply};
use crate::proxy::Proxy;
use crate::upstream::Cluster;
use crate::worker::Worker;

/// Destinations kept as clusters (so their connections are pooled); past this many the
/// map starts over, so an app that calls many addresses cannot grow it without bound.
const MAX_CLUSTERS: usize = 1024;

/// Passthrough destinations as clusters of one.
#[derive(Debug, Default)]
pub struct Passthrough {
    by_addr: Mutex<HashMap<SocketAddr, Arc<Cluster>>>,
}

impl Passthrough {
    pub fn get(&self, addr: SocketAddr) -> Arc<Cluster> {
        let mut map = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CLUSTERS && !map.contains_key(&addr) {
            map.clear();
        }
        map.entry(addr)
            .or_insert_with(|| {
                let upstream =
                    crate::route::Upstream { address: addr.ip().to_string(), port: addr.port(), labels: Vec::new() };
                Arc::new(Cluster::new(PASSTHROUGH.into(), vec![upstream], Default::default()))
            })
            .clone()
    }

    pub fn len(&self) -> usize {
        self.by_addr.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

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
        proxy.report(worker, Some((crate::policy::reports::owned(attrs), traceparent)), &resp, started);
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
        return Box::pin(crate::upgrade::forward(&target, req)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_kept_once_and_the_map_is_bounded() {
        let p = Passthrough::default();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert!(Arc::ptr_eq(&p.get(a), &p.get(a)));
        for port in 1..=MAX_CLUSTERS as u16 {
            p.get(SocketAddr::new(a.ip(), port));
        }
        assert!(p.len() <= MAX_CLUSTERS, "{}", p.len());
    }
}
