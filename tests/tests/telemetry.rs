//! Telemetry end to end: Reports become Prometheus series on /metrics that pass promtool
//! and that a real Prometheus server scrapes and answers queries about.

use std::borrow::Cow;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mixr_e2e::Mixr;
use mixr_proto::istio::mixer::v1::ReportRequest;
use mixr_proto::istio::mixer::v1::report_request::RepeatedAttributesSemantics;
use mixr_rules::bag::Encoder;
use mixr_rules::value::{Duration as Dur, Value};

fn sample_telemetry() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/examples/telemetry.yaml")
}

fn s(v: &str) -> Value<'static> {
    Value::String(Cow::Owned(v.to_string()))
}

async fn send_reports(mixr: &Mixr, n: usize) {
    let mut client = mixr.client().await;
    let mut enc = Encoder::new();
    let entries = (0..n)
        .map(|i| {
            let attrs = [
                ("context.protocol", s("http")),
                ("context.reporter.kind", s("inbound")),
                ("source.workload.name", s("productpage-v1")),
                ("destination.service.host", s("reviews.default.svc.cluster.local")),
                ("response.code", Value::Int64(if i % 10 == 0 { 503 } else { 200 })),
                ("response.duration", Value::Duration(Dur { seconds: 0, nanos: 20_000_000 })),
                ("request.size", Value::Int64(512)),
            ];
            enc.encode(attrs.iter().map(|(k, v)| (*k, v)))
        })
        .collect();
    client
        .report(ReportRequest {
            attributes: entries,
            default_words: enc.into_words(),
            global_word_count: Encoder::global_word_count(),
            repeated_attributes_semantics: RepeatedAttributesSemantics::IndependentEncoding as i32,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn reports_become_prometheus_series() {
    let mixr = Mixr::start(&[&sample_telemetry()], &[]);
    send_reports(&mixr, 20).await;
    let reviews = ("destination_service", "reviews.default.svc.cluster.local");
    let ok = [
        reviews,
        ("reporter", "destination"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("source_workload", "productpage-v1"),
    ];
    assert_eq!(mixr.metric_where("istio_requests_total", &ok).await, Some(18.0));
    assert_eq!(
        mixr.metric("istio_double_requests_total{destination_service=\"reviews.default.svc.cluster.local\",reporter=\"destination\"}").await,
        Some(20.0)
    );
    assert_eq!(
        mixr.metric_where(
            "istio_request_duration_seconds_bucket",
            &[reviews, ("response_code", "503"), ("le", "0.025")]
        )
        .await,
        Some(2.0)
    );
    assert_eq!(mixr.metric_where("istio_request_bytes_sum", &[reviews]).await, Some(10240.0));
    // mixr's own series sit beside them.
    assert_eq!(mixr.metric("mixr_report_entries_total{api=\"mixer\"}").await, Some(20.0));
    assert!(
        mixr.metric("mixr_adapter_calls_total{handler=\"prometheus.istio-system\",result=\"ok\",variety=\"report\"}")
            .await
            .is_some()
    );

    let (_, body) = mixr.http_get("/metrics").await;
    for process in ["process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"] {
        assert!(mixr_e2e::sum_series(&body, process, &[]).is_some_and(|v| v > 0.0), "{process}: {body}");
    }
    match mixr_e2e::promtool_lint(&body) {
        Ok(true) => {}
        Ok(false) => eprintln!("promtool not installed: exposition lint skipped (CI installs it)"),
        Err(e) => panic!("promtool check metrics failed:\n{e}"),
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_mixr() {
    if Command::new("prometheus").arg("--version").output().is_err() {
        eprintln!("prometheus not installed: skipped (CI installs it)");
        return;
    }
    let mixr = Mixr::start(&[&sample_telemetry()], &[]);
    send_reports(&mixr, 7).await;
    let dir = tempfile::tempdir().unwrap();
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global: {{scrape_interval: 1s}}\nscrape_configs:\n- job_name: mixr\n  static_configs:\n  - targets: ['{}']\n", mixr.monitoring),
    )
    .unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let query = format!("http://{web}/api/v1/query?query=sum(istio_requests_total)");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = String::new();
    let value = loop {
        if let Ok(resp) = reqwest::get(&query).await {
            last = resp.text().await.unwrap_or_default();
            if let Some(v) = last.split("\"value\":[").nth(1).and_then(|r| r.split('"').nth(1)) {
                break v.to_string();
            }
        }
        if Instant::now() > deadline {
            let _ = prom.kill();
            panic!("prometheus never answered with a value; last answer: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let _ = prom.kill();
    let _ = prom.wait();
    assert_eq!(value, "7");
}
