//! `mixr probe URL`: the container health check (shared with the sidecar's `probe`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The URL to GET, e.g. http://127.0.0.1:15014/readyz.
    url: String,
    /// Give up (and fail) after this long.
    #[arg(long, default_value = "3s", value_parser = super::parse_grace)]
    timeout: Duration,
}

pub async fn run(args: ProbeArgs) -> ExitCode {
    mixr_otlp::probe::run("mixr probe", &args.url, args.timeout).await
}
