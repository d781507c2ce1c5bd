//! Attribute types and values.
//!
//! Values borrow from the request they were decoded from (`'a`), so building a bag copies
//! no strings. Typed strings (DNS names, emails, URIs) and IP addresses are plain strings
//! and bytes at run time: the expression compiler knows their static types and picks the
//! comparison, so values need not carry them.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

/// Istio's `ValueType`, with its enum numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    String = 1,
    Int64 = 2,
    Double = 3,
    Bool = 4,
    Timestamp = 5,
    IpAddress = 6,
    EmailAddress = 7,
    Uri = 8,
    DnsName = 9,
    Duration = 10,
    StringMap = 11,
}

impl ValueType {
    /// Parses the manifest spelling (`STRING`, `IP_ADDRESS`, ...).
    pub fn parse(s: &str) -> Option<ValueType> {
        Some(match s {
            "STRING" => ValueType::String,
            "INT64" => ValueType::Int64,
            "DOUBLE" => ValueType::Double,
            "BOOL" => ValueType::Bool,
            "TIMESTAMP" => ValueType::Timestamp,
            "IP_ADDRESS" => ValueType::IpAddress,
            "EMAIL_ADDRESS" => ValueType::EmailAddress,
            "URI" => ValueType::Uri,
            "DNS_NAME" => ValueType::DnsName,
            "DURATION" => ValueType::Duration,
            "STRING_MAP" => ValueType::StringMap,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ValueType::String => "STRING",
            ValueType::Int64 => "INT64",
            ValueType::Double => "DOUBLE",
            ValueType::Bool => "BOOL",
            ValueType::Timestamp => "TIMESTAMP",
            ValueType::IpAddress => "IP_ADDRESS",
            ValueType::EmailAddress => "EMAIL_ADDRESS",
            ValueType::Uri => "URI",
            ValueType::DnsName => "DNS_NAME",
            ValueType::Duration => "DURATION",
            ValueType::StringMap => "STRING_MAP",
        }
    }

    /// Types whose values travel as strings on the wire.
    pub fn is_stringy(self) -> bool {
        matches!(self, ValueType::String | ValueType::DnsName | ValueType::EmailAddress | ValueType::Uri)
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A point in time as protobuf carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: i32,
}

/// A signed span of time, normalised so `nanos` has the sign of `seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration {
    pub seconds: i64,
    pub nanos: i32,
}

impl Duration {
    pub fn from_nanos(total: i128) -> Duration {
        Duration { seconds: (total / 1_000_000_000) as i64, nanos: (total % 1_000_000_000) as i32 }
    }

    pub fn as_nanos(self) -> i128 {
        self.seconds as i128 * 1_000_000_000 + self.nanos as i128
    }

    pub fn from_std(d: std::time::Duration) -> Duration {
        Duration::from_nanos(d.as_nanos() as i128)
    }

    /// Negative spans become zero: a std duration cannot be negative.
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.as_nanos().clamp(0, u64::MAX as i128) as u64)
    }

    pub fn as_secs_f64(self) -> f64 {
        self.as_nanos() as f64 / 1e9
    }
}

/// Parses Go duration syntax: `"300ms"`, `"1.5h"`, `"2h45m"`, `"-1s"`; `"0"` alone is zero.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(Duration::default());
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    if !total.is_finite() || total > i64::MAX as f64 {
        return None;
    }
    let nanos = total.round() as i128;
    Some(Duration::from_nanos(if negative { -nanos } else { nanos }))
}

/// Formats like Go's `time.Duration.String` for whole units we use in messages.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos % 1_000_000_000 == 0 {
        let secs = nanos / 1_000_000_000;
        if secs % 3600 == 0 {
            return format!("{}h", secs / 3600);
        }
        if secs % 60 == 0 {
            return format!("{}m", secs / 60);
        }
        return format!("{secs}s");
    }
    if nanos % 1_000_000 == 0 {
        return format!("{}ms", nanos / 1_000_000);
    }
    format!("{}ns", nanos)
}

/// Parses RFC 3339 (`2015-01-02T15:04:35Z`, fractional seconds and offsets allowed).
pub fn parse_timestamp(text: &str) -> Option<Timestamp> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        if s.bytes().all(|c| c.is_ascii_digit()) { s.parse().ok() } else { None }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut pos = 19;
    let mut nanos: i64 = 0;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            pos += 1;
        }
        let digits = &text[start..pos];
        if digits.is_empty() || digits.len() > 9 {
            return None;
        }
        nanos = digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32);
    }
    let offset = match &text[pos..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && &tz[3..4] == ":" => {
            let h = num(pos + 1..pos + 3)?;
            let m = num(pos + 4..pos + 6)?;
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    Some(Timestamp { seconds: days * 86400 + hour * 3600 + minute * 60 + second - offset, nanos: nanos as i32 })
}

/// Formats a timestamp as RFC 3339 in UTC.
pub fn format_timestamp(t: Timestamp) -> String {
    let days = t.seconds.div_euclid(86400);
    let secs = t.seconds.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    let base = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60);
    if t.nanos == 0 {
        format!("{base}Z")
    } else {
        let frac = format!("{:09}", t.nanos);
        format!("{base}.{}Z", frac.trim_end_matches('0'))
    }
}

// Howard Hinnant's civil-date algorithms: exact for the proleptic Gregorian calendar.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

