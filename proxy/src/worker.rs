//! Worker threads, as Envoy runs them: each runs its own single-threaded runtime, with its
//! own listeners on the shared ports (SO_REUSEPORT, so the kernel spreads connections),
//! upstream connections, mixr channel and report batcher. A request never leaves the
//! thread that accepted it (no work stealing, no cross-thread wake-ups); only config,
//! clusters, the check cache and stats are shared.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use mixr_proto::istio::mixer::v1::mixer_client::MixerClient;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::policy::reports::Reporter;
use crate::pool::Pool;
use crate::proxy::{Direction, Proxy, serve};

/// What one worker owns.
pub struct Worker {
    pub pool: Pool,
    pub mixr: Option<MixerClient<Channel>>,
    pub reporter: Option<Reporter>,
    pub metrics: crate::stats::MetricCache,
}

impl Worker {
    /// Builds a worker's state; must run on that worker's runtime, where its connections'
    /// tasks will live.
    pub fn start(proxy: &Proxy) -> Worker {
        let pool = Pool::new(proxy.stats.upstream_connections.clone());
        pool.start_sweeper();
        let mixr = proxy.policy.as_ref().map(|p| MixerClient::new(p.endpoint.connect_lazy()));
        let reports = proxy.policy.as_ref().is_some_and(|p| p.reports());
        // Reports get a connection of their own: a batch on the wire never delays a Check.
        let reporter = proxy
            .policy
            .as_ref()
            .filter(|_| reports)
            .map(|p| Reporter::start(p.endpoint.connect_lazy(), proxy.stats.reports_dropped.clone()));
        Worker { pool, mixr, reporter, metrics: Default::default() }
    }
}

/// Binds `addr` so that other workers may bind the same address.
pub fn bind_shared(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)?.into_std()
}

/// The listeners of one worker.
pub struct WorkerListeners {
    pub outbound: std::net::TcpListener,
    pub inbound: std::net::TcpListener,
}

/// Binds `workers` listener pairs on the same two addresses (port 0 is resolved by the first).
pub fn bind_all(
    outbound: SocketAddr,
    inbound: SocketAddr,
    workers: usize,
) -> Result<(Vec<WorkerListeners>, SocketAddr, SocketAddr), String> {
    let bind = |a: SocketAddr| bind_shared(a).map_err(|e| format!("cannot listen on {a}: {e}"));
    let first = WorkerListeners { outbound: bind(outbound)?, inbound: bind(inbound)? };
    let local = |l: &std::net::TcpListener| l.local_addr().map_err(|e| e.to_string());
    let (outbound, inbound) = (local(&first.outbound)?, local(&first.inbound)?);
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(WorkerListeners { outbound: bind(outbound)?, inbound: bind(inbound)? });
    }
    Ok((all, outbound, inbound))
}

/// Starts one thread per listener pair. Each serves until `shutdown` turns true, then
/// flushes its reports and ends.
pub fn spawn_all(
    proxy: Arc<Proxy>,
    listeners: Vec<WorkerListeners>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, String> {
    let mut threads = Vec::new();
    for (n, l) in listeners.into_iter().enumerate() {
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start worker runtime: {e}"))?;
        let t = std::thread::Builder::new()
            .name(format!("mixr-proxy-worker-{n}"))
            .spawn(move || rt.block_on(run(proxy, l, shutdown)))
            .map_err(|e| format!("cannot start worker thread: {e}"))?;
        threads.push(t);
    }
    Ok(threads)
}

async fn run(proxy: Arc<Proxy>, l: WorkerListeners, shutdown: watch::Receiver<bool>) {
    let worker = Arc::new(Worker::start(&proxy));
    let (Ok(outbound), Ok(inbound)) = (TcpListener::from_std(l.outbound), TcpListener::from_std(l.inbound)) else {
        tracing::error!("worker cannot register its listeners");
        return;
    };
    let out = tokio::spawn(serve(proxy.clone(), worker.clone(), outbound, Direction::Outbound, shutdown.clone()));
    let inb = tokio::spawn(serve(proxy.clone(), worker.clone(), inbound, Direction::Inbound, shutdown));
    let _ = tokio::join!(out, inb);
    if let Some(r) = &worker.reporter {
        r.flush().await;
    }
}
