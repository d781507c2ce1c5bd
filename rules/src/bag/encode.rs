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
    /// The message's own words, by their (negative) index. SipHash stays: these words come
    /// from callers (paths, header values), and a table they could flood with colliding
    /// keys would cost every request in the batch.
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
        let i = -(self.local.len() as i32) - 1;
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
        let mut words: Vec<(i32, String)> = self.local.into_iter().map(|(w, i)| (i, w)).collect();
        // -1, -2, ...: the word list is in that order.
        words.sort_unstable_by_key(|(i, _)| -i);
        words.into_iter().map(|(_, w)| w).collect()
    }
}

/// One Report entry on the wire, self-contained: strings the global dictionary lacks go to
/// the entry's own word list (`CompressedAttributes.words`) rather than a batch-wide one, so
/// the entry can be encoded while its request is in flight (when the attributes are still
/// borrowed from it) and appended to whichever batch is open when the response is done.
/// Nothing is hashed but global words (a fixed table), and no word is copied twice.
///
/// Words are not shared between entries, nor deduplicated within one: a Report grows by
/// the repeated strings, but a batch-wide table had cost more than proxying the request.
#[derive(Debug, Default)]
pub struct WireEntry {
    /// The attribute fields.
    fields: Vec<u8>,
    /// The entry's words, already as field 1 of the message, in index order.
    words: Vec<u8>,
    local: i32,
}

/// Buffers of entries already sent, for the next entries of the same thread: a request's
/// entry is built and appended to its batch on the worker that serves it, so each takes
/// back what the one before gave. Bounded: a few entries' buffers of a typical size.
mod spare {
    use std::cell::RefCell;

    /// Buffer pairs kept per thread (as many as its requests have entries open at once).
    const KEPT: usize = 64;
    /// A buffer grown past this (a request with huge headers) is released, not kept.
    const KEPT_CAPACITY: usize = 16 * 1024;

    thread_local! {
        static SPARE: RefCell<Vec<(Vec<u8>, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take() -> Option<(Vec<u8>, Vec<u8>)> {
        SPARE.try_with(|s| s.borrow_mut().pop()).ok().flatten()
    }

    pub fn give(mut fields: Vec<u8>, mut words: Vec<u8>) {
        if fields.capacity() > KEPT_CAPACITY || words.capacity() > KEPT_CAPACITY {
            return;
        }
        fields.clear();
        words.clear();
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < KEPT {
                s.push((fields, words));
            }
        });
    }

    #[cfg(test)]
    pub fn count() -> usize {
        SPARE.with(|s| s.borrow().len())
    }
}

impl Drop for WireEntry {
    fn drop(&mut self) {
        if self.fields.capacity() > 0 {
            spare::give(std::mem::take(&mut self.fields), std::mem::take(&mut self.words));
        }
    }
}

impl WireEntry {
    pub fn new() -> WireEntry {
        let (fields, words) = spare::take().unwrap_or_else(|| {
            // Room for a typical inbound request's attributes and headers, so the buffers
            // rarely grow.
            (Vec::with_capacity(512), Vec::with_capacity(256))
        });
        WireEntry { fields, words, local: 0 }
    }

    fn word(&mut self, w: &str) -> i32 {
        match dictionary::index_of(w) {
            Some(i) => i,
            None => self.own_word(w),
        }
    }

    fn own_word(&mut self, w: &str) -> i32 {
        // Every element of a repeated field is written, empty ones included.
        wire::tag(&mut self.words, 1, 2);
        wire::varint(&mut self.words, w.len() as u64);
        self.words.extend_from_slice(w.as_bytes());
        self.local += 1;
        -self.local
    }

