//! Istio 1.4's `rbac.istio.io/v1alpha1` kinds: ClusterRbacConfig (where RBAC is on),
//! ServiceRole (what may be done) and ServiceRoleBinding (who may do it).

use mixr_rules::config::{ConfigError, Obj, Param};

use super::Facts;
use super::matcher::{Blocks, Field, cidrs};
use super::policy::{Condition, Key, each};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Off,
    On,
    /// On only for these services and namespaces.
    OnWithInclusion {
        services: Field,
        namespaces: Vec<String>,
    },
    /// On except for these.
    OnWithExclusion {
        services: Field,
        namespaces: Vec<String>,
    },
}

#[derive(Debug, Clone)]
pub struct ClusterRbacConfig {
    pub mode: Mode,
    /// `enforcementMode: PERMISSIVE`: decisions are reported, never enforced.
    pub permissive: bool,
}

#[derive(Debug, Clone)]
pub struct ServiceRole {
    pub name: String,
    pub namespace: String,
    pub rules: Vec<AccessRule>,
}

#[derive(Debug, Clone, Default)]
pub struct AccessRule {
    pub services: Field,
    pub methods: Field,
    pub paths: Field,
    pub ports: Field,
    pub constraints: Vec<Condition>,
}

#[derive(Debug, Clone)]
pub struct ServiceRoleBinding {
    pub name: String,
    pub namespace: String,
    pub role: String,
    pub subjects: Vec<Subject>,
}

#[derive(Debug, Clone, Default)]
pub struct Subject {
    /// `user`: `*` is anyone, authenticated or not; else a principal.
    pub user: Option<String>,
    pub names: Field,
    pub namespaces: Field,
    pub ips: Blocks,
    pub properties: Vec<Condition>,
}

fn field(o: &Obj<'_>, key: &str, not_key: &str) -> Result<Field, ConfigError> {
    Ok(Field::new(o.get(key, |p| p.string_list())?, o.get(not_key, |p| p.string_list())?))
}

fn scope(o: &Obj<'_>, key: &str) -> Result<(Field, Vec<String>), ConfigError> {
    let found = o.get(key, |p| {
        let o = p.obj()?;
        let services = Field::new(o.get("services", |p| p.string_list())?, None);
        let namespaces = o.get("namespaces", |p| p.string_list())?.unwrap_or_default();
        o.finish()?;
        Ok((services, namespaces))
    })?;
    Ok(found.unwrap_or((Field { values: Some(Vec::new()), not_values: Vec::new() }, Vec::new())))
}

impl ClusterRbacConfig {
    pub fn parse(spec: Param<'_>) -> Result<ClusterRbacConfig, ConfigError> {
        let o = spec.obj()?;
        let mode_text = o.get("mode", |p| p.text())?.unwrap_or_else(|| "OFF".into());
        let mode = match mode_text.as_str() {
            "OFF" => Mode::Off,
            "ON" => Mode::On,
            "ON_WITH_INCLUSION" => {
                let (services, namespaces) = scope(&o, "inclusion")?;
                Mode::OnWithInclusion { services, namespaces }
            }
            "ON_WITH_EXCLUSION" => {
                let (services, namespaces) = scope(&o, "exclusion")?;
                Mode::OnWithExclusion { services, namespaces }
            }
            other => {
                return Err(ConfigError::new(
                    o.loc(),
                    o.child_path("mode"),
                    format!("{other:?}: expected OFF, ON, ON_WITH_INCLUSION or ON_WITH_EXCLUSION"),
                ));
            }
        };
        let _ = o.raw("inclusion");
        let _ = o.raw("exclusion");
        let permissive = match o.get("enforcementMode", |p| p.text())?.as_deref() {
            None | Some("ENFORCED") => false,
            Some("PERMISSIVE") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    o.loc(),
                    o.child_path("enforcementMode"),
                    format!("{other:?}: expected ENFORCED or PERMISSIVE"),
                ));
            }
        };
        o.finish()?;
        Ok(ClusterRbacConfig { mode, permissive })
    }

    /// Whether RBAC applies to `service` (its FQDN) in `namespace`.
    pub fn covers(&self, service: &str, namespace: &str) -> bool {
        match &self.mode {
            Mode::Off => false,
            Mode::On => true,
            Mode::OnWithInclusion { services, namespaces } => {
                namespaces.iter().any(|n| n == namespace) || services.values.is_some() && services.holds(Some(service))
            }
            Mode::OnWithExclusion { services, namespaces } => {
                !(namespaces.iter().any(|n| n == namespace)
                    || services.values.is_some() && services.holds(Some(service)))
            }
        }
    }
}