/// A string map: entries sorted by key so lookups are binary searches.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StringMap<'a> {
    entries: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> StringMap<'a> {
    /// Builds a map; on duplicate keys the last one wins.
    pub fn new(mut entries: Vec<(Cow<'a, str>, Cow<'a, str>)>) -> StringMap<'a> {
        entries.reverse();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        StringMap { entries }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok().map(|i| self.entries[i].1.as_ref())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    pub fn into_owned(self) -> StringMap<'static> {
        StringMap {
            entries: self
                .entries
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k.into_owned()), Cow::Owned(v.into_owned())))
                .collect(),
        }
    }
}

/// One attribute value, or the result of evaluating an expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    String(Cow<'a, str>),
    Int64(i64),
    Double(f64),
    Bool(bool),
    Timestamp(Timestamp),
    Duration(Duration),
    /// IP addresses (4 or 16 bytes) and raw bytes.
    Bytes(Cow<'a, [u8]>),
    StringMap(MapVal<'a>),
}

/// A string map held by reference or by value. (`Cow` would make `Value` invariant in
/// its lifetime, because `Cow` names `ToOwned::Owned`.)
#[derive(Debug, Clone)]
pub enum MapVal<'a> {
    Borrowed(&'a StringMap<'a>),
    Owned(Box<StringMap<'a>>),
}

impl<'a> std::ops::Deref for MapVal<'a> {
    type Target = StringMap<'a>;
    fn deref(&self) -> &StringMap<'a> {
        match self {
            MapVal::Borrowed(m) => m,
            MapVal::Owned(m) => m,
        }
    }
}

impl PartialEq for MapVal<'_> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<'a> From<StringMap<'a>> for MapVal<'a> {
    fn from(m: StringMap<'a>) -> MapVal<'a> {
        MapVal::Owned(Box::new(m))
    }
}

/// A value that outlives the request it came from (instances handed to adapters).
pub type OwnedValue = Value<'static>;

impl<'a> Value<'a> {
    pub fn into_owned(self) -> OwnedValue {
        match self {
            Value::String(s) => Value::String(Cow::Owned(s.into_owned())),
            Value::Int64(v) => Value::Int64(v),
            Value::Double(v) => Value::Double(v),
            Value::Bool(v) => Value::Bool(v),
            Value::Timestamp(v) => Value::Timestamp(v),
            Value::Duration(v) => Value::Duration(v),
            Value::Bytes(b) => Value::Bytes(Cow::Owned(b.into_owned())),
            Value::StringMap(m) => Value::StringMap(MapVal::from((*m).clone().into_owned())),
        }
    }

    /// Borrows this value without copying strings.
    pub fn reborrow(&self) -> Value<'_> {
        match self {
            Value::String(s) => Value::String(Cow::Borrowed(s.as_ref())),
            Value::Bytes(b) => Value::Bytes(Cow::Borrowed(b.as_ref())),
            Value::StringMap(m) => Value::StringMap(MapVal::Borrowed(m)),
            Value::Int64(v) => Value::Int64(*v),
            Value::Double(v) => Value::Double(*v),
            Value::Bool(v) => Value::Bool(*v),
            Value::Timestamp(v) => Value::Timestamp(*v),
            Value::Duration(v) => Value::Duration(*v),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The IP address held in 4 or 16 bytes, if this is one.
    pub fn as_ip(&self) -> Option<IpAddr> {
        match self {
            Value::Bytes(b) => bytes_to_ip(b),
            _ => None,
        }
    }

    /// A human-readable rendering: what adapters print and compare as text.
    pub fn to_text(&self) -> String {
        match self {
            Value::String(s) => s.to_string(),
            Value::Int64(v) => v.to_string(),
            Value::Double(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            Value::Timestamp(t) => format_timestamp(*t),
            Value::Duration(d) => format_duration(*d),
            Value::Bytes(b) => match bytes_to_ip(b) {
                Some(ip) => ip.to_string(),
                None => b.iter().map(|x| format!("{x:02x}")).collect(),
            },
            Value::StringMap(m) => {
                let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                parts.join(",")
            }
        }
    }
}

pub fn bytes_to_ip(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

pub fn ip_to_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("10ms"), Some(Duration { seconds: 0, nanos: 10_000_000 }));
        assert_eq!(parse_duration("1.5s"), Some(Duration { seconds: 1, nanos: 500_000_000 }));
        assert_eq!(parse_duration("5h10m").unwrap().seconds, 5 * 3600 + 600);
        assert_eq!(parse_duration("-2s").unwrap().as_nanos(), -2_000_000_000);
        assert_eq!(parse_duration("0"), Some(Duration::default()));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("1d"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(format_duration(parse_duration("90s").unwrap()), "90s");
        assert_eq!(format_duration(parse_duration("2m").unwrap()), "2m");
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = parse_timestamp("2015-01-02T15:04:35Z").unwrap();
        assert_eq!(t.seconds, 1_420_211_075);
        assert_eq!(format_timestamp(t), "2015-01-02T15:04:35Z");
        let t = parse_timestamp("2015-01-02T16:04:35.25+01:00").unwrap();
        assert_eq!((t.seconds, t.nanos), (1_420_211_075, 250_000_000));
        assert_eq!(parse_timestamp("2015-13-02T15:04:35Z"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp("2015-01-02T15:04:35"), None);
    }

    #[test]
    fn string_map_lookup_last_duplicate_wins() {
        let m = StringMap::new(vec![("b".into(), "1".into()), ("a".into(), "2".into()), ("b".into(), "3".into())]);
        assert_eq!(m.get("a"), Some("2"));
        assert_eq!(m.get("b"), Some("3"));
        assert_eq!(m.get("c"), None);
        assert_eq!(m.len(), 2);
    }
}
