//! `mixr serve`: the gRPC and monitoring listeners, hot reload (file changes and SIGHUP)
//! and graceful shutdown (SIGTERM/SIGINT: stop accepting, finish in-flight calls, flush
//! report adapters).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mixr_adapters::{BuildContext, Registry};
use notify::{RecursiveMode, Watcher};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use mixr_proto::istio::mixer::v1::mixer_server::MixerServer;

use crate::grpc::envoy_authz::AuthzService;
use crate::grpc::envoy_rls::RlsService;
use crate::grpc::mixer::MixerService;
use crate::grpc::{InFlight, Shared};
use crate::metrics::Metrics;
use crate::monitor::Monitor;
use crate::runtime::ConfigStore;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config: Vec<PathBuf>,
    pub grpc_addr: SocketAddr,
    pub monitoring_addr: SocketAddr,
    pub default_namespace: String,
    /// Written with the bound addresses once listening (for tests and scripts).
    pub addr_file: Option<PathBuf>,
    pub watch: bool,
    /// How long shutdown waits for in-flight calls.
    pub shutdown_grace: Duration,
    /// Add `X-RateLimit-*` headers to rate-limit service answers.
    pub rate_limit_headers: bool,
    /// Default OTLP endpoint for span-exporting adapters.
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("config is invalid:\n{}", .0.join("\n"))]
    Config(Vec<String>),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let metrics = Metrics::new();
    let mut ctx = BuildContext::new(&metrics.registry);
    ctx.otlp_endpoint = opts.otlp_endpoint.clone();
    let store = Arc::new(
        ConfigStore::open(
            opts.config.clone(),
            opts.default_namespace.clone(),
            Registry::builtin(),
            ctx,
            metrics.clone(),
        )
        .map_err(ServeError::Config)?,
    );

    let grpc =
        TcpListener::bind(opts.grpc_addr).await.map_err(|source| ServeError::Bind { addr: opts.grpc_addr, source })?;
    let monitoring = TcpListener::bind(opts.monitoring_addr)
        .await
        .map_err(|source| ServeError::Bind { addr: opts.monitoring_addr, source })?;
    let grpc_addr = grpc.local_addr()?;
    let monitoring_addr = monitoring.local_addr()?;
    tracing::info!(%grpc_addr, %monitoring_addr, "mixr listening");
    if let Some(path) = &opts.addr_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("grpc={grpc_addr}\nmonitoring={monitoring_addr}\n"))?;
        std::fs::rename(&tmp, path)?;
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let _watcher = if opts.watch { start_watching(store.clone()) } else { None };
    tokio::spawn(reload_on_sighup(store.clone()));
    tokio::spawn(Monitor { store: store.clone(), metrics: metrics.clone() }.serve(monitoring, shutdown_rx.clone()));

    let in_flight = InFlight::default();
    let shared = Shared {
        store: store.clone(),
        metrics: metrics.clone(),
        in_flight: in_flight.clone(),
        unconfigured: Default::default(),
    };
    let mixer = MixerService::new(shared.clone()).into_server();
    let authz = AuthzService::new(shared.clone()).into_server();
    let rls = RlsService::new(shared.clone(), opts.rate_limit_headers).into_server();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<MixerServer<MixerService>>().await;
    health.set_serving::<AuthorizationServer<AuthzService>>().await;
    health.set_serving::<RateLimitServiceServer<RlsService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(mixr_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))?;
    let mut grpc_shutdown = shutdown_rx.clone();
    // The builder's `tcp_nodelay` only reaches sockets it accepts itself; ours come from
    // our own listener, and with Nagle on, small answers wait for the caller's delayed ACK
    // (about 40 ms).
    let incoming = TcpListenerStream::new(grpc).map(|conn| {
        conn.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(mixer)
            .add_service(authz)
            .add_service(rls)
            .add_service(health_service)
            .add_service(reflection)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_shutdown.changed().await;
            }),
    );
    tokio::select! {
        result = &mut server => {
            result.map_err(std::io::Error::other)??;
        }
        _ = wait_for_termination() => {
            tracing::info!(in_flight = in_flight.count(), "shutting down: finishing in-flight calls");
            let _ = shutdown_tx.send(true);
            drain(&in_flight, &mut server, opts.shutdown_grace).await;
        }
    }
    store.current().handlers.flush().await;
    tracing::info!("stopped");
    Ok(())
}

/// Waits until no call is in flight (or the server ended, or `grace` ran out). Idle
/// keep-alive connections do not count: they would hold shutdown up indefinitely.
async fn drain(
    in_flight: &InFlight,
    server: &mut tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    grace: Duration,
) {
    let deadline = tokio::time::Instant::now() + grace;
    // Let calls that were accepted just before the signal reach their handler.
    tokio::time::sleep(Duration::from_millis(50)).await;
    loop {
        if server.is_finished() || in_flight.count() == 0 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(in_flight = in_flight.count(), "shutdown grace period over; abandoning calls");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_for_termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

async fn reload_on_sighup(store: Arc<ConfigStore>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading config");
        store.reload(true);
    }
}

/// Watches the config paths; bursts of events (an editor's save) become one reload.
fn start_watching(store: Arc<ConfigStore>) -> Option<notify::RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch config files; reload with SIGHUP");
            return None;
        }
    };
    for path in store.paths() {
        // Watch a file's directory: editors replace files by renaming over them.
        let (target, mode) = if path.is_dir() {
            (path.clone(), RecursiveMode::Recursive)
        } else {
            (
                path.parent()
                    .map(|p| if p.as_os_str().is_empty() { PathBuf::from(".") } else { p.to_path_buf() })
                    .unwrap_or_else(|| PathBuf::from(".")),
                RecursiveMode::NonRecursive,
            )
        };
        if let Err(e) = watcher.watch(&target, mode) {
            tracing::warn!(path = %target.display(), error = %e, "cannot watch; reload with SIGHUP");
        }
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(Duration::from_millis(150)).await;
            while rx.try_recv().is_ok() {}
            let store = store.clone();
            // Reading and compiling config is blocking work.
            let _ = tokio::task::spawn_blocking(move || store.reload(false)).await;
        }
    });
    Some(watcher)
}
