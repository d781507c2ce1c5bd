//! Compiling a [`ConfigSet`] into a [`Snapshot`]: resolve references, type-check every
//! expression, reject what cannot work. All errors are collected.

use std::collections::HashMap;
use std::sync::Arc;

use super::index::ScopedIndex;
use super::instance::CompiledInstance;
use super::{CompiledAction, CompiledHeaderOp, CompiledRule, Snapshot};
use crate::config::model::{ConfigSet, HandlerDoc, HeaderOpDoc, InstanceDoc, ObjectRef};
use crate::config::yaml::{ConfigError, Loc, Param};
use crate::expr::{CompileOptions, Program, compile};
use crate::manifest::Manifest;
use crate::templates::{FieldKind, Template, Variety};
use crate::value::{Value, ValueType};

/// What the rules engine needs to know about adapters (implemented by the adapters crate).
pub trait AdapterCatalog {
    /// Templates the adapter serves; `None` if there is no such adapter.
    fn templates(&self, adapter: &str) -> Option<&'static [Template]>;
    /// Validates a handler's params without starting anything.
    fn check_params(&self, handler: &HandlerDoc) -> Result<(), ConfigError>;
    /// Validates the instances (full names) that rules send to a handler.
    fn check_instances(&self, _handler: &HandlerDoc, _instances: &[String]) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Compiles `config`; on failure returns every error found.
pub fn build(config: &ConfigSet, catalog: &dyn AdapterCatalog) -> Result<Snapshot, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let manifest = build_manifest(config, &mut errors);

    let mut handler_keys: HashMap<(String, String, String), usize> = HashMap::new();
    for (i, h) in config.handlers.iter().enumerate() {
        let key = (h.name.clone(), h.kind.clone(), h.namespace.clone());
        if let Some(&first) = handler_keys.get(&key) {
            errors.push(duplicate(&h.loc, &config.handlers[first].loc));
            continue;
        }
        handler_keys.insert(key, i);
        match catalog.templates(&h.adapter) {
            None => errors.push(ConfigError::new(
                &h.loc,
                if h.kind == "handler" { "spec.compiledAdapter" } else { "kind" },
                format!("unknown adapter {:?}", h.adapter),
            )),
            Some(_) => {
                if let Err(e) = catalog.check_params(h) {
                    errors.push(e);
                }
            }
        }
    }

    let mut instance_keys: HashMap<(String, String, String), usize> = HashMap::new();
    let mut instances = Vec::new();
    for doc in &config.instances {
        let key = (doc.name.clone(), doc.kind.clone(), doc.namespace.clone());
        if let Some(&first) = instance_keys.get(&key) {
            errors.push(duplicate(&doc.loc, &config.instances[first].loc));
            continue;
        }
        match compile_instance(doc, &manifest) {
            Ok(ci) => {
                instance_keys.insert(key, instances.len());
                instances.push(ci);
            }
            Err(e) => errors.push(e),
        }
    }

