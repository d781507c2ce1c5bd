//! Loading networking config from files, directories and text.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mixr_rules::config::{ConfigError, Loc, Param};
use serde::Deserialize;
use yaml_serde::Value as Yaml;

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
    let (files, mut errors) = mixr_rules::config::yaml_files(paths);
    let mut cfg = TrafficConfig::default();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => load_into(&mut cfg, &f.display().to_string(), &text, default_namespace, &mut errors),
            Err(e) => errors.push(file_error(&f, e)),
        }
    }
    (cfg, errors)
}

pub fn load_str(file: &str, text: &str, default_namespace: &str) -> (TrafficConfig, Vec<ConfigError>) {
    let mut cfg = TrafficConfig::default();
    let mut errors = Vec::new();
    load_into(&mut cfg, file, text, default_namespace, &mut errors);
    (cfg, errors)
}

fn file_error(path: &Path, e: std::io::Error) -> ConfigError {
    let loc = Loc { file: path.display().to_string().into(), document: 0, kind: String::new(), name: String::new() };
    ConfigError::new(&loc, "-", e.to_string())
}

fn load_into(cfg: &mut TrafficConfig, file: &str, text: &str, default_namespace: &str, errors: &mut Vec<ConfigError>) {
    let file: Arc<str> = file.into();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let loc = Loc { file: file.clone(), document: i + 1, kind: String::new(), name: String::new() };
        let value = match Yaml::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(ConfigError::new(&loc, "-", format!("invalid YAML: {e}")));
                return;
            }
        };
        if value.is_null() {
            continue;
        }
        if let Err(e) = document(cfg, loc, &value, default_namespace) {
            errors.push(e);
        }
    }
}

fn document(cfg: &mut TrafficConfig, loc: Loc, value: &Yaml, default_namespace: &str) -> Result<(), ConfigError> {
    let root = Param::new(value, &loc, "").obj()?;
    let kind = root.require("kind", |p| p.text())?;
    if !matches!(kind.as_str(), "VirtualService" | "DestinationRule" | "ServiceEntry") {
        // Policy and telemetry kinds belong to the server.
        return Ok(());
    }
    let (name, namespace) = root.require("metadata", |p| {
        let m = p.obj()?;
        let r = (m.require("name", |p| p.text())?, m.get("namespace", |p| p.text())?);
        for k in ["labels", "annotations", "uid", "resourceVersion", "creationTimestamp", "generation"] {
            let _ = m.raw(k);
        }
        m.finish()?;
        Ok(r)
    })?;
    root.require("apiVersion", |p| p.text())?;
    let spec = root.raw("spec").map(|(v, _)| v.clone()).unwrap_or(Yaml::Null);
    let _ = root.raw("status");
    root.finish()?;
    let namespace = namespace.unwrap_or_else(|| default_namespace.to_string());
    let loc = Loc { kind: kind.clone(), name: name.clone(), ..loc };
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
