//! Running the proxy: the flags of `mixr-proxy [FLAGS]` and the control thread.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::identity::Identity;
use crate::proxy::Proxy;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Traffic config files or directories (VirtualService, DestinationRule, ServiceEntry).
    #[arg(long, short = 'c', num_args = 1..)]
    config: Vec<PathBuf>,
    /// The local app, the target of inbound traffic.
    #[arg(long)]
    app_addr: Option<SocketAddr>,
    /// Where the local app sends its outbound requests (Host names the service).
    #[arg(long, default_value = "127.0.0.1:15001")]
    outbound_addr: SocketAddr,
    /// Where callers reach this workload; requests are checked, then forwarded to --app-addr.
    #[arg(long, default_value = "127.0.0.1:15006")]
    inbound_addr: SocketAddr,
    /// The admin port: /ready and /config_dump.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// The Prometheus scrape port (/stats/prometheus, /metrics).
    #[arg(long, default_value = "127.0.0.1:15090")]
    stats_addr: SocketAddr,
    /// This workload's name (source.workload.name).
    #[arg(long, default_value = "unknown")]
    workload: String,
    /// This workload's namespace (source.namespace; namespace of config documents that name none).
    #[arg(long, default_value = "default")]
    namespace: String,
    /// This workload's labels, `key=value` (for sourceLabels matches).
    #[arg(long = "label", short = 'l')]
    labels: Vec<String>,
    /// Write the bound addresses here once listening (tests, scripts).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax, e.g. `info,mixr_proxy=debug`); RUST_LOG
    /// overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Log format: text for people (coloured only on a terminal), json for collectors (one
    /// flat object a line: ts, level, msg, then fields).
    #[arg(long, value_name = "text|json", default_value = "text")]
    log_format: mixr_otlp::logfmt::LogFormat,
    /// mixr's gRPC address: inbound requests are checked and every request is reported.
    /// Without it the proxy enforces nothing.
    #[arg(long)]
    mixr: Option<String>,
    /// Let requests through when mixr cannot answer in time (default: deny with 503).
    #[arg(long)]
    fail_open: bool,
    /// The longest a request waits for a policy decision, retries included.
    #[arg(long, default_value = "1000")]
    check_timeout_ms: u64,
    /// OTLP/gRPC endpoint (`http://host:4317`) for a span per request; none by default.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Share of the traces this proxy starts that are sampled (0 to 1); a caller's
    /// sampling decision in `traceparent` is always kept.
    #[arg(long, default_value = "1.0")]
    trace_sampling: f64,
    /// Send no Checks (policy and quotas off); Reports still flow (Istio's disable_check_calls).
    #[arg(long)]
    disable_check_calls: bool,
    /// Send no Reports (Istio's disable_report_calls).
    #[arg(long)]
    disable_report_calls: bool,
    /// Worker threads, each with its own listeners and upstream connections (default: one per CPU).
    #[arg(long)]
    worker_threads: Option<usize>,
    /// The longest a caller may take to send a request head: from the accept for a
    /// connection's first request, from its first byte for later ones (then 408).
    #[arg(long, default_value_t = ms(crate::listener::DEFAULT_HEAD_TIMEOUT))]
    request_head_timeout_ms: u64,
    /// How long a connection with no request in progress stays open.
    #[arg(long, default_value_t = ms(crate::listener::DEFAULT_IDLE_TIMEOUT))]
    idle_timeout_ms: u64,
    /// The longest pause inside a request body (then 408).
    #[arg(long, default_value_t = ms(crate::listener::DEFAULT_BODY_TIMEOUT))]
    request_body_timeout_ms: u64,
    /// Connections each listener (inbound, outbound) holds at once, over all workers;
    /// more are closed as they are accepted.
    #[arg(long, default_value_t = crate::listener::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// This workload's bootstrap token for mixr's certificate authority (`mixr ca-token
    /// NS/SA` makes one). With it, the sidecar makes a key, obtains a SPIFFE certificate
    /// for --namespace/--service-account and renews it at half its lifetime.
    #[arg(long)]
    ca_token_file: Option<PathBuf>,
    /// The certificate authority's gRPC address (default: --mixr's).
    #[arg(long)]
    ca_addr: Option<String>,
    /// Speak TLS to mixr: its server certificate must chain to the roots in this PEM file,
    /// or with `mesh` to the root of the workload certificate's chain. Check and Report
    /// connections show the workload certificate (read at each handshake, so renewals
    /// apply without a restart); the CA is reached over TLS too (unless --ca-addr is an
    /// http:// URL), without a client certificate.
    #[arg(long, value_name = "FILE|mesh")]
    mixr_ca: Option<String>,
    /// This workload's service account (the `sa` of its SPIFFE identity).
    #[arg(long, default_value = "default")]
    service_account: String,
    /// The mesh's trust domain (the host of its SPIFFE identities).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The lifetime to ask for the workload certificate, in seconds (the CA may cap it).
    #[arg(long, default_value = "86400")]
    workload_cert_ttl_secs: u64,
    /// What redirected outbound TCP to an address no ServiceEntry endpoint has gets:
    /// ALLOW_ANY passes it through, REGISTRY_ONLY closes it (Istio's outboundTrafficPolicy).
    #[arg(long, value_name = "ALLOW_ANY|REGISTRY_ONLY", default_value = "ALLOW_ANY")]
    outbound_traffic_policy: crate::capture::OutboundPolicy,
    /// Forward request paths as they came: no resolving of `.` and `..`, merging of
    /// slashes or decoding of unreserved escapes (on by default, as in Istio).
    #[arg(long)]
    no_normalize_path: bool,
    /// What this proxy is: a workload's sidecar (outbound and inbound listeners), or an
    /// ingress gateway serving the Gateway resources its --label's select.
    #[arg(long, value_enum, default_value = "sidecar")]
    role: RoleArg,
    /// The address a gateway's server ports listen on.
    #[arg(long, default_value = "0.0.0.0")]
    gateway_bind: std::net::IpAddr,
    /// A gateway listens on a free port for each server port instead of the port itself
    /// (tests, unprivileged runs); --addr-file lists them as `gateway.PORT=ADDRESS`.
    #[arg(long)]
    gateway_ephemeral_ports: bool,
    /// Proxies in front of a gateway whose X-Forwarded-For entries are trusted, counted
    /// from the right (Envoy's xff_num_trusted_hops); 0: the peer is the client.
    #[arg(long, default_value = "0")]
    trusted_hops: usize,
    /// How often the names of `resolution: DNS` ServiceEntries are looked up again, in
    /// seconds (held between 5 and 300: the system resolver gives no TTLs).
    #[arg(long, default_value_t = crate::dns::DEFAULT_REFRESH.as_secs())]
    dns_refresh_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RoleArg {
    Sidecar,
    Gateway,
}

