//! Backend pools: per cluster, one pool per (endpoint, user, database)
//! under `pool = "transaction"` (the default). A session holds a backend
//! for one transaction (longer while it holds state that cannot move) and
//! gives it back idle; clients beyond `pool_size` wait in a fair (FIFO)
//! queue up to `pool_timeout`, then get SQLSTATE 53300 naming the pool;
//! `pool_min_idle` idle backends are kept open (opened one per given-back
//! backend until there are that many).
//!
//! The pool only keeps connections and what sessions left on them
//! ([`BackendState`]); deciding what to replay where a session lands is
//! the session's mover. No IO here besides a polite Terminate on close.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::backend::BackendConn;
use crate::routing::Backend;

/// Which pool a session draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub endpoint: &'static str,
    pub user: String,
    pub database: String,
}

/// What sessions left on a backend, so the next one landing there knows
/// what to change.
#[derive(Debug, Default)]
pub(crate) struct BackendState {
    /// The tracked SETs of the last session that used it (on top of its
    /// login defaults), shared with that session.
    pub sets: Arc<Vec<String>>,
    /// Protocol-level statements prepared here (proxy-side names, by the
    /// hash of their Parse).
    pub statements: HashSet<u64>,
    /// SQL-level prepared statements: name → the PREPARE text.
    pub sql_prepared: HashMap<String, String>,
    /// A session ran DEALLOCATE/DISCARD here: which statements exist is
    /// not known (the next session starts with `DEALLOCATE ALL`).
    pub unknown: bool,
}

impl BackendState {
    /// Nothing known but `sets` (shared, so nothing is allocated).
    pub fn sharing(sets: &Arc<Vec<String>>) -> BackendState {
        BackendState {
            sets: Arc::clone(sets),
            statements: HashSet::new(),
            sql_prepared: HashMap::new(),
            unknown: false,
        }
    }
}

/// An idle backend with its state.
#[derive(Debug)]
pub(crate) struct Pooled {
    pub conn: BackendConn,
    pub state: BackendState,
    pub since: Instant,
}

/// Whether backends of a pool log in without a password (passthrough
/// auth): learned from the first client's login.
pub(crate) const TRUST_UNKNOWN: u8 = 0;
pub(crate) const TRUST_OK: u8 = 1;
pub(crate) const TRUST_NO: u8 = 2;

#[derive(Debug)]
pub(crate) struct Pool {
    pub key: PoolKey,
    pub size: usize,
    pub min_idle: usize,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Pooled>>,
    /// Clients waiting for a backend now.
    pub waiting: AtomicUsize,
    /// Backends open (idle or in use).
    pub open: AtomicUsize,
    pub trust: AtomicU8,
    /// Statements (by hash) that prepared without error on a backend of
    /// this pool: a client's Parse of one can be answered without a
    /// backend and prepared where the client lands.
    known: Mutex<HashSet<u64>>,
    closed_total: prometheus_client::metrics::counter::Counter,
}

/// How long an idle backend beyond `min_idle` is kept.
const IDLE_KEEP: Duration = Duration::from_secs(60);

impl Pool {
    pub fn new(
        key: PoolKey,
        size: usize,
        min_idle: usize,
        closed_total: prometheus_client::metrics::counter::Counter,
    ) -> Pool {
        Pool {
            key,
            size,
            min_idle,
            permits: Arc::new(Semaphore::new(size)),
            idle: Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            trust: AtomicU8::new(TRUST_UNKNOWN),
            known: Mutex::new(HashSet::new()),
            closed_total,
        }
    }

    /// The pool's name in messages: `writer pool of user@database`.
    pub fn describe(&self) -> String {
        format!("{} pool of {}@{}", self.key.endpoint, self.key.user, self.key.database)
    }

