//! The Host field's syntax (RFC 9112 §3.2, RFC 3986 §3.2.2): `uri-host [":" port]`. A
//! server must answer 400 to an invalid one; here it also keeps a Host that another parser
//! would read differently (`a@b`, `a/b`, `a b`) from being routed or checked as one thing
//! and reach the app as another.

use std::net::Ipv6Addr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("userinfo (`@`) is not allowed")]
    Userinfo,
    #[error("byte 0x{0:02x} is not allowed in a host")]
    InvalidByte(u8),
    #[error("invalid percent-encoding")]
    BadEscape,
    #[error("invalid IP literal")]
    IpLiteral,
    #[error("invalid port")]
    Port,
    #[error("empty host before a port")]
    Empty,
}

/// `unreserved / sub-delims`: what a reg-name holds besides escapes.
static NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < OTHERS.len() {
        t[OTHERS[i] as usize] = true;
        i += 1;
    }
    t
};

/// The unreserved and sub-delims characters that are not letters or digits.
const OTHERS: &[u8] = b"-._~!$&'()*+,;=";

/// Checks a Host value. An empty value is valid: it is what a client sends when the
/// target URI has no authority.
pub fn validate(value: &[u8]) -> Result<(), HostError> {
    // Nearly every Host is a plain name or IPv4 address, with or without a port: one
    // table lookup a byte. Anything else takes the full rules below.
    let name = value.iter().take_while(|b| NAME[usize::from(**b)]).count();
    if name > 0 {
        match value.get(name) {
            None => return Ok(()),
            Some(b':') => return port(&value[name + 1..]),
            Some(_) => {}
        }
    }
    if value.is_empty() {
        return Ok(());
    }
    let port_part = if value[0] == b'[' {
        let end = value.iter().position(|b| *b == b']').ok_or(HostError::IpLiteral)?;
        let literal = std::str::from_utf8(&value[1..end]).map_err(|_| HostError::IpLiteral)?;
        literal.parse::<Ipv6Addr>().map_err(|_| HostError::IpLiteral)?;
        match &value[end + 1..] {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return Err(HostError::IpLiteral),
        }
    } else {
        let end = value.iter().position(|b| *b == b':').unwrap_or(value.len());
        reg_name(&value[..end])?;
        if end == 0 {
            return Err(HostError::Empty);
        }
        value.get(end + 1..)
    };
    port_part.map_or(Ok(()), port)
}

/// `port = 1*5DIGIT`, at most 65535 (RFC 3986 also allows an empty one; we do not).
fn port(p: &[u8]) -> Result<(), HostError> {
    if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
        return Err(HostError::Port);
    }
    let n = p.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    if n <= u32::from(u16::MAX) { Ok(()) } else { Err(HostError::Port) }
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`, which covers IPv4 addresses.
fn reg_name(name: &[u8]) -> Result<(), HostError> {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => {
                let ok = name.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
                if !ok {
                    return Err(HostError::BadEscape);
                }
                i += 3;
                continue;
            }
            b'@' => return Err(HostError::Userinfo),
            c if NAME[usize::from(c)] => {}
            c => return Err(HostError::InvalidByte(c)),
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in ["reviews", "reviews:9080", "Reviews.Default.svc:80", "10.0.0.1:8080", "[::1]", "[::1]:80", "", "a_b"]
        {
            assert_eq!(validate(ok.as_bytes()), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("user@reviews", HostError::Userinfo),
            ("reviews/x", HostError::InvalidByte(b'/')),
            ("re views", HostError::InvalidByte(b' ')),
            ("reviews:", HostError::Port),
            ("reviews:80:80", HostError::Port),
            ("reviews:+80", HostError::Port),
            ("reviews:65536", HostError::Port),
            (":80", HostError::Empty),
            ("[::1", HostError::IpLiteral),
            ("[zz]:80", HostError::IpLiteral),
            ("[::1]x", HostError::IpLiteral),
            ("a%2", HostError::BadEscape),
        ] {
            assert_eq!(validate(bad.as_bytes()), Err(why), "{bad}");
        }
    }
}
