//! The key-value semantics shared by [`crate::MemoryStore`] and
//! [`crate::EmbeddedStore`]: revisions, transactions, leases and their
//! expiry, and watches. A backend only provides tables inside a transaction
//! ([`Tables`]); everything else is here, written once.
//!
//! Concurrency: every write runs under one mutex, inside one backend write
//! transaction, and notifies watchers before the mutex is released, so
//! watchers see changes in revision order. Reads do not take the mutex.
//!
//! Lease deadlines live in memory as `tokio::time::Instant`s (so paused-time
//! tests control them); the tables also keep each lease's deadline as a
//! wall-clock time so a store reopened after a restart knows what is left.
//! That stored deadline is written one TTL ahead ([`PERSIST_AHEAD`] TTLs
//! past the grant or renewal), and a keep-alive whose new deadline is still
//! covered by it only moves the in-memory deadline: no transaction, no trip
//! to the blocking pool. The stored deadline is therefore never earlier than
//! the one in memory (a reopened store never ends a lease before its holder
//! was told it would), and at most one TTL later. A controller renews every
//! primary's lease each `lease_renew`: on redb that was a write transaction
//! per cluster and renewal, now about one per cluster and TTL.
//!
//! Reads of single keys on a blocking backend (redb) are answered from a
//! cache of the keys read before ([`ReadCache`]) while no lease is due: this
//! process is the file's only writer, and every write drops the keys it
//! changed from the cache before it returns, so a cached answer is what the
//! file holds. A controller asks for each cluster's state and lock at every
//! probe; without the cache each of those was a trip to the blocking pool
//! (two thread wake-ups) for a value that changes at a role change.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Clock, Expect, KeyValue, LeaseId, Op, Revision, StoreError, Txn, TxnOutcome, Versioned, WatchEvent};

/// How many changes a watch buffers before its reader counts as lagging.
const WATCH_BUFFER: usize = 4096;

/// At most this many keys are cached (then the cache starts over).
const CACHE_KEYS: usize = 4096;

/// The last value read of single keys (see the module docs).
#[derive(Default)]
struct ReadCache {
    /// Raised by every write: a read that started before a write does not
    /// fill the cache with what it read.
    generation: u64,
    /// The earliest lease deadline: at or past it, reads go to the tables
    /// (which expire the lease first).
    next_deadline: Option<Instant>,
    values: HashMap<String, Option<Versioned>>,
}

/// A stored value: what [`Versioned`] is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub value: Vec<u8>,
    pub revision: Revision,
    pub lease: Option<u64>,
}

impl Record {
    fn versioned(&self) -> Versioned {
        Versioned { value: self.value.clone(), revision: self.revision, lease: self.lease.map(LeaseId) }
    }
}

/// A lease as the tables keep it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseRec {
    pub ttl_ms: u64,
    /// Wall-clock deadline (Unix milliseconds), used only when a store is
    /// reopened; while running, the in-memory `Instant` decides. Never
    /// earlier than the in-memory deadline, at most one TTL later.
    pub deadline_unix_ms: i64,
    pub keys: BTreeSet<String>,
}

/// How far past a grant or a renewal the stored deadline is written, in
/// TTLs beyond the first (see the module docs).
const PERSIST_AHEAD: u64 = 1;

/// A lease's stored wall-clock deadline, as last committed.
#[derive(Clone, Copy, Debug)]
struct Persisted {
    ttl_ms: u64,
    deadline_unix_ms: i64,
}

/// The deadline to store for a lease granted or renewed at `now_unix_ms`.
fn stored_deadline(now_unix_ms: i64, ttl_ms: u64) -> i64 {
    let ahead = ttl_ms.saturating_mul(1 + PERSIST_AHEAD);
    now_unix_ms.saturating_add(i64::try_from(ahead).unwrap_or(i64::MAX))
}

/// Meta counters kept in the tables.
pub(crate) const META_REVISION: &str = "revision";
pub(crate) const META_LAST_LEASE: &str = "last_lease";

