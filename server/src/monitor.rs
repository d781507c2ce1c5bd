//! The monitoring port: `/healthz`, `/readyz`, `/metrics`, `/debug/config`.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::listen::Guarded;
use crate::metrics::Metrics;
use crate::runtime::{ConfigStore, Runtime};

#[derive(Debug, Clone)]
pub struct Monitor {
    pub store: Arc<ConfigStore>,
    pub metrics: Metrics,
    /// A request head must arrive within this, on a new connection or a kept-alive one.
    pub header_timeout: Duration,
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// A summary of the active config, for operators.
pub fn config_summary(rt: &Runtime) -> serde_json::Value {
    let s = &rt.snapshot;
    json!({
        "generation": rt.generation,
        "loadedAt": mixr_rules::value::format_timestamp(mixr_rules::value::Timestamp {
            seconds: rt.loaded_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0),
            nanos: 0,
        }),
        "handlers": s.handlers.iter().map(|h| json!({"name": h.display_name(), "adapter": h.adapter, "source": h.loc.to_string()})).collect::<Vec<_>>(),
        "instances": s.instances.iter().map(|i| json!({"name": i.full_name, "template": i.template.name()})).collect::<Vec<_>>(),
        "rules": s.rules.iter().map(|r| json!({
            "name": r.name,
            "match": r.matcher.text(),
            "actions": r.actions.iter().map(|a| json!({
                "handler": s.handlers[a.handler].display_name(),
                "instances": a.instances.iter().map(|i| s.instances[*i].full_name.clone()).collect::<Vec<_>>(),
                "name": a.name,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "attributes": s.manifest.len(),
        "quotaSpecs": s.quota_specs.len(),
        "quotaSpecBindings": s.quota_spec_bindings.len(),
    })
}

impl Monitor {
    fn route(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" => {
                let rt = self.store.current();
                if rt.generation > 0 {
                    reply(StatusCode::OK, "text/plain", format!("ready, config generation {}\n", rt.generation))
                } else {
                    reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "no config loaded\n".into())
                }
            }
            "/metrics" => {
                let rt = self.store.current();
                let extra =
                    rt.handlers.handlers.iter().filter_map(|h| h.report.as_ref()).flat_map(|r| r.gather()).collect();
                reply(StatusCode::OK, "text/plain; version=0.0.4", self.metrics.render(extra))
            }
            "/debug/config" => {
                let rt = self.store.current();
                let body = serde_json::to_string_pretty(&config_summary(&rt)).unwrap_or_default();
                reply(StatusCode::OK, "application/json", body + "\n")
            }
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    }

    /// Serves the connections `incoming` yields until `shutdown` turns true.
    pub async fn serve(self, mut incoming: mpsc::Receiver<io::Result<Guarded>>, mut shutdown: watch::Receiver<bool>) {
        let header_timeout = self.header_timeout;
        let this = Arc::new(self);
        loop {
            let conn = tokio::select! {
                accepted = incoming.recv() => match accepted {
                    Some(Ok(conn)) => conn,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "monitoring accept failed");
                        continue;
                    }
                    None => return,
                },
                _ = shutdown.changed() => return,
            };
            let this = this.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let resp = this.route(&req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let served = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(conn), svc)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "monitoring connection ended");
                }
            });
        }
    }
}
