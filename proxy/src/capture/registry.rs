//! What an outbound TCP connection's original destination is in the config: a
//! ServiceEntry endpoint's address and port, or nothing (then Istio's outbound traffic
//! policy decides).

use std::net::{IpAddr, SocketAddr};

use crate::config::TrafficConfig;

/// Istio's `outboundTrafficPolicy.mode`: what redirected outbound traffic to a
/// destination no ServiceEntry lists gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutboundPolicy {
    /// Passes through to where it was going (Istio's PassthroughCluster).
    #[default]
    #[value(name = "ALLOW_ANY")]
    AllowAny,
    /// Refused (Istio's BlackHoleCluster).
    #[value(name = "REGISTRY_ONLY")]
    RegistryOnly,
}

/// Istio's names for the destinations of outbound traffic no service matched.
pub const PASSTHROUGH: &str = "PassthroughCluster";
pub const BLACKHOLE: &str = "BlackHoleCluster";

/// The first host of the ServiceEntry that `dst` belongs to: one of its `addresses` (a
/// virtual IP or block) on one of its service ports, or an endpoint's address and port
/// (the endpoint's own port numbers, else the entry's service ports).
pub fn host_for(config: &TrafficConfig, dst: SocketAddr) -> Option<String> {
    let ip = crate::capture::original_dst::canonical(dst).ip();
    config.service_entries.iter().find_map(|se| {
        let virtual_ip = se.ports.iter().any(|p| p.number == dst.port())
            && se.addresses.iter().filter_map(|a| crate::authz::matcher::Cidr::parse(a)).any(|c| c.contains(ip));
        let listed = virtual_ip
            || se.endpoints.iter().any(|ep| {
                ep.address.parse::<IpAddr>().is_ok_and(|a| a == ip)
                    && if ep.ports.is_empty() {
                        se.ports.iter().any(|p| p.number == dst.port())
                    } else {
                        ep.ports.iter().any(|(_, n)| *n == dst.port())
                    }
            });
        if listed { se.hosts.first().cloned() } else { None }
    })
}

/// For a connection to one of a ServiceEntry's `addresses` (a virtual IP nothing listens
/// on): the address of one of its endpoints on that port, the `pick`-th of them in turn.
/// `None` when `dst` is not a virtual address, or the entry has no endpoint with an
/// address (then the connection goes where it was dialled).
pub fn virtual_target(config: &TrafficConfig, dst: SocketAddr, pick: usize) -> Option<SocketAddr> {
    let ip = crate::capture::original_dst::canonical(dst).ip();
    let se = config.service_entries.iter().find(|se| {
        se.ports.iter().any(|p| p.number == dst.port())
            && se.addresses.iter().filter_map(|a| crate::authz::matcher::Cidr::parse(a)).any(|c| c.contains(ip))
    })?;
    let port = se.ports.iter().find(|p| p.number == dst.port())?;
    let endpoints: Vec<SocketAddr> = se
        .endpoints
        .iter()
        .filter_map(|ep| {
            let addr = ep.address.parse::<IpAddr>().ok()?;
            let number = ep.ports.iter().find(|(name, _)| *name == port.name).map_or(port.number, |(_, n)| *n);
            Some(SocketAddr::new(addr, number))
        })
        .collect();
    (!endpoints.is_empty()).then(|| endpoints[pick % endpoints.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_matched_by_address_and_port() {
        let yaml = r#"
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.internal]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  endpoints: [{address: 10.0.0.5}, {address: 10.0.0.6, ports: {tcp: 6432}}]
"#;
        let (config, errors) = crate::config::load::load_str("se.yaml", yaml, "default");
        assert!(errors.is_empty(), "{errors:?}");
        let host = |a: &str| host_for(&config, a.parse().unwrap());
        assert_eq!(host("10.0.0.5:5432").as_deref(), Some("db.internal"));
        assert_eq!(host("10.0.0.6:6432").as_deref(), Some("db.internal"));
        assert_eq!(host("10.0.0.6:5432"), None, "the endpoint's own port replaces the service port");
        assert_eq!(host("10.0.0.5:22"), None);
        assert_eq!(host("10.0.0.7:5432"), None);
        assert_eq!(host("[::ffff:10.0.0.5]:5432").as_deref(), Some("db.internal"));
    }

    #[test]
    fn virtual_addresses_are_matched_on_the_service_ports() {
        let yaml = r#"
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: cache}
spec:
  hosts: [cache.internal]
  addresses: [240.240.0.7, 10.96.0.0/16]
  ports: [{number: 6379, name: tcp, protocol: TCP}]
  resolution: DNS
"#;
        let (config, errors) = crate::config::load::load_str("se.yaml", yaml, "default");
        assert!(errors.is_empty(), "{errors:?}");
        let host = |a: &str| host_for(&config, a.parse().unwrap());
        assert_eq!(host("240.240.0.7:6379").as_deref(), Some("cache.internal"));
        assert_eq!(host("10.96.3.4:6379").as_deref(), Some("cache.internal"));
        assert_eq!(host("240.240.0.7:22"), None, "only the service's ports");
        assert_eq!(host("10.97.0.1:6379"), None);
        // Nothing listens on a virtual IP: such connections go to the entry's endpoints.
        let with_endpoints = yaml.replace(
            "resolution: DNS",
            "resolution: STATIC\n  endpoints: [{address: 10.1.0.1}, {address: 10.1.0.2, ports: {tcp: 7000}}]",
        );
        let (config, errors) = crate::config::load::load_str("se.yaml", &with_endpoints, "default");
        assert!(errors.is_empty(), "{errors:?}");
        let vip: SocketAddr = "240.240.0.7:6379".parse().unwrap();
        assert_eq!(virtual_target(&config, vip, 0), Some("10.1.0.1:6379".parse().unwrap()));
        assert_eq!(virtual_target(&config, vip, 1), Some("10.1.0.2:7000".parse().unwrap()));
        assert_eq!(virtual_target(&config, vip, 2), Some("10.1.0.1:6379".parse().unwrap()));
        assert_eq!(
            virtual_target(&config, "10.1.0.1:6379".parse().unwrap(), 0),
            None,
            "an endpoint is dialled as it is"
        );
        let bad = yaml.replace("10.96.0.0/16", "10.96.0.0/99");
        let (_, errors) = crate::config::load::load_str("se.yaml", &bad, "default");
        assert!(errors.iter().any(|e| e.to_string().contains("addresses")), "{errors:?}");
    }
}
