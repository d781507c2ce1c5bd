//! `mixr-proxy iptables`: istio-init's job, run by the injected init container.

use std::process::ExitCode;

use clap::{ArgGroup, Args};

use super::rules::{Capture, CaptureError, parse_cidrs, parse_ports, parse_ranges};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["print", "apply", "cleanup"])))]
pub struct IptablesArgs {
    /// Print the rules (iptables-restore input, one script per address family) and change nothing.
    #[arg(long)]
    print: bool,
    /// Install the rules in the nat table, replacing any installed before (needs NET_ADMIN).
    #[arg(long)]
    apply: bool,
    /// Remove every rule and chain of ours, IPv4 and IPv6, and nothing else.
    #[arg(long)]
    cleanup: bool,
    /// The sidecar's uid: its own connections are never redirected.
    #[arg(long, default_value_t = super::PROXY_UID)]
    proxy_uid: u32,
    /// Where captured outbound connections go (the outbound listener's port).
    #[arg(long, default_value_t = super::OUTBOUND_PORT)]
    outbound_port: u16,
    /// Where captured inbound connections go (the inbound listener's port).
    #[arg(long, default_value_t = super::INBOUND_PORT)]
    inbound_port: u16,
    /// Outbound destinations to capture, comma-separated CIDRs, or `*` for all
    /// (traffic.sidecar.istio.io/includeOutboundIPRanges).
    #[arg(long, default_value = "*")]
    include_outbound_ip_ranges: String,
    /// Outbound destinations never captured, comma-separated CIDRs
    /// (traffic.sidecar.istio.io/excludeOutboundIPRanges).
    #[arg(long, default_value = "")]
    exclude_outbound_ip_ranges: String,
    /// Outbound destination ports never captured, comma-separated
    /// (traffic.sidecar.istio.io/excludeOutboundPorts).
    #[arg(long, default_value = "")]
    exclude_outbound_ports: String,
    /// Inbound ports never captured, comma-separated, besides the sidecar's own
    /// (traffic.sidecar.istio.io/excludeInboundPorts).
    #[arg(long, default_value = "")]
    exclude_inbound_ports: String,
    /// Capture IPv6 too (ip6tables); the sidecar must then listen on IPv6.
    #[arg(long)]
    ipv6: bool,
}

impl IptablesArgs {
    fn capture(&self) -> Result<Capture, CaptureError> {
        let mut capture = Capture {
            proxy_uid: self.proxy_uid,
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            include_outbound: parse_ranges("--include-outbound-ip-ranges", &self.include_outbound_ip_ranges)?,
            exclude_outbound: parse_cidrs("--exclude-outbound-ip-ranges", &self.exclude_outbound_ip_ranges)?,
            exclude_outbound_ports: parse_ports("--exclude-outbound-ports", &self.exclude_outbound_ports)?,
            exclude_inbound_ports: parse_ports("--exclude-inbound-ports", &self.exclude_inbound_ports)?,
            ipv6: self.ipv6,
            ..Capture::default()
        };
        // Listeners on other ports than the defaults are the sidecar's own too.
        for port in [self.outbound_port, self.inbound_port] {
            if !capture.sidecar_ports.contains(&port) {
                capture.sidecar_ports.push(port);
            }
        }
        Ok(capture)
    }
}

pub fn main(args: IptablesArgs) -> ExitCode {
    let capture = match args.capture() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mixr-proxy iptables: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = if args.print {
        print!("{}", capture.print());
        Ok(())
    } else if args.apply {
        super::apply::apply(&capture).map(|()| {
            print!("{}", capture.print());
            eprintln!("mixr-proxy iptables: rules installed");
        })
    } else {
        super::apply::cleanup()
            .map(|r| eprintln!("mixr-proxy iptables: removed {} jumps and {} chains", r.jumps, r.chains))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mixr-proxy iptables: {e}");
            ExitCode::FAILURE
        }
    }
}
