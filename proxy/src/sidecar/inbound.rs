//! The sidecar's inbound side: a caller's request to this workload, checked through mixr
//! (with the caller's identity from `x-istio-attributes`), then sent to the local app.

use std::net::SocketAddr;
use std::time::Instant;

use hyper::{Request, Response};

use tokio::net::TcpStream;

use crate::body::{ProxyBody, reply};
use crate::mtls::PeerIdentity;
use crate::mtls::accept::{Inbound, Refused};
use crate::proxy::{Direction, Proxy};
use crate::worker::Worker;
use mixr_rules::value::Value;

/// The caller as far as it is known: its verified identity, and the attributes its sidecar
/// sent that agree with it.
type Caller<'a> = (Option<&'a PeerIdentity>, &'a [(&'static str, Value<'static>)]);

/// What `x-istio-attributes` says of the caller, honoured only from an mTLS peer and only
/// when it names the namespace the certificate does: from anyone else it could be forged
/// (a plaintext caller claiming `source.labels[app] = trusted`).
fn caller_attributes(
    mtls_peer: Option<&PeerIdentity>,
    header: Option<&hyper::header::HeaderValue>,
) -> Vec<(&'static str, Value<'static>)> {
    let (Some(id), Some(value)) = (mtls_peer, header.and_then(|h| h.to_str().ok())) else { return Vec::new() };
    let attrs = crate::policy::attributes::peer_attributes(value);
    let agrees = attrs.iter().all(|(k, v)| match (*k, v) {
        ("source.namespace" | "source.workload.namespace", Value::String(ns)) => ns == id.namespace.as_str(),
        _ => true,
    });
    if !agrees {
        tracing::debug!(principal = %id.principal, "x-istio-attributes disagree with the peer certificate; ignored");
        return Vec::new();
    }
    attrs
}

/// Takes an inbound connection under the workload's mTLS mode for the port it came to;
/// `None` when the mode refuses it (it is closed).
pub(super) async fn accept(handler: &mut super::Listener, sock: TcpStream) -> Option<Inbound> {
    let proxy = handler.proxy.clone();
    let original = crate::capture::original_dst::redirected(&sock);
    let mode = proxy.tables.load().mtls.mode_for(original.map(|o| o.port()).or(proxy.app_port));
    // A redirected connection may carry a server-first protocol: wait for its first byte
    // no longer than protocol detection would.
    let wait = if original.is_some() { super::transparent::DETECTION_TIMEOUT } else { proxy.limits.head_timeout };
    let outcome = crate::mtls::accept::accept(&proxy.mesh, mode, sock, wait, proxy.limits.head_timeout).await;
    let label = match &outcome {
        Ok(Inbound::Mutual(_, identity)) => {
            handler.original = original;
            handler.mtls_peer = Some(crate::mtls::Peer(identity.clone()));
            "mtls"
        }
        Ok(Inbound::Plain(_)) => "plaintext",
        Err(refused) => {
            tracing::debug!(peer = %handler.peer, mode = mode.as_str(), error = %refused, "inbound connection refused");
            match refused {
                Refused::Plaintext => "refused_plaintext",
                Refused::NoCertificate(_) => "refused_no_certificate",
                Refused::Handshake(_) => "refused_handshake",
                Refused::Timeout => "refused_timeout",
                Refused::NoIdentity => "refused_no_identity",
            }
        }
    };
    proxy.stats.inbound_mtls.with_label_values(&[label]).inc();
    outcome.ok()
}

