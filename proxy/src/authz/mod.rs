//! Authorization in the sidecar, before the Check: Istio's `security.istio.io/v1beta1`
//! AuthorizationPolicy and Istio 1.4's RBAC kinds (ClusterRbacConfig, ServiceRole,
//! ServiceRoleBinding), decided on the inbound request.
//!
//! - [`matcher`]: value patterns (`prefix*`, `*suffix`, `*`) and CIDR blocks.
//! - [`policy`]: AuthorizationPolicy and the condition keys both kinds share.
//! - [`rbac`]: the v1alpha1 kinds.
//!
//! Everything is parsed when the config loads and selected for this workload then
//! ([`Authz::for_workload`]): a request costs matching only. As in Istio 1.4, a workload
//! that any v1beta1 policy selects is governed by those policies alone; RBAC applies to
//! the others where ClusterRbacConfig turns it on.
//!
//! Source principals and namespaces come from a verified peer certificate only: until
//! the sidecar speaks mutual TLS there is none, so `principals` and `namespaces` match
//! nobody (and their `not` forms everybody), and rules that need them deny.

pub mod matcher;
pub mod policy;
pub mod rbac;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::PathBuf;

use mixr_rules::config::{ConfigError, Document, Param, read_documents, read_documents_str};

use policy::{Action, AuthorizationPolicy};
use rbac::{ClusterRbacConfig, Rbac, ServiceRole, ServiceRoleBinding};

/// What a decision reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The peer's verified identity (`cluster.local/ns/NS/sa/SA`).
    pub principal: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub source_ip: Option<IpAddr>,
    pub host: &'a str,
    /// The port the request arrived for.
    pub port: Option<u16>,
    pub method: &'a str,
    /// The normalized path, without the query: a rule on `/admin` must not be walked past
    /// with `/admin?x`.
    pub path: &'a str,
    /// Lower-case names; repeated fields already joined (`ingress`).
    pub headers: &'a [(&'a str, &'a str)],
    /// This workload's labels (`destination.labels[...]` constraints).
    pub labels: &'a [(String, String)],
}

impl Facts<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, naming what decided it (`namespace/policy`, or why none allowed it).
    Deny(String),
}

/// Every authorization document found in the config.
#[derive(Debug, Clone, Default)]
pub struct AuthzConfig {
    pub policies: Vec<AuthorizationPolicy>,
    pub cluster_rbac: Option<ClusterRbacConfig>,
    pub roles: Vec<ServiceRole>,
    pub bindings: Vec<ServiceRoleBinding>,
}

/// Loads the authorization kinds under `paths` (other kinds are skipped).
pub fn load_paths(paths: &[PathBuf], default_namespace: &str) -> (AuthzConfig, Vec<ConfigError>) {
    let mut cfg = AuthzConfig::default();
    let errors = read_documents(paths, default_namespace, |d| document(&mut cfg, d));
    (cfg, errors)
}

pub fn load_str(file: &str, text: &str, default_namespace: &str) -> (AuthzConfig, Vec<ConfigError>) {
    let mut cfg = AuthzConfig::default();
    let errors = read_documents_str(file, text, default_namespace, |d| document(&mut cfg, d));
    (cfg, errors)
}

fn document(cfg: &mut AuthzConfig, d: Document) -> Result<(), ConfigError> {
    let spec = Param::new(&d.spec, &d.loc, "spec");
    let (name, namespace) = (d.loc.name.clone(), d.namespace.clone());
    match d.kind.as_str() {
        "AuthorizationPolicy" => cfg.policies.push(AuthorizationPolicy::parse(name, namespace, spec)?),
        "ServiceRole" => cfg.roles.push(ServiceRole::parse(name, namespace, spec)?),
        "ServiceRoleBinding" => cfg.bindings.push(ServiceRoleBinding::parse(name, namespace, spec)?),
        // RbacConfig is ClusterRbacConfig's older name; Istio reads the one named default.
        "ClusterRbacConfig" | "RbacConfig" if name == "default" => {
            cfg.cluster_rbac = Some(ClusterRbacConfig::parse(spec)?)
        }
        _ => {}
    }
    Ok(())
}

/// `{key: value}` pairs at `p`.
pub(crate) fn label_map(p: Param<'_>) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (k, v) in p.entries()? {
        let path = format!("{}.{k}", p.path());
        out.push((k, Param::new(v, p.loc, &path).text()?));
    }
    Ok(out)
}

/// The namespace whose selector-less policies apply mesh-wide (Istio's root namespace).
pub const ROOT_NAMESPACE: &str = "istio-system";

/// The authorization that applies to one workload, selected at load.
#[derive(Debug, Clone, Default)]
pub struct Authz {
    deny: Vec<AuthorizationPolicy>,
    allow: Vec<AuthorizationPolicy>,
    /// RBAC, when no v1beta1 policy selects the workload and RBAC covers its service.
    rbac: Option<(Rbac, bool)>,
    /// The workload's service FQDN, which ServiceRoles name.
    service: String,
}

impl Authz {
    /// What applies to the workload with `labels` in `namespace`, backing `service` (its
    /// short name: the `app` label).
    pub fn for_workload(cfg: &AuthzConfig, namespace: &str, labels: &[(String, String)], service: &str) -> Authz {
        let selects = |p: &&AuthorizationPolicy| {
            (p.namespace == namespace || p.namespace == ROOT_NAMESPACE)
                && p.selector.as_ref().is_none_or(|s| s.iter().all(|kv| labels.contains(kv)))
        };
        let (deny, allow): (Vec<_>, Vec<_>) =
            cfg.policies.iter().filter(selects).cloned().partition(|p| p.action == Action::Deny);
        let service = format!("{service}.{namespace}.svc.cluster.local");
        let rbac = match &cfg.cluster_rbac {
            Some(c) if deny.is_empty() && allow.is_empty() && c.covers(&service, namespace) => Some((
                Rbac {
                    roles: cfg.roles.iter().filter(|r| r.namespace == namespace).cloned().collect(),
                    bindings: cfg.bindings.iter().filter(|b| b.namespace == namespace).cloned().collect(),
                },
                c.permissive,
            )),
            _ => None,
        };
        Authz { deny, allow, rbac, service }
    }

    /// Whether anything applies: when nothing does, requests skip the decision.
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty() && self.rbac.is_none()
    }

    pub fn decide(&self, facts: &Facts<'_>) -> Decision {
        if let Some(p) = self.deny.iter().find(|p| p.matches(facts)) {
            return Decision::Deny(format!("{}/{}", p.namespace, p.name));
        }
        if !self.allow.is_empty() {
            return if self.allow.iter().any(|p| p.matches(facts)) {
                Decision::Allow
            } else {
                Decision::Deny("no ALLOW policy matched".into())
            };
        }
        match &self.rbac {
            Some((rbac, permissive)) => match rbac.allowing(&self.service, facts) {
                Some(_) => Decision::Allow,
                None if *permissive => {
                    tracing::debug!(service = %self.service, "RBAC (permissive) would deny");
                    Decision::Allow
                }
                None => Decision::Deny("no ServiceRoleBinding matched".into()),
            },
            None => Decision::Allow,
        }
    }
}
