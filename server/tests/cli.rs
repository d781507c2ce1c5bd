//! The `mixr` binary's offline commands. (Having an integration test here also makes
//! `cargo test --workspace` build the binary the end-to-end tests in `tests/` start.)

use std::process::Command;

fn mixr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mixr"))
}

#[test]
fn validate_accepts_the_sample_policy() {
    let out = mixr().args(["validate", concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/examples")]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.starts_with("ok: 9 handlers, 13 instances, 10 rules"), "{stdout}");
}

#[test]
fn validate_prints_every_error_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "apiVersion: config.istio.io/v1alpha2\nkind: handler\nmetadata: {name: h}\nspec: {compiledAdapter: nosuch}\n---\n\
         apiVersion: config.istio.io/v1alpha2\nkind: rule\nmetadata: {name: r}\nspec: {match: 'request.path == '}\n",
    )
    .unwrap();
    let out = mixr().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let file = path.display().to_string();
    assert!(
        stdout.contains(&format!("{file}:4: document 1 (handler h): spec.compiledAdapter: unknown adapter \"nosuch\"")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{file}:9: document 2 (rule r): spec.match: \"request.path == \" at position 16: unexpected end of expression"
        )),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("2 error(s)"), "{stdout}");
}

#[test]
fn validate_reports_missing_files() {
    let out = mixr().args(["validate", "/nonexistent/mixr.yaml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("/nonexistent/mixr.yaml"));
}
