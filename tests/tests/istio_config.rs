//! Istio 1.4's installed mixer config, served unchanged: Reports shaped like istio-proxy's
//! become the standard Prometheus series and the JSON access log; `kubernetesenv` fills in
//! workload attributes from a (stand-in) Kubernetes API; rules are scoped by namespace.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mixr_e2e::{Mixr, check_request, eventually, kube_api, precondition};
use mixr_proto::istio::mixer::v1::ReportRequest;
use mixr_proto::istio::mixer::v1::report_request::RepeatedAttributesSemantics;
use mixr_rules::bag::Encoder;
use mixr_rules::value::{Duration as Dur, MapVal, StringMap, Timestamp, Value};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/mixr/istio-1.4-mixer.yaml")
}

fn s(v: &str) -> Value<'static> {
    Value::String(Cow::Owned(v.to_string()))
}

fn ip(v: &str) -> Value<'static> {
    let addr: std::net::IpAddr = v.parse().unwrap();
    Value::Bytes(Cow::Owned(mixr_rules::value::ip_to_bytes(addr)))
}

fn map(pairs: &[(&str, &str)]) -> Value<'static> {
    let entries = pairs.iter().map(|(k, v)| (Cow::Owned(k.to_string()), Cow::Owned(v.to_string()))).collect();
    Value::StringMap(MapVal::from(StringMap::new(entries)))
}

fn ms(n: i32) -> Value<'static> {
    Value::Duration(Dur { seconds: 0, nanos: n * 1_000_000 })
}

const TIME: Timestamp = Timestamp { seconds: 1_764_000_000, nanos: 0 };

/// What an Istio 1.4 sidecar reports for one inbound HTTP request from productpage to
/// reviews-v2, over mutual TLS.
fn http_entry(user_agent: &str, code: i64) -> Vec<(&'static str, Value<'static>)> {
    vec![
        ("context.protocol", s("http")),
        ("context.reporter.kind", s("inbound")),
        ("context.reporter.uid", s("kubernetes://reviews-v2-7d79d5bd5d-8zl4m.default")),
        ("context.time", Value::Timestamp(TIME)),
        ("connection.mtls", Value::Bool(true)),
        ("connection.requested_server_name", s("outbound_.9080_._.reviews.default.svc.cluster.local")),
        ("source.uid", s("kubernetes://productpage-v1-6b746f74dc-9stvs.default")),
        ("source.principal", s("cluster.local/ns/default/sa/bookinfo-productpage")),
        ("source.ip", ip("10.44.1.7")),
        ("source.namespace", s("default")),
        ("source.workload.name", s("productpage-v1")),
        ("source.workload.namespace", s("default")),
        ("source.labels", map(&[("app", "productpage"), ("version", "v1")])),
        ("destination.uid", s("kubernetes://reviews-v2-7d79d5bd5d-8zl4m.default")),
        ("destination.principal", s("cluster.local/ns/default/sa/bookinfo-reviews")),
        ("destination.ip", ip("10.44.2.4")),
        ("destination.port", Value::Int64(9080)),
        ("destination.namespace", s("default")),
        ("destination.workload.name", s("reviews-v2")),
        ("destination.workload.namespace", s("default")),
        ("destination.labels", map(&[("app", "reviews"), ("version", "v2")])),
        ("destination.service.host", s("reviews.default.svc.cluster.local")),
        ("destination.service.name", s("reviews")),
        ("destination.service.namespace", s("default")),
        ("request.headers", map(&[(":authority", "reviews:9080"), ("x-request-id", "7f3c")])),
        ("request.host", s("reviews:9080")),
        ("request.method", s("GET")),
        ("request.path", s("/reviews/0")),
        ("request.scheme", s("http")),
        ("request.useragent", s(user_agent)),
        ("request.time", Value::Timestamp(TIME)),
        ("request.size", Value::Int64(0)),
        ("request.total_size", Value::Int64(612)),
        ("response.code", Value::Int64(code)),
        ("response.duration", ms(15)),
        ("response.size", Value::Int64(295)),
        ("response.total_size", Value::Int64(540)),
        ("response.time", Value::Timestamp(Timestamp { seconds: TIME.seconds, nanos: 15_000_000 })),
    ]
}

