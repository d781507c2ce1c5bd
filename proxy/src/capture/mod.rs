//! Transparent capture, as istio-init set it up: nat-table rules that send a pod's TCP
//! traffic through the sidecar without the application knowing.
//!
//! - [`rules`]: what to capture (Istio's annotation syntax) and the rules, as
//!   `iptables-restore` input, one script per address family;
//! - [`apply`]: installing and removing them with the system's `iptables` tools (run as
//!   programs, so the proxy links no netfilter library and the init container needs only
//!   the binaries);
//! - [`original_dst`], [`transparent`], [`tcp`]: the listeners' side: where a redirected
//!   connection was going, HTTP or not (sniffed), and TCP proxying with Istio's
//!   TCP attributes; [`inbound`]: inbound HTTP to the dialled port; [`registry`]:
//!   outbound TCP against the ServiceEntries, and the outbound traffic policy;
//!   [`passthrough`]: outbound HTTP for unknown Hosts under that policy.

pub mod apply;
pub mod cli;
pub mod inbound;
pub mod original_dst;
pub mod passthrough;
pub mod registry;
pub mod rules;

pub use registry::OutboundPolicy;
pub use rules::{Capture, CaptureError, Family, IpRanges};

/// The sidecar's ports, as the injector configures them and the rules redirect to.
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
pub const ADMIN_PORT: u16 = 15000;
pub const STATS_PORT: u16 = 15090;
/// The uid the sidecar runs as; its own connections are never captured (Istio's 1337).
pub const PROXY_UID: u32 = 1337;

/// Where a redirected connection was going, carried on each of its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalDst(pub std::net::SocketAddr);
