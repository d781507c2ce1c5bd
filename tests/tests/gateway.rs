//! `mixr-proxy --role gateway` end to end: Gateway servers become listeners, VirtualServices
//! bound to the gateway route its traffic (and only theirs), TLS is terminated with real
//! handshakes (SNI, ALPN, MUTUAL, reloaded certificates), plain HTTP redirects to HTTPS,
//! and Istio's ingress policies (deny-ip, ingress-denial) apply through mixr.

use mixr_bookinfo::gateway::DENY_IP;
use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use mixr_e2e::backend;
use mixr_e2e::gateway::{Ca, MixrGateway, https_get, tls_connect, write_file};
use mixr_e2e::{Mixr, MixrProxy, eventually};

fn services(productpage: u16, reviews: u16) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: productpage}}
spec:
  hosts: [productpage]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {productpage}}}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {reviews}}}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews}}
"#
    )
}

/// Shaped like Istio's bookinfo-gateway.yaml (its VirtualService binds to the gateway).
const BOOKINFO_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: bookinfo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 81, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: bookinfo}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - match:
    - uri: {exact: /productpage}
    - uri: {prefix: /static}
    - uri: {exact: /login}
    - uri: {exact: /logout}
    - uri: {prefix: /api/v1/products}
    route:
    - destination: {host: productpage, port: {number: 9080}}
"#;

async fn http_get(addr: std::net::SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let location = resp.headers().get("location").map(|l| l.to_str().unwrap().to_string());
    let body = resp.text().await.unwrap();
    (status, location.map_or(body, |l| format!("location={l}")))
}

#[tokio::test]
async fn a_gateway_serves_the_routes_bound_to_it_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let productpage = backend::start("productpage").await;
    let reviews = backend::start("reviews").await;
    std::fs::write(dir.path().join("services.yaml"), services(productpage.port(), reviews.port())).unwrap();
    std::fs::write(dir.path().join("gateway.yaml"), BOOKINFO_GATEWAY).unwrap();
    let gw = MixrGateway::start(&[dir.path()], &[80], &["-l", "istio=ingressgateway"]);
    let http = gw.addr(80);
    assert!(gw.port(81).is_none(), "a Gateway that selects other labels opens no port here");

    for path in ["/productpage", "/static/x.css", "/login", "/logout", "/api/v1/products/0"] {
        let (code, body) = http_get(http, "bookinfo.example.com", path, &[]).await;
        assert_eq!(code, 200, "{path}: {body}");
        assert!(body.starts_with(&format!("productpage path={path} ")), "{body}");
    }
    assert_eq!(http_get(http, "bookinfo.example.com", "/other", &[]).await.0, 404);
    // The mesh's VirtualService for reviews is not the gateway's: `*` took the host, and
    // its routes do not match.
    let (code, body) = http_get(http, "reviews", "/reviews/0", &[]).await;
    assert_eq!((code, body.as_str()), (404, "no route (NR)\n"));
    assert_eq!(reviews.hits(), 0);
    // A literal `*` names no host.
    assert_eq!(http_get(http, "*", "/productpage", &[]).await.0, 404);
    // The gateway is the source: the callee's sidecar learns it from x-istio-attributes,
    // never from a client.
    let forged = [("x-istio-attributes", "Zm9yZ2Vk")];
    let (_, body) = http_get(http, "bookinfo.example.com", "/productpage", &forged).await;
    assert!(!body.contains("Zm9yZ2Vk"), "{body}");
    assert!(body.contains("x-forwarded-for=127.0.0.1") && body.contains("x-forwarded-proto=http"), "{body}");

    // HTTP2 and GRPC servers: h2c with prior knowledge on the plain port.
    let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req =
        hyper::Request::get("http://bookinfo.example.com/productpage").body(Empty::<bytes::Bytes>::new()).unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).starts_with("productpage path=/productpage "));

    // A sidecar with the same files applies the mesh's routes only.
    let sidecar = MixrProxy::start(&[dir.path()], &[]);
    let resp = reqwest::Client::new()
        .get(format!("http://{}/reviews/0", sidecar.outbound))
        .header("host", "reviews")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = reqwest::Client::new()
        .get(format!("http://{}/productpage", sidecar.outbound))
        .header("host", "bookinfo.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404, "a VirtualService bound to a gateway is not the mesh's");

    // A Gateway edited to another port: the old port closes, the new one opens.
    std::fs::write(dir.path().join("gateway.yaml"), BOOKINFO_GATEWAY.replace("number: 80,", "number: 8080,")).unwrap();
    assert!(eventually(Duration::from_secs(10), || async { gw.port(8080).is_some() && gw.port(80).is_none() }).await);
    assert_eq!(http_get(gw.addr(8080), "bookinfo.example.com", "/productpage", &[]).await.0, 200);
}

