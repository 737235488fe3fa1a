//! Pause, queue, resume for one cluster's writer endpoint.
//!
//! While paused, new connections and new transactions (the first message
//! from an idle session) wait in a FIFO queue bounded in count
//! (`max_queue`) and per-waiter time (`max_pause`); transactions already
//! running may finish (drain). Resume releases the queue in arrival order.
//!
//! The hot path costs one atomic add, one load and (at the end of the
//! transaction) one subtract: a session counts itself active *before* it
//! checks the flag, and `pause` sets the flag *before* it waits for the
//! count to reach zero, so no transaction slips past a pause unnoticed.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    #[error("the pause queue is full")]
    QueueFull,
    #[error("waited longer than max_pause for the pause to end")]
    Timeout,
}

#[derive(Debug, Default)]
struct State {
    paused_at: Option<Instant>,
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
    next_ticket: u64,
}

#[derive(Debug, Default)]
pub struct Gate {
    paused: AtomicBool,
    /// Counts pauses and resumes: a pause that ends by itself (a hold)
    /// ends only if nothing paused or resumed since.
    generation: AtomicU64,
    active: AtomicUsize,
    drained: Notify,
    state: Mutex<State>,
}

/// What `pause` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PauseOutcome {
    /// All running transactions finished before the drain timeout.
    pub drained: bool,
    /// Transactions still running when `pause` returned.
    pub active: usize,
    pub waited_ms: u64,
    /// The gate's generation this pause set (see [`Gate::resume_if`]).
    #[serde(skip)]
    pub generation: u64,
}

impl Gate {
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    pub fn queued(&self) -> usize {
        self.state.lock().map(|s| s.queue.len()).unwrap_or(0)
    }

    pub fn paused_for(&self) -> Option<Duration> {
        self.state.lock().ok()?.paused_at.map(|t| t.elapsed())
    }

    /// Starts a transaction: returns at once unless paused; else waits in
    /// the queue. On success the caller holds one "active" count that it
    /// gives back with [`Gate::end`].
    pub async fn begin(&self, max_pause: Duration, max_queue: usize) -> Result<Option<Duration>, GateError> {
        // Fast path: one add and one load.
        self.active.fetch_add(1, Ordering::SeqCst);
        if !self.paused.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.end();
        let mut waited = None;
        let deadline = Instant::now() + max_pause;
        loop {
            let started = Instant::now();
            self.wait(deadline, max_queue).await?;
            waited = Some(waited.unwrap_or_default() + started.elapsed());
            self.active.fetch_add(1, Ordering::SeqCst);
            if !self.paused.load(Ordering::SeqCst) {
                return Ok(waited);
            }
            self.end();
        }
    }

    /// Waits until resumed (without taking an active count): used for new
    /// connections before they log in to a backend.
    pub async fn wait_open(&self, max_pause: Duration, max_queue: usize) -> Result<Option<Duration>, GateError> {
        let r = self.begin(max_pause, max_queue).await;
        if r.is_ok() {
            self.end();
        }
        r
    }

    /// Ends a transaction started by [`Gate::begin`].
    pub fn end(&self) {
        if self.active.fetch_sub(1, Ordering::SeqCst) == 1 && self.paused.load(Ordering::SeqCst) {
            self.drained.notify_waiters();
        }
    }

