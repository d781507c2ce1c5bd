//! What a Pod tells about a workload, and the `kubernetes` template's outputs for one.
//!
//! The API's Pod JSON is read into [`PodInfo`], keeping only what attributes need, so the
//! cache holds a few hundred bytes per pod rather than the whole object.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use mixr_rules::expr::GeneratedValues;
use mixr_rules::value::{MapVal, OwnedValue, StringMap, Value, ip_to_bytes};
use serde::Deserialize;

/// A Pod as the list and watch endpoints return it (the fields read here).
#[derive(Debug, Clone, Deserialize)]
pub struct PodJson {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub owner_references: Vec<OwnerReference>,
    #[serde(default)]
    pub resource_version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub controller: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub service_account_name: String,
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default)]
    pub container_port: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub phase: String,
    #[serde(default, rename = "podIP")]
    pub pod_ip: String,
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
}

/// The facts kept per pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub labels: Vec<(String, String)>,
    pub service_account: String,
    pub ip: Option<IpAddr>,
    pub host_ip: Option<IpAddr>,
    /// A pod on the node's network shares its IP with the node and every such pod: it is
    /// never found by IP.
    pub host_network: bool,
    /// Pods that ended keep their IP in the API while the address is reused elsewhere.
    pub finished: bool,
    pub containers: Vec<(String, Vec<i64>)>,
    pub workload: Workload,
}

/// The workload a pod belongs to: its root controller, found from the owner reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    /// `kubernetes://apis/GROUP/VERSION/namespaces/NS/KINDs/NAME`.
    pub owner: String,
}

impl PodInfo {
    pub fn from_json(pod: PodJson) -> PodInfo {
        let workload = workload(&pod.metadata);
        let Metadata { name, namespace, labels, .. } = pod.metadata;
        PodInfo {
            name,
            namespace,
            labels: labels.into_iter().collect(),
            service_account: pod.spec.service_account_name,
            ip: pod.status.pod_ip.parse().ok(),
            host_ip: pod.status.host_ip.parse().ok(),
            host_network: pod.spec.host_network,
            finished: matches!(pod.status.phase.as_str(), "Succeeded" | "Failed"),
            containers: pod
                .spec
                .containers
                .into_iter()
                .map(|c| (c.name, c.ports.iter().map(|p| p.container_port).collect()))
                .collect(),
            workload,
        }
    }

    /// The cache key, also what `kubernetes://NAME.NAMESPACE` uids name.
    pub fn key(&self) -> String {
        key(&self.namespace, &self.name)
    }

    /// Whether the pod may be looked up by its IP.
    pub fn addressable(&self) -> bool {
        self.ip.is_some() && !self.host_network && !self.finished
    }
}

pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The cache key a Istio pod uid names: `kubernetes://NAME.NAMESPACE` (a namespace holds
/// no dots, so the last dot separates them).
pub fn key_from_uid(uid: &str) -> Option<String> {
    let full = uid.strip_prefix("kubernetes://")?;
    let (name, namespace) = full.rsplit_once('.')?;
    (!name.is_empty() && !namespace.is_empty()).then(|| key(namespace, name))
}

/// Deployments own pods through ReplicaSets named `DEPLOYMENT-HASH`, the hash also being
/// the pod's `pod-template-hash` label: the Deployment is found without asking the API.
fn workload(meta: &Metadata) -> Workload {
    let owner = meta.owner_references.iter().find(|o| o.controller).or(meta.owner_references.first());
    let Some(owner) = owner else {
        return Workload {
            name: meta.name.clone(),
            owner: format!("kubernetes://apis/v1/namespaces/{}/pods/{}", meta.namespace, meta.name),
        };
    };
    let (api_version, kind, name) = match (owner.kind.as_str(), meta.labels.get("pod-template-hash")) {
        ("ReplicaSet", Some(hash)) => match owner.name.strip_suffix(hash.as_str()).and_then(|n| n.strip_suffix('-')) {
            Some(deployment) if !deployment.is_empty() => ("apps/v1", "Deployment", deployment),
            _ => (owner.api_version.as_str(), owner.kind.as_str(), owner.name.as_str()),
        },
        _ => (owner.api_version.as_str(), owner.kind.as_str(), owner.name.as_str()),
    };
    Workload {
        name: name.to_string(),
        owner: format!(
            "kubernetes://apis/{api_version}/namespaces/{}/{}s/{name}",
            meta.namespace,
            kind.to_ascii_lowercase()
        ),
    }
}

/// Which side of the request a pod is: the output fields are prefixed accordingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// Output field names per side, in the template's spelling.
struct Fields {
    pod_uid: &'static str,
    pod_ip: &'static str,
    pod_name: &'static str,
    labels: &'static str,
    namespace: &'static str,
    service_account_name: &'static str,
    host_ip: &'static str,
    workload_uid: &'static str,
    workload_name: &'static str,
    workload_namespace: &'static str,
    owner: &'static str,
}

const SOURCE: Fields = Fields {
    pod_uid: "source_pod_uid",
    pod_ip: "source_pod_ip",
    pod_name: "source_pod_name",
    labels: "source_labels",
    namespace: "source_namespace",
    service_account_name: "source_service_account_name",
    host_ip: "source_host_ip",
    workload_uid: "source_workload_uid",
    workload_name: "source_workload_name",
    workload_namespace: "source_workload_namespace",
    owner: "source_owner",
};

const DESTINATION: Fields = Fields {
    pod_uid: "destination_pod_uid",
    pod_ip: "destination_pod_ip",
    pod_name: "destination_pod_name",
    labels: "destination_labels",
    namespace: "destination_namespace",
    service_account_name: "destination_service_account_name",
    host_ip: "destination_host_ip",
    workload_uid: "destination_workload_uid",
    workload_name: "destination_workload_name",
    workload_namespace: "destination_workload_namespace",
    owner: "destination_owner",
};

fn text(s: &str) -> OwnedValue {
    Value::String(Cow::Owned(s.to_string()))
}

/// Sets the outputs that describe `pod` on `side`. `port` (destination only) picks the
/// container that listens on it.
pub fn fill(out: &mut GeneratedValues, pod: &PodInfo, side: Side, port: Option<i64>) {
    let f = match side {
        Side::Source => &SOURCE,
        Side::Destination => &DESTINATION,
    };
    out.set(f.pod_uid, text(&format!("kubernetes://{}.{}", pod.name, pod.namespace)));
    if let Some(ip) = pod.ip {
        out.set(f.pod_ip, Value::Bytes(Cow::Owned(ip_to_bytes(ip))));
    }
    if let Some(ip) = pod.host_ip {
        out.set(f.host_ip, Value::Bytes(Cow::Owned(ip_to_bytes(ip))));
    }
    out.set(f.pod_name, text(&pod.name));
    out.set(f.namespace, text(&pod.namespace));
    let labels = pod.labels.iter().map(|(k, v)| (Cow::Owned(k.clone()), Cow::Owned(v.clone()))).collect();
    out.set(f.labels, Value::StringMap(MapVal::from(StringMap::new(labels))));
    if !pod.service_account.is_empty() {
        out.set(f.service_account_name, text(&pod.service_account));
    }
    out.set(f.workload_uid, text(&format!("istio://{}/workloads/{}", pod.namespace, pod.workload.name)));
    out.set(f.workload_name, text(&pod.workload.name));
    out.set(f.workload_namespace, text(&pod.namespace));
    out.set(f.owner, text(&pod.workload.owner));
    if side == Side::Destination
        && let Some(port) = port.filter(|p| *p > 0)
        && let Some((name, _)) = pod.containers.iter().find(|(_, ports)| ports.contains(&port))
    {
        out.set("destination_container_name", text(name));
    }
}
