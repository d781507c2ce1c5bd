//! A Report's entries decoded and handed on a chunk at a time, so that a Report of any
//! size costs memory for its encoded message plus one chunk, not for every entry decoded.
//!
//! Entries arrive still encoded (`LazyReportRequest`). Every entry is checked first, so a
//! Report is taken whole or refused whole; then each chunk is decoded, handed to the
//! caller, and dropped. With delta encoding each bag accumulates the entries before it:
//! the accumulation is carried from one chunk to the next re-pointed at what outlives the
//! chunks (the global dictionary and the Report's default words), its values copied.
//! When entries bring words of their own under delta encoding, the accumulation could
//! name them, so those Reports are decoded whole, as before.

use std::collections::HashMap;

use bytes::Bytes;
use mixr_proto::dictionary;
use mixr_proto::istio::mixer::v1::CompressedAttributes;
use prost::Message;

use super::Bag;
use super::decode::{BagError, Words, check_global_word_count, decode_with};
use crate::manifest::Manifest;

/// How a Report's entries are encoded.
#[derive(Debug, Clone, Copy)]
pub struct ReportEncoding<'r> {
    pub default_words: &'r [String],
    pub global_word_count: u32,
    /// Each entry holds only what changed since the previous one.
    pub delta: bool,
}

fn decode_entry(index: usize, raw: &Bytes) -> Result<CompressedAttributes, BagError> {
    CompressedAttributes::decode(raw.clone()).map_err(|e| BagError::Malformed { index, detail: e.to_string() })
}

/// What receives a Report's bags, a chunk at a time. The bags live no longer than a chunk;
/// names that live `'n` (a config's, say) may be added to them.
pub trait ChunkSink<'n> {
    fn chunk<'c>(&mut self, bags: &mut Vec<Bag<'c>>)
    where
        'n: 'c;
}

/// Decodes `entries` and hands `sink` each chunk of at most `chunk` bags, in order.
/// Returns the number of entries, or the first bad entry's error before any chunk.
pub fn for_each_chunk<'n>(
    entries: &[Bytes],
    encoding: ReportEncoding<'_>,
    manifest: &Manifest,
    chunk: usize,
    sink: &mut impl ChunkSink<'n>,
) -> Result<usize, BagError> {
    check_global_word_count(encoding.global_word_count)?;
    let chunk = chunk.max(1);
    let mut own_words = false;
    for (i, raw) in entries.iter().enumerate() {
        let entry = decode_entry(i, raw)?;
        own_words |= !entry.words.is_empty();
        let local = if entry.words.is_empty() { encoding.default_words } else { &entry.words };
        decode_with(&entry, &Words::new(local), manifest)?;
    }
    if encoding.delta && own_words {
        let decoded = entries.iter().enumerate().map(|(i, raw)| decode_entry(i, raw)).collect::<Result<Vec<_>, _>>()?;
        let mut bags = super::decode::report_entries(
            &decoded,
            encoding.default_words,
            encoding.global_word_count,
            true,
            manifest,
        )?;
        loop {
            let mut next: Vec<Bag<'_>> = bags.by_ref().take(chunk).collect::<Result<_, _>>()?;
            if next.is_empty() {
                return Ok(entries.len());
            }
            sink.chunk(&mut next);
        }
    }
    let lasting = Lasting::new(encoding.default_words);
    let mut carry: Option<Bag<'_>> = None;
    for raw_chunk in entries.chunks(chunk) {
        let decoded =
            raw_chunk.iter().enumerate().map(|(i, raw)| decode_entry(i, raw)).collect::<Result<Vec<_>, _>>()?;
        let mut bags: Vec<Bag<'_>> = Vec::with_capacity(decoded.len());
        for entry in &decoded {
            let local = if entry.words.is_empty() { encoding.default_words } else { &entry.words };
            let bag = decode_with(entry, &Words::new(local), manifest)?;
            let bag = match (encoding.delta, bags.last().or(carry.as_ref())) {
                (true, Some(previous)) => {
                    let mut acc = previous.clone();
                    acc.merge(bag);
                    acc
                }
                _ => bag,
            };
            bags.push(bag);
        }
        if encoding.delta {
            carry = bags.last().map(|b| lasting.rebase(b));
        }
        sink.chunk(&mut bags);
    }
    Ok(entries.len())
}

/// Names that outlive every chunk: the global dictionary's and the Report's default words.
struct Lasting<'r> {
    default_words: HashMap<&'r str, &'r str>,
}

