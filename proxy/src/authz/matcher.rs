//! Istio's value matching for authorization: exact, `prefix*`, `*suffix` and `*` (any
//! value, but one must be present), and CIDR blocks for addresses.

use std::net::IpAddr;

use mixr_rules::config::{ConfigError, Param};

/// One value pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    pub fn parse(text: &str) -> Pattern {
        if text == "*" {
            Pattern::Any
        } else if let Some(p) = text.strip_suffix('*') {
            Pattern::Prefix(p.to_string())
        } else if let Some(s) = text.strip_prefix('*') {
            Pattern::Suffix(s.to_string())
        } else {
            Pattern::Exact(text.to_string())
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => value == e,
            Pattern::Prefix(p) => value.starts_with(p.as_str()),
            Pattern::Suffix(s) => value.ends_with(s.as_str()),
        }
    }
}

/// A field's values and negated values: the field holds when a value, if any are given,
/// matches one of them, and matches none of the negated ones. An absent value matches no
/// positive pattern and no negated one (Envoy's RBAC, which Istio compiles to, reads a
/// missing principal that way).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Field {
    pub values: Option<Vec<Pattern>>,
    pub not_values: Vec<Pattern>,
}

impl Field {
    pub fn new(values: Option<Vec<String>>, not_values: Option<Vec<String>>) -> Field {
        Field {
            values: values.map(|v| v.iter().map(|t| Pattern::parse(t)).collect()),
            not_values: not_values.unwrap_or_default().iter().map(|t| Pattern::parse(t)).collect(),
        }
    }

    pub fn holds(&self, value: Option<&str>) -> bool {
        let positive = match (&self.values, value) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(ps), Some(v)) => ps.iter().any(|p| p.matches(v)),
        };
        let negative = match value {
            Some(v) => self.not_values.iter().any(|p| p.matches(v)),
            None => false,
        };
        positive && !negative
    }
}

/// An address block: `10.0.0.0/8`, `::1/128`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    base: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, bits) = match text.split_once('/') {
            Some((a, b)) => (a.parse::<IpAddr>().ok()?, b.parse::<u8>().ok()?),
            None => {
                let a = text.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (bits <= max).then_some(Cidr { base: addr, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn prefix(a: u128, b: u128, bits: u8, width: u8) -> bool {
            if bits == 0 {
                return true;
            }
            let shift = width - bits;
            (a >> shift) == (b >> shift)
        }
        match (self.base, ip) {
            (IpAddr::V4(b), IpAddr::V4(a)) => prefix(u32::from(a).into(), u32::from(b).into(), self.bits, 32),
            (IpAddr::V6(b), IpAddr::V6(a)) => prefix(u128::from(a), u128::from(b), self.bits, 128),
            (IpAddr::V4(b), IpAddr::V6(a)) => {
                a.to_ipv4_mapped().is_some_and(|a| prefix(u32::from(a).into(), u32::from(b).into(), self.bits, 32))
            }
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

/// Blocks and negated blocks, as [`Field`] for addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blocks {
    pub blocks: Option<Vec<Cidr>>,
    pub not_blocks: Vec<Cidr>,
}

impl Blocks {
    pub fn holds(&self, ip: Option<IpAddr>) -> bool {
        let positive = match (&self.blocks, ip) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(bs), Some(ip)) => bs.iter().any(|b| b.contains(ip)),
        };
        positive && !ip.is_some_and(|ip| self.not_blocks.iter().any(|b| b.contains(ip)))
    }
}

/// A list of CIDR blocks at `p`; a malformed one is an error naming it.
pub fn cidrs(p: Param<'_>) -> Result<Vec<Cidr>, ConfigError> {
    p.string_list()?
        .iter()
        .map(|t| Cidr::parse(t).ok_or_else(|| p.error(format!("{t:?} is not an address or CIDR block"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_as_istio_reads_them() {
        assert!(Pattern::parse("*").matches("anything"));
        assert!(Pattern::parse("/api/*").matches("/api/v1") && !Pattern::parse("/api/*").matches("/apx"));
        assert!(Pattern::parse("*.example.com").matches("a.example.com"));
        assert!(!Pattern::parse("*.example.com").matches("example.com"));
        assert!(Pattern::parse("GET").matches("GET") && !Pattern::parse("GET").matches("get"));
    }

    #[test]
    fn absent_values_match_no_pattern() {
        let f = Field::new(Some(vec!["*".into()]), None);
        assert!(f.holds(Some("x")) && !f.holds(None));
        let not = Field::new(None, Some(vec!["cluster.local/ns/evil/*".into()]));
        assert!(not.holds(None) && not.holds(Some("cluster.local/ns/good/sa/a")));
        assert!(!not.holds(Some("cluster.local/ns/evil/sa/a")));
    }

    #[test]
    fn cidr_blocks() {
        let b = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(b.contains("10.1.200.3".parse().unwrap()) && !b.contains("10.2.0.1".parse().unwrap()));
        assert!(b.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("192.168.1.1").unwrap().contains("192.168.1.1".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8").unwrap().contains("fd12::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none() && Cidr::parse("ten").is_none());
    }
}
