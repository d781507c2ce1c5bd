//! Which inbound traffic a workload takes: mutual TLS only (STRICT), mutual TLS or
//! plaintext (PERMISSIVE) or plaintext only (DISABLE), from Istio 1.4's
//! `authentication.istio.io/v1alpha1` Policy and MeshPolicy and from
//! `security.istio.io/v1beta1` PeerAuthentication.
//!
//! Both kinds scope the same way: a workload's (a selector, or a Policy's `targets`) over its
//! namespace's over the mesh's (the root namespace's, or MeshPolicy `default`). Where any
//! PeerAuthentication speaks for a workload it alone decides, as it replaced the older kind.
//! Where nothing does, the mode is PERMISSIVE, Istio's default since 1.5: a workload with a
//! certificate takes mTLS from callers that have one and plaintext from the rest.

use mixr_rules::config::{ConfigError, Document, Param, read_documents, read_documents_str};

use crate::authz::ROOT_NAMESPACE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Strict,
    Permissive,
    Disable,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Strict => "STRICT",
            Mode::Permissive => "PERMISSIVE",
            Mode::Disable => "DISABLE",
        }
    }
}

/// A PeerAuthentication's mode, where UNSET (`None`) defers to the wider scope.
type Setting = Option<Mode>;

#[derive(Debug, Clone)]
pub struct PeerAuthentication {
    pub name: String,
    pub namespace: String,
    pub selector: Option<Vec<(String, String)>>,
    pub mode: Setting,
    pub ports: Vec<(u16, Setting)>,
}

/// An Istio 1.4 authentication Policy (or MeshPolicy), as far as peers go.
#[derive(Debug, Clone)]
pub struct AlphaPolicy {
    pub name: String,
    pub namespace: String,
    pub mesh: bool,
    /// Services (short names) and, when listed, only those ports of theirs.
    pub targets: Vec<(String, Vec<u16>)>,
    pub mode: Mode,
}

/// Every authentication document found in the config.
#[derive(Debug, Clone, Default)]
pub struct MtlsConfig {
    pub peer_authentications: Vec<PeerAuthentication>,
    pub policies: Vec<AlphaPolicy>,
}

pub fn load_paths(paths: &[std::path::PathBuf], default_namespace: &str) -> (MtlsConfig, Vec<ConfigError>) {
    let mut cfg = MtlsConfig::default();
    let errors = read_documents(paths, default_namespace, |d| document(&mut cfg, d));
    (cfg, errors)
}

pub fn load_str(file: &str, text: &str, default_namespace: &str) -> (MtlsConfig, Vec<ConfigError>) {
    let mut cfg = MtlsConfig::default();
    let errors = read_documents_str(file, text, default_namespace, |d| document(&mut cfg, d));
    (cfg, errors)
}

fn document(cfg: &mut MtlsConfig, d: Document) -> Result<(), ConfigError> {
    let spec = Param::new(&d.spec, &d.loc, "spec");
    let (name, namespace) = (d.loc.name.clone(), d.namespace.clone());
    match d.kind.as_str() {
        "PeerAuthentication" => cfg.peer_authentications.push(peer_authentication(name, namespace, spec)?),
        // Only authentication.istio.io has a kind named Policy.
        "Policy" => cfg.policies.push(alpha_policy(name, namespace, false, spec)?),
        "MeshPolicy" => cfg.policies.push(alpha_policy(name, namespace, true, spec)?),
        _ => {}
    }
    Ok(())
}

fn setting(p: Param<'_>) -> Result<Setting, ConfigError> {
    let o = p.obj()?;
    let mode = match o.get("mode", |p| p.text())?.as_deref() {
        None | Some("UNSET") => None,
        Some("STRICT") => Some(Mode::Strict),
        Some("PERMISSIVE") => Some(Mode::Permissive),
        Some("DISABLE") => Some(Mode::Disable),
        Some(other) => {
            return Err(ConfigError::new(
                o.loc(),
                o.child_path("mode"),
                format!("{other:?}: expected UNSET, DISABLE, PERMISSIVE or STRICT"),
            ));
        }
    };
    o.finish()?;
    Ok(mode)
}

fn peer_authentication(name: String, namespace: String, spec: Param<'_>) -> Result<PeerAuthentication, ConfigError> {
    let o = spec.obj()?;
    let selector = o.get("selector", |p| {
        let s = p.obj()?;
        let labels = s.get("matchLabels", crate::authz::label_map)?.unwrap_or_default();
        s.finish()?;
        Ok(labels)
    })?;
    let mode = o.get("mtls", setting)?.flatten();
    let ports = o
        .get("portLevelMtls", |p| {
            let mut out = Vec::new();
            for (k, v) in p.entries()? {
                let path = format!("{}.{k}", p.path());
                let port =
                    k.parse::<u16>().ok().filter(|n| *n != 0).ok_or_else(|| {
                        ConfigError::new(p.loc, path.clone(), format!("{k:?}: expected a port number"))
                    })?;
                out.push((port, setting(Param::new(v, p.loc, &path))?));
            }
            Ok(out)
        })?
        .unwrap_or_default();
    o.finish()?;
    Ok(PeerAuthentication { name, namespace, selector, mode, ports })
}

