//! The documents of an operator config, parsed but not yet compiled.

use yaml_serde::Value as Yaml;

use super::quota_spec::{QuotaSpec, QuotaSpecBinding};
use super::yaml::{ConfigError, Loc, Obj, Param, normalize_key};
use crate::templates::{Template, Variety};
use crate::value::ValueType;

/// Adapters that may appear as a document kind of their own (Istio 1.4's legacy form).
pub const LEGACY_ADAPTER_KINDS: &[&str] =
    &["denier", "listchecker", "memquota", "redisquota", "prometheus", "stdio", "noop", "kubernetesenv"];

/// Kinds the proxy reads; the server skips them so one directory can serve both.
const PROXY_KINDS: &[&str] = &[
    "VirtualService",
    "DestinationRule",
    "ServiceEntry",
    "Gateway",
    "Sidecar",
    "AuthorizationPolicy",
    "PeerAuthentication",
    "Policy",
    "MeshPolicy",
    "ClusterRbacConfig",
    "RbacConfig",
    "ServiceRole",
    "ServiceRoleBinding",
];

/// A reference to a handler or instance as written in a rule, resolved to its parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    pub name: String,
    /// `handler`/`instance`, a legacy adapter or template kind, or `None` for a short name.
    pub kind: Option<String>,
    pub namespace: String,
}

#[derive(Debug, Clone)]
pub struct HandlerDoc {
    pub loc: Loc,
    pub name: String,
    pub namespace: String,
    /// `handler`, or the adapter name for legacy documents.
    pub kind: String,
    pub adapter: String,
    pub params: Yaml,
    /// Path of `params` in the document, for error messages.
    pub params_path: String,
}

impl HandlerDoc {
    /// The name shown in denial messages: `name.namespace` for `kind: handler`,
    /// `name.kind.namespace` for legacy kinds (as Istio printed them).
    pub fn display_name(&self) -> String {
        if self.kind == "handler" {
            format!("{}.{}", self.name, self.namespace)
        } else {
            format!("{}.{}.{}", self.name, self.kind, self.namespace)
        }
    }

    pub fn params(&self) -> Param<'_> {
        Param::new(&self.params, &self.loc, &self.params_path)
    }
}

#[derive(Debug, Clone)]
pub struct InstanceDoc {
    pub loc: Loc,
    pub name: String,
    pub namespace: String,
    pub kind: String,
    pub template: Template,
    pub params: Yaml,
    pub params_path: String,
    /// `attributeBindings` of an attribute-generating instance: attribute name to an
    /// expression over the adapter's outputs (`$out.FIELD`), with its path.
    pub bindings: Vec<(String, String, String)>,
}

impl InstanceDoc {
    pub fn full_name(&self) -> String {
        format!("{}.{}.{}", self.name, self.kind, self.namespace)
    }
}