    async fn wait(&self, deadline: Instant, max_queue: usize) -> Result<(), GateError> {
        let (tx, rx) = oneshot::channel();
        let ticket = {
            let Ok(mut s) = self.state.lock() else { return Err(GateError::Timeout) };
            if !self.paused.load(Ordering::SeqCst) {
                return Ok(());
            }
            if s.queue.len() >= max_queue {
                return Err(GateError::QueueFull);
            }
            let t = s.next_ticket;
            s.next_ticket += 1;
            s.queue.push_back((t, tx));
            t
        };
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(_) => Ok(()),
            Err(_) => {
                if let Ok(mut s) = self.state.lock() {
                    s.queue.retain(|(t, _)| *t != ticket);
                }
                Err(GateError::Timeout)
            }
        }
    }

    /// Pauses and waits up to `drain_timeout` for running transactions to
    /// finish. Pausing a paused gate only waits for the drain again.
    pub async fn pause(&self, drain_timeout: Duration) -> PauseOutcome {
        let started = Instant::now();
        // Under the lock, with the flag: [`Gate::resume_if`] sees both or neither.
        let generation = {
            let mut s = self.state.lock();
            if let Ok(s) = s.as_mut() {
                s.paused_at.get_or_insert(started);
            }
            self.paused.store(true, Ordering::SeqCst);
            self.generation.fetch_add(1, Ordering::SeqCst) + 1
        };
        let deadline = tokio::time::Instant::now() + drain_timeout;
        loop {
            let notified = self.drained.notified();
            if self.active.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let active = self.active.load(Ordering::SeqCst);
        PauseOutcome { drained: active == 0, active, waited_ms: started.elapsed().as_millis() as u64, generation }
    }

    /// [`Gate::resume`], only if the gate is still paused by the pause of
    /// `generation` (nothing paused or resumed since).
    pub fn resume_if(&self, generation: u64) -> Option<(Option<Duration>, usize)> {
        let Ok(mut s) = self.state.lock() else { return None };
        if !self.paused.load(Ordering::SeqCst) || self.generation.load(Ordering::SeqCst) != generation {
            return None;
        }
        Some(self.resume_locked(&mut s))
    }

    /// Resumes: releases every queued waiter in arrival order. Returns how
    /// long the gate was paused and how many waiters were released.
    pub fn resume(&self) -> (Option<Duration>, usize) {
        let Ok(mut s) = self.state.lock() else { return (None, 0) };
        self.resume_locked(&mut s)
    }

    fn resume_locked(&self, s: &mut State) -> (Option<Duration>, usize) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.paused.store(false, Ordering::SeqCst);
        let paused_for = s.paused_at.take().map(|t| t.elapsed());
        let mut n = 0;
        while let Some((_, tx)) = s.queue.pop_front() {
            if tx.send(()).is_ok() {
                n += 1;
            }
        }
        (paused_for, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn queue_releases_in_order_and_times_out() {
        let g = Arc::new(Gate::default());
        g.begin(Duration::from_secs(1), 10).await.expect("open");
        let p = tokio::spawn({
            let g = g.clone();
            async move { g.pause(Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(g.is_paused());
        g.end();
        let out = p.await.expect("pause");
        assert!(out.drained);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (g, order) = (g.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                g.begin(Duration::from_secs(30), 10).await.expect("released");
                order.lock().expect("lock").push(i);
                g.end();
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(g.queued(), 3);
        let full = g.begin(Duration::from_secs(30), 3).await;
        assert_eq!(full, Err(GateError::QueueFull));
        let (_, n) = g.resume();
        assert_eq!(n, 3);
        for w in waiters {
            w.await.expect("waiter");
        }
        assert_eq!(*order.lock().expect("lock"), vec![0, 1, 2]);
        g.pause(Duration::from_secs(1)).await;
        assert_eq!(g.begin(Duration::from_millis(500), 10).await, Err(GateError::Timeout));
        assert_eq!(g.queued(), 0);
        assert_eq!(g.active(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn resume_if_ends_only_its_own_pause() {
        let g = Gate::default();
        let first = g.pause(Duration::ZERO).await.generation;
        let second = g.pause(Duration::ZERO).await.generation;
        assert_eq!(g.resume_if(first), None, "paused again since: the later pause governs");
        assert!(g.is_paused());
        assert!(g.resume_if(second).is_some());
        assert!(!g.is_paused());
        let third = g.pause(Duration::ZERO).await.generation;
        g.resume();
        let _fourth = g.pause(Duration::ZERO).await;
        assert_eq!(g.resume_if(third), None, "resumed and paused again since");
        assert!(g.is_paused());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_timeout() {
        let g = Gate::default();
        g.begin(Duration::from_secs(1), 10).await.expect("open");
        let out = g.pause(Duration::from_secs(2)).await;
        assert!(!out.drained);
        assert_eq!(out.active, 1);
    }
}
