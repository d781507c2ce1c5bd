//! `mixr logs`: prints recent entries of a `sqllog` store, oldest of them first, one line
//! each: `TIME SEVERITY INSTANCE {json variables}`.
//!
//! `--filter` takes a mixr expression over each entry, compiled with the same compiler as
//! rules, against these attributes: `severity`, `instance`, `resource_type` (STRING),
//! `time` (TIMESTAMP) and `variables` (STRING_MAP: each variable as text, strings bare,
//! other values as JSON). An entry for which the expression fails (a variable it does not
//! have) does not match, as a rule would not apply.
//!
//! Rows are read newest first in pages, so `--limit` stops reading early even when the
//! filter runs here rather than in SQL.

use std::borrow::Cow;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use mixr_adapters::sqllog::entry::{json_to_text, micros_to_rfc3339, micros_to_timestamp, system_micros};
use mixr_adapters::sqllog::{LogEntry, PageQuery, Store, Target};
use mixr_rules::Manifest;
use mixr_rules::bag::{Bag, Referenced};
use mixr_rules::expr::{CompileOptions, Program, compile};
use mixr_rules::value::{MapVal, StringMap, Value, ValueType};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The store: a SQLite path or URL (sqlite://...), or postgres://...
    #[arg(long)]
    db: String,
    /// Only entries at most this old (Go duration: 10m, 1h30m).
    #[arg(long, value_parser = parse_since)]
    since: Option<Duration>,
    /// Only entries for which this expression holds, e.g.
    /// 'severity == "ERROR" && variables["user"] == "jason"'.
    /// Attributes: severity, instance, resource_type, time, variables.
    #[arg(long)]
    filter: Option<String>,
    /// Print at most this many entries (the newest); 0 prints all.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

/// Rows fetched per query.
const PAGE: usize = 500;

pub async fn run(args: LogsArgs) -> ExitCode {
    match logs(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mixr logs: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn logs(args: LogsArgs) -> Result<(), String> {
    let target = Target::parse(&args.db, None).map_err(|e| format!("--db: {e}"))?;
    let filter = args.filter.as_deref().map(compile_filter).transpose()?;
    let since_us = args.since.map(|d| system_micros(SystemTime::now()).saturating_sub(micros(d)));
    let store = Store::open(&target, false).await.map_err(|e| format!("{target}: {e}"))?;
    let result = newest(&store, since_us, filter.as_ref(), args.limit).await.map_err(|e| format!("{target}: {e}"));
    store.close().await;
    print(&result?);
    Ok(())
}

/// The newest `limit` matching entries (all with 0), oldest first.
async fn newest(
    store: &Store,
    since_us: Option<i64>,
    filter: Option<&Program>,
    limit: usize,
) -> Result<Vec<LogEntry>, String> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let rows = store.page(PageQuery { since_us, before, limit: PAGE as i64 }).await.map_err(|e| e.to_string())?;
        let last_page = rows.len() < PAGE;
        for row in rows {
            before = Some((row.entry.time_us, row.id));
            if filter.is_none_or(|f| matches(f, &row.entry)) {
                out.push(row.entry);
                if out.len() == limit {
                    out.reverse();
                    return Ok(out);
                }
            }
        }
        if last_page {
            out.reverse();
            return Ok(out);
        }
    }
}

fn compile_filter(text: &str) -> Result<Program, String> {
    let mut manifest = Manifest::empty();
    for (name, ty) in [
        ("severity", ValueType::String),
        ("instance", ValueType::String),
        ("resource_type", ValueType::String),
        ("time", ValueType::Timestamp),
        ("variables", ValueType::StringMap),
    ] {
        manifest.declare(name, ty);
    }
    compile(text, Some(ValueType::Bool), CompileOptions::new(&manifest)).map_err(|e| format!("--filter {text:?}: {e}"))
}

/// Evaluates the filter on an entry; an evaluation error is no match.
fn matches(filter: &Program, e: &LogEntry) -> bool {
    let variables = StringMap::new(
        e.variables.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Owned(json_to_text(v)))).collect(),
    );
    let mut attrs = vec![
        ("severity", Value::String(Cow::Borrowed(e.severity.as_str()))),
        ("instance", Value::String(Cow::Borrowed(e.instance.as_str()))),
        ("time", Value::Timestamp(micros_to_timestamp(e.time_us))),
        ("variables", Value::StringMap(MapVal::Borrowed(&variables))),
    ];
    if let Some(r) = &e.resource_type {
        attrs.push(("resource_type", Value::String(Cow::Borrowed(r.as_str()))));
    }
    let bag = Bag::from_pairs(attrs);
    filter.eval_bool(&bag, &mut Referenced::new()).unwrap_or(false)
}

fn print(entries: &[LogEntry]) {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for e in entries {
        let vars = serde_json::Value::Object(e.variables.clone());
        // A closed pipe (`mixr logs | head`) ends the listing; it is not an error.
        if writeln!(out, "{} {} {} {vars}", micros_to_rfc3339(e.time_us), e.severity, e.instance).is_err() {
            return;
        }
    }
    let _ = out.flush();
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn parse_since(text: &str) -> Result<Duration, String> {
    mixr_rules::value::parse_duration(text)
        .filter(|d| d.as_nanos() >= 0)
        .map(|d| d.to_std())
        .ok_or_else(|| format!("{text:?} is not a duration like \"10m\""))
}
