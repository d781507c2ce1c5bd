//! `mixr logs` against stores written by the real `sqllog` adapter: a SQLite file, and the
//! PostgreSQL server at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).

use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mixr_adapters::ReportHandler;
use mixr_adapters::sqllog::{self, Params, Target};
use mixr_rules::snapshot::InstanceValues;
use mixr_rules::value::{Timestamp, Value, format_timestamp};

fn mixr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mixr")).arg("logs").args(args).output().unwrap()
}

fn stdout_lines(out: &Output) -> Vec<String> {
    assert!(out.status.success(), "mixr logs failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn entry(seconds: i64, severity: &str, user: &str, code: i64) -> InstanceValues {
    InstanceValues {
        fields: vec![
            ("severity", Value::String(severity.to_string().into())),
            ("timestamp", Value::Timestamp(Timestamp { seconds, nanos: 0 })),
        ],
        maps: vec![(
            "variables",
            vec![("user".into(), Value::String(user.to_string().into())), ("code".into(), Value::Int64(code))],
        )],
    }
}

async fn write(target: Target, instance: &str, entries: &[InstanceValues]) {
    let params = Params {
        target,
        batch_size: 100,
        flush_interval: Duration::from_secs(3600),
        queue_size: 1000,
        check_denials: false,
    };
    let log = sqllog::start(params, "test");
    log.report(instance, entries);
    log.flush().await;
    assert_eq!(log.written(), entries.len() as u64);
}

fn time(seconds: i64) -> String {
    format_timestamp(Timestamp { seconds, nanos: 0 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_filters_and_limits_sqlite_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs.db");
    let db = path.display().to_string();
    let now = now_secs();
    let old = now - 3600;
    write(
        Target::Sqlite(path.clone()),
        "accesslog.instance.istio-system",
        &[
            entry(old, "ERROR", "jason", 500),
            entry(now - 30, "INFO", "jason", 200),
            entry(now - 20, "ERROR", "jason", 503),
            entry(now - 10, "ERROR", "eve", 500),
        ],
    )
    .await;

    let all = stdout_lines(&mixr(&["--db", &db]));
    assert_eq!(
        all,
        vec![
            format!(r#"{} ERROR accesslog.instance.istio-system {{"code":500,"user":"jason"}}"#, time(old)),
            format!(r#"{} INFO accesslog.instance.istio-system {{"code":200,"user":"jason"}}"#, time(now - 30)),
            format!(r#"{} ERROR accesslog.instance.istio-system {{"code":503,"user":"jason"}}"#, time(now - 20)),
            format!(r#"{} ERROR accesslog.instance.istio-system {{"code":500,"user":"eve"}}"#, time(now - 10)),
        ]
    );

    let filtered = stdout_lines(&mixr(&[
        "--db",
        &format!("sqlite://{db}"),
        "--filter",
        r#"severity == "ERROR" && variables["user"] == "jason""#,
    ]));
    assert_eq!(filtered, vec![all[0].clone(), all[2].clone()]);

    // Variables that are not strings compare as their JSON text.
    assert_eq!(
        stdout_lines(&mixr(&["--db", &db, "--filter", r#"variables["code"] == "500""#])),
        vec![all[0].clone(), all[3].clone()]
    );

    assert_eq!(stdout_lines(&mixr(&["--db", &db, "--limit", "2"])), all[2..].to_vec());
    assert_eq!(stdout_lines(&mixr(&["--db", &db, "--since", "10m"])), all[1..].to_vec());
    assert_eq!(
        stdout_lines(&mixr(&["--db", &db, "--since", "10m", "--filter", r#"severity == "ERROR""#, "--limit", "1"])),
        vec![all[3].clone()]
    );
    // An entry without the variable a filter reads does not match.
    assert!(stdout_lines(&mixr(&["--db", &db, "--filter", r#"variables["missing"] == "x""#])).is_empty());
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db").display().to_string();

    let cases: [(&[&str], &str); 4] = [
        (&["--db", "mysql://h/d"], "--db: unknown scheme \"mysql\""),
        (&["--db", &missing], "missing.db"),
        (&["--db", &missing, "--filter", "severity == "], "--filter \"severity == \": at position"),
        (&["--db", &missing, "--filter", "nosuch == \"x\""], "--filter"),
    ];
    for (args, message) in cases {
        let out = mixr(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty());
    }
    assert!(!dir.path().join("missing.db").exists(), "a reader must not create a store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_postgres_entries() {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let instance = format!("cli-{}-{}.instance.test", std::process::id(), now_secs());
    let now = now_secs();
    write(
        Target::parse(&url, None).unwrap(),
        &instance,
        &[entry(now - 2, "WARNING", "ann", 429), entry(now - 1, "INFO", "bob", 200)],
    )
    .await;
    let filter = format!(r#"instance == "{instance}""#);
    assert_eq!(
        stdout_lines(&mixr(&["--db", &url, "--filter", &filter])),
        vec![
            format!(r#"{} WARNING {instance} {{"code":429,"user":"ann"}}"#, time(now - 2)),
            format!(r#"{} INFO {instance} {{"code":200,"user":"bob"}}"#, time(now - 1)),
        ]
    );
}
