//! `mixr-proxy inject` as a user runs it: files and stdin in, YAML out that passes the
//! Kubernetes schema, containers whose command lines the real binary accepts, errors on
//! stderr naming the document and key.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use mixr_e2e::kube_schema::validate;
use mixr_e2e::{MixrProxy, binary};

fn workloads() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proxy/testdata/inject/workloads.yaml")
}

fn inject(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(binary("mixr-proxy"))
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The objects of a stream, `List` items as objects of their own (the schema validator
/// knows no `List`).
fn objects(stream: &str) -> Vec<yaml_serde::Value> {
    let mut out = Vec::new();
    for doc in yaml_serde::Deserializer::from_str(stream) {
        let value: yaml_serde::Value = serde::Deserialize::deserialize(doc).unwrap();
        if value["kind"] == "List" {
            out.extend(value["items"].as_sequence().unwrap().iter().cloned());
        } else if !value.is_null() {
            out.push(value);
        }
    }
    out
}

fn strings(v: &yaml_serde::Value) -> Vec<String> {
    v.as_sequence().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[test]
fn injected_workloads_pass_the_kubernetes_schema() {
    schema_check(&[]);
}

#[test]
fn injected_workloads_with_mesh_identity_pass_the_kubernetes_schema() {
    schema_check(&["--mesh-identity"]);
}

fn schema_check(flags: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("injected.yaml");
    let workloads = workloads();
    let mut args = vec!["-f", workloads.to_str().unwrap(), "-o", out_file.to_str().unwrap()];
    args.extend_from_slice(flags);
    let out = inject(&args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("(DaemonSet host-agent): not injected: hostNetwork"), "{stderr}");
    assert!(
        stderr.contains("items[2] (Deployment legacy): not injected: sidecar.istio.io/inject is \"false\""),
        "{stderr}"
    );

    let injected = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(injected.contains("secretName: mixr-ca-token-bookinfo-reviews"), flags.contains(&"--mesh-identity"));
    let flat = dir.path().join("flat.yaml");
    let docs: Vec<String> = objects(&injected).iter().map(|o| yaml_serde::to_string(o).unwrap()).collect();
    std::fs::write(&flat, docs.join("---\n")).unwrap();
    let (ok, report) = validate(&[flat]);
    assert!(ok, "{report}");
    for resource in [
        "deployment/reviews-v1",
        "statefulset/ratings-db",
        "job/migrate",
        "cronjob/report",
        "pod/productpage",
        "deployment/details-v1",
    ] {
        assert!(report.contains(&format!("passed for resource {resource} ")), "{resource} not validated:\n{report}");
    }
}

#[test]
fn stdin_to_stdout_and_twice_is_once() {
    let input = std::fs::read_to_string(workloads()).unwrap();
    let once = inject(&["-f", "-"], Some(&input));
    assert!(once.status.success(), "{}", text(&once.stderr));
    let once = text(&once.stdout);
    assert_eq!(once.matches("- name: mixr-proxy\n").count(), 7, "{once}");
    let twice = inject(&["-f", "-"], Some(&once));
    assert!(twice.status.success());
    assert_eq!(text(&twice.stdout), once);
}

#[test]
fn bad_input_fails_naming_the_document_and_key() {
    let bad = "kind: Service\nmetadata: {name: s}\n---\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    \
               metadata: {annotations: {traffic.sidecar.istio.io/excludeOutboundPorts: \"http\"}}\n    \
               spec: {containers: [{name: web}]}\n";
    let out = inject(&["-f", "-"], Some(bad));
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "half an output was written");
    assert_eq!(
        text(&out.stderr).trim(),
        "mixr-proxy inject: -: document 2 (Deployment web): \
         spec.template.metadata.annotations.traffic.sidecar.istio.io/excludeOutboundPorts: \"http\": \"http\" is not a port (1-65535)"
    );
    let missing = inject(&["-f", "/nonexistent.yaml"], None);
    assert!(!missing.status.success() && text(&missing.stderr).contains("/nonexistent.yaml"));
}

/// The injected containers' command lines are ones `mixr-proxy` runs: the sidecar starts
/// with them (the downward API's variables filled in as the kubelet would), and the init
/// container's flags parse (printed instead of applied).
#[test]
fn the_injected_command_lines_run() {
    let out = inject(&["-f", workloads().to_str().unwrap(), "--mixr", ""], None);
    assert!(out.status.success());
    let objects = objects(&text(&out.stdout));
    let reviews = objects.iter().find(|o| o["metadata"]["name"] == "reviews-v1").unwrap();
    let spec = &reviews["spec"]["template"]["spec"];
    let sidecar = &spec["containers"][1];
    let env = |name: &str| match name {
        "POD_NAMESPACE" => "bookinfo",
        "SERVICE_ACCOUNT" => "bookinfo-reviews",
        "MIXR_LABEL_0" => "reviews",
        "MIXR_LABEL_1" => "v1",
        _ => "x",
    };
    let config = tempfile::tempdir().unwrap();
    let mut args = Vec::new();
    for arg in strings(&sidecar["args"]) {
        // The test's own free ports and config directory replace the pod's.
        if ["--outbound-addr=", "--inbound-addr=", "--admin-addr=", "--stats-addr=", "--config="]
            .iter()
            .any(|p| arg.starts_with(p))
        {
            continue;
        }
        let mut arg = arg.clone();
        while let Some(start) = arg.find("$(") {
            let end = arg[start..].find(')').unwrap() + start;
            arg = format!("{}{}{}", &arg[..start], env(&arg[start + 2..end]), &arg[end + 1..]);
        }
        args.push(arg);
    }
    assert!(args.contains(&"--label=version=v1".to_string()), "{args:?}");
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = MixrProxy::start(&[config.path()], &arg_refs);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ready = rt.block_on(async { reqwest::get(format!("http://{}/ready", proxy.admin)).await.unwrap().status() });
    assert_eq!(ready, 200, "{}", proxy.logs());

    let init = &spec["initContainers"][0];
    let mut init_args = strings(&init["args"]);
    assert_eq!(init_args[..2], ["iptables", "--apply"]);
    init_args[1] = "--print".into();
    let printed = Command::new(binary("mixr-proxy")).args(&init_args).output().unwrap();
    assert!(printed.status.success(), "{}", text(&printed.stderr));
    let rules = text(&printed.stdout);
    assert!(rules.contains("-A MIXR_INBOUND -p tcp --dport 9443 -j RETURN"), "{rules}");
    assert!(rules.contains("-A MIXR_OUTPUT -d 10.96.0.1/32 -j RETURN"), "{rules}");
}

fn bookinfo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/bookinfo")
}

/// The Bookinfo example (deploy/kubernetes/bookinfo) as an operator applies it: rendered
/// by kustomize where kubectl is installed, injected, valid for the API; its sidecar
/// rules load in mixr-proxy and its policy in mixr, beside the installed config.
#[test]
fn the_bookinfo_example_injects_and_its_configs_load() {
    let kubectl = Command::new("kubectl").args(["version", "--client"]).output().is_ok_and(|o| o.status.success());
    let rendered = if kubectl {
        let out = Command::new("kubectl").arg("kustomize").arg(bookinfo()).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    } else {
        eprintln!("kubectl is not installed: the Bookinfo files are injected without `kubectl kustomize`");
        ["namespace.yaml", "bookinfo.yaml"]
            .iter()
            .map(|f| std::fs::read_to_string(bookinfo().join(f)).unwrap())
            .collect::<Vec<_>>()
            .join("---\n")
    };
    let out = inject(&["-f", "-"], Some(&rendered));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let injected = text(&out.stdout);
    let objects = objects(&injected);
    let deployments: Vec<&yaml_serde::Value> = objects.iter().filter(|o| o["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 6);
    for d in &deployments {
        let containers = d["spec"]["template"]["spec"]["containers"].as_sequence().unwrap();
        assert_eq!(containers.last().unwrap()["name"], "mixr-proxy", "{:?}", d["metadata"]["name"]);
    }
    if kubectl {
        let config_map = objects.iter().find(|o| o["kind"] == "ConfigMap").expect("the sidecars' ConfigMap");
        assert_eq!(config_map["metadata"]["name"], "mixr-proxy-config", "the name the injected pods mount");
        assert_eq!(config_map["metadata"]["namespace"], "bookinfo");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bookinfo.yaml");
    std::fs::write(&file, &injected).unwrap();
    let (ok, report) = validate(&[file]);
    assert!(ok, "{report}");
    assert!(report.contains("passed for resource deployment/reviews-v3 "), "{report}");

    let traffic = bookinfo().join("traffic.yaml");
    let out = Command::new(binary("mixr-proxy"))
        .args(["validate", "--namespace", "bookinfo"])
        .arg(&traffic)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("4 ServiceEntry(s)"), "{}", text(&out.stdout));

    let mixr_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/mixr");
    let out = Command::new(binary("mixr"))
        .arg("validate")
        .arg(mixr_config.join("istio-1.4-mixer.yaml"))
        .arg(mixr_config.join("quota.yaml"))
        .arg(bookinfo().join("mixr-policy.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}
