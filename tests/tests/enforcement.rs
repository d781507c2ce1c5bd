//! The sidecar enforcing through a real mixr: denials to HTTP, quotas from QuotaSpec, the
//! check cache, Reports reaching mixr's telemetry, and the network fail policy.

use std::path::Path;
use std::time::{Duration, Instant};

use mixr_e2e::backend;
use mixr_e2e::{Mixr, MixrProxy, eventually};

const MIXR_POLICY: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: blocked}
spec:
  compiledAdapter: listchecker
  params: {overrides: [mallory], blacklist: true}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: user}
spec: {compiledTemplate: listentry, params: {value: 'request.headers["end-user"] | "anonymous"'}}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: blocked}
spec:
  match: destination.workload.name == "productpage-v1"
  actions: [{handler: blocked, instances: [user]}]
  requestHeaderOperations:
  - {name: x-checked-by, values: ['"mixr"']}
---
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: quota}
spec:
  compiledAdapter: memquota
  params:
    quotas: [{name: requestcountquota, maxAmount: 3, validDuration: 60s}]
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: requestcountquota}
spec: {compiledTemplate: quota, params: {dimensions: {path: request.url_path}}}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: quota}
spec:
  actions: [{handler: quota, instances: [requestcountquota]}]
"#;

const PROXY_QUOTA: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: QuotaSpec
metadata: {name: request-count, namespace: default}
spec:
  rules:
  - match: [{clause: {request.url_path: {prefix: /limited}}}]
    quotas: [{quota: requestcountquota, charge: 1}]
---
apiVersion: config.istio.io/v1alpha2
kind: QuotaSpecBinding
metadata: {name: request-count, namespace: default}
spec:
  quotaSpecs: [{name: request-count, namespace: default}]
  services: [{name: productpage, namespace: default}]
"#;

async fn get(proxy: &MixrProxy, path: &str, user: Option<&str>) -> (u16, String) {
    let mut req =
        reqwest::Client::new().get(format!("http://{}{path}", proxy.inbound)).header("host", "productpage:9080");
    if let Some(u) = user {
        req = req.header("end-user", u);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn checks_quotas_cache_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let telemetry = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/examples/telemetry.yaml");
    let mixr = Mixr::start(&[&write(dir.path(), "policy.yaml", MIXR_POLICY), &telemetry], &[]);
    let app = backend::start("productpage").await;
    let proxy_cfg = write(dir.path(), "proxy.yaml", PROXY_QUOTA);
    let proxy = MixrProxy::start(
        &[&proxy_cfg],
        &[
            "--app-addr",
            &app.addr.to_string(),
            "--workload",
            "productpage-v1",
            "--mixr",
            &mixr.grpc,
            "-l",
            "app=productpage",
        ],
    );

    let (code, body) = get(&proxy, "/page", Some("jason")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("x-checked-by=mixr"), "the route directive's header operation reached the app: {body}");
    let (code, body) = get(&proxy, "/page", Some("mallory")).await;
    assert_eq!((code, body.as_str()), (403, "PERMISSION_DENIED:blocked.istio-system:mallory is blacklisted"));
    assert_eq!(app.hits(), 1, "a denied request never reaches the app");

    // The same user again: answered from the cache (the answer referenced only the header).
    for _ in 0..3 {
        assert_eq!(get(&proxy, "/other", Some("jason")).await.0, 200);
    }
    let stats = reqwest::get(format!("http://{}/metrics", proxy.stats)).await.unwrap().text().await.unwrap();
    assert!(stats.contains("mixr_proxy_check_cache_total{result=\"hit\"} 3"), "{stats}");

    // Quotas are asked per request: 3 per minute on /limited, exactly.
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(get(&proxy, "/limited", Some("jason")).await);
    }
    assert_eq!(codes.iter().map(|c| c.0).collect::<Vec<_>>(), vec![200, 200, 200, 429, 429]);
    assert_eq!(codes[3].1, "RESOURCE_EXHAUSTED:Quota is exhausted for: requestcountquota");

    // Reports arrive in mixr's telemetry within the 1 s batching window.
    let reported = eventually(Duration::from_secs(10), || async {
        mixr.metric("mixr_report_entries_total{api=\"mixer\"}").await.unwrap_or(0.0) >= 10.0
    })
    .await;
    assert!(reported, "reports never reached mixr");
    let labels = [
        ("destination_service", "productpage"),
        ("reporter", "destination"),
        ("request_protocol", "http"),
        ("response_code", "429"),
        ("source_workload", "unknown"),
    ];
    let denied = mixr.metric_where("istio_requests_total", &labels).await;
    assert_eq!(denied, Some(2.0));
}

