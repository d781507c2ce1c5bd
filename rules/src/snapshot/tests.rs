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
            "kubernetesenv" => Some(&[Template::Kubernetes]),
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
    let mut errors = match build(&set, &Catalog) {
        Ok(s) if errors.is_empty() => return Ok(s),
        Ok(_) => errors,
        Err(more) => {
            errors.extend(more);
            errors
        }
    };
    crate::config::add_lines_from(&mut errors, "test.yaml", text);
    Err(errors)
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
        ("kind: [unclosed\n".into(), "test.yaml:2: document 1: -: invalid YAML"),
        // 2. missing kind.
        (
            format!("{HEADER}metadata: {{name: x}}\nspec: {{}}\n"),
            "test.yaml:1: document 1: kind: required field is missing",
        ),
        // 3. unknown kind.
        (doc("gizmo", "g", "  {}"), "test.yaml:2: document 1 (gizmo g): kind: unknown kind \"gizmo\""),
        // 4. unknown adapter.
        (
            doc("handler", "h", "  compiledAdapter: nosuch"),
            "test.yaml:6: document 1 (handler h): spec.compiledAdapter: unknown adapter \"nosuch\"",
        ),
        // 5. unknown template.
        (
            doc("instance", "i", "  compiledTemplate: nosuch"),
            "test.yaml:6: document 1 (instance i): spec.compiledTemplate: unknown template \"nosuch\"",
        ),
        // 6. unknown key in a rule.
        (
            doc("rule", "r", "  matches: \"true\""),
            "test.yaml:6: document 1 (rule r): spec.matches: unknown key (did you mean match?)",
        ),
        // 7. unknown handler reference.
        (
            base() + &doc("rule", "r", "  actions:\n  - handler: nope\n    instances: [nothing]"),
            "test.yaml:40: document 5 (rule r): spec.actions[0].handler: unknown handler nope.istio-system",
        ),
        // 8. unknown instance reference.
        (
            base() + &doc("rule", "r", "  actions:\n  - handler: deny\n    instances: [ghost]"),
            "test.yaml:41: document 5 (rule r): spec.actions[0].instances[0]: unknown instance ghost.istio-system",
        ),
        // 9. template the adapter cannot serve.
        (
            base() + &doc("rule", "r", "  actions:\n  - handler: list\n    instances: [nothing]"),
            "test.yaml:41: document 5 (rule r): spec.actions[0].instances[0]: handler list.istio-system (adapter listchecker) cannot serve template checknothing of instance nothing.instance.istio-system",
        ),
        // 10. duplicate names.
        (
            base() + &doc("handler", "deny", "  compiledAdapter: denier"),
            "test.yaml:37: document 5 (handler deny): metadata.name: duplicate name: handler deny is already defined at test.yaml: document 1 (handler deny)",
        ),
        // 11. match of the wrong type.
        (
            doc("rule", "r", "  match: request.size"),
            "test.yaml:6: document 1 (rule r): spec.match: \"request.size\" at position 0: expression has type INT64, expected BOOL",
        ),
        // 12. unknown attribute in a match, with its position.
        (
            doc("rule", "r", "  match: request.method == \"GET\" && no.such == \"x\""),
            "test.yaml:6: document 1 (rule r): spec.match: \"request.method == \\\"GET\\\" && no.such == \\\"x\\\"\" at position 27: unknown attribute no.such (declare it in an attributemanifest)",
        ),
        // 13. bad expression in an instance field.
        (
            doc("instance", "i", "  compiledTemplate: listentry\n  params:\n    value: request.path =="),
            "test.yaml:8: document 1 (instance i): spec.params.value: \"request.path ==\" at position 15: unexpected end of expression",
        ),
        // 14. unknown field for a template.
        (
            doc("instance", "i", "  compiledTemplate: listentry\n  params:\n    valu: request.path"),
            "test.yaml:8: document 1 (instance i): spec.params.valu: unknown key (did you mean value?)",
        ),
        // 15. bad adapter params (validated by the catalog).
        (
            doc("handler", "h", "  compiledAdapter: listchecker\n  params:\n    blacklist: maybe"),
            "test.yaml:8: document 1 (handler h): spec.params.blacklist: expected true or false, found a string",
        ),
        // 16. conflicting attribute declaration.
        (
            doc("attributemanifest", "m", "  attributes:\n    request.size:\n      valueType: STRING"),
            "test.yaml:7: document 1 (attributemanifest m): spec.attributes.request.size: attribute request.size is declared as STRING here but as INT64 in the built-in vocabulary",
        ),
        // 17. bad header operation.
        (
            doc("rule", "r", "  requestHeaderOperations:\n  - name: x\n    values: [request.size]"),
            "test.yaml:8: document 1 (rule r): spec.requestHeaderOperations[0].values[0]: \"request.size\" at position 0: expression has type INT64, expected STRING",
        ),
        // 18. missing metadata name.
        (
            format!("{HEADER}kind: rule\nmetadata: {{namespace: x}}\nspec: {{}}\n"),
            "test.yaml:3: document 1: metadata.name: required field is missing",
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

/// What `kubectl get rules,handlers,instances -A -o yaml` prints: a `List` whose items
/// carry what the API server added.
const KUBECTL_DUMP: &str = r#"apiVersion: v1
items:
- apiVersion: config.istio.io/v1alpha2
  kind: handler
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"config.istio.io/v1alpha2","kind":"handler"}
    creationTimestamp: "2026-11-30T10:00:00Z"
    generation: 1
    managedFields:
    - apiVersion: config.istio.io/v1alpha2
      fieldsType: FieldsV1
      manager: kubectl
      operation: Update
    name: deny
    namespace: istio-system
    resourceVersion: "1234"
    selfLink: /apis/config.istio.io/v1alpha2/namespaces/istio-system/handlers/deny
    uid: 0e5b8c1a-0000-4000-8000-000000000001
  spec:
    compiledAdapter: denier
    params: {}
  status: {}
