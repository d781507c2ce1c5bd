//! The admin port (`/ready`, `/config_dump`, `/certs`) and the stats port (`/metrics`).

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{ProxyBody, full, reply};
use crate::proxy::Proxy;

fn route(proxy: &Proxy, req: &Request<Incoming>) -> Response<ProxyBody> {
    match req.uri().path() {
        "/ready" => {
            let t = proxy.tables.load();
            if t.generation > 0 { reply(200, "LIVE\n") } else { reply(503, "no config\n") }
        }
        "/config_dump" => {
            let t = proxy.tables.load();
            let c = &t.config;
            let clusters: Vec<_> = t
                .clusters
                .all()
                .iter()
                .map(|c| {
                    json!({"name": c.name, "endpoints": c.endpoint_count(), "ejected": c.ejected_count(),
                    "overflows": c.overflows.load(std::sync::atomic::Ordering::Relaxed)})
                })
                .collect();
            let body = json!({
                "generation": t.generation,
                "identity": {"workload": proxy.identity.workload, "namespace": proxy.identity.namespace,
                    "labels": proxy.identity.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>()},
                "virtualServices": c.virtual_services.iter().map(|v| json!({"name": v.name, "hosts": v.hosts, "routes": v.http.len()})).collect::<Vec<_>>(),
                "destinationRules": c.destination_rules.iter().map(|d| json!({"name": d.name, "host": d.host,
                    "subsets": d.subsets.iter().map(|s| s.name.clone()).collect::<Vec<_>>()})).collect::<Vec<_>>(),
                "serviceEntries": c.service_entries.iter().map(|s| json!({"name": s.name, "hosts": s.hosts, "endpoints": s.endpoints.len()})).collect::<Vec<_>>(),
                "clusters": clusters,
            });
            let mut r = Response::new(full(serde_json::to_string_pretty(&body).unwrap_or_default() + "\n"));
            r.headers_mut()
                .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
            r
        }
        "/certs" => {
            let secs = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let body = match proxy.certs.current() {
                // Never the key: it does not leave the process.
                Some(c) => json!({"spiffe": c.spiffe, "serial": c.serial, "notBefore": secs(c.not_before),
                    "notAfter": secs(c.not_after), "chain": c.chain.len(),
                    "renewals": proxy.certs.renewals.load(std::sync::atomic::Ordering::Relaxed),
                    "failures": proxy.certs.failures.load(std::sync::atomic::Ordering::Relaxed)}),
                None => json!({"spiffe": null,
                    "failures": proxy.certs.failures.load(std::sync::atomic::Ordering::Relaxed)}),
            };
            let mut r = Response::new(full(body.to_string() + "\n"));
            r.headers_mut()
                .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
            r
        }
        "/metrics" | "/stats/prometheus" => {
            let mut out = String::new();
            let _ = prometheus::TextEncoder::new().encode_utf8(&proxy.stats.registry.gather(), &mut out);
            reply(200, out)
        }
        _ => reply(404, "not found\n"),
    }
}

pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, name: &'static str, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = crate::listener::accept::Backoff::default();
    loop {
        let (sock, _) = tokio::select! {
            a = crate::listener::accept::next(&listener, &mut backoff, name) => a,
            _ = shutdown.changed() => return,
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = route(&proxy, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(sock), svc).await;
        });
    }
}
