//! `mixr logs`: prints recent entries of a sqllog store. (Being built.)

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The store: a SQLite path or URL (sqlite://...), or postgres://...
    #[arg(long)]
    db: String,
}

pub async fn run(args: LogsArgs) -> ExitCode {
    eprintln!("mixr logs: not available yet ({})", args.db);
    ExitCode::FAILURE
}
