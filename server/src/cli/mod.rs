//! The `mixr` command line.

mod client;
mod logging;
mod logs;
mod probe;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use mixr_adapters::Registry;
use mixr_otlp::SpanPipeline;

use crate::ca::RootSource;
use crate::ca::tokens::ServiceAccount;
use crate::listen::Limits;
use crate::runtime::compile_config;
use crate::serve::{CaOptions, ServeError, ServeOptions, serve};
use crate::tls::{ClientCa, TlsOptions};

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`: what a gRPC client must send before the handshake
/// deadline.
const HTTP2_PREFACE_BYTES: usize = 24;

#[derive(Debug, Parser)]
#[command(
    name = "mixr",
    version,
    about = "Policy, telemetry and quota service for service meshes (Istio Mixer compatible)"
)]
struct Cli {
    /// Log format: text for people (coloured only on a terminal), json for collectors (one
    /// flat object a line: ts, level, msg, then fields).
    #[arg(long, global = true, value_name = "text|json", default_value = "text")]
    log_format: mixr_otlp::logfmt::LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info,mixr_adapters=debug`); RUST_LOG
    /// overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Check/Report over gRPC with the given config files or directories.
    Serve(Box<ServeArgs>),
    /// Check config files; print every error and exit non-zero if any.
    Validate {
        /// Config files or directories (read recursively, `*.yaml`/`*.yml`).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Namespace of documents that name none; its rules apply in every namespace.
        #[arg(long, default_value = mixr_rules::config::DEFAULT_NAMESPACE)]
        default_namespace: String,
    },
    /// Send a Check to a server and print the answer (like Istio's mixc). Exit status: 0
    /// allowed (every quota granted in full), 2 denied, 3 a quota granted less than asked,
    /// 1 the call failed.
    Check(client::CheckArgs),
    /// Send a Report with one entry to a server.
    Report(client::ReportArgs),
    /// Print recent entries of a sqllog store.
    Logs(logs::LogsArgs),
    /// GET an http:// URL and exit 0 on status 200, 1 otherwise: a container health
    /// check that needs no shell tools (`mixr probe http://127.0.0.1:15014/readyz`).
    Probe(probe::ProbeArgs),
    /// Make a bootstrap token for a service account: prints the token (give it to the
    /// workload) and the line to add to the --ca-tokens file (which never holds tokens).
    CaToken {
        /// NAMESPACE/SERVICEACCOUNT the token will stand for.
        service_account: String,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Config files or directories (read recursively, `*.yaml`/`*.yml`; hidden entries
    /// such as a ConfigMap mount's `..data` are skipped). Repeat for several.
    #[arg(long, short = 'c', required = true, num_args = 1..)]
    config: Vec<PathBuf>,
    /// gRPC address: Mixer Check/Report, Envoy ext_authz v3 and rate-limit v3, health,
    /// reflection.
    #[arg(long, default_value = "127.0.0.1:9091")]
    grpc_addr: SocketAddr,
    /// HTTP monitoring address: /healthz, /readyz, /metrics, /debug/config.
    #[arg(long, default_value = "127.0.0.1:15014")]
    monitoring_addr: SocketAddr,
    /// Namespace of documents that name none; its rules apply in every namespace.
    #[arg(long, default_value = mixr_rules::config::DEFAULT_NAMESPACE)]
    default_namespace: String,
    /// Where mixr writes what it keeps (sqllog's SQLite files, stdio's log files; relative
    /// paths in their params resolve here). Never the config directory. Default:
    /// $XDG_STATE_HOME/mixr, else ~/.local/state/mixr.
    #[arg(long, env = "MIXR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Write the bound addresses to this file once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Do not reload when config files change (SIGHUP still reloads).
    #[arg(long)]
    no_watch: bool,
    /// How long SIGTERM waits for in-flight calls before exiting.
    #[arg(long, default_value = "10s", value_parser = parse_grace)]
    shutdown_grace: std::time::Duration,
    /// Add draft-IETF X-RateLimit-* headers to Envoy rate-limit answers.
    #[arg(long)]
    rate_limit_headers: bool,
    /// Export spans over OTLP/gRPC to this address (Jaeger: http://HOST:4317). Off when
    /// unset.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Share of traces kept (0.0-1.0); a caller's sampling decision is followed.
    #[arg(long, default_value = "1.0", value_parser = parse_ratio)]
    trace_sampling: f64,
    /// Most gRPC connections open at once; one more is closed as it arrives.
    #[arg(long, default_value_t = 4096)]
    grpc_max_connections: usize,
    /// Most concurrent calls (HTTP/2 streams) per gRPC connection.
    #[arg(long, default_value_t = 1024)]
    grpc_max_streams: u32,
    /// Ping idle gRPC connections this often; drop a peer silent for as long again.
    #[arg(long, default_value = "30s", value_parser = parse_grace)]
    grpc_keepalive: std::time::Duration,
    /// A new connection on either port must send its first bytes within this (and a
    /// monitoring request its head).
    #[arg(long, default_value = "10s", value_parser = parse_grace)]
    handshake_timeout: std::time::Duration,
    /// Most monitoring connections open at once.
    #[arg(long, default_value_t = 256)]
    monitoring_max_connections: usize,
    /// Close a monitoring connection silent for this long.
    #[arg(long, default_value = "60s", value_parser = parse_grace)]
    monitoring_idle_timeout: std::time::Duration,
    /// Turn the mesh's certificate authority on: this file holds the hashed bootstrap
    /// tokens (`NAMESPACE/SA: sha256:HEX` lines, see `mixr ca-token`) that say which
    /// service account a caller may get a certificate for. Reloaded when it changes.
    #[arg(long)]
    ca_tokens: Option<PathBuf>,
    /// The CA's root certificate (PEM); with --ca-key. Default: a self-signed root made at
    /// first start and kept in the data directory (ca/).
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The CA root certificate's private key (PEM); with --ca-cert.
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// The trust domain of workload identities: spiffe://TRUST_DOMAIN/ns/NS/sa/SA.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The longest a workload certificate lives (a shorter one is issued when asked).
    #[arg(long, default_value = "24h", value_parser = parse_grace)]
    workload_cert_ttl: std::time::Duration,
    /// Serve the gRPC port over TLS with this certificate (PEM, leaf first, then any
    /// intermediates); with --tls-key.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Roots that client certificates must chain to (PEM file), or `mesh` for the CA's own
    /// root. Every gRPC call but CreateCertificate then needs such a certificate; callers
    /// without one are refused (UNAUTHENTICATED) and logged. Needs --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "FILE|mesh")]
    client_ca: Option<String>,
}

/// The default data directory: the XDG state directory, as a user's tools keep state.
fn default_data_dir() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    state.join("mixr")
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mixr: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Span export runs on this runtime.
    let _runtime = runtime.enter();
    let Command::Serve(boxed) = cli.command else {
        let _ = logging::init(cli.log_format, &cli.log_level, None);
        return match cli.command {
            Command::Validate { paths, default_namespace } => validate(&paths, &default_namespace),
            Command::Check(args) => runtime.block_on(client::check(args)),
            Command::Report(args) => runtime.block_on(client::report(args)),
            Command::Logs(args) => runtime.block_on(logs::run(args)),
            Command::Probe(args) => runtime.block_on(probe::run(args)),
            Command::CaToken { service_account } => ca_token(&service_account),
            Command::Serve(_) => ExitCode::FAILURE,
        };
    };
    let args = *boxed;
    let traces = match &args.otlp_endpoint {
        Some(endpoint) => match SpanPipeline::start(endpoint) {
            Ok(pipeline) => Some(logging::TraceExport { pipeline, sampling: args.trace_sampling }),
            Err(e) => {
                eprintln!("mixr: --otlp-endpoint {endpoint}: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let pipeline = traces.as_ref().map(|t| t.pipeline.clone());
    let _provider = logging::init(cli.log_format, &cli.log_level, traces);
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    if let Err(e) = std::fs::create_dir_all(&data_dir) {
        tracing::error!(data_dir = %data_dir.display(), error = %e, "cannot create the data directory");
        return ExitCode::FAILURE;
    }
    let opts = ServeOptions {
        config: args.config,
        grpc_addr: args.grpc_addr,
        monitoring_addr: args.monitoring_addr,
        default_namespace: args.default_namespace,
        addr_file: args.addr_file,
        watch: !args.no_watch,
        shutdown_grace: args.shutdown_grace,
        rate_limit_headers: args.rate_limit_headers,
        otlp_endpoint: args.otlp_endpoint,
        data_dir: data_dir.clone(),
        grpc_limits: Limits {
            max_connections: args.grpc_max_connections,
            handshake_timeout: args.handshake_timeout,
            idle_timeout: None,
            handshake_bytes: HTTP2_PREFACE_BYTES,
        },
        grpc_max_streams: args.grpc_max_streams,
        grpc_keepalive: args.grpc_keepalive,
        monitoring_limits: Limits {
            max_connections: args.monitoring_max_connections,
            handshake_timeout: args.handshake_timeout,
            idle_timeout: Some(args.monitoring_idle_timeout),
            handshake_bytes: 1,
        },
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => {
                Some(TlsOptions { cert, key, client_ca: args.client_ca.as_deref().map(ClientCa::parse) })
            }
            _ => None,
        },
        ca: args.ca_tokens.map(|tokens| CaOptions {
            root: match (args.ca_cert, args.ca_key) {
                (Some(cert), Some(key)) => RootSource::Files { cert, key },
                _ => RootSource::Generated(data_dir.join("ca")),
            },
            trust_domain: args.trust_domain,
            max_ttl: args.workload_cert_ttl,
            tokens,
        }),
    };
    let result = runtime.block_on(serve(opts));
    if let Some(p) = &pipeline {
        runtime.block_on(p.flush());
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError::Config(errors)) => {
            // Once, each error on a line of its own, in the chosen log format.
            for e in &errors {
                tracing::error!(error = %e, "config rejected");
            }
            tracing::error!(errors = errors.len(), "no valid config to serve; exiting");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot serve; exiting");
            ExitCode::FAILURE
        }
    }
}

fn ca_token(service_account: &str) -> ExitCode {
    let account = match ServiceAccount::parse(service_account) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mixr ca-token: {e}");
            return ExitCode::FAILURE;
        }
    };
    match crate::ca::tokens::generate() {
        Ok(token) => {
            println!("token: {token}");
            println!("line:  {account}: {}", crate::ca::tokens::hash(&token));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mixr ca-token: no system randomness: {e}");
            ExitCode::FAILURE
        }
    }
}

