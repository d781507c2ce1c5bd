//! `mixr serve`: the gRPC and monitoring listeners, hot reload (file changes and SIGHUP)
//! and graceful shutdown (SIGTERM/SIGINT: stop accepting, finish in-flight calls, flush
//! report adapters).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mixr_adapters::{BuildContext, Registry};
use mixr_proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use mixr_proto::lazy_server::mixer_server::MixerServer;

use crate::ca::tokens::TokenStore;
use crate::ca::{Authority, RootSource};
use crate::grpc::ca::CaService;
use crate::grpc::envoy_authz::AuthzService;
use crate::grpc::envoy_rls::RlsService;
use crate::grpc::mixer::MixerService;
use crate::grpc::{InFlight, Shared};
use crate::listen::{Limits, accept_loop};
use crate::metrics::Metrics;
use crate::monitor::Monitor;
use crate::runtime::ConfigStore;
use crate::tls::{ClientCertLayer, Refusals, TlsOptions};

/// Largest header block of a gRPC call: far above what Check, Report, ext_authz and RLS
/// callers send, which carry their data in the message.
const GRPC_MAX_HEADER_BYTES: u32 = 64 << 10;

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
    /// Where adapters write (`--data-dir`).
    pub data_dir: PathBuf,
    pub grpc_limits: Limits,
    /// Concurrent calls (HTTP/2 streams) per gRPC connection.
    pub grpc_max_streams: u32,
    /// How often an idle gRPC connection is pinged; a peer that does not answer within
    /// the same time is dropped.
    pub grpc_keepalive: Duration,
    pub monitoring_limits: Limits,
    /// The mesh's certificate authority, when it is on.
    pub ca: Option<CaOptions>,
    /// TLS on the gRPC port (`--tls-cert`, `--tls-key`, `--client-ca`).
    pub tls: Option<TlsOptions>,
}

#[derive(Debug, Clone)]
pub struct CaOptions {
    pub root: RootSource,
    pub trust_domain: String,
    pub max_ttl: Duration,
    /// The hashed bootstrap tokens (reloaded when the file changes).
    pub tokens: PathBuf,
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
    #[error("certificate authority: {0}")]
    Ca(String),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let metrics = Metrics::new();
    let mut ctx = BuildContext::new(&metrics.registry);
    ctx.otlp_endpoint = opts.otlp_endpoint.clone();
    ctx.data_dir = opts.data_dir.clone();
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

    // The CA and the TLS files before the ports open: a bad file is an error at start, and
    // `--client-ca mesh` needs the CA's root.
    let (ca, mesh_root, _tokens_watcher) = match &opts.ca {
        Some(c) => {
            let (service, root, watcher) = start_ca(c, &metrics)?;
            (Some(service), Some(root), watcher)
        }
        None => (None, None, None),
    };
    let tls = match &opts.tls {
        Some(t) => Some(crate::tls::server_config(t, mesh_root.as_deref())?),
        None => None,
    };
    let refusals = Refusals::register(&metrics.registry);
    // Client certificates are demanded only where a client CA says which ones count.
    let require_client_cert = opts.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    if let Some(t) = &opts.tls {
        tracing::info!(
            cert = %t.cert.display(),
            client_ca = ?t.client_ca,
            "gRPC port is TLS{}",
            if require_client_cert { "; calls other than CreateCertificate need a mesh client certificate" } else { "" }
        );
    }
    let grpc =
        TcpListener::bind(opts.grpc_addr).await.map_err(|source| ServeError::Bind { addr: opts.grpc_addr, source })?;
    let monitoring = TcpListener::bind(opts.monitoring_addr)
        .await
        .map_err(|source| ServeError::Bind { addr: opts.monitoring_addr, source })?;
    let grpc_addr = grpc.local_addr()?;
    let monitoring_addr = monitoring.local_addr()?;
    tracing::info!(%grpc_addr, %monitoring_addr, "mixr listening");
    // Watching starts before the addresses are announced: whoever waits for them may edit
    // the config at once, and that edit must not be missed.
    let _watcher = if opts.watch { start_watching(store.clone()) } else { None };
    if let Some(path) = &opts.addr_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("grpc={grpc_addr}\nmonitoring={monitoring_addr}\n"))?;
        std::fs::rename(&tmp, path)?;
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(reload_on_sighup(store.clone()));
    let monitoring = accept_loop(monitoring, opts.monitoring_limits, "monitoring");
    let header_timeout = opts.monitoring_limits.handshake_timeout;
    tokio::spawn(
        Monitor { store: store.clone(), metrics: metrics.clone(), header_timeout }
            .serve(monitoring, shutdown_rx.clone()),
    );

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
    let reflection_error = |e: tonic_reflection::server::Error| ServeError::Io(std::io::Error::other(e.to_string()));
    let reflection = reflection_builder(ca.is_some()).build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection_builder(ca.is_some()).build_v1alpha().map_err(reflection_error)?;
    let mut grpc_shutdown = shutdown_rx.clone();
    let accepted = accept_loop(grpc, opts.grpc_limits, "grpc");
    let handshake = tls.map(|config| (config, opts.grpc_limits.handshake_timeout));
    let incoming = ReceiverStream::new(crate::tls::incoming(accepted, handshake, refusals.handshake_errors.clone()));
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .max_concurrent_streams(opts.grpc_max_streams)
            .http2_keepalive_interval(Some(opts.grpc_keepalive))
            .http2_keepalive_timeout(Some(opts.grpc_keepalive))
            .http2_max_header_list_size(GRPC_MAX_HEADER_BYTES)
            .layer(ClientCertLayer { require: require_client_cert.then_some(refusals) })
            .add_service(mixer)
            .add_service(authz)
            .add_service(rls)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_optional_service(ca)
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

