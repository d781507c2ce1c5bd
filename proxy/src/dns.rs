//! ServiceEntry `resolution: DNS`: the names among its endpoint addresses (or its hosts,
//! when it lists no endpoints) are resolved off the request path, and each config load
//! puts their addresses in place of the names ([`expand`]).
//!
//! Names are looked up with tokio's resolver (`lookup_host`, the system's getaddrinfo on
//! a blocking thread). It does not give record TTLs, so a name is looked up again every
//! `--dns-refresh-secs` (30 s by default, held between 5 s and 5 min) rather than when
//! its records expire. A failed lookup keeps the addresses last found (a name never
//! resolved stays a name, which the pool resolves as it connects), is counted in
//! `mixr_proxy_dns_failures_total{host}` and is tried again after 5 s, doubling up to the
//! refresh interval.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{Endpoint, TrafficConfig};

pub const MIN_REFRESH: Duration = Duration::from_secs(5);
pub const MAX_REFRESH: Duration = Duration::from_secs(300);
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
/// The longest one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Addresses found for each name, shared by the resolver and config loads.
pub struct Dns {
    pub resolved: ArcSwap<HashMap<String, Vec<IpAddr>>>,
    pub failures: prometheus::IntCounterVec,
    pub refresh: Duration,
}

impl Dns {
    pub fn new(registry: &prometheus::Registry, refresh: Duration) -> Dns {
        let failures = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "mixr_proxy_dns_failures_total",
                "Failed lookups of ServiceEntry names (resolution: DNS); the last addresses found stay.",
            ),
            &["host"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(failures.clone()));
        Dns { resolved: Default::default(), failures, refresh: refresh.clamp(MIN_REFRESH, MAX_REFRESH) }
    }

    /// Sets the refresh interval, held between [`MIN_REFRESH`] and [`MAX_REFRESH`].
    pub fn set_refresh(&mut self, refresh: Duration) {
        self.refresh = refresh.clamp(MIN_REFRESH, MAX_REFRESH);
    }
}

fn is_dns(resolution: &str) -> bool {
    resolution.eq_ignore_ascii_case("DNS")
}

/// The names `config` wants resolved, lower-case, each once.
pub fn names(config: &TrafficConfig) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for se in config.service_entries.iter().filter(|se| is_dns(&se.resolution)) {
        let candidates: Vec<&str> = if se.endpoints.is_empty() {
            se.hosts.iter().map(String::as_str).collect()
        } else {
            se.endpoints.iter().map(|e| e.address.as_str()).collect()
        };
        for n in candidates {
            let n = n.to_ascii_lowercase();
            if n.parse::<IpAddr>().is_err() && !n.contains('*') && !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

/// Puts the addresses found in place of the names of DNS ServiceEntries: one endpoint
/// per address, with the name's ports and labels. Names not resolved yet stay.
pub fn expand(config: &mut TrafficConfig, resolved: &HashMap<String, Vec<IpAddr>>) {
    for se in config.service_entries.iter_mut().filter(|se| is_dns(&se.resolution)) {
        if se.endpoints.is_empty() {
            se.endpoints = se
                .hosts
                .iter()
                .map(|h| Endpoint { address: h.clone(), ports: Vec::new(), labels: Vec::new() })
                .collect();
        }
        let mut out = Vec::with_capacity(se.endpoints.len());
        for e in &se.endpoints {
            match resolved.get(&e.address.to_ascii_lowercase()) {
                Some(ips) if !ips.is_empty() => {
                    out.extend(ips.iter().map(|ip| Endpoint { address: ip.to_string(), ..e.clone() }))
                }
                _ => out.push(e.clone()),
            }
        }
        se.endpoints = out;
    }
}

#[derive(Debug, Clone, Copy)]
struct Due {
    at: Instant,
    failures: u32,
}

/// When each name is looked up next.
#[derive(Debug, Default)]
pub struct Schedule {
    due: HashMap<String, Due>,
}

impl Schedule {
    /// Looks up the names of `wanted` that are due (new ones at once) with `lookup`;
    /// returns the new map when an address set changed (names no longer wanted dropped).
    pub async fn run_due<F, Fut>(
        &mut self,
        dns: &Dns,
        wanted: &[String],
        now: Instant,
        lookup: F,
    ) -> Option<HashMap<String, Vec<IpAddr>>>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<IpAddr>, String>>,
    {
        self.due.retain(|n, _| wanted.contains(n));
        let current = dns.resolved.load();
        let mut map: HashMap<String, Vec<IpAddr>> =
            current.iter().filter(|(n, _)| wanted.contains(n)).map(|(n, v)| (n.clone(), v.clone())).collect();
        let mut changed = map.len() != current.len();
        for name in wanted {
            let due = self.due.entry(name.clone()).or_insert(Due { at: now, failures: 0 });
            if due.at > now {
                continue;
            }
            let found = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup(name.clone())).await {
                Ok(Ok(ips)) if !ips.is_empty() => Ok(ips),
                Ok(Ok(_)) => Err("no addresses".to_string()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!("no answer in {LOOKUP_TIMEOUT:?}")),
            };
            match found {
                Ok(mut ips) => {
                    ips.sort();
                    ips.dedup();
                    *due = Due { at: now + dns.refresh, failures: 0 };
                    if map.get(name) != Some(&ips) {
                        map.insert(name.clone(), ips);
                        changed = true;
                    }
                }
                Err(e) => {
                    dns.failures.with_label_values(&[name.as_str()]).inc();
                    let backoff = MIN_REFRESH.saturating_mul(1 << due.failures.min(6)).min(dns.refresh);
                    *due = Due { at: now + backoff, failures: due.failures + 1 };
                    tracing::warn!(host = %name, error = %e, retry_in = ?backoff, "DNS lookup failed; keeping the last addresses found");
                }
            }
        }
        changed.then_some(map)
    }
}

/// Looks a name up with tokio's resolver.
pub async fn lookup(name: String) -> Result<Vec<IpAddr>, String> {
    tokio::net::lookup_host((name.as_str(), 0)).await.map(|a| a.map(|s| s.ip()).collect()).map_err(|e| e.to_string())
}

/// Keeps `dns` current for the names `wanted()` gives until `shutdown`, calling
/// `changed` after a set of addresses changed (the caller reloads its config).
pub async fn run(
    dns: Arc<Dns>,
    wanted: impl Fn() -> Vec<String>,
    changed: impl Fn(),
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut schedule = Schedule::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let names = wanted();
        if names.is_empty() && dns.resolved.load().is_empty() {
            continue;
        }
        if let Some(map) = schedule.run_due(&dns, &names, Instant::now(), lookup).await {
            dns.resolved.store(Arc::new(map));
            changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::config::load_str;

    const ENTRIES: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: external}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: https}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: backends}