/// A TCP connection event from mysqldb's inbound sidecar.
fn tcp_entry(event: &str, sent: i64, received: i64) -> Vec<(&'static str, Value<'static>)> {
    vec![
        ("context.protocol", s("tcp")),
        ("context.reporter.kind", s("inbound")),
        ("context.time", Value::Timestamp(TIME)),
        ("connection.event", s(event)),
        ("connection.mtls", Value::Bool(false)),
        ("connection.sent.bytes", Value::Int64(sent)),
        ("connection.received.bytes", Value::Int64(received)),
        ("connection.sent.bytes_total", Value::Int64(sent)),
        ("connection.received.bytes_total", Value::Int64(received)),
        ("connection.duration", ms(120)),
        ("source.workload.name", s("ratings-v2-mysql")),
        ("source.workload.namespace", s("default")),
        ("destination.workload.name", s("mysqldb-v1")),
        ("destination.workload.namespace", s("default")),
        ("destination.service.host", s("mysqldb.default.svc.cluster.local")),
        ("destination.service.name", s("mysqldb")),
        ("destination.service.namespace", s("default")),
        ("destination.ip", ip("10.44.3.9")),
        ("destination.port", Value::Int64(3306)),
    ]
}

async fn report(mixr: &Mixr, entries: &[Vec<(&'static str, Value<'static>)>]) {
    let mut client = mixr.client().await;
    let mut enc = Encoder::new();
    let attributes = entries.iter().map(|e| enc.encode(e.iter().map(|(k, v)| (*k, v)))).collect();
    client
        .report(ReportRequest {
            attributes,
            default_words: enc.into_words(),
            global_word_count: Encoder::global_word_count(),
            repeated_attributes_semantics: RepeatedAttributesSemantics::IndependentEncoding as i32,
        })
        .await
        .expect("report");
}

/// The sample on `/metrics` whose name and labels are exactly these.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

const HTTP_LABELS: &str = "connection_security_policy=\"mutual_tls\",destination_app=\"reviews\",destination_principal=\"cluster.local/ns/default/sa/bookinfo-reviews\",destination_service=\"reviews.default.svc.cluster.local\",destination_service_name=\"reviews\",destination_service_namespace=\"default\",destination_version=\"v2\",destination_workload=\"reviews-v2\",destination_workload_namespace=\"default\",permissive_response_code=\"none\",permissive_response_policyid=\"none\",reporter=\"destination\",request_protocol=\"http\",response_code=\"200\",response_flags=\"-\",source_app=\"productpage\",source_principal=\"cluster.local/ns/default/sa/bookinfo-productpage\",source_version=\"v1\",source_workload=\"productpage-v1\",source_workload_namespace=\"default\"";

const TCP_LABELS: &str = "connection_security_policy=\"none\",destination_app=\"unknown\",destination_principal=\"unknown\",destination_service=\"mysqldb.default.svc.cluster.local\",destination_service_name=\"mysqldb\",destination_service_namespace=\"default\",destination_version=\"unknown\",destination_workload=\"mysqldb-v1\",destination_workload_namespace=\"default\",reporter=\"destination\",response_flags=\"-\",source_app=\"unknown\",source_principal=\"unknown\",source_version=\"unknown\",source_workload=\"ratings-v2-mysql\",source_workload_namespace=\"default\"";

