//! One leader among the controllers sharing a store: [`Election`] and the
//! writes a leader makes, [`FencedStore`].
//!
//! A controller campaigns by creating the leader key (absent → held) in one
//! transaction that also raises the leader **term** (a counter that never
//! goes back), the key attached to a store lease it keeps alive. The others
//! wait on a watch of the key and campaign again when it is gone (its
//! holder's lease expired or was revoked).
//!
//! Every write the leader makes goes through [`FencedStore`], which adds a
//! check "the leader key is still the one I wrote" to the same transaction.
//! A deposed leader (frozen past its lease, cut off from the store) that
//! wakes up therefore cannot change anything: its first write fails with
//! [`StoreError::Fenced`], whatever its own view of the world. The check
//! is on the leader key's revision, which changes at every election, so it
//! also covers a leader whose key was deleted and re-created by someone else.
//!
//! A campaigning controller announces itself under
//! `/pgdr/controller/standby/<instance>` (its own lease), so the leader
//! knows who stands by where. A leader may hand leadership to one of them
//! ([`Leadership::hand_to`]): it writes `/pgdr/controller/handoff` naming
//! the standby (fenced, on a lease of one TTL) and resigns; the other
//! standbys leave the vacant key to that one for as long as the handoff
//! key lives, then campaign as usual.
//!
//! While the store is unreachable the leader neither keeps nor loses its
//! leadership: it cannot write anyway, and it must not stop what does not
//! need the store (its proxies). It loses it when the store says so (the
//! lease expired, the key changed).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{
    Expect, KeyValue, LeaseId, Revision, StateStore, StoreError, Txn, TxnOutcome, Versioned, Watch, WatchEvent, keys,
};

/// What the leader key holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The controller holding it (name and process).
    pub holder: String,
    /// Raised by one at every election.
    pub term: u64,
}

/// What a standby's presence key holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyInfo {
    /// The controller instance (`[[controller.instances]]` name).
    pub instance: String,
    pub region: String,
    /// As in [`LeaderInfo::holder`].
    pub holder: String,
}

/// What the handoff key holds: the instance a resigning leader chose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub to: String,
    /// The resigning leader's holder name and term.
    pub from: String,
    pub term: u64,
    pub reason: String,
}

/// Campaigns for the leader key of one store.
#[derive(Clone, Debug)]
pub struct Election {
    store: Arc<dyn StateStore>,
    name: String,
    ttl: Duration,
    /// This controller's instance and region, announced while it stands by.
    instance: Option<(String, String)>,
}

/// Won leadership. Dropping it does not give it up: call
/// [`Leadership::resign`] (or let the process die: the lease expires).
#[derive(Debug)]
pub struct Leadership {
    pub info: LeaderInfo,
    /// The revision of the leader key this controller wrote: every fenced
    /// write checks it.
    pub revision: Revision,
    pub lease: LeaseId,
    store: Arc<dyn StateStore>,
    ttl: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
    tracker: TaskTracker,
}

fn decode(v: &Versioned) -> Result<LeaderInfo, StoreError> {
    serde_json::from_slice(&v.value)
        .map_err(|e| StoreError::Corrupt { key: keys::CONTROLLER_LEADER.into(), message: e.to_string() })
}

impl Election {
    /// `name` identifies this controller in the leader key; `ttl` is how
    /// long the others wait after it stops renewing.
    pub fn new(store: Arc<dyn StateStore>, name: impl Into<String>, ttl: Duration) -> Self {
        Self { store, name: name.into(), ttl, instance: None }
    }

    /// Announces this controller as `instance` in `region` while it stands
    /// by (a leader may then hand leadership to it).
    pub fn with_instance(mut self, instance: impl Into<String>, region: impl Into<String>) -> Self {
        self.instance = Some((instance.into(), region.into()));
        self
    }

