//! Traces end to end against a real OTLP/gRPC receiver (opentelemetry-proto's
//! TraceService, served in the test): server spans continue the caller's W3C trace with a
//! child per adapter call, and tracespan Reports become spans with the proxy's ids.

use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mixr_e2e::{Mixr, check_request};
use mixr_proto::istio::mixer::v1::ReportRequest;
use mixr_proto::istio::mixer::v1::report_request::RepeatedAttributesSemantics;
use mixr_rules::bag::Encoder;
use mixr_rules::value::{MapVal, StringMap, Timestamp, Value};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;

#[derive(Default, Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn receiver() -> (Receiver, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r = Receiver::default();
    let svc = TraceServiceServer::new(r.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    (r, format!("http://{addr}"))
}

const POLICY: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: deny}
spec: {compiledAdapter: denier, params: {status: {code: 7, message: no}}}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: nothing}
spec: {compiledTemplate: checknothing}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: deny}
spec:
  match: request.path == "/forbidden"
  actions: [{handler: deny, instances: [nothing]}]
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: span}
spec:
  compiledTemplate: tracespan
  params:
    traceId: request.headers["x-b3-traceid"]
    spanId: request.headers["x-b3-spanid"]
    parentSpanId: request.headers["x-b3-parentspanid"] | ""
    spanName: request.path | "/"
    startTime: request.time
    endTime: response.time
    clientSpan: (context.reporter.kind | "inbound") == "outbound"
    sourceName: source.workload.name | "unknown"
    destinationName: destination.workload.name | "unknown"
    httpStatusCode: response.code | 0
    spanTags:
      http.method: request.method | ""
      user: request.headers["end-user"] | "anonymous"
---
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: jaeger}
spec: {compiledAdapter: tracing}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: spans}
spec:
  match: (request.headers["x-b3-traceid"] | "") != ""
  actions: [{handler: jaeger, instances: [span]}]
"#;

async fn wait_for(r: &Receiver, pred: impl Fn(&[(String, Span)]) -> bool) -> Vec<(String, Span)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let spans = r.spans.lock().unwrap().clone();
        if pred(&spans) {
            return spans;
        }
        assert!(Instant::now() < deadline, "spans never arrived; got {spans:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn server_spans_continue_the_callers_trace() {
    let (recv, endpoint) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, POLICY).unwrap();
    let mixr = Mixr::start(&[Path::new(&path)], &["--otlp-endpoint", &endpoint]);
    let mut client = mixr.client().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut req = tonic::Request::new(check_request(&[("request.path", Value::String(Cow::Borrowed("/forbidden")))]));
    req.metadata_mut().insert("traceparent", format!("00-{trace_id}-{caller_span}-01").parse().unwrap());
    let resp = client.check(req).await.unwrap().into_inner();
    assert_eq!(resp.precondition.unwrap().status.unwrap().code, 7);

    let spans = wait_for(&recv, |s| s.iter().any(|(_, sp)| sp.name.starts_with("check "))).await;
    let server = spans.iter().find(|(_, s)| s.name == "istio.mixer.v1.Mixer/Check").expect("server span").1.clone();
    assert_eq!(hex(&server.trace_id), trace_id, "continues the caller's trace");
    assert_eq!(hex(&server.parent_span_id), caller_span, "child of the caller's span");
    let (service, adapter) =
        spans.iter().find(|(_, s)| s.name == "check deny.istio-system").expect("adapter span").clone();
    assert_eq!(service, "mixr");
    assert_eq!(adapter.parent_span_id, server.span_id, "adapter call is a child of the server span");
    assert_eq!(adapter.trace_id, server.trace_id);
}

