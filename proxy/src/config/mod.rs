//! Istio's `networking.istio.io` config as the sidecar reads it.
//!
//! - [`model`]: VirtualService, DestinationRule, ServiceEntry and their parts.
//! - [`gateway`]: Gateway (selector, servers, TLS); [`hosts`]: host wildcards.
//! - [`load`]: files and directories of multi-document YAML; other kinds are skipped (the
//!   server's), unknown keys are errors.

pub mod gateway;
pub mod hosts;
pub mod load;
pub mod model;

pub use load::{TrafficConfig, load_paths, load_str};
pub use model::*;
