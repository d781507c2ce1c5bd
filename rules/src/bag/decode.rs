//! Decoding attributes from the wire. Every index is bounds-checked: bad input becomes a
//! [`BagError`] (INVALID_ARGUMENT at the edge), never a panic.

use std::borrow::Cow;

use mixr_proto::dictionary;
use mixr_proto::istio::mixer::v1::{Attributes, CompressedAttributes, attributes::attribute_value};

use super::Bag;
use crate::manifest::Manifest;
use crate::value::{Duration, MapVal, StringMap, Timestamp, Value, ValueType};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BagError {
    #[error("inconsistent global dictionary versions used: mixr knows {ours} words, caller knows {caller} words")]
    GlobalWordCount { caller: u32, ours: usize },
    #[error("word index {index} is out of range (global words: {global}, message words: {local})")]
    BadWordIndex { index: i32, global: usize, local: usize },
    #[error("attribute {name}: an IP address must be 4 or 16 bytes, got {len}")]
    BadIpLength { name: String, len: usize },
    #[error("attribute {name}: timestamp {detail}")]
    BadTimestamp { name: String, detail: String },
    #[error("attribute {name}: {detail}")]
    BadValue { name: String, detail: String },
    #[error("report entry {index}: {detail}")]
    Malformed { index: usize, detail: String },
    /// A Check's attributes are not valid protobuf. Before they were decoded lazily, tonic
    /// refused such a request with prost's error and INTERNAL; this carries that text.
    #[error("{detail}")]
    Wire { detail: String },
}

/// Resolves word indices against the global dictionary and one message's words.
pub(super) struct Words<'w, 'a> {
    global: &'static [&'static str],
    local: Local<'w, 'a>,
}

/// A message's own words: decoded by prost, or borrowed from the wire by the lazy Check
/// decoder (whose list of them lives shorter than the words themselves).
#[derive(Clone, Copy)]
enum Local<'w, 'a> {
    Decoded(&'a [String]),
    Borrowed(&'w [&'a str]),
}

impl<'w, 'a> Words<'w, 'a> {
    pub(super) fn new(local: &'a [String]) -> Words<'a, 'a> {
        Words { global: dictionary::words(), local: Local::Decoded(local) }
    }

    pub(super) fn borrowed(local: &'w [&'a str]) -> Words<'w, 'a> {
        Words { global: dictionary::words(), local: Local::Borrowed(local) }
    }

    pub(super) fn get(&self, index: i32) -> Result<&'a str, BagError> {
        let word = if index >= 0 {
            self.global.get(index as usize).copied()
        } else {
            // -1 is local[0]; widen before negating so i32::MIN cannot overflow.
            let slot = (-(index as i64) - 1) as usize;
            match self.local {
                Local::Decoded(local) => local.get(slot).map(String::as_str),
                Local::Borrowed(local) => local.get(slot).copied(),
            }
        };
        word.ok_or_else(|| {
            let local = match self.local {
                Local::Decoded(l) => l.len(),
                Local::Borrowed(l) => l.len(),
            };
            BagError::BadWordIndex { index, global: self.global.len(), local }
        })
    }
}

pub(super) fn check_global_word_count(global_word_count: u32) -> Result<(), BagError> {
    let ours = dictionary::words().len();
    if global_word_count as usize > ours {
        return Err(BagError::GlobalWordCount { caller: global_word_count, ours });
    }
    Ok(())
}

/// Decodes a Check request's attributes.
pub fn decode_compressed<'a>(
    attrs: &'a CompressedAttributes,
    global_word_count: u32,
    manifest: &Manifest,
) -> Result<Bag<'a>, BagError> {
    check_global_word_count(global_word_count)?;
    decode_with(attrs, &Words::new(&attrs.words), manifest)
}

/// Decodes every entry of a Report. With delta encoding each bag holds the accumulated
/// attributes of all entries up to and including it.
pub fn decode_report<'a>(
    entries: &'a [CompressedAttributes],
    default_words: &'a [String],
    global_word_count: u32,
    delta_encoding: bool,
    manifest: &Manifest,
) -> Result<Vec<Bag<'a>>, BagError> {
    report_entries(entries, default_words, global_word_count, delta_encoding, manifest)?.collect()
}

