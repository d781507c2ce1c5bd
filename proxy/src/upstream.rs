//! Upstream clusters: a destination's endpoints with load balancing, connection-pool
//! limits (overflow fails at once with 503) and outlier detection (ejection after
//! consecutive errors).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Destination, HashKey, LoadBalancer, OutlierDetection, TrafficPolicy};
use crate::pool::{PoolKey, PoolSettings, Target};
use crate::rand;
use crate::route::{RouteError, RouteId, RouteTable, Upstream};

#[derive(Debug)]
pub struct EndpointState {
    pub upstream: Upstream,
    /// `host:port`, to connect to and for absolute URIs.
    authority: String,
    in_flight: AtomicU32,
    /// Envoy's two counters: any 5xx, and gateway errors (502, 503, 504, no response).
    consecutive_errors: AtomicU32,
    consecutive_gateway_errors: AtomicU32,
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl EndpointState {
    fn new(upstream: Upstream) -> EndpointState {
        let authority = if upstream.address.contains(':') {
            format!("[{}]:{}", upstream.address, upstream.port)
        } else {
            format!("{}:{}", upstream.address, upstream.port)
        };
        EndpointState {
            authority,
            upstream,
            in_flight: AtomicU32::new(0),
            consecutive_errors: AtomicU32::new(0),
            consecutive_gateway_errors: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
        }
    }

    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|t| t > now)
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }
}

/// Counts a request in flight on an endpoint (for LEAST_REQUEST) until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Cluster>, usize);

impl InFlight {
    pub fn endpoint(&self) -> &EndpointState {
        &self.0.endpoints[self.1]
    }

