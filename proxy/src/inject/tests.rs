use yaml_serde::Value;

use super::*;

fn testdata(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/inject").join(name)
}

fn golden(name: &str, actual: &str) {
    let path = testdata(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(actual, expected, "{} differs (UPDATE_GOLDEN=1 rewrites it)", path.display());
}

fn workloads() -> String {
    std::fs::read_to_string(testdata("workloads.yaml")).unwrap()
}

fn documents(text: &str) -> Vec<Value> {
    docs::split(text).into_iter().filter(|d| !docs::is_blank(d)).map(|d| yaml_serde::from_str(d).unwrap()).collect()
}

fn names(list: &Value) -> Vec<&str> {
    list.as_sequence().map(|s| s.iter().filter_map(|c| c["name"].as_str()).collect()).unwrap_or_default()
}

fn strings(list: &Value) -> Vec<&str> {
    list.as_sequence().map(|s| s.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

fn err(text: &str) -> String {
    inject(text, &Options::default()).unwrap_err().to_string()
}

#[test]
fn every_workload_kind_gets_the_sidecar() {
    let out = inject(&workloads(), &Options::default()).unwrap();
    golden("workloads.golden.yaml", &out.text);
}

#[test]
fn flags_and_annotations_reach_the_containers() {
    let options =
        Options { image: "registry.example/mixr:1.2".into(), mixr: "mixr.mesh:9091".into(), ..Options::default() };
    let out = inject(&workloads(), &options).unwrap();
    let docs = documents(&out.text);
    let reviews = &docs[1]["spec"]["template"];
    let spec = &reviews["spec"];
    assert_eq!(names(&spec["containers"]), ["reviews", "mixr-proxy"]);
    assert_eq!(names(&spec["initContainers"]), ["mixr-init"]);
    let sidecar = &spec["containers"][1];
    assert_eq!(sidecar["image"], "registry.example/mixr:1.2");
    let args = strings(&sidecar["args"]);
    for want in [
        "--app-addr=127.0.0.1:9080",
        "--workload=reviews-v1",
        "--namespace=$(POD_NAMESPACE)",
        "--service-account=$(SERVICE_ACCOUNT)",
        "--label=app=$(MIXR_LABEL_0)",
        "--label=version=$(MIXR_LABEL_1)",
        "--mixr=mixr.mesh:9091",
        "--inbound-addr=0.0.0.0:15006",
    ] {
        assert!(args.contains(&want), "{want} missing from {args:?}");
    }
    assert_eq!(sidecar["env"][5]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.labels['version']");
    assert_eq!(sidecar["securityContext"]["runAsUser"], 1337);
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/ready");
    let init = &spec["initContainers"][0];
    assert_eq!(
        strings(&init["args"]),
        [
            "iptables",
            "--apply",
            "--proxy-uid=1337",
            "--include-outbound-ip-ranges=10.0.0.0/8,172.16.0.0/12",
            "--exclude-outbound-ip-ranges=10.96.0.1/32",
            "--exclude-outbound-ports=3306,6379",
            "--exclude-inbound-ports=9443",
        ]
    );
    assert_eq!(strings(&init["securityContext"]["capabilities"]["add"]), ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(init["securityContext"]["runAsUser"], 0);
    let annotations = &reviews["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], "15090");
    assert!(annotations[pod::STATUS].as_str().unwrap().contains(r#""containers":["mixr-proxy"]"#));
    // An empty --mixr: the sidecar enforces nothing.
    let none = inject(&workloads(), &Options { mixr: String::new(), ..Options::default() }).unwrap();
    assert!(!none.text.contains("--mixr="), "{}", none.text);
}

#[test]
fn other_documents_and_opted_out_workloads_are_left_as_they_were() {
    let text = workloads();
    let out = inject(&text, &Options::default()).unwrap();
    // The Service, comments and all.
    let service_end = text.find("---\napiVersion: apps/v1").unwrap();
    assert!(out.text.starts_with(&text[..service_end]), "{}", &out.text[..service_end]);
    let docs = documents(&out.text);
    let list = &docs[8]["items"];
    assert_eq!(list[1], documents(&text)[8]["items"][1], "the ConfigMap changed");
    assert_eq!(names(&list[2]["spec"]["template"]["spec"]["containers"]), ["legacy"]);
    // A pod that already says how it is scraped keeps it.
    assert_eq!(list[0]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"], "false");
    assert_eq!(names(&docs[4]["spec"]["template"]["spec"]["containers"]), ["agent"], "hostNetwork was injected");
    let skipped: Vec<String> = out.skipped.iter().map(|s| format!("{}: {}", s.place, s.reason)).collect();
    assert_eq!(
        skipped,
        [
            "document 5 (DaemonSet host-agent): hostNetwork: the capture rules would take the node's traffic",
            "document 9 (List), items[2] (Deployment legacy): sidecar.istio.io/inject is \"false\"",
        ]
    );
    // A stream of nothing to inject comes back byte for byte.
    let plain = "# only a service\napiVersion: v1\nkind: Service\nmetadata: {name: x}   # here\n---\nkind: Secret\n";
    assert_eq!(inject(plain, &Options::default()).unwrap().text, plain);
}

#[test]
fn injecting_twice_changes_nothing_and_a_new_image_replaces_the_old() {
    let once = inject(&workloads(), &Options::default()).unwrap().text;
    let twice = inject(&once, &Options::default()).unwrap().text;
    assert_eq!(once, twice);
    let upgraded = inject(&once, &Options { image: "mixr:2".into(), ..Options::default() }).unwrap().text;
    let docs = documents(&upgraded);
    let spec = &docs[1]["spec"]["template"]["spec"];
    assert_eq!(names(&spec["containers"]), ["reviews", "mixr-proxy"]);
    assert_eq!(names(&spec["initContainers"]), ["mixr-init"]);
    assert_eq!(names(&spec["volumes"]), ["mixr-proxy-config"]);
    assert_eq!(spec["containers"][1]["image"], "mixr:2");
    // The Pod's own init container and volume stay, ours go after them.
    assert_eq!(names(&docs[7]["spec"]["initContainers"]), ["wait", "mixr-init"]);
    assert_eq!(names(&docs[7]["spec"]["volumes"]), ["tmp", "mixr-proxy-config"]);
}

#[test]
fn mesh_identity_mounts_the_service_account_s_token_secret() {
    let options = Options { mesh_identity: true, ..Options::default() };
    let once = inject(&workloads(), &options).unwrap().text;
    let docs = documents(&once);
    let spec = &docs[1]["spec"]["template"]["spec"];
    assert_eq!(names(&spec["volumes"]), ["mixr-proxy-config", "mixr-ca-token"]);
    assert_eq!(spec["volumes"][1]["secret"]["secretName"], "mixr-ca-token-bookinfo-reviews");
    assert_eq!(spec["volumes"][1]["secret"]["optional"], true);
    let sidecar = &spec["containers"][1];
    assert!(strings(&sidecar["args"]).contains(&"--ca-token-file=/var/run/secrets/mixr-ca/token"));
    assert_eq!(names(&sidecar["volumeMounts"]), ["mixr-proxy-config", "mixr-ca-token"]);
    // A pod naming no service account runs as `default`.
    let pod = docs.iter().find(|d| d["kind"] == "Pod").unwrap();
    let secret = pod["spec"]["volumes"].as_sequence().unwrap().iter().find(|v| v["name"] == "mixr-ca-token");
    assert_eq!(secret.unwrap()["secret"]["secretName"], "mixr-ca-token-default");
    // Idempotent, and injecting again without it takes the volume away.
    assert_eq!(inject(&once, &options).unwrap().text, once);
    let without = inject(&once, &Options::default()).unwrap().text;
    assert_eq!(without, inject(&workloads(), &Options::default()).unwrap().text);
}

#[test]
fn bad_input_names_the_document_and_the_key() {
    let deployment = |template: &str| {
        format!(
            "kind: Service\nmetadata: {{name: s}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec:\n  template:\n{template}"
        )
    };
    let cases = [
        (
            deployment("    metadata:\n      annotations: {traffic.sidecar.istio.io/excludeInboundPorts: \"80,http\"}\n    spec: {containers: [{name: a}]}\n"),
            r#"document 2 (Deployment d): spec.template.metadata.annotations.traffic.sidecar.istio.io/excludeInboundPorts: "80,http": "http" is not a port (1-65535)"#,
        ),
        (
            deployment("    metadata:\n      annotations: {traffic.sidecar.istio.io/includeOutboundIPRanges: \"10.0.0.0/40\"}\n    spec: {containers: [{name: a}]}\n"),
            r#"document 2 (Deployment d): spec.template.metadata.annotations.traffic.sidecar.istio.io/includeOutboundIPRanges: "10.0.0.0/40": "10.0.0.0/40" is not a CIDR range"#,
        ),
        (
            deployment("    metadata: {annotations: {sidecar.istio.io/inject: \"maybe\"}}\n    spec: {containers: [{name: a}]}\n"),
            r#"document 2 (Deployment d): spec.template.metadata.annotations.sidecar.istio.io/inject: expected "true" or "false""#,
        ),
        (deployment("    spec: {containers: {name: a}}\n"), "document 2 (Deployment d): spec.template.spec.containers: expected a list"),
        (deployment("    spec: {}\n"), "document 2 (Deployment d): spec.template.spec.containers: missing"),
        (deployment("    spec: {containers: [{image: x}]}\n"), "document 2 (Deployment d): spec.template.spec.containers[0].name: missing (every item needs a name)"),
        (
            deployment("    spec: {containers: [{name: a, ports: [{containerPort: 15001}]}]}\n"),
            "document 2 (Deployment d): spec.template.spec.containers[0].ports[0].containerPort: 15001 is a port of the sidecar",
        ),
        (
            deployment("    spec: {containers: [{name: a, ports: [{containerPort: http}]}]}\n"),
            "document 2 (Deployment d): spec.template.spec.containers[0].ports[0].containerPort: expected a port number",
        ),
        (deployment("    spec: {containers: [{name: mixr-proxy}]}\n"), "document 2 (Deployment d): spec.template.spec.containers: no container besides the sidecar"),
        (deployment("    metadata: []\n    spec: {containers: [{name: a}]}\n"), "document 2 (Deployment d): spec.template.metadata: expected a mapping"),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n".into(), "document 1 (Deployment d): spec.template: missing"),
        ("kind: Pod\nspec: {containers: [{name: a}]}\n".into(), "document 1 (Pod): metadata.name: missing"),
        ("kind: List\nitems:\n- kind: Pod\n  metadata: {name: p}\n  spec: {initContainers: {}, containers: [{name: a}]}\n".into(), "document 1 (List), items[0] (Pod p): spec.initContainers: expected a list"),
        ("- a\n- b\n".into(), "document 1: (document): expected a mapping (a Kubernetes object)"),
    ];
    for (text, want) in cases {
        assert_eq!(err(&text), want, "for:\n{text}");
    }
    let e = err("# a comment\n---\nkind: Service\n---\nkind: [\n");
    assert!(e.starts_with("document 2: invalid YAML: "), "{e}");
}
