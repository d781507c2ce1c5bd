//! A Check's attributes decoded from the wire straight into a bag.
//!
//! prost would first build `CompressedAttributes`: a dozen `HashMap`s, one SipHash insert
//! per attribute and per map entry, all dropped again once the bag is built from them.
//! That cost more than all of mixr's own work on a Check. Here the encoded message is
//! read once, words and byte values are borrowed where they lie, and the bag is built as
//! the entries go by.
//!
//! The direct path reads only the shape encoders produce: the message's words before its
//! attributes (so every word is known before any index refers to it), each map entry a
//! key and then a value, each at most once, no unknown fields, no two attributes (or two
//! keys of one string map) with the same name. Anything else goes to prost and [`decode_compressed`]
//! as before: unusual input, and every input the existing path refuses. So a request
//! gets the very answer and the very error it always got (protobuf's merge and
//! last-one-wins rules, which duplicate wins, which error is reported first), without
//! restating those rules here.

use std::borrow::Cow;
use std::sync::OnceLock;

use bytes::Bytes;
use mixr_proto::istio::mixer::v1::{CheckRequest, CompressedAttributes};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

use super::Bag;
use super::decode::{BagError, Words, check_global_word_count, check_ip, decode_compressed, duration, timestamp};
use crate::manifest::Manifest;
use crate::value::{MapVal, StringMap, Value};

/// Decodes the attributes of a Check that arrived as `LazyCheckRequest`: `parts` are the
/// occurrences of its `attributes` field. When the direct path declines, the attributes
/// are decoded by prost into `decoded`, which the bag then borrows from.
pub fn decode_check<'a>(
    parts: &'a [Bytes],
    global_word_count: u32,
    manifest: &Manifest,
    decoded: &'a OnceLock<CompressedAttributes>,
) -> Result<Bag<'a>, BagError> {
    // A dictionary mismatch is refused by the full path, after any malformed bytes are.
    if check_global_word_count(global_word_count).is_ok()
        && let Some(bag) = direct(parts, manifest)
    {
        return Ok(bag);
    }
    let attrs = decode_prost(parts)?;
    decode_compressed(decoded.get_or_init(|| attrs), global_word_count, manifest)
}

/// The attributes as prost decodes them. They are decoded inside the `CheckRequest` they
/// came in, so that malformed bytes get the error text tonic gave before.
fn decode_prost(parts: &[Bytes]) -> Result<CompressedAttributes, BagError> {
    let mut wire = Vec::with_capacity(parts.iter().map(|p| p.len() + 11).sum());
    for part in parts {
        encode_key(1, WireType::LengthDelimited, &mut wire);
        encode_varint(part.len() as u64, &mut wire);
        wire.extend_from_slice(part);
    }
    let req = CheckRequest::decode(wire.as_slice()).map_err(|e| BagError::Wire { detail: e.to_string() })?;
    Ok(req.attributes.unwrap_or_default())
}

const VARINT: u8 = WireType::Varint as u8;
const FIXED64: u8 = WireType::SixtyFourBit as u8;
const LEN: u8 = WireType::LengthDelimited as u8;

/// The bag, or `None` when the input is not of the plain shape (see the module's notes) or
/// anything in it would be refused.
fn direct<'a>(parts: &'a [Bytes], manifest: &Manifest) -> Option<Bag<'a>> {
    let mut words: Vec<&'a str> = Vec::new();
    // About one attribute per 8 bytes in typical requests; growing is only a cost.
    let mut pairs: Vec<(&'a str, Value<'a>)> =
        Vec::with_capacity((parts.iter().map(|p| p.len()).sum::<usize>() / 8).min(256));
    for part in parts {
        let mut r = Reader { buf: part };
        while !r.buf.is_empty() {
            let (tag, wire) = r.key()?;
            // Indices are resolved as entries go by, so words must all come first. The
            // order of the maps does not matter: names are unique on this path.
            if wire != LEN || (tag == 1 && !pairs.is_empty()) {
                return None;
            }
            let body = r.len_delimited()?;
            if tag == 1 {
                words.push(std::str::from_utf8(body).ok()?);
            } else {
                pairs.push(attribute(tag, body, &Words::borrowed(&words), manifest)?);
            }
        }
    }
    let count = pairs.len();
    let bag = Bag::from_pairs(pairs);
    // A name given twice: which one wins is the full path's business.
    (bag.len() == count).then_some(bag)
}

