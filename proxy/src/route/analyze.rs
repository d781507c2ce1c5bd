//! Warnings about a config that loads but cannot work as written, in the manner of
//! `istioctl analyze`: routes to hosts or subsets nobody defined, VirtualServices for
//! hosts the mesh does not know. `mixr-proxy validate` prints them and every load logs
//! them; none of them stops a config from loading, since the missing piece may come later.

use std::fmt;

use super::{RouteError, RouteTable};
use crate::config::{Destination, TrafficConfig};

/// One finding, naming the resource it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// `VirtualService default/reviews`.
    pub resource: String,
    /// Where in the resource: `http[0].route[1]`, or empty for the whole resource.
    pub at: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.is_empty() {
            write!(f, "{}: {}", self.resource, self.message)
        } else {
            write!(f, "{}: {}: {}", self.resource, self.at, self.message)
        }
    }
}

/// Every warning for `config`, whose route table is `table`.
pub fn analyze(config: &TrafficConfig, table: &RouteTable) -> Vec<Warning> {
    let mut out = Vec::new();
    for vs in &config.virtual_services {
        let resource = format!("VirtualService {}/{}", vs.namespace, vs.name);
        let wildcard = vs.host_patterns.iter().any(|h| !matches!(h, crate::config::hosts::HostPattern::Exact(_)));
        if !wildcard && !vs.hosts.iter().any(|h| table.service(h).is_some()) {
            out.push(Warning {
                resource: resource.clone(),
                at: "hosts".into(),
                message: format!("no ServiceEntry defines any of its hosts ({})", vs.hosts.join(", ")),
            });
        }
        for (i, route) in vs.http.iter().enumerate() {
            let destinations = route
                .route
                .iter()
                .enumerate()
                .map(|(j, w)| (format!("http[{i}].route[{j}].destination"), &w.destination))
                .chain(route.mirror.iter().map(|m| (format!("http[{i}].mirror"), m)));
            for (at, d) in destinations {
                if let Some(message) = unreachable(table, d) {
                    out.push(Warning { resource: resource.clone(), at, message });
                }
            }
        }
    }
    for rule in &config.destination_rules {
        if table.service(&rule.host).is_none() {
            out.push(Warning {
                resource: format!("DestinationRule {}/{}", rule.namespace, rule.name),
                at: "host".into(),
                message: format!("no ServiceEntry defines host {}", rule.host),
            });
        }
    }
    out
}

/// Why requests routed to `d` would fail, if they would.
fn unreachable(table: &RouteTable, d: &Destination) -> Option<String> {
    match table.endpoints(d) {
        Ok(_) => None,
        Err(RouteError::UnknownHost(h)) => Some(format!("routes to host {h}, which no ServiceEntry defines")),
        Err(RouteError::UnknownSubset(h, s)) => {
            Some(format!("routes to subset {s} of host {h}, which no DestinationRule defines"))
        }
        Err(RouteError::UnknownPort(h, Some(p))) => Some(format!("routes to port {p} of host {h}, which it lacks")),
        Err(RouteError::UnknownPort(h, None)) => Some(format!("routes to host {h}, which has no ports")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: ratings, namespace: bookinfo}
spec:
  host: ratings
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v3}
      weight: 50
    mirror: {host: details}
  - route:
    - destination: {host: reviews, port: {number: 9999}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: ghost, namespace: bookinfo}
spec:
  hosts: [ghost.example.com]
  http:
  - route:
    - destination: {host: reviews}
"#;

    #[test]
    fn each_unreachable_piece_is_named() {
        let (config, errors) = load_str("t.yaml", CONFIG, "default");
        assert!(errors.is_empty(), "{errors:?}");
        let found: Vec<String> =
            analyze(&config, &RouteTable::build(&config)).iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "VirtualService bookinfo/reviews: http[0].route[1].destination: routes to subset v3 of host \
                 reviews, which no DestinationRule defines",
                "VirtualService bookinfo/reviews: http[0].mirror: routes to host details, which no ServiceEntry \
                 defines",
                "VirtualService bookinfo/reviews: http[1].route[0].destination: routes to port 9999 of host \
                 reviews, which it lacks",
                "VirtualService bookinfo/ghost: hosts: no ServiceEntry defines any of its hosts (ghost.example.com)",
                "DestinationRule bookinfo/ratings: host: no ServiceEntry defines host ratings",
            ]
        );
    }

    #[test]
    fn the_compose_config_has_nothing_to_say() {
        let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/proxy"));
        let (config, errors) = crate::config::load_paths(&[dir], "default");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(analyze(&config, &RouteTable::build(&config)), []);
    }
}