- apiVersion: config.istio.io/v1alpha2
  kind: instance
  metadata: {name: nothing, namespace: istio-system, generation: 2, uid: x}
  spec: {compiledTemplate: checknothing}
- apiVersion: config.istio.io/v1alpha2
  kind: rule
  metadata: {name: r, namespace: istio-system}
  spec:
    match: request.path == "/x"
    actions: [{handler: deny, instances: [nothing]}]
kind: List
metadata:
  resourceVersion: ""
  selfLink: ""
"#;

#[test]
fn kubectl_list_dumps_load_and_server_metadata_is_ignored() {
    let s = compile_text(KUBECTL_DUMP).unwrap();
    assert_eq!((s.handlers.len(), s.instances.len(), s.rules.len()), (1, 1, 1));
    assert_eq!(s.rules[0].name, "r.rule.istio-system");

    let bad = KUBECTL_DUMP.replace("match: request.path == \"/x\"", "match: request.path ==");
    assert_eq!(
        one_error(&bad),
        "test.yaml:33: document 1 (rule r): items[2].spec.match: \"request.path ==\" at position 15: unexpected end of expression"
    );
    let typo = KUBECTL_DUMP.replace("compiledTemplate: checknothing", "compiledTemplat: checknothing");
    assert_eq!(
        errors(&typo)[0],
        "test.yaml:28: document 1 (instance nothing): items[1].spec.compiledTemplat: unknown key (did you mean compiledTemplate?)"
    );
    // An empty list is an empty config.
    assert!(compile_text("apiVersion: v1\nkind: List\nitems: []\n").is_ok());
}

fn ns_bag(pairs: &[(&'static str, &'static str)]) -> Bag<'static> {
    Bag::from_pairs(pairs.iter().map(|(k, v)| (*k, Value::String((*v).into()))).collect())
}