/// A Report's entries decoded one at a time, so a caller can work through a large Report
/// in bounded pieces: with delta encoding only the running accumulation is kept.
pub fn report_entries<'a, 'm>(
    entries: &'a [CompressedAttributes],
    default_words: &'a [String],
    global_word_count: u32,
    delta_encoding: bool,
    manifest: &'m Manifest,
) -> Result<ReportEntries<'a, 'm>, BagError> {
    check_global_word_count(global_word_count)?;
    Ok(ReportEntries { entries: entries.iter(), default_words, delta_encoding, manifest, previous: None })
}

#[derive(Debug)]
pub struct ReportEntries<'a, 'm> {
    entries: std::slice::Iter<'a, CompressedAttributes>,
    default_words: &'a [String],
    delta_encoding: bool,
    manifest: &'m Manifest,
    previous: Option<Bag<'a>>,
}

impl<'a> Iterator for ReportEntries<'a, '_> {
    type Item = Result<Bag<'a>, BagError>;

    fn next(&mut self) -> Option<Self::Item> {
        let entry = self.entries.next()?;
        let local = if entry.words.is_empty() { self.default_words } else { &entry.words };
        let bag = match decode_with(entry, &Words::new(local), self.manifest) {
            Ok(bag) => bag,
            Err(e) => return Some(Err(e)),
        };
        let bag = match (self.delta_encoding, self.previous.take()) {
            (true, Some(mut acc)) => {
                acc.merge(bag);
                acc
            }
            _ => bag,
        };
        if self.delta_encoding {
            self.previous = Some(bag.clone());
        }
        Some(Ok(bag))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

pub(super) fn decode_with<'a>(
    ca: &'a CompressedAttributes,
    words: &Words<'_, 'a>,
    manifest: &Manifest,
) -> Result<Bag<'a>, BagError> {
    let count = ca.strings.len()
        + ca.int64s.len()
        + ca.doubles.len()
        + ca.bools.len()
        + ca.timestamps.len()
        + ca.durations.len()
        + ca.bytes.len()
        + ca.string_maps.len();
    let mut attrs: Vec<(&'a str, Value<'a>)> = Vec::with_capacity(count);
    for (&k, &v) in &ca.strings {
        attrs.push((words.get(k)?, Value::String(Cow::Borrowed(words.get(v)?))));
    }
    for (&k, &v) in &ca.int64s {
        attrs.push((words.get(k)?, Value::Int64(v)));
    }
    for (&k, &v) in &ca.doubles {
        attrs.push((words.get(k)?, Value::Double(v)));
    }
    for (&k, &v) in &ca.bools {
        attrs.push((words.get(k)?, Value::Bool(v)));
    }
    for (&k, v) in &ca.timestamps {
        let name = words.get(k)?;
        attrs.push((name, Value::Timestamp(timestamp(name, v)?)));
    }
    for (&k, v) in &ca.durations {
        let name = words.get(k)?;
        attrs.push((name, Value::Duration(duration(name, v)?)));
    }
    for (&k, v) in &ca.bytes {
        let name = words.get(k)?;
        check_ip(name, v, manifest)?;
        attrs.push((name, Value::Bytes(Cow::Borrowed(v.as_slice()))));
    }
    for (&k, m) in &ca.string_maps {
        let name = words.get(k)?;
        let mut entries = Vec::with_capacity(m.entries.len());
        for (&mk, &mv) in &m.entries {
            entries.push((Cow::Borrowed(words.get(mk)?), Cow::Borrowed(words.get(mv)?)));
        }
        attrs.push((name, Value::StringMap(MapVal::from(StringMap::new(entries)))));
    }
    Ok(Bag::from_pairs(attrs))
}

pub(super) fn check_ip(name: &str, bytes: &[u8], manifest: &Manifest) -> Result<(), BagError> {
    if manifest.type_of(name) == Some(ValueType::IpAddress) && !matches!(bytes.len(), 4 | 16) {
        return Err(BagError::BadIpLength { name: name.to_string(), len: bytes.len() });
    }
    Ok(())
}

