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

/// The gateway Deployment's own command line, with its addresses moved to loopback: the
/// binary accepts it, serves the ConfigMap's Gateway on its port 80 and routes
/// bookinfo-gateway's paths (503: productpage's DNS name does not resolve here) but
/// nothing else (404).
#[test]
fn the_gateway_deployment_runs_its_config() {
    let text = std::fs::read_to_string(root().join("gateway.yaml")).unwrap();
    let docs: Vec<yaml_serde::Value> =
        yaml_serde::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    let dir = tempfile::tempdir().unwrap();
    let addr_file = dir.path().join("addrs");
    let config = root().join("gateway/ingress.yaml");
    let args: Vec<String> = list(&c["args"])
        .into_iter()
        .map(|a| match a.split_once('=') {
            Some(("--config", _)) => format!("--config={}", config.display()),
            Some(("--gateway-bind", _)) => "--gateway-bind=127.0.0.1".into(),
            Some(("--admin-addr" | "--stats-addr", _)) => format!("{}=127.0.0.1:0", a.split('=').next().unwrap()),
            Some(("--mixr", _)) => "--mixr=127.0.0.1:1".into(),
            _ => a,
        })
        .collect();
    let mut child = Command::new(binary("mixr-proxy"))
        .args(&args)
        .arg("--gateway-ephemeral-ports")
        .arg("--addr-file")
        .arg(&addr_file)
        .arg("--fail-open")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let port = loop {
        let text = std::fs::read_to_string(&addr_file).unwrap_or_default();
        if let Some(a) = text.lines().find_map(|l| l.strip_prefix("gateway.80=")) {
            break a.to_string();
        }
        assert!(child.try_wait().unwrap().is_none(), "the gateway exited with {args:?}");
        assert!(std::time::Instant::now() < deadline, "no gateway port 80 in {text:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let status = |path: &str| {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(&port).unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        write!(conn, "GET {path} HTTP/1.1\r\nHost: bookinfo.example.com\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        answer.split_whitespace().nth(1).unwrap_or_default().to_string()
    };
    let (routed, unrouted) = (status("/productpage"), status("/elsewhere"));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((routed.as_str(), unrouted.as_str()), ("503", "404"));
}