/// One entry of the map field `tag` of `CompressedAttributes`.
fn attribute<'a>(
    tag: u32,
    entry: &'a [u8],
    words: &Words<'_, 'a>,
    manifest: &Manifest,
) -> Option<(&'a str, Value<'a>)> {
    let value_wire = match tag {
        2 | 3 | 5 => VARINT,
        4 => FIXED64,
        6..=9 => LEN,
        _ => return None,
    };
    let (key, value) = map_entry(entry, value_wire)?;
    let name = words.get(sint32(key)).ok()?;
    let varint = || match value {
        Some(Field::Varint(v)) => v,
        _ => 0,
    };
    let body = || match value {
        Some(Field::Len(b)) => b,
        _ => &[],
    };
    let value = match tag {
        2 => Value::String(Cow::Borrowed(words.get(sint32(varint())).ok()?)),
        3 => Value::Int64(varint() as i64),
        4 => Value::Double(match value {
            Some(Field::Fixed64(v)) => f64::from_bits(v),
            _ => 0.0,
        }),
        5 => Value::Bool(varint() != 0),
        6 => {
            let (seconds, nanos) = seconds_nanos(body())?;
            Value::Timestamp(timestamp(name, &prost_types::Timestamp { seconds, nanos }).ok()?)
        }
        7 => {
            let (seconds, nanos) = seconds_nanos(body())?;
            Value::Duration(duration(name, &prost_types::Duration { seconds, nanos }).ok()?)
        }
        8 => {
            let bytes = body();
            check_ip(name, bytes, manifest).ok()?;
            Value::Bytes(Cow::Borrowed(bytes))
        }
        _ => Value::StringMap(MapVal::from(string_map(body(), words)?)),
    };
    Some((name, value))
}

/// `istio.mixer.v1.StringMap`: entries of word index to word index.
fn string_map<'a>(body: &'a [u8], words: &Words<'_, 'a>) -> Option<StringMap<'a>> {
    let mut entries = Vec::new();
    let mut r = Reader { buf: body };
    while !r.buf.is_empty() {
        if r.key()? != (1, LEN) {
            return None;
        }
        let (key, value) = map_entry(r.len_delimited()?, VARINT)?;
        let value = match value {
            Some(Field::Varint(v)) => v,
            _ => 0,
        };
        entries.push((Cow::Borrowed(words.get(sint32(key)).ok()?), Cow::Borrowed(words.get(sint32(value)).ok()?)));
    }
    let count = entries.len();
    let map = StringMap::new(entries);
    (map.len() == count).then_some(map)
}

/// `google.protobuf.Timestamp` or `Duration`: both are seconds (1) and nanos (2).
fn seconds_nanos(body: &[u8]) -> Option<(i64, i32)> {
    let (mut seconds, mut nanos, mut next) = (0, 0, 1);
    let mut r = Reader { buf: body };
    while !r.buf.is_empty() {
        match r.key()? {
            (1, VARINT) if next == 1 => {
                seconds = r.varint()? as i64;
                next = 2;
            }
            (2, VARINT) if next <= 2 => {
                nanos = r.varint()? as i32;
                next = 3;
            }
            _ => return None,
        }
    }
    Some((seconds, nanos))
}

/// A value field as read off the wire.
#[derive(Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
}