    /// Adds attributes; a name given twice is sent twice, and the decoder keeps the last.
    pub fn extend<'v>(&mut self, attrs: impl IntoIterator<Item = (&'static str, &'v Value<'v>)>) {
        for (name, value) in attrs {
            self.push(name, value);
        }
    }

    /// Names are static: the few dozen a proxy reports are looked up by address
    /// ([`name_index`]), a fraction of hashing each.
    pub fn push(&mut self, name: &'static str, value: &Value<'_>) {
        let k = match name_index(name) {
            Some(i) => i,
            None => self.own_word(name),
        };
        match value {
            Value::String(s) => {
                let v = self.word(s);
                wire::small_entry(&mut self.fields, 2, k, wire::zigzag(v));
            }
            Value::Int64(v) => wire::small_entry(&mut self.fields, 3, k, *v as u64),
            Value::Double(v) => wire::map_entry(&mut self.fields, 4, k, |e| wire::double_field(e, 2, *v)),
            Value::Bool(v) => wire::small_entry(&mut self.fields, 5, k, u64::from(*v)),
            Value::Timestamp(t) => wire::time_entry(&mut self.fields, 6, k, t.seconds, t.nanos),
            Value::Duration(d) => wire::time_entry(&mut self.fields, 7, k, d.seconds, d.nanos),
            Value::Bytes(b) => wire::map_entry(&mut self.fields, 8, k, |e| wire::bytes_field(e, 2, b)),
            Value::StringMap(m) => {
                // The words go to their own buffer, so the map's indexes are known as its
                // entries are written: no list of pairs is collected first.
                let mut fields = std::mem::take(&mut self.fields);
                wire::map_entry(&mut fields, 9, k, |e| {
                    wire::nested(e, 2, |sm| {
                        for (mk, mv) in m.iter() {
                            let (a, b) = (self.word(mk), self.word(mv));
                            // `map<sint32, sint32>`: an entry is its key and value varints.
                            wire::small_entry(sm, 1, a, wire::zigzag(b));
                        }
                    })
                });
                self.fields = fields;
            }
        }
    }

    /// The length of the encoded `CompressedAttributes` message.
    pub fn len(&self) -> usize {
        self.fields.len() + self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the entry as one element of `ReportRequest.attributes` (field 1).
    pub fn append_to_report(&self, report: &mut Vec<u8>) {
        wire::tag(report, 1, 2);
        wire::varint(report, self.len() as u64);
        self.write_message(report);
    }

    /// Writes the encoded `CompressedAttributes` message itself, words first (field
    /// order, which a decoder reading straight from the wire relies on).
    pub fn write_message(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.words);
        out.extend_from_slice(&self.fields);
    }
}

/// The global index of a static name, remembered by the name's address: the same address
/// and length of static text are the same words, so a hit needs no hashing nor comparing.
/// A small open-addressed table per thread (static names are finitely many; past
/// `FILLED` of them, the rest are looked up each time).
fn name_index(name: &'static str) -> Option<i32> {
    use std::cell::Cell;
    const SLOTS: usize = 256;
    const FILLED: usize = SLOTS * 3 / 4;
    /// Marks a name the dictionary does not hold.
    const ABSENT: i32 = i32::MIN;
    struct Seen {
        slots: [Cell<(usize, usize, i32)>; SLOTS],
        filled: Cell<usize>,
    }
    thread_local! {
        static SEEN: Seen = const { Seen { slots: [const { Cell::new((0, 0, 0)) }; SLOTS], filled: Cell::new(0) } };
    }
    let addr = name.as_ptr() as usize;
    let lookup = || dictionary::index_of(name).unwrap_or(ABSENT);
    let index = SEEN
        .try_with(|seen| {
            let mut slot = (addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) % SLOTS;
            loop {
                let (a, len, index) = seen.slots[slot].get();
                if a == addr && len == name.len() {
                    return index;
                }
                if a == 0 {
                    let index = lookup();
                    if seen.filled.get() < FILLED {
                        seen.slots[slot].set((addr, name.len(), index));
                        seen.filled.set(seen.filled.get() + 1);
                    }
                    return index;
                }
                slot = (slot + 1) % SLOTS;
            }
        })
        .unwrap_or_else(|_| lookup());
    (index != ABSENT).then_some(index)
}

