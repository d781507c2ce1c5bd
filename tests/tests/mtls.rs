//! Mutual TLS between sidecars, end to end with real handshakes: STRICT and PERMISSIVE
//! inbound, ISTIO_MUTUAL outbound (encrypted on the wire), identity attributes that only a
//! certificate can set, certificates renewed every few seconds under traffic, and peers
//! with expired or foreign certificates refused.

use std::path::Path;
use std::time::Duration;

use mixr_e2e::backend;
use mixr_e2e::gateway::Ca;
use mixr_e2e::mesh::{Mesh, Tap, certs, leaf, mtls_get};
use mixr_e2e::{MixrProxy, eventually, sum_series};

const NO_RULES: &str = "";

fn peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
    )
}

/// `reviews` at `addr`, reached over ISTIO_MUTUAL (a new connection per request when
/// `one_per_connection`).
fn routes(addr: &str, tls: &str, one_per_connection: bool) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let pool = if one_per_connection { ", connectionPool: {http: {maxRequestsPerConnection: 1}}" } else { "" };
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  ports: [{{number: 9080, name: http}}]\n  endpoints: [{{address: {host}, ports: {{http: {port}}}}}]\n---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec:\n  host: reviews\n  trafficPolicy: {{tls: {{mode: {tls}}}{pool}}}\n"
    )
}

async fn call(proxy: &MixrProxy, path: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(format!("http://{}{path}", proxy.outbound))
        .header("host", "reviews:9080")
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn plaintext(addr: &str) -> Result<u16, String> {
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/plain"))
        .header("host", "reviews")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

async fn mtls_outcomes(proxy: &MixrProxy, outcome: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", proxy.stats)).await.unwrap().text().await.unwrap();
    sum_series(&text, "mixr_proxy_inbound_mtls_connections_total", &[("outcome", outcome)]).unwrap_or(0.0)
}

#[tokio::test]
async fn strict_refuses_plaintext_permissive_takes_both_and_the_wire_is_encrypted() {
    let mesh = Mesh::start(&["default/reviews", "default/sleep"], NO_RULES);
    let app = backend::start("reviews").await;
    let peer = mesh.write("peer.yaml", &peer_authentication("STRICT"));
    let reviews =
        mesh.sidecar("default/reviews", &[&peer], &["--app-addr", &app.addr.to_string(), "-l", "app=reviews"]).await;
    let tap = Tap::start(reviews.inbound.clone()).await;
    let route = mesh.write("routes.yaml", &routes(&tap.addr.to_string(), "ISTIO_MUTUAL", false));
    let sleep = mesh.sidecar("default/sleep", &[&route], &["-l", "app=sleep"]).await;

    let (status, body) = call(&sleep, "/reviews/secret-path-0451").await;
    assert_eq!(status, 200, "{body}\n{}\n{}", sleep.logs(), reviews.logs());
    assert!(body.contains("secret-path-0451"), "the app saw the request: {body}");
    let up = tap.upstream_bytes.lock().unwrap().clone();
    let down = tap.downstream_bytes.lock().unwrap().clone();
    assert_eq!(up.first(), Some(&0x16), "a TLS ClientHello first");
    let seen = |bytes: &[u8], needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!seen(&up, "secret-path-0451") && !seen(&up, "GET "), "the request is not readable on the wire");
    assert!(!seen(&down, "secret-path-0451") && !seen(&down, "HTTP/1.1"), "nor the response");

    // HTTP/2 (as gRPC travels) over the same mTLS.
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(&sleep.outbound).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("http://reviews:9080/h2/over-mtls")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("/h2/over-mtls"), "{body:?}");
    let up = tap.upstream_bytes.lock().unwrap().clone();
    assert!(!seen(&up, "over-mtls") && !seen(&up, "PRI * HTTP/2"), "HTTP/2 is not readable on the wire either");

    // STRICT: plaintext is refused and counted; the mTLS caller still gets through.
    assert!(plaintext(&reviews.inbound).await.is_err(), "plaintext to STRICT was served");
    assert!(mtls_outcomes(&reviews, "refused_plaintext").await >= 1.0);
    assert!(mtls_outcomes(&reviews, "mtls").await >= 1.0);

    // PERMISSIVE on reload: both on the same port.
    mesh.write("peer.yaml", &peer_authentication("PERMISSIVE"));
    let both = eventually(Duration::from_secs(10), || async { plaintext(&reviews.inbound).await == Ok(200) }).await;
    assert!(both, "{}", reviews.logs());
    assert_eq!(call(&sleep, "/again").await.0, 200);
}

