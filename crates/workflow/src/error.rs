//! Errors of the workflow engine and of steps.

use std::fmt;

use pgdr_model::ClusterName;
use pgdr_store::StoreError;

use crate::{WorkflowId, WorkflowState};

/// Why a step's attempt failed. The engine retries it (with backoff, up to
/// the step's `max_attempts`) only when `retryable`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepError {
    pub retryable: bool,
    pub message: String,
}

impl StepError {
    /// A failure that may pass (a timeout, a node still starting).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { retryable: true, message: message.into() }
    }
    /// A failure that trying again cannot fix (a precondition does not hold).
    pub fn fatal(message: impl Into<String>) -> Self {
        Self { retryable: false, message: message.into() }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StepError {}

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no workflow kind {0:?} is registered")]
    UnknownKind(String),
    #[error("invalid {kind} workflow: {message}")]
    Invalid { kind: String, message: String },
    #[error("cluster {cluster} is busy: {kind} workflow {workflow} is running; wait for it to end or cancel it")]
    ClusterBusy { cluster: ClusterName, workflow: WorkflowId, kind: String },
    #[error("no workflow {0}")]
    NotFound(WorkflowId),
    #[error("workflow {id} is {state}, not waiting for approval")]
    NotWaitingApproval { id: WorkflowId, state: WorkflowState },
    #[error("workflow {id} has already ended ({state})")]
    Ended { id: WorkflowId, state: WorkflowState },
    /// The engine stopped (shutdown, crash, lost ownership) before the
    /// workflow ended; it stays `running` in the store for the next engine.
    #[error("workflow {0} was interrupted before it ended; the next engine resumes it")]
    Interrupted(WorkflowId),
    /// The engine lost its owner lease (the store was unreachable for longer
    /// than its TTL); it stopped its workflows so another engine can resume them.
    #[error("the workflow engine lost its owner lease and stopped")]
    Fenced,
}

impl WorkflowError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            WorkflowError::Store(e) => e.is_retryable(),
            WorkflowError::ClusterBusy { .. } => true,
            _ => false,
        }
    }

    /// Whether this is the caller's mistake (exit code 2 in the CLI, 4xx in the API).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            WorkflowError::UnknownKind(_)
                | WorkflowError::Invalid { .. }
                | WorkflowError::NotFound(_)
                | WorkflowError::NotWaitingApproval { .. }
                | WorkflowError::Ended { .. }
        )
    }
}
