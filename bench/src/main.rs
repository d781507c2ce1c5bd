//! `mixr-bench`: runs mixr and a no-op baseline server side by side under the same load
//! generator and prints throughput, latency, server CPU per call and the ratios.
//!
//! Both servers run as separate processes pinned to CPU 1 (with `taskset`, when present);
//! the load generator runs here, pinned to CPU 0, so server CPU is read cleanly from
//! `/proc/<pid>/stat`.

mod gatewaybench;
mod h2load;
mod load;
mod noop;
mod procstat;
mod proxybench;
mod scenario;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "mixr-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mixer Check: a no-op tonic server vs `mixr serve` with 50 rules, a 10k-entry
    /// listchecker and a denier.
    Check {
        /// Measured seconds per server (after a 1 s warm-up).
        #[arg(long, default_value = "5")]
        seconds: u64,
        /// Concurrent requests in flight (beyond ~10 the generator, not the server, queues).
        #[arg(long, default_value = "8")]
        concurrency: usize,
        /// Path of the mixr binary (default: next to this one).
        #[arg(long)]
        mixr: Option<PathBuf>,
    },
    /// Quotas: Mixer Check with a quota and Envoy RLS ShouldRateLimit, through memquota and
    /// redisquota, against a no-op server answering both.
    Quota {
        #[arg(long, default_value = "5")]
        seconds: u64,
        #[arg(long, default_value = "8")]
        concurrency: usize,
        #[arg(long)]
        mixr: Option<PathBuf>,
        /// Redis for redisquota (its server process is measured too when it is local).
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
    },
    /// Report: batches of 100 entries of 20 attributes into the prometheus adapter (and
    /// prometheus + sqllog on SQLite), against a no-op Report.
    Report {
        #[arg(long, default_value = "5")]
        seconds: u64,
        #[arg(long, default_value = "4")]
        concurrency: usize,
        #[arg(long)]
        mixr: Option<PathBuf>,
    },
    /// The sidecar against nginx (wrk for HTTP/1.1, h2load for h2c), then with policy and telemetry.
    Proxy {
        #[arg(long, default_value = "5")]
        seconds: u64,
        #[arg(long, default_value = "32")]
        connections: u32,
        /// Interleaved rounds; each target's median is printed.
        #[arg(long, default_value = "3")]
        rounds: usize,
        /// Only the gateway row (HTTPS termination against nginx).
        #[arg(long)]
        gateway_only: bool,
    },
    /// The gRPC hot path under h2load (RLS, ext_authz, Mixer Check): one connection, 64
    /// streams in flight, each server pinned to CPU 0 with one tokio worker, h2load on
    /// CPU 1; the no-op server and mixr in interleaved rounds, medians printed.
    H2load {
        /// Calls per measured run (each run is bounded by this count).
        #[arg(long, default_value = "60000")]
        requests: u64,
        /// Calls sent to each target before the first measured round.
        #[arg(long, default_value = "5000")]
        warmup: u64,
        #[arg(long, default_value = "3")]
        rounds: usize,
        #[arg(long, default_value = "64")]
        streams: u32,
        #[arg(long)]
        mixr: Option<PathBuf>,
        /// Redis for the redisquota rows (its CPU is read from `INFO cpu`).
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// Only mixr rows whose name contains one of these words (rls, memquota, redis,
        /// fixed, rolling, authz, check), with their group's no-op row.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Write the request bodies and configs into this directory and exit
        /// (bench/scripts/grpc-instructions.sh uses them).
        #[arg(long)]
        write_files: Option<PathBuf>,
    },
    /// The origin for `proxy`: a tiny HTTP server.
    OriginServer {
        #[arg(long)]
        addr_file: PathBuf,
    },
    /// The baseline: a Mixer server that decodes each request and answers OK.
    NoopServer {
        #[arg(long)]
        addr_file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::NoopServer { addr_file } => noop::run(&addr_file),
        Command::OriginServer { addr_file } => proxybench::origin_server(&addr_file),
        Command::Proxy { seconds, connections, rounds, gateway_only } => {
            let Ok(exe) = std::env::current_exe() else { return ExitCode::FAILURE };
            let bin_dir = exe.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
            let Ok(dir) = tempfile::tempdir() else { return ExitCode::FAILURE };
            let sidecar =
                if gateway_only { Ok(()) } else { proxybench::run(seconds, connections, rounds, &bin_dir, dir.path()) };
            match sidecar.and_then(|()| gatewaybench::run(seconds, connections, rounds, &bin_dir, dir.path())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mixr-bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::H2load { requests, warmup, rounds, streams, mixr, redis, only, write_files } => {
            let mixr = match mixr.map_or_else(|| scenario::sibling("mixr"), Ok) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("mixr-bench: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = h2load::Options { requests, warmup, rounds, streams, mixr, redis, only, write_files };
            match h2load::run(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mixr-bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { seconds, concurrency, mixr } => {
            drive(|| scenario::check(Duration::from_secs(seconds), concurrency, mixr))
        }
        Command::Report { seconds, concurrency, mixr } => {
            drive(|| scenario::report(Duration::from_secs(seconds), concurrency, mixr))
        }
        Command::Quota { seconds, concurrency, mixr, redis } => {
            drive(|| scenario::quota(Duration::from_secs(seconds), concurrency, mixr, redis))
        }
    }
}

/// Runs a scenario on a one-thread runtime pinned to CPU 0.
fn drive<F, Fut>(scenario: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    if let Some(code) = procstat::pin_self_to_cpu0() {
        return code;
    }
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() else {
        eprintln!("cannot start runtime");
        return ExitCode::FAILURE;
    };
    match rt.block_on(scenario()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mixr-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
