//! `stdio`: `logentry` instances as lines on stdout, stderr or appended to a file, like
//! Mixer's stdio adapter.
//!
//! Params (defaults): `logStream` (STDOUT; STDERR, or FILE which needs `outputPath`),
//! `outputPath` (a file to append to; implies FILE; relative paths are relative to mixr's
//! data directory, `--data-dir`), `outputAsJson` (true: one JSON object a line; false: Mixer's
//! console form, `TIME<tab>SEVERITY<tab>INSTANCE<tab>{variables as JSON}`), and
//! `checkDenials` (false: when true, denied Checks are written with severity DENIED).
//!
//! Each entry is one line: `{"time", "severity", "instance", "resourceType" (when set),
//! then each variable as a top-level key}`; a variable named like one of those first keys
//! is written as `variables.NAME` rather than shadowing it.
//!
//! `report()` never writes itself: a slow terminal or disk must not hold up Report calls.
//! Entries go through the same bounded queue as `sqllog` (`mixr_stdio_dropped_total` counts
//! what did not fit) and a background task writes them; `flush()` writes what is queued.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mixr_rules::config::{ConfigError, HandlerDoc};
use mixr_rules::templates::Template;
use serde_json::Value as Json;
use tokio::io::AsyncWriteExt;

use crate::registry::{AdapterInfo, BuildContext, Handler};
use crate::sqllog::{LogEntry, LogQueue, QueueConfig, QueuedLog, Sink};
use crate::variety::BoxFuture;

pub fn info() -> AdapterInfo {
    AdapterInfo {
        name: "stdio",
        templates: &[Template::LogEntry],
        validate: |doc| parse(doc, None).map(drop),
        validate_instances: None,
        build,
    }
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub output: Output,
    pub check_denials: bool,
    pub json: bool,
}

/// Entries held in memory while the output is slow; then they are dropped and counted.
const QUEUE_SIZE: usize = 10_000;
const BATCH_SIZE: usize = 256;
/// How long a line may wait in the queue: short, since people watch these.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Keys every line starts with; variables of these names are renamed.
const FIXED_KEYS: [&str; 4] = ["time", "severity", "instance", "resourceType"];

/// Reads and checks the params; a relative `outputPath` is resolved against `data_dir`
/// when given. Pure: nothing is opened.
pub fn parse(doc: &HandlerDoc, data_dir: Option<&Path>) -> Result<Params, ConfigError> {
    let o = doc.params().obj()?;
    let stream = o.get("logStream", |p| {
        let s = p.text()?;
        match s.as_str() {
            "STDOUT" | "STDERR" | "FILE" => Ok((s, p.path().to_string())),
            _ => Err(p.error(format!("unknown log stream {s:?} (STDOUT, STDERR or FILE)"))),
        }
    })?;
    let path = o.get("outputPath", |p| {
        let text = p.text()?;
        if text.is_empty() {
            return Err(p.error("must not be empty"));
        }
        let path = Path::new(&text);
        Ok(match data_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        })
    })?;
    let json = o.get("outputAsJson", |p| p.bool())?.unwrap_or(true);
    let check_denials = o.get("checkDenials", |p| p.bool())?.unwrap_or(false);
    let output = match (stream, path) {
        (None, None) => Output::Stdout,
        (None, Some(path)) => Output::File(path),
        (Some((s, _)), None) if s == "STDOUT" => Output::Stdout,
        (Some((s, _)), None) if s == "STDERR" => Output::Stderr,
        (Some((_, key)), None) => return Err(ConfigError::new(&doc.loc, key, "FILE needs outputPath")),
        (Some((s, _)), Some(path)) if s == "FILE" => Output::File(path),
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(&doc.loc, o.child_path("outputPath"), "only applies to logStream FILE"));
        }
    };
    o.finish()?;
    Ok(Params { output, check_denials, json })
}

fn build(doc: &HandlerDoc, ctx: &BuildContext) -> Result<Handler, ConfigError> {
    let log = start(parse(doc, Some(&ctx.data_dir))?, &doc.display_name());
    Ok(Handler { check: None, quota: None, report: Some(Arc::new(log)), generator: None })
}