impl ServiceRole {
    pub fn parse(name: String, namespace: String, spec: Param<'_>) -> Result<ServiceRole, ConfigError> {
        let o = spec.obj()?;
        let rules = each(&o, "rules", |p| {
            let o = p.obj()?;
            let rule = AccessRule {
                services: field(&o, "services", "notServices")?,
                methods: field(&o, "methods", "notMethods")?,
                paths: field(&o, "paths", "notPaths")?,
                ports: Field::new(
                    o.get("ports", |p| p.list().map(|l| l.iter().map(|(v, _)| yaml_scalar(v)).collect()))?,
                    o.get("notPorts", |p| p.list().map(|l| l.iter().map(|(v, _)| yaml_scalar(v)).collect()))?,
                ),
                constraints: each(&o, "constraints", Condition::parse)?,
            };
            o.finish()?;
            Ok(rule)
        })?;
        o.finish()?;
        Ok(ServiceRole { name, namespace, rules })
    }

    fn allows(&self, service: &str, facts: &Facts<'_>) -> bool {
        self.rules.iter().any(|r| {
            r.services.holds(Some(service))
                && r.methods.holds(Some(facts.method))
                && r.paths.holds(Some(facts.path))
                && r.ports.holds(facts.port.map(|p| p.to_string()).as_deref())
                && r.constraints.iter().all(|c| c.holds(facts))
        })
    }
}

fn yaml_scalar(v: &yaml_serde::Value) -> String {
    match v {
        yaml_serde::Value::String(s) => s.clone(),
        yaml_serde::Value::Number(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

impl ServiceRoleBinding {
    pub fn parse(name: String, namespace: String, spec: Param<'_>) -> Result<ServiceRoleBinding, ConfigError> {
        let o = spec.obj()?;
        let role = o.require("roleRef", |p| {
            let o = p.obj()?;
            let kind = o.require("kind", |p| p.text())?;
            if kind != "ServiceRole" {
                return Err(p.error(format!("roleRef.kind {kind:?}: expected ServiceRole")));
            }
            let name = o.require("name", |p| p.text())?;
            o.finish()?;
            Ok(name)
        })?;
        let subjects = each(&o, "subjects", |p| {
            let o = p.obj()?;
            let properties = o
                .get("properties", |p| {
                    let mut out = Vec::new();
                    for (k, v) in p.entries()? {
                        let path = format!("{}.{k}", p.path());
                        let key = Key::parse(&k).ok_or_else(|| p.error(format!("unknown property {k:?}")))?;
                        let value = Param::new(v, p.loc, &path).text()?;
                        let (values, blocks) = if key == Key::SourceIp {
                            let b = super::matcher::Cidr::parse(&value)
                                .ok_or_else(|| p.error(format!("{value:?} is not an address or CIDR block")))?;
                            (Field::default(), Blocks { blocks: Some(vec![b]), not_blocks: Vec::new() })
                        } else {
                            (Field::new(Some(vec![value]), None), Blocks::default())
                        };
                        out.push(Condition { key, values, blocks });
                    }
                    Ok(out)
                })?
                .unwrap_or_default();
            let subject = Subject {
                user: o.get("user", |p| p.text())?,
                names: field(&o, "names", "notNames")?,
                namespaces: field(&o, "namespaces", "notNamespaces")?,
                ips: Blocks { blocks: o.get("ips", cidrs)?, not_blocks: o.get("notIps", cidrs)?.unwrap_or_default() },
                properties,
            };
            let _ = o.raw("group");
            o.finish()?;
            Ok(subject)
        })?;
        let _ = o.raw("mode");
        let _ = o.raw("actions");
        o.finish()?;
        Ok(ServiceRoleBinding { name, namespace, role, subjects })
    }

    fn binds(&self, facts: &Facts<'_>) -> bool {
        self.subjects.iter().any(|s| {
            let user = match s.user.as_deref() {
                None | Some("*") => true,
                Some(u) => facts.principal == Some(u),
            };
            user && s.names.holds(facts.principal)
                && s.namespaces.holds(facts.namespace)
                && s.ips.holds(facts.source_ip)
                && s.properties.iter().all(|c| c.holds(facts))
        })
    }
}

/// The RBAC of one namespace: its roles and bindings.
#[derive(Debug, Clone, Default)]
pub struct Rbac {
    pub roles: Vec<ServiceRole>,
    pub bindings: Vec<ServiceRoleBinding>,
}

impl Rbac {
    /// The binding that lets the request through, if any.
    pub fn allowing(&self, service: &str, facts: &Facts<'_>) -> Option<&ServiceRoleBinding> {
        self.bindings
            .iter()
            .find(|b| b.binds(facts) && self.roles.iter().any(|r| r.name == b.role && r.allows(service, facts)))
    }
}
