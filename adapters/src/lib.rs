//! mixr's adapters: the code that answers checks, allocates quota and records reports.
//!
//! - [`variety`]: one trait per adapter variety ([`CheckHandler`], [`QuotaHandler`],
//!   [`ReportHandler`], and [`AttributeGenerator`] for Mixer's attribute-producing
//!   adapters) and the values that cross them.
//! - [`registry`]: the one place that knows every adapter: which templates each serves,
//!   how its params are validated and how it is built from a handler document. Handlers
//!   whose adapter and params did not change are carried over across config reloads, so
//!   their state (a fetched list, counters) survives.
//! - One module per adapter: [`denier`], [`kubernetesenv`], [`listchecker`], [`memquota`],
//!   [`redisquota`], [`prom`] (`prometheus`), [`sqllog`], [`stdio`], [`noop`]; [`quota`]
//!   holds what the quota adapters share (params, keys, rolling-window arithmetic).
//! - [`clock`]: time as adapters see it, replaceable in tests.
//!
//! Adding an adapter means a new module and one line in [`registry::Registry::builtin`];
//! the server's dispatch does not change.

pub mod clock;
pub mod denier;
pub mod kubernetesenv;
pub mod listchecker;
pub mod memquota;
pub mod noop;
pub mod params;
pub mod prom;
pub mod quota;
pub mod redisquota;
pub mod registry;
pub mod sqllog;
pub mod stdio;
pub mod tracespan;
pub mod variety;

pub use registry::{AdapterMetrics, BuildContext, Handler, HandlerSet, Registry};
pub use variety::{
    AttributeGenerator, CheckHandler, CheckResult, Denial, QuotaArgs, QuotaHandler, QuotaLimit, QuotaResult,
    ReportHandler, Status,
};
