//! The one place where library errors become gRPC statuses.

use mixr_rules::bag::BagError;

/// Errors a call can end with before any policy is evaluated.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Attributes(#[from] BagError),
}

impl From<CallError> for tonic::Status {
    fn from(e: CallError) -> tonic::Status {
        match &e {
            // Mixer answered a dictionary mismatch with INTERNAL; clients key on it.
            CallError::Attributes(BagError::GlobalWordCount { .. }) => tonic::Status::internal(e.to_string()),
            CallError::Attributes(_) => tonic::Status::invalid_argument(e.to_string()),
        }
    }
}
