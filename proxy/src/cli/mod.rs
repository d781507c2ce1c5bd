//! The `mixr-proxy` command line: flags alone run the proxy ([`run`]); subcommands are
//! the tools around it ([`validate`], `probe`).

mod run;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mixr_otlp::logfmt::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "mixr-proxy",
    version,
    about = "mixr's sidecar: Istio traffic rules for one workload",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: run::RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check traffic config files as the proxy would load them: print every error and
    /// every warning (routes to unknown hosts or subsets, VirtualServices for hosts no
    /// ServiceEntry defines). Exit status: 0 clean, 2 warnings only, 1 errors.
    Validate(validate::ValidateArgs),
    /// GET an http:// URL and exit 0 on status 200, 1 otherwise: a container health
    /// check that needs no shell tools (`mixr-proxy probe http://127.0.0.1:15000/ready`).
    Probe {
        /// The URL to GET, e.g. http://127.0.0.1:15000/ready.
        url: String,
        /// Give up (and fail) after this many milliseconds.
        #[arg(long, default_value = "3000")]
        timeout_ms: u64,
    },
    /// Add the sidecar and its init container to Kubernetes workloads, as `istioctl
    /// kube-inject` (`mixr-proxy inject -f deployment.yaml | kubectl apply -f -`).
    Inject(crate::inject::cli::InjectArgs),
    /// Print, install or remove the rules that send a pod's TCP traffic through the
    /// sidecar, as istio-init (the injected init container runs `iptables --apply`).
    Iptables(crate::capture::cli::IptablesArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run::main(cli.run),
        Some(Command::Validate(args)) => validate::main(args),
        Some(Command::Inject(args)) => crate::inject::cli::main(args),
        Some(Command::Iptables(args)) => crate::capture::cli::main(args),
        Some(Command::Probe { url, timeout_ms }) => {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                eprintln!("mixr-proxy probe: cannot start the async runtime");
                return ExitCode::FAILURE;
            };
            rt.block_on(mixr_otlp::probe::run("mixr-proxy probe", &url, std::time::Duration::from_millis(timeout_ms)))
        }
    }
}

/// Logs to stderr in `format`, filtered by `level` unless RUST_LOG says otherwise.
fn init_logs(format: LogFormat, level: &str) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::registry().with(mixr_otlp::logfmt::stderr_layer(format).with_filter(filter)).try_init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_flag_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{path} {id} has no help text");
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        walk(&Cli::command(), "mixr-proxy");
    }

    #[test]
    fn flags_run_the_proxy_and_subcommands_take_none_of_them() {
        let cli = Cli::try_parse_from(["mixr-proxy", "--config", "x", "--log-format", "json"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.log_format(), LogFormat::Json);
        assert!(Cli::try_parse_from(["mixr-proxy", "validate", "x"]).unwrap().command.is_some());
        assert!(Cli::try_parse_from(["mixr-proxy", "--mixr", "x", "validate", "y"]).is_err());
        assert!(Cli::try_parse_from(["mixr-proxy", "probe", "http://x/", "--mixr", "y"]).is_err());
        assert!(Cli::try_parse_from(["mixr-proxy", "--log-format", "yaml"]).is_err());
    }
}
