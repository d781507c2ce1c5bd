//! The sidecar's inbound side: a caller's request to this workload, checked through mixr
//! (with the caller's identity from `x-istio-attributes`), then sent to the local app.

use std::net::SocketAddr;
use std::time::Instant;

use hyper::{Request, Response};

use crate::body::{ProxyBody, reply};
use crate::proxy::{Direction, Proxy};
use crate::worker::Worker;

impl Proxy {
    /// Handles one request on the inbound listener: checked with mixr, then to the local app.
    pub async fn inbound(&self, worker: &Worker, req: Request<ProxyBody>, peer: SocketAddr) -> Response<ProxyBody> {
        let started = Instant::now();
        let authority = crate::forward::authority_of(&req);
        let authority = authority.as_str();
        let Some(app) = &self.app else { return reply(503, "no --app-addr configured\n") };
        let (mut parts, body) = req.into_parts();
        // The caller's identity is for us, not for the app.
        let peer_identity = parts.headers.remove(crate::policy::attributes::ISTIO_ATTRIBUTES);
        let mut response_ops = Vec::new();
        let mut report = None;
        let checker = self.policy.as_ref().filter(|p| p.checks()).zip(worker.mixr.as_ref());
        if checker.is_some() || worker.reporter.is_some() {
            let headers = crate::forward::header_pairs(&parts.headers);
            let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let grpc = crate::forward::is_grpc_headers(&parts.headers);
            let mut attrs = crate::policy::attributes::inbound(
                &self.identity,
                &self.destination_labels,
                peer,
                parts.method.as_str(),
                path,
                authority,
                &headers,
                grpc,
            );
            if let Some(v) = peer_identity.as_ref().and_then(|v| v.to_str().ok()) {
                attrs.extend(crate::policy::attributes::peer_attributes(v));
            }
            let verdict = match checker {
                Some((policy, mixr)) => {
                    // The service this workload backs: its `app` label, as Kubernetes
                    // services select pods; else the name the caller used.
                    let service = match self.identity.labels.iter().find(|(k, _)| k == "app") {
                        Some((_, app)) => app.as_str(),
                        None => crate::route::service_name(authority),
                    };
                    let quotas = policy.quotas_for(service, &self.identity.namespace, &attrs);
                    let header = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
                    let dedup = header("x-request-id").unwrap_or_default();
                    // Boxed, as are other large, conditional steps: futures are sized for
                    // their largest state, and every request's future is moved.
                    match policy.cached(&attrs, &quotas) {
                        Some(hit) => Some(hit),
                        None => Some(Box::pin(policy.ask(mixr, &attrs, &quotas, dedup, header("traceparent"))).await),
                    }
                }
                None => None,
            };
            let traceparent = headers.iter().find(|(k, _)| *k == "traceparent").map(|(_, v)| v.to_string());
            let entry = worker.reporter.as_ref().map(|_| (crate::policy::reports::owned(attrs), traceparent));
            match verdict {
                Some(crate::policy::Verdict::Deny { http_status, body, headers: extra }) => {
                    let mut resp = reply(http_status, body);
                    for (k, v) in extra {
                        if let (Ok(k), Ok(v)) =
                            (hyper::header::HeaderName::try_from(k), hyper::header::HeaderValue::try_from(v))
                        {
                            resp.headers_mut().insert(k, v);
                        }
                    }
                    self.observe(
                        worker,
                        Direction::Inbound,
                        &self.inbound_service,
                        "",
                        resp.status().as_u16(),
                        started,
                    );
                    self.report(worker, entry, &resp, started);
                    return resp;
                }
                Some(crate::policy::Verdict::Allow { request_headers, response_headers }) => {
                    crate::policy::apply_header_ops(&mut parts.headers, &request_headers);
                    response_ops = response_headers;
                    report = entry;
                }
                None => report = entry,
            }
        }
        let Some(target) = app.pick(None) else { return reply(503, "no --app-addr configured\n") };
        if crate::upgrade::wants_upgrade(&parts.headers) {
            let resp = Box::pin(crate::upgrade::forward(&target, Request::from_parts(parts, body))).await;
            self.observe(worker, Direction::Inbound, &self.inbound_service, "", resp.status().as_u16(), started);
            return resp;
        }
        let http2 = crate::forward::is_grpc_headers(&parts.headers) || parts.version == hyper::Version::HTTP_2;
        let result = crate::forward::send_upstream(&worker.pool, &target, &parts, body, http2, authority).await;
        drop(target);
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "local app unreachable");
                reply(503, "upstream connect error (local app)\n")
            }
        };
        crate::policy::apply_header_ops(resp.headers_mut(), &response_ops);
        self.observe(worker, Direction::Inbound, &self.inbound_service, "", resp.status().as_u16(), started);
        self.report(worker, report, &resp, started);
        resp
    }
}
