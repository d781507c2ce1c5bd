//! Log lines for collectors: one flat JSON object per line, `ts`, `level` and `msg`
//! first, then the event's fields, then `target`. Shared by both binaries'
//! `--log-format json`.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlatJson;

/// Collects an event's message and fields as JSON text.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Fields {
    fn push(&mut self, name: &str, json: serde_json::Value) {
        if name == "message" {
            self.message = match json {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            return;
        }
        // A field named like a fixed key keeps its value under a prefixed name.
        let name =
            if matches!(name, "ts" | "level" | "msg" | "target") { format!("field.{name}") } else { name.into() };
        let _ = write!(self.rest, ",{}:{}", serde_json::Value::String(name), json);
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field.name(), serde_json::Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field.name(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field.name(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field.name(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field.name(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field.name(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field.name(), value.to_string().into());
    }
}

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let text = |s: &str| serde_json::Value::String(s.to_string());
        writeln!(
            writer,
            "{{\"ts\":{},\"level\":{},\"msg\":{}{},\"target\":{}}}",
            text(&ts),
            text(&meta.level().as_str().to_ascii_lowercase()),
            text(&fields.message),
            fields.rest,
            text(meta.target())
        )
    }
}

/// The `--log-format` values both binaries accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// For people: coloured only when stderr is a terminal.
    #[default]
    Text,
    /// For collectors: one [`FlatJson`] object a line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?}: expected text or json")),
        }
    }
}

/// The stderr log layer in `format`, before any filter.
pub fn stderr_layer<S>(format: LogFormat) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    use std::io::IsTerminal;
    use tracing_subscriber::Layer as _;
    // Colour codes only for a person at a terminal: in files and pipes they are noise.
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.event_format(FlatJson).boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn one_flat_object_per_line() {
        let buf = Buffer::default();
        let subscriber = tracing_subscriber::fmt().event_format(FlatJson).with_writer(buf.clone()).finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(handler = "h.ns", count = 3, ok = true, level = "shadow", "quota \"x\" refused");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.starts_with("{\"ts\":\""), "{text}");
        let line: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(line["level"], "warn");
        assert_eq!(line["msg"], "quota \"x\" refused");
        assert_eq!(
            (line["handler"].as_str(), line["count"].as_i64(), line["ok"].as_bool()),
            (Some("h.ns"), Some(3), Some(true))
        );
        assert_eq!(line["field.level"], "shadow");
        let order: Vec<&str> = ["\"ts\"", "\"level\"", "\"msg\"", "\"handler\""].into_iter().collect();
        let at: Vec<usize> = order.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
    }
}
