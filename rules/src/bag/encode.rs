//! Encoding attributes for the wire, as a client does: known words by global index, the
//! rest in the message's own word list.

use std::collections::HashMap;

use mixr_proto::dictionary;
use mixr_proto::istio::mixer::v1::{CompressedAttributes, StringMap as WireMap};

use crate::value::Value;

/// Builds `CompressedAttributes`; one encoder can share its words across many Report
/// entries (`default_words`).
#[derive(Debug, Default)]
pub struct Encoder {
    words: Vec<String>,
    local: HashMap<String, i32>,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// Number of global words this encoder relies on (the request's `global_word_count`).
    pub fn global_word_count() -> u32 {
        dictionary::words().len() as u32
    }

    pub fn word(&mut self, w: &str) -> i32 {
        if let Some(i) = dictionary::index_of(w) {
            return i;
        }
        if let Some(&i) = self.local.get(w) {
            return i;
        }
        self.words.push(w.to_string());
        let i = -(self.words.len() as i32);
        self.local.insert(w.to_string(), i);
        i
    }

    /// Encodes attributes without filling `words`: call [`Encoder::into_words`] for them.
    pub fn encode<'v>(&mut self, attrs: impl IntoIterator<Item = (&'v str, &'v Value<'v>)>) -> CompressedAttributes {
        let mut ca = CompressedAttributes::default();
        for (name, value) in attrs {
            let k = self.word(name);
            match value {
                Value::String(s) => {
                    let v = self.word(s);
                    ca.strings.insert(k, v);
                }
                Value::Int64(v) => {
                    ca.int64s.insert(k, *v);
                }
                Value::Double(v) => {
                    ca.doubles.insert(k, *v);
                }
                Value::Bool(v) => {
                    ca.bools.insert(k, *v);
                }
                Value::Timestamp(t) => {
                    ca.timestamps.insert(k, prost_types::Timestamp { seconds: t.seconds, nanos: t.nanos });
                }
                Value::Duration(d) => {
                    ca.durations.insert(k, prost_types::Duration { seconds: d.seconds, nanos: d.nanos });
                }
                Value::Bytes(b) => {
                    ca.bytes.insert(k, b.to_vec());
                }
                Value::StringMap(m) => {
                    let mut wm = WireMap::default();
                    for (mk, mv) in m.iter() {
                        let (a, b) = (self.word(mk), self.word(mv));
                        wm.entries.insert(a, b);
                    }
                    ca.string_maps.insert(k, wm);
                }
            }
        }
        ca
    }

    /// Encodes one standalone message (a Check request's attributes).
    pub fn encode_message<'v>(attrs: impl IntoIterator<Item = (&'v str, &'v Value<'v>)>) -> CompressedAttributes {
        let mut enc = Encoder::new();
        let mut ca = enc.encode(attrs);
        ca.words = enc.into_words();
        ca
    }

    pub fn into_words(self) -> Vec<String> {
        self.words
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bag::decode_compressed;
    use crate::manifest::Manifest;
    use crate::value::{MapVal, StringMap};

    #[test]
    fn round_trips_through_the_decoder() {
        let headers = Value::StringMap(MapVal::from(StringMap::new(vec![
            ("x-user".into(), "jason".into()),
            (":path".into(), "GET".into()),
        ])));
        let attrs = vec![
            ("request.method", Value::String("GET".into())),
            ("custom.name", Value::String("custom-value".into())),
            ("request.size", Value::Int64(7)),
            ("source.ip", Value::Bytes(vec![127, 0, 0, 1].into())),
            ("request.headers", headers),
        ];
        let ca = Encoder::encode_message(attrs.iter().map(|(n, v)| (*n, v)));
        assert_eq!(ca.words, vec!["custom.name", "custom-value", "x-user", "jason"]);
        let bag = decode_compressed(&ca, Encoder::global_word_count(), &Manifest::builtin()).unwrap();
        for (name, value) in &attrs {
            assert_eq!(bag.get(name), Some(value), "{name}");
        }
    }
}