    let mut rule_names = HashMap::new();
    let mut rules = Vec::new();
    for doc in &config.rules {
        if let Some(first) = rule_names.insert((doc.name.clone(), doc.namespace.clone()), doc.loc.clone()) {
            errors.push(duplicate(&doc.loc, &first));
            continue;
        }
        let matcher = if doc.match_expr.trim().is_empty() {
            Program::constant(Value::Bool(true), ValueType::Bool)
        } else {
            match compile(&doc.match_expr, Some(ValueType::Bool), CompileOptions::new(&manifest)) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(ConfigError::new(&doc.loc, "spec.match", format!("{:?} {e}", doc.match_expr)));
                    continue;
                }
            }
        };
        let mut actions = Vec::new();
        let mut action_names = Vec::new();
        let mut ok = true;
        for a in &doc.actions {
            let handler = resolve(&a.handler, "handler", &handler_keys);
            let Some(h) = handler else {
                errors.push(ConfigError::new(
                    &doc.loc,
                    format!("{}.handler", a.path),
                    format!("unknown handler {}", describe_ref(&a.handler)),
                ));
                ok = false;
                continue;
            };
            let served = catalog.templates(&config.handlers[h].adapter).unwrap_or(&[]);
            let mut ids = Vec::new();
            for (j, r) in a.instances.iter().enumerate() {
                let path = format!("{}.instances[{j}]", a.path);
                let Some(idx) = resolve(r, "instance", &instance_keys) else {
                    errors.push(ConfigError::new(&doc.loc, path, format!("unknown instance {}", describe_ref(r))));
                    ok = false;
                    continue;
                };
                let template = instances[idx].template;
                if !served.contains(&template) {
                    errors.push(ConfigError::new(
                        &doc.loc,
                        path,
                        format!(
                            "handler {} (adapter {}) cannot serve template {} of instance {}",
                            config.handlers[h].display_name(),
                            config.handlers[h].adapter,
                            template.name(),
                            instances[idx].full_name
                        ),
                    ));
                    ok = false;
                    continue;
                }
                ids.push(idx);
            }
            if let Some(n) = &a.name {
                if action_names.contains(n) {
                    errors.push(ConfigError::new(
                        &doc.loc,
                        format!("{}.name", a.path),
                        format!("duplicate action name {n:?}"),
                    ));
                    ok = false;
                }
                action_names.push(n.clone());
            }
            actions.push(CompiledAction { handler: h, instances: ids, name: a.name.clone() });
        }
        let request_ops = header_ops(&doc.loc, &doc.request_header_operations, &manifest, &action_names, &mut errors);
        let response_ops = header_ops(&doc.loc, &doc.response_header_operations, &manifest, &action_names, &mut errors);
        let (Some(request_ops), Some(response_ops)) = (request_ops, response_ops) else {
            continue;
        };
        if ok {
            rules.push(CompiledRule {
                name: format!("{}.rule.{}", doc.name, doc.namespace),
                namespace: doc.namespace.clone(),
                matcher,
                actions,
                request_header_operations: request_ops,
                response_header_operations: response_ops,
            });
        }
    }

    // Which instances each handler receives, for adapters that must know them up front.
    let mut bound: Vec<Vec<String>> = vec![Vec::new(); config.handlers.len()];
    for rule in &rules {
        for a in &rule.actions {
            for &i in &a.instances {
                if !bound[a.handler].contains(&instances[i].full_name) {
                    bound[a.handler].push(instances[i].full_name.clone());
                }
            }
        }
    }
    for (h, names) in bound.iter().enumerate() {
        if !names.is_empty()
            && let Err(e) = catalog.check_instances(&config.handlers[h], names)
        {
            errors.push(e);
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    // Attribute generation runs first, over its own rules; a rule that also has other
    // actions takes part in both.
    let generates = |r: &CompiledRule| {
        r.actions
            .iter()
            .flat_map(|a| &a.instances)
            .any(|&i| instances[i].template.variety() == Variety::AttributeGenerator)
    };
    let dispatches = |r: &CompiledRule| {
        !generates(r)
            || r.actions
                .iter()
                .flat_map(|a| &a.instances)
                .any(|&i| instances[i].template.variety() != Variety::AttributeGenerator)
    };
    let default_namespace = config.default_namespace.clone();
    let scoped = |keep: &dyn Fn(&CompiledRule) -> bool| {
        ScopedIndex::build(
            rules.iter().enumerate().filter(|(_, r)| keep(r)).map(|(i, r)| (i, r.namespace.as_str(), &r.matcher)),
            &default_namespace,
        )
    };
    let index = scoped(&dispatches);
    let generator_index = scoped(&generates);
    Ok(Snapshot {
        manifest,
        default_namespace,
        handlers: config.handlers.clone(),
        instances,
        rules,
        quota_specs: config.quota_specs.clone(),
        quota_spec_bindings: config.quota_spec_bindings.clone(),
        index,
        generator_index,
    })
}

fn duplicate(loc: &Loc, first: &Loc) -> ConfigError {
    ConfigError::new(
        loc,
        "metadata.name",
        format!("duplicate name: {} {} is already defined at {first}", loc.kind, loc.name),
    )
}

fn describe_ref(r: &ObjectRef) -> String {
    match &r.kind {
        Some(k) => format!("{}.{}.{}", r.name, k, r.namespace),
        None => format!("{}.{}", r.name, r.namespace),
    }
}

/// Finds a handler or instance. A short name means the new-style kind in the referring
/// namespace, or failing that the one legacy document of that name there.
fn resolve(r: &ObjectRef, new_kind: &str, keys: &HashMap<(String, String, String), usize>) -> Option<usize> {
    if let Some(kind) = &r.kind {
        return keys.get(&(r.name.clone(), kind.clone(), r.namespace.clone())).copied();
    }
    if let Some(&i) = keys.get(&(r.name.clone(), new_kind.to_string(), r.namespace.clone())) {
        return Some(i);
    }
    let mut found = keys.iter().filter(|((n, _, ns), _)| *n == r.name && *ns == r.namespace).map(|(_, &i)| i);
    match (found.next(), found.next()) {
        (Some(i), None) => Some(i),
        _ => None,
    }
}

fn build_manifest(config: &ConfigSet, errors: &mut Vec<ConfigError>) -> Manifest {
    let mut manifest = Manifest::builtin();
    let mut declared_by: HashMap<String, Loc> = HashMap::new();
    for doc in &config.manifests {
        for (name, ty, path) in &doc.attributes {
            if let Some(old) = manifest.declare(name, *ty) {
                let where_ =
                    declared_by.get(name).map(|l| l.to_string()).unwrap_or_else(|| "the built-in vocabulary".into());
                errors.push(ConfigError::new(
                    &doc.loc,
                    path,
                    format!("attribute {name} is declared as {ty} here but as {old} in {where_}"),
                ));
            }
            declared_by.insert(name.clone(), doc.loc.clone());
        }
    }
    manifest
}

fn compile_instance(doc: &InstanceDoc, manifest: &Manifest) -> Result<CompiledInstance, ConfigError> {
    let params = Param::new(&doc.params, &doc.loc, &doc.params_path);
    let o = params.obj()?;
    let compile_at = |text: &str, ty: Option<ValueType>, path: &str| {
        compile(text, ty, CompileOptions::new(manifest))
            .map_err(|e| ConfigError::new(&doc.loc, path, format!("{text:?} {e}")))
    };
    let mut fields = Vec::new();
    let mut maps = Vec::new();
    for field in doc.template.fields() {
        match field.kind {
            FieldKind::Expr(ty) => {
                if let Some((text, path)) = o.get(field.name, |p| Ok((p.text()?, p.path().to_string())))? {
                    fields.push((field.name, compile_at(&text, ty, &path)?));
                }
            }
            FieldKind::Map(ty) => {
                let entries = o.get(field.name, |p| {
                    let mut out = Vec::new();
                    for (key, v) in p.entries()? {
                        let path = format!("{}.{key}", p.path());
                        let text = Param::new(v, &doc.loc, &path).text()?;
                        out.push((key, text, path));
                    }
                    Ok(out)
                })?;
                if let Some(entries) = entries {
                    let mut compiled = Vec::new();
                    for (key, text, path) in entries {
                        compiled.push((key, compile_at(&text, ty, &path)?));
                    }
                    maps.push((field.name, compiled));
                }
            }
        }
    }
    o.finish()?;
    let bindings = compile_bindings(doc, manifest)?;
    Ok(CompiledInstance {
        name: doc.name.clone(),
        full_name: doc.full_name(),
        template: doc.template,
        fields,
        maps,
        bindings,
    })
}

/// Each binding fills a declared attribute with a value of its type, from `$out` fields.
fn compile_bindings(doc: &InstanceDoc, manifest: &Manifest) -> Result<Vec<(Arc<str>, Program)>, ConfigError> {
    let opts = CompileOptions { generated: doc.template.outputs(), ..CompileOptions::new(manifest) };
    let mut out = Vec::with_capacity(doc.bindings.len());
    for (attr, text, path) in &doc.bindings {
        let Some(ty) = manifest.type_of(attr) else {
            return Err(ConfigError::new(
                &doc.loc,
                path,
                format!("unknown attribute {attr} (declare it in an attributemanifest)"),
            ));
        };
        let program =
            compile(text, Some(ty), opts).map_err(|e| ConfigError::new(&doc.loc, path, format!("{text:?} {e}")))?;
        out.push((Arc::from(attr.as_str()), program));
    }
    Ok(out)
}

fn header_ops(
    loc: &Loc,
    ops: &[HeaderOpDoc],
    manifest: &Manifest,
    actions: &[String],
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<CompiledHeaderOp>> {
    let opts = CompileOptions { actions, ..CompileOptions::new(manifest) };
    let mut out = Vec::new();
    let mut ok = true;
    for op in ops {
        let mut values = Vec::new();
        for (i, text) in op.values.iter().enumerate() {
            match compile(text, Some(ValueType::String), opts) {
                Ok(p) => values.push(p),
                Err(e) => {
                    errors.push(ConfigError::new(loc, format!("{}.values[{i}]", op.path), format!("{text:?} {e}")));
                    ok = false;
                }
            }
        }
        out.push(CompiledHeaderOp { name: op.name.clone(), values, operation: op.operation });
    }
    ok.then_some(out)
}
