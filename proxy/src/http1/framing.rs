//! HTTP/1.1 message bodies on the wire (RFC 9112 §6-7): how a body is delimited, and a
//! decoder that takes one frame at a time out of a read buffer, so a response is never
//! buffered whole.

use bytes::{Buf, Bytes, BytesMut};
use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};

/// Longest chunk-size line, trailer block or message head accepted.
pub const MAX_LINE: usize = 64 * 1024;
/// Most header fields in one head or trailer block (as hyper allows).
pub const MAX_HEADERS: usize = 100;

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the peer closes: the connection cannot be reused.
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("chunk not followed by CRLF")]
    ChunkEnd,
    #[error("invalid trailer block")]
    Trailers,
    #[error("line or trailer block over {MAX_LINE} bytes")]
    TooLong,
    #[error("connection closed before the body ended")]
    Truncated,
}

/// What the buffer yielded.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// Read more into the buffer and call again.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
    Done,
}

#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        Decoder { state }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes still expected, when that is known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next frame out of `buf`, consuming what it used.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, FramingError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(n) | State::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = n.min(buf.len() as u64);
                    let left = n - take;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Decoded::Data(buf.split_to(take as usize).freeze()));
                }
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    let Some(line) = take_line(buf)? else { return Ok(Decoded::NeedMore) };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
                }
                State::ChunkEnd => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                    } else if buf.len() < 2 && buf.first().is_none_or(|b| *b == b'\r') {
                        return Ok(Decoded::NeedMore);
                    } else {
                        return Err(FramingError::ChunkEnd);
                    }
                    self.state = State::ChunkSize;
                }
                State::Trailers => return self.trailers(buf),
            }
        }
    }

    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, FramingError> {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.state = State::Done;
            return Ok(Decoded::End);
        }
        // Every line of the block ends in CRLF, as the chunk lines must.
        let block = find_head_end(buf).map_or(&buf[..], |end| &buf[..end]);
        if has_bare_lf(block) {
            return Err(FramingError::Trailers);
        }
        if buf.len() < 2 {
            return Ok(Decoded::NeedMore);
        }
        let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (used, fields) = match httparse::parse_headers(buf, &mut raw) {
            Ok(httparse::Status::Complete(done)) => done,
            Ok(httparse::Status::Partial) if buf.len() < MAX_LINE => return Ok(Decoded::NeedMore),
            Ok(httparse::Status::Partial) => return Err(FramingError::TooLong),
            Err(_) => return Err(FramingError::Trailers),
        };
        let mut map = HeaderMap::with_capacity(fields.len());
        for f in fields.iter() {
            let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| FramingError::Trailers)?;
            let value = HeaderValue::from_bytes(f.value).map_err(|_| FramingError::Trailers)?;
            if !super::forbidden_in_trailers(&name) {
                map.append(name, value);
            }
        }
        buf.advance(used);
        self.state = State::Done;
        Ok(Decoded::Trailers(map))
    }

    /// The peer closed the connection: the end of an until-close body, else a truncation.
    pub fn eof(&mut self) -> Result<Decoded, FramingError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(Decoded::End)
            }
            _ => Err(FramingError::Truncated),
        }
    }
}

/// Where a block of lines ends (after its empty line), if it has.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Whether a line in `bytes` ends in LF alone. A lone LF is a line end to some parsers
/// and not to others: accepting one is how requests are smuggled.
fn has_bare_lf(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, b)| *b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}

/// One line without its CRLF, or `None` until it is complete. A line ending in LF alone
/// is an error (RFC 9112 §7.1: `chunk-size [ chunk-ext ] CRLF`).
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(end) if end > 0 && buf[end - 1] == b'\r' => {
            let mut line = buf.split_to(end + 1);
            line.truncate(end - 1);
            Ok(Some(line))
        }
        Some(_) => Err(FramingError::ChunkSize),
        None if buf.len() >= MAX_LINE => Err(FramingError::TooLong),
        None => Ok(None),
    }
}

/// `1a;name=value` is 26: hex digits, then optional whitespace and extensions (ignored,
/// but only visible characters, spaces and tabs: no bare CR or other controls).
fn chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(FramingError::ChunkSize);
    }
    let rest = &line[digits..];
    let rest = &rest[rest.iter().take_while(|b| **b == b' ' || **b == b'\t').count()..];
    if !(rest.is_empty() || rest[0] == b';') {
        return Err(FramingError::ChunkSize);
    }
    if rest.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
        return Err(FramingError::ChunkSize);
    }
    Ok(line[..digits].iter().fold(0u64, |n, b| (n << 4) | u64::from((*b as char).to_digit(16).unwrap_or(0))))
}

