//! QuotaSpec and QuotaSpecBinding: which quotas, with which charge, a proxy asks for in each
//! Check. Parsed here so the proxy and the server validate them the same way.

use super::yaml::{ConfigError, Loc, Param};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// One `clause`: attribute name to the match its value must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeMatch {
    pub clause: Vec<(String, StringMatch)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaCharge {
    pub quota: String,
    pub charge: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRule {
    /// OR of clauses; an empty list always matches.
    pub matches: Vec<AttributeMatch>,
    pub quotas: Vec<QuotaCharge>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaSpec {
    pub name: String,
    pub namespace: String,
    pub rules: Vec<QuotaRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedRef {
    pub name: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaSpecBinding {
    pub name: String,
    pub namespace: String,
    pub services: Vec<NamedRef>,
    pub quota_specs: Vec<NamedRef>,
}

fn named_refs(loc: &Loc, p: Param<'_>, default_ns: &str) -> Result<Vec<NamedRef>, ConfigError> {
    let mut out = Vec::new();
    for (item, path) in p.list()? {
        let o = Param::new(&item, loc, &path).obj()?;
        let name = o.require("name", |p| p.text())?;
        let namespace = o.get("namespace", |p| p.text())?.unwrap_or_else(|| default_ns.to_string());
        let _ = o.raw("service");
        let _ = o.raw("domain");
        o.finish()?;
        out.push(NamedRef { name, namespace });
    }
    Ok(out)
}

impl QuotaSpec {
    pub(crate) fn parse(loc: &Loc, namespace: &str, spec: Param<'_>) -> Result<QuotaSpec, ConfigError> {
        let o = spec.obj()?;
        let rules = o
            .get("rules", |p| {
                let mut rules = Vec::new();
                for (item, path) in p.list()? {
                    let r = Param::new(&item, loc, &path).obj()?;
                    let matches = r.get("match", |p| parse_matches(loc, p))?.unwrap_or_default();
                    let quotas = r.require("quotas", |p| {
                        let mut out = Vec::new();
                        for (q, qpath) in p.list()? {
                            let q = Param::new(&q, loc, &qpath).obj()?;
                            let quota = q.require("quota", |p| p.text())?;
                            let charge = q.get("charge", |p| p.i64())?.unwrap_or(1);
                            if charge < 0 {
                                return Err(ConfigError::new(
                                    loc,
                                    q.child_path("charge"),
                                    "charge must not be negative",
                                ));
                            }
                            q.finish()?;
                            out.push(QuotaCharge { quota, charge });
                        }
                        Ok(out)
                    })?;
                    r.finish()?;
                    rules.push(QuotaRule { matches, quotas });
                }
                Ok(rules)
            })?
            .unwrap_or_default();
        o.finish()?;
        Ok(QuotaSpec { name: loc.name.clone(), namespace: namespace.to_string(), rules })
    }
}

fn parse_matches(loc: &Loc, p: Param<'_>) -> Result<Vec<AttributeMatch>, ConfigError> {
    let mut out = Vec::new();
    for (item, path) in p.list()? {
        let m = Param::new(&item, loc, &path).obj()?;
        let clause = m.require("clause", |p| {
            let mut clause = Vec::new();
            for (attr, v) in p.entries()? {
                let cpath = format!("{}.{attr}", p.path());
                let c = Param::new(v, loc, &cpath).obj()?;
                let sm = if let Some(s) = c.get("exact", |p| p.text())? {
                    StringMatch::Exact(s)
                } else if let Some(s) = c.get("prefix", |p| p.text())? {
                    StringMatch::Prefix(s)
                } else if let Some(s) = c.get("regex", |p| p.text())? {
                    regex::Regex::new(&s)
                        .map_err(|e| ConfigError::new(loc, c.child_path("regex"), format!("invalid regex: {e}")))?;
                    StringMatch::Regex(s)
                } else {
                    return Err(ConfigError::new(loc, cpath.clone(), "needs one of exact, prefix or regex"));
                };
                c.finish()?;
                clause.push((attr, sm));
            }
            Ok(clause)
        })?;
        m.finish()?;
        out.push(AttributeMatch { clause });
    }
    Ok(out)
}

impl QuotaSpecBinding {
    pub(crate) fn parse(loc: &Loc, namespace: &str, spec: Param<'_>) -> Result<QuotaSpecBinding, ConfigError> {
        let o = spec.obj()?;
        let services = o.get("services", |p| named_refs(loc, p, namespace))?.unwrap_or_default();
        let quota_specs = o.get("quotaSpecs", |p| named_refs(loc, p, namespace))?.unwrap_or_default();
        o.finish()?;
        Ok(QuotaSpecBinding { name: loc.name.clone(), namespace: namespace.to_string(), services, quota_specs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    #[test]
    fn quota_spec_and_binding() {
        let text = "apiVersion: config.istio.io/v1alpha2\nkind: QuotaSpec\nmetadata: {name: request-count, namespace: default}\nspec:\n  rules:\n  - match:\n    - clause:\n        request.path: {prefix: /api}\n        request.method: {exact: GET}\n    quotas:\n    - {quota: requestcountquota, charge: 2}\n  - quotas:\n    - quota: other\n---\napiVersion: config.istio.io/v1alpha2\nkind: QuotaSpecBinding\nmetadata: {name: b, namespace: default}\nspec:\n  quotaSpecs: [{name: request-count}]\n  services: [{name: productpage, namespace: default}, {service: '*', name: all}]\n";
        let (set, errors) = load_str("q.yaml", text, "istio-system");
        assert!(errors.is_empty(), "{errors:?}");
        let spec = &set.quota_specs[0];
        assert_eq!((spec.name.as_str(), spec.namespace.as_str()), ("request-count", "default"));
        assert_eq!(spec.rules[0].quotas, vec![QuotaCharge { quota: "requestcountquota".into(), charge: 2 }]);
        assert!(spec.rules[0].matches[0].clause.contains(&("request.path".into(), StringMatch::Prefix("/api".into()))));
        assert_eq!(spec.rules[1].quotas[0].charge, 1, "charge defaults to 1");
        assert!(spec.rules[1].matches.is_empty());
        let b = &set.quota_spec_bindings[0];
        assert_eq!(b.quota_specs, vec![NamedRef { name: "request-count".into(), namespace: "default".into() }]);
        assert_eq!(b.services.len(), 2);

        let bad = "apiVersion: v1\nkind: QuotaSpec\nmetadata: {name: q}\nspec:\n  rules:\n  - match: [{clause: {request.path: {regex: '('}}}]\n    quotas: [{quota: a}]\n";
        let (_, errors) = load_str("q.yaml", bad, "istio-system");
        assert!(
            errors[0].to_string().contains("spec.rules[0].match[0].clause.request.path.regex: invalid regex"),
            "{}",
            errors[0]
        );
    }
}
