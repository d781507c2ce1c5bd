//! The `mixr-proxy` command line: `validate`'s errors and warnings (and the same warnings
//! logged at load), `probe` for container health checks, JSON logs, and the stats port's
//! names (its own series, Prometheus-clean, with the process's figures).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mixr_e2e::{MixrProxy, binary, sum_series};

fn proxy(args: &[&str]) -> Output {
    Command::new(binary("mixr-proxy")).args(args).output().expect("run mixr-proxy")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn compose_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/proxy")
}

/// A route to a subset nobody defined, and a VirtualService for a host nobody defined.
const DANGLING: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews]
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v2}}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: nowhere}
spec:
  hosts: [nowhere.example.com]
  http:
  - route: [{destination: {host: reviews}}]
";

#[test]
fn validate_prints_errors_and_warnings_with_distinct_exit_codes() {
    let clean = proxy(&["validate", compose_config().to_str().unwrap()]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    assert!(text(&clean).starts_with("ok: 1 VirtualService(s)"), "{}", text(&clean));

    let dir = tempfile::tempdir().unwrap();
    let dangling = dir.path().join("dangling.yaml");
    std::fs::write(&dangling, DANGLING).unwrap();
    let warned = proxy(&["validate", dangling.to_str().unwrap()]);
    let out = text(&warned);
    assert_eq!(warned.status.code(), Some(2), "{out}");
    assert!(
        out.contains(
            "warning: VirtualService default/reviews: http[0].route[0].destination: routes to subset v2 of host \
             reviews, which no DestinationRule defines"
        ),
        "{out}"
    );
    assert!(out.contains("warning: VirtualService default/nowhere: hosts: no ServiceEntry defines"), "{out}");
    assert!(out.contains("2 warning(s)"), "{out}");

    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: x}\nspec: {hots: [a]}\n",
    )
    .unwrap();
    let failed = proxy(&["validate", broken.to_str().unwrap()]);
    let out = text(&failed);
    assert_eq!(failed.status.code(), Some(1), "{out}");
    assert!(out.contains("error: ") && out.contains("broken.yaml") && out.contains("hots"), "{out}");
}

#[tokio::test]
async fn probe_json_logs_warnings_at_load_and_stats_names() {
    let dir = tempfile::tempdir().unwrap();
    let dangling = dir.path().join("dangling.yaml");
    std::fs::write(&dangling, DANGLING).unwrap();
    let sidecar = MixrProxy::start(&[&dangling], &["--log-format", "json"]);

    let ready = proxy(&["probe", &format!("http://{}/ready", sidecar.admin)]);
    assert_eq!(ready.status.code(), Some(0), "{}", text(&ready));
    let missing = proxy(&["probe", &format!("http://{}/nowhere", sidecar.admin)]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing).contains("HTTP 404"), "{}", text(&missing));
    let down = proxy(&["probe", "--timeout-ms", "2000", "http://127.0.0.1:1/ready"]);
    assert_eq!(down.status.code(), Some(1));
    assert!(text(&down).contains("cannot connect to 127.0.0.1:1"), "{}", text(&down));

    // The load logged validate's warnings, one flat JSON object a line.
    let logs = sidecar.logs();
    let lines: Vec<serde_json::Value> =
        logs.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    for line in &lines {
        assert!(line["ts"].is_string() && line["level"].is_string() && line["msg"].is_string(), "{line}");
    }
    let warnings: Vec<&str> =
        lines.iter().filter(|l| l["level"] == "warn").filter_map(|l| l["warning"].as_str()).collect();
    assert_eq!(warnings.len(), 2, "{logs}");
    assert!(warnings[0].contains("routes to subset v2 of host reviews"), "{warnings:?}");

    // A request through the sidecar lands in its own series, in seconds; Istio's names are
    // mixr's alone.
    let mut conn = tokio::net::TcpStream::connect(&sidecar.outbound).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET / HTTP/1.1\r\nHost: unknown.example\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 404"), "{}", String::from_utf8_lossy(&answer));
    let stats = reqwest::get(format!("http://{}/metrics", sidecar.stats)).await.unwrap().text().await.unwrap();
    assert_eq!(sum_series(&stats, "mixr_proxy_requests_total", &[("response_code", "404")]), Some(1.0), "{stats}");
    assert_eq!(sum_series(&stats, "mixr_proxy_request_duration_seconds_count", &[]), Some(1.0), "{stats}");
    assert!(!stats.contains("istio_"), "{stats}");
    // CPU seconds may still be 0 this early; the rest cannot be.
    assert!(sum_series(&stats, "process_cpu_seconds_total", &[]).is_some(), "{stats}");
    for process in ["process_resident_memory_bytes", "process_open_fds"] {
        assert!(sum_series(&stats, process, &[]).is_some_and(|v| v > 0.0), "{process}: {stats}");
    }
    assert!(sum_series(&stats, "process_start_time_seconds", &[]).is_some_and(|v| v > 1.7e9), "{stats}");
    match mixr_e2e::promtool_lint(&stats) {
        Ok(true) => {}
        Ok(false) => eprintln!("promtool not installed: exposition lint skipped (CI installs it)"),
        Err(e) => panic!("promtool check metrics failed on the sidecar's stats:\n{e}"),
    }
}