/// Read access inside a transaction.
pub(crate) trait ReadTables {
    fn get(&self, key: &str) -> Result<Option<Record>, StoreError>;
    fn range(&self, prefix: &str) -> Result<Vec<(String, Record)>, StoreError>;
    fn meta(&self, name: &str) -> Result<u64, StoreError>;
}

/// Read and write access inside a write transaction.
pub(crate) trait Tables: ReadTables {
    fn insert(&mut self, key: &str, rec: &Record) -> Result<(), StoreError>;
    fn remove(&mut self, key: &str) -> Result<(), StoreError>;
    fn lease(&self, id: u64) -> Result<Option<LeaseRec>, StoreError>;
    fn leases(&self) -> Result<Vec<(u64, LeaseRec)>, StoreError>;
    fn put_lease(&mut self, id: u64, rec: &LeaseRec) -> Result<(), StoreError>;
    fn remove_lease(&mut self, id: u64) -> Result<(), StoreError>;
    fn set_meta(&mut self, name: &str, value: u64) -> Result<(), StoreError>;
}

/// Where the tables live.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Whether calls block on IO (then they run on `spawn_blocking`).
    const BLOCKING: bool;
    /// Runs `f` in a write transaction, committed when `f` returns `Ok`.
    fn write<R>(&self, f: impl FnOnce(&mut dyn Tables) -> Result<R, StoreError>) -> Result<R, StoreError>;
    /// Runs `f` on a consistent snapshot.
    fn read<R>(&self, f: impl FnOnce(&dyn ReadTables) -> Result<R, StoreError>) -> Result<R, StoreError>;
}

struct Watcher {
    prefix: String,
    tx: mpsc::Sender<WatchEvent>,
    lagged: Arc<AtomicBool>,
}

/// What only this process knows: lease deadlines and watchers.
#[derive(Default)]
struct Volatile {
    deadlines: HashMap<u64, Instant>,
    /// What the tables hold of each live lease's deadline.
    persisted: HashMap<u64, Persisted>,
    watchers: Vec<Watcher>,
}

/// Wakes the lease reaper; held by the reaper without keeping the store alive.
struct ReaperSignals {
    leases_changed: Notify,
    cancel: CancellationToken,
}

pub(crate) struct Inner<B> {
    backend: B,
    clock: Arc<dyn Clock>,
    vol: Mutex<Volatile>,
    /// Only used when the backend blocks.
    cache: Mutex<ReadCache>,
    signals: Arc<ReaperSignals>,
    tracker: TaskTracker,
    reaper_started: AtomicBool,
}

impl<B> Drop for Inner<B> {
    fn drop(&mut self) {
        self.signals.cancel.cancel();
        self.tracker.close();
    }
}

/// The shared implementation behind both stores.
pub(crate) struct KvStore<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for KvStore<B> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

/// Changes collected during one write transaction, applied to the volatile
/// state only once it has committed.
struct WriteCtx {
    now: Instant,
    now_unix_ms: i64,
    revision: Revision,
    bumped: bool,
    events: Vec<WatchEvent>,
    set_deadlines: Vec<(u64, Instant)>,
    set_persisted: Vec<(u64, Persisted)>,
    drop_deadlines: Vec<u64>,
}

impl WriteCtx {
    /// The revision of the change being made, raising the store's revision
    /// once per logical change.
    fn change_revision(&mut self, t: &mut dyn Tables) -> Result<Revision, StoreError> {
        if !self.bumped {
            self.revision += 1;
            self.bumped = true;
            t.set_meta(META_REVISION, self.revision)?;
        }
        Ok(self.revision)
    }

    /// Starts a new logical change (a later change gets its own revision).
    fn next_change(&mut self) {
        self.bumped = false;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves data that is still consistent
    // (every mutation of it is a single push/insert), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid("empty key".into()));
    }
    Ok(())
}

