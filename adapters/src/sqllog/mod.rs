//! `sqllog`: `logentry` instances written in batches to SQLite or PostgreSQL, read back
//! with `mixr logs`.
//!
//! Params (defaults): `url` (`mixr-logs.db` in mixr's data directory, `--data-dir`;
//! `sqlite://PATH`, a bare path, or `postgres://...`; relative paths are relative to the
//! data directory, never the config's: a config directory may be read-only, as a
//! Kubernetes ConfigMap mount is), `batchSize` (100 rows per transaction), `flushInterval` (1s: whatever is
//! queued is written at least this often), `queueSize` (10000 entries held in memory),
//! `checkDenials` (false: when true, denied Checks are recorded with severity DENIED).
//!
//! `report()` never waits for the database: entries go to a bounded queue ([`queue`]) that
//! a background task writes out. A full queue drops entries and counts them
//! (`mixr_sqllog_dropped_total{handler}`); an unreachable database is retried with backoff
//! while entries stay queued; `flush()` (shutdown) writes everything queued.
//!
//! Stored per entry: time (the instance's `timestamp`, else the time of the report),
//! severity (else INFO), instance name, variables as a JSON object, and monitored resource
//! type. (`monitored_resource_dimensions` is not stored.)

pub mod entry;
pub mod queue;
pub mod store;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

use mixr_rules::config::{ConfigError, HandlerDoc};
use mixr_rules::templates::Template;

pub use entry::LogEntry;
pub use queue::{LogQueue, QueueConfig, QueuedLog, Sink};
pub use store::{PageQuery, Store, StoredEntry, Target};

use crate::params;
use crate::registry::{AdapterInfo, BuildContext, Handler};
use crate::variety::BoxFuture;

pub fn info() -> AdapterInfo {
    AdapterInfo {
        name: "sqllog",
        templates: &[Template::LogEntry],
        validate: |doc| parse(doc, None).map(drop),
        validate_instances: None,
        build,
    }
}

/// The SQLite file used when `url` is not given, in the data directory.
pub const DEFAULT_FILE: &str = "mixr-logs.db";

#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub target: Target,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub queue_size: usize,
    pub check_denials: bool,
}

/// Reads and checks the params; relative SQLite paths are resolved against `data_dir`
/// when given. Pure: nothing is opened or connected.
pub fn parse(doc: &HandlerDoc, data_dir: Option<&Path>) -> Result<Params, ConfigError> {
    let o = doc.params().obj()?;
    let target = o
        .get("url", |p| Target::parse(&p.text()?, data_dir).map_err(|e| p.error(e)))?
        .unwrap_or_else(|| Target::Sqlite(data_dir.unwrap_or(Path::new("")).join(DEFAULT_FILE)));
    let positive = |p: mixr_rules::config::Param<'_>| -> Result<usize, ConfigError> {
        let n = p.i64()?;
        usize::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| p.error(format!("{n} must be at least 1")))
    };
    let batch_size = o.get("batchSize", positive)?.unwrap_or(100);
    let queue_size = o.get("queueSize", positive)?.unwrap_or(10_000);
    if batch_size > queue_size {
        return Err(ConfigError::new(&doc.loc, o.child_path("batchSize"), "must not exceed queueSize"));
    }
    let flush_interval = o.get("flushInterval", params::duration)?.unwrap_or(Duration::from_secs(1));
    if flush_interval.is_zero() {
        return Err(ConfigError::new(&doc.loc, o.child_path("flushInterval"), "must be positive"));
    }
    let check_denials = o.get("checkDenials", |p| p.bool())?.unwrap_or(false);
    o.finish()?;
    Ok(Params { target, batch_size, flush_interval, queue_size, check_denials })
}

fn build(doc: &HandlerDoc, ctx: &BuildContext) -> Result<Handler, ConfigError> {
    let log = start(parse(doc, Some(&ctx.data_dir))?, &doc.display_name());
    Ok(Handler { check: None, quota: None, report: Some(std::sync::Arc::new(log)), generator: None })
}

/// Starts a sqllog handler's writer (inside a tokio runtime). Connecting is left to the
/// writer: a database that is down at start delays entries, not the config.
pub fn start(params: Params, handler: &str) -> QueuedLog {
    tracing::debug!(handler, target = %params.target, "sqllog handler");
    let cfg = QueueConfig {
        adapter: "sqllog",
        handler: handler.to_string(),
        capacity: params.queue_size,
        batch_size: params.batch_size,
        flush_interval: params.flush_interval,
    };
    let sink = SqlSink { target: params.target, store: None };
    QueuedLog::new(LogQueue::start(cfg, Box::new(sink)), params.check_denials)
}

/// Writes batches to the store, connecting (and migrating) on first use and again after
/// a failed connect.
struct SqlSink {
    target: Target,
    store: Option<Store>,
}

impl SqlSink {
    async fn connect(&self) -> Result<Store, String> {
        let store = Store::open(&self.target, true).await.map_err(|e| format!("{}: {e}", self.target))?;
        if let Err(e) = store.migrate().await {
            store.close().await;
            return Err(format!("{}: creating the schema: {e}", self.target));
        }
        tracing::info!(target = %self.target, "sqllog connected");
        Ok(store)
    }
}

impl Sink for SqlSink {
    fn write<'a>(&'a mut self, batch: &'a [LogEntry]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let store = match &self.store {
                Some(s) => s,
                None => self.store.insert(self.connect().await?),
            };
            store.insert(batch).await.map_err(|e| format!("{}: {e}", self.target))
        })
    }
}
