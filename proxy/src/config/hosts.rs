//! Host names as Istio writes them in VirtualService and Gateway `hosts`: a name, `*.suffix`
//! or `*`. Compiled once at load; a request's Host is matched against them without
//! allocating.

use std::fmt;

/// One `hosts` entry, lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`: every host.
    Any,
    /// `*.example.com`, kept as `.example.com`: hosts with at least one label before the
    /// suffix (`a.example.com`, `a.b.example.com`), never `example.com` itself.
    Suffix(String),
    Exact(String),
}

impl HostPattern {
    /// Parses one entry; `*` may only stand alone or as the whole first label.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let t = text.trim().to_ascii_lowercase();
        if t.is_empty() {
            return Err("empty host".into());
        }
        if t == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(rest) = t.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return Err(format!("{text:?}: a wildcard is only `*` or a leading `*.`"));
            }
            return Ok(HostPattern::Suffix(format!(".{rest}")));
        }
        if t.contains('*') {
            return Err(format!("{text:?}: a wildcard is only `*` or a leading `*.`"));
        }
        if t.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
            return Err(format!("{text:?} is not a host name"));
        }
        Ok(HostPattern::Exact(t))
    }

    /// Whether `host` (lower-case, no port) is one of this pattern's. A host that holds a
    /// `*` itself is never matched: a caller sending `Host: *` names no host.
    pub fn matches(&self, host: &str) -> bool {
        if host.is_empty() || host.contains('*') {
            return false;
        }
        match self {
            HostPattern::Any => true,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            HostPattern::Exact(e) => e == host,
        }
    }

    /// Orders patterns as Envoy picks among virtual hosts: exact names first, then the
    /// longest suffix, `*` last.
    pub fn specificity(&self) -> usize {
        match self {
            HostPattern::Any => 0,
            HostPattern::Suffix(s) => s.len(),
            HostPattern::Exact(e) => usize::MAX / 2 + e.len(),
        }
    }

    /// Whether some host matches both patterns (a Gateway server's and a VirtualService's).
    pub fn intersects(&self, other: &HostPattern) -> bool {
        use HostPattern::*;
        match (self, other) {
            (Any, _) | (_, Any) => true,
            (Exact(a), b) | (b, Exact(a)) => b.matches(a),
            (Suffix(a), Suffix(b)) => a.ends_with(b.as_str()) || b.ends_with(a.as_str()),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
            HostPattern::Exact(e) => f.write_str(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_istio_has_them() {
        let p = |s: &str| HostPattern::parse(s).unwrap();
        assert!(p("*").matches("bookinfo.example.com"));
        assert!(p("*.example.com").matches("a.example.com"));
        assert!(p("*.example.com").matches("a.b.example.com"));
        assert!(!p("*.example.com").matches("example.com"));
        assert!(!p("*.example.com").matches("aexample.com"));
        assert!(p("Bookinfo.Example.com").matches("bookinfo.example.com"));
        assert!(!p("bookinfo.example.com").matches("other.example.com"));
        // A literal `*` Host names nothing, whatever the pattern.
        assert!(!p("*").matches("*"));
        assert!(!p("*.example.com").matches("*.example.com"));
        assert!(!p("*").matches(""));
        for bad in ["", "a.*.com", "*a.com", "*.", "a b", "ns/host"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(p("a.example.com").specificity() > p("*.example.com").specificity());
        assert!(p("*.b.example.com").specificity() > p("*.example.com").specificity());
        assert!(p("*.example.com").specificity() > p("*").specificity());
        assert!(p("*.example.com").intersects(&p("a.example.com")));
        assert!(p("*.a.example.com").intersects(&p("*.example.com")));
        assert!(!p("*.example.com").intersects(&p("example.org")));
    }
}
