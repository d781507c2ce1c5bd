//! The route table: which route a request takes and which endpoints may serve it.
//!
//! Built once per config (regexes and host lookups prepared then); a request's route is a
//! host lookup plus the first matching route in order, as Istio decides.

pub mod analyze;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashMap;

use crate::config::hosts::HostPattern;
use crate::config::{
    Destination, DestinationRule, HttpMatch, HttpRoute, ServiceEntry, TrafficConfig, TrafficPolicy, VirtualService,
    WeightedDestination,
};

/// What the route table needs to know about a request.
#[derive(Debug, Clone)]
pub struct RequestInfo<'a> {
    /// Host or :authority, with or without a port.
    pub authority: &'a str,
    pub path: &'a str,
    pub method: &'a str,
    pub scheme: &'a str,
    pub headers: &'a hyper::HeaderMap,
    /// The port the request arrived on.
    pub port: Option<u16>,
}

/// Where a route sits in its table, so what was prepared for it at config load is found
/// by index rather than by a lookup per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteId {
    pub virtual_service: usize,
    pub route: usize,
}

/// The local workload's labels (for `sourceLabels`).
pub type Labels = [(String, String)];

/// A service the mesh knows: its endpoints and traffic policy.
#[derive(Debug, Clone)]
pub struct Service {
    pub entry: ServiceEntry,
    pub rule: Option<DestinationRule>,
}

/// One upstream address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub address: String,
    pub port: u16,
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Virtual services by each of their exact hosts (lower-case, no port), in config
    /// order: the first one a caller may use wins.
    by_host: HashMap<String, Vec<usize>>,
    /// Virtual services by their wildcard hosts, the most specific first (`*` last).
    wildcards: Vec<(HostPattern, usize)>,
    virtual_services: Vec<crate::config::VirtualService>,
    services: HashMap<String, Service>,
}

/// Which VirtualServices a proxy applies, by their `gateways` (Istio's binding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// A sidecar: those without `gateways`, or listing `mesh`.
    Mesh,
    /// A gateway proxy: those listing one of these Gateways (`namespace/name`).
    Gateways(Vec<String>),
}

impl Binding {
    pub fn applies(&self, vs: &VirtualService) -> bool {
        match self {
            Binding::Mesh => vs.binds_mesh(),
            Binding::Gateways(keys) => keys.iter().any(|k| vs.binds_gateway(k)),
        }
    }
}

/// Host without port, lower-case (`[::1]:80` is `::1`); borrowed when already lower-case.
pub fn normalize_host(authority: &str) -> Cow<'_, str> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        // A byte scan from the end: this runs on every request, and `rsplit_once`'s
        // char searcher costs several times as much.
        let bytes = authority.as_bytes();
        let port = bytes.iter().rev().take_while(|b| b.is_ascii_digit()).count();
        let colon = bytes.len() - port;
        if port > 0 && colon > 0 && bytes[colon - 1] == b':' { &authority[..colon - 1] } else { authority }
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// The short service name an authority names: `reviews` of `reviews.default.svc:9080`.
pub fn service_name(authority: &str) -> &str {
    if authority.starts_with('[') {
        return "";
    }
    let host = authority.split(':').next().unwrap_or(authority);
    host.split('.').next().unwrap_or(host)
}

/// Short names match their fully qualified forms: `reviews` is `reviews.NS.svc...`.
fn host_keys(host: &str) -> Vec<String> {
    let h = host.to_ascii_lowercase();
    let mut keys = vec![h.clone()];
    if let Some(short) = h.split('.').next()
        && short != h
    {
        keys.push(short.to_string());
    }
    keys
}

impl RouteTable {
    /// The sidecars' table ([`Binding::Mesh`]).
    pub fn build(cfg: &TrafficConfig) -> RouteTable {
        RouteTable::build_for(cfg, &Binding::Mesh)
    }

    /// The table of the VirtualServices `binding` applies; every service is known.
    pub fn build_for(cfg: &TrafficConfig, binding: &Binding) -> RouteTable {
        let virtual_services: Vec<_> = cfg.virtual_services.iter().filter(|vs| binding.applies(vs)).cloned().collect();
        let mut table = RouteTable { virtual_services, ..Default::default() };
        for (i, vs) in table.virtual_services.iter().enumerate() {
            for h in &vs.host_patterns {
                match h {
                    HostPattern::Exact(e) => {
                        for k in host_keys(e) {
                            table.by_host.entry(k).or_default().push(i);
                        }
                    }
                    wildcard => table.wildcards.push((wildcard.clone(), i)),
                }
            }
        }
        // Stable: among equally specific hosts, config order.
        table.wildcards.sort_by_key(|(p, _)| std::cmp::Reverse(p.specificity()));
        for se in &cfg.service_entries {
            for h in &se.hosts {
                let rule =
                    cfg.destination_rules.iter().find(|r| host_keys(&r.host).iter().any(|k| host_keys(h).contains(k)));
                for k in host_keys(h) {
                    table.services.entry(k).or_insert_with(|| Service { entry: se.clone(), rule: rule.cloned() });
                }
            }
        }
        table
    }