impl<B: Backend> KvStore<B> {
    /// Wraps a backend whose tables exist. Leases found in the tables get
    /// in-memory deadlines from their stored wall-clock deadlines.
    pub(crate) fn new(backend: B, clock: Arc<dyn Clock>, leases: &[(u64, LeaseRec)]) -> Self {
        let now = Instant::now();
        let now_unix_ms = unix_ms(clock.as_ref());
        let mut vol = Volatile::default();
        for (id, rec) in leases {
            let left = rec.deadline_unix_ms.saturating_sub(now_unix_ms).max(0);
            let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
            vol.deadlines.insert(*id, now + left);
            vol.persisted.insert(*id, Persisted { ttl_ms: rec.ttl_ms, deadline_unix_ms: rec.deadline_unix_ms });
        }
        let cache = ReadCache { next_deadline: vol.deadlines.values().min().copied(), ..Default::default() };
        Self {
            inner: Arc::new(Inner {
                backend,
                clock,
                vol: Mutex::new(vol),
                cache: Mutex::new(cache),
                signals: Arc::new(ReaperSignals { leases_changed: Notify::new(), cancel: CancellationToken::new() }),
                tracker: TaskTracker::new(),
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Starts the reaper that expires leases on time even when nobody calls
    /// the store (so watchers see the deletes). Needs a tokio runtime.
    pub(crate) fn ensure_reaper(&self) {
        if self.inner.reaper_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let signals = self.inner.signals.clone();
        self.inner.tracker.spawn(reaper(weak, signals));
    }

    pub(crate) fn has_leases(&self) -> bool {
        !lock(&self.inner.vol).deadlines.is_empty()
    }

    /// Runs a sync operation, on the blocking pool when the backend blocks.
    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner<B>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        if B::BLOCKING {
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || f(&inner))
                .await
                .map_err(|e| StoreError::Internal(format!("store task failed: {e}")))?
        } else {
            f(&self.inner)
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let now = Instant::now();
        let generation = if B::BLOCKING {
            let c = lock(&self.inner.cache);
            if c.next_deadline.is_none_or(|d| now < d)
                && let Some(v) = c.values.get(key)
            {
                return Ok(v.clone());
            }
            Some(c.generation)
        } else {
            None
        };
        let owned = key.to_owned();
        let read = self
            .run(move |i| {
                i.expire_if_due(now)?;
                i.backend.read(|t| Ok(t.get(&owned)?.map(|r| r.versioned())))
            })
            .await?;
        if let Some(g) = generation {
            let mut c = lock(&self.inner.cache);
            // No write since the read started: it is still what the file holds.
            if c.generation == g {
                if c.values.len() >= CACHE_KEYS {
                    c.values.clear();
                }
                c.values.insert(key.to_owned(), read.clone());
            }
        }
        Ok(read)
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let prefix = prefix.to_owned();
        let now = Instant::now();
        self.run(move |i| {
            i.expire_if_due(now)?;
            i.backend.read(|t| {
                Ok(t.range(&prefix)?.into_iter().map(|(key, r)| KeyValue { key, value: r.versioned() }).collect())
            })
        })
        .await
    }

    pub(crate) async fn revision(&self) -> Result<Revision, StoreError> {
        let now = Instant::now();
        self.run(move |i| {
            i.expire_if_due(now)?;
            i.backend.read(|t| t.meta(META_REVISION))
        })
        .await
    }

    pub(crate) async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        for (key, _) in &txn.checks {
            check_key(key)?;
        }
        for op in &txn.ops {
            match op {
                Op::Put { key, .. } | Op::Delete { key } => check_key(key)?,
                Op::DeletePrefix { .. } => {}
            }
        }
        let now = Instant::now();
        self.run(move |i| i.write(now, |t, ctx| apply_txn(t, ctx, &txn))).await?
    }

    pub(crate) async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        if ttl.is_zero() {
            return Err(StoreError::Invalid("a lease needs a TTL above zero".into()));
        }
        self.ensure_reaper();
        let now = Instant::now();
        let id = self
            .run(move |i| {
                i.write(now, |t, ctx| {
                    let id = t.meta(META_LAST_LEASE)? + 1;
                    t.set_meta(META_LAST_LEASE, id)?;
                    let ttl_ms = duration_ms(ttl);
                    let rec = LeaseRec {
                        ttl_ms,
                        deadline_unix_ms: stored_deadline(ctx.now_unix_ms, ttl_ms),
                        keys: BTreeSet::new(),
                    };
                    t.put_lease(id, &rec)?;
                    ctx.set_deadlines.push((id, ctx.now + ttl));
                    ctx.set_persisted.push((id, Persisted { ttl_ms, deadline_unix_ms: rec.deadline_unix_ms }));
                    Ok(LeaseId(id))
                })
            })
            .await?;
        self.inner.signals.leases_changed.notify_one();
        Ok(id)
    }

    pub(crate) async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let now = Instant::now();
        if self.inner.renew_in_memory(lease.0, now) {
            return Ok(());
        }
        self.run(move |i| {
            i.write(now, |t, ctx| {
                let Some(mut rec) = t.lease(lease.0)? else {
                    return Ok(Err(StoreError::LeaseExpired(lease)));
                };
                let ttl = Duration::from_millis(rec.ttl_ms);
                rec.deadline_unix_ms = stored_deadline(ctx.now_unix_ms, rec.ttl_ms);
                t.put_lease(lease.0, &rec)?;
                ctx.set_deadlines.push((lease.0, ctx.now + ttl));
                ctx.set_persisted
                    .push((lease.0, Persisted { ttl_ms: rec.ttl_ms, deadline_unix_ms: rec.deadline_unix_ms }));
                Ok(Ok(()))
            })
        })
        .await?
    }

