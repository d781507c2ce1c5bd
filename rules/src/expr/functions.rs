//! Typed-literal parsing and the comparisons Mixer's typed values need.

use std::net::IpAddr;

use crate::value::{bytes_to_ip, ip_to_bytes};

/// Mixer's `match(str, pattern)`: exact, `prefix*` or `*suffix`.
pub fn glob_match(value: &str, pattern: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else {
        value == pattern
    }
}

pub fn parse_ip(text: &str) -> Option<Vec<u8>> {
    text.parse::<IpAddr>().ok().map(ip_to_bytes)
}

/// IP equality that treats an IPv4-mapped IPv6 address as the IPv4 address.
pub fn ip_eq(a: &[u8], b: &[u8]) -> bool {
    match (bytes_to_ip(a), bytes_to_ip(b)) {
        (Some(x), Some(y)) => x.to_canonical() == y.to_canonical(),
        _ => a == b,
    }
}

fn normalize_dns(s: &str) -> &str {
    s.strip_suffix('.').unwrap_or(s)
}

/// DNS names compare case-insensitively and ignore a trailing dot.
pub fn dns_eq(a: &str, b: &str) -> bool {
    normalize_dns(a).eq_ignore_ascii_case(normalize_dns(b))
}

/// Email addresses compare as parsed addresses: the local part exactly (after removing
/// quoting, so `"istio"@istio.io` is `istio@istio.io`), the domain as a DNS name. `None`
/// when either does not parse: an evaluation error, as in Mixer.
pub fn email_eq(a: &str, b: &str) -> Option<bool> {
    let (la, da) = parse_email(a)?;
    let (lb, db) = parse_email(b)?;
    Some(la == lb && dns_eq(&da, &db))
}

/// URIs compare after normalising what is case- or dot-insensitive: the scheme, and the
/// host's case and trailing dot. `None` when either does not parse.
pub fn uri_eq(a: &str, b: &str) -> Option<bool> {
    Some(normalize_uri(a)? == normalize_uri(b)?)
}

pub fn valid_dns_name(s: &str) -> bool {
    let s = normalize_dns(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

pub fn valid_email(s: &str) -> bool {
    parse_email(s).is_some()
}

/// `atext` of RFC 5322: what a dot-atom's parts are made of.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// Reads an address the way Go's `net/mail.ParseAddress` does for the forms configs use:
/// `local@domain` or `Name <local@domain>`, the local part a dot-atom or a quoted string.
/// Returns the unquoted local part and the domain.
pub fn parse_email(text: &str) -> Option<(String, String)> {
    let s = text.trim();
    let addr = match s.strip_suffix('>') {
        Some(inner) => &inner[inner.rfind('<')? + 1..],
        None => s,
    };
    let at = addr.rfind('@')?;
    let (local, domain) = (&addr[..at], &addr[at + 1..]);
    let local = if let Some(quoted) = local.strip_prefix('"') {
        let body = quoted.strip_suffix('"')?;
        let mut out = String::with_capacity(body.len());
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?),
                '"' => return None,
                c if c.is_control() => return None,
                c => out.push(c),
            }
        }
        out
    } else {
        let ok = !local.is_empty() && local.split('.').all(|part| !part.is_empty() && part.bytes().all(is_atext));
        if !ok {
            return None;
        }
        local.to_string()
    };
    if !valid_dns_name(domain) {
        return None;
    }
    Some((local, domain.to_string()))
}

pub fn valid_uri(s: &str) -> bool {
    normalize_uri(s).is_some()
}

/// Checks a URI reference as Go's `url.Parse` would (absolute, or scheme-less like
/// `www.istio.io` or `/path`) and returns it with its scheme and host lower-cased and a
/// host's trailing dot removed. `None` for what does not parse: an empty string, control
/// characters or spaces, a bad `%` escape, a colon in a scheme-less first segment, a
/// non-numeric port.
pub fn normalize_uri(s: &str) -> Option<String> {
    if s.is_empty() || s.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return None;
    }
    let bytes = s.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return None;
        }
    }
    let scheme_end = s.find(':').filter(|&i| {
        i > 0
            && bytes[0].is_ascii_alphabetic()
            && bytes[..i].iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    });
    let (scheme, rest) = match scheme_end {
        Some(i) => (Some(s[..i].to_ascii_lowercase()), &s[i + 1..]),
        None => {
            let first_segment = s.split(['/', '?', '#']).next().unwrap_or("");
            if first_segment.contains(':') {
                return None;
            }
            (None, s)
        }
    };
    let mut out = String::with_capacity(s.len());
    if let Some(scheme) = &scheme {
        out.push_str(scheme);
        out.push(':');
    }
    let Some(after) = rest.strip_prefix("//") else {
        out.push_str(rest);
        return Some(out);
    };
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, tail) = after.split_at(end);
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (host, port) = if hostport.starts_with('[') {
        let close = hostport.find(']')?;
        (&hostport[..=close], hostport[close + 1..].strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if port.is_some_and(|p| !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    out.push_str("//");
    if let Some(u) = userinfo {
        out.push_str(u);
        out.push('@');
    }
    out.push_str(&normalize_dns(host).to_ascii_lowercase());
    if let Some(p) = port {
        out.push(':');
        out.push_str(p);
    }
    out.push_str(tail);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        assert!(glob_match("/api/v1", "/api*"));
        assert!(glob_match("svc.cluster.local", "*.local"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exactly", "exact"));
        assert!(glob_match("anything", "*"));
    }

    #[test]
    fn typed_equality() {
        assert!(dns_eq("Foo.Example.com.", "foo.example.com"));
        assert!(!dns_eq("foo.example.com", "bar.example.com"));
        assert_eq!(email_eq("Bob@EXAMPLE.com", "Bob@example.com"), Some(true));
        assert_eq!(email_eq("bob@example.com", "Bob@example.com"), Some(false));
        assert_eq!(email_eq("\"istio\"@istio.io", "istio@istio.io"), Some(true));
        assert_eq!(email_eq("Istio <istio@istio.io>", "istio@ISTIO.io."), Some(true));
        assert_eq!(email_eq("\"a b\"@x.io", "a b@x.io"), None, "an unquoted space does not parse");
        assert_eq!(email_eq("not an email", "a@b.io"), None);
        let v4 = parse_ip("10.0.0.1").unwrap();
        let mapped = parse_ip("::ffff:10.0.0.1").unwrap();
        assert!(ip_eq(&v4, &mapped));
        assert!(!ip_eq(&v4, &parse_ip("10.0.0.2").unwrap()));
        assert!(valid_dns_name("a.b.com") && !valid_dns_name("a..b") && !valid_dns_name(""));
        assert!(valid_email("a@b.com") && !valid_email("ab.com"));
        assert!(valid_uri("http://x/y") && valid_uri("www.istio.io") && valid_uri("/a/b?c#d"));
        assert!(!valid_uri("") && !valid_uri("has space") && !valid_uri("a%zz") && !valid_uri("1a:b"));
        assert!(!valid_uri("http://host:port/"));
        assert_eq!(uri_eq("HTTP://Istio.IO./a/B", "http://istio.io/a/B"), Some(true));
        assert_eq!(uri_eq("http://istio.io/a", "http://istio.io/A"), Some(false));
        assert_eq!(uri_eq("http://u@[::1]:80/", "http://u@[::1]:80/"), Some(true));
        assert_eq!(uri_eq("www.istio.io", "www.istio.io"), Some(true));
        assert_eq!(uri_eq("bad uri", "x"), None);
    }
}