const fn ms(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

impl RunArgs {
    #[cfg(test)]
    pub(super) fn log_format(&self) -> mixr_otlp::logfmt::LogFormat {
        self.log_format
    }

    fn limits(&self) -> Result<crate::listener::Limits, String> {
        use std::time::Duration;
        let nonzero = |flag: &str, v: u64| {
            if v == 0 { Err(format!("--{flag}: must be above 0")) } else { Ok(Duration::from_millis(v)) }
        };
        if self.max_connections == 0 {
            return Err("--max-connections: must be above 0".into());
        }
        Ok(crate::listener::Limits {
            head_timeout: nonzero("request-head-timeout-ms", self.request_head_timeout_ms)?,
            idle_timeout: nonzero("idle-timeout-ms", self.idle_timeout_ms)?,
            body_timeout: nonzero("request-body-timeout-ms", self.request_body_timeout_ms)?,
            max_connections: self.max_connections,
        })
    }
}

pub fn main(cli: RunArgs) -> ExitCode {
    super::init_logs(cli.log_format, &cli.log_level);
    let mut labels = Vec::new();
    for l in &cli.labels {
        match l.split_once('=') {
            Some((k, v)) => labels.push((k.to_string(), v.to_string())),
            None => {
                eprintln!("mixr-proxy: --label {l:?}: expected key=value");
                return ExitCode::FAILURE;
            }
        }
    }
    // This thread runs the control plane (admin, stats, reload, signals); the workers
    // (in `worker`) carry the traffic.
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        eprintln!("mixr-proxy: cannot start the async runtime");
        return ExitCode::FAILURE;
    };
    let identity = Identity { workload: cli.workload.clone(), namespace: cli.namespace.clone(), labels };
    match rt.block_on(run(cli, identity)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mixr-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// The TLS settings to mixr, and whether the CA is reached with them, from `--mixr-ca`
/// and `--ca-addr`; errors for settings that could never connect.
fn mixr_tls(
    cli: &RunArgs,
    certs: &Arc<crate::certs::CertStore>,
) -> Result<(Option<crate::certs::channel::MixrTls>, bool), String> {
    use crate::certs::channel::{MixrCa, MixrTls};
    let Some(text) = &cli.mixr_ca else {
        return Ok((None, false));
    };
    let ca = MixrCa::parse(text);
    // An explicit http:// CA address opts the CA's client out of TLS.
    let ca_over_tls = !cli.ca_addr.as_deref().is_some_and(|a| a.starts_with("http://"));
    if ca == MixrCa::Mesh {
        if cli.ca_token_file.is_none() {
            return Err("--mixr-ca mesh trusts the root of the workload certificate: it needs --ca-token-file".into());
        }
        if ca_over_tls {
            return Err("--mixr-ca mesh: the first certificate request has no mesh root to check the CA with; \
                 give the root's file to --mixr-ca, or an http:// --ca-addr"
                .into());
        }
    }
    let tls = MixrTls::new(&ca, certs.clone()).map_err(|e| e.to_string())?;
    Ok((Some(tls), ca_over_tls))
}

async fn run(cli: RunArgs, identity: Identity) -> Result<(), String> {
    // One store for the renewal loop (writer) and the TLS to mixr (reader).
    let cert_store = Arc::new(crate::certs::CertStore::default());
    let (mixr_tls, ca_over_tls) = mixr_tls(&cli, &cert_store)?;
    let mixr = cli.mixr.clone().map(|addr| {
        let options = crate::policy::PolicyOptions {
            fail_policy: if cli.fail_open { crate::policy::FailPolicy::Open } else { crate::policy::FailPolicy::Close },
            timeout: std::time::Duration::from_millis(cli.check_timeout_ms),
            disable_checks: cli.disable_check_calls,
            disable_reports: cli.disable_report_calls,
            tls: mixr_tls.clone(),
            ..Default::default()
        };
        (addr, options)
    });
    let limits = cli.limits()?;
    let mut proxy = Proxy::new(identity, cli.app_addr, cli.config.clone(), mixr)
        .map_err(|e| format!("invalid config:\n{}", e.join("\n")))?;
    proxy.limits = limits;
    proxy.certs = cert_store;
    proxy.ingress = crate::ingress::Options { normalize_path: !cli.no_normalize_path };
    proxy.outbound_policy = cli.outbound_traffic_policy;
    if let Some(dns) = Arc::get_mut(&mut proxy.dns) {
        dns.set_refresh(std::time::Duration::from_secs(cli.dns_refresh_secs));
    }
    if let Some(endpoint) = &cli.otlp_endpoint {
        if !(0.0..=1.0).contains(&cli.trace_sampling) {
            return Err(format!("--trace-sampling {}: expected a number from 0 to 1", cli.trace_sampling));
        }
        let tracer = crate::trace::Tracer::start(endpoint, cli.trace_sampling, &proxy.identity.workload)
            .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
        proxy.tracer = Some(tracer);
    }
    proxy.mesh = Arc::new(crate::mtls::Mesh::new(proxy.certs.clone(), cli.trust_domain.clone()));
    let certs = match &cli.ca_token_file {
        Some(token_file) => {
            let ca_addr =
                cli.ca_addr.clone().or_else(|| cli.mixr.clone()).ok_or("--ca-token-file needs --ca-addr or --mixr")?;
            Some(crate::certs::CertOptions {
                ca_addr,
                token_file: token_file.clone(),
                trust_domain: cli.trust_domain.clone(),
                namespace: cli.namespace.clone(),
                service_account: cli.service_account.clone(),
                ttl: std::time::Duration::from_secs(cli.workload_cert_ttl_secs.max(1)),
                tls: mixr_tls.filter(|_| ca_over_tls),
            })
        }
        None => None,
    };
    let workers =
        cli.worker_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    if cli.role == RoleArg::Gateway {
        proxy.role = crate::proxy::Role::Gateway;
        proxy.reload().map_err(|e| format!("invalid config:\n{}", e.join("\n")))?;
        return run_gateway(cli, Arc::new(proxy), workers, certs).await;
    }
    let proxy = Arc::new(proxy);
    let (listeners, outbound, inbound) = crate::sidecar::bind_all(cli.outbound_addr, cli.inbound_addr, workers)?;
    let admin = bind(cli.admin_addr).await?;
    let stats = bind(cli.stats_addr).await?;
    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let summary = format!("outbound={outbound}\ninbound={inbound}\nadmin={}\nstats={}\n", addr(&admin), addr(&stats));
    tracing::info!(addresses = %summary.replace('\n', " "), "mixr-proxy listening");
    // Before the addresses are announced: an edit made as soon as they are must be seen.
    let _watcher = crate::reload::watch(proxy.clone());
    if let Some(path) = &cli.addr_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &summary).and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| e.to_string())?;
    }
    let (tx, rx) = watch::channel(false);
    tokio::spawn(crate::reload::resolve(proxy.clone(), rx.clone()));
    let threads = crate::sidecar::spawn_all(proxy.clone(), listeners, rx.clone())?;
    if let Some(opts) = certs {
        tokio::spawn(crate::certs::run(opts, proxy.certs.clone(), rx.clone()));
    }
    tokio::spawn(crate::admin::serve(proxy.clone(), admin, "admin", rx.clone()));
    tokio::spawn(crate::admin::serve(proxy.clone(), stats, "stats", rx.clone()));
    wait_for_signals(&proxy).await?;
    let _ = tx.send(true);
    stop(&proxy, threads).await;
    Ok(())
}

