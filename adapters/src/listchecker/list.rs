//! List lookups that stay O(1) or O(log n) at any size: hash sets for strings, merged
//! sorted ranges for CIDRs, one compiled automaton for regexes.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use mixr_rules::value::OwnedValue;
use regex::RegexSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    Strings,
    CaseInsensitiveStrings,
    IpAddresses,
    Regex,
}

impl EntryType {
    pub fn parse(s: &str) -> Option<EntryType> {
        Some(match s {
            "STRINGS" => EntryType::Strings,
            "CASE_INSENSITIVE_STRINGS" => EntryType::CaseInsensitiveStrings,
            "IP_ADDRESSES" => EntryType::IpAddresses,
            "REGEX" => EntryType::Regex,
            _ => return None,
        })
    }
}

#[derive(Debug, Default)]
struct IpRanges {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

fn merge<T: Ord + Copy>(mut ranges: Vec<(T, T)>, next: impl Fn(T) -> Option<T>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        if let Some(last) = out.last_mut() {
            let adjacent = next(last.1).is_some_and(|n| n >= lo);
            if lo <= last.1 || adjacent {
                last.1 = last.1.max(hi);
                continue;
            }
        }
        out.push((lo, hi));
    }
    out
}

fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The last range starting at or before x is the only one that can hold it.
    let i = ranges.partition_point(|(lo, _)| *lo <= x);
    i > 0 && x <= ranges[i - 1].1
}

#[derive(Debug)]
enum Entries {
    Strings(HashSet<String>),
    Ips(IpRanges),
    Regex(Option<RegexSet>),
}

/// A compiled list.
#[derive(Debug)]
pub struct List {
    entry_type: EntryType,
    entries: Entries,
    len: usize,
}

/// An entry that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEntry {
    pub entry: String,
    pub reason: String,
}

pub fn parse_cidr(entry: &str) -> Result<IpNet, String> {
    if let Ok(net) = entry.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    entry.parse::<IpAddr>().map(IpNet::from).map_err(|_| format!("{entry:?} is not an IP address or CIDR"))
}

