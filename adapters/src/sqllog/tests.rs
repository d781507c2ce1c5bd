//! sqllog against real databases: a SQLite file in a temporary directory and the
//! PostgreSQL server at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`;
//! `.ci/services.sh` starts one). The table name is fixed, so PostgreSQL tests isolate
//! themselves by unique instance names and read back only their own rows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::variety::{Denial, ReportHandler};
use mixr_rules::snapshot::InstanceValues;

use mixr_rules::config::load_str;
use mixr_rules::value::{Timestamp, Value};
use serde_json::json;

use std::path::Path;

use super::*;

fn pg_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn handler_doc(file: &str, params: &str) -> Result<HandlerDoc, ConfigError> {
    let text = format!(
        "apiVersion: config.istio.io/v1alpha2\nkind: handler\nmetadata: {{name: logs}}\n\
         spec:\n  compiledAdapter: sqllog\n  params: {params}\n"
    );
    let (set, mut errors) = load_str(file, &text, "istio-system");
    if !errors.is_empty() {
        return Err(errors.remove(0));
    }
    Ok(set.handlers[0].clone())
}

fn params(params: &str) -> Result<Params, ConfigError> {
    parse(&handler_doc("/etc/mixr/logs.yaml", params)?, Some(Path::new("/var/lib/mixr")))
}

fn sqllog(params_text: &str) -> QueuedLog {
    start(params(params_text).unwrap(), "logs.istio-system")
}

/// An instance name no other test (or earlier run against the same PostgreSQL) uses.
fn unique_instance(test: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{test}-{}-{nanos}-{}.instance.test", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn instance(i: usize) -> InstanceValues {
    InstanceValues {
        fields: vec![
            ("severity", Value::String(if i.is_multiple_of(2) { "INFO" } else { "ERROR" }.into())),
            ("timestamp", Value::Timestamp(Timestamp { seconds: 1_700_000_000 + i as i64, nanos: 0 })),
            ("monitored_resource_type", Value::String("global".into())),
        ],
        maps: vec![(
            "variables",
            vec![
                ("user".into(), Value::String(format!("user{i}").into())),
                ("code".into(), Value::Int64(200 + i as i64)),
                ("ok".into(), Value::Bool(i.is_multiple_of(3))),
            ],
        )],
    }
}

fn instances(n: usize) -> Vec<InstanceValues> {
    (0..n).map(instance).collect()
}

/// Every stored entry of `instance`, in insertion order.
async fn stored(target: &Target, instance: &str) -> Vec<LogEntry> {
    const SQL: &str = "SELECT time_us, severity, instance, variables, resource_type FROM mixr_log_entries \
         WHERE instance = $1 ORDER BY id";
    macro_rules! read {
        ($pool:expr) => {{
            let rows = sqlx::query(SQL).bind(instance).fetch_all($pool).await.unwrap();
            rows.iter()
                .map(|r| {
                    use sqlx::Row;
                    let variables = match r.get::<sqlx::types::Json<serde_json::Value>, _>("variables").0 {
                        serde_json::Value::Object(m) => m,
                        other => panic!("variables are not an object: {other}"),
                    };
                    LogEntry {
                        time_us: r.get("time_us"),
                        severity: r.get("severity"),
                        instance: r.get("instance"),
                        variables,
                        resource_type: r.get("resource_type"),
                    }
                })
                .collect()
        }};
    }
    let store = Store::open(target, false).await.unwrap();
    let out = match &store {
        Store::Sqlite(p) => read!(p),
        Store::Postgres(p) => read!(p),
    };
    store.close().await;
    out
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("logs.db").display())
}

fn pg_target() -> Target {
    Target::parse(&pg_url(), None).unwrap()
}

fn sqlite_target(dir: &tempfile::TempDir) -> Target {
    Target::parse(&sqlite_url(dir), None).unwrap()
}

/// 250 entries with batches of 100: the background task writes the two full batches at
/// once and keeps the partial one for the flush interval; everything lands intact.
async fn batches_land(url: &str, target: &Target) {
    let name = unique_instance("batches");
    let log = sqllog(&format!("{{url: '{url}', batchSize: 100, flushInterval: 1h}}"));
    log.report(&name, &instances(250));
    wait_for("two full batches", || log.written() == 200).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(log.written(), 200, "the partial batch waits for the flush interval");
    assert_eq!(stored(target, &name).await.len(), 200);

    log.flush().await;
    assert_eq!((log.written(), log.dropped()), (250, 0));
    let rows = stored(target, &name).await;
    assert_eq!(rows.len(), 250);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.time_us, (1_700_000_000 + i as i64) * 1_000_000);
        assert_eq!(row.severity, if i.is_multiple_of(2) { "INFO" } else { "ERROR" });
        assert_eq!(row.instance, name);
        assert_eq!(row.resource_type.as_deref(), Some("global"));
        assert_eq!(
            serde_json::Value::Object(row.variables.clone()),
            json!({"user": format!("user{i}"), "code": 200 + i, "ok": i.is_multiple_of(3)})
        );
    }
}