#[test]
fn rules_are_scoped_by_the_requests_identity_namespace() {
    let rule = |name: &str, ns: &str| {
        format!(
            "{HEADER}kind: rule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  actions: [{{handler: deny.istio-system, instances: [nothing.istio-system]}}]\n---\n"
        )
    };
    let text = base() + &rule("everywhere", "istio-system") + &rule("bookinfo", "bookinfo") + &rule("shop", "shop");
    let s = compile_text(&text).unwrap();
    let matched = |bag: &Bag<'static>| {
        let mut refs = crate::bag::Referenced::new();
        let m = s.matching_rules(bag, &mut refs);
        m.rules.iter().map(|&i| s.rules[i].name.split('.').next().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(matched(&ns_bag(&[("destination.namespace", "bookinfo")])), ["everywhere", "bookinfo"]);
    assert_eq!(
        matched(&ns_bag(&[("context.reporter.kind", "inbound"), ("destination.namespace", "shop")])),
        ["everywhere", "shop"]
    );
    assert_eq!(
        matched(&ns_bag(&[
            ("context.reporter.kind", "outbound"),
            ("source.namespace", "shop"),
            ("destination.namespace", "bookinfo")
        ])),
        ["everywhere", "shop"]
    );
    assert_eq!(
        matched(&ns_bag(&[("context.reporter.kind", "outbound"), ("destination.namespace", "bookinfo")])),
        ["everywhere"]
    );
    assert_eq!(matched(&ns_bag(&[])), ["everywhere"]);

    // The identity namespace is part of what the answer depends on, so it is referenced;
    // without namespaced rules it is not looked at.
    let shop = ns_bag(&[("destination.namespace", "shop")]);
    let mut refs = crate::bag::Referenced::new();
    s.matching_rules(&shop, &mut refs);
    let names: Vec<_> = refs.entries().into_iter().map(|r| r.name.to_string()).collect();
    assert!(
        names.contains(&"destination.namespace".to_string()) && names.contains(&"context.reporter.kind".to_string())
    );
    let unscoped = compile_text(&(base() + &rule("everywhere", "istio-system"))).unwrap();
    let mut refs = crate::bag::Referenced::new();
    unscoped.matching_rules(&shop, &mut refs);
    assert!(refs.is_empty(), "{:?}", refs.entries());
}

const GENERATOR: &str =
    "  compiledTemplate: kubernetes\n  params:\n    source_uid: source.uid | \"\"\n  attributeBindings:\n";

#[test]
fn attribute_bindings_are_checked_against_outputs_and_the_manifest() {
    let handler = doc("handler", "k8s", "  compiledAdapter: kubernetesenv");
    let ok = handler.clone()
        + &doc(
            "instance",
            "attrs",
            &format!(
                "{GENERATOR}    source.workload.name: $out.source_workload_name | \"unknown\"\n    source.labels: $out.source_labels | emptyStringMap()\n    source.ip: $out.source_pod_ip | ip(\"0.0.0.0\")"
            ),
        )
        + &doc("rule", "gen", "  actions: [{handler: k8s, instances: [attrs]}]")
        + &doc(
            "rule",
            "other",
            "  match: source.workload.name == \"x\"\n  actions: [{handler: deny, instances: [nothing]}]",
        )
        + &base();
    let s = compile_text(&ok).unwrap();
    assert!(s.has_generators());
    assert_eq!(s.instances[0].bindings.len(), 3);
    let mut refs = crate::bag::Referenced::new();
    let bag = ns_bag(&[("source.workload.name", "x")]);
    assert_eq!(s.matching_generator_rules(&bag, &mut refs).rules, vec![0], "generation runs its own rules");
    assert_eq!(s.matching_rules(&bag, &mut refs).rules, vec![1], "and dispatch the others");

    let bad =
        |bindings: &str| one_error(&(handler.clone() + &doc("instance", "attrs", &format!("{GENERATOR}{bindings}"))));
    assert!(bad("    source.name: $out.source_nickname").contains("spec.attributeBindings.source.name: \"$out.source_nickname\" at position 0: unknown output field \"source_nickname\""));
    assert!(bad("    source.nickname: $out.source_pod_name").contains("unknown attribute source.nickname"));
    assert!(bad("    source.ip: $out.source_pod_name").contains("expression has type STRING, expected IP_ADDRESS"));
    assert!(one_error(&doc("instance", "i", "  compiledTemplate: listentry\n  params: {value: request.path}\n  attributeBindings: {source.name: '\"x\"'}"))
        .contains("spec.attributeBindings: template listentry produces no attributes"));
    assert!(
        one_error(&doc("rule", "r", "  match: $out.source_pod_name == \"x\""))
            .contains("$out is only defined in the attribute bindings")
    );
}

#[test]
fn the_legacy_kubernetes_kind_keeps_its_bindings_among_the_params() {
    let text = doc("kubernetesenv", "handler", "  {}")
        + &doc(
            "kubernetes",
            "attributes",
            "  source_uid: source.uid | \"\"\n  attribute_bindings:\n    source.name: $out.source_pod_name | \"unknown\"",
        )
        + &doc("rule", "r", "  actions: [{handler: handler.kubernetesenv, instances: [attributes.kubernetes]}]");
    let s = compile_text(&text).unwrap();
    assert_eq!(s.instances[0].bindings[0].0.as_ref(), "source.name");
    assert_eq!(s.instances[0].fields.len(), 1);
}