/// Istio's mixer-rule-deny-serviceaccount (on `source.user`), and a rule on source labels
/// that a caller could only pass by forging its identity header.
const IDENTITY_RULES: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: denyserviceaccounthandler}
spec:
  compiledAdapter: denier
  params: {status: {code: 7, message: Not allowed}}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: denyrequest}
spec: {compiledTemplate: checknothing}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: denyserviceaccount}
spec:
  match: destination.labels["app"] == "reviews" && source.user == "cluster.local/ns/default/sa/sleep"
  actions: [{handler: denyserviceaccounthandler, instances: [denyrequest]}]
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: trusted-callers-only}
spec:
  match: destination.labels["app"] == "reviews" && (source.labels["app"] | "none") != "trusted" && (connection.mtls | false)
  actions: [{handler: denyserviceaccounthandler, instances: [denyrequest]}]
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: plaintext-must-not-claim}
spec:
  match: destination.labels["app"] == "reviews" && (source.labels["app"] | "none") == "trusted" && !(connection.mtls | false)
  actions: [{handler: denyserviceaccounthandler, instances: [denyrequest]}]
"#;

#[tokio::test]
async fn identity_comes_from_the_certificate_and_a_forged_header_counts_for_nothing() {
    let mesh = Mesh::start(&["default/reviews", "default/sleep", "default/trusted"], IDENTITY_RULES);
    let app = backend::start("reviews").await;
    let peer = mesh.write("peer.yaml", &peer_authentication("PERMISSIVE"));
    let reviews =
        mesh.sidecar("default/reviews", &[&peer], &["--app-addr", &app.addr.to_string(), "-l", "app=reviews"]).await;
    let route = mesh.write("routes.yaml", &routes(&reviews.inbound, "ISTIO_MUTUAL", false));
    let trusted = mesh.sidecar("default/trusted", &[&route], &["-l", "app=trusted", "--workload", "trusted"]).await;
    let sleep = mesh.sidecar("default/sleep", &[&route], &["-l", "app=trusted", "--workload", "sleep"]).await;

    let (status, trusted_body) = call(&trusted, "/reviews/1").await;
    assert_eq!(status, 200, "labels from an mTLS peer count: {trusted_body}\n{}", reviews.logs());
    let (status, body) = call(&sleep, "/reviews/1").await;
    assert_eq!(status, 403, "source.user from the certificate: {body}");
    assert!(body.contains("Not allowed"), "{body}");

    assert!(!trusted_body.contains("x-istio-attributes"), "the identity header never reaches the app: {trusted_body}");

    // The trusted sidecar's own header, replayed in plaintext: ignored, so the caller has
    // no labels, and the rule for plaintext claims does not fire either.
    let recorder = backend::start("recorder").await;
    let record = mesh.write("record.yaml", &routes(&recorder.addr.to_string(), "DISABLE", false));
    let plain_trusted =
        mesh.sidecar("default/trusted", &[&record], &["-l", "app=trusted", "--workload", "trusted"]).await;
    let (status, echoed) = call(&plain_trusted, "/capture").await;
    assert_eq!(status, 200, "{echoed}");
    let forged = echoed
        .split_whitespace()
        .find_map(|w| w.strip_prefix("x-istio-attributes="))
        .expect("the sidecar names itself")
        .to_string();
    let status = reqwest::Client::new()
        .get(format!("http://{}/reviews/1", reviews.inbound))
        .header("host", "reviews")
        .header("x-istio-attributes", forged)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 200, "a plaintext caller's claimed labels were believed");
}

