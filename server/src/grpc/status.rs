//! The one place where library errors become gRPC statuses.

use mixr_rules::bag::BagError;

use crate::ca::CaError;

/// Errors a call can end with before any policy is evaluated.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Attributes(#[from] BagError),
    /// A certificate request without a bootstrap token, or with one mixr does not know.
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error(transparent)]
    Certificate(#[from] CaError),
}

impl From<CallError> for tonic::Status {
    fn from(e: CallError) -> tonic::Status {
        match &e {
            // Mixer answered a dictionary mismatch with INTERNAL; clients key on it.
            CallError::Attributes(BagError::GlobalWordCount { .. }) => tonic::Status::internal(e.to_string()),
            // tonic answers a message prost cannot decode with INTERNAL; a Check's attributes
            // are decoded after tonic's part now, and keep that answer.
            CallError::Attributes(BagError::Wire { .. }) => tonic::Status::internal(e.to_string()),
            CallError::Attributes(_) => tonic::Status::invalid_argument(e.to_string()),
            CallError::Unauthenticated(_) => tonic::Status::unauthenticated(e.to_string()),
            CallError::Certificate(CaError::WrongIdentity { .. }) => tonic::Status::permission_denied(e.to_string()),
            CallError::Certificate(CaError::BadCsr(_)) => tonic::Status::invalid_argument(e.to_string()),
            CallError::Certificate(_) => tonic::Status::internal(e.to_string()),
        }
    }
}
