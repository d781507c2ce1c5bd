//! Which side of a workload's traffic a request is on, as Istio's reporters name it. The
//! roles themselves (the sidecar's inbound and outbound sides, the gateway) are the
//! modules `sidecar` and `gateway`; this is what the layers below them (stats, traces,
//! policy) need to know of them.

/// The `destination_service` of requests that resolved to no service.
pub const UNKNOWN: &str = "unknown";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn reporter(self) -> &'static str {
        match self {
            Direction::Inbound => "destination",
            Direction::Outbound => "source",
        }
    }

    /// `context.reporter.kind`.
    pub fn reporter_kind(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}
