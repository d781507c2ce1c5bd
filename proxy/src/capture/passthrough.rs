//! The clusters of Istio's PassthroughCluster: one per original destination, for outbound
//! traffic the mesh does not know (`sidecar::passthrough` decides what goes there).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::registry::PASSTHROUGH;
use crate::upstream::Cluster;

/// Destinations kept as clusters (so their connections are pooled); past this many the
/// map starts over, so an app that calls many addresses cannot grow it without bound.
const MAX_CLUSTERS: usize = 1024;

/// Passthrough destinations as clusters of one.
#[derive(Debug, Default)]
pub struct Passthrough {
    by_addr: Mutex<HashMap<SocketAddr, Arc<Cluster>>>,
}

impl Passthrough {
    pub fn get(&self, addr: SocketAddr) -> Arc<Cluster> {
        let mut map = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CLUSTERS && !map.contains_key(&addr) {
            map.clear();
        }
        map.entry(addr)
            .or_insert_with(|| {
                let upstream =
                    crate::route::Upstream { address: addr.ip().to_string(), port: addr.port(), labels: Vec::new() };
                Arc::new(Cluster::new(PASSTHROUGH.into(), vec![upstream], Default::default()))
            })
            .clone()
    }

    pub fn len(&self) -> usize {
        self.by_addr.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_kept_once_and_the_map_is_bounded() {
        let p = Passthrough::default();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert!(Arc::ptr_eq(&p.get(a), &p.get(a)));
        for port in 1..=MAX_CLUSTERS as u16 {
            p.get(SocketAddr::new(a.ip(), port));
        }
        assert!(p.len() <= MAX_CLUSTERS, "{}", p.len());
    }
}
