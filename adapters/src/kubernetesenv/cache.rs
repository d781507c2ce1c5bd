//! Pods by name and by IP, kept current by the watch (see [`super::client`]) and read on
//! every request: lookups take a read lock for two hash probes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use super::pod::PodInfo;

#[derive(Debug, Default)]
struct Maps {
    by_key: HashMap<String, Arc<PodInfo>>,
    by_ip: HashMap<IpAddr, Arc<PodInfo>>,
}

#[derive(Debug, Default)]
pub struct PodCache {
    maps: RwLock<Maps>,
    /// Set once a full list has been read: before that, a miss means nothing.
    synced: AtomicBool,
}

impl PodCache {
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn by_key(&self, key: &str) -> Option<Arc<PodInfo>> {
        self.read().by_key.get(key).cloned()
    }

    pub fn by_ip(&self, ip: IpAddr) -> Option<Arc<PodInfo>> {
        self.read().by_ip.get(&ip.to_canonical()).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces everything with a fresh list.
    pub fn replace(&self, pods: Vec<PodInfo>) {
        let mut maps = Maps::default();
        for pod in pods {
            insert(&mut maps, Arc::new(pod));
        }
        *self.write() = maps;
        self.synced.store(true, Ordering::Release);
    }

    pub fn upsert(&self, pod: PodInfo) {
        let mut maps = self.write();
        remove(&mut maps, &pod.key());
        insert(&mut maps, Arc::new(pod));
    }

    pub fn delete(&self, key: &str) {
        remove(&mut self.write(), key);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        self.maps.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn insert(maps: &mut Maps, pod: Arc<PodInfo>) {
    if pod.addressable()
        && let Some(ip) = pod.ip
    {
        maps.by_ip.insert(ip.to_canonical(), pod.clone());
    }
    maps.by_key.insert(pod.key(), pod);
}

fn remove(maps: &mut Maps, key: &str) {
    if let Some(old) = maps.by_key.remove(key)
        && let Some(ip) = old.ip
        && maps.by_ip.get(&ip.to_canonical()).is_some_and(|p| Arc::ptr_eq(p, &old))
    {
        // Only if the address still names this pod: a new pod may have taken it.
        maps.by_ip.remove(&ip.to_canonical());
    }
}
