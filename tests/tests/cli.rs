//! The `mixr` command line against a real server: exit codes, `report`'s times, `probe`,
//! log formats, startup errors, and reports dropped for want of an attribute.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use mixr_e2e::{Mixr, binary, eventually};

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/examples")
}

fn mixr(args: &[&str]) -> Output {
    Command::new(binary("mixr")).args(args).output().expect("run mixr")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn check_exit_codes_say_allowed_denied_or_short() {
    let mixr_server = Mixr::start(&[&sample()], &[]);
    let server = mixr_server.grpc.as_str();
    let ok = mixr(&["check", "-s", server, "-a", "destination.labels=app:details", "-a", "source.ip=10.57.1.1"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let denied = mixr(&["check", "-s", server, "-a", "request.headers=end-user:Eve"]);
    assert_eq!(denied.status.code(), Some(2), "{}", text(&denied));
    let args = ["check", "-s", server, "-a", "destination.service.name=ratings", "-q", "requestcountquota=3"];
    assert_eq!(mixr(&args).status.code(), Some(0));
    let short = mixr(&args);
    assert_eq!(short.status.code(), Some(3), "5 per 10 s: 3 then 2 of 3: {}", text(&short));
    let refused = mixr(&["check", "-s", "127.0.0.1:1", "-a", "request.path=/"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused).contains("cannot connect to 127.0.0.1:1"), "{}", text(&refused));
    let help = text(&mixr(&["check", "--help"]));
    assert!(help.contains("2 denied") && help.contains("3 a quota granted less than asked"), "{help}");
}

#[tokio::test]
async fn report_fills_in_times_and_entries_that_cannot_be_built_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mixr_server = Mixr::start(&[&sample()], &["--data-dir", data.to_str().unwrap()]);
    let server = mixr_server.grpc.as_str();
    let out = mixr(&["report", "-s", server, "-a", "request.path=/books", "-a", "response.code=200"]);
    assert!(out.status.success(), "{}", text(&out));
    // The sample access log is keyed on request.time: the entry lands in the log store in
    // the data directory, not beside the config.
    let db = data.join("mixr-logs.db");
    let found = eventually(Duration::from_secs(10), || async {
        let out = mixr(&["logs", "--db", db.to_str().unwrap()]);
        String::from_utf8_lossy(&out.stdout).contains("/books")
    })
    .await;
    assert!(found, "the report's access log entry: {}", text(&mixr(&["logs", "--db", db.to_str().unwrap()])));
    assert!(!sample().join("mixr-logs.db").exists());

    // Without request.time the access log entry cannot be built: said once, naming both.
    let mut client = mixr_server.client().await;
    let mut enc = mixr_rules::bag::Encoder::new();
    let attrs = [("request.path", mixr_rules::value::Value::String("/x".into()))];
    let entry = enc.encode(attrs.iter().map(|(k, v)| (*k, v)));
    let words = enc.into_words();
    for _ in 0..3 {
        client
            .report(mixr_proto::istio::mixer::v1::ReportRequest {
                attributes: vec![entry.clone()],
                default_words: words.clone(),
                global_word_count: mixr_rules::bag::Encoder::global_word_count(),
                repeated_attributes_semantics: 1,
            })
            .await
            .unwrap();
    }
    let logs = mixr_server.logs();
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("report entry dropped")).collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(
        warnings[0].contains("accesslog.instance.istio-system") && warnings[0].contains("request.time"),
        "{}",
        warnings[0]
    );
}

#[tokio::test]
async fn probe_answers_for_container_health_checks() {
    let mixr_server = Mixr::start(&[&sample()], &[]);
    let base = format!("http://{}", mixr_server.monitoring);
    assert_eq!(mixr(&["probe", &format!("{base}/readyz")]).status.code(), Some(0));
    let missing = mixr(&["probe", &format!("{base}/nowhere")]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing).contains("HTTP 404"), "{}", text(&missing));
    let down = mixr(&["probe", "--timeout", "2s", "http://127.0.0.1:1/readyz"]);
    assert_eq!(down.status.code(), Some(1));
    assert!(text(&down).contains("cannot connect to 127.0.0.1:1"));
}

#[test]
fn logs_are_plain_or_flat_json_and_a_bad_config_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: rule\nmetadata: {name: r}\nspec: {matc: 'a =='}\n").unwrap();
    let serve = |format: &str| {
        mixr(&[
            "serve",
            "--log-format",
            format,
            "--grpc-addr=127.0.0.1:0",
            "--monitoring-addr=127.0.0.1:0",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--config",
            bad.to_str().unwrap(),
        ])
    };
    let out = serve("text");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains('\u{1b}'), "no colour codes when not on a terminal: {stderr:?}");
    assert_eq!(stderr.matches("unknown key (did you mean match?)").count(), 1, "{stderr}");

    let out = serve("json");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<serde_json::Value> =
        stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(line["ts"].is_string() && line["level"].is_string() && line["msg"].is_string(), "{line}");
    }
    let errors: Vec<_> = lines.iter().filter(|l| l["error"].as_str().is_some_and(|e| e.contains("bad.yaml"))).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(stderr.starts_with("{\"ts\":"), "{stderr}");
}