#[tokio::test]
async fn tracespan_reports_become_spans() {
    let (recv, endpoint) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, POLICY).unwrap();
    // The endpoint reaches the tracing adapter as the server's default.
    let mixr = Mixr::start(&[Path::new(&path)], &["--otlp-endpoint", &endpoint]);
    let mut client = mixr.client().await;
    let headers = Value::StringMap(MapVal::from(StringMap::new(vec![
        ("x-b3-traceid".into(), "80f198ee56343ba864fe8b2a57d3eff7".into()),
        ("x-b3-spanid".into(), "e457b5a2e4d86bd1".into()),
        ("x-b3-parentspanid".into(), "05e3ac9a4f6e3b90".into()),
        ("end-user".into(), "jason".into()),
    ])));
    let attrs = [
        ("request.headers", headers),
        ("request.path", Value::String("/reviews/0".into())),
        ("request.method", Value::String("GET".into())),
        ("request.time", Value::Timestamp(Timestamp { seconds: 1_700_000_000, nanos: 0 })),
        ("response.time", Value::Timestamp(Timestamp { seconds: 1_700_000_000, nanos: 7_000_000 })),
        ("response.code", Value::Int64(200)),
        ("destination.workload.name", Value::String("reviews-v2".into())),
    ];
    let mut enc = Encoder::new();
    let entry = enc.encode(attrs.iter().map(|(k, v)| (*k, v)));
    client
        .report(ReportRequest {
            attributes: vec![entry],
            default_words: enc.into_words(),
            global_word_count: Encoder::global_word_count(),
            repeated_attributes_semantics: RepeatedAttributesSemantics::IndependentEncoding as i32,
        })
        .await
        .unwrap();
    let spans = wait_for(&recv, |s| s.iter().any(|(_, sp)| sp.name == "/reviews/0")).await;
    let (service, span) = spans.iter().find(|(_, s)| s.name == "/reviews/0").unwrap().clone();
    assert_eq!(service, "reviews-v2");
    assert_eq!(hex(&span.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(hex(&span.span_id), "e457b5a2e4d86bd1");
    assert_eq!(hex(&span.parent_span_id), "05e3ac9a4f6e3b90");
    assert_eq!(span.end_time_unix_nano - span.start_time_unix_nano, 7_000_000);
    let attr =
        |k: &str| span.attributes.iter().find(|kv| kv.key == k).and_then(|kv| kv.value.clone()).and_then(|v| v.value);
    assert_eq!(attr("user"), Some(any_value::Value::StringValue("jason".into())));
    assert_eq!(attr("http.method"), Some(any_value::Value::StringValue("GET".into())));
    assert_eq!(attr("http.status_code"), Some(any_value::Value::IntValue(200)));
}

#[tokio::test]
async fn the_sidecar_spans_each_request_and_propagates_its_trace() {
    let (recv, endpoint) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    let mixr = Mixr::start(&[Path::new(&empty)], &["--otlp-endpoint", &endpoint]);
    let app = mixr_e2e::backend::start("app").await;
    let proxy = mixr_e2e::MixrProxy::start(
        &[Path::new(&empty)],
        &[
            "--app-addr",
            &app.addr.to_string(),
            "--mixr",
            &mixr.grpc,
            "--otlp-endpoint",
            &endpoint,
            "--workload",
            "productpage-v1",
        ],
    );
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let body = reqwest::Client::new()
        .get(format!("http://{}/products", proxy.inbound))
        .header("host", "productpage:9080")
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // The app's parent is the sidecar's span, in the caller's trace.
    let seen = body.split_whitespace().find_map(|w| w.strip_prefix("traceparent=")).expect("app saw a traceparent");
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", trace_id, "01"), "{seen}");
    let proxy_span = parts[2].to_string();
    assert_ne!(proxy_span, caller_span, "the sidecar's own span goes upstream");

    let spans = wait_for(&recv, |s| {
        let in_trace = |name: &str| s.iter().any(|(_, sp)| sp.name == name && hex(&sp.trace_id) == trace_id);
        in_trace("inbound productpage:9080")
            && in_trace("istio.mixer.v1.Mixer/Check")
            && in_trace("istio.mixer.v1.Mixer/Report")
    })
    .await;
    let find = |name: &str| spans.iter().find(|(_, s)| s.name == name && hex(&s.trace_id) == trace_id).unwrap();
    let (service, span) = find("inbound productpage:9080");
    assert_eq!(service, "productpage-v1");
    assert_eq!(hex(&span.span_id), proxy_span);
    assert_eq!(hex(&span.parent_span_id), caller_span, "child of the caller's span");
    let code = span.attributes.iter().find(|kv| kv.key == "http.response.status_code").and_then(|kv| kv.value.clone());
    assert_eq!(code.and_then(|v| v.value), Some(any_value::Value::IntValue(200)));
    // Check and Report reached mixr with the sidecar's span as their parent.
    for rpc in ["istio.mixer.v1.Mixer/Check", "istio.mixer.v1.Mixer/Report"] {
        assert_eq!(hex(&find(rpc).1.parent_span_id), proxy_span, "{rpc}");
    }
}
