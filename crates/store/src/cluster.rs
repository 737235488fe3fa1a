//! The typed view of a cluster in the store, for the controller, agents and
//! proxies: its state (epoch and primary), node health, and the lease the
//! primary's agent holds.
//!
//! The epoch only moves through [`ClusterStore::raise_epoch`], a
//! compare-and-set on the state key's revision that also checks the epoch the
//! caller expects: of two controllers racing to promote, exactly one wins and
//! the other gets [`ClusterError::EpochConflict`].

use std::sync::Arc;
use std::time::Duration;

use pgdr_model::{ClusterName, Epoch, Lag, Lsn, NodeName, Role};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::keys::{self, from_json, to_json};
use crate::{Clock, Expect, LeaseId, StateStore, StoreError, Txn, TxnOutcome, Versioned, Watch};

/// What is true now about a cluster's leadership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster: ClusterName,
    /// Raised by every promotion; the fencing token agents and proxies check.
    pub epoch: Epoch,
    /// The node this epoch names as primary (`None` while there is none,
    /// e.g. between fencing the old primary and promoting a new one).
    pub primary: Option<NodeName>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Why the epoch was last raised (a workflow id, "bootstrap", ...).
    pub reason: String,
}

/// What an observer last saw of a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeHealth {
    pub cluster: ClusterName,
    pub node: NodeName,
    pub role: Role,
    pub healthy: bool,
    #[serde(default)]
    pub lsn: Option<Lsn>,
    #[serde(default)]
    pub lag: Option<Lag>,
    /// Who observed it (a controller, an agent, a vantage point).
    #[serde(default)]
    pub observer: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub observed_at: OffsetDateTime,
}

/// The primary agent's lease as stored under `/pgdr/clusters/<c>/lease`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryLease {
    pub cluster: ClusterName,
    pub holder: NodeName,
    /// The epoch under which the holder is primary.
    pub epoch: Epoch,
    pub ttl_ms: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub acquired_at: OffsetDateTime,
}

/// A freeze switch: while it exists, no automatic role change starts on
/// the cluster (or, the global one, on any cluster). Stored under
/// `/pgdr/clusters/<c>/freeze` or `/pgdr/rules/freeze`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    /// The API token's name that froze it.
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(default)]
    pub reason: Option<String>,
}

/// The freeze switches that apply to one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Freezes {
    pub global: Option<Freeze>,
    pub cluster: Option<Freeze>,
}

impl Freezes {
    pub fn any(&self) -> bool {
        self.global.is_some() || self.cluster.is_some()
    }
}

/// A primary lease this process holds: renew it within its TTL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLease {
    pub lease: LeaseId,
    pub info: PrimaryLease,
}

/// Why a typed cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "cluster {cluster}: expected epoch {expected} but it is {current} (primary {}): another controller changed it",
        .primary.as_ref().map(|p| p.as_str()).unwrap_or("none")
    )]
    EpochConflict { cluster: ClusterName, expected: Epoch, current: Epoch, primary: Option<NodeName> },
    #[error("cluster {cluster}: the primary lease is held by {holder} (epoch {epoch})")]
    LeaseHeld { cluster: ClusterName, holder: NodeName, epoch: Epoch },
    #[error(
        "cluster {cluster}: {node} at epoch {epoch} is not the primary (the state names {} at epoch {current_epoch})",
        .current_primary.as_ref().map(|p| p.as_str()).unwrap_or("no primary")
    )]
    NotPrimary {
        cluster: ClusterName,
        node: NodeName,
        epoch: Epoch,
        current_epoch: Epoch,
        current_primary: Option<NodeName>,
    },
    #[error("cluster {cluster}: {node} lost the primary lease")]
    LeaseLost { cluster: ClusterName, node: NodeName },
    #[error("cluster {cluster}: refused by rule freeze: {} frozen by {} at {} (an operator's switchover or failover still runs)", .global.then_some("every cluster is").unwrap_or("the cluster is"), .freeze.by, .freeze.at)]
    Frozen { cluster: ClusterName, global: bool, freeze: Freeze },
    #[error("cluster {cluster}: {what} kept conflicting with concurrent writers")]
    Contended { cluster: ClusterName, what: &'static str },
}

