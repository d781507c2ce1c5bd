//! Loading networking config from files, directories and text.

use std::collections::HashMap;
use std::path::PathBuf;

use mixr_rules::config::{ConfigError, Document, Loc, Param, read_documents, read_documents_str};

use super::gateway::Gateway;
use super::model::{
    DestinationRule, ServiceEntry, TrafficPolicy, VirtualService, endpoint, http_route, service_port, subset,
    traffic_policy,
};

/// Every VirtualService, DestinationRule, ServiceEntry and Gateway found.
#[derive(Debug, Clone, Default)]
pub struct TrafficConfig {
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    pub service_entries: Vec<ServiceEntry>,
    pub gateways: Vec<Gateway>,
}

/// Where each resource was first defined, by kind, namespace and name: a second one is an
/// error naming both places, as the server reports duplicate names.
#[derive(Default)]
struct Seen(HashMap<(String, String, String), Loc>);

impl Seen {
    fn check(&mut self, loc: &Loc, namespace: &str) -> Result<(), ConfigError> {
        let key = (loc.kind.clone(), namespace.to_string(), loc.name.clone());
        if let Some(first) = self.0.get(&key) {
            return Err(ConfigError::new(
                loc,
                "metadata.name",
                format!("duplicate name: {} {namespace}/{} is already defined at {first}", loc.kind, loc.name),
            ));
        }
        self.0.insert(key, loc.clone());
        Ok(())
    }
}

/// Loads `*.yaml`/`*.yml` under `paths`; returns what loaded and every error.
pub fn load_paths(paths: &[PathBuf], default_namespace: &str) -> (TrafficConfig, Vec<ConfigError>) {
    let mut cfg = TrafficConfig::default();
    let mut seen = Seen::default();
    let errors = read_documents(paths, default_namespace, |d| document(&mut cfg, &mut seen, d));
    (cfg, errors)
}

pub fn load_str(file: &str, text: &str, default_namespace: &str) -> (TrafficConfig, Vec<ConfigError>) {
    let mut cfg = TrafficConfig::default();
    let mut seen = Seen::default();
    let errors = read_documents_str(file, text, default_namespace, |d| document(&mut cfg, &mut seen, d));
    (cfg, errors)
}

