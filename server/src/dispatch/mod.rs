//! Check and Report semantics over a [`Runtime`](crate::runtime::Runtime), independent of
//! the wire: the gRPC layer decodes into a bag, calls here, and encodes the outcome.

mod check;
mod generate;
pub mod quota;
mod report;

pub use check::{CheckOutcome, HeaderOp, check};
pub use generate::{Generated, generate};
pub use report::{ReportOutcome, report};