fn tls_gateway(dir: &Path, mode_secure: &str) -> String {
    let d = dir.display();
    format!(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: bookinfo-gateway}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["bookinfo.example.com"]
    tls: {{httpsRedirect: true}}
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["bookinfo.example.com"]
    tls: {{mode: SIMPLE, serverCertificate: {d}/bookinfo.crt, privateKey: {d}/bookinfo.key}}
  - port: {{number: 443, name: https-secure, protocol: HTTPS}}
    hosts: ["secure.example.com"]
    tls: {{mode: {mode_secure}, serverCertificate: {d}/secure.crt, privateKey: {d}/secure.key, caCertificates: {d}/ca.crt}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: bookinfo}}
spec:
  hosts: ["*.example.com"]
  gateways: [bookinfo-gateway]
  http:
  - route:
    - destination: {{host: productpage}}
"#
    )
}

fn leaf_der(pem: &str) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

#[tokio::test]
async fn https_is_terminated_by_sni_with_alpn_mutual_tls_redirects_and_reloaded_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let bookinfo = ca.server(&["bookinfo.example.com"]);
    let secure = ca.server(&["secure.example.com"]);
    write_file(dir.path(), "ca.crt", &ca.pem);
    write_file(dir.path(), "bookinfo.crt", &bookinfo.cert_pem);
    write_file(dir.path(), "bookinfo.key", &bookinfo.key_pem);
    write_file(dir.path(), "secure.crt", &secure.cert_pem);
    write_file(dir.path(), "secure.key", &secure.key_pem);
    let productpage = backend::start("productpage").await;
    let cfg = tempfile::tempdir().unwrap();
    std::fs::write(cfg.path().join("services.yaml"), services(productpage.port(), productpage.port())).unwrap();
    std::fs::write(cfg.path().join("gateway.yaml"), tls_gateway(dir.path(), "MUTUAL")).unwrap();
    let gw = MixrGateway::start(&[cfg.path()], &[80, 443], &["-l", "istio=ingressgateway"]);
    let https = gw.addr(443);

    // SNI picks the server and its certificate; ALPN offers h2 and http/1.1.
    let a = https_get(
        https,
        "bookinfo.example.com",
        "bookinfo.example.com",
        "/productpage",
        &ca.pem,
        None,
        &["h2", "http/1.1"],
        &[],
    )
    .await
    .unwrap();
    assert_eq!((a.status, a.alpn.as_deref()), (200, Some("h2")), "{}", a.body);
    assert!(a.body.contains("x-forwarded-proto=https"), "{}", a.body);
    assert_eq!(a.server_cert, leaf_der(&bookinfo.cert_pem));
    let a = https_get(https, "bookinfo.example.com", "bookinfo.example.com", "/x", &ca.pem, None, &["http/1.1"], &[])
        .await
        .unwrap();
    assert_eq!((a.status, a.alpn.as_deref()), (200, Some("http/1.1")));
    // A Host the SNI's server does not take has no route there.
    let a = https_get(https, "bookinfo.example.com", "other.example.com", "/x", &ca.pem, None, &["http/1.1"], &[])
        .await
        .unwrap();
    assert_eq!(a.status, 404);
    // No server for the SNI: no handshake.
    assert!(https_get(https, "nobody.example.org", "nobody.example.org", "/", &ca.pem, None, &[], &[]).await.is_err());

    // MUTUAL: no client certificate, no exchange; one from the CA is let in.
    assert!(
        https_get(https, "secure.example.com", "secure.example.com", "/", &ca.pem, None, &["http/1.1"], &[])
            .await
            .is_err(),
        "a MUTUAL server wants a client certificate"
    );
    let other_ca = Ca::new("other ca");
    let stranger = other_ca.client("cluster.local/ns/x/sa/stranger");
    assert!(
        https_get(https, "secure.example.com", "secure.example.com", "/", &ca.pem, Some(&stranger), &["http/1.1"], &[])
            .await
            .is_err(),
        "a client certificate from another CA is refused"
    );
    let client = ca.client("cluster.local/ns/default/sa/sleep");
    let a = https_get(https, "secure.example.com", "secure.example.com", "/s", &ca.pem, Some(&client), &["h2"], &[])
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.server_cert, leaf_der(&secure.cert_pem));

    // The plain port redirects to HTTPS.
    let (code, location) = http_get(gw.addr(80), "bookinfo.example.com:80", "/productpage?u=1", &[]).await;
    assert_eq!((code, location.as_str()), (301, "location=https://bookinfo.example.com/productpage?u=1"));

    // New certificate files: new connections get them, a connection open before keeps going.
    let held = tls_connect(https, "bookinfo.example.com", &ca.pem, None, &["http/1.1"]).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(held)).await.unwrap();
    tokio::spawn(conn);
    let get = |path: &str| {
        hyper::Request::get(path).header("host", "bookinfo.example.com").body(Empty::<bytes::Bytes>::new()).unwrap()
    };
    assert_eq!(send.send_request(get("/before")).await.unwrap().status(), 200);
    let renewed = ca.server(&["bookinfo.example.com"]);
    write_file(dir.path(), "bookinfo.key", &renewed.key_pem);
    write_file(dir.path(), "bookinfo.crt", &renewed.cert_pem);
    let reloaded = eventually(Duration::from_secs(10), || async {
        https_get(https, "bookinfo.example.com", "bookinfo.example.com", "/", &ca.pem, None, &[], &[])
            .await
            .is_ok_and(|a| a.server_cert == leaf_der(&renewed.cert_pem))
    })
    .await;
    assert!(reloaded, "new certificates served: {}", gw.logs());
    let resp = send.send_request(get("/after")).await.unwrap();
    assert_eq!(resp.status(), 200, "the connection made before the reload still serves");
    let _ = resp.into_body().collect().await;

    // A bad key: that server keeps its last good certificates, the error is logged and counted.
    write_file(dir.path(), "bookinfo.key", "not a key");
    assert!(
        eventually(Duration::from_secs(10), || async {
            gw.logs().contains("privateKey") && gw.logs().contains("the last good certificates stay")
        })
        .await,
        "{}",
        gw.logs()
    );
    let a =
        https_get(https, "bookinfo.example.com", "bookinfo.example.com", "/", &ca.pem, None, &[], &[]).await.unwrap();
    assert_eq!((a.status, a.server_cert), (200, leaf_der(&renewed.cert_pem)));
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("mixr_proxy_gateway_tls_load_failures_total{gateway=\"istio-system/bookinfo-gateway\"} 1"),
        "{metrics}"
    );
    // No server for the SNI, no client certificate, one from another CA.
    assert!(metrics.contains("mixr_proxy_gateway_tls_handshake_failures_total 3"), "{metrics}");
}

