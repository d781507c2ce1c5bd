//! What to capture and the nat-table rules that do it.
//!
//! The rules live in chains of our own, reached by one jump each from `PREROUTING`
//! (inbound) and `OUTPUT` (outbound), so that removing them never touches a rule someone
//! else wrote:
//!
//! - `MIXR_INBOUND`: returns for the sidecar's own ports and excluded ones, sends the rest
//!   to `MIXR_IN_REDIRECT` (to the inbound listener);
//! - `MIXR_OUTPUT`: returns for the sidecar's uid (its own upstream connections would loop
//!   otherwise), loopback destinations, excluded ports and ranges, and sends what is left
//!   (or only the included ranges) to `MIXR_REDIRECT` (to the outbound listener).

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

/// Every chain we create, in the order a script declares them.
pub const CHAINS: [&str; 4] = ["MIXR_INBOUND", "MIXR_IN_REDIRECT", "MIXR_OUTPUT", "MIXR_REDIRECT"];

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{key}: {value:?}: {reason}")]
    Invalid { key: String, value: String, reason: String },
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed { command: String, status: String, stderr: String },
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> CaptureError {
    CaptureError::Invalid { key: key.into(), value: value.into(), reason: reason.into() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    fn holds(self, net: &IpNet) -> bool {
        matches!((self, net), (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_)))
    }
}

/// Destinations whose outbound traffic is captured (Istio's `includeOutboundIPRanges`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpRanges {
    /// `*`, Istio's default.
    All,
    /// Only these; an empty list captures no outbound traffic.
    Only(Vec<IpNet>),
}

/// What the rules capture. `Default` is what istio-init did with no annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub proxy_uid: u32,
    pub outbound_port: u16,
    pub inbound_port: u16,
    /// Ports of the sidecar itself, never redirected inbound (admin, stats, listeners).
    pub sidecar_ports: Vec<u16>,
    pub include_outbound: IpRanges,
    pub exclude_outbound: Vec<IpNet>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_inbound_ports: Vec<u16>,
    /// Also write IPv6 rules. Off unless asked for: redirected IPv6 traffic needs a sidecar
    /// listening on IPv6, which a pod without IPv6 cannot start.
    pub ipv6: bool,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            proxy_uid: super::PROXY_UID,
            outbound_port: super::OUTBOUND_PORT,
            inbound_port: super::INBOUND_PORT,
            sidecar_ports: vec![super::ADMIN_PORT, super::OUTBOUND_PORT, super::INBOUND_PORT, super::STATS_PORT],
            include_outbound: IpRanges::All,
            exclude_outbound: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_inbound_ports: Vec::new(),
            ipv6: false,
        }
    }
}

/// Items of a comma-separated annotation value, blanks dropped.
fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `includeOutboundIPRanges`: `*` or CIDRs. `key` names the value in errors.
pub fn parse_ranges(key: &str, text: &str) -> Result<IpRanges, CaptureError> {
    if text.trim() == "*" {
        return Ok(IpRanges::All);
    }
    if items(text).any(|s| s == "*") {
        return Err(invalid(key, text, "`*` must stand alone"));
    }
    parse_cidrs(key, text).map(IpRanges::Only)
}

/// CIDRs; a bare address is its own /32 or /128.
pub fn parse_cidrs(key: &str, text: &str) -> Result<Vec<IpNet>, CaptureError> {
    items(text)
        .map(|s| {
            s.parse::<IpNet>()
                .map(|n| n.trunc())
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| invalid(key, text, format!("{s:?} is not a CIDR range")))
        })
        .collect()
}

/// Port numbers, 1 to 65535.
pub fn parse_ports(key: &str, text: &str) -> Result<Vec<u16>, CaptureError> {
    items(text)
        .map(|s| match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(invalid(key, text, format!("{s:?} is not a port (1-65535)"))),
        })
        .collect()
}

impl Capture {
    pub fn families(&self) -> Vec<Family> {
        if self.ipv6 { vec![Family::V4, Family::V6] } else { vec![Family::V4] }
    }

    /// Inbound ports left alone: the sidecar's, then the excluded ones, each once.
    fn inbound_passthrough(&self) -> Vec<u16> {
        let mut ports = self.sidecar_ports.clone();
        for p in &self.exclude_inbound_ports {
            if !ports.contains(p) {
                ports.push(*p);
            }
        }
        ports
    }

