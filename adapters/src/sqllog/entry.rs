//! One log entry as the log adapters keep it: built from a `logentry` instance (or a denied
//! Check) on the caller's thread, so the queue and the writers never see request-borrowed
//! data, and stored or printed as-is.

use std::time::{SystemTime, UNIX_EPOCH};

use mixr_rules::snapshot::InstanceValues;
use mixr_rules::value::{Timestamp, Value, format_timestamp};
use serde_json::{Map, Value as Json};

use crate::variety::Denial;

/// Severity of entries without one (Mixer's default).
pub const DEFAULT_SEVERITY: &str = "INFO";
/// Severity of denied Checks, when a handler records them.
pub const DENIED_SEVERITY: &str = "DENIED";
/// Instance name of denied Checks: they come from no instance config.
pub const DENIAL_INSTANCE: &str = "check.denied";

#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Microseconds since the Unix epoch, UTC. An integer so both engines sort and compare
    /// it the same way.
    pub time_us: i64,
    pub severity: String,
    /// The instance config's full name (`accesslog.instance.istio-system`).
    pub instance: String,
    /// The instance's `variables`, as a JSON object.
    pub variables: Map<String, Json>,
    pub resource_type: Option<String>,
}

impl LogEntry {
    /// An entry from an evaluated `logentry` instance: its `timestamp` or `now`, its
    /// `severity` or INFO, its variables and monitored resource type.
    pub fn from_instance(instance: &str, values: &InstanceValues, now: SystemTime) -> LogEntry {
        let time_us = match values.field("timestamp") {
            Some(Value::Timestamp(t)) => timestamp_micros(*t),
            _ => system_micros(now),
        };
        let severity = match values.field("severity").map(Value::to_text) {
            Some(s) if !s.is_empty() => s,
            _ => DEFAULT_SEVERITY.to_string(),
        };
        let variables = values.map("variables").iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect();
        let resource_type = values.field("monitored_resource_type").map(Value::to_text).filter(|s| !s.is_empty());
        LogEntry { time_us, severity, instance: instance.to_string(), variables, resource_type }
    }

    /// An entry for a denied Check: the request's attributes as variables, plus `code` and
    /// `message` (which win over attributes of those names; attribute names are dotted).
    pub fn from_denial(denial: &Denial) -> LogEntry {
        let mut variables: Map<String, Json> =
            denial.attributes.iter().map(|(k, v)| (k.clone(), Json::String(v.clone()))).collect();
        variables.insert("code".into(), Json::from(denial.code));
        variables.insert("message".into(), Json::String(denial.message.clone()));
        LogEntry {
            time_us: system_micros(denial.time),
            severity: DENIED_SEVERITY.to_string(),
            instance: DENIAL_INSTANCE.to_string(),
            variables,
            resource_type: None,
        }
    }

    /// The entry's time as RFC 3339 UTC text.
    pub fn time_text(&self) -> String {
        micros_to_rfc3339(self.time_us)
    }
}

/// A value as JSON: strings, numbers and booleans as themselves; timestamps as RFC 3339
/// text; durations, IP addresses and bytes as their text; string maps as objects.
pub fn value_to_json(value: &Value<'_>) -> Json {
    match value {
        Value::String(s) => Json::String(s.to_string()),
        Value::Int64(n) => Json::from(*n),
        // JSON has no NaN or infinity: those keep their text rather than becoming null.
        Value::Double(d) => {
            serde_json::Number::from_f64(*d).map(Json::Number).unwrap_or_else(|| Json::String(d.to_string()))
        }
        Value::Bool(b) => Json::Bool(*b),
        Value::StringMap(m) => {
            Json::Object(m.iter().map(|(k, v)| (k.to_string(), Json::String(v.to_string()))).collect())
        }
        Value::Timestamp(_) | Value::Duration(_) | Value::Bytes(_) => Json::String(value.to_text()),
    }
}

