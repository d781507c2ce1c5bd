//! Loading networking config from files, directories and text.

use std::path::PathBuf;

use mixr_rules::config::{ConfigError, Document, Param, read_documents, read_documents_str};

use super::model::{
    DestinationRule, ServiceEntry, TrafficPolicy, VirtualService, endpoint, http_route, service_port, subset,
    traffic_policy,
};

/// Every VirtualService, DestinationRule and ServiceEntry found.
#[derive(Debug, Clone, Default)]
pub struct TrafficConfig {
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    pub service_entries: Vec<ServiceEntry>,
}

/// Loads `*.yaml`/`*.yml` under `paths`; returns what loaded and every error.
pub fn load_paths(paths: &[PathBuf], default_namespace: &str) -> (TrafficConfig, Vec<ConfigError>) {
    let mut cfg = TrafficConfig::default();
    let errors = read_documents(paths, default_namespace, |d| document(&mut cfg, d));
    (cfg, errors)
}

pub fn load_str(file: &str, text: &str, default_namespace: &str) -> (TrafficConfig, Vec<ConfigError>) {
    let mut cfg = TrafficConfig::default();
    let errors = read_documents_str(file, text, default_namespace, |d| document(&mut cfg, d));
    (cfg, errors)
}

fn document(cfg: &mut TrafficConfig, d: Document) -> Result<(), ConfigError> {
    // Policy and telemetry kinds belong to the server.
    if !matches!(d.kind.as_str(), "VirtualService" | "DestinationRule" | "ServiceEntry") {
        return Ok(());
    }
    let Document { loc, kind, namespace, spec } = d;
    let name = loc.name.clone();
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
            for k in ["gateways", "tcp", "tls", "exportTo"] {
                let _ = o.raw(k);
            }
            o.finish()?;
            cfg.virtual_services.push(VirtualService { name, namespace, hosts, http });
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
            for k in ["location", "addresses", "exportTo", "workloadSelector", "subjectAltNames"] {
                let _ = o.raw(k);
            }
            o.finish()?;
            cfg.service_entries.push(ServiceEntry { name, namespace, hosts, ports, endpoints, resolution });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
