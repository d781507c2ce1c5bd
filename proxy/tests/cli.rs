//! The `mixr-proxy` binary refuses bad traffic config. (Having an integration test here
//! also makes `cargo test --workspace` build the binary the end-to-end tests start.)

use std::process::Command;

#[test]
fn invalid_config_is_reported_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vs.yaml");
    std::fs::write(
        &path,
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [r]\n  http:\n  - route: [{destination: {host: r}}]\n    timeout: later\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mixr-proxy"))
        .args([
            "--outbound-addr",
            "127.0.0.1:0",
            "--inbound-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--stats-addr",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("document 1 (VirtualService r): spec.http[0].timeout: \"later\" is not a duration"), "{err}");
}
