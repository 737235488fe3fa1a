//! pgdr's state store: what is true now.
//!
//! The primary, the epoch, node health, the primary agent's lease, workflow
//! journals and the event log live here, never in the config file. This crate
//! owns two layers:
//!
//! 1. [`StateStore`], a low-level, object-safe async key-value trait shaped
//!    like etcd's v3 API so an etcd implementation fits later without changing
//!    callers: a global **revision** raised by every change, values versioned
//!    by the revision that last wrote them, **compare-and-set** on that
//!    revision (and multi-key [`Txn`]s), **leases** with a TTL and keep-alive
//!    to which keys are attached (they disappear when the lease expires or is
//!    revoked), and **watches** by key prefix that report every change with its
//!    revision. Implementations: [`MemoryStore`] (tests, one process),
//!    [`EmbeddedStore`] (one redb file in the controller's `state_dir`, the
//!    default) and, with the `etcd` feature, `EtcdStore` (an etcd cluster,
//!    for controllers in several regions; every key under a configurable
//!    prefix). The first two share one implementation of the semantics
//!    (`kv::KvStore`) over different tables, so they behave identically;
//!    the same conformance tests run against all three.
//! 2. One leader among controllers sharing a store: [`Election`], and
//!    [`FencedStore`], through which every write of the leader carries the
//!    check that it still leads, in the same transaction.
//! 3. A typed layer used by the controller, agents and proxies:
//!    [`ClusterStore`] (cluster state with the epoch raised by
//!    compare-and-set, node health, the primary agent's lease) and
//!    [`EventLog`] (an ordered, bounded, append-only log of [`Event`]s).
//!    Workflow journals are written by `pgdr-workflow` through the same trait.
//!
//! Time: lease deadlines use `tokio::time::Instant`, so leases are tested
//! with paused time; wall-clock timestamps come from a [`Clock`].
//!
//! This crate must not depend on the controller, the proxy or the node layer.
//!
//! # Key layout
//!
//! Every key is UTF-8 and starts with `/pgdr/`; values are JSON unless noted.
//! Names are checked by config validation (letters, digits, `-`, `_`), so
//! they never contain `/`.
//!
//! | key | value | written by |
//! | --- | --- | --- |
//! | `/pgdr/clusters/<cluster>/state` | [`ClusterState`]: epoch, primary, why, when | [`ClusterStore::raise_epoch`] (CAS) |
//! | `/pgdr/clusters/<cluster>/lease` | [`PrimaryLease`], attached to a store lease | the primary's agent ([`ClusterStore::acquire_primary_lease`]) |
//! | `/pgdr/clusters/<cluster>/health/<node>` | [`NodeHealth`] | the controller's probes, agents |
//! | `/pgdr/clusters/<cluster>/freeze` | [`Freeze`]: who froze the cluster, when, why | [`ClusterStore::freeze`]; checked absent by [`ClusterStore::raise_epoch_unless_frozen`] |
//! | `/pgdr/rules/freeze` | [`Freeze`]: the global freeze | the same |
//! | `/pgdr/clusters/<cluster>/lock` | the role-changing workflow running on the cluster | `pgdr-workflow` (CAS, absent → held) |
//! | `/pgdr/workflows/<id>/record` | the workflow record (kind, state, params, plan) | `pgdr-workflow` |
//! | `/pgdr/workflows/<id>/owner` | the engine running it, attached to that engine's lease | `pgdr-workflow` |
//! | `/pgdr/workflows/<id>/steps/<stage:03>/<step>` | one step's journal (attempts, outcome, output) | `pgdr-workflow` |
//! | `/pgdr/workflows/<id>/approvals/<step>` | who approved a gate, when | `pgdr-workflow` |
//! | `/pgdr/workflows/<id>/cancel` | who asked to cancel, when | `pgdr-workflow` |
//! | `/pgdr/controller/leader` | [`LeaderInfo`]: the leading controller and its term, attached to its lease | [`Election`] (CAS, absent → held) |
//! | `/pgdr/controller/term` | the last leader term (decimal) | [`Election`], in the same txn |
//! | `/pgdr/controller/standby/<instance>` | [`StandbyInfo`]: a controller campaigning, attached to its own lease | [`Election::campaign`] |
//! | `/pgdr/controller/handoff` | [`Handoff`]: the standby a resigning leader hands over to, attached to a lease of one TTL | [`Leadership::hand_to`] (fenced) |
//! | `/pgdr/events/seq` | the last event sequence number (decimal) | [`EventLog::append`] |
//! | `/pgdr/events/log/<seq:020>` | one [`Event`] | [`EventLog::append`] |
//!
//! The helpers in [`keys`] build these keys; nothing else should format them.

mod clock;
mod cluster;
mod embedded;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
mod events;
pub mod keys;
mod kv;
mod leader;
mod memory;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use clock::{Clock, SystemClock, TokioClock};
pub use cluster::{ClusterError, ClusterState, ClusterStore, Freeze, Freezes, HeldLease, NodeHealth, PrimaryLease};
pub use embedded::EmbeddedStore;
pub use error::StoreError;
#[cfg(feature = "etcd")]
pub use etcd::{EtcdOptions, EtcdPassword, EtcdStore, EtcdTls};
pub use events::{DEFAULT_EVENT_RETENTION, Event, EventLog};
pub use kv::Watch;
pub use leader::{Election, FencedStore, Handoff, LeaderInfo, Leadership, StandbyInfo};
pub use memory::MemoryStore;