    /// The route a request takes, or `None` (404, Envoy's "NR").
    pub fn route(&self, req: &RequestInfo<'_>, source_labels: &Labels) -> Option<&HttpRoute> {
        self.find(req, source_labels).map(|(_, r)| r)
    }

    /// The route a request takes, with where it sits in the table.
    pub fn find(&self, req: &RequestInfo<'_>, source_labels: &Labels) -> Option<(RouteId, &HttpRoute)> {
        self.find_allowed(req, source_labels, |_| true)
    }

    /// The virtual service a host picks among those `allowed` (a gateway admits only the
    /// ones bound to the server the request came to): an exact host, then wildcards from
    /// the most specific, then a short name (`reviews` for `reviews.default.svc`), then
    /// `*`. A Host holding `*` itself picks none.
    pub fn virtual_service_for(&self, authority: &str, allowed: impl Fn(&VirtualService) -> bool) -> Option<usize> {
        let host = normalize_host(authority);
        let host = host.as_ref();
        if host.is_empty() || host.contains('*') {
            return None;
        }
        let ok = |i: &usize| allowed(&self.virtual_services[*i]);
        if let Some(i) = self.by_host.get(host).and_then(|v| v.iter().copied().find(ok)) {
            return Some(i);
        }
        let mut wildcards = self.wildcards.iter().filter(|(p, i)| p.matches(host) && ok(i));
        let specific = wildcards.clone().find(|(p, _)| *p != HostPattern::Any);
        if let Some((_, i)) = specific {
            return Some(*i);
        }
        let short = host.split('.').next().unwrap_or("");
        if let Some(i) = self.by_host.get(short).and_then(|v| v.iter().copied().find(ok)) {
            return Some(i);
        }
        wildcards.next().map(|(_, i)| *i)
    }

    /// As [`find`](Self::find), among the virtual services `allowed`. Once a host picked a
    /// virtual service, a request none of its routes match has no route: others are not
    /// tried, as Envoy does not leave a virtual host.
    pub fn find_allowed(
        &self,
        req: &RequestInfo<'_>,
        source_labels: &Labels,
        allowed: impl Fn(&VirtualService) -> bool,
    ) -> Option<(RouteId, &HttpRoute)> {
        let vs = self.virtual_service_for(req.authority, allowed)?;
        self.virtual_services[vs]
            .http
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches.is_empty() || r.matches.iter().any(|m| matches(m, req, source_labels)))
            .map(|(i, r)| (RouteId { virtual_service: vs, route: i }, r))
    }

    /// The virtual service a route belongs to.
    pub fn virtual_service(&self, id: RouteId) -> Option<&VirtualService> {
        self.virtual_services.get(id.virtual_service)
    }

    /// Every route, in table order.
    pub fn routes(&self) -> impl Iterator<Item = (RouteId, &HttpRoute)> {
        self.virtual_services.iter().enumerate().flat_map(|(v, vs)| {
            vs.http.iter().enumerate().map(move |(i, r)| (RouteId { virtual_service: v, route: i }, r))
        })
    }

    /// Whether the authority names a service (with or without a VirtualService).
    pub fn service(&self, host: &str) -> Option<&Service> {
        self.service_entry(host).map(|(_, s)| s)
    }

    /// The name the config knows the authority's service by (`reviews` for
    /// `Reviews.default:9080`), if it names one.
    pub fn service_key(&self, host: &str) -> Option<&str> {
        self.service_entry(host).map(|(k, _)| k.as_str())
    }

    fn service_entry(&self, host: &str) -> Option<(&String, &Service)> {
        let h = normalize_host(host);
        self.services
            .get_key_value(h.as_ref())
            .or_else(|| self.services.get_key_value(h.split('.').next().unwrap_or("")))
    }

    /// Endpoints of a destination: its service's endpoints, filtered by the subset's labels.
    pub fn endpoints(&self, d: &Destination) -> Result<Vec<Upstream>, RouteError> {
        let svc = self.service(&d.host).ok_or_else(|| RouteError::UnknownHost(d.host.clone()))?;
        let labels: &[(String, String)] = match &d.subset {
            Some(name) => {
                let rule = svc.rule.as_ref().ok_or_else(|| RouteError::UnknownSubset(d.host.clone(), name.clone()))?;
                let subset = rule
                    .subsets
                    .iter()
                    .find(|s| s.name == *name)
                    .ok_or_else(|| RouteError::UnknownSubset(d.host.clone(), name.clone()))?;
                &subset.labels
            }
            None => &[],
        };
        let port = match d.port {
            Some(p) => svc.entry.ports.iter().find(|sp| sp.number == p).cloned(),
            None => svc.entry.ports.first().cloned(),
        };
        let Some(port) = port else { return Err(RouteError::UnknownPort(d.host.clone(), d.port)) };
        Ok(svc
            .entry
            .endpoints
            .iter()
            .filter(|e| labels.iter().all(|(k, v)| e.labels.iter().any(|(ek, ev)| ek == k && ev == v)))
            .map(|e| Upstream {
                address: e.address.clone(),
                port: e.ports.iter().find(|(n, _)| *n == port.name).map(|(_, p)| *p).unwrap_or(port.number),
                labels: e.labels.clone(),
            })
            .collect())
    }

    /// The traffic policy for a destination: the subset's, else the rule's.
    pub fn policy(&self, d: &Destination) -> TrafficPolicy {
        let Some(rule) = self.service(&d.host).and_then(|s| s.rule.as_ref()) else { return TrafficPolicy::default() };
        d.subset
            .as_ref()
            .and_then(|n| rule.subsets.iter().find(|s| s.name == *n))
            .and_then(|s| s.traffic_policy.clone())
            .unwrap_or_else(|| rule.traffic_policy.clone())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no service entry for host {0}")]
    UnknownHost(String),
    #[error("host {0} has no subset {1}")]
    UnknownSubset(String, String),
    #[error("host {0} has no port {1:?}")]
    UnknownPort(String, Option<u16>),
}