impl Proxy {
    /// Handles one request on the inbound listener: checked with mixr, then to the local app.
    pub async fn inbound(&self, worker: &Worker, req: Request<ProxyBody>, peer: SocketAddr) -> Response<ProxyBody> {
        let started = Instant::now();
        let authority = crate::request::authority_of(&req);
        let authority = authority.as_str();
        let dialled = req.extensions().get::<crate::capture::OriginalDst>().map(|o| o.0.port());
        let app = crate::capture::inbound::app_for(self.app.as_ref(), &self.inbound_apps, dialled);
        let Some(app) = app else { return reply(503, "no --app-addr configured\n") };
        let mtls_peer = req.extensions().get::<crate::mtls::Peer>().map(|p| p.0.clone());
        let (mut parts, body) = req.into_parts();
        // The caller's identity is for us, not for the app; it counts only as far as its
        // certificate vouches for it.
        let peer_identity = parts.headers.remove(crate::policy::attributes::ISTIO_ATTRIBUTES);
        let caller_attrs = caller_attributes(mtls_peer.as_deref(), peer_identity.as_ref());
        let tables = self.tables.load();
        if !tables.authz.is_empty() {
            let headers = crate::request::header_pairs(&parts.headers);
            let facts = crate::authz::Facts {
                principal: mtls_peer.as_ref().map(|p| p.principal.as_str()),
                namespace: mtls_peer.as_ref().map(|p| p.namespace.as_str()),
                source_ip: Some(peer.ip()),
                host: authority,
                port: self.app_port,
                method: parts.method.as_str(),
                path: parts.uri.path(),
                headers: &headers,
                labels: &self.identity.labels,
            };
            if let crate::authz::Decision::Deny(by) = tables.authz.decide(&facts) {
                let caller = (mtls_peer.as_deref(), caller_attrs.as_slice());
                let mut resp = self.authz_denied(worker, &parts, peer, caller, authority, &headers, &by, started);
                self.name_callee(&mut resp, peer_identity.is_some());
                return resp;
            }
        }
        drop(tables);
        let mut response_ops = Vec::new();
        let mut report = None;
        let checker = self.policy.as_ref().filter(|p| p.checks()).zip(worker.mixr.as_ref());
        if checker.is_some() || worker.reporter.is_some() {
            let headers = crate::request::header_pairs(&parts.headers);
            let caller = (mtls_peer.as_deref(), caller_attrs.as_slice());
            let attrs = self.inbound_attributes(&parts, peer, caller, authority, &headers);
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
            // Encoded now, while the attributes still borrow the request.
            let entry = worker.reporter.as_ref().map(|_| {
                let traceparent = headers.iter().find(|(k, _)| *k == "traceparent").map(|(_, v)| *v);
                crate::policy::reports::Entry::new(attrs.iter().map(|(n, v)| (*n, v)), traceparent)
            });
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
                    self.name_callee(&mut resp, peer_identity.is_some());
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
            let resp = Box::pin(crate::upgrade::forward(&worker.pool, &target, Request::from_parts(parts, body))).await;
            self.observe(worker, Direction::Inbound, &self.inbound_service, "", resp.status().as_u16(), started);
            return resp;
        }
        let http2 = crate::request::is_grpc_headers(&parts.headers) || parts.version == hyper::Version::HTTP_2;
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
        self.name_callee(&mut resp, peer_identity.is_some());
        self.observe(worker, Direction::Inbound, &self.inbound_service, "", resp.status().as_u16(), started);
        self.report(worker, report, &resp, started);
        resp
    }

