//! `kubernetesenv`: Mixer's attribute generator for Kubernetes. It serves the `kubernetes`
//! template: given the source and destination pod uids (`kubernetes://NAME.NAMESPACE`) or
//! IPs, it produces pod name, namespace, labels, service account, host IP, and the
//! workload (the pod's root controller) with its owner, from a cache of the cluster's
//! pods kept by a list and watch of the API ([`client`]).
//!
//! Params (defaults): `kubeconfigPath` (none: the pod's service account inside a
//! cluster), `cacheRefreshDuration` (5m: how often the whole pod list is read again),
//! `clusterDomainName` (svc.cluster.local) and `clusterRegistriesNamespace` (accepted,
//! unused: one cluster is watched).
//!
//! Outside a cluster and without a kubeconfig the handler loads, logs once that no
//! cluster is reachable, and generates nothing; until the first list has been read it
//! generates nothing either, so a binding's default never poses as a fact.
//!
//! - [`pod`]: Pod JSON to the facts kept, and those facts to template outputs.
//! - [`cache`]: pods by name and IP.
//! - [`client`]: the API client and the list/watch loop.

pub mod cache;
pub mod client;
pub mod pod;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mixr_rules::config::{ConfigError, HandlerDoc};
use mixr_rules::expr::GeneratedValues;
use mixr_rules::snapshot::InstanceValues;
use mixr_rules::templates::Template;
use mixr_rules::value::Value;

use crate::registry::{AdapterInfo, BuildContext, Handler};
use crate::variety::AttributeGenerator;
use cache::PodCache;
use client::ApiServer;
use pod::{Side, key_from_uid};

pub fn info() -> AdapterInfo {
    AdapterInfo {
        name: "kubernetesenv",
        templates: &[Template::Kubernetes],
        validate: |doc| parse(doc).map(drop),
        validate_instances: None,
        build,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub kubeconfig: Option<PathBuf>,
    pub resync: Duration,
}

pub fn parse(doc: &HandlerDoc) -> Result<Params, ConfigError> {
    let o = doc.params().obj()?;
    let kubeconfig = o.get("kubeconfigPath", |p| {
        let text = p.text()?;
        let path = PathBuf::from(&text);
        Ok(match std::path::Path::new(&*doc.loc.file).parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path,
        })
    })?;
    let resync = o.get("cacheRefreshDuration", crate::params::duration)?.unwrap_or(Duration::from_secs(300));
    if resync < Duration::from_secs(1) {
        return Err(ConfigError::new(&doc.loc, o.child_path("cacheRefreshDuration"), "must be at least 1s"));
    }
    o.get("clusterDomainName", |p| p.text())?;
    o.get("clusterRegistriesNamespace", |p| p.text())?;
    o.finish()?;
    Ok(Params { kubeconfig, resync })
}

fn build(doc: &HandlerDoc, _: &BuildContext) -> Result<Handler, ConfigError> {
    let params = parse(doc)?;
    let name = doc.display_name();
    let api = match &params.kubeconfig {
        Some(path) => Some(ApiServer::from_kubeconfig(path).map_err(|e| {
            ConfigError::new(&doc.loc, format!("{}.kubeconfigPath", doc.params_path), format!("kubeconfig: {e}"))
        })?),
        None => ApiServer::in_cluster()
            .map_err(|e| ConfigError::new(&doc.loc, doc.params_path.clone(), format!("in-cluster credentials: {e}")))?,
    };
    let generator = KubernetesEnv::start(api, params.resync, &name);
    Ok(Handler { check: None, quota: None, report: None, generator: Some(Arc::new(generator)) })
}

/// The handler: a pod cache and the task that fills it (stopped when the handler goes).
pub struct KubernetesEnv {
    cache: Option<Arc<PodCache>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl KubernetesEnv {
    /// Starts watching `api`'s pods; with no API server, a handler that generates nothing.
    pub fn start(api: Option<ApiServer>, resync: Duration, name: &str) -> KubernetesEnv {
        let Some(api) = api else {
            tracing::info!(handler = %name, "kubernetesenv: no Kubernetes cluster reachable (not in a pod, no kubeconfigPath); no attributes will be generated");
            return KubernetesEnv { cache: None, task: None };
        };
        let cache = Arc::new(PodCache::default());
        let task = match tokio::runtime::Handle::try_current() {
            Ok(rt) => Some(rt.spawn(client::run(api, cache.clone(), resync, name.to_string()))),
            Err(_) => {
                tracing::warn!(handler = %name, "kubernetesenv: no async runtime; the pod cache stays empty");
                None
            }
        };
        KubernetesEnv { cache: Some(cache), task }
    }

    /// A handler over a cache filled by the caller (tests).
    pub fn with_cache(cache: Arc<PodCache>) -> KubernetesEnv {
        KubernetesEnv { cache: Some(cache), task: None }
    }
}

impl Drop for KubernetesEnv {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn text_field<'v>(instance: &'v InstanceValues, name: &str) -> Option<&'v str> {
    instance.field(name).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// An IP worth looking up: present, not the unspecified address bindings default to.
fn ip_field(instance: &InstanceValues, name: &str) -> Option<IpAddr> {
    instance.field(name).and_then(Value::as_ip).filter(|ip| !ip.is_unspecified())
}

impl AttributeGenerator for KubernetesEnv {
    fn generate(&self, instance: &InstanceValues) -> Option<GeneratedValues> {
        let cache = self.cache.as_ref().filter(|c| c.is_synced())?;
        let find = |uid: &str, ip: &str| match text_field(instance, uid) {
            Some(uid) => key_from_uid(uid).and_then(|k| cache.by_key(&k)),
            None => ip_field(instance, ip).and_then(|ip| cache.by_ip(ip)),
        };
        let mut out = GeneratedValues::new();
        if let Some(pod) = find("source_uid", "source_ip") {
            pod::fill(&mut out, &pod, Side::Source, None);
        }
        if let Some(pod) = find("destination_uid", "destination_ip") {
            let port = match instance.field("destination_port") {
                Some(Value::Int64(p)) => Some(*p),
                _ => None,
            };
            pod::fill(&mut out, &pod, Side::Destination, port);
        }
        Some(out)
    }
}
