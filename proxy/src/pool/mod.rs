//! Upstream connections, owned by one worker so a request never hops threads: HTTP/1.1
//! keep-alive connections ([`h1`], our own client) carry one request at a time and go
//! back to an idle list when the response body ends; an HTTP/2 connection ([`h2`],
//! hyper's) carries many streams at once, and is opened once however many streams want it.
//! DestinationRule's `connectTimeout`, `maxRequestsPerConnection` and `idleTimeout` are
//! enforced here; the concurrency limits live on the cluster (`upstream`).

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::http::request::Parts;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::net::TcpStream;

use crate::body::ProxyBody;

pub mod h1;
pub mod h2;
pub mod io;
use crate::config::ConnectionPool;
use crate::fasthash::FastMap;
use crate::mtls::Mesh;
use crate::mtls::upstream::{UpstreamTls, UpstreamTlsError};
use io::Io;

/// Istio's defaults where the DestinationRule is silent.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// A reused connection the server closed under us, before any answer: the request goes
/// again on a fresh connection (when that is safe), at most this many times.
const STALE_RETRIES: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    #[error("connect to {0}: {1}")]
    Connect(String, std::io::Error),
    /// Another request's connection attempt, which this one waited for, failed.
    #[error("connect to {0}: {1}")]
    SharedConnect(String, String),
    #[error("handshake with {0}: {1}")]
    Handshake(String, hyper::Error),
    #[error("upstream {0}: {1}")]
    Send(String, hyper::Error),
    #[error("upstream {0}: {1}")]
    Http1(String, h1::H1Error),
    #[error("connect to {0}: {1}")]
    Tls(String, UpstreamTlsError),
}