fn validate(paths: &[PathBuf], default_namespace: &str) -> ExitCode {
    match compile_config(paths, default_namespace, &Registry::builtin()) {
        Ok(snapshot) => {
            println!(
                "ok: {} handlers, {} instances, {} rules",
                snapshot.handlers.len(),
                snapshot.instances.len(),
                snapshot.rules.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                println!("{e}");
            }
            println!("{} error(s)", errors.len());
            ExitCode::FAILURE
        }
    }
}

fn parse_grace(text: &str) -> Result<std::time::Duration, String> {
    mixr_rules::value::parse_duration(text)
        .filter(|d| d.as_nanos() >= 0)
        .map(|d| d.to_std())
        .ok_or_else(|| format!("{text:?} is not a duration like \"10s\""))
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{text:?} is not a ratio between 0 and 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_and_argument_says_what_it_is_for() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{} {id}", sub.get_name()));
                }
            }
        }
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn flags_appear_only_where_they_act() {
        let cli = Cli::command();
        let has = |sub: &str, flag: &str| {
            cli.find_subcommand(sub).unwrap().get_arguments().any(|a| a.get_long() == Some(flag))
        };
        for flag in [
            "otlp-endpoint",
            "trace-sampling",
            "data-dir",
            "grpc-max-connections",
            "ca-tokens",
            "trust-domain",
            "tls-cert",
            "tls-key",
            "client-ca",
        ] {
            assert!(has("serve", flag), "{flag} on serve");
            for other in ["validate", "logs", "check", "report", "probe"] {
                assert!(!has(other, flag), "{flag} on {other}");
            }
        }
    }

    #[test]
    fn tls_flags_come_together() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["mixr", "serve", "-c", "x.yaml"], args].concat());
        assert!(parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem", "--client-ca", "mesh"]).is_ok());
        assert!(parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).is_ok());
        for wrong in [
            &["--tls-cert", "c.pem"][..],
            &["--tls-key", "k.pem"],
            &["--client-ca", "mesh"],
            &["--client-ca", "roots.pem", "--tls-key", "k.pem"],
        ] {
            assert!(parse(wrong).is_err(), "{wrong:?}");
        }
    }
}
