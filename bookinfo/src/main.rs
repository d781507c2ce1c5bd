//! `bookinfo`: Bookinfo on loopback with mixr and a mixr-proxy per service.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mixr_bookinfo::topology::{Scenario, Topology};

#[derive(Debug, Parser)]
#[command(name = "bookinfo", about = "Istio's Bookinfo on loopback, with mixr and mixr-proxy sidecars")]
struct Cli {
    /// Traffic rules to start with: routing, split, delay or abort.
    #[arg(long, default_value = "routing")]
    scenario: String,
    /// The mixr and mixr-proxy binaries (default: next to this one).
    #[arg(long)]
    mixr: Option<PathBuf>,
    #[arg(long)]
    proxy: Option<PathBuf>,
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe().map(|e| e.with_file_name(name)).unwrap_or_else(|_| PathBuf::from(name))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(scenario) = Scenario::parse(&cli.scenario) else {
        eprintln!("bookinfo: unknown scenario {:?} (routing, split, delay, abort)", cli.scenario);
        return ExitCode::FAILURE;
    };
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else { return ExitCode::FAILURE };
    let mixr = cli.mixr.unwrap_or_else(|| sibling("mixr"));
    let proxy = cli.proxy.unwrap_or_else(|| sibling("mixr-proxy"));
    // target/<profile>/bookinfo -> the repository's sample telemetry
    let telemetry = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.parent()?.join("rules/examples/telemetry.yaml")))
        .filter(|p| p.exists());
    rt.block_on(async move {
        let topo = match Topology::start(&mixr, &proxy, telemetry.as_deref()).await {
            Ok(t) => t,
            Err(e) => {
                eprintln!("bookinfo: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = topo.apply(scenario).await {
            eprintln!("bookinfo: {e}");
            return ExitCode::FAILURE;
        }
        println!("Bookinfo is up ({scenario:?} rules).");
        println!("  product page:        curl {}", topo.productpage());
        println!("  as jason:            curl -H 'end-user: jason' {}", topo.productpage());
        println!("  rate-limited API:    curl {}", topo.productpage().replace("/productpage", "/api/v1/products"));
        println!("  mixr metrics:        curl http://{}/metrics", topo.mixr_monitoring);
        if let Some(s) = topo.stats_addr("productpage-v1") {
            println!("  productpage sidecar: curl http://{s}/metrics");
        }
        println!("  config (edit traffic.yaml to change rules live): {}", topo.config_dir().display());
        println!("Ctrl-C stops everything.");
        let _ = tokio::signal::ctrl_c().await;
        ExitCode::SUCCESS
    })
}