impl<'r> Lasting<'r> {
    fn new(default_words: &'r [String]) -> Lasting<'r> {
        Lasting { default_words: default_words.iter().map(|w| (w.as_str(), w.as_str())).collect() }
    }

    fn name(&self, name: &str) -> Option<&'r str> {
        if let Some(i) = dictionary::index_of(name) {
            return dictionary::words().get(i as usize).copied();
        }
        self.default_words.get(name).copied()
    }

    /// The same attributes, named by lasting words and holding copies of their values.
    fn rebase(&self, bag: &Bag<'_>) -> Bag<'r> {
        // Names come from the dictionary or the default words here (entries with words of
        // their own are decoded whole), so none is lost.
        Bag::from_pairs(bag.iter().filter_map(|(n, v)| Some((self.name(n)?, v.clone().into_owned()))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bag::{Encoder, decode_report};
    use crate::value::Value;

    fn encode(entries: &[Vec<(&'static str, Value<'static>)>], delta: bool) -> (Vec<Bytes>, Vec<String>) {
        let mut enc = Encoder::new();
        let mut previous: Vec<(&str, Value<'static>)> = Vec::new();
        let raw = entries
            .iter()
            .map(|e| {
                // Delta encoding sends only what changed.
                let changed: Vec<_> =
                    if delta { e.iter().filter(|a| !previous.contains(a)).cloned().collect() } else { e.clone() };
                previous = e.clone();
                Bytes::from(enc.encode(changed.iter().map(|(k, v)| (*k, v))).encode_to_vec())
            })
            .collect();
        (raw, enc.into_words())
    }

    fn entries(n: usize) -> Vec<Vec<(&'static str, Value<'static>)>> {
        (0..n)
            .map(|i| {
                vec![
                    ("request.path", Value::String(format!("/p{}", i % 7).into())),
                    ("response.code", Value::Int64(200 + (i % 3) as i64)),
                    ("source.ip", Value::Bytes(vec![10, 0, 0, (i % 5) as u8].into())),
                    ("destination.service.host", Value::String("reviews.local".into())),
                ]
            })
            .collect()
    }

    /// Keeps each bag as text, and counts chunks.
    struct Collect {
        bags: Vec<String>,
        chunks: usize,
    }

    impl ChunkSink<'static> for Collect {
        fn chunk<'c>(&mut self, bags: &mut Vec<Bag<'c>>)
        where
            'static: 'c,
        {
            self.chunks += 1;
            self.bags.extend(bags.iter().map(|b| format!("{b:?}")));
        }
    }

    fn collect(raw: &[Bytes], words: &[String], delta: bool, chunk: usize) -> Vec<String> {
        let mut out = Collect { bags: Vec::new(), chunks: 0 };
        let encoding = ReportEncoding { default_words: words, global_word_count: Encoder::global_word_count(), delta };
        for_each_chunk(raw, encoding, &Manifest::builtin(), chunk, &mut out).unwrap();
        assert_eq!(out.chunks, raw.len().div_ceil(chunk));
        out.bags
    }

    #[test]
    fn chunks_give_the_same_bags_as_decoding_whole() {
        for delta in [true, false] {
            let (raw, words) = encode(&entries(1000), delta);
            let decoded: Vec<CompressedAttributes> =
                raw.iter().map(|b| CompressedAttributes::decode(b.clone()).unwrap()).collect();
            let whole: Vec<String> =
                decode_report(&decoded, &words, Encoder::global_word_count(), delta, &Manifest::builtin())
                    .unwrap()
                    .iter()
                    .map(|b| format!("{b:?}"))
                    .collect();
            for chunk in [1, 7, 256, 5000] {
                assert_eq!(collect(&raw, &words, delta, chunk), whole, "delta {delta}, chunk {chunk}");
            }
        }
    }

    #[test]
    fn a_bad_entry_refuses_the_report_before_any_chunk() {
        let (mut raw, words) = encode(&entries(600), true);
        raw[550] = Bytes::from_static(b"\xff\xff\xff");
        let mut out = Collect { bags: Vec::new(), chunks: 0 };
        let encoding =
            ReportEncoding { default_words: &words, global_word_count: Encoder::global_word_count(), delta: true };
        let err = for_each_chunk(&raw, encoding, &Manifest::builtin(), 256, &mut out).unwrap_err();
        assert!(matches!(err, BagError::Malformed { index: 550, .. }), "{err}");
        assert_eq!(out.chunks, 0);
    }
}