/// Shaped like Istio's mixer-rule-ingress-denial.yaml: requests through the ingress
/// gateway to productpage are denied for the user john; and, for MUTUAL clients, one
/// principal is denied.
const INGRESS_DENIAL: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: denyproductpagehandler}
spec:
  compiledAdapter: denier
  params:
    status: {code: 7, message: Not allowed}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: denyproductpagerequest}
spec:
  compiledTemplate: checknothing
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: denyproductpage}
spec:
  match: source.labels["istio"] == "ingressgateway" && destination.service.name == "productpage" && request.headers["x-user"] == "john" && context.reporter.kind == "outbound"
  actions:
  - handler: denyproductpagehandler
    instances: [denyproductpagerequest]
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: denyprincipal}
spec:
  match: source.principal == "cluster.local/ns/default/sa/blocked" && connection.mtls
  actions:
  - handler: denyproductpagehandler
    instances: [denyproductpagerequest]
"#;

#[tokio::test]
async fn istio_ingress_policies_apply_at_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let productpage = backend::start("productpage").await;
    let cfg = dir.path().join("cfg");
    std::fs::create_dir(&cfg).unwrap();
    std::fs::write(cfg.join("services.yaml"), services(productpage.port(), productpage.port())).unwrap();
    std::fs::write(cfg.join("gateway.yaml"), BOOKINFO_GATEWAY).unwrap();
    let deny_ip = Mixr::start(&[&write_file(dir.path(), "deny-ip.yaml", DENY_IP)], &[]);
    let labels = ["-l", "istio=ingressgateway", "-l", "app=istio-ingressgateway"];

    // The client's own address, X-Forwarded-For ignored: 127.0.0.1 is not whitelisted.
    let untrusting = MixrGateway::start(&[&cfg], &[80], &[&labels[..], &["--mixr", &deny_ip.grpc]].concat());
    let xff = [("x-forwarded-for", "10.57.1.1")];
    let (code, body) = http_get(untrusting.addr(80), "bookinfo.example.com", "/productpage", &xff).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.starts_with("PERMISSION_DENIED:whitelistip.istio-system:127.0.0.1 is not whitelisted"), "{body}");
    // One trusted hop in front: the address it saw is the client.
    let trusting =
        MixrGateway::start(&[&cfg], &[80], &[&labels[..], &["--mixr", &deny_ip.grpc, "--trusted-hops", "1"]].concat());
    let (code, body) = http_get(trusting.addr(80), "bookinfo.example.com", "/productpage", &xff).await;
    assert_eq!(code, 200, "{body}");
    let spoofed = [("x-forwarded-for", "10.57.1.1, 192.168.1.1")];
    let (code, body) = http_get(trusting.addr(80), "bookinfo.example.com", "/productpage", &spoofed).await;
    assert_eq!(code, 403, "only the nearest hop is trusted: {body}");
    assert!(body.contains("192.168.1.1 is not whitelisted"), "{body}");

    // Ingress denial, on HTTPS with client certificates.
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let server = ca.server(&["bookinfo.example.com", "secure.example.com"]);
    write_file(certs.path(), "ca.crt", &ca.pem);
    for name in ["bookinfo", "secure"] {
        write_file(certs.path(), &format!("{name}.crt"), &server.cert_pem);
        write_file(certs.path(), &format!("{name}.key"), &server.key_pem);
    }
    let tls_cfg = dir.path().join("tls");
    std::fs::create_dir(&tls_cfg).unwrap();
    std::fs::write(tls_cfg.join("services.yaml"), services(productpage.port(), productpage.port())).unwrap();
    std::fs::write(tls_cfg.join("gateway.yaml"), tls_gateway(certs.path(), "MUTUAL")).unwrap();
    let denial = Mixr::start(&[&write_file(dir.path(), "ingress-denial.yaml", INGRESS_DENIAL)], &[]);
    let gw = MixrGateway::start(&[&tls_cfg], &[443], &[&labels[..], &["--mixr", &denial.grpc]].concat());
    let https = gw.addr(443);
    let get = |sni: &'static str, client, user: &'static str| {
        let ca = ca.pem.clone();
        async move {
            https_get(https, sni, sni, "/productpage", &ca, client, &["http/1.1"], &[("x-user", user)]).await.unwrap()
        }
    };
    let hits = productpage.hits();
    let a = get("bookinfo.example.com", None, "john").await;
    assert_eq!((a.status, a.body.as_str()), (403, "PERMISSION_DENIED:denyproductpagehandler.istio-system:Not allowed"));
    assert_eq!(get("bookinfo.example.com", None, "testuser").await.status, 200);
    let sleep = ca.client("cluster.local/ns/default/sa/sleep");
    let blocked = ca.client("cluster.local/ns/default/sa/blocked");
    assert_eq!(get("secure.example.com", Some(&sleep), "testuser").await.status, 200);
    let a = get("secure.example.com", Some(&blocked), "testuser").await;
    assert_eq!(a.status, 403, "the client certificate's identity is source.principal: {}", a.body);
    assert_eq!(productpage.hits(), hits + 2, "denied requests never reach the service");
}

