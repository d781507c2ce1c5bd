//! Authorization in the sidecar, before the Check: AuthorizationPolicy and RBAC decide on
//! real requests through `mixr-proxy`, denials answer 403 without reaching the app, are
//! counted, reach mixr's telemetry with the deciding policy's name, and follow reloads.

use std::path::Path;
use std::time::Duration;

use mixr_e2e::{Mixr, MixrProxy, backend, eventually, sum_series};

const POLICIES: &str = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - to: [{operation: {methods: [GET], paths: ["/reviews/*"]}}]
  - when: [{key: "request.headers[x-role]", values: [admin]}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: no-debug, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/reviews/debug*"]}}]
"#;

const RBAC_ONLY_JASON: &str = r#"
apiVersion: rbac.istio.io/v1alpha1
kind: ClusterRbacConfig
metadata: {name: default}
spec: {mode: "ON"}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: viewer, namespace: bookinfo}
spec:
  rules: [{services: ["reviews.bookinfo.svc.cluster.local"], methods: [GET]}]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: jason-views, namespace: bookinfo}
spec:
  subjects: [{user: "*", properties: {"request.headers[end-user]": jason}}]
  roleRef: {kind: ServiceRole, name: viewer}
"#;

/// mixr counts requests by the policy that denied them, from the sidecar's Reports.
const TELEMETRY: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: authzcount}
spec:
  compiledTemplate: metric
  params:
    value: "1"
    dimensions:
      policy: rbac.effective_policy_id | "none"
      response_code: response.code | 0
---
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: prom}
spec:
  compiledAdapter: prometheus
  params:
    metrics:
    - {name: authz_requests_total, instanceName: authzcount.instance.istio-system, kind: COUNTER, labelNames: [policy, response_code]}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: authz}
spec:
  actions: [{handler: prom, instances: [authzcount]}]
"#;

async fn send(proxy: &MixrProxy, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("http://{}{path}", proxy.inbound))
        .header("host", "reviews:9080");
    for (k, v) in headers {
        req = req.header(*k, *v);
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
async fn policies_decide_before_the_check_and_denials_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mixr = Mixr::start(&[&write(dir.path(), "telemetry.yaml", TELEMETRY)], &[]);
    let app = backend::start("reviews").await;
    let config = dir.path().join("sidecar");
    std::fs::create_dir(&config).unwrap();
    write(&config, "authz.yaml", POLICIES);
    let proxy = MixrProxy::start(
        &[&config],
        &["--app-addr", &app.addr.to_string(), "--mixr", &mixr.grpc, "-l", "app=reviews", "--namespace", "bookinfo"],
    );

    assert_eq!(send(&proxy, "GET", "/reviews/1", &[]).await.0, 200);
    assert_eq!(send(&proxy, "DELETE", "/reviews/1", &[]).await, (403, "RBAC: access denied".into()));
    assert_eq!(send(&proxy, "DELETE", "/reviews/1", &[("x-role", "admin")]).await.0, 200);
    // DENY wins over the admin's ALLOW; the path is decided after normalization and
    // without its query, so neither a dot segment nor a query walks past it.
    for path in ["/reviews/debug", "/reviews/./debug/vars", "/reviews/x/../debug?a=b"] {
        assert_eq!(send(&proxy, "GET", path, &[("x-role", "admin")]).await.0, 403, "{path}");
    }
    assert_eq!(app.hits(), 2, "denied requests never reach the app");

    let stats = reqwest::get(format!("http://{}/metrics", proxy.stats)).await.unwrap().text().await.unwrap();
    let denied = |policy: &str| sum_series(&stats, "mixr_proxy_authz_denied_total", &[("policy", policy)]);
    assert_eq!(denied("istio-system/no-debug"), Some(3.0), "{stats}");
    assert_eq!(denied("no ALLOW policy matched"), Some(1.0), "{stats}");

    let reported = eventually(Duration::from_secs(10), || async {
        mixr.metric_where(
            "istio_authz_requests_total",
            &[("policy", "istio-system/no-debug"), ("response_code", "403")],
        )
        .await
            == Some(3.0)
    })
    .await;
    assert!(reported, "denials reach mixr with their policy: {}", mixr.http_get("/metrics").await.1);
    assert_eq!(
        mixr.metric_where("istio_authz_requests_total", &[("policy", "none"), ("response_code", "200")]).await,
        Some(2.0)
    );

    // RBAC instead: v1beta1 gone, ClusterRbacConfig on; only jason may GET.
    std::fs::remove_file(config.join("authz.yaml")).unwrap();
    write(&config, "rbac.yaml", RBAC_ONLY_JASON);
    let switched =
        eventually(Duration::from_secs(10), || async { send(&proxy, "GET", "/reviews/1", &[]).await.0 == 403 }).await;
    assert!(switched, "the RBAC config never applied: {}", proxy.logs());
    assert_eq!(send(&proxy, "GET", "/reviews/1", &[("end-user", "jason")]).await.0, 200);
    assert_eq!(send(&proxy, "POST", "/reviews/1", &[("end-user", "jason")]).await.0, 403);
}

#[tokio::test]
async fn a_bad_policy_is_rejected_and_the_last_good_one_keeps_deciding() {
    let dir = tempfile::tempdir().unwrap();
    let app = backend::start("reviews").await;
    let config = dir.path().join("sidecar");
    std::fs::create_dir(&config).unwrap();
    let file = write(&config, "authz.yaml", POLICIES);
    let proxy = MixrProxy::start(
        &[&config],
        &["--app-addr", &app.addr.to_string(), "-l", "app=reviews", "--namespace", "bookinfo"],
    );
    assert_eq!(send(&proxy, "DELETE", "/reviews/1", &[]).await.0, 403);
    std::fs::write(&file, POLICIES.replace("action: DENY", "action: AUDIT")).unwrap();
    let rejected =
        eventually(Duration::from_secs(10), || async { proxy.logs().contains("\"AUDIT\": expected ALLOW or DENY") })
            .await;
    assert!(rejected, "{}", proxy.logs());
    assert!(proxy.logs().contains("authz.yaml"), "the error names the file: {}", proxy.logs());
    assert_eq!(send(&proxy, "DELETE", "/reviews/1", &[]).await.0, 403, "the last good policy still decides");
    assert_eq!(send(&proxy, "GET", "/reviews/debug", &[("x-role", "admin")]).await.0, 403);
}