/// Appends `n` written in `radix` (10 or 16, lower-case). Lengths go into every head and
/// chunk: the formatting machinery costs several times as much.
pub fn put_number(out: &mut BytesMut, mut n: u64, radix: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b"0123456789abcdef"[(n % radix) as usize];
        n /= radix;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Appends a `content-length` field.
pub fn put_content_length(out: &mut BytesMut, n: u64) {
    out.extend_from_slice(b"content-length: ");
    put_number(out, n, 10);
    out.extend_from_slice(b"\r\n");
}

/// Appends one data chunk in chunked encoding.
pub fn encode_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    put_number(out, data.len() as u64, 16);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk, with trailers when there are some.
pub fn encode_last_chunk(out: &mut BytesMut, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (k, v) in trailers.into_iter().flatten().filter(|(k, _)| !super::forbidden_in_trailers(k)) {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal_and_hex() {
        for (n, radix, text) in
            [(0, 10, "0"), (7, 10, "7"), (1234567890, 10, "1234567890"), (u64::MAX, 10, "18446744073709551615")]
                .into_iter()
                .chain([(0, 16, "0"), (255, 16, "ff"), (0x10000, 16, "10000"), (u64::MAX, 16, "ffffffffffffffff")])
        {
            let mut out = BytesMut::new();
            put_number(&mut out, n, radix);
            assert_eq!(&out[..], text.as_bytes());
        }
    }

    /// Feeds `wire` in pieces of `step` bytes and collects data, trailers and the end.
    fn decode_all(framing: Framing, wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), FramingError> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let (mut data, mut trailers) = (Vec::new(), None);
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => data.extend_from_slice(&b),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((data, trailers)),
                Decoded::NeedMore if fed == wire.len() => {
                    d.eof()?;
                    return Ok((data, trailers));
                }
                Decoded::NeedMore => {
                    let n = step.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\ngrpc-status: 0\r\nx-more: yes\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, trailers) = decode_all(Framing::Chunked, wire, step).unwrap();
            assert_eq!(data, b"hello, world", "step {step}");
            let t = trailers.unwrap();
            assert_eq!(t["grpc-status"], "0");
            assert_eq!(t["x-more"], "yes");
        }
        let (data, trailers) = decode_all(Framing::Chunked, b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!((data.as_slice(), trailers), (&b"abc"[..], None));
    }

    #[test]
    fn length_and_close_delimited_bodies() {
        let (data, _) = decode_all(Framing::Length(5), b"hello", 2).unwrap();
        assert_eq!(data, b"hello");
        let (data, _) = decode_all(Framing::UntilClose, b"all of it", 4).unwrap();
        assert_eq!(data, b"all of it");
        let mut d = Decoder::new(Framing::Length(5));
        let mut buf = BytesMut::from(&b"hello, next response"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::Data(Bytes::from_static(b"hello")));
        assert!(d.is_done());
        assert_eq!(&buf[..], b", next response", "bytes past the body stay for the next message");
    }

    #[test]
    fn malformed_and_truncated_bodies_are_errors() {
        assert_eq!(decode_all(Framing::Chunked, b"zz\r\n", 4), Err(FramingError::ChunkSize));
        assert_eq!(decode_all(Framing::Chunked, b"3\r\nabcXY", 4), Err(FramingError::ChunkEnd));
        assert_eq!(decode_all(Framing::Chunked, b"1234567890abcdef0\r\n", 4), Err(FramingError::ChunkSize));
        assert_eq!(decode_all(Framing::Chunked, b"5\r\nhel", 4), Err(FramingError::Truncated));
        assert_eq!(decode_all(Framing::Length(10), b"short", 4), Err(FramingError::Truncated));
        assert_eq!(decode_all(Framing::Chunked, &vec![b';'; MAX_LINE + 1], 1024), Err(FramingError::TooLong));
        // Line ends other than CRLF, and controls in an extension.
        assert_eq!(decode_all(Framing::Chunked, b"3\nabc\r\n0\r\n\r\n", 4), Err(FramingError::ChunkSize));
        assert_eq!(decode_all(Framing::Chunked, b"3\r\nabc\n0\r\n\r\n", 4), Err(FramingError::ChunkEnd));
        assert_eq!(decode_all(Framing::Chunked, b"3;a\rb\r\nabc\r\n0\r\n\r\n", 4), Err(FramingError::ChunkSize));
        assert_eq!(decode_all(Framing::Chunked, b"0\r\nx: 1\nz: 2\r\n\r\n", 64), Err(FramingError::Trailers));
        assert_eq!(decode_all(Framing::Chunked, b"0\r\n\n", 64), Err(FramingError::Trailers));
    }

    #[test]
    fn trailers_never_carry_framing_or_hop_by_hop_fields() {
        let wire = b"1\r\nx\r\n0\r\ngrpc-status: 0\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\nhost: evil\r\nconnection: close\r\n\r\n";
        let (_, trailers) = decode_all(Framing::Chunked, wire, 7).unwrap();
        let t = trailers.unwrap();
        assert_eq!(t.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["grpc-status"]);
        let mut forbidden = HeaderMap::new();
        forbidden.insert("content-length", HeaderValue::from_static("9"));
        forbidden.insert("x-sum", HeaderValue::from_static("1"));
        let mut out = BytesMut::new();
        encode_last_chunk(&mut out, Some(&forbidden));
        assert_eq!(&out[..], b"0\r\nx-sum: 1\r\n\r\n");
    }

    #[test]
    fn chunks_encode_to_what_the_decoder_reads() {
        let mut out = BytesMut::new();
        encode_chunk(&mut out, b"hello");
        encode_chunk(&mut out, b"");
        encode_chunk(&mut out, &[b'x'; 300]);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("7"));
        encode_last_chunk(&mut out, Some(&trailers));
        let (data, t) = decode_all(Framing::Chunked, &out, 5).unwrap();
        assert_eq!(data.len(), 305);
        assert_eq!(t.unwrap()["grpc-status"], "7");
    }
}