/// Starts a stdio handler's writer.
pub fn start(params: Params, handler: &str) -> QueuedLog {
    let cfg = QueueConfig {
        adapter: "stdio",
        handler: handler.to_string(),
        capacity: QUEUE_SIZE,
        batch_size: BATCH_SIZE,
        flush_interval: FLUSH_INTERVAL,
    };
    let render = if params.json { render_line } else { render_console_line };
    let sink = LineSink { output: params.output, file: None, render };
    QueuedLog::new(LogQueue::start(cfg, Box::new(sink)), params.check_denials)
}

/// One entry as a JSON line (with its newline).
pub fn render_line(e: &LogEntry) -> String {
    let mut out = String::from("{");
    let mut field = |key: &str, value: &Json| {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&Json::String(key.to_string()).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    };
    field("time", &Json::String(e.time_text()));
    field("severity", &Json::String(e.severity.clone()));
    field("instance", &Json::String(e.instance.clone()));
    if let Some(r) = &e.resource_type {
        field("resourceType", &Json::String(r.clone()));
    }
    for (k, v) in &e.variables {
        if FIXED_KEYS.contains(&k.as_str()) {
            field(&format!("variables.{k}"), v);
        } else {
            field(k, v);
        }
    }
    out.push_str("}\n");
    out
}

/// One entry in Mixer's console form (with its newline).
pub fn render_console_line(e: &LogEntry) -> String {
    format!("{}\t{}\t{}\t{}\n", e.time_text(), e.severity, e.instance, Json::Object(e.variables.clone()))
}

/// Writes lines to the output; the file is opened (for appending) on first use and again
/// after a failure.
struct LineSink {
    output: Output,
    file: Option<tokio::fs::File>,
    render: fn(&LogEntry) -> String,
}

impl LineSink {
    async fn write_all(&mut self, text: String) -> std::io::Result<()> {
        match &self.output {
            // std's handles on a blocking thread (what tokio's own stdout does): the
            // async runtime must not wait on a slow terminal or pipe.
            Output::Stdout | Output::Stderr => {
                let stderr = self.output == Output::Stderr;
                let write = move || -> std::io::Result<()> {
                    use std::io::Write;
                    if stderr {
                        let mut out = std::io::stderr().lock();
                        out.write_all(text.as_bytes())?;
                        out.flush()
                    } else {
                        let mut out = std::io::stdout().lock();
                        out.write_all(text.as_bytes())?;
                        out.flush()
                    }
                };
                tokio::task::spawn_blocking(write).await.map_err(std::io::Error::other)?
            }
            Output::File(path) => {
                let file = match &mut self.file {
                    Some(f) => f,
                    None => self.file.insert(tokio::fs::OpenOptions::new().create(true).append(true).open(path).await?),
                };
                let result = async {
                    file.write_all(text.as_bytes()).await?;
                    // tokio's File writes in the background: flush so that a flushed
                    // handler's lines are in the file.
                    file.flush().await
                }
                .await;
                if result.is_err() {
                    self.file = None;
                }
                result
            }
        }
    }
}

