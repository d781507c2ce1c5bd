//! The Kubernetes manifests under deploy/kubernetes: every resource passes the API schema
//! (kubernetes-validate, strict), the kustomization names only files that exist, and the
//! ConfigMap's mixr config loads. No cluster runs here; `kubectl kustomize` is tried
//! where kubectl is installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use mixr_e2e::binary;
use mixr_e2e::kube_schema::validate;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

fn kustomization() -> yaml_serde::Value {
    yaml_serde::from_str(&std::fs::read_to_string(root().join("kustomization.yaml")).unwrap()).unwrap()
}

fn list(value: &yaml_serde::Value) -> Vec<String> {
    value.as_sequence().map(|s| s.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default()
}

fn resources() -> Vec<PathBuf> {
    list(&kustomization()["resources"]).into_iter().map(|r| root().join(r)).collect()
}

#[test]
fn every_manifest_passes_the_kubernetes_schema() {
    let files = resources();
    assert!(files.len() >= 4, "{files:?}");
    let (ok, report) = validate(&files);
    assert!(ok, "{report}");
    for kind in [
        "deployment/mixr",
        "service/mixr",
        "poddisruptionbudget/mixr",
        "clusterrole/mixr-pod-reader",
        "deployment/mixr-redis",
    ] {
        assert!(report.contains(&format!("passed for resource {kind} ")), "{kind} not validated:\n{report}");
    }
    // Strict: a misspelt field fails, so the check above means something.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let text =
        std::fs::read_to_string(root().join("mixr.yaml")).unwrap().replacen("readinessProbe:", "readinesProbe:", 1);
    std::fs::write(&broken, text).unwrap();
    assert!(!validate(&[broken]).0, "a misspelt field passes: the validation is not strict");
}

#[test]
fn the_deployment_is_locked_down_and_probed() {
    let text = std::fs::read_to_string(root().join("mixr.yaml")).unwrap();
    let docs: Vec<yaml_serde::Value> =
        yaml_serde::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(c["resources"]["limits"]["memory"].is_string() && c["resources"]["requests"]["cpu"].is_string());
    let args = list(&c["args"]);
    assert!(
        args.contains(&"--config=/etc/mixr".into()) && args.contains(&"--data-dir=/var/lib/mixr".into()),
        "{args:?}"
    );
    let service = docs.iter().find(|d| d["kind"] == "Service").unwrap();
    let names: Vec<&str> =
        service["spec"]["ports"].as_sequence().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(names.iter().any(|n| n.starts_with("grpc-")), "the gRPC port's name tells meshes its protocol: {names:?}");
}

#[test]
fn the_kustomization_names_files_that_exist_and_its_config_loads() {
    let k = kustomization();
    for r in resources() {
        assert!(r.exists(), "{} is missing", r.display());
    }
    let files: Vec<PathBuf> = k["configMapGenerator"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| list(&g["files"]))
        .map(|f| root().join(f))
        .collect();
    assert!(!files.is_empty());
    let out = Command::new(binary("mixr")).arg("validate").args(&files).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    if Command::new("kubectl").arg("version").arg("--client").output().is_ok_and(|o| o.status.success()) {
        let out = Command::new("kubectl").arg("kustomize").arg(root()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("name: mixr-config"));
    } else {
        eprintln!("kubectl is not installed: `kubectl kustomize deploy/kubernetes` was not tried");
    }
}