/// A store-wide, monotonically increasing change counter. Every committed
/// change (put, delete, lease expiry) raises it by one and every value
/// carries the revision that last wrote it.
pub type Revision = u64;

/// A lease granted by the store. Keys attached to it are deleted when it
/// expires (no keep-alive within its TTL) or is revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(pub u64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A value with the revision that last wrote it and the lease it is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    /// The store revision of the last change to this key (etcd's `mod_revision`).
    pub revision: Revision,
    pub lease: Option<LeaseId>,
}

/// One key and its value, as [`StateStore::list`] returns them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Versioned,
}

/// What a compare-and-set expects the key to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// No condition.
    Any,
    /// The key must not exist.
    Absent,
    /// The key must exist and have been last written at this revision.
    Revision(Revision),
}

/// The result of a conditional write on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The write happened at this revision.
    Done(Revision),
    /// The condition did not hold; this is what the key holds now.
    Conflict(Option<Versioned>),
}

impl Outcome {
    pub fn is_done(&self) -> bool {
        matches!(self, Outcome::Done(_))
    }
}

/// One change inside a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Vec<u8>, lease: Option<LeaseId> },
    Delete { key: String },
    DeletePrefix { prefix: String },
}

/// Several conditions and changes applied atomically (etcd's `Txn` with only
/// a success branch): if every check holds, every op is applied at one new
/// revision; otherwise nothing changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub checks: Vec<(String, Expect)>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn check(mut self, key: impl Into<String>, expect: Expect) -> Self {
        self.checks.push((key.into(), expect));
        self
    }
    pub fn put(mut self, key: impl Into<String>, value: Vec<u8>, lease: Option<LeaseId>) -> Self {
        self.ops.push(Op::Put { key: key.into(), value, lease });
        self
    }
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }
    pub fn delete_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.ops.push(Op::DeletePrefix { prefix: prefix.into() });
        self
    }
}

/// The result of a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every op was applied; the store is now at this revision (unchanged
    /// when the ops changed nothing, e.g. deleting an absent key).
    Done(Revision),
    /// The first check that failed, and what that key holds now.
    Conflict { key: String, current: Option<Versioned> },
}

/// One change seen by a [`Watch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put {
        key: String,
        value: Versioned,
    },
    /// The key was deleted (explicitly, or because its lease expired or was
    /// revoked) at `revision`.
    Delete {
        key: String,
        revision: Revision,
    },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put { key, .. } | WatchEvent::Delete { key, .. } => key,
        }
    }
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put { value, .. } => value.revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// The low-level state store. Object-safe: callers hold `Arc<dyn StateStore>`.
///
/// Guarantees every implementation gives:
/// - every change raises the global revision; a [`Txn`] is applied whole at
///   one revision or not at all;
/// - [`compare_and_set`](Self::compare_and_set) is linearizable: of several
///   callers expecting the same revision, exactly one wins;
/// - a key attached to a lease is gone (reads do not see it, watches get a
///   `Delete`) once the lease's TTL has passed without a keep-alive;
/// - a watch delivers the changes under its prefix made after it was
///   created, in revision order, or reports [`StoreError::WatchLagged`] if the
///   reader fell too far behind (then re-read and watch again).
#[async_trait]
pub trait StateStore: Send + Sync + fmt::Debug {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// Every key starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;
    /// The store's current revision.
    async fn revision(&self) -> Result<Revision, StoreError>;
    /// Applies a multi-key transaction.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError>;

    /// Writes `key` unconditionally and returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        match self.txn(Txn::new().put(key, value, lease)).await? {
            TxnOutcome::Done(rev) => Ok(rev),
            TxnOutcome::Conflict { key, .. } => {
                Err(StoreError::Internal(format!("unconditional put of {key} conflicted")))
            }
        }
    }

    /// Writes `key` if it is as `expected`.
    async fn compare_and_set(
        &self,
        key: &str,
        expected: Expect,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Outcome, StoreError> {
        match self.txn(Txn::new().check(key, expected).put(key, value, lease)).await? {
            TxnOutcome::Done(rev) => Ok(Outcome::Done(rev)),
            TxnOutcome::Conflict { current, .. } => Ok(Outcome::Conflict(current)),
        }
    }

    /// Deletes `key` if it is as `expected` (deleting an absent key with
    /// [`Expect::Any`] is a success that changes nothing).
    async fn delete(&self, key: &str, expected: Expect) -> Result<Outcome, StoreError> {
        match self.txn(Txn::new().check(key, expected).delete(key)).await? {
            TxnOutcome::Done(rev) => Ok(Outcome::Done(rev)),
            TxnOutcome::Conflict { current, .. } => Ok(Outcome::Conflict(current)),
        }
    }

    /// Grants a lease that lives `ttl` unless kept alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;
    /// Restarts the lease's TTL; [`StoreError::LeaseExpired`] when it has
    /// already expired or was revoked (its keys are gone).
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// Ends the lease now and deletes its keys. Revoking an unknown lease is
    /// not an error.
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// What is left of the lease's TTL, `None` when it has expired.
    async fn lease_remaining(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError>;

    /// Watches every key starting with `prefix` from the current revision on.
    async fn watch(&self, prefix: &str) -> Result<Watch, StoreError>;
}