impl Sink for LineSink {
    fn write<'a>(&'a mut self, batch: &'a [LogEntry]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let text: String = batch.iter().map(self.render).collect();
            self.write_all(text).await.map_err(|e| match &self.output {
                Output::File(path) => format!("{}: {e}", path.display()),
                _ => e.to_string(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::variety::{Denial, ReportHandler};
    use mixr_rules::config::load_str;
    use mixr_rules::snapshot::InstanceValues;
    use mixr_rules::value::{Timestamp, Value};
    use serde_json::json;
    use std::time::SystemTime;

    use super::*;

    fn params(spec: &str) -> Result<Params, ConfigError> {
        let text = format!(
            "apiVersion: config.istio.io/v1alpha2\nkind: handler\nmetadata: {{name: out}}\n\
             spec:\n  compiledAdapter: stdio\n  params: {spec}\n"
        );
        let (set, mut errors) = load_str("/etc/mixr/h.yaml", &text, "istio-system");
        if !errors.is_empty() {
            return Err(errors.remove(0));
        }
        parse(&set.handlers[0], Some(Path::new("/var/lib/mixr")))
    }

    fn instance(user: &str) -> InstanceValues {
        InstanceValues {
            fields: vec![
                ("severity", Value::String("ERROR".into())),
                ("timestamp", Value::Timestamp(Timestamp { seconds: 1_700_000_000, nanos: 500_000_000 })),
                ("monitored_resource_type", Value::String("global".into())),
            ],
            maps: vec![(
                "variables",
                vec![
                    ("user".into(), Value::String(user.to_string().into())),
                    ("code".into(), Value::Int64(503)),
                    ("time".into(), Value::String("shadow".into())),
                ],
            )],
        }
    }

    #[tokio::test]
    async fn appends_json_lines_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        std::fs::write(&path, "earlier line\n").unwrap();
        let p = params(&format!("{{outputPath: '{}', checkDenials: true}}", path.display())).unwrap();
        assert_eq!(p.output, Output::File(path.clone()));
        let log = start(p, "out.istio-system");
        log.report("accesslog.instance.istio-system", &[instance("jason"), instance("eve")]);
        log.check_denied(&Denial { time: SystemTime::UNIX_EPOCH, code: 7, message: "h:no".into(), attributes: vec![] });
        log.flush().await;

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], "earlier line");
        assert!(lines[1].starts_with(r#"{"time":"2023-11-14T22:13:20.5Z","severity":"ERROR","#), "{}", lines[1]);
        let first: Json = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(
            first,
            json!({"time": "2023-11-14T22:13:20.5Z", "severity": "ERROR", "instance": "accesslog.instance.istio-system",
                   "resourceType": "global", "user": "jason", "code": 503, "variables.time": "shadow"})
        );
        let second: Json = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(second["user"], json!("eve"));
        let denial: Json = serde_json::from_str(lines[3]).unwrap();
        assert_eq!(
            denial,
            json!({"time": "1970-01-01T00:00:00Z", "severity": "DENIED", "instance": "check.denied", "code": 7,
                   "message": "h:no"})
        );
        assert_eq!(log.dropped(), 0);
    }

    #[tokio::test]
    async fn console_lines_when_not_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let p = params(&format!("{{outputPath: '{}', outputAsJson: false}}", path.display())).unwrap();
        let log = start(p, "console");
        log.report("accesslog.instance.istio-system", &[instance("jason")]);
        log.flush().await;
        let text = std::fs::read_to_string(&path).unwrap();
        let fields: Vec<&str> = text.trim_end().split('\t').collect();
        assert_eq!(fields[..3], ["2023-11-14T22:13:20.5Z", "ERROR", "accesslog.instance.istio-system"], "{text}");
        let vars: Json = serde_json::from_str(fields[3]).unwrap();
        assert_eq!(vars, json!({"user": "jason", "code": 503, "time": "shadow"}));
    }

    #[tokio::test]
    async fn background_writer_writes_without_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bg.log");
        let log = start(Params { output: Output::File(path.clone()), check_denials: false, json: true }, "bg");
        log.report("i", &[instance("a")]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&path).map(|t| t.lines().count()).unwrap_or(0) < 1 {
            assert!(std::time::Instant::now() < deadline, "line not written by the background task");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn params_and_errors() {
        assert_eq!(params("{}").unwrap(), Params { output: Output::Stdout, check_denials: false, json: true });
        assert!(!params("{outputAsJson: false}").unwrap().json);
        assert_eq!(params("{outputAsJson: true}").unwrap().output, Output::Stdout);
        assert_eq!(params("{logStream: STDERR}").unwrap().output, Output::Stderr);
        assert_eq!(
            params("{outputPath: logs/a.log}").unwrap().output,
            Output::File("/var/lib/mixr/logs/a.log".into()),
            "relative to the data directory, not the config's"
        );
        assert_eq!(
            params("{logStream: FILE, outputPath: /var/log/a.log}").unwrap().output,
            Output::File("/var/log/a.log".into())
        );
        let err = |p: &str| {
            let e = params(p).unwrap_err();
            (e.key, e.message)
        };
        assert_eq!(err("{logStream: FILE}"), ("spec.params.logStream".into(), "FILE needs outputPath".into()));
        assert_eq!(err("{logStream: STDOUT, outputPath: a}").0, "spec.params.outputPath");
        assert!(err("{logStream: SYSLOG}").1.contains("unknown log stream"));
        assert_eq!(err("{outputAsJson: maybe}").0, "spec.params.outputAsJson");
        assert_eq!(err("{outputPath: ''}").0, "spec.params.outputPath");
        assert_eq!(err("{rotate: true}"), ("spec.params.rotate".into(), "unknown key".into()));
    }
}
