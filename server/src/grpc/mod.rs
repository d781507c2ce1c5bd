//! gRPC services and the mapping of errors to gRPC statuses.

pub mod ca;
pub mod envoy_authz;
pub mod envoy_rls;
pub mod mixer;
pub mod status;
pub mod trace;

use crate::dispatch::quota::Unconfigured;
use crate::metrics::Metrics;
use crate::runtime::ConfigStore;

/// What every gRPC service shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub store: Arc<ConfigStore>,
    pub metrics: Metrics,
    pub in_flight: InFlight,
    pub unconfigured: Arc<Unconfigured>,
}

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Calls being served right now, so shutdown can wait for them (and only them: idle
/// client connections must not hold the process up).
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

pub struct CallGuard(Arc<AtomicUsize>);

impl InFlight {
    pub fn enter(&self) -> CallGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.0.clone())
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