    pub(crate) async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let now = Instant::now();
        self.run(move |i| {
            i.write(now, |t, ctx| {
                ctx.next_change();
                end_lease(t, ctx, lease.0)
            })
        })
        .await
    }

    pub(crate) async fn lease_remaining(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        let now = Instant::now();
        self.run(move |i| {
            i.expire_if_due(now)?;
            let vol = lock(&i.vol);
            Ok(vol.deadlines.get(&lease.0).and_then(|d| d.checked_duration_since(now)).filter(|d| !d.is_zero()))
        })
        .await
    }

    pub(crate) async fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        let prefix = prefix.to_owned();
        let now = Instant::now();
        self.run(move |i| {
            i.expire_if_due(now)?;
            let mut vol = lock(&i.vol);
            // Under the write mutex: no change can commit between reading the
            // revision and registering the watcher.
            let start_revision = i.backend.read(|t| t.meta(META_REVISION))?;
            let (tx, rx) = mpsc::channel(WATCH_BUFFER);
            let lagged = Arc::new(AtomicBool::new(false));
            vol.watchers.push(Watcher { prefix, tx, lagged: lagged.clone() });
            Ok(Watch { rx, lagged, start_revision })
        })
        .await
    }
}

impl<B: Backend> Inner<B> {
    /// One write transaction: expires due leases, runs `f`, commits, then
    /// updates deadlines and notifies watchers, all under the write mutex.
    fn write<R>(
        &self,
        now: Instant,
        f: impl FnOnce(&mut dyn Tables, &mut WriteCtx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut vol = lock(&self.vol);
        let due: Vec<u64> = vol.deadlines.iter().filter(|(_, d)| **d <= now).map(|(id, _)| *id).collect();
        let mut ctx = WriteCtx {
            now,
            now_unix_ms: unix_ms(self.clock.as_ref()),
            revision: 0,
            bumped: false,
            events: Vec::new(),
            set_deadlines: Vec::new(),
            set_persisted: Vec::new(),
            drop_deadlines: Vec::new(),
        };
        let r = self.backend.write(|t| {
            ctx.revision = t.meta(META_REVISION)?;
            for id in due {
                ctx.next_change();
                end_lease(t, &mut ctx, id)?;
            }
            ctx.next_change();
            f(t, &mut ctx)
        })?;
        for id in ctx.drop_deadlines {
            vol.deadlines.remove(&id);
            vol.persisted.remove(&id);
        }
        for (id, d) in ctx.set_deadlines {
            vol.deadlines.insert(id, d);
        }
        for (id, p) in ctx.set_persisted {
            vol.persisted.insert(id, p);
        }
        if B::BLOCKING {
            // Before the write returns (and before watchers hear of it): no
            // cached read outlives the change.
            let mut c = lock(&self.cache);
            c.generation += 1;
            c.next_deadline = vol.deadlines.values().min().copied();
            for ev in &ctx.events {
                c.values.remove(ev.key());
            }
        }
        if !ctx.events.is_empty() {
            notify(&mut vol.watchers, &ctx.events);
        }
        Ok(r)
    }

    /// A keep-alive that needs no transaction: the lease is live and the
    /// deadline stored for it already covers a full TTL from now, so only the
    /// in-memory deadline moves. `false` sends the caller to a write: the
    /// lease is due or unknown here, its stored deadline would fall short,
    /// or a write is under way (its mutex is not waited for on an async
    /// thread).
    fn renew_in_memory(&self, id: u64, now: Instant) -> bool {
        let Ok(mut vol) = self.vol.try_lock() else { return false };
        let (Some(deadline), Some(p)) = (vol.deadlines.get(&id), vol.persisted.get(&id)) else { return false };
        let ttl_ms = i64::try_from(p.ttl_ms).unwrap_or(i64::MAX);
        if *deadline <= now || p.deadline_unix_ms < unix_ms(self.clock.as_ref()).saturating_add(ttl_ms) {
            return false;
        }
        let ttl = Duration::from_millis(p.ttl_ms);
        vol.deadlines.insert(id, now + ttl);
        if B::BLOCKING {
            let mut c = lock(&self.cache);
            c.next_deadline = vol.deadlines.values().min().copied();
        }
        true
    }

    /// Expires leases whose deadline has passed, if any.
    fn expire_if_due(&self, now: Instant) -> Result<(), StoreError> {
        let due = lock(&self.vol).deadlines.values().any(|d| *d <= now);
        if due {
            self.write(now, |_, _| Ok(()))?;
        }
        Ok(())
    }
}

fn unix_ms(clock: &dyn Clock) -> i64 {
    i64::try_from(clock.now().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn notify(watchers: &mut Vec<Watcher>, events: &[WatchEvent]) {
    watchers.retain(|w| {
        for ev in events.iter().filter(|e| e.key().starts_with(&w.prefix)) {
            match w.tx.try_send(ev.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    w.lagged.store(true, Ordering::SeqCst);
                    return false;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    });
}

/// Ends a lease (expiry or revoke): deletes its keys at one revision.
fn end_lease(t: &mut dyn Tables, ctx: &mut WriteCtx, id: u64) -> Result<(), StoreError> {
    ctx.drop_deadlines.push(id);
    let Some(rec) = t.lease(id)? else {
        return Ok(());
    };
    for key in &rec.keys {
        // A key is listed under the lease it is attached to; check anyway.
        if let Some(cur) = t.get(key)?
            && cur.lease == Some(id)
        {
            let rev = ctx.change_revision(t)?;
            t.remove(key)?;
            ctx.events.push(WatchEvent::Delete { key: key.clone(), revision: rev });
        }
    }
    t.remove_lease(id)?;
    Ok(())
}

fn detach(t: &mut dyn Tables, key: &str, lease: Option<u64>) -> Result<(), StoreError> {
    if let Some(id) = lease
        && let Some(mut rec) = t.lease(id)?
    {
        rec.keys.remove(key);
        t.put_lease(id, &rec)?;
    }
    Ok(())
}

fn expect_holds(expect: Expect, cur: Option<&Record>) -> bool {
    match (expect, cur) {
        (Expect::Any, _) => true,
        (Expect::Absent, cur) => cur.is_none(),
        (Expect::Revision(rev), Some(r)) => r.revision == rev,
        (Expect::Revision(_), None) => false,
    }
}

/// Checks every condition, then applies every op; a failed condition or an
/// unknown lease changes nothing. The outer `Result` is a storage failure
/// (the transaction is aborted), the inner one the caller's error.
fn apply_txn(t: &mut dyn Tables, ctx: &mut WriteCtx, txn: &Txn) -> Result<Result<TxnOutcome, StoreError>, StoreError> {
    for (key, expect) in &txn.checks {
        let cur = t.get(key)?;
        if !expect_holds(*expect, cur.as_ref()) {
            return Ok(Ok(TxnOutcome::Conflict { key: key.clone(), current: cur.map(|r| r.versioned()) }));
        }
    }
    for op in &txn.ops {
        if let Op::Put { lease: Some(lease), .. } = op
            && t.lease(lease.0)?.is_none()
        {
            return Ok(Err(StoreError::LeaseExpired(*lease)));
        }
    }
    for op in &txn.ops {
        match op {
            Op::Put { key, value, lease } => {
                let rev = ctx.change_revision(t)?;
                let old = t.get(key)?;
                let new_lease = lease.map(|l| l.0);
                let old_lease = old.as_ref().and_then(|r| r.lease);
                if old_lease != new_lease {
                    detach(t, key, old_lease)?;
                    if let Some(id) = new_lease
                        && let Some(mut rec) = t.lease(id)?
                    {
                        rec.keys.insert(key.clone());
                        t.put_lease(id, &rec)?;
                    }
                }
                let rec = Record { value: value.clone(), revision: rev, lease: new_lease };
                t.insert(key, &rec)?;
                ctx.events.push(WatchEvent::Put { key: key.clone(), value: rec.versioned() });
            }
            Op::Delete { key } => delete_key(t, ctx, key)?,
            Op::DeletePrefix { prefix } => {
                for (key, _) in t.range(prefix)? {
                    delete_key(t, ctx, &key)?;
                }
            }
        }
    }
    Ok(Ok(TxnOutcome::Done(ctx.revision)))
}

fn delete_key(t: &mut dyn Tables, ctx: &mut WriteCtx, key: &str) -> Result<(), StoreError> {
    if let Some(old) = t.get(key)? {
        let rev = ctx.change_revision(t)?;
        detach(t, key, old.lease)?;
        t.remove(key)?;
        ctx.events.push(WatchEvent::Delete { key: key.to_owned(), revision: rev });
    }
    Ok(())
}

async fn reaper<B: Backend>(weak: Weak<Inner<B>>, signals: Arc<ReaperSignals>) {
    loop {
        let next = {
            let Some(inner) = weak.upgrade() else { return };
            lock(&inner.vol).deadlines.values().min().copied()
        };
        let sleep = async {
            match next {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signals.cancel.cancelled() => return,
            _ = signals.leases_changed.notified() => continue,
            _ = sleep => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        let store = KvStore { inner };
        let now = Instant::now();
        if let Err(e) = store.run(move |i| i.expire_if_due(now)).await {
            tracing::warn!(error = %e, "expiring leases failed; retrying");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A stream of changes under a prefix, from [`crate::StateStore::watch`].
///
/// Changes made after [`Watch::start_revision`] arrive in revision order. To
/// follow a key without missing anything: watch, then read, then apply only
/// events with a revision above what was read.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<WatchEvent>,
    lagged: Arc<AtomicBool>,
    start_revision: Revision,
}

impl Watch {
    /// Builds a watch from a channel another implementation (etcd) feeds;
    /// setting `lagged` before dropping the sender reports
    /// [`StoreError::WatchLagged`].
    pub fn from_parts(rx: mpsc::Receiver<WatchEvent>, lagged: Arc<AtomicBool>, start_revision: Revision) -> Self {
        Self { rx, lagged, start_revision }
    }

    /// The store revision when the watch began: it sees every later change.
    pub fn start_revision(&self) -> Revision {
        self.start_revision
    }

    /// The next change; `Ok(None)` once the store is closed,
    /// [`StoreError::WatchLagged`] if this reader fell behind.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, StoreError> {
        match self.rx.recv().await {
            Some(ev) => Ok(Some(ev)),
            None if self.lagged.load(Ordering::SeqCst) => Err(StoreError::WatchLagged),
            None => Ok(None),
        }
    }
}