/// The access log's JSON lines on mixr's stdout, once `n` have been written.
async fn access_log(mixr: &Mixr, n: usize) -> Vec<serde_json::Value> {
    let written = eventually(Duration::from_secs(10), || async { mixr.stdout_text().lines().count() >= n }).await;
    assert!(written, "{n} access log lines expected on stdout, got:\n{}", mixr.stdout_text());
    mixr.stdout_text().lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

#[tokio::test]
async fn istio_config_reports_become_the_standard_series_and_the_access_log() {
    let mixr = Mixr::start(&[&fixture()], &[]);
    report(
        &mixr,
        &[
            http_entry("Mozilla/5.0", 200),
            http_entry("Mozilla/5.0", 200),
            // Health probes are logged but kept out of the metrics (rule promhttp).
            http_entry("kube-probe/1.16", 200),
            tcp_entry("open", 0, 0),
            tcp_entry("continue", 1200, 340),
            tcp_entry("close", 800, 60),
        ],
    )
    .await;
    let (_, metrics) = mixr.http_get("/metrics").await;
    let series = |name: &str, labels: &str| sample(&metrics, &format!("{name}{{{labels}}}"));
    assert_eq!(series("istio_requests_total", HTTP_LABELS), Some(2.0), "{metrics}");
    assert_eq!(series("istio_request_duration_seconds_count", HTTP_LABELS), Some(2.0));
    assert_eq!(series("istio_request_duration_seconds_sum", HTTP_LABELS), Some(0.03));
    assert_eq!(series("istio_request_duration_seconds_bucket", &format!("{HTTP_LABELS},le=\"0.01\"")), Some(0.0));
    assert_eq!(series("istio_request_duration_seconds_bucket", &format!("{HTTP_LABELS},le=\"0.025\"")), Some(2.0));
    assert_eq!(series("istio_request_bytes_sum", HTTP_LABELS), Some(0.0));
    assert_eq!(series("istio_request_bytes_bucket", &format!("{HTTP_LABELS},le=\"1\"")), Some(2.0));
    assert_eq!(series("istio_response_bytes_sum", HTTP_LABELS), Some(590.0));
    assert_eq!(series("istio_response_bytes_bucket", &format!("{HTTP_LABELS},le=\"100\"")), Some(0.0));
    assert_eq!(series("istio_response_bytes_bucket", &format!("{HTTP_LABELS},le=\"1000\"")), Some(2.0));
    assert_eq!(series("istio_tcp_sent_bytes_total", TCP_LABELS), Some(2000.0));
    assert_eq!(series("istio_tcp_received_bytes_total", TCP_LABELS), Some(400.0));
    assert_eq!(series("istio_tcp_connections_opened_total", TCP_LABELS), Some(1.0));
    assert_eq!(series("istio_tcp_connections_closed_total", TCP_LABELS), Some(1.0));
    assert!(!metrics.contains("kube-probe"), "probes are not counted");

    let lines = access_log(&mixr, 6).await;
    let http: Vec<_> = lines.iter().filter(|l| l["instance"] == "accesslog.instance.istio-system").collect();
    let tcp: Vec<_> = lines.iter().filter(|l| l["instance"] == "tcpaccesslog.instance.istio-system").collect();
    assert_eq!((http.len(), tcp.len()), (3, 3), "{lines:#?}");
    let line = http[0];
    for (key, want) in [
        ("severity", serde_json::json!("Info")),
        ("time", serde_json::json!("2025-11-24T16:00:00Z")),
        ("method", serde_json::json!("GET")),
        ("url", serde_json::json!("/reviews/0")),
        ("responseCode", serde_json::json!(200)),
        ("latency", serde_json::json!("15ms")),
        ("sourceIp", serde_json::json!("10.44.1.7")),
        ("sourceWorkload", serde_json::json!("productpage-v1")),
        ("destinationServiceHost", serde_json::json!("reviews.default.svc.cluster.local")),
        ("httpAuthority", serde_json::json!("reviews:9080")),
        ("requestId", serde_json::json!("7f3c")),
        ("receivedBytes", serde_json::json!(612)),
        ("reporter", serde_json::json!("destination")),
        ("connection_security_policy", serde_json::json!("mutual_tls")),
        ("xForwardedFor", serde_json::json!("0.0.0.0")),
        ("responseTimestamp", serde_json::json!("2025-11-24T16:00:00.015Z")),
    ] {
        assert_eq!(line[key], want, "{key} in {line}");
    }
    assert_eq!(tcp[2]["connectionEvent"], "close");
    assert_eq!(tcp[2]["connectionDuration"], "120ms");
    assert_eq!(tcp[2]["sourceIp"], "0.0.0.0", "an absent IP takes its ip(\"0.0.0.0\") default");
    assert!(mixr.logs().contains("no Kubernetes cluster reachable"), "{}", mixr.logs());
}

/// The fixture with `kubernetesenv` pointed at a kubeconfig, as an operator running mixr
/// outside the cluster would set it.
fn fixture_with_kubeconfig(dir: &Path, kubeconfig: &Path) -> PathBuf {
    let text = std::fs::read_to_string(fixture()).unwrap();
    let from = "  compiledAdapter: kubernetesenv\n  params:\n";
    assert!(text.contains(from));
    let text = text.replace(from, &format!("{from}    kubeconfigPath: {}\n", kubeconfig.display()));
    let path = dir.join("istio.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A policy in namespace `default` that denies requests from productpage-v1: the workload
/// is known only once kubernetesenv has looked the caller's pod up.
const DENY_PRODUCTPAGE: &str = "apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: deny, namespace: default}
spec: {compiledAdapter: denier, params: {status: {code: 7, message: not from productpage}}}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: nothing, namespace: default}
spec: {compiledTemplate: checknothing}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: no-productpage, namespace: default}
spec:
  match: source.workload.name == \"productpage-v1\"
  actions: [{handler: deny, instances: [nothing]}]
";

#[tokio::test]
async fn kubernetesenv_fills_in_workloads_from_the_cluster() {
    let api = kube_api::serve(vec![
        kube_api::pod(
            "default",
            "productpage-v1-6b746f74dc-9stvs",
            "productpage-v1",
            "10.44.1.7",
            &[("app", "productpage"), ("version", "v1")],
        ),
        kube_api::pod(
            "default",
            "reviews-v2-7d79d5bd5d-8zl4m",
            "reviews-v2",
            "10.44.2.4",
            &[("app", "reviews"), ("version", "v2")],
        ),
        kube_api::pod(
            "default",
            "ratings-v1-5c9f9b6d7-qq2xt",
            "ratings-v1",
            "10.44.2.8",
            &[("app", "ratings"), ("version", "v1")],
        ),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = fixture_with_kubeconfig(dir.path(), &kube_api::kubeconfig(dir.path(), api));
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, DENY_PRODUCTPAGE).unwrap();
    let mixr = Mixr::start(&[&config, &policy], &[]);

    // What a sidecar sends when it knows only the pods' uids.
    let uids_only = |source: &str| {
        vec![
            ("context.protocol", s("http")),
            ("context.reporter.kind", s("inbound")),
            ("source.uid", s(source)),
            ("destination.uid", s("kubernetes://reviews-v2-7d79d5bd5d-8zl4m.default")),
            ("destination.port", Value::Int64(9080)),
            ("request.useragent", s("curl/8")),
            ("response.code", Value::Int64(200)),
        ]
    };
    let productpage = "kubernetes://productpage-v1-6b746f74dc-9stvs.default";
    let want = "source_app=\"productpage\",source_principal=\"unknown\",source_version=\"v1\",source_workload=\"productpage-v1\",source_workload_namespace=\"default\"}";
    let synced = eventually(Duration::from_secs(15), || async {
        report(&mixr, &[uids_only(productpage)]).await;
        let (_, metrics) = mixr.http_get("/metrics").await;
        metrics.lines().any(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("destination_workload=\"reviews-v2\"")
                && l.contains(want)
        })
    })
    .await;
    assert!(synced, "workloads never came from the pod list:\n{}\n{}", mixr.http_get("/metrics").await.1, mixr.logs());
    let (_, metrics) = mixr.http_get("/metrics").await;
    let line = metrics.lines().find(|l| l.contains(want)).unwrap();
    assert!(line.contains("destination_app=\"reviews\",") && line.contains("destination_version=\"v2\","), "{line}");

    // Check: the rule in namespace `default` applies, because kubernetesenv put the
    // destination in `default`, and denies, because it found the caller's workload.
    let mut client = mixr.client().await;
    let attrs = |source: &'static str| {
        vec![("source.uid", s(source)), ("destination.uid", s("kubernetes://reviews-v2-7d79d5bd5d-8zl4m.default"))]
    };
    let denied = client
        .check(check_request(&attrs("kubernetes://productpage-v1-6b746f74dc-9stvs.default")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(precondition(&denied), (7, "deny.default:not from productpage".to_string()));
    let allowed = client
        .check(check_request(&attrs("kubernetes://ratings-v1-5c9f9b6d7-qq2xt.default")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(precondition(&allowed).0, 0);
    // The answer depends on the uids the sidecar sent, not on attributes it never saw.
    let refs = denied.precondition.unwrap().referenced_attributes.unwrap();
    let names: Vec<String> = mixr_rules::bag::referenced::decode_referenced(&refs)
        .unwrap()
        .into_iter()
        .map(|r| r.name.into_owned())
        .collect();
    assert!(names.contains(&"source.uid".to_string()) && names.contains(&"destination.uid".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n == "source.workload.name" || n == "destination.namespace"), "{names:?}");
}

const SCOPED: &str = "apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: deny, namespace: bookinfo}
spec: {compiledAdapter: denier, params: {status: {code: 7, message: bookinfo only}}}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: nothing, namespace: bookinfo}
spec: {compiledTemplate: checknothing}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: everything, namespace: bookinfo}
spec:
  actions: [{handler: deny, instances: [nothing]}]
---
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: deny-admin}
spec: {compiledAdapter: denier, params: {status: {code: 7, message: everywhere}}}
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
  match: request.path == \"/admin\"
  actions: [{handler: deny-admin, instances: [nothing]}]
";

#[tokio::test]
async fn rules_apply_in_their_namespace_and_the_default_one_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scoped.yaml");
    std::fs::write(&path, SCOPED).unwrap();
    let mixr = Mixr::start(&[&path], &[]);
    let mut client = mixr.client().await;
    let mut code = async |attrs: &[(&str, Value<'static>)]| {
        precondition(&client.check(check_request(attrs)).await.unwrap().into_inner()).0
    };
    // Inbound (or no reporter): the destination's namespace.
    assert_eq!(code(&[("destination.namespace", s("bookinfo"))]).await, 7);
    assert_eq!(code(&[("destination.namespace", s("shop"))]).await, 0);
    assert_eq!(code(&[("context.reporter.kind", s("inbound")), ("destination.namespace", s("bookinfo"))]).await, 7);
    assert_eq!(code(&[]).await, 0, "no namespace: only the default namespace's rules");
    // Outbound: the source's namespace.
    let outbound = |src: &str, dst: &str| {
        vec![("context.reporter.kind", s("outbound")), ("source.namespace", s(src)), ("destination.namespace", s(dst))]
    };
    assert_eq!(code(&outbound("bookinfo", "shop")).await, 7);
    assert_eq!(code(&outbound("shop", "bookinfo")).await, 0);
    // The default namespace's rules apply in every namespace.
    assert_eq!(code(&[("destination.namespace", s("shop")), ("request.path", s("/admin"))]).await, 7);
}
