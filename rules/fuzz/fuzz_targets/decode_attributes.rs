//! Compressed attributes as a Check or a Report carries them: any bytes must decode to a
//! bag or an error, never a panic; the lazy Check decoder must agree with prost's decoding;
//! a Report of them must be taken whole or refused whole.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mixr_proto::istio::mixer::v1::CompressedAttributes;
use mixr_rules::Manifest;
use mixr_rules::bag::report::{ChunkSink, ReportEncoding, for_each_chunk};
use mixr_rules::bag::{Bag, Referenced, decode_check, decode_compressed};
use prost::Message;
use std::sync::OnceLock;

struct Count(usize);

impl<'n> ChunkSink<'n> for Count {
    fn chunk<'c>(&mut self, bags: &mut Vec<Bag<'c>>)
    where
        'n: 'c,
    {
        self.0 += bags.len();
    }
}

fuzz_target!(|data: &[u8]| {
    let manifest = Manifest::builtin();
    let parts = [Bytes::copy_from_slice(data)];
    let prost = CompressedAttributes::decode(data);
    for words in [0, 222, u32::MAX] {
        let decoded = OnceLock::new();
        let lazy = decode_check(&parts, words, &manifest, &decoded);
        // Where the maps' order picks the winner of two entries with one name, or which
        // of two errors is reported, the answers may differ; their success may not.
        match &prost {
            Ok(attrs) => assert_eq!(lazy.is_ok(), decode_compressed(attrs, words, &manifest).is_ok()),
            Err(_) => assert!(lazy.is_err()),
        }
    }
    if let Ok(attrs) = prost {
        for words in [0, 1, 222, u32::MAX] {
            if let Ok(bag) = decode_compressed(&attrs, words, &manifest) {
                let _ = bag.iter().map(|(_, v)| v.to_text()).count();
                let mut refs = Referenced::new();
                refs.attribute("source.ip", bag.get("source.ip").is_some());
                let _ = refs.to_proto(words);
            }
        }
    }
    // The same bytes split into Report entries.
    let entries: Vec<Bytes> = data.split(|b| *b == 0xff).map(Bytes::copy_from_slice).collect();
    let default_words = vec!["a".to_string(), String::new()];
    for delta in [true, false] {
        let encoding = ReportEncoding { default_words: &default_words, global_word_count: 200, delta };
        let mut count = Count(0);
        if let Ok(n) = for_each_chunk(&entries, encoding, &manifest, 3, &mut count) {
            assert_eq!(n, count.0, "every entry is handed on once");
        } else {
            assert_eq!(count.0, 0, "a refused Report hands nothing on");
        }
    }
});