    /// Where the pool sends this request.
    pub fn target(&self) -> Target<'_> {
        Target {
            key: PoolKey { cluster: self.0.id, endpoint: self.1 },
            owner: &self.0.alive,
            address: self.endpoint().authority(),
            settings: self.0.settings,
            tls: self.0.tls.as_ref(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.endpoints[self.1].in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Permission to send under the cluster's connection-pool limits.
#[derive(Debug)]
pub struct Admission {
    _connection: Option<OwnedSemaphorePermit>,
    _request: Option<OwnedSemaphorePermit>,
}

/// Permission to retry under the cluster's `maxRetries` (retries in flight at once).
#[derive(Debug)]
pub struct RetryPermit(Arc<Cluster>);

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.0.retries_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

static NEXT_CLUSTER_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
pub struct Cluster {
    /// Unique for the process's life: pooled connections are keyed by it.
    pub id: u64,
    pub name: String,
    pub policy: TrafficPolicy,
    pub settings: PoolSettings,
    /// DestinationRule TLS, its files read when the cluster is built.
    pub tls: Option<crate::mtls::upstream::UpstreamTls>,
    endpoints: Vec<EndpointState>,
    next: AtomicUsize,
    /// HTTP/1.1 connections: one request at a time each, so this bounds requests.
    connections: Option<Arc<Semaphore>>,
    pending: Option<Arc<Semaphore>>,
    /// `http2MaxRequests`: requests in flight to the cluster, over any protocol.
    requests: Option<Arc<Semaphore>>,
    max_retries: u32,
    retries_in_flight: AtomicU32,
    pub overflows: AtomicU32,
    /// Held only here: the pool keeps it weakly, to sweep the connections of clusters a
    /// reload replaced without knowing what a cluster is.
    alive: Arc<()>,
}

/// How an attempt ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    /// No response: connect failure, reset, timeout.
    Failure,
}

impl Cluster {
    pub fn new(name: String, endpoints: Vec<Upstream>, policy: TrafficPolicy) -> Cluster {
        let pool = &policy.connection_pool;
        let connections = pool.max_connections.map(|n| Arc::new(Semaphore::new(n as usize)));
        // Requests waiting for a connection: Envoy's pending queue (default 1024 when only
        // connections are limited).
        let pending = match (pool.max_connections, pool.http1_max_pending_requests) {
            (_, Some(p)) => Some(Arc::new(Semaphore::new(p as usize))),
            (Some(_), None) => Some(Arc::new(Semaphore::new(1024))),
            _ => None,
        };
        let host = name.split('|').next().unwrap_or_default();
        let tls = policy.tls.as_ref().and_then(|t| crate::mtls::upstream::UpstreamTls::new(t, host));
        Cluster {
            id: NEXT_CLUSTER_ID.fetch_add(1, Ordering::Relaxed),
            tls,
            name,
            settings: PoolSettings::from(pool),
            requests: pool.http2_max_requests.map(|n| Arc::new(Semaphore::new(n as usize))),
            max_retries: pool.max_retries.unwrap_or(u32::MAX),
            retries_in_flight: AtomicU32::new(0),
            endpoints: endpoints.into_iter().map(EndpointState::new).collect(),
            next: AtomicUsize::new(0),
            connections,
            pending,
            overflows: AtomicU32::new(0),
            alive: Arc::new(()),
            policy,
        }
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// Waits for a connection slot, or fails at once when the pending queue (or the
    /// cluster's request limit) is full. `http2` requests share connections, so only the
    /// request limit applies to them.
    pub async fn admit(&self, http2: bool) -> Option<Admission> {
        let request = match &self.requests {
            Some(r) => match r.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    self.overflows.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            },
            None => None,
        };
        let conns = match &self.connections {
            Some(c) if !http2 => c,
            _ => return Some(Admission { _connection: None, _request: request }),
        };
        if let Ok(p) = conns.clone().try_acquire_owned() {
            return Some(Admission { _connection: Some(p), _request: request });
        }
        let waiting = match &self.pending {
            Some(p) => match p.clone().try_acquire_owned() {
                Ok(w) => w,
                Err(_) => {
                    self.overflows.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            },
            None => return None,
        };
        let permit = conns.clone().acquire_owned().await.ok();
        drop(waiting);
        permit.map(|p| Admission { _connection: Some(p), _request: request })
    }

    /// A retry may go only while fewer than `maxRetries` retries are in flight.
    pub fn retry_permit(self: &Arc<Self>) -> Option<RetryPermit> {
        let now = self.retries_in_flight.fetch_add(1, Ordering::Relaxed);
        if now >= self.max_retries {
            self.retries_in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(RetryPermit(self.clone()))
    }

    /// Picks an endpoint that is not ejected. `hash` comes from the consistent-hash key.
    pub fn pick(self: &Arc<Self>, hash: Option<u64>) -> Option<InFlight> {
        if self.policy.outlier_detection.is_none() {
            // Nothing is ever ejected: every endpoint is a candidate, no list to build.
            let n = self.endpoints.len();
            if n == 0 {
                return None;
            }
            let chosen = self.choose(hash, n, |i| i);
            self.endpoints[chosen].in_flight.fetch_add(1, Ordering::Relaxed);
            return Some(InFlight(self.clone(), chosen));
        }
        let now = Instant::now();
        let healthy: Vec<usize> = (0..self.endpoints.len()).filter(|i| !self.endpoints[*i].ejected(now)).collect();
        // With everything ejected, Envoy still balances across all ("panic mode").
        let candidates = if healthy.is_empty() { (0..self.endpoints.len()).collect() } else { healthy };
        if candidates.is_empty() {
            return None;
        }
        let chosen = self.choose(hash, candidates.len(), |i| candidates[i]);
        self.endpoints[chosen].in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(self.clone(), chosen))
    }

    /// Picks one of `n` candidates (`candidate(i)` is the endpoint index of the i-th) by
    /// the cluster's load balancer.
    fn choose(&self, hash: Option<u64>, n: usize, candidate: impl Fn(usize) -> usize) -> usize {
        match (hash, self.policy.load_balancer) {
            (Some(h), _) => candidate((h % n as u64) as usize),
            (None, LoadBalancer::Random) => candidate(rand::below(n as u32) as usize),
            (None, LoadBalancer::LeastRequest) if n > 1 => {
                // Power of two choices.
                let a = candidate(rand::below(n as u32) as usize);
                let b = candidate(rand::below(n as u32) as usize);
                let load = |i: usize| self.endpoints[i].in_flight.load(Ordering::Relaxed);
                if load(b) < load(a) { b } else { a }
            }
            _ => candidate(self.next.fetch_add(1, Ordering::Relaxed) % n),
        }
    }

    /// Feeds outlier detection; returns true when this outcome ejected the endpoint.
    pub fn record(&self, endpoint: &EndpointState, outcome: Outcome) -> bool {
        self.record_at(endpoint, outcome, Instant::now())
    }

    pub fn record_at(&self, endpoint: &EndpointState, outcome: Outcome, now: Instant) -> bool {
        let Some(od) = &self.policy.outlier_detection else { return false };
        // As Envoy counts them: a request that got no response counts as a 503 for both.
        let gateway = matches!(outcome, Outcome::Failure | Outcome::Status(502..=504));
        let error = gateway || matches!(outcome, Outcome::Status(500..=599));
        let count = |counter: &AtomicU32, hit: bool| {
            if hit {
                counter.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                counter.store(0, Ordering::Relaxed);
                0
            }
        };
        let n5xx = count(&endpoint.consecutive_errors, error);
        let ngw = count(&endpoint.consecutive_gateway_errors, gateway);
        // A limit of 0 turns its detector off.
        let reached = |limit: Option<u32>, n: u32| limit.is_some_and(|l| l > 0 && n >= l);
        let limit_hit = reached(od.consecutive_5xx_errors, n5xx) || reached(od.consecutive_gateway_errors, ngw);
        if !limit_hit || !self.may_eject(od, now) {
            return false;
        }
        let times = endpoint.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        *endpoint.ejected_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(now + od.base_ejection_time * times);
        endpoint.consecutive_errors.store(0, Ordering::Relaxed);
        endpoint.consecutive_gateway_errors.store(0, Ordering::Relaxed);
        tracing::info!(cluster = %self.name, endpoint = %endpoint.authority(), for_secs = (od.base_ejection_time * times).as_secs(), "endpoint ejected");
        true
    }

    fn may_eject(&self, od: &OutlierDetection, now: Instant) -> bool {
        let total = self.endpoints.len();
        let ejected = self.endpoints.iter().filter(|e| e.ejected(now)).count();
        (ejected + 1) * 100 <= total * od.max_ejection_percent as usize
            && (total - ejected - 1) * 100 >= total * od.min_health_percent as usize
    }

    pub fn ejected_count(&self) -> usize {
        let now = Instant::now();
        self.endpoints.iter().filter(|e| e.ejected(now)).count()
    }
}

/// A destination's identity: host (any case), subset, port.
fn destination_hash(d: &Destination) -> u64 {
    let mut h = crate::fasthash::FastHasher::default();
    // Hosts are nearly always lower-case already: hashed a word at a time then.
    if d.host.bytes().any(|b| b.is_ascii_uppercase()) {
        h.write(d.host.to_ascii_lowercase().as_bytes());
    } else {
        h.write(d.host.as_bytes());
    }
    d.subset.hash(&mut h);
    d.port.hash(&mut h);
    h.finish()
}

fn same_destination(a: &Destination, b: &Destination) -> bool {
    a.host.eq_ignore_ascii_case(&b.host) && a.subset == b.subset && a.port == b.port
}

/// The clusters whose destinations share one hash.
type SameHash = Vec<(Destination, Arc<Cluster>)>;

/// Clusters by destination, created on first use for one route table. Looked up on every
/// request, so without building a key.
#[derive(Debug, Default)]
pub struct Clusters {
    map: Mutex<crate::fasthash::FastMap<u64, SameHash>>,
}

impl Clusters {
    pub fn get(&self, table: &RouteTable, d: &Destination) -> Result<Arc<Cluster>, RouteError> {
        let key = destination_hash(d);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(&key).and_then(|v| v.iter().find(|(dest, _)| same_destination(dest, d))) {
            return Ok(c.1.clone());
        }
        let endpoints = table.endpoints(d)?;
        let name = format!(
            "{}|{}|{}",
            d.host,
            d.subset.as_deref().unwrap_or(""),
            d.port.map(|p| p.to_string()).unwrap_or_default()
        );
        let c = Arc::new(Cluster::new(name, endpoints, table.policy(d)));
        map.entry(key).or_default().push((d.clone(), c.clone()));
        Ok(c)
    }

    /// Every route's destinations resolved to their clusters, for a table at config load.
    /// A destination that names no known service or subset keeps its error: requests
    /// routed to it get a 503 saying so, as Envoy answers a missing cluster.
    pub fn resolve(&self, table: &RouteTable) -> RouteClusters {
        let mut by_route: Vec<Vec<Vec<Resolved>>> = Vec::new();
        for (id, route) in table.routes() {
            if by_route.len() <= id.virtual_service {
                by_route.resize_with(id.virtual_service + 1, Vec::new);
            }
            let resolved = route.route.iter().map(|d| self.get(table, &d.destination)).collect();
            by_route[id.virtual_service].push(resolved);
        }
        RouteClusters(by_route)
    }

    pub fn all(&self) -> Vec<Arc<Cluster>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).values().flatten().map(|(_, c)| c.clone()).collect()
    }
}

/// A route destination's cluster, or why it has none.
pub type Resolved = Result<Arc<Cluster>, RouteError>;

/// The clusters of each route's destinations: by VirtualService, route, then destination.
#[derive(Debug, Default)]
pub struct RouteClusters(Vec<Vec<Vec<Resolved>>>);

impl RouteClusters {
    pub fn get(&self, id: RouteId, destination: usize) -> Option<&Resolved> {
        self.0.get(id.virtual_service)?.get(id.route)?.get(destination)
    }
}

/// The consistent-hash input for a request, if its policy asks for one.
pub fn hash_of(key: &HashKey, headers: &hyper::HeaderMap, source_ip: Option<std::net::IpAddr>) -> Option<u64> {
    let mut h = DefaultHasher::new();
    match key {
        HashKey::Header(name) => headers.get(name.as_str())?.as_bytes().hash(&mut h),
        HashKey::Cookie(name) => headers
            .get_all(hyper::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .map(str::trim)
            .find_map(|c| c.strip_prefix(name.as_str())?.strip_prefix('='))?
            .hash(&mut h),
        HashKey::SourceIp => source_ip?.hash(&mut h),
    }
    Some(h.finish())
}

/// Backoff before retry `n` (1-based): 25 ms doubling, capped at 250 ms, with full jitter.
pub fn backoff(n: u32) -> Duration {
    let cap = (25u64 << n.min(4)).min(250);
    Duration::from_millis(rand::below(cap as u32 + 1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConnectionPool;

    fn ups(n: u16) -> Vec<Upstream> {
        (0..n).map(|i| Upstream { address: "127.0.0.1".into(), port: 9000 + i, labels: vec![] }).collect()
    }

    fn od(consecutive: u32, max_percent: u32) -> TrafficPolicy {
        TrafficPolicy {
            outlier_detection: Some(OutlierDetection {
                consecutive_5xx_errors: Some(consecutive),
                consecutive_gateway_errors: None,
                interval: Duration::from_secs(1),
                base_ejection_time: Duration::from_secs(30),
                max_ejection_percent: max_percent,
                min_health_percent: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn round_robin_visits_every_endpoint() {
        let c = Arc::new(Cluster::new("c".into(), ups(3), TrafficPolicy::default()));
        let ports: Vec<u16> = (0..6).map(|_| c.pick(None).unwrap().endpoint().upstream.port).collect();
        assert_eq!(ports, vec![9000, 9001, 9002, 9000, 9001, 9002]);
    }

    #[test]
    fn least_request_avoids_busy_endpoints() {
        let policy = TrafficPolicy { load_balancer: LoadBalancer::LeastRequest, ..Default::default() };
        let c = Arc::new(Cluster::new("c".into(), ups(2), policy));
        let busy: Vec<InFlight> =
            (0..50).map(|_| c.pick(None).unwrap()).filter(|f| f.endpoint().upstream.port == 9000).collect();
        assert!(!busy.is_empty());
        // With 9000 loaded, every pick that compares both goes to 9001.
        let picks: Vec<u16> = (0..40).map(|_| c.pick(None).unwrap().endpoint().upstream.port).collect();
        assert!(picks.iter().filter(|p| **p == 9001).count() > 20, "{picks:?}");
    }

    #[test]
    fn consecutive_errors_eject_within_the_percent_limit() {
        let c = Arc::new(Cluster::new("c".into(), ups(2), od(3, 50)));
        let now = Instant::now();
        let e0 = &c.endpoints[0];
        assert!(!c.record_at(e0, Outcome::Status(500), now));
        assert!(!c.record_at(e0, Outcome::Status(200), now), "a success resets the count");
        assert!(!c.record_at(e0, Outcome::Status(503), now));
        assert!(!c.record_at(e0, Outcome::Failure, now));
        assert!(c.record_at(e0, Outcome::Status(500), now), "third consecutive error ejects");
        assert_eq!(c.ejected_count(), 1);
        let picks: Vec<u16> = (0..4).map(|_| c.pick(None).unwrap().endpoint().upstream.port).collect();
        assert_eq!(picks, vec![9001; 4], "ejected endpoints get no traffic");
        // The other endpoint cannot be ejected too: at most 50%.
        let e1 = &c.endpoints[1];
        for _ in 0..3 {
            c.record_at(e1, Outcome::Status(500), now);
        }
        assert_eq!(c.ejected_count(), 1);
    }

    #[test]
    fn istio_1_4_consecutive_errors_count_only_gateway_errors() {
        let load = |od: &str| {
            let text = format!(
                "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: r}}\n\
                 spec:\n  host: r\n  trafficPolicy:\n    outlierDetection: {{{od}, maxEjectionPercent: 100}}\n"
            );
            let (cfg, errors) = crate::config::load_str("r.yaml", &text, "default");
            assert!(errors.is_empty(), "{errors:?}");
            let policy = cfg.destination_rules[0].traffic_policy.clone();
            Arc::new(Cluster::new("c".into(), ups(1), policy))
        };
        let now = Instant::now();
        let ejects_after =
            |c: &Cluster, outcomes: &[Outcome]| outcomes.iter().any(|o| c.record_at(&c.endpoints[0], *o, now));
        let c = load("consecutiveErrors: 2");
        assert!(!ejects_after(&c, &[Outcome::Status(500); 6]), "a 500 is not a gateway error");
        assert!(
            !ejects_after(&c, &[Outcome::Status(503), Outcome::Status(500), Outcome::Status(504)]),
            "a 500 resets it"
        );
        assert!(ejects_after(&c, &[Outcome::Status(502)]), "504 then 502");
        let c = load("consecutiveErrors: 2");
        assert!(ejects_after(&c, &[Outcome::Failure, Outcome::Status(503)]), "no response counts as a 503");
        let c = load("consecutive5xxErrors: 3");
        assert!(!ejects_after(&c, &[Outcome::Status(500), Outcome::Status(501)]));
        assert!(ejects_after(&c, &[Outcome::Status(503)]), "Envoy's consecutive_5xx counts every 5xx");
        let c = load("consecutiveGatewayErrors: 2, consecutive5xxErrors: 0");
        assert!(!ejects_after(&c, &[Outcome::Status(500); 6]), "0 turns the 5xx detector off");
        assert!(ejects_after(&c, &[Outcome::Status(502), Outcome::Status(502)]));
    }

    #[tokio::test]
    async fn pool_overflow_fails_at_once() {
        let policy = TrafficPolicy {
            connection_pool: ConnectionPool {
                max_connections: Some(1),
                http1_max_pending_requests: Some(1),
                ..Default::default()
            },
            ..Default::default()
        };
        let c = Arc::new(Cluster::new("c".into(), ups(1), policy));
        let first = c.admit(false).await.unwrap();
        let c2 = c.clone();
        let waiting = tokio::spawn(async move { c2.admit(false).await.is_some() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(c.admit(false).await.is_none(), "connection busy and queue full: overflow");
        assert_eq!(c.overflows.load(Ordering::Relaxed), 1);
        drop(first);
        assert!(waiting.await.unwrap(), "the queued request gets the connection");
    }

    #[test]
    fn max_retries_bounds_retries_in_flight() {
        let policy = TrafficPolicy {
            connection_pool: ConnectionPool { max_retries: Some(2), ..Default::default() },
            ..Default::default()
        };
        let c = Arc::new(Cluster::new("c".into(), ups(1), policy));
        let first = c.retry_permit().expect("first retry");
        let second = c.retry_permit().expect("second retry");
        assert!(c.retry_permit().is_none(), "two retries in flight: a third is not sent");
        drop(first);
        assert!(c.retry_permit().is_some(), "a retry ended: room for another");
        drop(second);
        let unlimited = Arc::new(Cluster::new("u".into(), ups(1), TrafficPolicy::default()));
        let many: Vec<_> = (0..100).map(|_| unlimited.retry_permit()).collect();
        assert!(many.iter().all(Option::is_some), "Istio's default: no limit");
    }

    #[test]
    fn http2_max_requests_overflows_at_once() {
        let policy = TrafficPolicy {
            connection_pool: ConnectionPool { http2_max_requests: Some(1), ..Default::default() },
            ..Default::default()
        };
        let c = Arc::new(Cluster::new("c".into(), ups(1), policy));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let first = c.admit(true).await.expect("first request");
            assert!(c.admit(true).await.is_none(), "one request in flight: the next overflows");
            assert!(c.admit(false).await.is_none(), "the limit counts every protocol");
            drop(first);
            assert!(c.admit(true).await.is_some());
        });
    }

    #[test]
    fn consistent_hash_keys() {
        let mut h = hyper::HeaderMap::new();
        h.insert("x-user", hyper::header::HeaderValue::from_static("jason"));
        h.insert(hyper::header::COOKIE, hyper::header::HeaderValue::from_static("a=1; session=abc"));
        let a = hash_of(&HashKey::Header("x-user".into()), &h, None);
        assert!(a.is_some() && a == hash_of(&HashKey::Header("x-user".into()), &h, None));
        assert!(hash_of(&HashKey::Cookie("session".into()), &h, None).is_some());
        assert!(hash_of(&HashKey::Cookie("missing".into()), &h, None).is_none());
        assert!(hash_of(&HashKey::SourceIp, &h, Some("10.0.0.1".parse().unwrap())).is_some());
    }
}
