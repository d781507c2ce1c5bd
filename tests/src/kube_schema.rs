//! Offline checks of Kubernetes objects against the API schema, with PyPI's
//! `kubernetes-validate` (installed by .ci/services.sh).

use std::path::PathBuf;
use std::process::Command;

/// The Kubernetes version manifests and injected workloads must be valid for.
pub const KUBERNETES: &str = "1.34.0";

/// Runs `kubernetes-validate --strict` (a misspelt field fails) on `files`: whether every
/// resource passed, and the report (`passed for resource deployment/x ...` per resource).
pub fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", KUBERNETES])
        .args(files)
        .output()
        .expect("kubernetes-validate (installed by .ci/services.sh)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}