/// A map entry: its key (a `sint32` varint, 0 when left out, as encoders do for 0) and
/// its value of wire type `value_wire` (`None` when left out, meaning the type's default).
fn map_entry(entry: &[u8], value_wire: u8) -> Option<(u64, Option<Field<'_>>)> {
    let (mut key, mut value) = (0, None);
    let mut r = Reader { buf: entry };
    let mut next = 1;
    while !r.buf.is_empty() {
        match r.key()? {
            (1, VARINT) if next == 1 => {
                key = r.varint()?;
                next = 2;
            }
            (2, wire) if next <= 2 && wire == value_wire => {
                value = Some(match wire {
                    VARINT => Field::Varint(r.varint()?),
                    FIXED64 => Field::Fixed64(r.fixed64()?),
                    _ => Field::Len(r.len_delimited()?),
                });
                next = 3;
            }
            _ => return None,
        }
    }
    Some((key, value))
}

/// Zigzag `sint32`, truncated to 32 bits first as protobuf decoders do.
fn sint32(raw: u64) -> i32 {
    let v = raw as u32;
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

/// Protobuf's wire primitives over a slice. Every read is bounds-checked and `None` on
/// anything short or out of range.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for (i, &byte) in self.buf.iter().enumerate().take(10) {
            // The tenth byte holds bit 63 only; more is not a 64-bit varint.
            if i == 9 && byte > 1 {
                return None;
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                self.buf = &self.buf[i + 1..];
                return Some(value);
            }
        }
        None
    }

    /// A field's number and wire type.
    fn key(&mut self) -> Option<(u32, u8)> {
        let key = u32::try_from(self.varint()?).ok()?;
        let tag = key >> 3;
        (tag >= 1).then_some((tag, (key & 7) as u8))
    }

    fn len_delimited(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.buf.len() {
            return None;
        }
        let (body, rest) = self.buf.split_at(len);
        self.buf = rest;
        Some(body)
    }

    fn fixed64(&mut self) -> Option<u64> {
        let (bytes, rest) = self.buf.split_first_chunk::<8>()?;
        self.buf = rest;
        Some(u64::from_le_bytes(*bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bag::Encoder;
    use crate::value::{Duration, Timestamp};
    use mixr_proto::dictionary;
    use mixr_proto::istio::mixer::v1::StringMap as WireMap;

    const GWC: u32 = 222;

    fn manifest() -> Manifest {
        Manifest::builtin()
    }

    fn idx(word: &str) -> i32 {
        dictionary::index_of(word).unwrap()
    }

    /// What the server answered before: tonic decodes the whole `CheckRequest`, then the
    /// bag is built from its maps.
    fn reference(parts: &[Bytes], gwc: u32) -> Result<String, BagError> {
        let mut wire = Vec::new();
        for part in parts {
            prost::encoding::bytes::encode(1, part, &mut wire);
        }
        let req = CheckRequest::decode(wire.as_slice()).map_err(|e| BagError::Wire { detail: e.to_string() })?;
        let attrs = req.attributes.unwrap_or_default();
        decode_compressed(&attrs, gwc, &manifest()).map(|b| format!("{b:?}"))
    }

    fn lazy(parts: &[Bytes], gwc: u32) -> Result<String, BagError> {
        let decoded = OnceLock::new();
        decode_check(parts, gwc, &manifest(), &decoded).map(|b| format!("{b:?}"))
    }

    /// The lazy decode gives what the full path gives. Where the full path's own answer
    /// depends on its maps' iteration order (which of two entries with one name wins,
    /// which of two errors is reported), the lazy one must be among its answers.
    fn agree(parts: &[Bytes], gwc: u32) -> Result<String, BagError> {
        let got = lazy(parts, gwc);
        if got != reference(parts, gwc) {
            assert!((0..200).any(|_| reference(parts, gwc) == got), "lazy {got:?}, full {:?}", reference(parts, gwc));
        }
        got
    }

    fn one(ca: &CompressedAttributes) -> Vec<Bytes> {
        vec![Bytes::from(ca.encode_to_vec())]
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_value(rng: &mut Rng, name: &str) -> Value<'static> {
        let word = |rng: &mut Rng| -> Cow<'static, str> {
            match rng.below(3) {
                0 => dictionary::words()[rng.below(GWC as u64) as usize].into(),
                1 => format!("v{}", rng.below(40)).into(),
                _ => String::new().into(),
            }
        };
        match name {
            "source.ip" | "destination.ip" => Value::Bytes(vec![7; if rng.below(2) == 0 { 4 } else { 16 }].into()),
            "request.headers" | "source.labels" => {
                let entries = (0..rng.below(6)).map(|i| (format!("k{i}").into(), word(rng))).collect();
                Value::StringMap(MapVal::from(StringMap::new(entries)))
            }
            _ => match rng.below(8) {
                0 => Value::String(word(rng)),
                1 => Value::Int64(rng.next() as i64 >> rng.below(64)),
                2 => Value::Double(f64::from_bits(rng.next()) / 3.0),
                3 => Value::Bool(rng.below(2) == 0),
                4 => Value::Timestamp(Timestamp {
                    seconds: rng.next() as i64 >> rng.below(64),
                    nanos: rng.below(1_000_000_000) as i32,
                }),
                5 => Value::Duration(Duration {
                    seconds: rng.next() as i64 >> 40,
                    nanos: rng.below(1_000_000_000) as i32 - 500_000_000,
                }),
                6 => Value::Bytes(vec![1; rng.below(5) as usize].into()),
                _ => Value::String(word(rng)),
            },
        }
    }

    fn random_request(rng: &mut Rng) -> CompressedAttributes {
        const NAMES: [&str; 10] = [
            "request.path",
            "request.size",
            "source.ip",
            "destination.ip",
            "request.headers",
            "source.labels",
            "request.time",
            "custom.one",
            "custom.two",
            "x.three",
        ];
        let mut attrs: Vec<(&str, Value<'_>)> = Vec::new();
        for name in NAMES {
            if rng.below(3) != 0 {
                attrs.push((name, random_value(rng, name)));
            }
        }
        Encoder::encode_message(attrs.iter().map(|(n, v)| (*n, v)))
    }

    #[test]
    fn encoded_requests_decode_directly_to_the_same_bag() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..500 {
            let parts = one(&random_request(&mut rng));
            let direct = direct(&parts, &manifest()).map(|b| format!("{b:?}"));
            assert!(direct.is_some(), "{:?}", CompressedAttributes::decode(parts[0].clone()));
            assert_eq!(direct.map(Ok), Some(reference(&parts, GWC)));
        }
    }

    #[test]
    fn a_report_entry_decodes_directly_too() {
        // Entries in attribute order, not grouped by field.
        let attrs = [
            ("request.path", Value::String("/a".into())),
            ("request.size", Value::Int64(3)),
            ("custom.name", Value::String("x".into())),
            ("source.ip", Value::Bytes(vec![1, 2, 3, 4].into())),
        ];
        let mut enc = crate::bag::encode::WireEntry::new();
        enc.extend(attrs.iter().map(|(n, v)| (*n, v)));
        let mut wire = Vec::new();
        enc.write_message(&mut wire);
        let parts = vec![Bytes::from(wire)];
        assert!(direct(&parts, &manifest()).is_some());
        assert_eq!(agree(&parts, GWC), reference(&parts, GWC));
        assert!(reference(&parts, GWC).is_ok());
    }

    #[test]
    fn every_truncation_and_corruption_gets_the_full_paths_answer() {
        let mut rng = Rng(42);
        for _ in 0..12 {
            let wire = random_request(&mut rng).encode_to_vec();
            for len in 0..wire.len() {
                let _ = agree(&[Bytes::copy_from_slice(&wire[..len])], GWC);
            }
            for at in 0..wire.len() {
                for flip in [0x01, 0x02, 0x08, 0x40, 0x80, 0xff] {
                    let mut bad = wire.clone();
                    bad[at] ^= flip;
                    let _ = agree(&[Bytes::from(bad)], GWC);
                }
            }
        }
    }

    #[test]
    fn split_attributes_merge_as_protobuf_does() {
        let mut first = CompressedAttributes { words: vec!["one".into()], ..Default::default() };
        first.strings.insert(idx("request.path"), -1);
        let mut second = CompressedAttributes { words: vec!["two".into()], ..Default::default() };
        second.int64s.insert(idx("request.size"), 5);
        second.strings.insert(idx("request.method"), -2);
        let parts = vec![Bytes::from(first.encode_to_vec()), Bytes::from(second.encode_to_vec())];
        let bag = agree(&parts, GWC).unwrap();
        assert!(bag.contains("\"two\""), "{bag}");
        // No attributes at all, and an empty occurrence.
        assert_eq!(agree(&[], GWC), Ok(format!("{:?}", Bag::new())));
        assert_eq!(agree(&[Bytes::new()], GWC), Ok(format!("{:?}", Bag::new())));
    }

    #[test]
    fn repeated_keys_and_names_follow_the_full_path() {
        // The same key twice: the later entry wins, and the earlier one's bad value index
        // is never looked at.
        let mut wire = Vec::new();
        for value in [-99, idx("GET")] {
            let mut ca = CompressedAttributes::default();
            ca.strings.insert(idx("request.method"), value);
            wire.extend(ca.encode_to_vec());
        }
        let got = agree(&[Bytes::from(wire)], GWC).unwrap();
        assert!(got.contains("GET"), "{got}");

        // One name in two maps: the later map's (int64s) wins.
        let mut ca = CompressedAttributes::default();
        ca.strings.insert(idx("request.size"), idx("GET"));
        ca.int64s.insert(idx("request.size"), 9);
        assert!(agree(&one(&ca), GWC).unwrap().contains("Int64(9)"));

        // A local word spelling a global one.
        let mut ca = CompressedAttributes { words: vec!["request.path".into()], ..Default::default() };
        ca.strings.insert(-1, idx("GET"));
        ca.strings.insert(idx("request.path"), idx("POST"));
        agree(&one(&ca), GWC).unwrap();

        // Map keys given twice, by two indices.
        let mut ca = CompressedAttributes { words: vec![":path".into()], ..Default::default() };
        let mut m = WireMap::default();
        m.entries.insert(-1, idx("GET"));
        m.entries.insert(idx(":path"), idx("POST"));
        ca.string_maps.insert(idx("request.headers"), m);
        agree(&one(&ca), GWC).unwrap();
    }

    #[test]
    fn bad_indices_values_and_dictionaries_get_the_same_errors() {
        for bad in [-1, -2, 222, 10_000, i32::MIN, i32::MAX] {
            let mut ca = CompressedAttributes::default();
            ca.strings.insert(bad, idx("GET"));
            let err = agree(&one(&ca), GWC).unwrap_err();
            assert!(matches!(err, BagError::BadWordIndex { index, .. } if index == bad), "{err}");
            let mut ca = CompressedAttributes::default();
            ca.strings.insert(idx("request.method"), bad);
            agree(&one(&ca), GWC).unwrap_err();
            let mut ca = CompressedAttributes::default();
            let mut m = WireMap::default();
            m.entries.insert(idx(":path"), bad);
            ca.string_maps.insert(idx("request.headers"), m);
            agree(&one(&ca), GWC).unwrap_err();
        }
        let mut ca = CompressedAttributes::default();
        ca.bytes.insert(idx("destination.ip"), vec![1, 2, 3]);
        assert_eq!(agree(&one(&ca), GWC), Err(BagError::BadIpLength { name: "destination.ip".into(), len: 3 }));
        let mut ca = CompressedAttributes::default();
        ca.timestamps.insert(idx("request.time"), prost_types::Timestamp { seconds: 1, nanos: -1 });
        assert!(matches!(agree(&one(&ca), GWC), Err(BagError::BadTimestamp { .. })));
        let mut ca = CompressedAttributes::default();
        ca.durations.insert(idx("response.duration"), prost_types::Duration { seconds: 1, nanos: 1_000_000_000 });
        assert!(matches!(agree(&one(&ca), GWC), Err(BagError::BadValue { .. })));

        let ok = one(&random_request(&mut Rng(7)));
        let err = agree(&ok, GWC + 1).unwrap_err();
        assert!(matches!(err, BagError::GlobalWordCount { caller: 223, ours: 222 }), "{err}");
        // Malformed bytes are refused before the dictionary is compared.
        let err = agree(&[Bytes::from_static(b"\x12\x05\x08")], GWC + 1).unwrap_err();
        assert!(matches!(err, BagError::Wire { .. }), "{err}");
    }

    #[test]
    fn unusual_encodings_get_the_full_paths_answer() {
        let key = |tag: u32, wire: WireType| {
            let mut b = Vec::new();
            encode_key(tag, wire, &mut b);
            b
        };
        let path_get = {
            let mut ca = CompressedAttributes::default();
            ca.strings.insert(idx("request.path"), idx("GET"));
            ca.encode_to_vec()
        };
        let cases: Vec<Vec<u8>> = vec![
            // An unknown field at the top, in an entry, in a timestamp.
            [key(15, WireType::Varint), vec![1], path_get.clone()].concat(),
            [path_get.clone(), key(20, WireType::LengthDelimited), vec![2, 0xff, 0xff]].concat(),
            vec![0x12, 0x06, 0x08, 0x02, 0x10, 0x04, 0x18, 0x01],
            vec![0x32, 0x08, 0x08, 0x0e, 0x12, 0x04, 0x08, 0x01, 0x20, 0x05],
            // Words after the attributes that use them.
            [vec![0x12, 0x04, 0x08, 0x01, 0x10, 0x01], key(1, WireType::LengthDelimited), vec![1, b'w']].concat(),
            // Value before key, key twice, a value of the wrong wire type.
            vec![0x12, 0x04, 0x10, 0x02, 0x08, 0x04],
            vec![0x12, 0x04, 0x08, 0x02, 0x08, 0x04],
            vec![0x12, 0x03, 0x08, 0x02, 0x15],
            // A map field that is not length-delimited, a group, tag 0, wire type 7.
            vec![0x10, 0x01],
            vec![0x13, 0x14],
            vec![0x03, 0x04],
            vec![0x00, 0x01],
            vec![0x0f],
            // Words that are not UTF-8.
            vec![0x0a, 0x02, 0xc3, 0x28],
            // Huge and overlong lengths and varints.
            [vec![0x12], vec![0xff; 9], vec![0x01]].concat(),
            [vec![0x12], vec![0xff; 9], vec![0x7f]].concat(),
            [vec![0x12], vec![0xff; 11]].concat(),
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
            [vec![0x1a, 0x0d, 0x08, 0x02, 0x10], vec![0xff; 9], vec![0x02]].concat(),
            // A key that needs more than 32 bits.
            [vec![0x12, 0x0c, 0x08], vec![0xfe; 9], vec![0x01, 0x10, 0x01]].concat(),
        ];
        for case in cases {
            let got = agree(&[Bytes::from(case.clone())], GWC);
            if let Err(BagError::Wire { detail }) = &got {
                assert!(detail.starts_with("failed to decode Protobuf message: "), "{detail}");
            }
            assert!(direct(&[Bytes::from(case.clone())], &manifest()).is_none(), "{case:x?}");
        }
    }

    #[test]
    fn the_longest_varint_is_read_as_protobuf_reads_it() {
        let case = [vec![0x1a, 0x0d, 0x08, 0x02, 0x10], vec![0xff; 9], vec![0x01]].concat();
        assert!(direct(&[Bytes::from(case.clone())], &manifest()).is_some());
        assert!(agree(&[Bytes::from(case)], GWC).unwrap().contains("Int64(-1)"));
    }

    #[test]
    fn a_malformed_message_gets_prosts_error_as_tonic_gave_it() {
        let err = lazy(&[Bytes::from_static(b"\x12\x7f")], GWC).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to decode Protobuf message: CompressedAttributes.strings: CheckRequest.attributes: buffer underflow"
        );
    }
}
