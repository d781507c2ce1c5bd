//! mixr's gRPC port over TLS with client certificates from the mesh (`--tls-cert`,
//! `--tls-key`, `--client-ca mesh`): a plaintext caller, a caller without a certificate
//! and one with a foreign certificate get nothing but a certificate request; a mesh member
//! calls Check. A sidecar with `--mixr-ca` obtains its certificate over TLS and enforces
//! and reports through the mutual-TLS channel. Real handshakes, rustls on both sides.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use mixr_e2e::gateway::{Ca, Issued, Tls, tls_connect, write_file};
use mixr_e2e::{Mixr, MixrProxy, backend, ca_token, check_request, eventually, precondition};
use mixr_proto::istio::mixer::v1::mixer_client::MixerClient;
use mixr_proto::istio::v1::auth::IstioCertificateRequest;
use mixr_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use mixr_rules::value::Value;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// A tonic connector: TLS to mixr trusting `ca`, presenting `client` if given.
#[derive(Clone)]
struct Connector {
    addr: SocketAddr,
    ca: String,
    client: Option<(String, String)>,
}

impl tower_service::Service<hyper::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<Tls>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: hyper::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let client = this.client.map(|(cert_pem, key_pem)| Issued { cert_pem, key_pem });
            let tls = tls_connect(this.addr, "127.0.0.1", &this.ca, client.as_ref(), &["h2"])
                .await
                .map_err(std::io::Error::other)?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

async fn tls_channel(mixr: &Mixr, ca: &str, client: Option<&Issued>) -> Result<Channel, tonic::transport::Error> {
    let connector = Connector {
        addr: mixr.grpc.parse().unwrap(),
        ca: ca.to_string(),
        client: client.map(|c| (c.cert_pem.clone(), c.key_pem.clone())),
    };
    Endpoint::from_shared(format!("http://{}", mixr.grpc)).unwrap().connect_with_connector(connector).await
}

/// A Check whose attributes carry `marker` (which must never reach a log).
fn check(marker: &str) -> tonic::Request<mixr_proto::istio::mixer::v1::CheckRequest> {
    let mut req = tonic::Request::new(check_request(&[("request.path", Value::String(marker.to_string().into()))]));
    req.set_timeout(Duration::from_secs(5));
    req
}

/// A CSR for `spiffe` and its key.
fn csr(spiffe: &str) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe.to_string().try_into().unwrap())];
    (params.serialize_request(&key).unwrap().pem().unwrap(), key)
}

/// mixr over TLS with a serving certificate from `serving` for 127.0.0.1, client
/// certificates from the mesh, and its CA on with a token for `account`: (mixr, token).
fn tls_mixr(dir: &Path, serving: &Ca, config: &Path, account: &str, extra: &[&str]) -> (Mixr, String) {
    let server = serving.server(&["127.0.0.1", "localhost"]);
    let cert = write_file(dir, "mixr-cert.pem", &server.cert_pem);
    let key = write_file(dir, "mixr-key.pem", &server.key_pem);
    let (token, line) = ca_token(account);
    let tokens = write_file(dir, "tokens.yaml", &format!("{line}\n"));
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--client-ca",
        "mesh",
        "--ca-tokens",
        tokens.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (Mixr::start(&[config], &args), token)
}

