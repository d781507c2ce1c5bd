//! `security.istio.io/v1beta1` AuthorizationPolicy: parsed at load, matched per request.

use mixr_rules::config::{ConfigError, Obj, Param};

use super::matcher::{Blocks, Field, cidrs};
use super::{Facts, label_map};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone)]
pub struct AuthorizationPolicy {
    pub name: String,
    pub namespace: String,
    /// `selector.matchLabels`; none selects every workload of the namespace.
    pub selector: Option<Vec<(String, String)>>,
    pub action: Action,
    pub rules: Vec<Rule>,
}

/// `from` AND `to` AND `when`; an empty `from` or `to` imposes nothing.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default)]
pub struct Source {
    pub principals: Field,
    pub request_principals: Field,
    pub namespaces: Field,
    pub ip_blocks: Blocks,
}

#[derive(Debug, Clone, Default)]
pub struct Operation {
    pub hosts: Field,
    pub ports: Field,
    pub methods: Field,
    pub paths: Field,
}

/// What a `when` condition (or an RBAC constraint or property) reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Header(String),
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    RequestPrincipal,
    DestinationPort,
    DestinationLabel(String),
}

impl Key {
    /// The keys Istio 1.4 defines that a sidecar without JWT can read; `request.auth.*`
    /// is accepted and never present.
    pub fn parse(key: &str) -> Option<Key> {
        if let Some(name) = bracketed(key, "request.headers") {
            return Some(Key::Header(name.to_ascii_lowercase()));
        }
        if let Some(name) = bracketed(key, "destination.labels") {
            return Some(Key::DestinationLabel(name.to_string()));
        }
        Some(match key {
            "source.ip" => Key::SourceIp,
            "source.namespace" => Key::SourceNamespace,
            "source.principal" | "source.user" => Key::SourcePrincipal,
            "request.auth.principal" | "request.auth.audiences" | "request.auth.presenter" => Key::RequestPrincipal,
            "destination.port" => Key::DestinationPort,
            _ if bracketed(key, "request.auth.claims").is_some() => Key::RequestPrincipal,
            _ => return None,
        })
    }

    pub fn holds(&self, values: &Field, blocks: &Blocks, facts: &Facts<'_>) -> bool {
        match self {
            Key::SourceIp => blocks.holds(facts.source_ip),
            Key::Header(name) => values.holds(facts.header(name)),
            Key::SourceNamespace => values.holds(facts.namespace),
            Key::SourcePrincipal => values.holds(facts.principal),
            Key::RequestPrincipal => values.holds(None),
            Key::DestinationPort => values.holds(facts.port.map(|p| p.to_string()).as_deref()),
            Key::DestinationLabel(k) => {
                values.holds(facts.labels.iter().find(|(lk, _)| lk == k).map(|(_, v)| v.as_str()))
            }
        }
    }
}

fn bracketed<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
    key.strip_prefix(prefix)?.strip_prefix('[')?.strip_suffix(']').filter(|n| !n.is_empty())
}

#[derive(Debug, Clone)]
pub struct Condition {
    pub key: Key,
    pub values: Field,
    pub blocks: Blocks,
}

impl Condition {
    /// `{key, values, notValues}` at `p`.
    pub fn parse(p: Param<'_>) -> Result<Condition, ConfigError> {
        let o = p.obj()?;
        let key_text = o.require("key", |p| p.text())?;
        let key = Key::parse(&key_text)
            .ok_or_else(|| ConfigError::new(o.loc(), o.child_path("key"), format!("unknown key {key_text:?}")))?;
        let (values, blocks) = if key == Key::SourceIp {
            let blocks =
                Blocks { blocks: o.get("values", cidrs)?, not_blocks: o.get("notValues", cidrs)?.unwrap_or_default() };
            (Field::default(), blocks)
        } else {
            (
                Field::new(o.get("values", |p| p.string_list())?, o.get("notValues", |p| p.string_list())?),
                Blocks::default(),
            )
        };
        o.finish()?;
        Ok(Condition { key, values, blocks })
    }

