//! The chunked body decoder on any bytes, read in pieces of any size (the first input
//! byte): nothing may panic, it never yields more data than it was given, trailers never
//! carry forbidden fields; and any data, chunked by our encoder, decodes back to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mixr_proxy::http1::forbidden_in_trailers;
use mixr_proxy::http1::framing::{Decoded, Decoder, Framing, encode_chunk, encode_last_chunk};

/// Decodes `wire` fed `step` bytes at a time: the data, or `None` on an error.
fn decode(wire: &[u8], step: usize) -> Option<Vec<u8>> {
    let mut d = Decoder::new(Framing::Chunked);
    let mut buf = BytesMut::new();
    let (mut fed, mut data) = (0, Vec::new());
    loop {
        match d.decode(&mut buf).ok()? {
            Decoded::Data(b) => {
                data.extend_from_slice(&b);
                assert!(data.len() <= wire.len());
            }
            Decoded::Trailers(t) => assert!(!t.keys().any(forbidden_in_trailers)),
            Decoded::End => return Some(data),
            Decoded::NeedMore if fed == wire.len() => {
                d.eof().ok()?;
                return Some(data);
            }
            Decoded::NeedMore => {
                let n = step.min(wire.len() - fed);
                buf.extend_from_slice(&wire[fed..fed + n]);
                fed += n;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, wire)) = data.split_first() else { return };
    let step = usize::from(step).max(1);
    let _ = decode(wire, step);
    let mut encoded = BytesMut::new();
    for piece in wire.chunks(step) {
        encode_chunk(&mut encoded, piece);
    }
    encode_last_chunk(&mut encoded, None);
    assert_eq!(decode(&encoded, step).as_deref(), Some(wire), "our chunks decode to what was encoded");
});
