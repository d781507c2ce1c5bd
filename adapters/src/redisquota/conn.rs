//! Connections to Redis: a pool of multiplexed, self-reconnecting connections to one
//! server, or a Cluster connection. Both are made lazily: a handler is built (and config
//! loads) even while Redis is down, and the first calls after it returns connect again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::sync::Mutex;

use crate::params::redact_url;

/// Where Redis is: `host:port`, `redis://...`, `rediss://...` (TLS), or a Cluster as
/// `redis+cluster://host1:port1,host2:port2` (`rediss+cluster://` for TLS).
#[derive(Clone, PartialEq, Eq)]
pub enum ServerAddress {
    Single(String),
    Cluster(Vec<String>),
}

impl std::fmt::Debug for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddress::Single(url) => write!(f, "Single({})", redact_url(url)),
            ServerAddress::Cluster(nodes) => {
                f.debug_list().entries(nodes.iter().map(|n| redact_url(n).into_owned())).finish()
            }
        }
    }
}

impl ServerAddress {
    pub fn parse(text: &str) -> Result<ServerAddress, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        for (prefix, scheme) in [("redis+cluster://", "redis://"), ("rediss+cluster://", "rediss://")] {
            if let Some(rest) = text.strip_prefix(prefix) {
                let nodes: Vec<String> =
                    rest.split(',').filter(|n| !n.is_empty()).map(|n| format!("{scheme}{n}")).collect();
                if nodes.is_empty() {
                    return Err(format!("{:?} names no cluster nodes", redact_url(text)));
                }
                for n in &nodes {
                    redis::Client::open(n.as_str()).map_err(|e| format!("{:?}: {e}", redact_url(n)))?;
                }
                return Ok(ServerAddress::Cluster(nodes));
            }
        }
        let url = if text.contains("://") { text.to_string() } else { format!("redis://{text}") };
        redis::Client::open(url.as_str()).map_err(|e| format!("{:?} is not a Redis address: {e}", redact_url(text)))?;
        Ok(ServerAddress::Single(url))
    }
}

enum Target {
    Single { client: Box<redis::Client>, pool: Vec<Mutex<Option<ConnectionManager>>> },
    // Clients are boxed: they are large and of very different sizes.
    Cluster { client: Box<ClusterClient>, conn: Mutex<Option<ClusterConnection>> },
}

pub struct Backend {
    target: Target,
    timeout: Duration,
}

/// The pool slot of the calling thread. Calls made from one thread share a connection,
/// so the calls in flight together are pipelined on it: Redis then reads several commands
/// per read and answers them in one write. Sending each call on the next of the pool's
/// connections (as before) spread 64 concurrent calls of a one-worker mixr over 10
/// shallow pipelines: 19.1 µs of Redis CPU per allocation against 12.7-14.6 µs on one
/// connection (h2load RLS, FIXED_WINDOW, docs/benchmarks.md). The threads of a
/// multi-thread runtime still spread over the pool.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|s| *s)
}

impl Backend {
    pub fn new(addr: &ServerAddress, pool_size: usize, timeout: Duration) -> Result<Backend, String> {
        let target = match addr {
            ServerAddress::Single(url) => Target::Single {
                client: Box::new(redis::Client::open(url.as_str()).map_err(|e| e.to_string())?),
                pool: (0..pool_size.max(1)).map(|_| Mutex::new(None)).collect(),
            },
            ServerAddress::Cluster(nodes) => Target::Cluster {
                client: Box::new(
                    ClusterClient::builder(nodes.clone())
                        .connection_timeout(timeout)
                        .response_timeout(timeout)
                        .build()
                        .map_err(|e| e.to_string())?,
                ),
                conn: Mutex::new(None),
            },
        };
        Ok(Backend { target, timeout })
    }

    /// Runs the script; returns (granted, remaining, reset in µs).
    pub async fn invoke(&self, invocation: &redis::ScriptInvocation<'_>) -> redis::RedisResult<(i64, i64, i64)> {
        match &self.target {
            Target::Single { client, pool } => {
                let slot = &pool[thread_slot() % pool.len()];
                let mut conn = {
                    let mut guard = slot.lock().await;
                    match guard.as_ref() {
                        Some(c) => c.clone(),
                        None => {
                            let config = ConnectionManagerConfig::new()
                                .set_connection_timeout(Some(self.timeout))
                                .set_response_timeout(Some(self.timeout))
                                .set_number_of_retries(1)
                                .set_max_delay(Duration::from_secs(1));
                            let c = ConnectionManager::new_with_config((**client).clone(), config).await?;
                            *guard = Some(c.clone());
                            c
                        }
                    }
                };
                invocation.invoke_async(&mut conn).await
            }
            Target::Cluster { client, conn } => {
                let mut c = {
                    let mut guard = conn.lock().await;
                    match guard.as_ref() {
                        Some(c) => c.clone(),
                        None => {
                            let c = client.get_async_connection().await?;
                            *guard = Some(c.clone());
                            c
                        }
                    }
                };
                invocation.invoke_async(&mut c).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(ServerAddress::parse("localhost:6379"), Ok(ServerAddress::Single("redis://localhost:6379".into())));
        assert_eq!(ServerAddress::parse("rediss://r:6380/0"), Ok(ServerAddress::Single("rediss://r:6380/0".into())));
        assert_eq!(
            ServerAddress::parse("redis+cluster://a:7000,b:7001"),
            Ok(ServerAddress::Cluster(vec!["redis://a:7000".into(), "redis://b:7001".into()]))
        );
        assert!(ServerAddress::parse("").is_err());
        assert!(ServerAddress::parse("redis+cluster://").is_err());
        assert!(ServerAddress::parse("ftp://x").is_err());
    }
}
