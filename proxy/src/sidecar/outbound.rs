//! The sidecar's outbound side: the app calling out, routed by the VirtualServices bound
//! to the mesh, then sent on by the shared pipeline (`forward`) and reported.

use std::net::SocketAddr;
use std::time::Instant;

use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response};

use crate::body::{ProxyBody, reply};
use crate::config::{Destination, HttpRoute, WeightedDestination};
use crate::proxy::{Direction, Proxy, UNKNOWN};
use crate::request::authority_of;
use crate::route::RequestInfo;
use crate::worker::Worker;

impl Proxy {
    /// Handles one request on the outbound listener (the local app calling out).
    pub async fn outbound(&self, worker: &Worker, req: Request<ProxyBody>, peer: SocketAddr) -> Response<ProxyBody> {
        let started = Instant::now();
        let tables = self.tables.load_full();
        let authority = authority_of(&req);
        let authority = authority.as_str();
        // Shared with the request (no copies): it is moved on before these are done with.
        let path_and_query = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        let path = path_and_query.as_str();
        let scheme = if req.uri().scheme() == Some(&hyper::http::uri::Scheme::HTTPS) { "https" } else { "http" };
        let method = req.method().clone();
        let info = RequestInfo { authority, path, method: method.as_str(), scheme, headers: req.headers(), port: None };
        let default_route;
        let (route_id, route) = match tables.routes.find(&info, &self.identity.labels) {
            Some((id, r)) => (Some(id), r),
            // A known service without a VirtualService gets all its traffic. It is named
            // as the config names it, not as the caller did (`reviews.anything` finds
            // `reviews` too): one cluster per service, whatever callers send.
            None => match tables.routes.service_key(authority) {
                Some(service) => {
                    default_route = Box::new(HttpRoute {
                        route: vec![WeightedDestination {
                            destination: Destination { host: service.to_string(), subset: None, port: None },
                            weight: 100,
                            headers: Default::default(),
                        }],
                        ..Default::default()
                    });
                    (None, &*default_route)
                }
                None => {
                    // Redirected here by the capture rules: Istio's outbound traffic policy.
                    if let Some(original) = req.extensions().get::<crate::capture::OriginalDst>().map(|o| o.0) {
                        let resp = super::passthrough::forward(self, worker, req, original, authority).await;
                        let service = super::passthrough::service(self);
                        self.observe(worker, Direction::Outbound, service, "", resp.status().as_u16(), started);
                        return resp;
                    }
                    let resp = reply(404, "no route (NR)\n");
                    self.observe(worker, Direction::Outbound, UNKNOWN, "", resp.status().as_u16(), started);
                    return resp;
                }
            },
        };
        let route_name = route.name.as_deref().unwrap_or("");
        let traceparent =
            worker.reporter.as_ref().and_then(|_| req.headers().get("traceparent")?.to_str().ok()).map(str::to_string);
        // The destination service the request goes to, for the stats: the route's, until
        // a destination of a split is chosen.
        let mut service = route.route.first().map_or(UNKNOWN, |d| d.destination.host.as_str());
        let mut resp = self
            .outbound_route(worker, req, (route_id, route), &tables, (authority, path, scheme), peer, &mut service)
            .await;
        // The callee's sidecar names itself on the response; it is for us, not the app.
        let callee = resp.headers_mut().remove(crate::policy::attributes::ISTIO_ATTRIBUTES);
        self.observe(worker, Direction::Outbound, service, route_name, resp.status().as_u16(), started);
        if worker.reporter.is_some() {
            let attrs = crate::policy::attributes::outbound(&self.identity, method.as_str(), path, authority);
            let mut entry =
                crate::policy::reports::Entry::new(attrs.iter().map(|(n, v)| (*n, v)), traceparent.as_deref());
            if let Some(v) = callee.as_ref().and_then(|v| v.to_str().ok()) {
                entry.extend(crate::policy::attributes::callee_attributes(v).iter().map(|(n, v)| (*n, v)));
            }
            self.report(worker, Some(entry), &resp, started);
        }
        resp
    }
}
