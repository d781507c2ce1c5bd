//! The `mixr` command line.

mod client;
mod logging;
mod logs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use mixr_adapters::Registry;
use mixr_otlp::SpanPipeline;

use crate::listen::Limits;
use crate::runtime::compile_config;
use crate::serve::{ServeOptions, serve};

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
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Export spans over OTLP/gRPC to this address (Jaeger: http://HOST:4317). Off when unset.
    #[arg(long, global = true)]
    otlp_endpoint: Option<String>,
    /// Share of traces kept (0.0-1.0); a caller's sampling decision is followed.
    #[arg(long, global = true, default_value = "1.0", value_parser = parse_ratio)]
    trace_sampling: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Check/Report over gRPC with the given config files or directories.
    Serve {
        #[arg(long, short = 'c', required = true, num_args = 1..)]
        config: Vec<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:9091")]
        grpc_addr: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:15014")]
        monitoring_addr: SocketAddr,
        /// Namespace of documents that name none.
        #[arg(long, default_value = mixr_rules::config::DEFAULT_NAMESPACE)]
        default_namespace: String,
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
        /// Most gRPC connections open at once; one more is closed as it arrives.
        #[arg(long, default_value_t = 4096)]
        grpc_max_connections: usize,
        /// Most concurrent calls (HTTP/2 streams) per gRPC connection.
        #[arg(long, default_value_t = 1024)]
        grpc_max_streams: u32,
        /// Ping idle gRPC connections this often; drop a peer silent for as long again.
        #[arg(long, default_value = "30s", value_parser = parse_grace)]
        grpc_keepalive: std::time::Duration,
        /// A new connection on either port must send its first bytes within this.
        #[arg(long, default_value = "10s", value_parser = parse_grace)]
        handshake_timeout: std::time::Duration,
        /// Most monitoring connections open at once.
        #[arg(long, default_value_t = 256)]
        monitoring_max_connections: usize,
        /// Close a monitoring connection silent for this long.
        #[arg(long, default_value = "60s", value_parser = parse_grace)]
        monitoring_idle_timeout: std::time::Duration,
    },
    /// Check config files; print every error and exit non-zero if any.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, default_value = mixr_rules::config::DEFAULT_NAMESPACE)]
        default_namespace: String,
    },
    /// Send a Check to a server and print the answer (like Istio's mixc).
    Check(client::CheckArgs),
    /// Send a Report with one entry to a server.
    Report(client::ReportArgs),
    /// Print recent entries of a sqllog store.
    Logs(logs::LogsArgs),
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
    let traces = match &cli.otlp_endpoint {
        Some(endpoint) => match SpanPipeline::start(endpoint) {
            Ok(pipeline) => Some(logging::TraceExport { pipeline, sampling: cli.trace_sampling }),
            Err(e) => {
                eprintln!("mixr: --otlp-endpoint {endpoint}: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let pipeline = traces.as_ref().map(|t| t.pipeline.clone());
    let _provider = logging::init(cli.log_format, &cli.log_level, traces);
    match cli.command {
        Command::Serve {
            config,
            grpc_addr,
            monitoring_addr,
            default_namespace,
            addr_file,
            no_watch,
            shutdown_grace,
            rate_limit_headers,
            grpc_max_connections,
            grpc_max_streams,
            grpc_keepalive,
            handshake_timeout,
            monitoring_max_connections,
            monitoring_idle_timeout,
        } => {
            let opts = ServeOptions {
                config,
                grpc_addr,
                monitoring_addr,
                default_namespace,
                addr_file,
                watch: !no_watch,
                shutdown_grace,
                rate_limit_headers,
                otlp_endpoint: cli.otlp_endpoint.clone(),
                grpc_limits: Limits {
                    max_connections: grpc_max_connections,
                    handshake_timeout,
                    idle_timeout: None,
                    handshake_bytes: HTTP2_PREFACE_BYTES,
                },
                grpc_max_streams,
                grpc_keepalive,
                monitoring_limits: Limits {
                    max_connections: monitoring_max_connections,
                    handshake_timeout,
                    idle_timeout: Some(monitoring_idle_timeout),
                    handshake_bytes: 1,
                },
            };
            let result = runtime.block_on(serve(opts));
            if let Some(p) = &pipeline {
                runtime.block_on(p.flush());
            }
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("mixr: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Validate { paths, default_namespace } => {
            match compile_config(&paths, &default_namespace, &Registry::builtin()) {
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
        Command::Check(args) => runtime.block_on(client::check(args)),
        Command::Report(args) => runtime.block_on(client::report(args)),
        Command::Logs(args) => runtime.block_on(logs::run(args)),
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