pub(super) fn timestamp(name: &str, t: &prost_types::Timestamp) -> Result<Timestamp, BagError> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(BagError::BadTimestamp {
            name: name.to_string(),
            detail: format!("nanos {} out of range", t.nanos),
        });
    }
    Ok(Timestamp { seconds: t.seconds, nanos: t.nanos })
}

pub(super) fn duration(name: &str, d: &prost_types::Duration) -> Result<Duration, BagError> {
    if d.nanos.abs() >= 1_000_000_000 {
        return Err(BagError::BadValue {
            name: name.to_string(),
            detail: format!("duration nanos {} out of range", d.nanos),
        });
    }
    Ok(Duration { seconds: d.seconds, nanos: d.nanos })
}

/// Decodes the uncompressed form (proxy config, the `x-istio-attributes` header).
pub fn decode_uncompressed<'a>(attrs: &'a Attributes, manifest: &Manifest) -> Result<Bag<'a>, BagError> {
    let mut pairs = Vec::with_capacity(attrs.attributes.len());
    for (name, value) in &attrs.attributes {
        let Some(v) = &value.value else { continue };
        let v = match v {
            attribute_value::Value::StringValue(s) => Value::String(Cow::Borrowed(s)),
            attribute_value::Value::Int64Value(i) => Value::Int64(*i),
            attribute_value::Value::DoubleValue(d) => Value::Double(*d),
            attribute_value::Value::BoolValue(b) => Value::Bool(*b),
            attribute_value::Value::BytesValue(b) => {
                check_ip(name, b, manifest)?;
                Value::Bytes(Cow::Borrowed(b))
            }
            attribute_value::Value::TimestampValue(t) => Value::Timestamp(timestamp(name, t)?),
            attribute_value::Value::DurationValue(d) => Value::Duration(duration(name, d)?),
            attribute_value::Value::StringMapValue(m) => Value::StringMap(MapVal::from(StringMap::new(
                m.entries.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str()))).collect(),
            ))),
        };
        pairs.push((name.as_str(), v));
    }
    Ok(Bag::from_pairs(pairs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixr_proto::istio::mixer::v1::StringMap as WireMap;

    fn manifest() -> Manifest {
        Manifest::builtin()
    }

    fn idx(word: &str) -> i32 {
        dictionary::index_of(word).unwrap()
    }

    #[test]
    fn decodes_global_and_local_words_of_every_type() {
        let mut ca = CompressedAttributes {
            words: vec!["my.attr".into(), "hello".into(), "x-custom".into(), "my.ratio".into()],
            ..Default::default()
        };
        ca.strings.insert(idx("request.method"), idx("GET"));
        ca.strings.insert(-1, -2);
        ca.int64s.insert(idx("request.size"), 42);
        ca.doubles.insert(-4, 0.25);
        ca.bools.insert(idx("connection.mtls"), true);
        ca.timestamps.insert(idx("request.time"), prost_types::Timestamp { seconds: 10, nanos: 5 });
        ca.durations.insert(idx("response.duration"), prost_types::Duration { seconds: 1, nanos: 0 });
        ca.bytes.insert(idx("source.ip"), vec![10, 0, 0, 1]);
        let mut hm = WireMap::default();
        hm.entries.insert(-3, -2);
        hm.entries.insert(idx(":path"), idx("GET"));
        ca.string_maps.insert(idx("request.headers"), hm);

        let bag = decode_compressed(&ca, 222, &manifest()).unwrap();
        assert_eq!(bag.get("request.method"), Some(&Value::String("GET".into())));
        assert_eq!(bag.get("my.attr"), Some(&Value::String("hello".into())));
        assert_eq!(bag.get("request.size"), Some(&Value::Int64(42)));
        assert_eq!(bag.get("my.ratio"), Some(&Value::Double(0.25)));
        assert_eq!(bag.get("connection.mtls"), Some(&Value::Bool(true)));
        assert_eq!(bag.get("request.time"), Some(&Value::Timestamp(Timestamp { seconds: 10, nanos: 5 })));
        assert_eq!(bag.get("source.ip").and_then(Value::as_ip), Some("10.0.0.1".parse().unwrap()));
        match bag.get("request.headers") {
            Some(Value::StringMap(m)) => {
                assert_eq!(m.get("x-custom"), Some("hello"));
                assert_eq!(m.get(":path"), Some("GET"));
            }
            other => panic!("headers decoded as {other:?}"),
        }
        assert!(bag.get("response.code").is_none());
    }

    #[test]
    fn rejects_bad_indices_without_panicking() {
        for bad in [-1, -2, 222, 10_000, i32::MIN, i32::MAX] {
            let mut ca = CompressedAttributes::default();
            ca.strings.insert(bad, idx("GET"));
            let err = decode_compressed(&ca, 222, &manifest()).unwrap_err();
            assert!(matches!(err, BagError::BadWordIndex { index, .. } if index == bad), "{err}");
            let mut ca = CompressedAttributes::default();
            ca.strings.insert(idx("request.method"), bad);
            assert!(decode_compressed(&ca, 222, &manifest()).is_err());
            let mut ca = CompressedAttributes::default();
            let mut m = WireMap::default();
            m.entries.insert(bad, 0);
            ca.string_maps.insert(idx("request.headers"), m);
            assert!(decode_compressed(&ca, 222, &manifest()).is_err());
        }
    }

    #[test]
    fn rejects_a_larger_dictionary_than_ours() {
        let err = decode_compressed(&CompressedAttributes::default(), 223, &manifest()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "inconsistent global dictionary versions used: mixr knows 222 words, caller knows 223 words"
        );
        assert!(decode_compressed(&CompressedAttributes::default(), 100, &manifest()).is_ok());
    }

    #[test]
    fn rejects_ip_of_wrong_length() {
        let mut ca = CompressedAttributes::default();
        ca.bytes.insert(idx("destination.ip"), vec![1, 2, 3]);
        let err = decode_compressed(&ca, 222, &manifest()).unwrap_err();
        assert_eq!(err, BagError::BadIpLength { name: "destination.ip".into(), len: 3 });
        let mut ca = CompressedAttributes::default();
        ca.bytes.insert(idx("destination.ip"), vec![0; 16]);
        assert!(decode_compressed(&ca, 222, &manifest()).is_ok());
    }

    #[test]
    fn report_default_words_and_delta_encoding() {
        let defaults = vec!["custom.attr".to_string(), "v1".to_string(), "v2".to_string()];
        let mut first = CompressedAttributes::default();
        first.strings.insert(-1, -2);
        first.int64s.insert(idx("response.code"), 200);
        let mut second = CompressedAttributes::default();
        second.strings.insert(-1, -3);
        let entries = vec![first, second];

        let delta = decode_report(&entries, &defaults, 222, true, &manifest()).unwrap();
        assert_eq!(delta[1].get("custom.attr"), Some(&Value::String("v2".into())));
        assert_eq!(delta[1].get("response.code"), Some(&Value::Int64(200)));

        let independent = decode_report(&entries, &defaults, 222, false, &manifest()).unwrap();
        assert_eq!(independent[0].get("custom.attr"), Some(&Value::String("v1".into())));
        assert_eq!(independent[1].get("response.code"), None);

        let mut own = CompressedAttributes { words: vec!["own".into()], ..Default::default() };
        own.strings.insert(idx("request.method"), -1);
        let entries = vec![own];
        let bags = decode_report(&entries, &defaults, 222, false, &manifest()).unwrap();
        assert_eq!(bags[0].get("request.method"), Some(&Value::String("own".into())));
    }

    #[test]
    fn uncompressed_attributes() {
        use mixr_proto::istio::mixer::v1::attributes::{AttributeValue, StringMap as Sm};
        let mut a = Attributes::default();
        a.attributes.insert(
            "source.namespace".into(),
            AttributeValue { value: Some(attribute_value::Value::StringValue("ns".into())) },
        );
        a.attributes.insert(
            "source.labels".into(),
            AttributeValue {
                value: Some(attribute_value::Value::StringMapValue(Sm {
                    entries: [("app".to_string(), "web".to_string())].into(),
                })),
            },
        );
        let bag = decode_uncompressed(&a, &manifest()).unwrap();
        assert_eq!(bag.get("source.namespace"), Some(&Value::String("ns".into())));
        assert!(matches!(bag.get("source.labels"), Some(Value::StringMap(m)) if m.get("app") == Some("web")));
    }
}
