//! The adapter varieties. Each adapter implements the traits for the templates it serves.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use mixr_proto::istio::policy::v1beta1::DirectHttpResponse;
use mixr_rules::expr::GeneratedValues;
use mixr_rules::snapshot::InstanceValues;

/// gRPC status codes adapters answer with.
pub mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;

    /// Parses a code given by number or by name (`PERMISSION_DENIED`).
    pub fn parse(text: &str) -> Option<i32> {
        mixr_proto::parse_grpc_code(text)
    }
}

/// An adapter's verdict: a gRPC code, a message and optionally a direct HTTP response.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Status {
    pub code: i32,
    pub message: String,
    pub direct_response: Option<DirectHttpResponse>,
}

impl Status {
    pub fn ok() -> Status {
        Status::default()
    }

    pub fn new(code: i32, message: impl Into<String>) -> Status {
        Status { code, message: message.into(), direct_response: None }
    }

    pub fn is_ok(&self) -> bool {
        self.code == code::OK
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub status: Status,
    pub valid_duration: Duration,
    pub valid_use_count: i32,
    /// Named outputs, readable by the rule's header operations as `ACTION.output.NAME`.
    pub output: HashMap<String, String>,
}

/// Check adapters answer from memory (lists, static config), so the call is synchronous:
/// no per-request future allocation on the hot path.
pub trait CheckHandler: Send + Sync {
    fn check(&self, instance: &InstanceValues) -> CheckResult;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaArgs {
    /// The request's deduplication id plus the quota name.
    pub dedup_id: String,
    pub amount: i64,
    pub best_effort: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuotaResult {
    pub status: Status,
    pub granted: i64,
    pub valid_duration: Duration,
    /// The limit that applied and the counter's state after this call, when the adapter
    /// keeps one (Envoy's rate-limit answers report it).
    pub limit: Option<QuotaLimit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimit {
    pub max_amount: i64,
    pub window: Duration,
    pub remaining: i64,
    /// When capacity next returns.
    pub reset_after: Duration,
}

impl QuotaResult {
    /// A failure that grants nothing, with a status saying why.
    pub fn failed(status: Status) -> QuotaResult {
        QuotaResult { status, granted: 0, valid_duration: Duration::ZERO, limit: None }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Quota adapters may need the network (Redis), so allocation is asynchronous.
pub trait QuotaHandler: Send + Sync {
    fn alloc<'a>(
        &'a self,
        instance: &'a InstanceValues,
        quota_name: &'a str,
        args: QuotaArgs,
    ) -> BoxFuture<'a, QuotaResult>;
}

/// A Check that was denied, for report adapters that record denials.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    pub time: std::time::SystemTime,
    pub code: i32,
    /// The aggregated `handler:message` text.
    pub message: String,
    /// The request's attributes, as text.
    pub attributes: Vec<(String, String)>,
}

/// Report adapters take a batch of instances of one instance config and must not block:
/// slow sinks queue and flush in the background.
pub trait ReportHandler: Send + Sync {
    /// `instance_name` is the instance's full name (`name.kind.namespace`).
    fn report(&self, instance_name: &str, instances: &[InstanceValues]);

    /// Writes out anything queued (graceful shutdown).
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Whether this handler records denied Checks (then [`ReportHandler::check_denied`] is
    /// called for each).
    fn wants_check_denials(&self) -> bool {
        false
    }

    fn check_denied(&self, _denial: &Denial) {}

    /// Metric families this handler exposes on `/metrics` (the prometheus adapter).
    fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        Vec::new()
    }
}

/// Attribute generators (Mixer's APA) answer from memory (a cache of cluster state), before
/// Check and Report dispatch, so the call is synchronous. `None` means the adapter has no
/// source to answer from (no cluster reachable): nothing is generated, and the instance's
/// bindings are not applied, so their defaults do not pose as facts.
pub trait AttributeGenerator: Send + Sync {
    fn generate(&self, instance: &InstanceValues) -> Option<GeneratedValues>;
}