/// The gateway role: the listeners are the Gateways' server ports (`gateway::listen`).
async fn run_gateway(
    cli: RunArgs,
    proxy: Arc<Proxy>,
    workers: usize,
    certs: Option<crate::certs::CertOptions>,
) -> Result<(), String> {
    let admin = bind(cli.admin_addr).await?;
    let stats = bind(cli.stats_addr).await?;
    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let options = crate::gateway::Options {
        bind: cli.gateway_bind,
        ephemeral_ports: cli.gateway_ephemeral_ports,
        trusted_hops: cli.trusted_hops,
        addr_file: cli.addr_file.clone(),
        addr_summary: format!("admin={}\nstats={}\n", addr(&admin), addr(&stats)),
        workers,
    };
    let gateway = crate::gateway::Gateway::new(proxy.clone(), options);
    let _watcher = crate::reload::watch(proxy.clone());
    let (tx, rx) = watch::channel(false);
    tokio::spawn(crate::reload::resolve(proxy.clone(), rx.clone()));
    let (threads, senders) = crate::gateway::listen::spawn_workers(gateway.clone(), rx.clone())?;
    // The gateway's own workload certificate: it calls ISTIO_MUTUAL destinations as a
    // sidecar does.
    if let Some(opts) = certs {
        tokio::spawn(crate::certs::run(opts, proxy.certs.clone(), rx.clone()));
    }
    tokio::spawn(crate::admin::serve(proxy.clone(), admin, "admin", rx.clone()));
    tokio::spawn(crate::admin::serve(proxy.clone(), stats, "stats", rx.clone()));
    let control = tokio::spawn(crate::gateway::listen::control(gateway, senders, rx.clone()));
    tokio::select! {
        r = wait_for_signals(&proxy) => r?,
        r = control => {
            // The first ports could not be opened: nothing to serve.
            if let Ok(Err(e)) = r {
                let _ = tx.send(true);
                return Err(e);
            }
        }
    }
    let _ = tx.send(true);
    stop(&proxy, threads).await;
    Ok(())
}

/// Serves until SIGTERM or SIGINT; SIGHUP reloads the config.
async fn wait_for_signals(proxy: &Proxy) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int, mut hup) =
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup())) {
            (Ok(t), Ok(i), Ok(h)) => (t, i, h),
            _ => return Err("cannot install signal handlers".into()),
        };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => { let _ = proxy.reload(); }
        }
    }
    Ok(())
}

async fn stop(proxy: &Proxy, threads: Vec<std::thread::JoinHandle<()>>) {
    // Each worker flushes its reports before it ends.
    let _ = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
    if let Some(t) = &proxy.tracer {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t.flush()).await;
    }
    tracing::info!("stopped");
}