fn header<'a>(req: &'a RequestInfo<'_>, name: &str) -> Option<&'a str> {
    req.headers.get(name)?.to_str().ok()
}

fn query_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// Whether one match block (all conditions) holds.
pub fn matches(m: &HttpMatch, req: &RequestInfo<'_>, source_labels: &Labels) -> bool {
    let path_only = req.path.split('?').next().unwrap_or(req.path);
    if let Some(uri) = &m.uri {
        let ok = if m.ignore_uri_case { uri_ignoring_case(uri, path_only) } else { uri.matches(path_only) };
        if !ok {
            return false;
        }
    }
    let simple = [(&m.scheme, req.scheme), (&m.method, req.method), (&m.authority, req.authority)];
    if simple.iter().any(|(cond, value)| cond.as_ref().is_some_and(|c| !c.matches(value))) {
        return false;
    }
    if m.headers.iter().any(|(k, c)| !header(req, k).is_some_and(|v| c.matches(v))) {
        return false;
    }
    if m.without_headers.iter().any(|(k, c)| header(req, k).is_some_and(|v| c.matches(v))) {
        return false;
    }
    if m.query_params.iter().any(|(k, c)| !query_param(req.path, k).is_some_and(|v| c.matches(v))) {
        return false;
    }
    if m.port.is_some() && m.port != req.port {
        return false;
    }
    m.source_labels.iter().all(|(k, v)| source_labels.iter().any(|(lk, lv)| lk == k && lv == v))
}

fn uri_ignoring_case(m: &crate::config::StringMatch, path: &str) -> bool {
    use crate::config::StringMatch;
    match m {
        StringMatch::Exact(s) => s.eq_ignore_ascii_case(path),
        StringMatch::Prefix(p) => path.len() >= p.len() && path[..p.len()].eq_ignore_ascii_case(p),
        StringMatch::Regex(r) => r.is_match(path) || r.is_match(&path.to_ascii_lowercase()),
    }
}

/// Picks a destination by weight; `roll` is uniform in `0..total weight` (the caller's
/// randomness, so tests can choose it). Zero-weight destinations never win.
pub fn pick_weighted(route: &[WeightedDestination], roll: u32) -> Option<&WeightedDestination> {
    pick_weighted_index(route, roll).map(|i| &route[i])
}

/// As [`pick_weighted`], the destination's index.
pub fn pick_weighted_index(route: &[WeightedDestination], roll: u32) -> Option<usize> {
    let mut left = roll;
    for (i, d) in route.iter().enumerate() {
        if left < d.weight {
            return Some(i);
        }
        left -= d.weight;
    }
    None
}

/// Sum of weights (what `roll` ranges over).
pub fn total_weight(route: &[WeightedDestination]) -> u32 {
    route.iter().map(|d| d.weight).sum()
}