    pub fn holds(&self, facts: &Facts<'_>) -> bool {
        self.key.holds(&self.values, &self.blocks, facts)
    }
}

impl AuthorizationPolicy {
    pub fn parse(name: String, namespace: String, spec: Param<'_>) -> Result<AuthorizationPolicy, ConfigError> {
        let o = spec.obj()?;
        let selector = o.get("selector", |p| {
            let s = p.obj()?;
            let labels = s.get("matchLabels", label_map)?.unwrap_or_default();
            s.finish()?;
            Ok(labels)
        })?;
        let action = match o.get("action", |p| p.text())?.as_deref() {
            None | Some("ALLOW") => Action::Allow,
            Some("DENY") => Action::Deny,
            Some(other) => {
                return Err(ConfigError::new(
                    o.loc(),
                    o.child_path("action"),
                    format!("{other:?}: expected ALLOW or DENY"),
                ));
            }
        };
        let rules = each(&o, "rules", rule)?;
        o.finish()?;
        Ok(AuthorizationPolicy { name, namespace, selector, action, rules })
    }

    /// Whether any rule matches. A policy without rules matches nothing (an ALLOW policy
    /// `spec: {}` thus denies everything its selector covers, as in Istio).
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        self.rules.iter().any(|r| {
            (r.from.is_empty() || r.from.iter().any(|s| s.matches(facts)))
                && (r.to.is_empty() || r.to.iter().any(|op| op.matches(facts)))
                && r.when.iter().all(|c| c.holds(facts))
        })
    }
}

impl Source {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        self.principals.holds(facts.principal)
            && self.request_principals.holds(None)
            && self.namespaces.holds(facts.namespace)
            && self.ip_blocks.holds(facts.source_ip)
    }
}

impl Operation {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        self.hosts.holds(Some(facts.host))
            && self.ports.holds(facts.port.map(|p| p.to_string()).as_deref())
            && self.methods.holds(Some(facts.method))
            && self.paths.holds(Some(facts.path))
    }
}

/// The list under `key`, each item parsed by `f`.
pub fn each<T>(o: &Obj<'_>, key: &str, f: fn(Param<'_>) -> Result<T, ConfigError>) -> Result<Vec<T>, ConfigError> {
    Ok(o.get(key, |p| {
        let mut out = Vec::new();
        for (v, path) in p.list()? {
            out.push(f(Param::new(&v, p.loc, &path))?);
        }
        Ok(out)
    })?
    .unwrap_or_default())
}

fn field(o: &Obj<'_>, key: &str, not_key: &str) -> Result<Field, ConfigError> {
    Ok(Field::new(o.get(key, |p| p.string_list())?, o.get(not_key, |p| p.string_list())?))
}

fn rule(p: Param<'_>) -> Result<Rule, ConfigError> {
    let o = p.obj()?;
    let from = each(&o, "from", |p| {
        let o = p.obj()?;
        let s = o.require("source", |p| {
            let o = p.obj()?;
            let source = Source {
                principals: field(&o, "principals", "notPrincipals")?,
                request_principals: field(&o, "requestPrincipals", "notRequestPrincipals")?,
                namespaces: field(&o, "namespaces", "notNamespaces")?,
                ip_blocks: Blocks {
                    blocks: o.get("ipBlocks", cidrs)?,
                    not_blocks: o.get("notIpBlocks", cidrs)?.unwrap_or_default(),
                },
            };
            o.finish()?;
            Ok(source)
        })?;
        o.finish()?;
        Ok(s)
    })?;
    let to = each(&o, "to", |p| {
        let o = p.obj()?;
        let op = o.require("operation", |p| {
            let o = p.obj()?;
            let op = Operation {
                hosts: field(&o, "hosts", "notHosts")?,
                ports: field(&o, "ports", "notPorts")?,
                methods: field(&o, "methods", "notMethods")?,
                paths: field(&o, "paths", "notPaths")?,
            };
            o.finish()?;
            Ok(op)
        })?;
        o.finish()?;
        Ok(op)
    })?;
    let when = each(&o, "when", Condition::parse)?;
    o.finish()?;
    Ok(Rule { from, to, when })
}