/// Protobuf's wire format, as much of it as `CompressedAttributes` needs. Fields holding
/// their default value are left out, as proto3 encoders do.
pub mod wire {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
        varint(out, (u64::from(field) << 3) | u64::from(wire_type));
    }

    pub fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
        if v != 0 {
            tag(out, field, 0);
            varint(out, v);
        }
    }

    pub fn zigzag(v: i32) -> u64 {
        u64::from(((v << 1) ^ (v >> 31)) as u32)
    }

    pub fn sint32_field(out: &mut Vec<u8>, field: u32, v: i32) {
        varint_field(out, field, zigzag(v));
    }

    /// One entry of a `map<sint32, V>` field whose value is a varint (`sint32` already
    /// zigzagged, `int64`, `bool`), written in one go: these are most of a Report.
    pub fn small_entry(out: &mut Vec<u8>, field: u32, key: i32, value: u64) {
        // Tag, length, key field (tag and up to 5 bytes), value field (up to 11).
        let mut e = [0u8; 24];
        let mut n = 2;
        let mut put = |e: &mut [u8; 24], mut v: u64| {
            while v >= 0x80 {
                e[n] = (v as u8) | 0x80;
                v >>= 7;
                n += 1;
            }
            e[n] = v as u8;
            n += 1;
        };
        let k = zigzag(key);
        if k != 0 {
            put(&mut e, 1 << 3);
            put(&mut e, k);
        }
        if value != 0 {
            put(&mut e, 2 << 3);
            put(&mut e, value);
        }
        // The field numbers here are below 16: a tag is one byte.
        e[0] = ((field << 3) | 2) as u8;
        e[1] = (n - 2) as u8;
        put_prefix(out, &e, n);
    }

    /// One entry of a `map<sint32, Timestamp>` or `map<sint32, Duration>` field, written
    /// in one go as [`small_entry`] is: every request has three.
    pub fn time_entry(out: &mut Vec<u8>, field: u32, key: i32, seconds: i64, nanos: i32) {
        // Tag and length; key field (up to 6 bytes); value tag and length; seconds and
        // nanos fields (up to 11 bytes each). Every length is below 128: one byte.
        fn put(e: &mut [u8; 40], n: &mut usize, mut v: u64) {
            while v >= 0x80 {
                e[*n] = (v as u8) | 0x80;
                v >>= 7;
                *n += 1;
            }
            e[*n] = v as u8;
            *n += 1;
        }
        let mut e = [0u8; 40];
        let mut n = 2;
        let k = zigzag(key);
        if k != 0 {
            put(&mut e, &mut n, 1 << 3);
            put(&mut e, &mut n, k);
        }
        put(&mut e, &mut n, (2 << 3) | 2);
        let at = n;
        n += 1;
        if seconds != 0 {
            put(&mut e, &mut n, 1 << 3);
            put(&mut e, &mut n, seconds as u64);
        }
        if nanos != 0 {
            put(&mut e, &mut n, 2 << 3);
            put(&mut e, &mut n, i64::from(nanos) as u64);
        }
        e[at] = (n - at - 1) as u8;
        e[0] = ((field << 3) | 2) as u8;
        e[1] = (n - 2) as u8;
        put_prefix(out, &e, n);
    }

    /// Appends the first `n` bytes of `e`: the whole array is copied (a fixed size, so no
    /// call to `memcpy`) and the rest cut off.
    #[inline]
    fn put_prefix<const N: usize>(out: &mut Vec<u8>, e: &[u8; N], n: usize) {
        let len = out.len() + n;
        out.extend_from_slice(e);
        out.truncate(len);
    }

    pub fn double_field(out: &mut Vec<u8>, field: u32, v: f64) {
        if v.to_bits() != 0 {
            tag(out, field, 1);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    pub fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        if !b.is_empty() {
            tag(out, field, 2);
            varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
    }

    /// A length-delimited field written by `body`: the length is patched in afterwards
    /// (moving the body when it needs more than one length byte, which is rare here).
    pub fn nested(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
        tag(out, field, 2);
        let at = out.len();
        out.push(0);
        body(out);
        let len = out.len() - at - 1;
        if len < 0x80 {
            out[at] = len as u8;
        } else {
            let mut prefix = Vec::with_capacity(5);
            varint(&mut prefix, len as u64);
            out.splice(at..=at, prefix);
        }
    }

    /// One entry of a `map<sint32, V>` field: the key, then what `value` writes as field 2.
    pub fn map_entry(out: &mut Vec<u8>, field: u32, key: i32, value: impl FnOnce(&mut Vec<u8>)) {
        nested(out, field, |e| {
            sint32_field(e, 1, key);
            value(e);
        });
    }

    /// A `google.protobuf.Timestamp` or `Duration` as field `field`.
    pub fn time_field(out: &mut Vec<u8>, field: u32, seconds: i64, nanos: i32) {
        nested(out, field, |t| {
            varint_field(t, 1, seconds as u64);
            varint_field(t, 2, i64::from(nanos) as u64);
        });
    }

    /// Ends a `ReportRequest` whose entries were appended with
    /// [`super::WireEntry::append_to_report`] (protobuf takes fields in any order).
    pub fn report_trailer(out: &mut Vec<u8>, global_word_count: u32, semantics: i32) {
        varint_field(out, 3, u64::from(global_word_count));
        varint_field(out, 4, semantics as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bag::{decode_compressed, decode_report};
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

    #[test]
    fn entries_reuse_their_buffers_and_encode_the_same() {
        let headers = StringMap::new(vec![("x-user".into(), "jason".into()), (":path".into(), "/a".into())]);
        let attrs = [
            ("request.path", Value::String("/a".into())),
            ("custom.name", Value::String("v".into())),
            ("request.headers", Value::StringMap(MapVal::Borrowed(&headers))),
        ];
        let encode = || {
            let mut e = WireEntry::new();
            e.extend(attrs.iter().map(|(n, v)| (*n, v)));
            let mut out = Vec::new();
            e.append_to_report(&mut out);
            out
        };
        let first = encode();
        let kept = spare::count();
        assert!(kept >= 1);
        assert_eq!(encode(), first);
        assert_eq!(spare::count(), kept);
        // A buffer grown past the bound is released.
        let long = "x".repeat(20_000);
        let mut big = WireEntry::new();
        big.push("custom.name", &Value::String(long.as_str().into()));
        drop(big);
        assert_eq!(spare::count(), kept - 1);
    }

    #[test]
    fn the_wire_form_is_the_messages_encoding() {
        use crate::value::{Duration, Timestamp};
        use mixr_proto::istio::mixer::v1::ReportRequest;
        use prost::Message;
        let long = "x".repeat(300);
        let entries = [
            vec![
                ("request.path", Value::String("/reviews/1".into())),
                ("custom.name", Value::String(long.as_str().into())),
                ("request.size", Value::Int64(-7)),
                ("response.code", Value::Int64(0)),
                ("check.latency", Value::Double(0.25)),
                ("connection.mtls", Value::Bool(true)),
                ("quota.cache_hit", Value::Bool(false)),
                ("request.time", Value::Timestamp(Timestamp { seconds: 1_796_000_000, nanos: 5 })),
                ("response.duration", Value::Duration(Duration { seconds: -1, nanos: -500 })),
                ("context.time", Value::Timestamp(Timestamp { seconds: 0, nanos: 0 })),
                ("custom.duration", Value::Duration(Duration { seconds: -315_576_000_000, nanos: -999_999_999 })),
                ("source.ip", Value::Bytes(vec![10, 0, 0, 1].into())),
                (
                    "request.headers",
                    Value::StringMap(MapVal::from(StringMap::new(vec![
                        ("x-user".into(), "jason".into()),
                        (":path".into(), "/reviews/1".into()),
                    ]))),
                ),
            ],
            vec![
                ("request.path", Value::String("/other".into())),
                ("custom.name", Value::String("again".into())),
                ("request.method", Value::String("GET".into())),
                ("request.host", Value::String("".into())),
                ("destination.namespace", Value::String("again".into())),
                (
                    "request.headers",
                    Value::StringMap(MapVal::from(StringMap::new(
                        (0..40).map(|i| (format!("x-h{i}").into(), "again".into())).collect(),
                    ))),
                ),
            ],
        ];
        let mut by_struct = Encoder::new();
        let want = ReportRequest {
            attributes: entries.iter().map(|e| by_struct.encode(e.iter().map(|(n, v)| (*n, v)))).collect(),
            default_words: by_struct.into_words(),
            global_word_count: Encoder::global_word_count(),
            repeated_attributes_semantics: 1,
        };
        let mut bytes = Vec::new();
        for e in &entries {
            let mut wired = WireEntry::new();
            wired.extend(e.iter().map(|(n, v)| (*n, v)));
            wired.append_to_report(&mut bytes);
        }
        wire::report_trailer(&mut bytes, Encoder::global_word_count(), 1);
        let got = ReportRequest::decode(bytes.as_slice()).unwrap();
        assert!(got.default_words.is_empty());
        assert_eq!((got.global_word_count, got.repeated_attributes_semantics), (want.global_word_count, 1));
        // Words differ (each entry has its own), what they decode to does not.
        let manifest = Manifest::builtin();
        let decode = |r: &ReportRequest| -> Vec<Vec<(String, Value<'static>)>> {
            decode_report(&r.attributes, &r.default_words, r.global_word_count, false, &manifest)
                .unwrap()
                .iter()
                .map(|b| b.iter().map(|(n, v)| (n.to_string(), v.clone().into_owned())).collect())
                .collect()
        };
        let (got, want) = (decode(&got), decode(&want));
        assert_eq!(got, want);
        for (bag, entry) in got.iter().zip(&entries) {
            for (name, value) in entry {
                assert!(bag.iter().any(|(n, v)| n == name && v == value), "{name}");
            }
        }
    }
}