/// The connection settings of one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    /// 0: unlimited.
    pub max_requests_per_connection: u32,
    pub idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_requests_per_connection: 0,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl From<&ConnectionPool> for PoolSettings {
    fn from(p: &ConnectionPool) -> PoolSettings {
        PoolSettings {
            connect_timeout: p.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            max_requests_per_connection: p.max_requests_per_connection.unwrap_or(0),
            idle_timeout: p.idle_timeout.filter(|d| !d.is_zero()).unwrap_or(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

/// Which upstream a connection belongs to: a cluster (by id) and one of its endpoints.
/// The owner is weak so connections of clusters a reload replaced are swept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub cluster: u64,
    pub endpoint: usize,
}

struct IdleH1 {
    conn: h1::Conn,
    since: Instant,
    uses: u32,
}

struct Slot<T> {
    owner: Weak<()>,
    idle_timeout: Duration,
    conns: T,
}

#[derive(Default)]
struct Shared {
    h1: FastMap<PoolKey, Slot<Vec<IdleH1>>>,
    h2: FastMap<PoolKey, Slot<h2::Shared>>,
}

/// One worker's upstream connections.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Mutex<Shared>>,
    /// TCP connections opened (a Prometheus counter shared by the workers).
    opened: IntCounter,
    /// The workload certificate, for ISTIO_MUTUAL upstreams.
    mesh: Option<Arc<Mesh>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

/// Where and how to send one request.
pub struct Target<'a> {
    pub key: PoolKey,
    /// The cluster's liveness: while it lives the pool's entries for the cluster do;
    /// once it is gone they are swept.
    pub owner: &'a Arc<()>,
    /// `host:port` to connect to.
    pub address: &'a str,
    pub settings: PoolSettings,
    /// The cluster's DestinationRule TLS; `None`: plaintext.
    pub tls: Option<&'a UpstreamTls>,
}

async fn connect(address: &str, timeout: Duration) -> Result<TcpStream, PoolError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Err(_) => return Err(PoolError::ConnectTimeout(address.to_string())),
        Ok(Err(e)) => return Err(PoolError::Connect(address.to_string(), e)),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Whether a request that may have reached the server can be sent again (RFC 9110 §9.2.2).
fn idempotent(method: &hyper::Method) -> bool {
    use hyper::Method;
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

impl Pool {
    pub fn new(opened: IntCounter) -> Pool {
        Pool { shared: Arc::default(), opened, mesh: None }
    }

    /// Speaks ISTIO_MUTUAL with the workload certificate `mesh` holds.
    pub fn with_mesh(mut self, mesh: Arc<Mesh>) -> Pool {
        self.mesh = Some(mesh);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new connection to the target: TCP, and the TLS handshake when the target has TLS,
    /// both within the connect timeout.
    async fn dial(&self, t: &Target<'_>) -> Result<Io, PoolError> {
        self.opened.inc();
        let deadline = tokio::time::Instant::now() + t.settings.connect_timeout;
        let tcp = connect(t.address, t.settings.connect_timeout).await?;
        let Some(tls) = t.tls else { return Ok(io::plain(tcp)) };
        match tokio::time::timeout_at(deadline, tls.connect(self.mesh.as_deref(), tcp)).await {
            Err(_) => Err(PoolError::ConnectTimeout(t.address.to_string())),
            Ok(Err(e)) => Err(PoolError::Tls(t.address.to_string(), e)),
            Ok(Ok(s)) => Ok(io::tls(s)),
        }
    }

    /// Sends over HTTP/1.1, reusing an idle keep-alive connection when one is fresh.
    pub async fn send_h1(&self, t: &Target<'_>, req: Request<ProxyBody>) -> Result<Response<ProxyBody>, PoolError> {
        let (parts, body) = req.into_parts();
        self.send_h1_head(t, &parts, None, body).await
    }

    /// Sends `head` (in origin form: only the URI's path and query are used) and `body`
    /// over HTTP/1.1; `host` is the Host to send when the head has none.
    pub async fn send_h1_head(
        &self,
        t: &Target<'_>,
        parts: &Parts,
        host: Option<&str>,
        mut body: ProxyBody,
    ) -> Result<Response<ProxyBody>, PoolError> {
        let mut attempt = 0;
        loop {
            let idle = if attempt < STALE_RETRIES { self.checkout_h1(t) } else { None };
            attempt += 1;
            let reused = idle.is_some();
            let (conn, uses) = match idle {
                Some(idle) => (idle.conn, idle.uses),
                None => (h1::Conn::new(Box::pin(self.dial(t)).await?), 0),
            };
            let uses = uses + 1;
            let max = t.settings.max_requests_per_connection;
            let checkin = (max == 0 || uses < max).then(|| Checkin {
                pool: Arc::downgrade(&self.shared),
                key: t.key,
                owner: Arc::downgrade(t.owner),
                idle_timeout: t.settings.idle_timeout,
                uses,
            });
            match h1::send(conn, parts, host, body, checkin).await {
                Ok(resp) => return Ok(resp),
                Err(failure) => match failure.replay {
                    // A kept-alive connection the server had closed: no answer came, so
                    // the request goes again if it never left or may safely be repeated.
                    Some(again) if reused && (!failure.written || idempotent(&parts.method)) => body = again,
                    _ => return Err(PoolError::Http1(t.address.to_string(), failure.error)),
                },
            }
        }
    }

    fn checkout_h1(&self, t: &Target<'_>) -> Option<IdleH1> {
        let mut shared = self.lock();
        let slot = shared.h1.get_mut(&t.key)?;
        let now = Instant::now();
        while let Some(idle) = slot.conns.pop() {
            if now.duration_since(idle.since) < slot.idle_timeout && idle.conn.is_open() {
                return Some(idle);
            }
        }
        None
    }

    /// Drops idle connections past their idle timeout and those of clusters that are
    /// gone. Returns how many connections were closed.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut shared = self.lock();
        let mut closed = 0;
        shared.h1.retain(|_, slot| {
            let alive = slot.owner.strong_count() > 0;
            let before = slot.conns.len();
            let timeout = slot.idle_timeout;
            slot.conns.retain(|c| alive && now.duration_since(c.since) < timeout && c.conn.is_open());
            closed += before - slot.conns.len();
            alive
        });
        shared.h2.retain(|_, slot| {
            let alive = slot.owner.strong_count() > 0;
            if slot.conns.expired(alive, now, slot.idle_timeout) {
                slot.conns.conn = None;
                closed += 1;
            }
            alive
        });
        closed
    }

    /// Idle HTTP/1.1 connections plus live HTTP/2 connections (tests and stats).
    pub fn idle(&self) -> usize {
        let shared = self.lock();
        shared.h1.values().map(|s| s.conns.len()).sum::<usize>()
            + shared.h2.values().filter(|s| s.conns.conn.is_some()).count()
    }

    /// Sweeps every second until the pool's last handle is gone.
    pub fn start_sweeper(&self) {
        let weak = Arc::downgrade(&self.shared);
        let opened = self.opened.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                Pool { shared, opened: opened.clone(), mesh: None }.sweep(Instant::now());
            }
        });
    }
}

/// Where a connection goes back when its response ends cleanly.
pub struct Checkin {
    pool: Weak<Mutex<Shared>>,
    key: PoolKey,
    owner: Weak<()>,
    idle_timeout: Duration,
    uses: u32,
}

impl Checkin {
    fn put_back(self, conn: h1::Conn) {
        let Some(pool) = self.pool.upgrade() else { return };
        let mut shared = pool.lock().unwrap_or_else(|e| e.into_inner());
        let slot = shared.h1.entry(self.key).or_insert_with(|| Slot {
            owner: self.owner.clone(),
            idle_timeout: self.idle_timeout,
            conns: Vec::new(),
        });
        slot.conns.push(IdleH1 { conn, since: Instant::now(), uses: self.uses });
    }
}

impl Pool {
    /// Sends an upgrade request (WebSocket and friends) on a connection of its own: once
    /// switched, the connection belongs to the spliced streams, never to the pool.
    pub async fn send_upgrade(&self, t: &Target<'_>, req: Request<ProxyBody>) -> Result<Response<Incoming>, PoolError> {
        let io = TokioIo::new(self.dial(t).await?);
        let (mut sender, conn) =
            http1::handshake(io).await.map_err(|e| PoolError::Handshake(t.address.to_string(), e))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        sender.send_request(req).await.map_err(|e| PoolError::Send(t.address.to_string(), e))
    }
}
