//! `mixr-proxy inject`: the command line of [`super::inject`].

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::Options;

#[derive(Debug, Args)]
pub struct InjectArgs {
    /// The Kubernetes YAML to inject (several documents allowed); `-` reads stdin.
    #[arg(long, short = 'f', value_name = "FILE|-")]
    filename: PathBuf,
    /// Write the result here instead of stdout.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// The image the sidecar and the init container run (it holds `mixr-proxy`, and
    /// `iptables` for the init container).
    #[arg(long, default_value_t = Options::default().image)]
    image: String,
    /// mixr's gRPC address, the sidecar's --mixr (empty: the sidecar enforces nothing).
    #[arg(long, default_value_t = Options::default().mixr)]
    mixr: String,
    /// The ConfigMap with the sidecar's traffic rules, mounted at /etc/mixr-proxy
    /// (optional: a pod starts without it).
    #[arg(long, default_value_t = Options::default().config_map)]
    config_map: String,
    /// Listen on IPv6 and capture IPv6 too (for pods that have IPv6).
    #[arg(long)]
    ipv6: bool,
    /// Mutual TLS: mount the Secret mixr-ca-token-<service account> (key `token`, from
    /// `mixr ca-token NS/SA`) and have the sidecar obtain its workload certificate with it.
    #[arg(long)]
    mesh_identity: bool,
}

pub fn main(args: InjectArgs) -> ExitCode {
    let name = args.filename.display().to_string();
    let text = if name == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        std::fs::read_to_string(&args.filename)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mixr-proxy inject: {name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = Options {
        image: args.image,
        mixr: args.mixr,
        config_map: args.config_map,
        ipv6: args.ipv6,
        mesh_identity: args.mesh_identity,
    };
    let injected = match super::inject(&text, &options) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("mixr-proxy inject: {name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    for skipped in &injected.skipped {
        eprintln!("mixr-proxy inject: {name}: {}: not injected: {}", skipped.place, skipped.reason);
    }
    let written = match &args.output {
        Some(path) => std::fs::write(path, &injected.text),
        None => std::io::Write::write_all(&mut std::io::stdout().lock(), injected.text.as_bytes()),
    };
    if let Err(e) = written {
        eprintln!("mixr-proxy inject: cannot write the output: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
