//! Worker threads, as Envoy runs them: each runs its own single-threaded runtime, with its
//! own listeners on the shared ports (SO_REUSEPORT, so the kernel spreads connections),
//! upstream connections, mixr channel and report batcher. A request never leaves the
//! thread that accepted it (no work stealing, no cross-thread wake-ups); only config,
//! clusters, the check cache and stats are shared.

use std::net::SocketAddr;

use mixr_proto::istio::mixer::v1::mixer_client::MixerClient;
use tokio::net::TcpSocket;
use tonic::transport::Channel;

use crate::policy::Policy;
use crate::policy::reports::Reporter;
use crate::pool::Pool;
use crate::stats::Stats;

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
    pub fn start(stats: &Stats, policy: Option<&Policy>, mesh: &std::sync::Arc<crate::mtls::Mesh>) -> Worker {
        let pool = Pool::new(stats.upstream_connections.clone()).with_mesh(mesh.clone());
        pool.start_sweeper();
        let mixr = policy.map(|p| MixerClient::new(p.channel()));
        let reports = policy.is_some_and(|p| p.reports());
        // Reports get a connection of their own: a batch on the wire never delays a Check.
        let reporter = policy.filter(|_| reports).map(|p| Reporter::start(p.channel(), stats.reports_dropped.clone()));
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