/// Reflection over every service on the gRPC port. Both protocol versions are served
/// (grpcurl and newer clients ask v1; others, Python's grpcio-reflection among them, only
/// v1alpha). Each lists both reflection services, registered here rather than by the
/// builder (which adds only its own), so a client sees the same list whichever it asks.
/// Services are named, not taken from the descriptor sets: the certificate service is in
/// them whether or not the CA is on.
fn reflection_builder(ca: bool) -> tonic_reflection::server::Builder<'static> {
    let mut services = vec![
        "istio.mixer.v1.Mixer",
        "envoy.service.auth.v3.Authorization",
        "envoy.service.ratelimit.v3.RateLimitService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    if ca {
        services.push("istio.v1.auth.IstioCertificateService");
    }
    services
        .into_iter()
        .fold(tonic_reflection::server::Builder::configure(), |b, name| b.with_service_name(name))
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(mixr_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(mixr_proto::ENVOY_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
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

/// The watcher of a file, kept alive by its holder.
type Watcher = Option<notify::RecommendedWatcher>;

/// The CA service, its root (PEM), and the watcher that reloads its tokens file.
fn start_ca(
    opts: &CaOptions,
    metrics: &Metrics,
) -> Result<(IstioCertificateServiceServer<CaService>, String, Watcher), ServeError> {
    let authority =
        Authority::open(&opts.root, &opts.trust_domain, opts.max_ttl).map_err(|e| ServeError::Ca(e.to_string()))?;
    let tokens = Arc::new(ArcSwap::from_pointee(TokenStore::load(&opts.tokens).map_err(ServeError::Ca)?));
    tracing::info!(trust_domain = %opts.trust_domain, service_accounts = tokens.load().len(), "certificate authority on");
    let path = opts.tokens.clone();
    let store = tokens.clone();
    let watcher =
        mixr_rules::config::watch::watch(std::slice::from_ref(&opts.tokens), move || match TokenStore::load(&path) {
            Ok(t) => {
                tracing::info!(service_accounts = t.len(), "bootstrap tokens reloaded");
                store.store(Arc::new(t));
            }
            Err(e) => tracing::error!(error = %e, "bootstrap tokens not reloaded; keeping the last good ones"),
        });
    let watcher = watcher.map_err(|e| tracing::warn!(error = %e, "cannot watch the tokens file")).ok();
    let root = authority.root_pem().to_string();
    Ok((CaService::new(Arc::new(authority), tokens, &metrics.registry).into_server(), root, watcher))
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

/// Reloads when the config files change (see `mixr_rules::config::watch`).
fn start_watching(store: Arc<ConfigStore>) -> Option<notify::RecommendedWatcher> {
    let paths = store.paths().to_vec();
    match mixr_rules::config::watch::watch(&paths, move || {
        store.reload(false);
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch config files; reload with SIGHUP");
            None
        }
    }
}