spec:
  hosts: [backends]
  ports: [{number: 80, name: http}]
  resolution: DNS
  endpoints:
  - {address: Db.Example.com, labels: {version: v1}}
  - {address: 10.0.0.7, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: static}
spec:
  hosts: [static]
  ports: [{number: 80, name: http}]
  endpoints: [{address: not-resolved.example.com}]
"#;

    #[test]
    fn names_of_dns_entries_become_their_addresses_with_their_labels() {
        let (mut cfg, errors) = load_str("se.yaml", ENTRIES, "default");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(names(&cfg), ["api.example.com", "db.example.com"], "STATIC entries and addresses are not names");
        let resolved: HashMap<String, Vec<IpAddr>> =
            [("db.example.com".to_string(), vec!["10.1.0.1".parse().unwrap(), "10.1.0.2".parse().unwrap()])].into();
        expand(&mut cfg, &resolved);
        let addrs = |i: usize| cfg.service_entries[i].endpoints.iter().map(|e| e.address.clone()).collect::<Vec<_>>();
        assert_eq!(addrs(0), ["api.example.com"], "not resolved yet: the name stays");
        assert_eq!(addrs(1), ["10.1.0.1", "10.1.0.2", "10.0.0.7"]);
        assert_eq!(cfg.service_entries[1].endpoints[1].labels, [("version".to_string(), "v1".to_string())]);
        assert_eq!(addrs(2), ["not-resolved.example.com"]);
    }

    #[tokio::test]
    async fn failures_keep_the_last_addresses_are_counted_and_retried_with_backoff() {
        let dns = Dns::new(&prometheus::Registry::new(), Duration::from_secs(60));
        let answers: Mutex<Vec<Result<Vec<IpAddr>, String>>> = Mutex::new(vec![
            Ok(vec!["10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap()]),
            Err("SERVFAIL".into()),
            Err("SERVFAIL".into()),
            Ok(vec!["10.0.0.3".parse().unwrap()]),
        ]);
        let lookup = |_name: String| {
            let next = answers.lock().unwrap().remove(0);
            async move { next }
        };
        let wanted = vec!["db".to_string()];
        let mut s = Schedule::default();
        let t0 = Instant::now();
        let map = s.run_due(&dns, &wanted, t0, lookup).await.expect("first answer");
        assert_eq!(map["db"], ["10.0.0.1".parse::<IpAddr>().unwrap(), "10.0.0.2".parse().unwrap()]);
        dns.resolved.store(Arc::new(map));
        assert!(s.run_due(&dns, &wanted, t0 + Duration::from_secs(59), lookup).await.is_none(), "not due yet");
        assert!(
            s.run_due(&dns, &wanted, t0 + Duration::from_secs(60), lookup).await.is_none(),
            "a failure changes nothing"
        );
        assert_eq!(dns.failures.with_label_values(&["db"]).get(), 1);
        assert!(s.run_due(&dns, &wanted, t0 + Duration::from_secs(64), lookup).await.is_none(), "retried after 5 s");
        assert_eq!(dns.failures.with_label_values(&["db"]).get(), 1);
        assert!(s.run_due(&dns, &wanted, t0 + Duration::from_secs(65), lookup).await.is_none());
        assert_eq!(dns.failures.with_label_values(&["db"]).get(), 2, "then after 10 s");
        assert!(s.run_due(&dns, &wanted, t0 + Duration::from_secs(74), lookup).await.is_none());
        let map = s.run_due(&dns, &wanted, t0 + Duration::from_secs(75), lookup).await.expect("new addresses");
        assert_eq!(map["db"], ["10.0.0.3".parse::<IpAddr>().unwrap()]);
        dns.resolved.store(Arc::new(map));
        // A name no longer configured is forgotten.
        assert_eq!(s.run_due(&dns, &[], t0 + Duration::from_secs(76), lookup).await.map(|m| m.len()), Some(0));
    }
}
