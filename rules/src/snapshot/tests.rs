//! Config loading and compilation: good configs, and bad ones with their exact messages.

use super::*;
use crate::bag::Bag;
use crate::config::{ConfigError, HandlerDoc, load_str};
use crate::templates::Template;
use crate::value::{MapVal, StringMap, Value};

/// A catalog with the shapes of the real adapters, without depending on them.
struct Catalog;

impl AdapterCatalog for Catalog {
    fn templates(&self, adapter: &str) -> Option<&'static [Template]> {
        match adapter {
            "denier" => Some(&[Template::CheckNothing, Template::ListEntry, Template::Quota]),
            "listchecker" => Some(&[Template::ListEntry]),
            "prometheus" => Some(&[Template::Metric]),
            _ => None,
        }
    }

    fn check_params(&self, h: &HandlerDoc) -> Result<(), ConfigError> {
        if h.adapter == "listchecker" {
            let o = h.params().obj()?;
            o.get("overrides", |p| p.string_list())?;
            o.get("blacklist", |p| p.bool())?;
            o.finish()?;
        }
        Ok(())
    }
}

const HEADER: &str = "apiVersion: config.istio.io/v1alpha2\n";

fn doc(kind: &str, name: &str, spec: &str) -> String {
    format!("{HEADER}kind: {kind}\nmetadata:\n  name: {name}\nspec:\n{spec}\n---\n")
}

fn base() -> String {
    doc("handler", "deny", "  compiledAdapter: denier\n  params: {}")
        + &doc("instance", "nothing", "  compiledTemplate: checknothing")
        + &doc("handler", "list", "  compiledAdapter: listchecker\n  params:\n    overrides: [a]")
        + &doc(
            "instance",
            "user",
            "  compiledTemplate: listentry\n  params:\n    value: request.headers[\"user\"] | \"\"",
        )
}

fn compile_text(text: &str) -> Result<Snapshot, Vec<ConfigError>> {
    let (set, mut errors) = load_str("test.yaml", text, "istio-system");
    match build(&set, &Catalog) {
        Ok(s) if errors.is_empty() => Ok(s),
        Ok(_) => Err(errors),
        Err(more) => {
            errors.extend(more);
            Err(errors)
        }
    }
}

fn errors(text: &str) -> Vec<String> {
    match compile_text(text) {
        Ok(_) => panic!("config should have been rejected:\n{text}"),
        Err(errs) => errs.iter().map(ToString::to_string).collect(),
    }
}

fn one_error(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e[0].clone()
}

#[test]
fn good_config_compiles_with_all_reference_forms() {
    let text = base()
        + &doc(
            "rule",
            "r1",
            "  match: request.method == \"GET\"\n  actions:\n  - handler: deny\n    instances: [nothing]\n  - handler: list.handler.istio-system\n    instances: [user.instance.istio-system]",
        )
        + &doc("denier", "legacy", "  status: {code: 7}")
        + &doc("checknothing", "legacynothing", "  {}")
        + &doc("rule", "r2", "  actions:\n  - handler: legacy.denier\n    instances: [legacynothing.checknothing]")
        + &doc("attributemanifest", "extra", "  attributes:\n    custom.flag:\n      valueType: BOOL")
        + &doc("rule", "r3", "  match: custom.flag\n  actions: []");
    let s = compile_text(&text).unwrap();
    assert_eq!(s.rules.len(), 3);
    assert_eq!(s.handlers[s.rules[1].actions[0].handler].display_name(), "legacy.denier.istio-system");
    assert!(s.rules[1].matcher.is_always_true());
}

