//! `mixr-proxy inject`: what `istioctl kube-inject` did for Istio's sidecar, for ours.
//!
//! Input is Kubernetes YAML, several documents a file. Workloads (Pods, and the pod
//! templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers,
//! Jobs and CronJobs, also inside `List`s) get the sidecar, its init container and what
//! they need ([`pod`]); every other document is written back as it was read, byte for
//! byte, comments included.
//!
//! - [`docs`]: splitting a stream into documents without losing their text;
//! - [`pod`]: one pod template: opt-out, capture annotations, removing an earlier
//!   injection, adding ours.

pub mod cli;
mod docs;
pub mod pod;

use yaml_serde::Value;

/// Everything injection takes from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// The image with `mixr-proxy` in it (the repo's Dockerfile builds one).
    pub image: String,
    /// mixr's gRPC address for the sidecar's `--mixr`; empty: no enforcement.
    pub mixr: String,
    /// The ConfigMap holding the sidecar's traffic rules, mounted read-only (optional: a
    /// pod starts without it, with no rules).
    pub config_map: String,
    /// Listen on IPv6 too and capture IPv6 (`iptables --ipv6`).
    pub ipv6: bool,
    /// Mount the Secret `mixr-ca-token-<service account>` and obtain a workload
    /// certificate with its token (mutual TLS).
    pub mesh_identity: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            image: "mixr:latest".into(),
            mixr: "mixr.istio-system.svc.cluster.local:9091".into(),
            config_map: "mixr-proxy-config".into(),
            ipv6: false,
            mesh_identity: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {doc}: invalid YAML: {source}")]
    Yaml { doc: usize, source: yaml_serde::Error },
    #[error("{place}: {key}: {reason}")]
    Invalid { place: String, key: String, reason: String },
    #[error("{place}: cannot write YAML: {source}")]
    Write { place: String, source: yaml_serde::Error },
}

/// What happened to one workload, for the operator (written to stderr by the CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub place: String,
    pub reason: String,
}

/// The injected stream, and the workloads left alone with why.
#[derive(Debug)]
pub struct Injected {
    pub text: String,
    pub skipped: Vec<Skipped>,
}

/// Injects every workload of a YAML stream.
pub fn inject(text: &str, options: &Options) -> Result<Injected, InjectError> {
    let mut out = String::new();
    let mut skipped = Vec::new();
    let mut doc = 0;
    for chunk in docs::split(text) {
        if chunk.trim().is_empty() {
            continue;
        }
        let mut value = Value::Null;
        let mut place = String::new();
        if !docs::is_blank(chunk) {
            doc += 1;
            value = yaml_serde::from_str(chunk).map_err(|source| InjectError::Yaml { doc, source })?;
            place = format!("document {doc}{}", describe(&value));
        }
        let changed = !value.is_null() && object(&mut value, &place, options, &mut skipped)?;
        if !out.is_empty() {
            out.push_str("---\n");
        }
        if changed {
            out.push_str(&yaml_serde::to_string(&value).map_err(|source| InjectError::Write { place, source })?);
        } else {
            out.push_str(chunk);
            if !chunk.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    Ok(Injected { text: out, skipped })
}

/// ` (Kind name)` for error messages, or what of it there is.
fn describe(value: &Value) -> String {
    let kind = value.get("kind").and_then(Value::as_str);
    let name = value.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str);
    match (kind, name) {
        (Some(k), Some(n)) => format!(" ({k} {n})"),
        (Some(k), None) => format!(" ({k})"),
        (None, Some(n)) => format!(" ({n})"),
        (None, None) => String::new(),
    }
}

fn invalid(place: &str, key: &str, reason: impl Into<String>) -> InjectError {
    InjectError::Invalid { place: place.into(), key: key.into(), reason: reason.into() }
}

/// Where a kind keeps its pod template; `None` for kinds that run no pods.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => {
            Some(&["spec", "template"])
        }
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Injects one object (a `List`'s items one by one); true when it changed.
fn object(value: &mut Value, place: &str, options: &Options, skipped: &mut Vec<Skipped>) -> Result<bool, InjectError> {
    let Some(map) = value.as_mapping_mut() else {
        return Err(invalid(place, "(document)", "expected a mapping (a Kubernetes object)"));
    };
    let kind = match map.get("kind") {
        None => return Ok(false),
        Some(Value::String(k)) => k.clone(),
        Some(_) => return Err(invalid(place, "kind", "expected a string")),
    };
    if kind == "List" || (kind.ends_with("List") && map.get("items").is_some_and(Value::is_sequence)) {
        let Some(Value::Sequence(items)) = map.get_mut("items") else {
            return Err(invalid(place, "items", "expected a list"));
        };
        let mut changed = false;
        for (i, item) in items.iter_mut().enumerate() {
            let item_place = format!("{place}, items[{i}]{}", describe(item));
            changed |= object(item, &item_place, options, skipped)?;
        }
        return Ok(changed);
    }
    let Some(path) = template_path(&kind) else { return Ok(false) };
    let workload = workload_name(map, &kind).ok_or_else(|| invalid(place, "metadata.name", "missing"))?;
    let mut template = &mut *map;
    let mut key = String::new();
    for step in path {
        key = if key.is_empty() { step.to_string() } else { format!("{key}.{step}") };
        template = match template.get_mut(*step) {
            Some(Value::Mapping(m)) => m,
            Some(_) => return Err(invalid(place, &key, "expected a mapping")),
            None => return Err(invalid(place, &key, "missing")),
        };
    }
    let prefix = if key.is_empty() { String::new() } else { format!("{key}.") };
    match pod::inject(template, &workload, &pod::Where { place, prefix: &prefix }, options)? {
        pod::Outcome::Injected => Ok(true),
        pod::Outcome::Skipped(reason) => {
            skipped.push(Skipped { place: place.to_string(), reason });
            Ok(false)
        }
    }
}

/// The workload's name as the sidecar reports it (`source.workload.name`): the
/// controller's name, or a bare Pod's own (its generateName's stem when it has no name).
fn workload_name(map: &yaml_serde::Mapping, kind: &str) -> Option<String> {
    let meta = map.get("metadata")?;
    if let Some(name) = meta.get("name").and_then(Value::as_str) {
        return Some(name.to_string());
    }
    let generated = meta.get("generateName").and_then(Value::as_str).filter(|_| kind == "Pod")?;
    Some(generated.trim_end_matches('-').to_string())
}

#[cfg(test)]
mod tests;
