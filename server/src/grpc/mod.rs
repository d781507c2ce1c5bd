//! gRPC services and the mapping of errors to gRPC statuses.

pub mod mixer;
pub mod status;