#[tokio::test]
async fn only_mesh_members_call_check_on_the_tls_port() {
    let dir = tempfile::tempdir().unwrap();
    let serving = Ca::new("mixr serving");
    let config = write_file(dir.path(), "empty.yaml", "");
    let (mixr, token) = tls_mixr(dir.path(), &serving, &config, "default/productpage", &[]);
    let marker = "/payload-that-must-not-be-logged";

    // Plaintext HTTP/2 on a TLS port: no handshake, no call.
    let plain = async {
        let mut client = MixerClient::connect(format!("http://{}", mixr.grpc)).await.map_err(|e| e.to_string())?;
        client.check(check(marker)).await.map_err(|e| e.to_string())
    };
    assert!(tokio::time::timeout(Duration::from_secs(10), plain).await.unwrap().is_err());

    // TLS without a client certificate: refused Check, but a certificate with a token.
    let anonymous = tls_channel(&mixr, &serving.pem, None).await.expect("TLS without a client certificate");
    let refused = MixerClient::new(anonymous.clone()).check(check(marker)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(refused.message(), "a client certificate from the mesh is required");
    let spiffe = "spiffe://cluster.local/ns/default/sa/productpage";
    let (csr, key) = csr(spiffe);
    let mut req =
        tonic::Request::new(IstioCertificateRequest { csr, subject_id: String::new(), validity_duration: 3600 });
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let chain = IstioCertificateServiceClient::new(anonymous)
        .create_certificate(req)
        .await
        .expect("CreateCertificate needs no client certificate")
        .into_inner()
        .cert_chain;
    assert_eq!(chain.len(), 2);

    // A client certificate from another root: the handshake fails (or the call does).
    let foreign = Ca::new("not the mesh").client("cluster.local/ns/default/sa/productpage");
    let foreign_call = async {
        let channel = tls_channel(&mixr, &serving.pem, Some(&foreign)).await.map_err(|e| e.to_string())?;
        MixerClient::new(channel).check(check(marker)).await.map_err(|e| e.to_string())
    };
    let foreign_result = tokio::time::timeout(Duration::from_secs(10), foreign_call).await.unwrap();
    assert!(foreign_result.is_err(), "{foreign_result:?}");

    // The mesh certificate just issued: Check runs.
    let member = Issued { cert_pem: chain[0].clone(), key_pem: key.serialize_pem() };
    let channel = tls_channel(&mixr, &serving.pem, Some(&member)).await.expect("TLS with a mesh certificate");
    let answer = MixerClient::new(channel).check(check("/fine")).await.expect("Check from a mesh member");
    assert_eq!(precondition(answer.get_ref()).0, 0);

    let refusals =
        mixr.metric_where("mixr_grpc_unauthenticated_total", &[("method", "/istio.mixer.v1.Mixer/Check")]).await;
    assert_eq!(refusals, Some(1.0));
    let handshakes = mixr.metric("mixr_grpc_tls_handshake_errors_total").await.unwrap_or(0.0);
    assert!(handshakes >= 1.0, "the plaintext caller at least: {handshakes}");
    let logs = mixr.logs();
    assert!(logs.contains("gRPC call refused: no client certificate from the mesh"), "{logs}");
    assert!(logs.contains("/istio.mixer.v1.Mixer/Check") && logs.contains("127.0.0.1:"), "{logs}");
    assert!(!logs.contains(marker), "the payload was logged: {logs}");
}

#[test]
fn bad_tls_flags_stop_mixr_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "empty.yaml", "");
    let serving = Ca::new("mixr serving").server(&["127.0.0.1"]);
    let cert = write_file(dir.path(), "cert.pem", &serving.cert_pem);
    let key = write_file(dir.path(), "key.pem", &serving.key_pem);
    let missing = dir.path().join("missing.pem");
    let (cert, key, missing) = (cert.to_str().unwrap(), key.to_str().unwrap(), missing.to_str().unwrap());
    let run = |args: &[&str]| -> (bool, String) {
        let out = std::process::Command::new(mixr_e2e::binary("mixr"))
            .args(["serve", "--grpc-addr=127.0.0.1:0", "--monitoring-addr=127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = run(&["--tls-cert", missing, "--tls-key", key]);
    assert!(!ok && err.contains("--tls-cert") && err.contains("missing.pem"), "{err}");
    let (ok, err) = run(&["--tls-cert", cert, "--tls-key", cert]);
    assert!(!ok && err.contains("--tls-key"), "{err}");
    let (ok, err) = run(&["--tls-cert", cert, "--tls-key", key, "--client-ca", missing]);
    assert!(!ok && err.contains("--client-ca") && err.contains("missing.pem"), "{err}");
    let (ok, err) = run(&["--tls-cert", cert, "--tls-key", key, "--client-ca", "mesh"]);
    assert!(!ok && err.contains("--ca-tokens"), "mesh needs the CA: {err}");
    let (ok, err) = run(&["--client-ca", cert]);
    assert!(!ok && err.contains("--tls-cert"), "{err}");
}

const POLICY: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: admin}
spec:
  compiledAdapter: denier
  params: {status: {code: 7, message: admin is off limits}}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: nothing}
spec: {compiledTemplate: checknothing}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: admin}
spec:
  match: match(request.url_path, "/admin*")
  actions: [{handler: admin, instances: [nothing]}]
"#;

