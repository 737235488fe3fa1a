//! Running one workflow: stages in order, the steps of a stage in parallel,
//! each attempt journalled before and after, retries with backoff, approval
//! gates, cancellation, and the final state with the lock released.
//!
//! Every journal and record write is a store transaction that checks the
//! workflow's owner claim is still the one this runner made: a runner whose
//! engine lost its lease (and whose workflow another engine resumed) cannot
//! write any more; it stops.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgdr_model::Epoch;
use pgdr_store::keys::{self, from_json, to_json};
use pgdr_store::{Event, Expect, Revision, StoreError, Txn, TxnOutcome, WatchEvent};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::Shared;
use crate::record::{Attempt, ClusterLock, Signoff, StepRecord, StepState, WorkflowRecord, WorkflowState};
use crate::step::{Stage, Step, StepContext, StepKind, StepOutput};
use crate::{StepError, WorkflowId};

/// How a step ended, for its stage.
enum StepEnd {
    Succeeded(StepOutput),
    Failed(String),
    Cancelled,
    /// The engine stopped or lost ownership: nothing more is written.
    Stopped,
}

pub(crate) struct Run {
    pub shared: Arc<Shared>,
    pub id: WorkflowId,
    pub stages: Vec<Stage>,
    pub record: tokio::sync::Mutex<WorkflowRecord>,
    /// The revision of our owner claim; every write checks it.
    pub owner_rev: Revision,
    /// Cancelled by a cancel request, by the engine stopping, or when this
    /// runner must stop writing.
    pub token: CancellationToken,
    pub cancelled_by: Mutex<Option<String>>,
    /// Set when this runner can no longer write (ownership lost, store failing).
    pub halted: AtomicBool,
    /// Bumped whenever an approval may have arrived.
    pub approvals: watch::Sender<u64>,
    pub epoch: Mutex<Option<Epoch>>,
    pub started: Instant,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Run {
    fn stopping(&self) -> bool {
        self.shared.stop.is_cancelled() || self.halted.load(Ordering::SeqCst)
    }

    fn halt(&self, why: &str) {
        if !self.halted.swap(true, Ordering::SeqCst) {
            tracing::warn!(workflow = %self.id, "workflow runner stops: {why}; the next engine resumes it");
        }
        self.token.cancel();
    }

    /// Runs the workflow to its end (or until the engine stops), then tells
    /// `done`. `journal` holds the step records found in the store (resume).
    pub async fn run(self: Arc<Self>, journal: BTreeMap<String, StepRecord>, done: oneshot::Sender<WorkflowRecord>) {
        let control = self.shared.tracker.spawn(self.clone().control());
        let end = self.run_stages(journal).await;
        if let Some(rec) = end {
            let _ = done.send(rec);
        }
        // Ends the control task.
        self.token.cancel();
        let _ = control.await;
        lock(&self.shared.running).remove(&self.id);
    }

    /// Follows the workflow's keys: a cancel request cancels, an approval
    /// wakes the gates.
    async fn control(self: Arc<Self>) {
        let prefix = keys::workflow_prefix(self.id.as_str());
        let cancel_key = keys::workflow_cancel(self.id.as_str());
        let approvals = keys::workflow_approvals_prefix(self.id.as_str());
        loop {
            let mut w = match self.shared.store.watch(&prefix).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(workflow = %self.id, error = %e, "cannot watch workflow keys; retrying");
                    tokio::select! {
                        _ = self.token.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            // Anything that happened before the watch began.
            self.check_cancel().await;
            self.approvals.send_modify(|n| *n += 1);
            loop {
                tokio::select! {
                    _ = self.token.cancelled() => return,
                    ev = w.next() => match ev {
                        Ok(Some(WatchEvent::Put { key, .. })) if key == cancel_key => self.check_cancel().await,
                        Ok(Some(WatchEvent::Put { key, .. })) if key.starts_with(&approvals) => {
                            self.approvals.send_modify(|n| *n += 1);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => return,
                        Err(_) => break,
                    },
                }
            }
        }
    }

    /// Cancels the run if a cancel request is in the store.
    pub async fn check_cancel(&self) {
        let key = keys::workflow_cancel(self.id.as_str());
        match self.shared.store.get(&key).await {
            Ok(Some(v)) => {
                let by = from_json::<Signoff>(&key, &v.value).map(|s| s.by).unwrap_or_else(|_| "unknown".into());
                lock(&self.cancelled_by).get_or_insert(by);
                self.token.cancel();
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(workflow = %self.id, error = %e, "cannot read the cancel request"),
        }
    }

    fn cancel_requested(&self) -> bool {
        lock(&self.cancelled_by).is_some()
    }

    async fn run_stages(&self, mut journal: BTreeMap<String, StepRecord>) -> Option<WorkflowRecord> {
        self.check_cancel().await;
        let mut outputs: BTreeMap<String, Value> = BTreeMap::new();
        for rec in journal.values() {
            if rec.state == StepState::Succeeded {
                outputs.insert(rec.name.clone(), rec.output.clone().unwrap_or(Value::Null));
                if let Some(e) = rec.epoch {
                    self.note_epoch(e);
                }
            }
        }
        for (i, stage) in self.stages.iter().enumerate() {
            let pending: Vec<&Step> = stage.steps.iter().filter(|s| !outputs.contains_key(&s.name)).collect();
            if pending.is_empty() {
                continue;
            }
            if self.stopping() {
                return None;
            }
            if self.cancel_requested() {
                return self.finish(WorkflowState::Cancelled, None).await;
            }
            if !self
                .update_record(|r| {
                    r.current_stage = i;
                    r.state = WorkflowState::Running;
                })
                .await
            {
                return None;
            }
            let stage_token = self.token.child_token();
            let shared_outputs = Arc::new(outputs.clone());
            let runs = pending.iter().map(|step| {
                let prev = journal.remove(&step.name);
                let outputs = shared_outputs.clone();
                let token = stage_token.clone();
                async move { (step.name.clone(), self.run_step(i, step, prev, outputs, token).await) }
            });
            let results = futures::future::join_all(runs).await;
            let mut failure = None;
            let mut cancelled = false;
            for (name, end) in results {
                match end {
                    StepEnd::Succeeded(out) => {
                        outputs.insert(name, out.data);
                    }
                    StepEnd::Failed(msg) => {
                        failure.get_or_insert(format!("step {name} failed: {msg}"));
                    }
                    StepEnd::Cancelled => cancelled = true,
                    StepEnd::Stopped => return None,
                }
            }
            if self.stopping() {
                return None;
            }
            if let Some(f) = failure {
                return self.finish(WorkflowState::Failed, Some(f)).await;
            }
            if cancelled {
                return self.finish(WorkflowState::Cancelled, None).await;
            }
        }
        self.finish(WorkflowState::Succeeded, None).await
    }

    fn note_epoch(&self, e: Epoch) {
        let mut cur = lock(&self.epoch);
        if cur.is_none_or(|c| e > c) {
            *cur = Some(e);
        }
    }

    async fn run_step(
        &self,
        stage: usize,
        step: &Step,
        prev: Option<StepRecord>,
        outputs: Arc<BTreeMap<String, Value>>,
        token: CancellationToken,
    ) -> StepEnd {
        let rec = prev.unwrap_or_else(|| StepRecord {
            stage,
            name: step.name.clone(),
            state: StepState::Started,
            attempts: Vec::new(),
            output: None,
            epoch: None,
            error: None,
            approved_by: None,
            approved_at: None,
        });
        match &step.kind {
            StepKind::Approval => self.gate(step, rec, token).await,
            StepKind::Action(body) => {
                let ctx = |attempt| StepContext {
                    workflow: self.id.clone(),
                    kind: String::new(),
                    cluster: pgdr_model::ClusterName::new(""),
                    params: Arc::new(Value::Null),
                    step: step.name.clone(),
                    stage,
                    attempt,
                    cancel: token.clone(),
                    dry_run: false,
                    store: self.shared.store.clone(),
                    outputs: outputs.clone(),
                };
                let base = {
                    let r = self.record.lock().await;
                    let mut c = ctx(0);
                    c.kind = r.kind.clone();
                    c.cluster = r.cluster.clone();
                    c.params = Arc::new(r.params.clone());
                    c
                };
                self.action(step, body.as_ref(), rec, base, token).await
            }
        }
    }

    async fn action(
        &self,
        step: &Step,
        body: &dyn crate::StepBody,
        mut rec: StepRecord,
        base: StepContext,
        token: CancellationToken,
    ) -> StepEnd {
        let max = step.retry.max_attempts.max(1);
        let mut failures = u32::try_from(rec.attempts.iter().filter(|a| a.failed()).count()).unwrap_or(u32::MAX);
        for a in rec.attempts.iter_mut().filter(|a| a.ended_at.is_none()) {
            a.error.get_or_insert_with(|| "interrupted: the engine stopped during this attempt".into());
        }
        loop {
            if failures >= max {
                // Only after a resume: the last attempt failed before the
                // workflow's end was written.
                let msg = rec.error.clone().unwrap_or_else(|| format!("failed {failures} attempts"));
                return self.step_failed(step, rec, msg, &token).await;
            }
            let n = rec.attempts.last().map_or(0, |a| a.n) + 1;
            let t0 = Instant::now();
            rec.attempts.push(Attempt {
                n,
                started_at: self.shared.clock.now(),
                ended_at: None,
                duration_ms: None,
                error: None,
                retryable: None,
            });
            rec.state = StepState::Started;
            if !self.journal(&rec).await {
                return StepEnd::Stopped;
            }
            self.event(Some(&step.name), "started", Some(n), None, None).await;
            let mut ctx = base.clone();
            ctx.attempt = n;
            let attempt = async {
                match step.timeout {
                    Some(limit) => match tokio::time::timeout(limit, body.run(&ctx)).await {
                        Ok(r) => r,
                        Err(_) => {
                            Err(StepError::retryable(format!("timed out after {}", pgdr_model::format_duration(limit))))
                        }
                    },
                    None => body.run(&ctx).await,
                }
            };
            let result = tokio::select! {
                biased;
                _ = token.cancelled() => None,
                r = attempt => Some(r),
            };
            let took = t0.elapsed();
            let now = self.shared.clock.now();
            if let Some(a) = rec.attempts.last_mut() {
                a.ended_at = Some(now);
                a.duration_ms = Some(ms(took));
            }
            match result {
                None => return self.step_cancelled(step, rec, n).await,
                Some(Ok(out)) => {
                    rec.state = StepState::Succeeded;
                    rec.output = Some(out.data.clone());
                    rec.epoch = out.epoch;
                    rec.error = None;
                    if !self.journal(&rec).await {
                        return StepEnd::Stopped;
                    }
                    if let Some(e) = out.epoch {
                        self.note_epoch(e);
                        self.update_record(|r| r.epoch = Some(e)).await;
                    }
                    self.event(Some(&step.name), "succeeded", Some(n), Some(took), None).await;
                    return StepEnd::Succeeded(out);
                }
                Some(Err(e)) => {
                    failures += 1;
                    if let Some(a) = rec.attempts.last_mut() {
                        a.error = Some(e.message.clone());
                        a.retryable = Some(e.retryable);
                    }
                    rec.error = Some(e.message.clone());
                    if !e.retryable || failures >= max {
                        let why =
                            if e.retryable { format!("{} (after {failures} attempts)", e.message) } else { e.message };
                        return self.step_failed(step, rec, why, &token).await;
                    }
                    rec.state = StepState::Retrying;
                    if !self.journal(&rec).await {
                        return StepEnd::Stopped;
                    }
                    let delay = step.retry.delay(failures);
                    let msg = format!("{}; attempt {} in {}", e.message, n + 1, pgdr_model::format_duration(delay));
                    self.event(Some(&step.name), "retrying", Some(n), Some(took), Some(msg)).await;
                    tokio::select! {
                        _ = token.cancelled() => return self.step_cancelled(step, rec, n).await,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn step_failed(&self, step: &Step, mut rec: StepRecord, msg: String, token: &CancellationToken) -> StepEnd {
        rec.state = StepState::Failed;
        rec.error = Some(msg.clone());
        if !self.journal(&rec).await {
            return StepEnd::Stopped;
        }
        let n = rec.attempts.last().map(|a| a.n);
        let took = rec.attempts.last().and_then(|a| a.duration_ms).map(Duration::from_millis);
        self.event(Some(&step.name), "failed", n, took, Some(msg.clone())).await;
        // Stops the other steps of a parallel stage.
        token.cancel();
        StepEnd::Failed(msg)
    }

    async fn step_cancelled(&self, step: &Step, mut rec: StepRecord, n: u32) -> StepEnd {
        if self.stopping() {
            return StepEnd::Stopped;
        }
        let why = match lock(&self.cancelled_by).clone() {
            Some(by) => format!("cancelled by {by}"),
            None => "cancelled: another step of its stage failed".to_owned(),
        };
        if let Some(a) = rec.attempts.last_mut()
            && a.error.is_none()
        {
            a.error = Some(why.clone());
            a.ended_at.get_or_insert(self.shared.clock.now());
        }
        rec.state = StepState::Cancelled;
        if !self.journal(&rec).await {
            return StepEnd::Stopped;
        }
        self.event(Some(&step.name), "cancelled", Some(n), None, Some(why)).await;
        StepEnd::Cancelled
    }

    /// An approval gate: waits (on store changes, never polling) until the
    /// approval key exists or the workflow is cancelled.
    async fn gate(&self, step: &Step, mut rec: StepRecord, token: CancellationToken) -> StepEnd {
        let key = keys::workflow_approval(self.id.as_str(), &step.name);
        let mut changes = self.approvals.subscribe();
        let mut announced = false;
        loop {
            match self.shared.store.get(&key).await {
                Ok(Some(v)) => {
                    let signoff: Signoff = match from_json(&key, &v.value) {
                        Ok(s) => s,
                        Err(e) => Signoff { by: format!("unreadable approval: {e}"), at: self.shared.clock.now() },
                    };
                    rec.state = StepState::Succeeded;
                    rec.approved_by = Some(signoff.by.clone());
                    rec.approved_at = Some(signoff.at);
                    let now = self.shared.clock.now();
                    if let Some(a) = rec.attempts.last_mut() {
                        a.ended_at = Some(now);
                        a.duration_ms = Some(ms((now - a.started_at).unsigned_abs()));
                    }
                    let out = json!({ "approved_by": signoff.by });
                    rec.output = Some(out.clone());
                    if !self.journal(&rec).await {
                        return StepEnd::Stopped;
                    }
                    self.update_record(|r| r.state = WorkflowState::Running).await;
                    let msg = format!("approved by {}", signoff.by);
                    self.event(Some(&step.name), "approved", Some(1), None, Some(msg)).await;
                    return StepEnd::Succeeded(StepOutput::json(out));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(workflow = %self.id, error = %e, "cannot read the approval; waiting for a change")
                }
            }
            if !announced {
                announced = true;
                if rec.attempts.is_empty() {
                    rec.attempts.push(Attempt {
                        n: 1,
                        started_at: self.shared.clock.now(),
                        ended_at: None,
                        duration_ms: None,
                        error: None,
                        retryable: None,
                    });
                }
                rec.state = StepState::WaitingApproval;
                if !self.journal(&rec).await {
                    return StepEnd::Stopped;
                }
                if !self.update_record(|r| r.state = WorkflowState::WaitingApproval).await {
                    return StepEnd::Stopped;
                }
                let msg = format!("waiting for approval: {}", step.description);
                self.event(Some(&step.name), "waiting_approval", None, None, Some(msg)).await;
                // Check again: an approval may have landed meanwhile.
                continue;
            }
            tokio::select! {
                _ = token.cancelled() => return self.step_cancelled(step, rec, 1).await,
                r = changes.changed() => if r.is_err() { return StepEnd::Stopped },
            }
        }
    }

    /// Writes a step's journal, fenced by the owner claim. False when this
    /// runner must stop.
    async fn journal(&self, rec: &StepRecord) -> bool {
        let key = keys::workflow_step(self.id.as_str(), rec.stage, &rec.name);
        let value = match to_json(&key, rec) {
            Ok(v) => v,
            Err(e) => {
                self.halt(&e.to_string());
                return false;
            }
        };
        self.fenced_write(Txn::new().put(&key, value, None)).await
    }

    /// Applies `txn` if our owner claim still stands, retrying transient
    /// store failures. False (and the runner halts) otherwise.
    async fn fenced_write(&self, txn: Txn) -> bool {
        let owner_key = keys::workflow_owner(self.id.as_str());
        let mut txn = txn;
        txn.checks.insert(0, (owner_key, Expect::Revision(self.owner_rev)));
        let mut delay = Duration::from_millis(100);
        for _ in 0..5 {
            match self.shared.store.txn(txn.clone()).await {
                Ok(TxnOutcome::Done(_)) => return true,
                Ok(TxnOutcome::Conflict { key, .. }) => {
                    self.halt(&format!("its claim on the workflow is gone ({key} changed)"));
                    return false;
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(workflow = %self.id, error = %e, "journal write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    self.halt(&format!("journal write failed: {e}"));
                    return false;
                }
            }
        }
        self.halt("journal writes kept failing");
        false
    }

    async fn update_record(&self, f: impl FnOnce(&mut WorkflowRecord)) -> bool {
        let mut r = self.record.lock().await;
        f(&mut r);
        let key = keys::workflow_record(self.id.as_str());
        match to_json(&key, &*r) {
            Ok(v) => self.fenced_write(Txn::new().put(&key, v, None)).await,
            Err(e) => {
                self.halt(&e.to_string());
                false
            }
        }
    }

    /// Writes the final state, releases the owner claim and the cluster lock
    /// in the same transaction, and emits the workflow's end event.
    async fn finish(&self, state: WorkflowState, error: Option<String>) -> Option<WorkflowRecord> {
        let mut r = self.record.lock().await;
        r.state = state;
        r.ended_at = Some(self.shared.clock.now());
        r.error = error.clone();
        r.epoch = *lock(&self.epoch);
        if state == WorkflowState::Cancelled {
            r.cancelled_by = lock(&self.cancelled_by).clone();
        }
        let key = keys::workflow_record(self.id.as_str());
        let owner_key = keys::workflow_owner(self.id.as_str());
        let mut txn = Txn::new().put(&key, to_json(&key, &*r).ok()?, None).delete(&owner_key);
        if r.role_changing {
            let lock_key = keys::cluster_lock(r.cluster.as_str());
            match self.lock_revision(&lock_key).await {
                Ok(Some(rev)) => txn = txn.check(&lock_key, Expect::Revision(rev)).delete(&lock_key),
                Ok(None) => tracing::warn!(workflow = %self.id, "the cluster lock was not ours at the end"),
                Err(e) => {
                    self.halt(&format!("cannot read the cluster lock: {e}"));
                    return None;
                }
            }
        }
        if !self.fenced_write(txn).await {
            return None;
        }
        let rec = r.clone();
        drop(r);
        let took = self.started.elapsed();
        tracing::info!(workflow = %self.id, kind = %rec.kind, cluster = %rec.cluster, state = %state, "workflow ended");
        let msg = match (&error, &rec.cancelled_by) {
            (Some(e), _) => Some(e.clone()),
            (None, Some(by)) => Some(format!("cancelled by {by}")),
            _ => None,
        };
        self.event(None, state.as_str(), None, Some(took), msg).await;
        Some(rec)
    }

    async fn lock_revision(&self, lock_key: &str) -> Result<Option<Revision>, StoreError> {
        Ok(match self.shared.store.get(lock_key).await? {
            Some(v) if from_json::<ClusterLock>(lock_key, &v.value)?.workflow == self.id => Some(v.revision),
            _ => None,
        })
    }

    async fn event(
        &self,
        step: Option<&str>,
        state: &str,
        attempt: Option<u32>,
        took: Option<Duration>,
        message: Option<String>,
    ) {
        let (cluster, kind) = {
            let r = self.record.lock().await;
            (r.cluster.clone(), r.kind.clone())
        };
        let mut ev = Event::new(cluster, state, self.shared.clock.now());
        ev.workflow = Some(self.id.to_string());
        ev.kind = Some(kind);
        ev.step = step.map(str::to_owned);
        ev.epoch = *lock(&self.epoch);
        ev.attempt = attempt;
        ev.duration_ms = took.map(ms);
        ev.message = message;
        self.shared.emit(ev).await;
    }
}