    /// The controllers standing by now.
    pub async fn standbys(store: &dyn StateStore) -> Result<Vec<StandbyInfo>, StoreError> {
        let mut out = Vec::new();
        for kv in store.list(keys::CONTROLLER_STANDBY).await? {
            out.push(keys::from_json(&kv.key, &kv.value.value)?);
        }
        Ok(out)
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>, StoreError> {
        self.store.get(keys::CONTROLLER_LEADER).await?.as_ref().map(decode).transpose()
    }

    /// Waits until this controller is the leader (or `cancel`). Store
    /// errors are retried; `on_wait` is called with the holder each time
    /// the key is found held.
    pub async fn campaign(
        &self,
        cancel: &CancellationToken,
        on_wait: impl FnMut(&LeaderInfo),
    ) -> Result<Leadership, StoreError> {
        let presence = CancellationToken::new();
        let announcer = self.instance.clone().map(|(instance, region)| {
            let info = StandbyInfo { instance, region, holder: self.name.clone() };
            tokio::spawn(announce(self.store.clone(), info, self.ttl, presence.clone()))
        });
        let won = self.campaign_inner(cancel, on_wait).await;
        presence.cancel();
        if let Some(task) = announcer {
            let _ = task.await;
        }
        won
    }

    async fn campaign_inner(
        &self,
        cancel: &CancellationToken,
        mut on_wait: impl FnMut(&LeaderInfo),
    ) -> Result<Leadership, StoreError> {
        loop {
            if cancel.is_cancelled() {
                return Err(StoreError::Closed);
            }
            match self.try_once().await {
                Ok(Ok(l)) => return Ok(l),
                Ok(Err(held)) => {
                    if let Some(info) = held {
                        on_wait(&info);
                    }
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "campaigning for controller leadership: store unavailable; retrying");
                }
                Err(e) => return Err(e),
            }
            // Wait for the key to go (a watch), at most one TTL (then a
            // fresh attempt, in case the watch missed it). A watch that
            // broke is started again at once: its etcd member may be the
            // one lost with the leader's region, and waiting out the TTL
            // would add a TTL to the takeover (and age the lags handed
            // over by as much).
            let wait = async {
                loop {
                    if let Ok(mut w) = self.store.watch(keys::CONTROLLER_LEADER).await {
                        // Re-check after the watch started: it may have gone meanwhile.
                        if matches!(self.store.get(keys::CONTROLLER_LEADER).await, Ok(None)) {
                            return;
                        }
                        while let Ok(Some(ev)) = w.next().await {
                            if matches!(ev, WatchEvent::Delete { .. }) {
                                return;
                            }
                        }
                    }
                    tokio::time::sleep((self.ttl / 20).max(Duration::from_millis(20))).await;
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return Err(StoreError::Closed),
                _ = tokio::time::timeout(self.ttl, wait) => {}
            }
        }
    }

    /// One attempt: `Ok(Err(holder))` when someone else leads.
    async fn try_once(&self) -> Result<Result<Leadership, Option<LeaderInfo>>, StoreError> {
        if let Some(cur) = self.store.get(keys::CONTROLLER_LEADER).await? {
            return Ok(Err(Some(decode(&cur)?)));
        }
        // A leader handed leadership to another standby: leave the vacant
        // key to it while the handoff lives (one TTL at most).
        let mine = self.instance.as_ref().map(|(i, _)| i.as_str());
        let deadline = tokio::time::Instant::now() + self.ttl;
        while let Some(h) = self.store.get(keys::CONTROLLER_HANDOFF).await? {
            let h: Handoff = keys::from_json(keys::CONTROLLER_HANDOFF, &h.value)?;
            if Some(h.to.as_str()) == mine || tokio::time::Instant::now() >= deadline {
                break;
            }
            if let Some(cur) = self.store.get(keys::CONTROLLER_LEADER).await? {
                return Ok(Err(Some(decode(&cur)?)));
            }
            tokio::time::sleep((self.ttl / 20).max(Duration::from_millis(20))).await;
        }
        let term_kv = self.store.get(keys::CONTROLLER_TERM).await?;
        let last: u64 = match &term_kv {
            Some(v) => std::str::from_utf8(&v.value).ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| {
                StoreError::Corrupt { key: keys::CONTROLLER_TERM.into(), message: "not a number".into() }
            })?,
            None => 0,
        };
        let info = LeaderInfo { holder: self.name.clone(), term: last + 1 };
        let lease = self.store.grant_lease(self.ttl).await?;
        let value = serde_json::to_vec(&info).map_err(|e| StoreError::Internal(e.to_string()))?;
        let txn = Txn::new()
            .check(keys::CONTROLLER_LEADER, Expect::Absent)
            .check(keys::CONTROLLER_TERM, term_kv.as_ref().map_or(Expect::Absent, |v| Expect::Revision(v.revision)))
            .put(keys::CONTROLLER_LEADER, value, Some(lease))
            .put(keys::CONTROLLER_TERM, info.term.to_string().into_bytes(), None);
        match self.store.txn(txn).await {
            Ok(TxnOutcome::Done(revision)) => {
                let l = Leadership::start(self.store.clone(), info, revision, lease, self.ttl);
                Ok(Ok(l))
            }
            Ok(TxnOutcome::Conflict { .. }) => {
                let _ = self.store.revoke(lease).await;
                Ok(Err(self.leader().await.ok().flatten()))
            }
            Err(e) => {
                let _ = self.store.revoke(lease).await;
                Err(e)
            }
        }
    }
}

