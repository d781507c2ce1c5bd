//! The mixr sidecar proxy: Istio traffic rules (VirtualService, DestinationRule,
//! ServiceEntry) and, later, enforcement through mixr's Check/Report.
//!
//! Built so far (pure code, no I/O beyond reading config files):
//! - [`config`]: the networking YAML, parsed with errors that name file, document and key;
//!   string matches and regexes compiled at load.
//! - [`route`]: the route table: host lookup, ordered route matching, weighted splits,
//!   subsets resolved to endpoints.
//!
//! Not built yet: the listeners and forwarding (HTTP/1.1, h2c, gRPC), resilience
//! (timeouts, retries, pools, outlier detection), faults and mirroring in action, and
//! enforcement. The crate depends on `mixr-proto` and `mixr-rules`, never on the server.

pub mod admin;
pub mod body;
pub mod cli;
pub mod config;
pub mod forward;
pub mod identity;
pub mod policy;
pub mod proxy;
pub mod rand;
pub mod reload;
pub mod route;
pub mod stats;
pub mod upgrade;
pub mod upstream;