#[tokio::test]
async fn certificates_renewed_every_few_seconds_under_traffic_fail_no_request() {
    let mesh = Mesh::start(&["default/reviews", "default/sleep"], NO_RULES);
    let app = backend::start("reviews").await;
    let peer = mesh.write("peer.yaml", &peer_authentication("STRICT"));
    let ttl = ["--workload-cert-ttl-secs", "5"];
    let mut args = vec!["--app-addr".to_string(), app.addr.to_string()];
    args.extend(ttl.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let reviews = mesh.sidecar("default/reviews", &[&peer], &args).await;
    // A new connection, so a new handshake, for every request.
    let route = mesh.write("routes.yaml", &routes(&reviews.inbound, "ISTIO_MUTUAL", true));
    let sleep = mesh.sidecar("default/sleep", &[&route], &ttl).await;
    let (first_client, first_server) = (certs(&sleep).await, certs(&reviews).await);
    let until = std::time::Instant::now() + Duration::from_secs(8);
    let mut served = 0;
    // The client certificates requests went out under: several, so traffic crossed renewals.
    let mut serials = std::collections::BTreeSet::new();
    while std::time::Instant::now() < until {
        let (status, body) = call(&sleep, "/rotating").await;
        assert_eq!(status, 200, "request {served}: {body}\n{}\n{}", sleep.logs(), reviews.logs());
        served += 1;
        serials.insert(certs(&sleep).await["serial"].to_string());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A debug build's handshakes are slow, more so on a loaded machine: the count only
    // shows that traffic kept flowing.
    assert!(served >= 5, "{served}");
    assert!(serials.len() >= 3, "requests under {} certificates: {serials:?}", serials.len());
    let (client, server) = (certs(&sleep).await, certs(&reviews).await);
    assert_ne!(client["serial"], first_client["serial"], "the client renewed");
    assert_ne!(server["serial"], first_server["serial"], "the server renewed");
    assert!(client["renewals"].as_u64().unwrap() >= 3, "{client}");
}

#[tokio::test]
async fn expired_and_foreign_root_certificates_are_refused_both_ways() {
    let mesh = Mesh::start(&["default/reviews", "default/sleep"], NO_RULES);
    let app = backend::start("reviews").await;
    let peer = mesh.write("peer.yaml", &peer_authentication("STRICT"));
    let reviews = mesh.sidecar("default/reviews", &[&peer], &["--app-addr", &app.addr.to_string()]).await;
    let (root, root_key) = mesh.root();
    let spiffe = "spiffe://cluster.local/ns/default/sa/sleep";
    let good = leaf(&root, &root_key, spiffe, (2025, 1, 1), (2030, 1, 1));
    assert_eq!(mtls_get(&reviews.inbound, &good, "/").await, Ok(200), "the probe itself works");
    let expired = leaf(&root, &root_key, spiffe, (2020, 1, 1), (2021, 1, 1));
    assert!(mtls_get(&reviews.inbound, &expired, "/").await.is_err(), "an expired peer was served");
    let foreign = Ca::new("not the mesh");
    let stranger = foreign.client("cluster.local/ns/default/sa/sleep");
    assert!(mtls_get(&reviews.inbound, &stranger, "/").await.is_err(), "a foreign root was served");
    let other_domain = leaf(&root, &root_key, "spiffe://evil.example/ns/default/sa/sleep", (2025, 1, 1), (2030, 1, 1));
    assert!(mtls_get(&reviews.inbound, &other_domain, "/").await.is_err(), "another trust domain was served");
    assert!(mtls_outcomes(&reviews, "refused_handshake").await >= 2.0);
    assert!(mtls_outcomes(&reviews, "refused_no_identity").await >= 1.0);
    assert_eq!(app.hits(), 1, "only the good probe reached the app");

    // Outbound: a server with a foreign root's certificate is not the destination.
    let impostor = impostor(&foreign).await;
    let route = mesh.write("routes.yaml", &routes(&impostor.to_string(), "ISTIO_MUTUAL", false));
    let sleep = mesh.sidecar("default/sleep", &[&route], &[]).await;
    let (status, body) = call(&sleep, "/").await;
    assert_eq!(status, 503, "{body}");
}

/// A TLS server presenting a certificate for the reviews identity from `ca`.
async fn impostor(ca: &Ca) -> std::net::SocketAddr {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let issued = ca.client("cluster.local/ns/default/sa/reviews");
    let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = acceptor.accept(sock).await;
        }
    });
    addr
}

#[tokio::test]
async fn without_a_certificate_istio_mutual_fails_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let route = dir.path().join("routes.yaml");
    std::fs::write(&route, routes("127.0.0.1:9", "ISTIO_MUTUAL", false)).unwrap();
    let proxy = MixrProxy::start(&[Path::new(&route)], &[]);
    let (status, body) = call(&proxy, "/").await;
    assert_eq!(status, 503);
    assert!(body.contains("no workload certificate yet"), "{body}");
}

const AUTHZ_BY_PRINCIPAL: &str = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: reviews-callers, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/productpage"]}}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: no-sleep-writes, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - from: [{source: {namespaces: ["default"], notPrincipals: ["cluster.local/ns/default/sa/productpage"]}}]
    to: [{operation: {methods: [POST]}}]
"#;

const RBAC_BY_USER: &str = r#"
apiVersion: rbac.istio.io/v1alpha1
kind: ClusterRbacConfig
metadata: {name: default}
spec: {mode: "ON"}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: viewer, namespace: default}
spec:
  rules: [{services: ["reviews.default.svc.cluster.local"], methods: [GET]}]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: sleep-views, namespace: default}
spec:
  subjects: [{user: "cluster.local/ns/default/sa/sleep"}]
  roleRef: {kind: ServiceRole, name: viewer}
"#;