#[tokio::test]
async fn a_sidecar_checks_and_reports_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let serving = Ca::new("mixr serving");
    let policy = write_file(dir.path(), "policy.yaml", POLICY);
    let (mixr, token) = tls_mixr(dir.path(), &serving, &policy, "bookinfo/reviews", &[]);
    let roots = write_file(dir.path(), "mixr-roots.pem", &serving.pem);
    let token_file = write_file(dir.path(), "token", &format!("{token}\n"));
    let empty = write_file(dir.path(), "empty.yaml", "");
    let app = backend::start("reviews").await;
    let app_addr = app.addr.to_string();
    let proxy = MixrProxy::start(
        &[&empty],
        &[
            "--app-addr",
            &app_addr,
            "--namespace",
            "bookinfo",
            "--service-account",
            "reviews",
            "--workload",
            "reviews-v1",
            "--mixr",
            &mixr.grpc,
            "--mixr-ca",
            roots.to_str().unwrap(),
            "--ca-token-file",
            token_file.to_str().unwrap(),
            "--check-timeout-ms",
            "3000",
        ],
    );
    let certs = || async {
        let text = reqwest::get(format!("http://{}/certs", proxy.admin)).await.unwrap().text().await.unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let got = eventually(Duration::from_secs(10), || async { certs().await["spiffe"].is_string() }).await;
    assert!(got, "no certificate over TLS: {}\n{}", proxy.logs(), mixr.logs());

    let client = reqwest::Client::new();
    let get = |path: &'static str| {
        let req = client.get(format!("http://{}{path}", proxy.inbound)).header("host", "reviews");
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    // A connection made before the certificate arrived is replaced: the first Checks may
    // still be refused (the fail policy answers), but they pass within a few tries.
    let allowed = eventually(Duration::from_secs(10), || async { get("/reviews/1").await.0 == 200 }).await;
    assert!(allowed, "Checks never passed: {}\n{}", proxy.logs(), mixr.logs());
    let (status, body) = get("/admin/x").await;
    assert_eq!(status, 403, "the deny rule ran in mixr: {body}");
    assert!(body.contains("admin is off limits"), "{body}");

    let reported = eventually(Duration::from_secs(10), || async {
        mixr.metric("mixr_report_entries_total{api=\"mixer\"}").await.unwrap_or(0.0) >= 2.0
    })
    .await;
    assert!(reported, "no Reports arrived: {}", mixr.logs());
    let checks = mixr.metric_where("mixr_calls_total", &[("api", "mixer"), ("method", "check"), ("code", "OK")]).await;
    assert!(checks >= Some(1.0), "Checks were served over mutual TLS: {}", mixr.http_get("/metrics").await.1);
}

#[test]
fn sidecar_tls_flags_that_cannot_work_stop_it_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write_file(dir.path(), "empty.yaml", "");
    let token = write_file(dir.path(), "token", "t\n");
    let run = |args: &[&str]| -> (bool, String) {
        let out = std::process::Command::new(mixr_e2e::binary("mixr-proxy"))
            .args(["--admin-addr=127.0.0.1:0", "--stats-addr=127.0.0.1:0", "--inbound-addr=127.0.0.1:0"])
            .args(["--outbound-addr=127.0.0.1:0", "--config"])
            .arg(&empty)
            .args(args)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = run(&["--mixr", "127.0.0.1:1", "--mixr-ca", "/nonexistent/roots.pem"]);
    assert!(!ok && err.contains("--mixr-ca /nonexistent/roots.pem"), "{err}");
    let (ok, err) = run(&["--mixr", "127.0.0.1:1", "--mixr-ca", "mesh"]);
    assert!(!ok && err.contains("--ca-token-file"), "{err}");
    let (ok, err) = run(&["--mixr", "127.0.0.1:1", "--mixr-ca", "mesh", "--ca-token-file", token.to_str().unwrap()]);
    assert!(!ok && err.contains("no mesh root"), "{err}");
}

#[tokio::test]
async fn a_sidecar_is_refused_until_it_holds_a_certificate_then_reconnects_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let serving = Ca::new("mixr serving");
    let policy = write_file(dir.path(), "policy.yaml", POLICY);
    let (mixr, token) = tls_mixr(dir.path(), &serving, &policy, "bookinfo/reviews", &[]);
    let roots = write_file(dir.path(), "mixr-roots.pem", &serving.pem);
    // No valid token yet: no certificate.
    let token_file = write_file(dir.path(), "token", "not-yet\n");
    let empty = write_file(dir.path(), "empty.yaml", "");
    let app = backend::start("reviews").await;
    let app_addr = app.addr.to_string();
    let proxy = MixrProxy::start(
        &[&empty],
        &[
            "--app-addr",
            &app_addr,
            "--namespace",
            "bookinfo",
            "--service-account",
            "reviews",
            "--mixr",
            &mixr.grpc,
            "--mixr-ca",
            roots.to_str().unwrap(),
            "--ca-token-file",
            token_file.to_str().unwrap(),
            "--worker-threads",
            "1",
        ],
    );
    let client = reqwest::Client::new();
    let get = || {
        let req = client.get(format!("http://{}/reviews/1", proxy.inbound)).header("host", "reviews");
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // Fail closed: mixr refuses the Checks of a sidecar without a certificate.
    assert_eq!(get().await, 503);
    let refused = eventually(Duration::from_secs(5), || async {
        mixr.metric_where("mixr_grpc_unauthenticated_total", &[("method", "/istio.mixer.v1.Mixer/Check")]).await
            >= Some(1.0)
    })
    .await;
    assert!(refused, "{}", mixr.logs());

    // The token arrives, then the certificate; the connection made without one is
    // replaced, and Checks pass.
    write_file(dir.path(), "token", &format!("{token}\n"));
    let allowed = eventually(Duration::from_secs(20), || async { get().await == 200 }).await;
    assert!(allowed, "Checks never passed: {}\n{}", proxy.logs(), mixr.logs());
}
