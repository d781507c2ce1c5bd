//! The gateway role (`mixr-proxy --role gateway`): Istio's ingress gateway.
//!
//! The proxy is a gateway for every `Gateway` resource whose `selector` its `--label`s
//! satisfy. Each server port of those gateways gets a listener (on `--gateway-bind`);
//! plain ports take the sidecar's HTTP/1.1 fast path (and hyper for h2c), HTTPS ports
//! terminate TLS ([`tls`]) and hand the connection to hyper. A request then meets the same
//! pipeline as a sidecar's outbound request (`forward`: route, fault, pool limits,
//! retries, mirror), with the routes of the VirtualServices bound to the gateway, after a
//! Check through mixr with the gateway's own attributes ([`handle`]).
//!
//! Layers, one way: `cli` → `gateway` → `forward`, `proxy`, `worker`, `listener`,
//! `policy`; nothing below knows the gateway.
//!
//! - [`plan`]: the ports, their servers and TLS configs, compiled from each config
//!   generation and rebuilt when a certificate file changes;
//! - [`listen`]: worker threads and the listeners, opened and closed as ports come and go;
//! - [`handle`]: one request.

pub mod handle;
pub mod listen;
pub mod plan;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::listener::ConnectionCount;
use crate::proxy::Proxy;

/// The gateway's flags.
#[derive(Debug, Clone)]
pub struct Options {
    /// The address every server port listens on.
    pub bind: IpAddr,
    /// Listen on a free port for each server port instead of the port itself (tests,
    /// unprivileged runs); `--addr-file` says which.
    pub ephemeral_ports: bool,
    /// Proxies in front of the gateway whose `X-Forwarded-For` entries are trusted, from
    /// the right, as Envoy's `xff_num_trusted_hops`; 0 trusts none (the peer is the client).
    pub trusted_hops: usize,
    pub addr_file: Option<PathBuf>,
    /// The other listeners' lines of the address file (admin, stats).
    pub addr_summary: String,
    pub workers: usize,
}

/// The running gateway: the proxy it shares the pipeline with, and its ports.
pub struct Gateway {
    pub proxy: Arc<Proxy>,
    pub options: Options,
    pub plan: ArcSwap<plan::Plan>,
    /// Connections held on the gateway's listeners, all ports and workers together.
    pub connections: Arc<ConnectionCount>,
    /// `source.labels` of every Check and Report, built once.
    pub labels: mixr_rules::value::StringMap<'static>,
    pub stats: GatewayStats,
}

/// The gateway's own counters, registered beside the proxy's.
pub struct GatewayStats {
    /// TLS handshakes that failed or timed out, or that no server took (SNI).
    pub handshake_failures: prometheus::IntCounter,
    /// Servers whose certificate files could not be loaded, by gateway.
    pub tls_load_failures: prometheus::IntCounterVec,
}

impl GatewayStats {
    fn new(registry: &prometheus::Registry) -> GatewayStats {
        let handshake_failures = prometheus::IntCounter::new(
            "mixr_proxy_gateway_tls_handshake_failures_total",
            "TLS handshakes at the gateway that failed, timed out or matched no server.",
        )
        .expect("valid metric");
        let tls_load_failures = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "mixr_proxy_gateway_tls_load_failures_total",
                "Loads of a gateway server's certificate files that failed (the last good ones stay).",
            ),
            &["gateway"],
        )
        .expect("valid metric");
        // A second registration (tests building several gateways on one proxy) keeps the first.
        let _ = registry.register(Box::new(handshake_failures.clone()));
        let _ = registry.register(Box::new(tls_load_failures.clone()));
        GatewayStats { handshake_failures, tls_load_failures }
    }
}

impl Gateway {
    pub fn new(proxy: Arc<Proxy>, options: Options) -> Arc<Gateway> {
        let labels = crate::policy::attributes::destination_labels(&proxy.identity);
        let stats = GatewayStats::new(&proxy.stats.registry);
        let gw = Arc::new(Gateway {
            proxy,
            options,
            plan: ArcSwap::from_pointee(plan::Plan::default()),
            connections: Default::default(),
            labels,
            stats,
        });
        gw.refresh();
        gw
    }

    /// Compiles the plan again when the config or a certificate file changed; returns
    /// whether it did.
    pub fn refresh(&self) -> bool {
        let tables = self.proxy.tables.load();
        let previous = self.plan.load();
        let selected: Vec<_> =
            tables.config.gateways.iter().filter(|g| g.selects(&self.proxy.identity.labels)).collect();
        let fingerprint = tls::files_fingerprint(selected.iter().flat_map(|g| g.servers.iter()));
        if previous.generation == tables.generation && previous.fingerprint == fingerprint && tables.generation != 0 {
            return false;
        }
        let (plan, errors) = plan::Plan::compile(&selected, tables.generation, fingerprint, &previous);
        for (gateway, e) in &errors {
            self.stats.tls_load_failures.with_label_values(&[gateway.as_str()]).inc();
            tracing::error!(gateway = %gateway, error = %e, "gateway server not loaded; its last good certificates stay");
        }
        if selected.is_empty() {
            tracing::warn!(labels = ?self.proxy.identity.labels, "no Gateway selects this proxy's labels");
        }
        self.plan.store(Arc::new(plan));
        true
    }
}

/// The client address of a request from `peer`: with `trusted_hops` N > 0, the Nth
/// address of `X-Forwarded-For` from the right (what the proxy nearest us saw, N = 1),
/// when there are that many and it is an address; else the peer itself.
pub fn client_address(peer: SocketAddr, xff: Option<&str>, trusted_hops: usize) -> IpAddr {
    if trusted_hops == 0 {
        return peer.ip();
    }
    let Some(xff) = xff else { return peer.ip() };
    let entries: Vec<&str> = xff.split(',').map(str::trim).collect();
    if entries.len() < trusted_hops {
        return peer.ip();
    }
    entries[entries.len() - trusted_hops].parse().unwrap_or(peer.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_are_trusted_only_as_far_as_the_trusted_hops() {
        let peer: SocketAddr = "10.0.0.9:5555".parse().unwrap();
        let xff = Some("1.2.3.4, 192.168.1.1, 10.1.1.1");
        assert_eq!(client_address(peer, xff, 0), peer.ip(), "no trusted hop: the peer");
        assert_eq!(client_address(peer, xff, 1), "10.1.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(client_address(peer, xff, 2), "192.168.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(client_address(peer, xff, 3), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(client_address(peer, xff, 4), peer.ip(), "fewer entries than hops");
        assert_eq!(client_address(peer, None, 1), peer.ip());
        assert_eq!(client_address(peer, Some("junk"), 1), peer.ip());
    }
}