/// A JSON value as the text a filter compares: strings bare, anything else as JSON.
pub fn json_to_text(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn timestamp_micros(t: Timestamp) -> i64 {
    t.seconds.saturating_mul(1_000_000).saturating_add(i64::from(t.nanos) / 1000)
}

pub fn system_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map(|us| -us).unwrap_or(i64::MIN),
    }
}

pub fn micros_to_timestamp(us: i64) -> Timestamp {
    Timestamp { seconds: us.div_euclid(1_000_000), nanos: (us.rem_euclid(1_000_000) * 1000) as i32 }
}

pub fn micros_to_rfc3339(us: i64) -> String {
    format_timestamp(micros_to_timestamp(us))
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use mixr_rules::value::{Duration as MixrDuration, StringMap, ip_to_bytes};
    use serde_json::json;

    use super::*;

    #[test]
    fn instance_fields_and_variables_become_json() {
        let map = StringMap::new(vec![(Cow::Borrowed("app"), Cow::Borrowed("ratings"))]);
        let values = InstanceValues {
            fields: vec![
                ("severity", Value::String("WARNING".into())),
                ("timestamp", Value::Timestamp(Timestamp { seconds: 1_500_000_000, nanos: 123_456_789 })),
                ("monitored_resource_type", Value::String("global".into())),
            ],
            maps: vec![(
                "variables",
                vec![
                    ("user".into(), Value::String("jason".into())),
                    ("code".into(), Value::Int64(200)),
                    ("ratio".into(), Value::Double(0.5)),
                    ("nan".into(), Value::Double(f64::NAN)),
                    ("ok".into(), Value::Bool(true)),
                    ("ip".into(), Value::Bytes(ip_to_bytes("10.0.0.1".parse().unwrap()).into())),
                    ("latency".into(), Value::Duration(MixrDuration::from_nanos(1_500_000_000))),
                    ("at".into(), Value::Timestamp(Timestamp { seconds: 0, nanos: 0 })),
                    ("labels".into(), Value::StringMap(map.into())),
                ],
            )],
        };
        let e = LogEntry::from_instance("a.instance.ns", &values, SystemTime::UNIX_EPOCH);
        assert_eq!(e.time_us, 1_500_000_000_123_456);
        assert_eq!(e.time_text(), "2017-07-14T02:40:00.123456Z");
        assert_eq!((e.severity.as_str(), e.instance.as_str()), ("WARNING", "a.instance.ns"));
        assert_eq!(e.resource_type.as_deref(), Some("global"));
        assert_eq!(
            Json::Object(e.variables),
            json!({"user": "jason", "code": 200, "ratio": 0.5, "nan": "NaN", "ok": true, "ip": "10.0.0.1",
                   "latency": "1500ms", "at": "1970-01-01T00:00:00Z", "labels": {"app": "ratings"}})
        );
    }

    #[test]
    fn defaults_when_fields_are_absent() {
        let now = UNIX_EPOCH + Duration::from_micros(42);
        let e = LogEntry::from_instance("i", &InstanceValues::default(), now);
        assert_eq!((e.time_us, e.severity.as_str(), e.resource_type), (42, "INFO", None));
        assert!(e.variables.is_empty());
    }

    #[test]
    fn denials_carry_code_message_and_attributes() {
        let d = Denial {
            time: UNIX_EPOCH + Duration::from_secs(1),
            code: 7,
            message: "h:no".into(),
            attributes: vec![("source.ip".into(), "10.0.0.1".into())],
        };
        let e = LogEntry::from_denial(&d);
        assert_eq!((e.time_us, e.severity.as_str(), e.instance.as_str()), (1_000_000, "DENIED", DENIAL_INSTANCE));
        assert_eq!(Json::Object(e.variables), json!({"source.ip": "10.0.0.1", "code": 7, "message": "h:no"}));
    }

    #[test]
    fn negative_micros_round_trip() {
        assert_eq!(micros_to_rfc3339(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(timestamp_micros(micros_to_timestamp(-1)), -1);
    }
}