    /// An inbound request's attributes, for its Check and Report.
    fn inbound_attributes<'a>(
        &'a self,
        parts: &'a hyper::http::request::Parts,
        peer: SocketAddr,
        (mtls_peer, caller_attrs): Caller<'a>,
        authority: &'a str,
        headers: &[(&'a str, &'a str)],
    ) -> Vec<(&'static str, mixr_rules::value::Value<'a>)> {
        use mixr_rules::value::Value;
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let grpc = crate::request::is_grpc_headers(&parts.headers);
        let mut attrs = crate::policy::attributes::inbound(
            &self.identity,
            &self.destination_labels,
            peer,
            parts.method.as_str(),
            path,
            authority,
            headers,
            grpc,
        );
        attrs.extend(caller_attrs.iter().map(|(k, v)| (*k, v.clone())));
        attrs.push(("connection.mtls", Value::Bool(mtls_peer.is_some())));
        if let Some(id) = mtls_peer {
            let s = |v: &'a str| Value::String(v.into());
            attrs.retain(|(k, _)| *k != "source.namespace");
            attrs.push(("source.principal", s(&id.principal)));
            // Istio 1.4 set source.user to the principal as well.
            attrs.push(("source.user", s(&id.principal)));
            attrs.push(("source.namespace", s(&id.namespace)));
        }
        attrs
    }

    /// Answers a request authorization refused (403, as Envoy's RBAC filter does), counts
    /// it by what decided, and reports it with that name.
    #[allow(clippy::too_many_arguments)]
    fn authz_denied(
        &self,
        worker: &Worker,
        parts: &hyper::http::request::Parts,
        peer: SocketAddr,
        caller: Caller<'_>,
        authority: &str,
        headers: &[(&str, &str)],
        by: &str,
        started: Instant,
    ) -> Response<ProxyBody> {
        let resp = reply(403, "RBAC: access denied");
        // `by` is a policy's name from the config or one of two fixed reasons: bounded.
        self.stats.authz_denied.with_label_values(&[by]).inc();
        tracing::debug!(policy = by, path = parts.uri.path(), "authorization denied");
        self.observe(worker, Direction::Inbound, &self.inbound_service, "", 403, started);
        if worker.reporter.is_some() {
            let mut attrs = self.inbound_attributes(parts, peer, caller, authority, headers);
            attrs.push(("rbac.effective_policy_id", mixr_rules::value::Value::String(by.into())));
            let traceparent = headers.iter().find(|(k, _)| *k == "traceparent").map(|(_, v)| *v);
            let entry = crate::policy::reports::Entry::new(attrs.iter().map(|(n, v)| (*n, v)), traceparent);
            self.report(worker, Some(entry), &resp, started);
        }
        resp
    }

    /// Names this workload on an inbound response to a caller that named itself (a
    /// sidecar in the mesh), as it names itself on its outbound requests, so the caller's
    /// sidecar reports who answered. Callers outside the mesh learn nothing, and an app's
    /// own header of that name never passes: only the sidecar speaks for the workload.
    fn name_callee<B>(&self, resp: &mut Response<B>, caller_in_mesh: bool) {
        let headers = resp.headers_mut();
        headers.remove(crate::policy::attributes::ISTIO_ATTRIBUTES);
        if caller_in_mesh && self.policy.is_some() {
            headers.insert(crate::policy::attributes::ISTIO_ATTRIBUTES, self.identity_header.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(namespace: &str) -> hyper::header::HeaderValue {
        let identity = crate::identity::Identity {
            workload: "reviews-v3".into(),
            namespace: namespace.into(),
            labels: vec![("app".into(), "reviews".into()), ("version".into(), "v3".into())],
        };
        crate::policy::attributes::identity_header(&identity).parse().unwrap()
    }

    fn peer(namespace: &str) -> PeerIdentity {
        PeerIdentity::from_spiffe(&format!("spiffe://cluster.local/ns/{namespace}/sa/reviews"), "cluster.local")
            .unwrap()
    }

    #[test]
    fn the_identity_header_counts_only_from_an_mtls_peer_of_the_same_namespace() {
        let header = header_of("default");
        let honoured = caller_attributes(Some(&peer("default")), Some(&header));
        let name = honoured.iter().find(|(k, _)| *k == "source.workload.name").map(|(_, v)| v.clone());
        assert_eq!(name, Some(Value::String("reviews-v3".into())), "{honoured:?}");
        assert!(caller_attributes(None, Some(&header)).is_empty(), "plaintext: ignored");
        assert!(caller_attributes(Some(&peer("other")), Some(&header)).is_empty(), "another namespace's claim");
        assert!(caller_attributes(Some(&peer("default")), None).is_empty());
        let garbage = hyper::header::HeaderValue::from_static("not base64!");
        assert!(caller_attributes(Some(&peer("default")), Some(&garbage)).is_empty());
    }
}
