//! The store's error type, classified for callers: [`StoreError::is_retryable`]
//! tells a transient failure (worth retrying with backoff) from a final one.

use crate::LeaseId;

/// Why a store operation failed. A failed compare-and-set is not an error:
/// it is [`crate::Outcome::Conflict`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The lease has expired or was revoked; keys attached to it are gone.
    #[error("lease {0} has expired or was revoked")]
    LeaseExpired(LeaseId),
    /// The store cannot be reached or is busy right now (etcd without a
    /// quorum, a timeout). Retry with backoff. For a write the outcome is
    /// unknown (etcd may still apply it when its quorum is back): re-read.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The store refused our credentials or this request (etcd
    /// authentication). Not retryable: the configuration must change.
    #[error("state store refused access: {0}")]
    Denied(String),
    /// A write made through a [`crate::FencedStore`] by a controller that
    /// no longer leads: nothing was changed. Not retryable.
    #[error("write refused: {0}")]
    Fenced(String),
    /// The storage under the store failed (I/O, a damaged file).
    #[error("state store storage failed: {0}")]
    Storage(String),
    /// The state file cannot be opened, e.g. another process holds it.
    #[error("cannot open state store {path}: {message}")]
    Open { path: String, message: String },
    /// A stored value could not be decoded as what the key should hold.
    #[error("state store key {key} holds an unreadable value: {message}")]
    Corrupt { key: String, message: String },
    /// The caller asked for something the store cannot do (an empty key, a
    /// zero TTL).
    #[error("invalid state store request: {0}")]
    Invalid(String),
    /// A watch's reader fell behind and changes were dropped: re-read what
    /// it needs and watch again.
    #[error("watch fell behind and missed changes; re-read and watch again")]
    WatchLagged,
    /// The store was closed while the operation ran.
    #[error("state store closed")]
    Closed,
    /// A bug in the store itself.
    #[error("state store internal error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether trying the same operation again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::WatchLagged)
    }

    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::LeaseExpired(_) => "lease_expired",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Denied(_) => "denied",
            StoreError::Fenced(_) => "fenced",
            StoreError::Storage(_) => "storage",
            StoreError::Open { .. } => "open",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Invalid(_) => "invalid",
            StoreError::WatchLagged => "watch_lagged",
            StoreError::Closed => "closed",
            StoreError::Internal(_) => "internal",
        }
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(e.to_string())
            }
        }
    )*};
}

storage_from!(redb::Error, redb::StorageError, redb::TableError, redb::TransactionError, redb::CommitError);