#[tokio::test]
async fn authorization_decides_on_the_certificate_s_principal() {
    let mesh = Mesh::start(&["default/reviews", "default/sleep", "default/productpage"], NO_RULES);
    let app = backend::start("reviews").await;
    let peer = mesh.write("peer.yaml", &peer_authentication("PERMISSIVE"));
    let authz = mesh.write("authz.yaml", AUTHZ_BY_PRINCIPAL);
    let reviews = mesh
        .sidecar("default/reviews", &[&peer, &authz], &["--app-addr", &app.addr.to_string(), "-l", "app=reviews"])
        .await;
    let route = mesh.write("routes.yaml", &routes(&reviews.inbound, "ISTIO_MUTUAL", false));
    let productpage = mesh.sidecar("default/productpage", &[&route], &[]).await;
    let sleep = mesh.sidecar("default/sleep", &[&route], &[]).await;
    let post = |p: &MixrProxy| {
        reqwest::Client::new().post(format!("http://{}/reviews/1", p.outbound)).header("host", "reviews:9080").send()
    };
    // caller × method → status
    assert_eq!(call(&productpage, "/reviews/1").await.0, 200);
    assert_eq!(post(&productpage).await.unwrap().status(), 200);
    let (status, body) = call(&sleep, "/reviews/1").await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"), "no ALLOW rule names sleep");
    assert_eq!(post(&sleep).await.unwrap().status(), 403, "DENY: default namespace, not productpage");
    assert_eq!(plaintext(&reviews.inbound).await, Ok(403), "plaintext has no principal");

    // Istio 1.4's RBAC, on the same identities.
    mesh.write("authz.yaml", RBAC_BY_USER);
    let switched = eventually(Duration::from_secs(10), || async { call(&sleep, "/reviews/1").await.0 == 200 }).await;
    assert!(switched, "{}", reviews.logs());
    assert_eq!(call(&productpage, "/reviews/1").await.0, 403);
    assert_eq!(post(&sleep).await.unwrap().status(), 403, "the role allows GET only");
    assert_eq!(plaintext(&reviews.inbound).await, Ok(403));
}

/// An HTTPS origin with a certificate for `origin.example` from `ca`, requiring a client
/// certificate from `ca` when `mutual`; answers `tls-origin`.
async fn tls_origin(ca: &Ca, mutual: bool) -> std::net::SocketAddr {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let issued = ca.server(&["origin.example"]);
    let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = if mutual {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap()).unwrap();
        builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap(),
        )
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(chain, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(sock).await else { return };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"tls-origin"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

fn tls_route(addr: std::net::SocketAddr, tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  ports: [{{number: 9080, name: http}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]\n---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec:\n  host: reviews\n  trafficPolicy: {{tls: {tls}}}\n",
        addr.port()
    )
}

#[tokio::test]
async fn simple_and_mutual_destination_rules_use_the_files_they_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("origin CA");
    let client = ca.client("cluster.local/ns/default/sa/sleep");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (ca_file, cert_file, key_file) =
        (write("ca.pem", &ca.pem), write("client.pem", &client.cert_pem), write("client.key", &client.key_pem));
    let stranger = write("stranger.pem", &Ca::new("someone else").pem);
    let simple_origin = tls_origin(&ca, false).await;
    let mutual_origin = tls_origin(&ca, true).await;
    let cases = [
        (simple_origin, format!("{{mode: SIMPLE, caCertificates: {ca_file}, sni: origin.example}}"), 200),
        (simple_origin, format!("{{mode: SIMPLE, caCertificates: {stranger}, sni: origin.example}}"), 503),
        (simple_origin, format!("{{mode: SIMPLE, caCertificates: {ca_file}, sni: other.example}}"), 503),
        (
            mutual_origin,
            format!(
                "{{mode: MUTUAL, caCertificates: {ca_file}, clientCertificate: {cert_file}, privateKey: {key_file}, sni: origin.example}}"
            ),
            200,
        ),
        (mutual_origin, format!("{{mode: SIMPLE, caCertificates: {ca_file}, sni: origin.example}}"), 503),
    ];
    for (i, (origin, tls, want)) in cases.iter().enumerate() {
        let route = write(&format!("route{i}.yaml"), &tls_route(*origin, tls));
        let proxy = MixrProxy::start(&[Path::new(&route)], &[]);
        let (status, body) = call(&proxy, "/").await;
        assert_eq!(status, *want, "{tls}: {body}");
        if *want == 200 {
            assert_eq!(body, "tls-origin");
        }
    }
    // A file that is not there rejects the config, naming the key.
    let route = write("bad.yaml", &tls_route(simple_origin, "{mode: SIMPLE, caCertificates: /nonexistent/ca.pem}"));
    let out = std::process::Command::new(mixr_e2e::binary("mixr-proxy")).args(["validate", &route]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("spec.trafficPolicy.tls.caCertificates"), "{text}");
}