#[tokio::test]
async fn fail_policy_when_mixr_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let app = backend::start("app").await;
    let cfg = write(dir.path(), "proxy.yaml", "");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let closed = MixrProxy::start(
        &[&cfg],
        &["--app-addr", &app.addr.to_string(), "--mixr", &dead.to_string(), "--check-timeout-ms", "300"],
    );
    let open = MixrProxy::start(
        &[&cfg],
        &["--app-addr", &app.addr.to_string(), "--mixr", &dead.to_string(), "--check-timeout-ms", "300", "--fail-open"],
    );
    let t = Instant::now();
    let (code, body) = get(&closed, "/", None).await;
    assert_eq!((code, body.as_str()), (503, "UNAVAILABLE:mixr is unavailable"));
    assert!(t.elapsed() < Duration::from_millis(1500), "decided within the timeout: {:?}", t.elapsed());
    let (code, _) = get(&open, "/", None).await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn the_callers_identity_travels_between_sidecars_over_mtls_only() {
    let policy = r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: only-productpage}
spec:
  compiledAdapter: listchecker
  params: {overrides: [productpage-v1]}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: caller}
spec: {compiledTemplate: listentry, params: {value: 'source.workload.name | "unknown"'}}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: callers}
spec:
  actions: [{handler: only-productpage, instances: [caller]}]
"#;
    let mesh = mixr_e2e::mesh::Mesh::start(&["default/reviews", "default/productpage", "default/ratings"], policy);
    let app = backend::start("reviews").await;
    let empty = mesh.write("empty.yaml", "");
    // The callee's sidecar (inbound) in front of the reviews app.
    let reviews = mesh
        .sidecar("default/reviews", &[&empty], &["--app-addr", &app.addr.to_string(), "--workload", "reviews-v1"])
        .await;
    let inbound_port = reviews.inbound.rsplit(':').next().unwrap().to_string();
    let routes = |tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  ports: [{{number: 9080, name: http}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {inbound_port}}}}}]\n---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec: {{host: reviews, trafficPolicy: {{tls: {{mode: {tls}}}}}}}\n"
        )
    };
    let mutual = mesh.write("mutual.yaml", &routes("ISTIO_MUTUAL"));
    let plain = mesh.write("plain.yaml", &routes("DISABLE"));
    let call = |proxy: &MixrProxy| {
        reqwest::Client::new().get(format!("http://{}/reviews/1", proxy.outbound)).header("host", "reviews:9080").send()
    };
    // Callers' sidecars (outbound): productpage is allowed, ratings is not.
    let productpage = mesh.sidecar("default/productpage", &[&mutual], &["--workload", "productpage-v1"]).await;
    let ratings = mesh.sidecar("default/ratings", &[&mutual], &["--workload", "ratings-v1"]).await;
    let ok = call(&productpage).await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let body = ok.text().await.unwrap();
    assert!(!body.contains("x-istio-attributes"), "the identity header is not passed to the app: {body}");
    let denied = call(&ratings).await.unwrap();
    assert_eq!(denied.status().as_u16(), 403);
    assert_eq!(
        denied.text().await.unwrap(),
        "PERMISSION_DENIED:only-productpage.istio-system:ratings-v1 is not whitelisted"
    );
    // In plaintext the same sidecar's word is not taken: the caller is unknown.
    let unproven = mesh.sidecar("default/productpage", &[&plain], &["--workload", "productpage-v1"]).await;
    let denied = call(&unproven).await.unwrap();
    assert_eq!(denied.status().as_u16(), 403);
    assert_eq!(
        denied.text().await.unwrap(),
        "PERMISSION_DENIED:only-productpage.istio-system:unknown is not whitelisted"
    );
}