fn alpha_policy(name: String, namespace: String, mesh: bool, spec: Param<'_>) -> Result<AlphaPolicy, ConfigError> {
    let o = spec.obj()?;
    let targets = crate::authz::policy::each(&o, "targets", |p| {
        let t = p.obj()?;
        let name = t.require("name", |p| p.text())?;
        let ports = crate::authz::policy::each(&t, "ports", |p| {
            let port = p.obj()?;
            let number = port.get("number", |p| p.i64())?;
            let _ = port.raw("name");
            port.finish()?;
            Ok(number.and_then(|n| u16::try_from(n).ok()))
        })?;
        let _ = t.raw("labels");
        t.finish()?;
        Ok((name, ports.into_iter().flatten().collect()))
    })?;
    // `peers: [{mtls: {}}]` is STRICT (the enum's zero value); no mtls peer is plaintext.
    let peers = crate::authz::policy::each(&o, "peers", |p| {
        let peer = p.obj()?;
        let mode = peer.get("mtls", |p| {
            if p.is_null() {
                return Ok(Mode::Strict);
            }
            let m = p.obj()?;
            let mode = match m.get("mode", |p| p.text())?.as_deref() {
                None | Some("STRICT") => Mode::Strict,
                Some("PERMISSIVE") => Mode::Permissive,
                Some(other) => {
                    return Err(ConfigError::new(
                        m.loc(),
                        m.child_path("mode"),
                        format!("{other:?}: expected STRICT or PERMISSIVE"),
                    ));
                }
            };
            let _ = m.raw("allowTls");
            m.finish()?;
            Ok(mode)
        })?;
        let _ = peer.raw("jwt");
        peer.finish()?;
        Ok(mode)
    })?;
    let optional = o.get("peerIsOptional", |p| p.bool())?.unwrap_or(false);
    for k in ["origins", "originIsOptional", "principalBinding"] {
        let _ = o.raw(k);
    }
    o.finish()?;
    let mode = match peers.into_iter().flatten().next() {
        Some(Mode::Strict) if optional => Mode::Permissive,
        Some(mode) => mode,
        None => Mode::Disable,
    };
    Ok(AlphaPolicy { name, namespace, mesh, targets, mode })
}

/// The inbound modes of one workload, selected at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMtls {
    pub mode: Mode,
    pub ports: Vec<(u16, Mode)>,
    /// What decided (`PeerAuthentication ns/name`), for the admin page and logs.
    pub decided_by: String,
}

impl Default for InboundMtls {
    fn default() -> Self {
        InboundMtls { mode: Mode::Permissive, ports: Vec::new(), decided_by: "default".into() }
    }
}

impl InboundMtls {
    /// The mode for traffic to `port` of the workload (`None`: the workload's own).
    pub fn mode_for(&self, port: Option<u16>) -> Mode {
        port.and_then(|p| self.ports.iter().find(|(n, _)| *n == p)).map_or(self.mode, |(_, m)| *m)
    }

    /// What applies to the workload with `labels` in `namespace`, backing `service` (its
    /// short name).
    pub fn for_workload(cfg: &MtlsConfig, namespace: &str, labels: &[(String, String)], service: &str) -> InboundMtls {
        if let Some(m) = Self::from_peer_authentications(cfg, namespace, labels) {
            return m;
        }
        Self::from_policies(cfg, namespace, service).unwrap_or_default()
    }

    fn from_peer_authentications(
        cfg: &MtlsConfig,
        namespace: &str,
        labels: &[(String, String)],
    ) -> Option<InboundMtls> {
        let all = &cfg.peer_authentications;
        let workload = all.iter().find(|p| {
            p.namespace == namespace && p.selector.as_ref().is_some_and(|s| s.iter().all(|kv| labels.contains(kv)))
        });
        let ns = all.iter().find(|p| p.namespace == namespace && p.selector.is_none());
        let mesh = all.iter().find(|p| p.namespace == ROOT_NAMESPACE && p.selector.is_none());
        let chain: Vec<&PeerAuthentication> = [workload, ns, mesh].into_iter().flatten().collect();
        let first = chain.first()?;
        let decider = chain.iter().find(|p| p.mode.is_some());
        let mode = decider.and_then(|p| p.mode).unwrap_or(Mode::Permissive);
        let ports =
            workload.map(|w| w.ports.iter().map(|(port, s)| (*port, s.unwrap_or(mode))).collect()).unwrap_or_default();
        let by = decider.unwrap_or(first);
        Some(InboundMtls { mode, ports, decided_by: format!("PeerAuthentication {}/{}", by.namespace, by.name) })
    }

