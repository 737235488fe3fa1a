//! The event log: an ordered, bounded, append-only list of [`Event`]s in the
//! store (`/pgdr/events/log/<seq>`), so the status page, the API and a
//! controller that restarted can read what happened.
//!
//! Appending reads the sequence counter and writes the counter and the event
//! in one transaction that checks the counter's revision, so concurrent
//! appenders (several controllers) get distinct, gap-free sequence numbers.
//! Retention: appending event `n` also deletes event `n - retention`, so the
//! log holds at most `retention` events while the retention stays the same;
//! [`EventLog::trim`] enforces a lowered one.

use std::sync::Arc;

use pgdr_model::{ClusterName, Epoch};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::keys::{self, from_json, to_json};
use crate::{Expect, StateStore, StoreError, Txn, TxnOutcome};

/// How many events the log keeps unless told otherwise.
pub const DEFAULT_EVENT_RETENTION: u64 = 10_000;

/// Something that happened to a cluster: a workflow step started or ended,
/// an alert. Delivered as this JSON to webhooks and kept in the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the store's log, set by [`EventLog::append`].
    #[serde(default)]
    pub seq: Option<u64>,
    pub cluster: ClusterName,
    /// The workflow id, when a workflow emitted it.
    #[serde(default)]
    pub workflow: Option<String>,
    /// The workflow kind ("failover", "switchover", ...).
    #[serde(default)]
    pub kind: Option<String>,
    /// The step, for step events.
    #[serde(default)]
    pub step: Option<String>,
    /// What happened: `started`, `succeeded`, `failed`, `retrying`,
    /// `waiting_approval`, `approved`, `cancelled`, or an alert name.
    pub state: String,
    /// The cluster epoch, when known.
    #[serde(default)]
    pub epoch: Option<Epoch>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(default)]
    pub message: Option<String>,
    /// The attempt number, for step events.
    #[serde(default)]
    pub attempt: Option<u32>,
    /// How long the step (or workflow) took, on its end event.
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

impl Event {
    /// An event with only the required fields.
    pub fn new(cluster: ClusterName, state: impl Into<String>, at: OffsetDateTime) -> Self {
        Self {
            seq: None,
            cluster,
            workflow: None,
            kind: None,
            step: None,
            state: state.into(),
            epoch: None,
            at,
            message: None,
            attempt: None,
            duration_ms: None,
        }
    }
}

/// The event log in a store.
#[derive(Clone, Debug)]
pub struct EventLog {
    store: Arc<dyn StateStore>,
    retention: u64,
}

/// How many times an append retries when other appenders keep winning.
const APPEND_TRIES: usize = 64;

impl EventLog {
    /// A log keeping at most `retention` events (at least 1).
    pub fn new(store: Arc<dyn StateStore>, retention: u64) -> Self {
        Self { store, retention: retention.max(1) }
    }

    pub fn retention(&self) -> u64 {
        self.retention
    }

    /// Appends `event` and returns its sequence number (from 1).
    pub async fn append(&self, event: &Event) -> Result<u64, StoreError> {
        for _ in 0..APPEND_TRIES {
            let cur = self.store.get(keys::EVENTS_SEQ).await?;
            let (last, expect) = match &cur {
                Some(v) => {
                    let s =
                        std::str::from_utf8(&v.value).ok().and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| {
                            StoreError::Corrupt { key: keys::EVENTS_SEQ.into(), message: "not a decimal number".into() }
                        })?;
                    (s, Expect::Revision(v.revision))
                }
                None => (0, Expect::Absent),
            };
            let seq = last + 1;
            let mut ev = event.clone();
            ev.seq = Some(seq);
            let key = keys::event(seq);
            let mut txn = Txn::new()
                .check(keys::EVENTS_SEQ, expect)
                .put(keys::EVENTS_SEQ, seq.to_string().into_bytes(), None)
                .put(&key, to_json(&key, &ev)?, None);
            if seq > self.retention {
                txn = txn.delete(keys::event(seq - self.retention));
            }
            if let TxnOutcome::Done(_) = self.store.txn(txn).await? {
                return Ok(seq);
            }
        }
        Err(StoreError::Unavailable("event log append kept conflicting with other appenders".into()))
    }

    /// Events with a sequence number above `after` (all when `None`), oldest
    /// first, at most `limit`.
    pub async fn list(&self, after: Option<u64>, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        let after_key = after.map(keys::event);
        for kv in self.store.list(keys::EVENTS_LOG).await? {
            if out.len() >= limit {
                break;
            }
            if after_key.as_ref().is_some_and(|a| kv.key <= *a) {
                continue;
            }
            out.push(from_json(&kv.key, &kv.value.value)?);
        }
        Ok(out)
    }

    /// The newest `limit` events, oldest first.
    pub async fn tail(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        let all = self.store.list(keys::EVENTS_LOG).await?;
        let skip = all.len().saturating_sub(limit);
        all[skip..].iter().map(|kv| from_json(&kv.key, &kv.value.value)).collect()
    }

    /// Deletes the oldest events beyond the retention; returns how many.
    pub async fn trim(&self) -> Result<usize, StoreError> {
        let all = self.store.list(keys::EVENTS_LOG).await?;
        let excess = all.len().saturating_sub(usize::try_from(self.retention).unwrap_or(usize::MAX));
        if excess == 0 {
            return Ok(0);
        }
        let mut txn = Txn::new();
        for kv in &all[..excess] {
            txn = txn.delete(&kv.key);
        }
        self.store.txn(txn).await?;
        Ok(excess)
    }
}
