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

/// Email addresses: the local part is case-sensitive, the domain is a DNS name.
pub fn email_eq(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((la, da)), Some((lb, db))) => la == lb && dns_eq(da, db),
        _ => a == b,
    }
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
    match s.rsplit_once('@') {
        Some((local, domain)) => !local.is_empty() && !local.contains(' ') && valid_dns_name(domain),
        None => false,
    }
}

/// A URI needs a scheme (`scheme:rest`), as Go's url.Parse with a required scheme.
pub fn valid_uri(s: &str) -> bool {
    match s.split_once(':') {
        Some((scheme, rest)) => {
            !scheme.is_empty()
                && scheme.as_bytes()[0].is_ascii_alphabetic()
                && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
                && !rest.is_empty()
                && !s.contains(' ')
        }
        None => false,
    }
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
        assert!(email_eq("Bob@EXAMPLE.com", "Bob@example.com"));
        assert!(!email_eq("bob@example.com", "Bob@example.com"));
        let v4 = parse_ip("10.0.0.1").unwrap();
        let mapped = parse_ip("::ffff:10.0.0.1").unwrap();
        assert!(ip_eq(&v4, &mapped));
        assert!(!ip_eq(&v4, &parse_ip("10.0.0.2").unwrap()));
        assert!(valid_dns_name("a.b.com") && !valid_dns_name("a..b") && !valid_dns_name(""));
        assert!(valid_email("a@b.com") && !valid_email("ab.com"));
        assert!(valid_uri("http://x/y") && !valid_uri("no scheme"));
    }
}