/// A partial batch is written by the flush interval alone.
async fn interval_writes_partial_batch(url: &str, target: &Target) {
    let name = unique_instance("interval");
    let log = sqllog(&format!("{{url: '{url}', batchSize: 100, flushInterval: 50ms}}"));
    log.report(&name, &instances(7));
    wait_for("the interval write", || log.written() == 7).await;
    assert_eq!(stored(target, &name).await.len(), 7);
}

/// With a 1h interval only `flush` writes: entries reported just before it, including a
/// full batch the task may be writing at that moment, are all stored when it returns.
async fn flush_writes_everything(url: &str, target: &Target) {
    let name = unique_instance("flush");
    let log = sqllog(&format!("{{url: '{url}', batchSize: 100, flushInterval: 1h}}"));
    log.report(&name, &instances(30));
    log.flush().await;
    assert_eq!(stored(target, &name).await.len(), 30);

    log.report(&name, &instances(150));
    log.report(&name, &instances(3));
    log.flush().await;
    let rows = stored(target, &name).await;
    assert_eq!(rows.len(), 183);
    assert_eq!(log.written(), 183);
}

/// Denied Checks are recorded with severity DENIED when `checkDenials` is set.
async fn denials_recorded(url: &str, target: &Target) {
    let log = sqllog(&format!("{{url: '{url}', checkDenials: true}}"));
    assert!(log.wants_check_denials());
    let marker = unique_instance("denial");
    log.check_denied(&Denial {
        time: SystemTime::now(),
        code: 7,
        message: "deny.istio-system:Not allowed".into(),
        attributes: vec![("request.id".into(), marker.clone())],
    });
    log.flush().await;
    let rows = stored(target, entry::DENIAL_INSTANCE).await;
    let row = rows.iter().find(|r| r.variables.get("request.id") == Some(&json!(marker))).unwrap();
    assert_eq!(row.severity, "DENIED");
    assert_eq!(row.variables["code"], json!(7));
    assert_eq!(row.variables["message"], json!("deny.istio-system:Not allowed"));
}

#[tokio::test]
async fn sqlite_batches_land() {
    let dir = tempfile::tempdir().unwrap();
    batches_land(&sqlite_url(&dir), &sqlite_target(&dir)).await;
}

#[tokio::test]
async fn postgres_batches_land() {
    batches_land(&pg_url(), &pg_target()).await;
}

#[tokio::test]
async fn sqlite_interval_writes_partial_batch() {
    let dir = tempfile::tempdir().unwrap();
    interval_writes_partial_batch(&sqlite_url(&dir), &sqlite_target(&dir)).await;
}