    fn from_policies(cfg: &MtlsConfig, namespace: &str, service: &str) -> Option<InboundMtls> {
        let ns_policies = || cfg.policies.iter().filter(|p| !p.mesh && p.namespace == namespace);
        let decided = |p: &AlphaPolicy| format!("Policy {}/{}", p.namespace, p.name);
        let whole_ns = ns_policies().find(|p| p.targets.is_empty() && p.name == "default");
        let mesh = cfg.policies.iter().find(|p| p.mesh && p.name == "default");
        let base = whole_ns.or(mesh);
        let mut out = base.map(|p| InboundMtls { mode: p.mode, ports: Vec::new(), decided_by: decided(p) });
        for p in ns_policies() {
            for (_, ports) in p.targets.iter().filter(|(t, _)| t == service) {
                let m = out.get_or_insert_with(InboundMtls::default);
                if ports.is_empty() {
                    m.mode = p.mode;
                    m.decided_by = decided(p);
                } else {
                    m.ports.extend(ports.iter().map(|port| (*port, p.mode)));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> MtlsConfig {
        let (cfg, errors) = load_str("t.yaml", text, "default");
        assert!(errors.is_empty(), "{errors:?}");
        cfg
    }

    fn mode(cfg: &MtlsConfig, labels: &[(&str, &str)], port: Option<u16>) -> Mode {
        let labels: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        InboundMtls::for_workload(cfg, "default", &labels, "reviews").mode_for(port)
    }

    #[test]
    fn the_most_specific_peer_authentication_wins_and_unset_defers() {
        let cfg = load(
            r#"
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: UNSET}
  portLevelMtls: {"9080": {mode: DISABLE}, "9090": {}}
"#,
        );
        assert_eq!(mode(&cfg, &[("app", "ratings")], None), Mode::Permissive, "namespace over mesh");
        assert_eq!(mode(&cfg, &[("app", "reviews")], None), Mode::Permissive, "UNSET defers to the namespace");
        assert_eq!(mode(&cfg, &[("app", "reviews")], Some(9080)), Mode::Disable);
        assert_eq!(mode(&cfg, &[("app", "reviews")], Some(9090)), Mode::Permissive, "port UNSET: the workload's");
        let mesh_only = load(
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n",
        );
        assert_eq!(mode(&mesh_only, &[], None), Mode::Strict);
        assert_eq!(mode(&MtlsConfig::default(), &[], None), Mode::Permissive, "nothing: PERMISSIVE");
    }

    #[test]
    fn istio_1_4_policies_by_service_namespace_and_mesh() {
        let cfg = load(
            r#"
apiVersion: authentication.istio.io/v1alpha1
kind: MeshPolicy
metadata: {name: default}
spec: {peers: [{mtls: {}}]}
---
apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: ratings-permissive, namespace: default}
spec:
  targets: [{name: ratings}]
  peers: [{mtls: {mode: PERMISSIVE}}]
---
apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: reviews-port, namespace: default}
spec:
  targets: [{name: reviews, ports: [{number: 9080}]}]
"#,
        );
        let for_service = |s: &str, port| InboundMtls::for_workload(&cfg, "default", &[], s).mode_for(port);
        assert_eq!(for_service("productpage", None), Mode::Strict, "MeshPolicy: mtls {{}} is STRICT");
        assert_eq!(for_service("ratings", None), Mode::Permissive);
        assert_eq!(for_service("reviews", Some(9080)), Mode::Disable, "no peers: plaintext on that port");
        assert_eq!(for_service("reviews", Some(9081)), Mode::Strict);
    }

    #[test]
    fn a_peer_authentication_replaces_the_older_kind() {
        let cfg = load(
            r#"
apiVersion: authentication.istio.io/v1alpha1
kind: MeshPolicy
metadata: {name: default}
spec: {peers: [{mtls: {}}]}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: DISABLE}}
"#,
        );
        let m = InboundMtls::for_workload(&cfg, "default", &[], "reviews");
        assert_eq!((m.mode, m.decided_by.as_str()), (Mode::Disable, "PeerAuthentication default/default"));
    }

    #[test]
    fn bad_modes_and_ports_name_the_key() {
        let (_, errors) = load_str(
            "t.yaml",
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: x}\nspec: {mtls: {mode: STRICTLY}}\n",
            "default",
        );
        assert!(errors[0].to_string().contains("spec.mtls.mode"), "{}", errors[0]);
        let (_, errors) = load_str(
            "t.yaml",
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: x}\nspec: {portLevelMtls: {http: {mode: STRICT}}}\n",
            "default",
        );
        assert!(errors[0].to_string().contains("spec.portLevelMtls.http"), "{}", errors[0]);
    }
}
