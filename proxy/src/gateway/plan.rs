//! What the gateway serves, compiled from a config generation: its ports, each port's
//! servers in config order, and each TLS server's rustls config. Requests and handshakes
//! read it through one `ArcSwap` load; it is never rebuilt per request.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio_rustls::rustls::ServerConfig;

use crate::config::gateway::{Gateway, Server};

/// One server, with the Gateway it belongs to.
#[derive(Debug, Clone)]
pub struct PlanServer {
    /// `namespace/name` of its Gateway, as VirtualServices bind to it.
    pub gateway: String,
    pub server: Server,
    /// The rustls config of a TLS server whose files loaded (now or before).
    pub tls: Option<Arc<ServerConfig>>,
}

#[derive(Debug, Clone, Default)]
pub struct PortPlan {
    /// Whether connections to the port are TLS (its servers are HTTPS).
    pub tls: bool,
    pub servers: Vec<PlanServer>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub generation: u64,
    /// Of the certificate files, when compiled.
    pub fingerprint: u64,
    pub ports: BTreeMap<u16, PortPlan>,
}

/// A server's identity across reloads, for keeping its last good certificates.
fn server_key(gateway: &str, s: &Server) -> String {
    let hosts: Vec<String> = s.hosts.iter().map(|h| h.host.to_string()).collect();
    format!("{gateway}|{}|{}", s.port, hosts.join(","))
}

impl Plan {
    /// Compiles `gateways`; a TLS server whose files fail keeps the config it had in
    /// `previous` (or is left out, if it never loaded). Returns the errors by gateway.
    pub fn compile(
        gateways: &[&Gateway],
        generation: u64,
        fingerprint: u64,
        previous: &Plan,
    ) -> (Plan, Vec<(String, String)>) {
        let last_good: HashMap<String, Arc<ServerConfig>> = previous
            .ports
            .values()
            .flat_map(|p| &p.servers)
            .filter_map(|s| Some((server_key(&s.gateway, &s.server), s.tls.clone()?)))
            .collect();
        let mut ports: BTreeMap<u16, PortPlan> = BTreeMap::new();
        let mut errors = Vec::new();
        for g in gateways {
            let key = g.key();
            for (i, s) in g.servers.iter().enumerate() {
                let port = ports.entry(s.port).or_default();
                if port.servers.is_empty() {
                    port.tls = s.protocol.is_tls();
                } else if port.tls != s.protocol.is_tls() {
                    errors.push((
                        key.clone(),
                        format!(
                            "servers[{i}] (port {}): {:?} on a port whose first server is {}; left out",
                            s.port,
                            s.protocol,
                            if port.tls { "HTTPS" } else { "plain HTTP" }
                        ),
                    ));
                    continue;
                }
                let tls = match s.tls.as_ref().filter(|t| t.mode.is_some()) {
                    None => None,
                    Some(t) => match super::tls::server_config(t) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            let kept = last_good.get(&server_key(&key, s)).cloned();
                            let what = if kept.is_some() { "the last good certificates stay" } else { "not served" };
                            errors.push((key.clone(), format!("servers[{i}] (port {}): {e}; {what}", s.port)));
                            kept
                        }
                    },
                };
                if s.protocol.is_tls() && tls.is_none() {
                    continue;
                }
                port.servers.push(PlanServer { gateway: key.clone(), server: s.clone(), tls });
            }
        }
        (Plan { generation, fingerprint, ports }, errors)
    }
}