fn document(cfg: &mut TrafficConfig, seen: &mut Seen, d: Document) -> Result<(), ConfigError> {
    // Policy and telemetry kinds belong to the server.
    if !matches!(d.kind.as_str(), "VirtualService" | "DestinationRule" | "ServiceEntry" | "Gateway") {
        return Ok(());
    }
    let Document { loc, kind, namespace, spec } = d;
    seen.check(&loc, &namespace)?;
    let name = loc.name.clone();
    if kind == "Gateway" {
        let gw = super::gateway::gateway(Param::new(&spec, &loc, "spec"), name, namespace)?;
        cfg.gateways.push(gw);
        return Ok(());
    }
    let o = Param::new(&spec, &loc, "spec").obj()?;
    match kind.as_str() {
        "VirtualService" => {
            let hosts = o.require("hosts", |p| p.string_list())?;
            let http = o
                .get("http", |p| {
                    let mut out = Vec::new();
                    for (v, path) in p.list()? {
                        out.push(http_route(Param::new(&v, p.loc, &path))?);
                    }
                    Ok(out)
                })?
                .unwrap_or_default();
            let host_patterns = hosts
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    super::hosts::HostPattern::parse(h)
                        .map_err(|e| ConfigError::new(&loc, format!("spec.hosts[{i}]"), e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            // `name` is a Gateway of this namespace; `ns/name` names its namespace.
            let gateways = o
                .get("gateways", |p| p.string_list())?
                .unwrap_or_default()
                .into_iter()
                .map(|g| if g == "mesh" || g.contains('/') { g } else { format!("{namespace}/{g}") })
                .collect();
            for k in ["tcp", "tls", "exportTo"] {
                let _ = o.raw(k);
            }
            o.finish()?;
            cfg.virtual_services.push(VirtualService { name, namespace, hosts, host_patterns, gateways, http });
        }
        "DestinationRule" => {
            let host = o.require("host", |p| p.text())?;
            let policy = o.get("trafficPolicy", traffic_policy)?.unwrap_or_else(TrafficPolicy::default);
            let subsets = o
                .get("subsets", |p| {
                    let mut out = Vec::new();
                    for (v, path) in p.list()? {
                        out.push(subset(Param::new(&v, p.loc, &path))?);
                    }
                    Ok(out)
                })?
                .unwrap_or_default();
            let _ = o.raw("exportTo");
            o.finish()?;
            cfg.destination_rules.push(DestinationRule { name, namespace, host, traffic_policy: policy, subsets });
        }
        _ => {
            let hosts = o.require("hosts", |p| p.string_list())?;
            let list = |key: &str| o.get(key, |p| p.list());
            let ports = list("ports")?
                .unwrap_or_default()
                .iter()
                .map(|(v, path)| service_port(Param::new(v, &loc, path)))
                .collect::<Result<Vec<_>, _>>()?;
            let endpoints = list("endpoints")?
                .unwrap_or_default()
                .iter()
                .map(|(v, path)| endpoint(Param::new(v, &loc, path)))
                .collect::<Result<Vec<_>, _>>()?;
            let resolution = o.get("resolution", |p| p.text())?.unwrap_or_else(|| "STATIC".into());
            // The service's virtual IPs or CIDR blocks: what captured TCP to it is addressed to.
            let addresses = o
                .get("addresses", |p| {
                    let list = p.string_list()?;
                    for a in &list {
                        if crate::authz::matcher::Cidr::parse(a).is_none() {
                            return Err(p.error(format!("{a:?} is not an address or CIDR block")));
                        }
                    }
                    Ok(list)
                })?
                .unwrap_or_default();
            for k in ["location", "exportTo", "workloadSelector", "subjectAltNames"] {
                let _ = o.raw(k);
            }
            o.finish()?;
            cfg.service_entries.push(ServiceEntry { name, namespace, hosts, addresses, ports, endpoints, resolution });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_resource_of_the_same_kind_namespace_and_name_is_an_error_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let vs = r#"apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
"#;
        std::fs::write(dir.path().join("a.yaml"), vs).unwrap();
        let other_ns = vs.replace("{name: reviews}", "{name: reviews, namespace: test}");
        std::fs::write(dir.path().join("b.yaml"), format!("{other_ns}---\n{vs}")).unwrap();
        let (cfg, errors) = load_paths(&[dir.path().to_path_buf()], "default");
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = errors[0].to_string();
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        assert!(e.starts_with(&format!("{}:", b.display())), "{e}");
        assert!(
            e.contains(&format!(
                "document 2 (VirtualService reviews): metadata.name: duplicate name: VirtualService \
                 default/reviews is already defined at {}: document 1 (VirtualService reviews)",
                a.display()
            )),
            "{e}"
        );
        // The same name in another namespace, or of another kind, is another resource.
        assert_eq!(cfg.virtual_services.len(), 2);
    }

    #[test]
    fn virtual_service_gateways_are_qualified_with_its_namespace() {
        let text = r#"apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: bookinfo, namespace: web}
spec:
  hosts: ['*']
  gateways: [bookinfo-gateway, istio-system/shared, mesh]
  http:
  - route:
    - destination: {host: productpage}
"#;
        let (cfg, errors) = load_str("vs.yaml", text, "default");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(cfg.virtual_services[0].gateways, ["web/bookinfo-gateway", "istio-system/shared", "mesh"]);
    }

    #[test]
    fn the_compose_sidecar_config_loads() {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/proxy"));
        let (config, errors) = load_paths(&[dir], "default");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config.virtual_services.len(), 1);
        let rule = &config.destination_rules[0];
        let pool = &rule.traffic_policy.connection_pool;
        assert_eq!(pool.max_requests_per_connection, Some(1000));
        assert_eq!(pool.idle_timeout, Some(std::time::Duration::from_secs(60)));
        assert_eq!(pool.connect_timeout, Some(std::time::Duration::from_secs(1)));
    }
}
