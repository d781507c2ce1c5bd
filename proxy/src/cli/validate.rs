//! `mixr-proxy validate PATH...`: what loading would say, before a proxy loads it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::load_paths;
use crate::route::RouteTable;
use crate::route::analyze::analyze;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Traffic config files or directories (read recursively, `*.yaml`/`*.yml`).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Namespace of documents that name none.
    #[arg(long, default_value = "default")]
    namespace: String,
}

/// Exit status 1 when there are errors, 2 when there are only warnings.
const WARNINGS: u8 = 2;

pub fn main(args: ValidateArgs) -> ExitCode {
    let (config, mut errors) = load_paths(&args.paths, &args.namespace);
    errors.extend(crate::authz::load_paths(&args.paths, &args.namespace).1);
    errors.extend(crate::mtls::mode::load_paths(&args.paths, &args.namespace).1);
    for e in &errors {
        println!("error: {e}");
    }
    if !errors.is_empty() {
        println!("{} error(s)", errors.len());
        return ExitCode::FAILURE;
    }
    let warnings = analyze(&config, &RouteTable::build(&config));
    for w in &warnings {
        println!("warning: {w}");
    }
    let loaded = format!(
        "{} VirtualService(s), {} DestinationRule(s), {} ServiceEntry(s)",
        config.virtual_services.len(),
        config.destination_rules.len(),
        config.service_entries.len()
    );
    if warnings.is_empty() {
        println!("ok: {loaded}");
        ExitCode::SUCCESS
    } else {
        println!("{} warning(s); {loaded}", warnings.len());
        ExitCode::from(WARNINGS)
    }
}