impl ClusterError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClusterError::Store(e) => e.is_retryable(),
            ClusterError::Contended { .. } => true,
            _ => false,
        }
    }
}

const CAS_TRIES: usize = 16;

fn freeze_key(cluster: Option<&ClusterName>) -> String {
    cluster.map(|c| keys::cluster_freeze(c.as_str())).unwrap_or_else(|| keys::FREEZE_GLOBAL.to_owned())
}

/// Typed access to clusters in a [`StateStore`].
#[derive(Clone, Debug)]
pub struct ClusterStore {
    store: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
}

impl ClusterStore {
    pub fn new(store: Arc<dyn StateStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    async fn state_versioned(&self, cluster: &ClusterName) -> Result<Option<(ClusterState, Versioned)>, StoreError> {
        let key = keys::cluster_state(cluster.as_str());
        match self.store.get(&key).await? {
            Some(v) => Ok(Some((from_json(&key, &v.value)?, v))),
            None => Ok(None),
        }
    }

    /// The cluster's state, `None` before it was initialised.
    pub async fn state(&self, cluster: &ClusterName) -> Result<Option<ClusterState>, StoreError> {
        Ok(self.state_versioned(cluster).await?.map(|(s, _)| s))
    }

    /// Records the cluster's first state (e.g. the configured primary at
    /// epoch 1) unless it already has one; returns what is stored.
    pub async fn init(
        &self,
        cluster: &ClusterName,
        epoch: Epoch,
        primary: Option<NodeName>,
        reason: &str,
    ) -> Result<ClusterState, ClusterError> {
        let key = keys::cluster_state(cluster.as_str());
        let state = ClusterState {
            cluster: cluster.clone(),
            epoch,
            primary,
            updated_at: self.clock.now(),
            reason: reason.into(),
        };
        match self.store.compare_and_set(&key, Expect::Absent, to_json(&key, &state)?, None).await? {
            crate::Outcome::Done(_) => Ok(state),
            crate::Outcome::Conflict(Some(v)) => Ok(from_json(&key, &v.value)?),
            crate::Outcome::Conflict(None) => Err(ClusterError::Contended { cluster: cluster.clone(), what: "init" }),
        }
    }

    /// Raises the epoch from `expected` to `expected + 1` naming
    /// `new_primary`, if the epoch is still `expected` (a cluster without a
    /// state counts as epoch 0). Exactly one of several racing callers wins.
    pub async fn raise_epoch(
        &self,
        cluster: &ClusterName,
        expected: Epoch,
        new_primary: Option<NodeName>,
        reason: &str,
    ) -> Result<ClusterState, ClusterError> {
        self.raise(cluster, expected, new_primary, reason, false).await
    }

    /// [`raise_epoch`](Self::raise_epoch) for an automatic role change: the
    /// same compare-and-set transaction also checks that neither freeze
    /// switch exists, so a freeze set at any moment before the write
    /// refuses it ([`ClusterError::Frozen`]).
    pub async fn raise_epoch_unless_frozen(
        &self,
        cluster: &ClusterName,
        expected: Epoch,
        new_primary: Option<NodeName>,
        reason: &str,
    ) -> Result<ClusterState, ClusterError> {
        self.raise(cluster, expected, new_primary, reason, true).await
    }

    async fn raise(
        &self,
        cluster: &ClusterName,
        expected: Epoch,
        new_primary: Option<NodeName>,
        reason: &str,
        unless_frozen: bool,
    ) -> Result<ClusterState, ClusterError> {
        let key = keys::cluster_state(cluster.as_str());
        let freeze_key = keys::cluster_freeze(cluster.as_str());
        for _ in 0..CAS_TRIES {
            let cur = self.state_versioned(cluster).await?;
            let (current, primary, expect) = match &cur {
                Some((s, v)) => (s.epoch, s.primary.clone(), Expect::Revision(v.revision)),
                None => (Epoch::ZERO, None, Expect::Absent),
            };
            if current != expected {
                return Err(ClusterError::EpochConflict { cluster: cluster.clone(), expected, current, primary });
            }
            let state = ClusterState {
                cluster: cluster.clone(),
                epoch: expected.next(),
                primary: new_primary.clone(),
                updated_at: self.clock.now(),
                reason: reason.into(),
            };
            let mut txn = Txn::new().check(&key, expect);
            if unless_frozen {
                txn = txn.check(keys::FREEZE_GLOBAL, Expect::Absent).check(&freeze_key, Expect::Absent);
            }
            match self.store.txn(txn.put(&key, to_json(&key, &state)?, None)).await? {
                TxnOutcome::Done(_) => {
                    tracing::info!(%cluster, epoch = %state.epoch, primary = ?state.primary, reason, "epoch raised");
                    return Ok(state);
                }
                TxnOutcome::Conflict { key: k, current: Some(v) } if k == freeze_key || k == keys::FREEZE_GLOBAL => {
                    return Err(ClusterError::Frozen {
                        cluster: cluster.clone(),
                        global: k == keys::FREEZE_GLOBAL,
                        freeze: from_json(&k, &v.value)?,
                    });
                }
                TxnOutcome::Conflict { .. } => {}
            }
        }
        Err(ClusterError::Contended { cluster: cluster.clone(), what: "raise_epoch" })
    }

    /// Turns a freeze switch on (`cluster` `None`: the global one). Already
    /// on: left as it was (who froze it first, and when), and returned.
    pub async fn freeze(
        &self,
        cluster: Option<&ClusterName>,
        by: &str,
        reason: Option<&str>,
    ) -> Result<Freeze, StoreError> {
        let key = freeze_key(cluster);
        let f = Freeze { by: by.to_owned(), at: self.clock.now(), reason: reason.map(str::to_owned) };
        match self.store.compare_and_set(&key, Expect::Absent, to_json(&key, &f)?, None).await? {
            crate::Outcome::Done(_) => Ok(f),
            crate::Outcome::Conflict(Some(v)) => from_json(&key, &v.value),
            crate::Outcome::Conflict(None) => Err(StoreError::Internal(format!("{key}: neither absent nor present"))),
        }
    }

    /// Turns a freeze switch off; returns what it was (`None`: it was off).
    pub async fn unfreeze(&self, cluster: Option<&ClusterName>) -> Result<Option<Freeze>, StoreError> {
        let key = freeze_key(cluster);
        let Some(v) = self.store.get(&key).await? else { return Ok(None) };
        let was: Freeze = from_json(&key, &v.value)?;
        self.store.delete(&key, Expect::Any).await?;
        Ok(Some(was))
    }

    /// The freeze switches that apply to `cluster`.
    pub async fn freezes(&self, cluster: &ClusterName) -> Result<Freezes, StoreError> {
        let read = |key: String| async move {
            match self.store.get(&key).await? {
                Some(v) => from_json::<Freeze>(&key, &v.value).map(Some),
                None => Ok(None),
            }
        };
        Ok(Freezes {
            global: read(keys::FREEZE_GLOBAL.to_owned()).await?,
            cluster: read(keys::cluster_freeze(cluster.as_str())).await?,
        })
    }

    /// Records what an observer saw of a node, optionally attached to a
    /// lease (so it disappears when the observer stops renewing).
    pub async fn put_health(&self, health: &NodeHealth, lease: Option<LeaseId>) -> Result<(), StoreError> {
        let key = keys::node_health(health.cluster.as_str(), health.node.as_str());
        self.store.put(&key, to_json(&key, health)?, lease).await?;
        Ok(())
    }

    /// Every node's last recorded health, by node name.
    pub async fn health(&self, cluster: &ClusterName) -> Result<Vec<NodeHealth>, StoreError> {
        let prefix = keys::node_health_prefix(cluster.as_str());
        self.store.list(&prefix).await?.iter().map(|kv| from_json(&kv.key, &kv.value.value)).collect()
    }

    /// Takes the primary lease for `node`, which the cluster state must name
    /// as primary at `epoch`. A node re-acquiring its own lease (its agent
    /// restarted) takes it over; another holder's live lease is refused.
    pub async fn acquire_primary_lease(
        &self,
        cluster: &ClusterName,
        node: &NodeName,
        epoch: Epoch,
        ttl: Duration,
    ) -> Result<HeldLease, ClusterError> {
        let key = keys::cluster_lease(cluster.as_str());
        for _ in 0..CAS_TRIES {
            let Some((state, state_v)) = self.state_versioned(cluster).await? else {
                return Err(ClusterError::NotPrimary {
                    cluster: cluster.clone(),
                    node: node.clone(),
                    epoch,
                    current_epoch: Epoch::ZERO,
                    current_primary: None,
                });
            };
            if state.epoch != epoch || state.primary.as_ref() != Some(node) {
                return Err(ClusterError::NotPrimary {
                    cluster: cluster.clone(),
                    node: node.clone(),
                    epoch,
                    current_epoch: state.epoch,
                    current_primary: state.primary,
                });
            }
            let cur = self.store.get(&key).await?;
            let mut old_lease = None;
            let expect = match &cur {
                Some(v) => {
                    let held: PrimaryLease = from_json(&key, &v.value)?;
                    if held.holder != *node || held.epoch != epoch {
                        return Err(ClusterError::LeaseHeld {
                            cluster: cluster.clone(),
                            holder: held.holder,
                            epoch: held.epoch,
                        });
                    }
                    old_lease = v.lease;
                    Expect::Revision(v.revision)
                }
                None => Expect::Absent,
            };
            let lease = self.store.grant_lease(ttl).await?;
            let info = PrimaryLease {
                cluster: cluster.clone(),
                holder: node.clone(),
                epoch,
                ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                acquired_at: self.clock.now(),
            };
            let txn = Txn::new()
                .check(&key, expect)
                .check(keys::cluster_state(cluster.as_str()), Expect::Revision(state_v.revision))
                .put(&key, to_json(&key, &info)?, Some(lease));
            match self.store.txn(txn).await? {
                TxnOutcome::Done(_) => {
                    if let Some(old) = old_lease.filter(|o| *o != lease) {
                        self.store.revoke(old).await?;
                    }
                    return Ok(HeldLease { lease, info });
                }
                TxnOutcome::Conflict { .. } => {
                    self.store.revoke(lease).await?;
                }
            }
        }
        Err(ClusterError::Contended { cluster: cluster.clone(), what: "acquire_primary_lease" })
    }

    /// Renews a held primary lease. [`ClusterError::LeaseLost`] when it
    /// expired or was broken: the holder must fence itself.
    pub async fn renew(&self, held: &HeldLease) -> Result<(), ClusterError> {
        let lost = || ClusterError::LeaseLost { cluster: held.info.cluster.clone(), node: held.info.holder.clone() };
        match self.store.keep_alive(held.lease).await {
            Ok(()) => {}
            Err(StoreError::LeaseExpired(_)) => return Err(lost()),
            Err(e) => return Err(e.into()),
        }
        let key = keys::cluster_lease(held.info.cluster.as_str());
        match self.store.get(&key).await? {
            Some(v) if v.lease == Some(held.lease) => Ok(()),
            _ => Err(lost()),
        }
    }

    /// Gives the lease up (a clean demotion).
    pub async fn release_primary_lease(&self, held: &HeldLease) -> Result<(), StoreError> {
        self.store.revoke(held.lease).await
    }

    /// The current primary lease and what is left of it; `None` once it has
    /// expired (or nobody holds it).
    pub async fn primary_lease(&self, cluster: &ClusterName) -> Result<Option<(PrimaryLease, Duration)>, StoreError> {
        let key = keys::cluster_lease(cluster.as_str());
        let Some(v) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let info: PrimaryLease = from_json(&key, &v.value)?;
        let Some(lease) = v.lease else {
            return Ok(None);
        };
        Ok(self.store.lease_remaining(lease).await?.map(|left| (info, left)))
    }

    /// Ends whoever holds the primary lease now (the controller does this
    /// once it knows the old primary is fenced). Returns the lease it broke.
    pub async fn break_primary_lease(&self, cluster: &ClusterName) -> Result<Option<PrimaryLease>, StoreError> {
        let key = keys::cluster_lease(cluster.as_str());
        let Some(v) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let info: PrimaryLease = from_json(&key, &v.value)?;
        if let Some(lease) = v.lease {
            self.store.revoke(lease).await?;
        }
        self.store.delete(&key, Expect::Any).await?;
        Ok(Some(info))
    }

    /// Watches every key of a cluster (state, lease, health, lock).
    pub async fn watch(&self, cluster: &ClusterName) -> Result<Watch, StoreError> {
        self.store.watch(&keys::cluster_prefix(cluster.as_str())).await
    }
}