impl Leadership {
    fn start(store: Arc<dyn StateStore>, info: LeaderInfo, revision: Revision, lease: LeaseId, ttl: Duration) -> Self {
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(keep(store.clone(), lease, revision, ttl, lost.clone(), stop.clone()));
        Self { info, revision, lease, store, ttl, lost, stop, tracker }
    }

    /// Cancelled once the store says this controller no longer leads (its
    /// lease expired, the leader key changed).
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// The store, every write checked against this leadership.
    pub fn fenced(&self) -> Arc<dyn StateStore> {
        Arc::new(FencedStore { inner: self.store.clone(), revision: self.revision })
    }

    /// Stops renewing without giving the key up, as a frozen process
    /// would: the lease runs out by itself. For tests.
    pub async fn stop_renewing(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Gives leadership up now (another controller may take it at once).
    pub async fn resign(self) -> Result<(), StoreError> {
        self.stop_renewing().await;
        self.store.revoke(self.lease).await
    }

    /// Hands leadership to the standby `to`: writes the handoff key naming
    /// it (fenced: only while this controller still leads; on a lease of
    /// one TTL), then resigns. The other standbys leave the key to `to`
    /// while the handoff lives; if `to` does not take it, they campaign
    /// once it expired.
    pub async fn hand_to(self, to: &str, reason: &str) -> Result<(), StoreError> {
        let handoff = Handoff {
            to: to.to_owned(),
            from: self.info.holder.clone(),
            term: self.info.term,
            reason: reason.to_owned(),
        };
        let lease = self.store.grant_lease(self.ttl).await?;
        let txn =
            Txn::new().put(keys::CONTROLLER_HANDOFF, keys::to_json(keys::CONTROLLER_HANDOFF, &handoff)?, Some(lease));
        let written = self.fenced().txn(txn).await;
        if !matches!(written, Ok(TxnOutcome::Done(_))) {
            let _ = self.store.revoke(lease).await;
        }
        written?;
        self.resign().await
    }
}

/// Keeps `/pgdr/controller/standby/<instance>` alive on its own lease until
/// `done`, then removes it (revokes the lease). Store errors are retried.
async fn announce(store: Arc<dyn StateStore>, info: StandbyInfo, ttl: Duration, done: CancellationToken) {
    let key = format!("{}{}", keys::CONTROLLER_STANDBY, info.instance);
    let every = (ttl / 3).max(Duration::from_millis(50));
    let mut lease = None::<LeaseId>;
    loop {
        let step = async {
            match lease {
                Some(l) => match store.keep_alive(l).await {
                    Ok(()) => Ok(Some(l)),
                    Err(StoreError::LeaseExpired(_)) => Ok(None),
                    Err(e) => Err(e),
                },
                None => {
                    let l = store.grant_lease(ttl).await?;
                    let put = Txn::new().put(&key, keys::to_json(&key, &info)?, Some(l));
                    match store.txn(put).await {
                        Ok(_) => Ok(Some(l)),
                        Err(e) => {
                            let _ = store.revoke(l).await;
                            Err(e)
                        }
                    }
                }
            }
        };
        tokio::select! {
            _ = done.cancelled() => break,
            r = step => match r {
                Ok(l) => lease = l,
                Err(e) => tracing::debug!(error = %e, "cannot announce this controller as standing by; retrying"),
            },
        }
        let wait = if lease.is_some() { every } else { every.min(Duration::from_millis(200)) };
        tokio::select! {
            _ = done.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    if let Some(l) = lease {
        let _ = store.revoke(l).await;
    }
}

/// Keeps the lease alive and watches the key; cancels `lost` when either
/// says leadership is gone.
async fn keep(
    store: Arc<dyn StateStore>,
    lease: LeaseId,
    revision: Revision,
    ttl: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let every = (ttl / 3).max(Duration::from_millis(50));
    let mut watch: Option<Watch> = None;
    loop {
        if watch.is_none() {
            watch = store.watch(keys::CONTROLLER_LEADER).await.ok();
            // What happened before the watch started.
            match store.get(keys::CONTROLLER_LEADER).await {
                Ok(Some(v)) if v.revision == revision => {}
                Ok(_) => {
                    tracing::error!("controller leadership lost: the leader key changed");
                    lost.cancel();
                    return;
                }
                Err(_) => {}
            }
        }
        let next = async {
            match watch.as_mut() {
                Some(w) => w.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            ev = next => match ev {
                Ok(Some(ev)) if ev.revision() != revision => {
                    tracing::error!("controller leadership lost: the leader key changed");
                    lost.cancel();
                    return;
                }
                Ok(Some(_)) => {}
                // Lagged or closed: watch again (and re-read).
                Ok(None) | Err(_) => watch = None,
            },
            _ = tokio::time::sleep(every) => match store.keep_alive(lease).await {
                Ok(()) => {}
                Err(StoreError::LeaseExpired(_)) => {
                    tracing::error!("controller leadership lost: its lease expired");
                    lost.cancel();
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the controller leadership lease; still leading until the store says otherwise"),
            },
        }
    }
}

/// The store as a leader writes it: every transaction also checks that the
/// leader key is still the one this leader wrote, so a deposed leader
/// changes nothing ([`StoreError::Fenced`]). Reads, watches and leases are
/// passed through.
#[derive(Debug)]
pub struct FencedStore {
    inner: Arc<dyn StateStore>,
    revision: Revision,
}

#[async_trait]
impl StateStore for FencedStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
    async fn txn(&self, mut txn: Txn) -> Result<TxnOutcome, StoreError> {
        // The leader check first, so a deposed leader always learns why.
        txn.checks.insert(0, (keys::CONTROLLER_LEADER.to_owned(), Expect::Revision(self.revision)));
        match self.inner.txn(txn).await? {
            TxnOutcome::Conflict { key, current } if key == keys::CONTROLLER_LEADER => {
                let holder = current
                    .as_ref()
                    .and_then(|v| decode(v).ok())
                    .map_or_else(|| "nobody".to_owned(), |i| format!("{} (term {})", i.holder, i.term));
                Err(StoreError::Fenced(format!("this controller no longer leads; the leader is {holder}")))
            }
            other => Ok(other),
        }
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.grant_lease(ttl).await
    }
    /// Renews, then confirms this controller still leads: a renewal counts
    /// (a primary's lease granted on it, say) only when the leader key was
    /// still this leader's after the lease was extended, so a deposed
    /// leader that has not noticed yet grants nothing.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.keep_alive(lease).await?;
        self.confirm().await
    }
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke(lease).await
    }
    async fn lease_remaining(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        self.inner.lease_remaining(lease).await
    }
    async fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        self.inner.watch(prefix).await
    }
}

impl FencedStore {
    /// `Ok` while the leader key is still the one this leader wrote (a
    /// read: linearizable on etcd), [`StoreError::Fenced`] naming the
    /// current leader otherwise.
    async fn confirm(&self) -> Result<(), StoreError> {
        match self.inner.get(keys::CONTROLLER_LEADER).await? {
            Some(v) if v.revision == self.revision => Ok(()),
            current => {
                let holder = current
                    .as_ref()
                    .and_then(|v| decode(v).ok())
                    .map_or_else(|| "nobody".to_owned(), |i| format!("{} (term {})", i.holder, i.term));
                Err(StoreError::Fenced(format!("this controller no longer leads; the leader is {holder}")))
            }
        }
    }
}