#[test]
fn bad_configs_are_rejected_with_file_document_and_key() {
    let cases: Vec<(String, &str)> = vec![
        // 1. YAML syntax.
        ("kind: [unclosed\n".into(), "test.yaml: document 1: -: invalid YAML"),
        // 2. missing kind.
        (
            format!("{HEADER}metadata: {{name: x}}\nspec: {{}}\n"),
            "test.yaml: document 1: kind: required field is missing",
        ),
        // 3. unknown kind.
        (doc("gizmo", "g", "  {}"), "test.yaml: document 1 (gizmo g): kind: unknown kind \"gizmo\""),
        // 4. unknown adapter.
        (
            doc("handler", "h", "  compiledAdapter: nosuch"),
            "test.yaml: document 1 (handler h): spec.compiledAdapter: unknown adapter \"nosuch\"",
        ),
        // 5. unknown template.
        (
            doc("instance", "i", "  compiledTemplate: nosuch"),
            "test.yaml: document 1 (instance i): spec.compiledTemplate: unknown template \"nosuch\"",
        ),
        // 6. unknown key in a rule.
        (doc("rule", "r", "  matches: \"true\""), "test.yaml: document 1 (rule r): spec.matches: unknown field"),
        // 7. unknown handler reference.
        (
            base() + &doc("rule", "r", "  actions:\n  - handler: nope\n    instances: [nothing]"),
            "test.yaml: document 5 (rule r): spec.actions[0].handler: unknown handler nope.istio-system",
        ),
        // 8. unknown instance reference.
        (
            base() + &doc("rule", "r", "  actions:\n  - handler: deny\n    instances: [ghost]"),
            "test.yaml: document 5 (rule r): spec.actions[0].instances[0]: unknown instance ghost.istio-system",
        ),
        // 9. template the adapter cannot serve.
        (
            base() + &doc("rule", "r", "  actions:\n  - handler: list\n    instances: [nothing]"),
            "test.yaml: document 5 (rule r): spec.actions[0].instances[0]: handler list.istio-system (adapter listchecker) cannot serve template checknothing of instance nothing.instance.istio-system",
        ),
        // 10. duplicate names.
        (
            base() + &doc("handler", "deny", "  compiledAdapter: denier"),
            "test.yaml: document 5 (handler deny): metadata.name: duplicate name: handler deny is already defined at test.yaml: document 1 (handler deny)",
        ),
        // 11. match of the wrong type.
        (
            doc("rule", "r", "  match: request.size"),
            "test.yaml: document 1 (rule r): spec.match: \"request.size\" at position 0: expression has type INT64, expected BOOL",
        ),
        // 12. unknown attribute in a match, with its position.
        (
            doc("rule", "r", "  match: request.method == \"GET\" && no.such == \"x\""),
            "test.yaml: document 1 (rule r): spec.match: \"request.method == \\\"GET\\\" && no.such == \\\"x\\\"\" at position 27: unknown attribute no.such (declare it in an attributemanifest)",
        ),
        // 13. bad expression in an instance field.
        (
            doc("instance", "i", "  compiledTemplate: listentry\n  params:\n    value: request.path =="),
            "test.yaml: document 1 (instance i): spec.params.value: \"request.path ==\" at position 15: unexpected end of expression",
        ),
        // 14. unknown field for a template.
        (
            doc("instance", "i", "  compiledTemplate: listentry\n  params:\n    valu: request.path"),
            "test.yaml: document 1 (instance i): spec.params.valu: unknown field",
        ),
        // 15. bad adapter params (validated by the catalog).
        (
            doc("handler", "h", "  compiledAdapter: listchecker\n  params:\n    blacklist: maybe"),
            "test.yaml: document 1 (handler h): spec.params.blacklist: expected true or false, found a string",
        ),
        // 16. conflicting attribute declaration.
        (
            doc("attributemanifest", "m", "  attributes:\n    request.size:\n      valueType: STRING"),
            "test.yaml: document 1 (attributemanifest m): spec.attributes.request.size: attribute request.size is declared as STRING here but as INT64 in the built-in vocabulary",
        ),
        // 17. bad header operation.
        (
            doc("rule", "r", "  requestHeaderOperations:\n  - name: x\n    values: [request.size]"),
            "test.yaml: document 1 (rule r): spec.requestHeaderOperations[0].values[0]: \"request.size\" at position 0: expression has type INT64, expected STRING",
        ),
        // 18. missing metadata name.
        (
            format!("{HEADER}kind: rule\nmetadata: {{namespace: x}}\nspec: {{}}\n"),
            "test.yaml: document 1: metadata.name: required field is missing",
        ),
    ];
    for (text, want) in &cases {
        let got = one_error(text);
        assert!(got.starts_with(want), "\n got: {got}\nwant: {want}");
    }
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let text = doc("handler", "a", "  compiledAdapter: nosuch")
        + &doc("rule", "r", "  match: nope.nope")
        + &doc("instance", "i", "  compiledTemplate: nosuch");
    assert_eq!(errors(&text).len(), 3);
}

fn bag_with(app: &str) -> Bag<'static> {
    Bag::from_pairs(vec![(
        "destination.labels",
        Value::StringMap(MapVal::from(StringMap::new(vec![("app".into(), app.to_string().into())]))),
    )])
}

#[test]
fn index_evaluates_only_rules_that_can_match() {
    let mut text = base();
    for i in 0..50 {
        text += &doc(
            "rule",
            &format!("r{i}"),
            &format!(
                "  match: destination.labels[\"app\"] == \"svc{i}\" && (request.headers[\"x\"] | \"\") == \"\"\n  actions:\n  - handler: deny\n    instances: [nothing]"
            ),
        );
    }
    text += &doc("rule", "catchall", "  match: (request.method | \"GET\") == \"GET\" || true\n  actions: []");
    let s = compile_text(&text).unwrap();
    assert_eq!(s.rules.len(), 51);
    assert_eq!(s.index.indexed_keys(), 1);
    assert_eq!(s.index.unindexed_rules(), 1);
    let bag = bag_with("svc7");
    assert_eq!(s.candidate_count(&bag), 2, "the svc7 rule and the unindexed one");
    let mut refs = crate::bag::Referenced::new();
    let m = s.matching_rules(&bag, &mut refs);
    assert_eq!(m.rules, vec![7, 50]);
    let none = bag_with("other");
    let mut refs = crate::bag::Referenced::new();
    assert_eq!(s.matching_rules(&none, &mut refs).rules, vec![50]);
}