#[tokio::test]
async fn postgres_interval_writes_partial_batch() {
    interval_writes_partial_batch(&pg_url(), &pg_target()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_flush_writes_everything() {
    let dir = tempfile::tempdir().unwrap();
    flush_writes_everything(&sqlite_url(&dir), &sqlite_target(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_flush_writes_everything() {
    flush_writes_everything(&pg_url(), &pg_target()).await;
}

#[tokio::test]
async fn sqlite_denials_recorded() {
    let dir = tempfile::tempdir().unwrap();
    denials_recorded(&sqlite_url(&dir), &sqlite_target(&dir)).await;
}

#[tokio::test]
async fn postgres_denials_recorded() {
    denials_recorded(&pg_url(), &pg_target()).await;
}

#[tokio::test]
async fn default_file_is_created_in_the_data_dir() {
    let config_dir = tempfile::tempdir().unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("handlers.yaml");
    let doc = handler_doc(&config.display().to_string(), "{flushInterval: 1h}").unwrap();
    let p = parse(&doc, Some(data_dir.path())).unwrap();
    let db = data_dir.path().join(DEFAULT_FILE);
    assert_eq!(p.target, Target::Sqlite(db.clone()));
    let log = start(p, "logs.istio-system");
    log.report("a.instance.ns", &instances(1));
    log.flush().await;
    assert!(db.exists());
    assert!(std::fs::read_dir(config_dir.path()).unwrap().next().is_none(), "nothing written beside the config");
    assert_eq!(stored(&Target::Sqlite(db), "a.instance.ns").await.len(), 1);
}

/// Migrations run once: a second handler on the same database finds them applied, and
/// the version table records each.
#[tokio::test]
async fn migrations_are_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let target = sqlite_target(&dir);
    for _ in 0..2 {
        let store = Store::open(&target, true).await.unwrap();
        store.migrate().await.unwrap();
        store.close().await;
    }
    let Store::Sqlite(pool) = Store::open(&target, false).await.unwrap() else { unreachable!() };
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM mixr_schema_migrations").fetch_all(&pool).await.unwrap();
    assert_eq!(versions, vec![1]);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&pool).await.unwrap();
    assert_eq!(mode, "wal");
}

/// An unreachable database: the queue holds `queueSize` entries, counts the rest as
/// dropped, and shows the count in the handler's metrics.
async fn overflow_is_counted(url: &str) {
    let log = sqllog(&format!("{{url: '{url}', queueSize: 50, batchSize: 10, flushInterval: 10ms}}"));
    log.report("o.instance.test", &instances(30));
    // Let the writer try (and fail) a few times: failing writes must not lose entries.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(log.dropped(), 0);
    log.report("o.instance.test", &instances(45));
    assert_eq!(log.dropped(), 25);
    log.report("o.instance.test", &instances(1));
    assert_eq!(log.dropped(), 26);
    assert_eq!(log.written(), 0);

    let families = log.gather();
    let value = |name: &str| {
        let f = families.iter().find(|f| f.name() == name).unwrap_or_else(|| panic!("no {name}"));
        let m = &f.get_metric()[0];
        assert_eq!(m.get_label()[0].name(), "handler");
        assert_eq!(m.get_label()[0].value(), "logs.istio-system");
        m.get_counter().get_value()
    };
    assert_eq!(value("mixr_sqllog_dropped_total"), 26.0);
    assert_eq!(value("mixr_sqllog_written_total"), 0.0);
}

#[tokio::test]
async fn overflow_counted_with_unwritable_sqlite_path() {
    overflow_is_counted("/nonexistent-mixr-dir/sub/logs.db").await;
}

#[tokio::test]
async fn overflow_counted_with_postgres_down() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    overflow_is_counted(&format!("postgres://postgres@127.0.0.1:{port}/test")).await;
}

/// Entries queued while the database is down are written once it is reachable: the
/// writer retries, and nothing is dropped or duplicated.
#[tokio::test]
async fn writes_resume_when_the_database_appears() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("later");
    let target = Target::Sqlite(sub.join("logs.db"));
    let log =
        sqllog(&format!("{{url: 'sqlite://{}', batchSize: 10, flushInterval: 20ms}}", sub.join("logs.db").display()));
    log.report("r.instance.test", &instances(25));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(log.written(), 0);
    std::fs::create_dir(&sub).unwrap();
    wait_for("the retried writes", || log.written() == 25).await;
    assert_eq!(stored(&target, "r.instance.test").await.len(), 25);
    assert_eq!(log.dropped(), 0);
}

#[test]
fn param_defaults() {
    let p = params("{}").unwrap();
    assert_eq!(
        p,
        Params {
            target: Target::Sqlite("/var/lib/mixr/mixr-logs.db".into()),
            batch_size: 100,
            flush_interval: Duration::from_secs(1),
            queue_size: 10_000,
            check_denials: false,
        }
    );
    let p = params("{url: 'postgresql://u@db/logs', batch_size: 5, queueSize: 5, flushInterval: 250ms}").unwrap();
    assert_eq!(p.target, Target::Postgres("postgresql://u@db/logs".into()));
    assert_eq!((p.batch_size, p.queue_size, p.flush_interval), (5, 5, Duration::from_millis(250)));
    assert_eq!(params("{url: relative/l.db}").unwrap().target, Target::Sqlite("/var/lib/mixr/relative/l.db".into()));
}

#[test]
fn param_errors_name_the_key() {
    let err = |p: &str| {
        let e = params(p).unwrap_err();
        (e.key, e.message)
    };
    let (key, message) = err("{url: 'mysql://h/db'}");
    assert_eq!(key, "spec.params.url");
    assert!(message.contains("unknown scheme \"mysql\""), "{message}");
    assert_eq!(err("{batchSize: 0}"), ("spec.params.batchSize".into(), "0 must be at least 1".into()));
    assert_eq!(err("{queueSize: -3}"), ("spec.params.queueSize".into(), "-3 must be at least 1".into()));
    assert_eq!(err("{batchSize: 20, queueSize: 10}").0, "spec.params.batchSize");
    assert_eq!(err("{flushInterval: 0s}"), ("spec.params.flushInterval".into(), "must be positive".into()));
    assert_eq!(err("{flushInterval: soon}").0, "spec.params.flushInterval");
    assert_eq!(err("{checkDenials: maybe}").0, "spec.params.checkDenials");
    assert_eq!(err("{tableName: x}"), ("spec.params.tableName".into(), "unknown key".into()));
    assert_eq!(err("{url: 'sqlite::memory:'}").0, "spec.params.url");
}

#[test]
fn registry_validates_through_info() {
    let doc = handler_doc("/etc/mixr/logs.yaml", "{batchSize: 0}").unwrap();
    assert!((info().validate)(&doc).is_err());
    let doc = handler_doc("/etc/mixr/logs.yaml", "{batchSize: 10}").unwrap();
    assert!((info().validate)(&doc).is_ok());
}