impl List {
    /// Compiles `entries`; unusable entries are returned, not silently dropped.
    pub fn build(entry_type: EntryType, entries: &[String]) -> (List, Vec<BadEntry>) {
        let mut bad = Vec::new();
        let compiled = match entry_type {
            EntryType::Strings => Entries::Strings(entries.iter().cloned().collect()),
            EntryType::CaseInsensitiveStrings => Entries::Strings(entries.iter().map(|e| e.to_lowercase()).collect()),
            EntryType::IpAddresses => {
                let (mut v4, mut v6) = (Vec::new(), Vec::new());
                for e in entries {
                    match parse_cidr(e) {
                        Ok(IpNet::V4(n)) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                        Ok(IpNet::V6(n)) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
                        Err(reason) => bad.push(BadEntry { entry: e.clone(), reason }),
                    }
                }
                Entries::Ips(IpRanges {
                    v4: merge(v4, |x: u32| x.checked_add(1)),
                    v6: merge(v6, |x: u128| x.checked_add(1)),
                })
            }
            EntryType::Regex => {
                let mut good = Vec::new();
                for e in entries {
                    // Entries match whole values, as Mixer anchored them.
                    let anchored = format!("^(?:{e})$");
                    match regex::Regex::new(&anchored) {
                        Ok(_) => good.push(anchored),
                        Err(err) => bad.push(BadEntry { entry: e.clone(), reason: err.to_string() }),
                    }
                }
                let set = if good.is_empty() {
                    None
                } else {
                    match regex::RegexSetBuilder::new(&good).size_limit(256 << 20).build() {
                        Ok(s) => Some(s),
                        Err(err) => {
                            bad.push(BadEntry { entry: "(all regexes)".into(), reason: err.to_string() });
                            None
                        }
                    }
                };
                Entries::Regex(set)
            }
        };
        let len = entries.len() - bad.len();
        (List { entry_type, entries: compiled, len }, bad)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, value: &OwnedValue) -> bool {
        match &self.entries {
            Entries::Strings(set) => {
                let text = value.to_text();
                if self.entry_type == EntryType::CaseInsensitiveStrings {
                    set.contains(&text.to_lowercase())
                } else {
                    set.contains(&text)
                }
            }
            Entries::Ips(ranges) => {
                let ip = value.as_ip().or_else(|| value.as_str().and_then(|s| s.parse().ok()));
                match ip.map(|ip| ip.to_canonical()) {
                    Some(IpAddr::V4(v4)) => in_ranges(&ranges.v4, u32::from(v4)),
                    Some(IpAddr::V6(v6)) => in_ranges(&ranges.v6, u128::from(v6)),
                    None => false,
                }
            }
            Entries::Regex(set) => set.as_ref().is_some_and(|s| s.is_match(&value.to_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixr_rules::value::Value;

    fn s(v: &str) -> OwnedValue {
        Value::String(v.to_string().into())
    }

    fn list(t: EntryType, entries: &[&str]) -> List {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        let (l, bad) = List::build(t, &entries);
        assert!(bad.is_empty(), "{bad:?}");
        l
    }

    #[test]
    fn strings_and_case_insensitive_strings() {
        let l = list(EntryType::Strings, &["v1", "V2"]);
        assert!(l.contains(&s("v1")) && !l.contains(&s("V1")) && l.contains(&s("V2")));
        let l = list(EntryType::CaseInsensitiveStrings, &["v1", "V2"]);
        assert!(l.contains(&s("V1")) && l.contains(&s("v2")) && !l.contains(&s("v3")));
    }

    #[test]
    fn ip_addresses_cidrs_v4_and_v6() {
        let l = list(
            EntryType::IpAddresses,
            &["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "172.16.0.0/31", "172.16.0.2/31"],
        );
        let ip = |t: &str| Value::Bytes(mixr_rules::value::ip_to_bytes(t.parse().unwrap()).into());
        assert!(l.contains(&ip("10.255.1.2")));
        assert!(l.contains(&ip("192.168.1.7")));
        assert!(!l.contains(&ip("192.168.1.8")));
        assert!(l.contains(&ip("2001:db8::1")));
        assert!(!l.contains(&ip("2001:db9::1")));
        assert!(l.contains(&ip("::ffff:10.0.0.1")), "v4-mapped addresses are v4");
        assert!(l.contains(&ip("172.16.0.3")), "adjacent ranges merge");
        assert!(l.contains(&s("10.1.1.1")), "IPs given as strings work");
        assert!(!l.contains(&s("not-an-ip")));
        let (_, bad) = List::build(EntryType::IpAddresses, &["10.0.0.300".to_string()]);
        assert_eq!(bad.len(), 1);
    }

    #[test]
    fn regex_entries_match_whole_values() {
        let l = list(EntryType::Regex, &["v[0-9]+", "canary-.*"]);
        assert!(l.contains(&s("v12")) && l.contains(&s("canary-x")));
        assert!(!l.contains(&s("xv1")) && !l.contains(&s("v1x")));
        let (_, bad) = List::build(EntryType::Regex, &["(".to_string()]);
        assert_eq!(bad.len(), 1);
    }

    #[test]
    fn hundred_thousand_entries() {
        let entries: Vec<String> = (0..100_000).map(|i| format!("user-{i}")).collect();
        let (l, _) = List::build(EntryType::Strings, &entries);
        assert_eq!(l.len(), 100_000);
        assert!(l.contains(&s("user-99999")) && !l.contains(&s("user-100000")));
        let ips: Vec<String> =
            (0..100_000u32).map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i * 4).to_string()).collect();
        let (l, _) = List::build(EntryType::IpAddresses, &ips);
        assert!(l.contains(&s("10.0.0.4")) && !l.contains(&s("10.0.0.5")));
    }
}
