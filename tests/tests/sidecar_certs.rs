//! The sidecar's workload certificate from mixr's CA: obtained at start with a bootstrap
//! token, for exactly its own SPIFFE identity, renewed at half its lifetime while traffic
//! flows, and never without a valid token.

use std::time::Duration;

use mixr_e2e::{Mixr, MixrProxy, backend, ca_token, eventually};

/// mixr with its CA on, trusting a token for `bookinfo/reviews`; the file the sidecar
/// reads its token from (that token, or `token_text`).
fn mixr_with_ca(dir: &std::path::Path, token_text: Option<&str>) -> (Mixr, std::path::PathBuf) {
    let (tok, line) = ca_token("bookinfo/reviews");
    let tokens = dir.join("tokens.yaml");
    std::fs::write(&tokens, format!("{line}\n")).unwrap();
    std::fs::write(dir.join("empty.yaml"), "").unwrap();
    let data = dir.join("data");
    let config = dir.join("empty.yaml");
    let mixr =
        Mixr::start(&[&config], &["--ca-tokens", tokens.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{}\n", token_text.unwrap_or(&tok))).unwrap();
    (mixr, token_file)
}

async fn certs(proxy: &MixrProxy) -> serde_json::Value {
    let text = reqwest::get(format!("http://{}/certs", proxy.admin)).await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn the_sidecar_obtains_and_renews_its_certificate_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (mixr, token_file) = mixr_with_ca(dir.path(), None);
    let config = dir.path().join("empty.yaml");
    let app = backend::start("reviews").await;
    let proxy = MixrProxy::start(
        &[&config],
        &[
            "--app-addr",
            &app.addr.to_string(),
            "--namespace",
            "bookinfo",
            "--service-account",
            "reviews",
            "--ca-addr",
            &mixr.grpc,
            "--ca-token-file",
            token_file.to_str().unwrap(),
            "--workload-cert-ttl-secs",
            "4",
        ],
    );
    let got = eventually(Duration::from_secs(10), || async { certs(&proxy).await["spiffe"].is_string() }).await;
    assert!(got, "no certificate: {}", proxy.logs());
    let first = certs(&proxy).await;
    assert_eq!(first["spiffe"], "spiffe://cluster.local/ns/bookinfo/sa/reviews");
    assert_eq!(first["chain"], 2, "leaf and root: {first}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(first["notAfter"].as_u64().unwrap() <= now + 5, "the asked lifetime was honoured: {first}");
    assert!(first["renewals"].as_u64().unwrap() <= 2, "no renewal loop: {first}");

    // Requests keep flowing across renewals (every 2 s); the serial changes.
    let client = reqwest::Client::new();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let mut served = 0;
    while std::time::Instant::now() < until {
        let r = client.get(format!("http://{}/x", proxy.inbound)).header("host", "reviews").send().await.unwrap();
        assert_eq!(r.status(), 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let later = certs(&proxy).await;
    assert_ne!(later["serial"], first["serial"], "{first} then {later}");
    assert!(later["renewals"].as_u64().unwrap() >= 2, "{later}");
    assert_eq!(later["failures"], 0, "{later}");
    assert!(served > 20);
    assert!(
        !reqwest::get(format!("http://{}/certs", proxy.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("PRIVATE KEY")
    );
}

#[tokio::test]
async fn without_a_valid_token_there_is_no_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (mixr, token_file) = mixr_with_ca(dir.path(), Some("guessed"));
    let config = dir.path().join("empty.yaml");
    let proxy = MixrProxy::start(
        &[&config],
        &[
            "--namespace",
            "bookinfo",
            "--service-account",
            "reviews",
            "--mixr",
            &mixr.grpc,
            "--ca-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let failed =
        eventually(Duration::from_secs(10), || async { certs(&proxy).await["failures"].as_u64() >= Some(2) }).await;
    assert!(failed, "{}", proxy.logs());
    assert!(certs(&proxy).await["spiffe"].is_null());
    assert!(proxy.logs().contains("workload certificate not renewed"), "{}", proxy.logs());
}