    /// The `iptables-restore --noflush` input for one family. Declaring a chain in the
    /// script creates it, or empties it when it exists, so the chains always end up with
    /// exactly these rules; the jumps from the built-in chains are removed before a
    /// restore (see [`super::apply`]) since a restore only appends to those.
    pub fn script(&self, family: Family) -> String {
        let mut s = String::from("*nat\n");
        for chain in CHAINS {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
        let _ = writeln!(s, "-A MIXR_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}", self.inbound_port);
        for port in self.inbound_passthrough() {
            let _ = writeln!(s, "-A MIXR_INBOUND -p tcp --dport {port} -j RETURN");
        }
        s.push_str("-A MIXR_INBOUND -p tcp -j MIXR_IN_REDIRECT\n");
        let _ = writeln!(s, "-A MIXR_REDIRECT -p tcp -j REDIRECT --to-ports {}", self.outbound_port);
        let _ = writeln!(s, "-A MIXR_OUTPUT -m owner --uid-owner {} -j RETURN", self.proxy_uid);
        let _ = writeln!(s, "-A MIXR_OUTPUT -d {} -j RETURN", family.loopback());
        for port in &self.exclude_outbound_ports {
            let _ = writeln!(s, "-A MIXR_OUTPUT -p tcp --dport {port} -j RETURN");
        }
        for net in self.exclude_outbound.iter().filter(|n| family.holds(n)) {
            let _ = writeln!(s, "-A MIXR_OUTPUT -d {net} -j RETURN");
        }
        match &self.include_outbound {
            IpRanges::All => s.push_str("-A MIXR_OUTPUT -p tcp -j MIXR_REDIRECT\n"),
            IpRanges::Only(nets) => {
                for net in nets.iter().filter(|n| family.holds(n)) {
                    let _ = writeln!(s, "-A MIXR_OUTPUT -d {net} -p tcp -j MIXR_REDIRECT");
                }
            }
        }
        s.push_str("-A PREROUTING -p tcp -j MIXR_INBOUND\n");
        s.push_str("-A OUTPUT -p tcp -j MIXR_OUTPUT\n");
        s.push_str("COMMIT\n");
        s
    }

    /// Every family's script, each under a comment naming the tool that loads it.
    pub fn print(&self) -> String {
        let mut out = String::new();
        for family in self.families() {
            let tool = match family {
                Family::V4 => "iptables-restore --noflush",
                Family::V6 => "ip6tables-restore --noflush",
            };
            let _ = writeln!(out, "# {tool}");
            out.push_str(&self.script(family));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/capture").join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        assert_eq!(actual, expected, "{} differs (UPDATE_GOLDEN=1 rewrites it)", path.display());
    }

    #[test]
    fn the_default_captures_all_tcp_but_the_sidecars_own() {
        golden("default.rules", &Capture::default().print());
    }

    #[test]
    fn annotations_shape_the_rules_per_family() {
        let capture = Capture {
            include_outbound: parse_ranges("include", "10.0.0.0/8, 172.16.0.0/12,fd00::/8").unwrap(),
            exclude_outbound: parse_cidrs("exclude", "10.96.0.1,10.1.2.3/16,fd00::1").unwrap(),
            exclude_outbound_ports: parse_ports("ports", "3306, 6379").unwrap(),
            exclude_inbound_ports: parse_ports("inbound", "22,15000,8081").unwrap(),
            proxy_uid: 2000,
            ipv6: true,
            ..Capture::default()
        };
        let text = capture.print();
        golden("annotated.rules", &text);
        // The v4 script names no v6 range and the reverse.
        let v6 = capture.script(Family::V6);
        assert!(v6.contains("-d fd00::/8 -p tcp -j MIXR_REDIRECT") && !v6.contains("10.0.0.0"), "{v6}");
        // Host bits of a range are dropped, as iptables would; 15000 is listed once.
        assert!(text.contains("-d 10.1.0.0/16 -j RETURN"), "{text}");
        assert_eq!(capture.script(Family::V4).matches("--dport 15000 ").count(), 1);
    }

    #[test]
    fn an_empty_include_list_captures_no_outbound_traffic() {
        let capture = Capture { include_outbound: parse_ranges("k", "").unwrap(), ..Capture::default() };
        let text = capture.script(Family::V4);
        assert!(!text.contains("-j MIXR_REDIRECT"), "{text}");
        assert!(text.contains("-j MIXR_IN_REDIRECT"), "{text}");
    }

    #[test]
    fn bad_values_name_the_key_and_the_item() {
        let e = parse_ports("excludeInboundPorts", "80,http").unwrap_err().to_string();
        assert_eq!(e, r#"excludeInboundPorts: "80,http": "http" is not a port (1-65535)"#);
        assert!(parse_ports("k", "0").is_err() && parse_ports("k", "65536").is_err());
        let e = parse_cidrs("excludeOutboundIPRanges", "10.0.0.0/33").unwrap_err().to_string();
        assert!(e.contains(r#""10.0.0.0/33" is not a CIDR range"#), "{e}");
        assert!(parse_ranges("k", "*,10.0.0.0/8").is_err());
        assert_eq!(parse_ranges("k", " * ").unwrap(), IpRanges::All);
    }
}