#[derive(Debug, Clone)]
pub struct ActionDoc {
    pub handler: ObjectRef,
    pub instances: Vec<ObjectRef>,
    pub name: Option<String>,
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderOpKind {
    Replace,
    Remove,
    Append,
}

#[derive(Debug, Clone)]
pub struct HeaderOpDoc {
    pub name: String,
    pub values: Vec<String>,
    pub operation: HeaderOpKind,
    pub path: String,
}

#[derive(Debug, Clone)]
pub struct RuleDoc {
    pub loc: Loc,
    pub name: String,
    pub namespace: String,
    pub match_expr: String,
    pub actions: Vec<ActionDoc>,
    pub request_header_operations: Vec<HeaderOpDoc>,
    pub response_header_operations: Vec<HeaderOpDoc>,
}

#[derive(Debug, Clone)]
pub struct ManifestDoc {
    pub loc: Loc,
    pub attributes: Vec<(String, ValueType, String)>,
}

/// Everything parsed from a set of files.
#[derive(Debug, Clone, Default)]
pub struct ConfigSet {
    /// Rules of this namespace apply to every request (`--default-namespace`).
    pub default_namespace: String,
    pub handlers: Vec<HandlerDoc>,
    pub instances: Vec<InstanceDoc>,
    pub rules: Vec<RuleDoc>,
    pub manifests: Vec<ManifestDoc>,
    pub quota_specs: Vec<QuotaSpec>,
    pub quota_spec_bindings: Vec<QuotaSpecBinding>,
}

/// Parses a reference: `name`, `name.kind`, `name.kind.namespace`; for new-style kinds
/// also `name.namespace`.
pub fn parse_ref(text: &str, referring_namespace: &str, kinds: &[&str]) -> ObjectRef {
    let parts: Vec<&str> = text.splitn(3, '.').collect();
    let is_kind = |k: &str| kinds.contains(&k);
    match parts.as_slice() {
        [name, kind, ns] if is_kind(kind) => {
            ObjectRef { name: name.to_string(), kind: Some(kind.to_string()), namespace: ns.to_string() }
        }
        [name, kind] if is_kind(kind) => ObjectRef {
            name: name.to_string(),
            kind: Some(kind.to_string()),
            namespace: referring_namespace.to_string(),
        },
        [name, ns] => ObjectRef { name: name.to_string(), kind: None, namespace: ns.to_string() },
        _ => ObjectRef { name: text.to_string(), kind: None, namespace: referring_namespace.to_string() },
    }
}

impl ConfigSet {
    /// Parses one document into the set. `spec` is the document's `spec`.
    pub(crate) fn add_document(
        &mut self,
        loc: &Loc,
        kind: &str,
        namespace: &str,
        spec: &Yaml,
    ) -> Result<(), ConfigError> {
        let spec = Param::new(spec, loc, "spec");
        let name = loc.name.clone();
        if kind == "handler" {
            let o = spec.obj()?;
            let adapter = match o.get("compiledAdapter", |p| p.text())? {
                Some(a) => a,
                None => o.require("adapter", |p| p.text())?,
            };
            if o.raw("connection").is_some() {
                return Err(ConfigError::new(
                    loc,
                    o.child_path("connection"),
                    "out-of-process adapters are not supported; use a compiledAdapter",
                ));
            }
            let (params, params_path) =
                o.raw("params").map(|(v, p)| (v.clone(), p)).unwrap_or((Yaml::Null, "spec.params".into()));
            o.finish()?;
            self.handlers.push(HandlerDoc {
                loc: loc.clone(),
                name,
                namespace: namespace.to_string(),
                kind: kind.to_string(),
                adapter,
                params,
                params_path,
            });
        } else if LEGACY_ADAPTER_KINDS.contains(&kind) {
            spec.obj()?;
            self.handlers.push(HandlerDoc {
                loc: loc.clone(),
                name,
                namespace: namespace.to_string(),
                kind: kind.to_string(),
                adapter: kind.to_string(),
                params: spec.value.clone(),
                params_path: "spec".into(),
            });
        } else if kind == "instance" {
            let o = spec.obj()?;
            let template_name = match o.get("compiledTemplate", |p| p.text())? {
                Some(t) => t,
                None => o.require("template", |p| p.text())?,
            };
            let template = Template::parse(&template_name).ok_or_else(|| {
                ConfigError::new(loc, o.child_path("compiledTemplate"), format!("unknown template {template_name:?}"))
            })?;
            let bindings = match o.raw("attributeBindings") {
                Some((v, path)) => bindings(loc, template, Param::new(v, loc, &path))?,
                None => Vec::new(),
            };
            let (params, params_path) =
                o.raw("params").map(|(v, p)| (v.clone(), p)).unwrap_or((Yaml::Null, "spec.params".into()));
            o.finish()?;
            self.instances.push(InstanceDoc {
                loc: loc.clone(),
                name,
                namespace: namespace.to_string(),
                kind: kind.to_string(),
                template,
                params,
                params_path,
                bindings,
            });
        } else if let Some(template) = Template::parse(kind) {
            spec.obj()?;
            // The legacy form keeps the bindings among the params.
            let mut params = spec.value.clone();
            let mut bound = Vec::new();
            if let Yaml::Mapping(m) = &mut params {
                let key =
                    m.keys().find(|k| k.as_str().is_some_and(|k| normalize_key(k) == "attributebindings")).cloned();
                if let Some(key) = key {
                    let path = format!("spec.{}", key.as_str().unwrap_or_default());
                    let value = m.remove(&key).unwrap_or(Yaml::Null);
                    bound = bindings(loc, template, Param::new(&value, loc, &path))?;
                }
            }
            self.instances.push(InstanceDoc {
                loc: loc.clone(),
                name,
                namespace: namespace.to_string(),
                kind: kind.to_string(),
                template,
                params,
                params_path: "spec".into(),
                bindings: bound,
            });
        } else if kind == "rule" {
            let rule = parse_rule(loc, namespace, spec.obj()?)?;
            self.rules.push(rule);
        } else if kind == "attributemanifest" {
            self.manifests.push(parse_manifest(loc, spec.obj()?)?);
        } else if kind == "QuotaSpec" {
            self.quota_specs.push(QuotaSpec::parse(loc, namespace, spec)?);
        } else if kind == "QuotaSpecBinding" {
            self.quota_spec_bindings.push(QuotaSpecBinding::parse(loc, namespace, spec)?);
        } else if PROXY_KINDS.contains(&kind) {
            // Traffic config for the proxy; not ours.
        } else {
            return Err(ConfigError::new(loc, "kind", format!("unknown kind {kind:?}")));
        }
        Ok(())
    }
}

/// Reads `attributeBindings`: only attribute-generating templates produce attributes.
fn bindings(loc: &Loc, template: Template, p: Param<'_>) -> Result<Vec<(String, String, String)>, ConfigError> {
    if template.variety() != Variety::AttributeGenerator {
        return Err(p.error(format!(
            "template {} produces no attributes; attributeBindings apply to attribute-generating templates (kubernetes)",
            template.name()
        )));
    }
    let mut out = Vec::new();
    for (attr, v) in p.entries()? {
        let path = format!("{}.{attr}", p.path());
        let text = Param::new(v, loc, &path).text()?;
        out.push((attr, text, path));
    }
    Ok(out)
}

const HANDLER_KINDS: &[&str] = &["handler"];
const INSTANCE_KINDS: &[&str] = &["instance"];

fn kinds_with(base: &[&'static str], extra: impl Iterator<Item = &'static str>) -> Vec<&'static str> {
    base.iter().copied().chain(extra).collect()
}

fn parse_rule(loc: &Loc, namespace: &str, o: Obj<'_>) -> Result<RuleDoc, ConfigError> {
    let handler_kinds = kinds_with(HANDLER_KINDS, LEGACY_ADAPTER_KINDS.iter().copied());
    let instance_kinds = kinds_with(INSTANCE_KINDS, Template::ALL.iter().map(|t| t.name()));
    let match_expr = o.get("match", |p| p.text())?.unwrap_or_default();
    let actions = o
        .get("actions", |p| {
            let mut actions = Vec::new();
            for (item, path) in p.list()? {
                let a = Param::new(&item, loc, &path).obj()?;
                let handler = a.require("handler", |p| p.str().map(str::to_string))?;
                let instances = a.get("instances", |p| p.string_list())?.unwrap_or_default();
                let name = a.get("name", |p| p.text())?;
                a.finish()?;
                actions.push(ActionDoc {
                    handler: parse_ref(&handler, namespace, &handler_kinds),
                    instances: instances.iter().map(|i| parse_ref(i, namespace, &instance_kinds)).collect(),
                    name,
                    path,
                });
            }
            Ok(actions)
        })?
        .unwrap_or_default();
    let request_header_operations = o.get("requestHeaderOperations", |p| header_ops(loc, p))?.unwrap_or_default();
    let response_header_operations = o.get("responseHeaderOperations", |p| header_ops(loc, p))?.unwrap_or_default();
    // Sampling (report rate limiting) is accepted and ignored: every report is dispatched.
    let _ = o.raw("sampling");
    o.finish()?;
    Ok(RuleDoc {
        loc: loc.clone(),
        name: loc.name.clone(),
        namespace: namespace.to_string(),
        match_expr,
        actions,
        request_header_operations,
        response_header_operations,
    })
}

fn header_ops(loc: &Loc, p: Param<'_>) -> Result<Vec<HeaderOpDoc>, ConfigError> {
    let mut ops = Vec::new();
    for (item, path) in p.list()? {
        let o = Param::new(&item, loc, &path).obj()?;
        let name = o.require("name", |p| p.text())?;
        let values = o.get("values", |p| p.string_list())?.unwrap_or_default();
        let operation = o
            .get("operation", |p| match p.text()?.as_str() {
                "REPLACE" => Ok(HeaderOpKind::Replace),
                "REMOVE" => Ok(HeaderOpKind::Remove),
                "APPEND" => Ok(HeaderOpKind::Append),
                other => Err(p.error(format!("unknown operation {other:?} (REPLACE, REMOVE or APPEND)"))),
            })?
            .unwrap_or(HeaderOpKind::Replace);
        o.finish()?;
        ops.push(HeaderOpDoc { name, values, operation, path });
    }
    Ok(ops)
}

fn parse_manifest(loc: &Loc, o: Obj<'_>) -> Result<ManifestDoc, ConfigError> {
    let _ = o.raw("revision");
    let _ = o.raw("name");
    let attributes = o
        .get("attributes", |p| {
            let mut out = Vec::new();
            for (name, v) in p.entries()? {
                let path = format!("{}.{name}", p.path());
                let a = Param::new(v, loc, &path).obj()?;
                let ty = a.require("valueType", |p| {
                    let t = p.text()?;
                    ValueType::parse(&t).ok_or_else(|| p.error(format!("unknown value type {t:?}")))
                })?;
                let description = a.get("description", |p| p.text())?.unwrap_or_default();
                a.finish()?;
                out.push((name, ty, path));
                let _ = description;
            }
            Ok(out)
        })?
        .unwrap_or_default();
    o.finish()?;
    Ok(ManifestDoc { loc: loc.clone(), attributes })
}