    /// Waits (first come, first served) for the right to use a backend;
    /// returns it with how long it waited (no clock read when it did not).
    pub async fn acquire(&self, timeout: Duration) -> Option<(OwnedSemaphorePermit, Duration)> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Some((p, Duration::ZERO));
        }
        let t0 = Instant::now();
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let r = tokio::time::timeout(timeout, self.permits.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(Ok(p)) => Some((p, t0.elapsed())),
            _ => None,
        }
    }

    pub fn note_known(&self, hash: u64) {
        if let Ok(mut k) = self.known.lock()
            && k.len() < 100_000
        {
            k.insert(hash);
        }
    }

    pub fn is_known(&self, hash: u64) -> bool {
        self.known.lock().map(|k| k.contains(&hash)).unwrap_or(false)
    }

    /// Counts one more open backend if the pool has room for it.
    pub fn reserve_open(&self) -> bool {
        self.open.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < self.size).then_some(n + 1)).is_ok()
    }

    /// Backends in use now.
    pub fn in_use(&self) -> usize {
        self.size - self.permits.available_permits()
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// An idle backend on one of `allowed` (the primary, or the routed
    /// replicas; most recently used first), checked alone (one
    /// non-blocking read) so a take costs the same with one idle backend
    /// or many. When the one on top is on a backend no longer allowed (the
    /// routing changed: an old primary) or read-only on the writer
    /// endpoint, every idle backend in that case is closed at once; idle
    /// backends closed by their server are dropped when reached.
    pub fn take_idle(&self, allowed: &[Backend], writer: bool) -> Option<Pooled> {
        let usable = |p: &Pooled| allowed.contains(&*p.conn.backend) && !(writer && p.conn.read_only);
        let mut stale = 0;
        let found = {
            let Ok(mut idle) = self.idle.lock() else { return None };
            loop {
                match idle.pop() {
                    Some(p) if !usable(&p) => {
                        let _ = p.conn.stream.try_write(&[b'X', 0, 0, 0, 4]);
                        stale += 1;
                        idle.retain(|p| {
                            let keep = usable(p);
                            if !keep {
                                let _ = p.conn.stream.try_write(&[b'X', 0, 0, 0, 4]);
                                stale += 1;
                            }
                            keep
                        });
                    }
                    Some(p) if p.conn.idle_alive() => break Some(p),
                    Some(_) => stale += 1,
                    None => break None,
                }
            }
        };
        if stale > 0 {
            self.open.fetch_sub(stale, Ordering::Relaxed);
            self.closed_total.inc_by(stale as u64);
        }
        found
    }

    /// Gives a backend back; backends idle longer than a minute beyond
    /// `min_idle` are closed.
    pub fn put(&self, conn: BackendConn, state: BackendState) {
        let now = Instant::now();
        let mut closed = 0;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(Pooled { conn, state, since: now });
            while idle.len() > self.min_idle.max(1)
                && idle.first().is_some_and(|p| now.duration_since(p.since) > IDLE_KEEP)
            {
                let p = idle.remove(0);
                let _ = p.conn.stream.try_write(&[b'X', 0, 0, 0, 4]);
                closed += 1;
            }
        }
        if closed > 0 {
            self.open.fetch_sub(closed, Ordering::Relaxed);
            self.closed_total.inc_by(closed as u64);
        }
    }

    /// A backend of this pool is closed for good (lost, dirty, moved).
    pub fn closed(&self, conn: Option<&BackendConn>) {
        if let Some(c) = conn {
            let _ = c.stream.try_write(&[b'X', 0, 0, 0, 4]);
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.closed_total.inc();
    }
}

/// A cluster's pools, created on first use.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
}

impl Pools {
    pub fn get(
        &self,
        key: PoolKey,
        size: usize,
        min_idle: usize,
        closed_total: &prometheus_client::metrics::counter::Counter,
    ) -> Option<Arc<Pool>> {
        let mut m = self.pools.lock().ok()?;
        Some(
            m.entry(key.clone())
                .or_insert_with(|| Arc::new(Pool::new(key, size, min_idle, closed_total.clone())))
                .clone(),
        )
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.pools.lock().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }
}