#[tokio::test]
async fn dns_service_entries_are_resolved_and_failures_counted() {
    let dir = tempfile::tempdir().unwrap();
    let app = backend::start("external").await;
    let port = app.port();
    let config = format!(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: external}}
spec:
  hosts: [external.example.com]
  ports: [{{number: 80, name: http}}]
  resolution: DNS
  endpoints: [{{address: localhost, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: nowhere}}
spec:
  hosts: [nowhere.invalid]
  ports: [{{number: {port}, name: http}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: external}}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - match: [{{uri: {{prefix: /nowhere}}}}]
    route: [{{destination: {{host: nowhere.invalid}}}}]
  - route: [{{destination: {{host: external.example.com}}}}]
"#
    );
    std::fs::write(dir.path().join("dns.yaml"), config).unwrap();
    let gw = MixrGateway::start(&[dir.path()], &[80], &["-l", "istio=ingressgateway"]);
    let http = gw.addr(80);
    // The name is looked up off the request path, and the config loaded again with its
    // address: generations 1 and 2 are the start's (sidecar, then gateway role), 3 the lookup's.
    let resolved = eventually(Duration::from_secs(10), || async {
        let dump = reqwest::get(format!("http://{}/config_dump", gw.admin)).await.unwrap().text().await.unwrap();
        serde_json::from_str::<serde_json::Value>(&dump).unwrap()["generation"] == 3
    })
    .await;
    let (code, body) = http_get(http, "external.example.com", "/x", &[]).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("external path=/x"), "{body}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            gw.metrics().await.contains("mixr_proxy_dns_failures_total{host=\"nowhere.invalid\"}")
        })
        .await,
        "{}",
        gw.metrics().await
    );
    assert_ne!(http_get(http, "external.example.com", "/nowhere", &[]).await.0, 200);
    let dump = reqwest::get(format!("http://{}/config_dump", gw.admin)).await.unwrap().text().await.unwrap();
    assert!(resolved, "{dump}");
}
