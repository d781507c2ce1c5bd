//! `bookinfo`: Bookinfo on loopback with mixr and a mixr-proxy per service.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mixr_bookinfo::topology::{Options, Scenario, Topology};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(name = "bookinfo", about = "Istio's Bookinfo on loopback, with mixr and mixr-proxy sidecars")]
struct Cli {
    /// Traffic rules to start with: routing, split, v3, delay or abort.
    #[arg(long, default_value = "routing")]
    scenario: String,
    /// Start without the denier that stops reviews v3 from calling ratings (Istio's
    /// Denials task), so that v3 shows its red stars.
    #[arg(long)]
    no_denier: bool,
    /// Istio's ingress policy mixr applies at the gateway: none, deny-ip
    /// (mixer-rule-deny-ip) or ingress-denial (mixer-rule-ingress-denial).
    #[arg(long, default_value = "none")]
    ingress_policy: String,
    /// The mixr binary (default: next to this one).
    #[arg(long)]
    mixr: Option<PathBuf>,
    /// The mixr-proxy binary (default: next to this one).
    #[arg(long)]
    proxy: Option<PathBuf>,
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe().map(|e| e.with_file_name(name)).unwrap_or_else(|_| PathBuf::from(name))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(scenario) = Scenario::parse(&cli.scenario) else {
        eprintln!("bookinfo: unknown scenario {:?} ({})", cli.scenario, Scenario::NAMES);
        return ExitCode::FAILURE;
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bookinfo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mixr = cli.mixr.unwrap_or_else(|| sibling("mixr"));
    let proxy = cli.proxy.unwrap_or_else(|| sibling("mixr-proxy"));
    let Some(ingress_policy) = mixr_bookinfo::gateway::IngressPolicy::parse(&cli.ingress_policy) else {
        eprintln!(
            "bookinfo: unknown ingress policy {:?} ({})",
            cli.ingress_policy,
            mixr_bookinfo::gateway::IngressPolicy::NAMES
        );
        return ExitCode::FAILURE;
    };
    let options = Options { deny_reviews_v3: !cli.no_denier, ingress_policy };
    rt.block_on(async move {
        // Installed before anything starts: a signal during startup must also end in the
        // cleanup below, not in the default action that would leave processes and files.
        let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("bookinfo: cannot handle signals: {e}");
                return ExitCode::FAILURE;
            }
        };
        let stopped = async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        tokio::pin!(stopped);
        let started = async {
            let topo = Topology::start(&mixr, &proxy, options).await?;
            topo.apply(scenario).await?;
            Ok::<_, String>(topo)
        };
        let topo = tokio::select! {
            started = started => match started {
                Ok(topo) => topo,
                Err(e) => {
                    eprintln!("bookinfo: {e}");
                    return ExitCode::FAILURE;
                }
            },
            // Dropping the half-started topology stops what it started and removes its files.
            _ = &mut stopped => return ExitCode::SUCCESS,
        };
        print_urls(&topo, scenario, options);
        stopped.await;
        // Dropping the topology stops mixr and the sidecars, then removes the directory.
        drop(topo);
        ExitCode::SUCCESS
    })
}

fn print_urls(topo: &Topology, scenario: Scenario, options: Options) {
    let page = topo.productpage();
    let denial = if options.deny_reviews_v3 { "reviews v3 denied ratings" } else { "no denier" };
    println!("Bookinfo is up ({scenario:?} rules, {denial}).");
    println!("  product page (open it in a browser; sign in as jason): {page}");
    println!("  as jason, from the shell: curl -H 'end-user: jason' {page}");
    println!("  rate-limited API:    curl {}", page.replace("/productpage", "/api/v1/products"));
    let gw = &topo.gateway;
    println!("  through the ingress gateway: curl -H 'host: bookinfo.example.com' http://{}/productpage", gw.http);
    println!(
        "  over HTTPS:          curl --cacert {}/gateway-certs/ca.crt --resolve bookinfo.example.com:{}:127.0.0.1 \\\n                         https://bookinfo.example.com:{}/productpage",
        topo.config_dir().display(),
        gw.https.port(),
        gw.https.port()
    );
    println!("  mixr metrics:        curl http://{}/metrics", topo.mixr_monitoring);
    if let Some(s) = topo.stats_addr("productpage-v1") {
        println!("  productpage sidecar: curl http://{s}/metrics");
    }
    println!("  config (edit traffic.yaml or policy.yaml to change rules live): {}", topo.config_dir().display());
    println!("Ctrl-C or SIGTERM stops everything and removes that directory.");
}
