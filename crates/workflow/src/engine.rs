//! The [`Engine`]: starts, plans, approves, cancels and resumes workflows,
//! and publishes their events.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgdr_model::ClusterName;
use pgdr_store::keys::{self, from_json, to_json};
use pgdr_store::{
    Clock, DEFAULT_EVENT_RETENTION, Event, EventLog, Expect, LeaseId, Outcome, StateStore, StoreError, Txn, TxnOutcome,
};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::record::{
    ClusterLock, OwnerClaim, Plan, PlannedStep, Signoff, StepRecord, StepState, WorkflowId, WorkflowRecord,
    WorkflowState,
};
use crate::run::Run;
use crate::step::{Stage, StepContext, StepKind, build_stages};
use crate::{Registry, WorkflowError};

/// How an engine identifies itself and keeps its claims.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// This engine's name (the controller's name). A new engine with the
    /// same name takes over the workflows its previous incarnation ran
    /// without waiting for that one's lease to expire: two live engines must
    /// never share a name.
    pub owner: String,
    /// The TTL of the engine's lease, to which its claims on running
    /// workflows are attached: another engine resumes them this long after
    /// this one stops renewing.
    pub owner_ttl: Duration,
    /// How many events the store's event log keeps.
    pub event_retention: u64,
    /// How many events an in-process subscriber may fall behind.
    pub event_buffer: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            owner: "controller".into(),
            owner_ttl: Duration::from_secs(15),
            event_retention: DEFAULT_EVENT_RETENTION,
            event_buffer: 1024,
        }
    }
}

pub(crate) struct Shared {
    pub store: Arc<dyn StateStore>,
    pub clock: Arc<dyn Clock>,
    pub registry: Registry,
    pub log: EventLog,
    pub events: broadcast::Sender<Event>,
    pub owner: String,
    pub lease: LeaseId,
    /// Cancelled when the engine stops (dropped, shut down, fenced).
    pub stop: CancellationToken,
    pub fenced: AtomicBool,
    pub tracker: TaskTracker,
    pub running: Mutex<HashMap<WorkflowId, Arc<Run>>>,
}

impl Shared {
    /// Appends an event to the store's log and publishes it in-process.
    pub async fn emit(&self, mut ev: Event) {
        match self.log.append(&ev).await {
            Ok(seq) => ev.seq = Some(seq),
            Err(e) => tracing::warn!(error = %e, state = %ev.state, "cannot append the event to the store's log"),
        }
        // No subscriber is fine.
        let _ = self.events.send(ev);
    }
}

/// Waits for one workflow's end.
#[derive(Debug)]
pub struct WorkflowHandle {
    pub id: WorkflowId,
    done: oneshot::Receiver<WorkflowRecord>,
}

impl WorkflowHandle {
    /// The final record, or [`WorkflowError::Interrupted`] if the engine
    /// stopped first (the workflow is still `running` in the store).
    pub async fn wait(self) -> Result<WorkflowRecord, WorkflowError> {
        self.done.await.map_err(|_| WorkflowError::Interrupted(self.id))
    }
}

/// The durable workflow engine. Cheap to clone; when the last clone is
/// dropped, its running workflows stop where they are (as if the process
/// died) and stay `running` in the store for the next engine.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    _guard: Arc<DropGuard>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("owner", &self.shared.owner).finish()
    }
}

fn invalid(kind: &str, message: impl Into<String>) -> WorkflowError {
    WorkflowError::Invalid { kind: kind.to_owned(), message: message.into() }
}

impl Engine {
    /// Starts an engine: takes its lease and keeps it alive. Call
    /// [`Engine::resume_all`] next to pick up interrupted workflows.
    pub async fn new(
        store: Arc<dyn StateStore>,
        clock: Arc<dyn Clock>,
        registry: Registry,
        options: EngineOptions,
    ) -> Result<Self, WorkflowError> {
        if options.owner.is_empty() {
            return Err(invalid("engine", "the owner name is empty"));
        }
        let lease = store.grant_lease(options.owner_ttl).await?;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            log: EventLog::new(store.clone(), options.event_retention),
            store,
            clock,
            registry,
            events: broadcast::channel(options.event_buffer.max(1)).0,
            owner: options.owner,
            lease,
            stop: stop.clone(),
            fenced: AtomicBool::new(false),
            tracker: TaskTracker::new(),
            running: Mutex::new(HashMap::new()),
        });
        shared.tracker.spawn(keep_alive(shared.clone(), options.owner_ttl));
        Ok(Self { shared, _guard: Arc::new(stop.drop_guard()) })
    }

    /// In-process events (every step start and end, workflow ends), for
    /// webhooks and metrics. The same events go to the store's log.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// The store's event log.
    pub fn event_log(&self) -> &EventLog {
        &self.shared.log
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.shared.store
    }

    fn check_live(&self) -> Result<(), WorkflowError> {
        if self.shared.fenced.load(Ordering::SeqCst) || self.shared.stop.is_cancelled() {
            return Err(WorkflowError::Fenced);
        }
        Ok(())
    }

    fn def(&self, kind: &str) -> Result<Arc<dyn crate::WorkflowDef>, WorkflowError> {
        self.shared.registry.get(kind).ok_or_else(|| WorkflowError::UnknownKind(kind.to_owned()))
    }

    fn static_plan(stages: &[Stage]) -> Vec<Vec<PlannedStep>> {
        stages
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.steps
                    .iter()
                    .map(|step| PlannedStep {
                        stage: i,
                        name: step.name.clone(),
                        description: step.description.clone(),
                        checks: step.static_checks(),
                        approval: step.is_approval(),
                        max_attempts: step.retry.max_attempts,
                    })
                    .collect()
            })
            .collect()
    }

    async fn read_lock(&self, cluster: &ClusterName) -> Result<Option<ClusterLock>, StoreError> {
        let key = keys::cluster_lock(cluster.as_str());
        match self.shared.store.get(&key).await? {
            Some(v) => Ok(Some(from_json(&key, &v.value)?)),
            None => Ok(None),
        }
    }

    /// What a workflow would do, without doing it: every step with its
    /// description and the checks it would make (steps may inspect live
    /// state, read-only), and whether a running workflow would block it.
    /// Writes nothing to the store.
    pub async fn plan(&self, kind: &str, cluster: &ClusterName, params: Value) -> Result<Plan, WorkflowError> {
        let def = self.def(kind)?;
        let stages = build_stages(def.as_ref(), &params)?;
        let params_arc = Arc::new(params.clone());
        let id = WorkflowId::new(self.shared.clock.now());
        let mut planned = Self::static_plan(&stages);
        for (i, stage) in stages.iter().enumerate() {
            for (j, step) in stage.steps.iter().enumerate() {
                let StepKind::Action(body) = &step.kind else { continue };
                let ctx = StepContext {
                    workflow: id.clone(),
                    kind: kind.to_owned(),
                    cluster: cluster.clone(),
                    params: params_arc.clone(),
                    step: step.name.clone(),
                    stage: i,
                    attempt: 0,
                    cancel: self.shared.stop.child_token(),
                    dry_run: true,
                    store: self.shared.store.clone(),
                    outputs: Arc::new(BTreeMap::new()),
                };
                let mut checks = step.checks.clone();
                match body.dry_run(&ctx).await {
                    Ok(found) => checks.extend(found),
                    Err(e) => checks.push(format!("cannot check now: {e}")),
                }
                planned[i][j].checks = checks;
            }
        }
        let blocked_by = if def.role_changing() { self.read_lock(cluster).await? } else { None };
        Ok(Plan { kind: kind.to_owned(), cluster: cluster.clone(), params, stages: planned, blocked_by })
    }

    /// Starts a workflow. A role-changing one takes the cluster's lock in
    /// the same transaction that records it; if another holds the lock this
    /// fails with [`WorkflowError::ClusterBusy`] naming it.
    pub async fn start(
        &self,
        kind: &str,
        cluster: &ClusterName,
        params: Value,
    ) -> Result<WorkflowHandle, WorkflowError> {
        self.check_live()?;
        let def = self.def(kind)?;
        let stages = build_stages(def.as_ref(), &params)?;
        let now = self.shared.clock.now();
        let id = WorkflowId::new(now);
        let record = WorkflowRecord {
            id: id.clone(),
            kind: kind.to_owned(),
            cluster: cluster.clone(),
            state: WorkflowState::Running,
            params,
            plan: Self::static_plan(&stages),
            created_at: now,
            ended_at: None,
            current_stage: 0,
            epoch: None,
            error: None,
            cancelled_by: None,
            resumed: 0,
            role_changing: def.role_changing(),
        };
        let record_key = keys::workflow_record(id.as_str());
        let owner_key = keys::workflow_owner(id.as_str());
        let claim = OwnerClaim { owner: self.shared.owner.clone(), since: now };
        let mut txn = Txn::new()
            .check(&record_key, Expect::Absent)
            .put(&record_key, to_json(&record_key, &record)?, None)
            .put(&owner_key, to_json(&owner_key, &claim)?, Some(self.shared.lease));
        let lock_key = keys::cluster_lock(cluster.as_str());
        if record.role_changing {
            let lock = ClusterLock { workflow: id.clone(), kind: kind.to_owned(), since: now };
            txn = txn.check(&lock_key, Expect::Absent).put(&lock_key, to_json(&lock_key, &lock)?, None);
        }
        let owner_rev = match self.shared.store.txn(txn).await {
            Ok(TxnOutcome::Done(rev)) => rev,
            Ok(TxnOutcome::Conflict { key, current }) if key == lock_key => {
                let held: ClusterLock = match current {
                    Some(v) => from_json(&lock_key, &v.value)?,
                    None => {
                        return Err(StoreError::Unavailable("the cluster lock changed while starting".into()).into());
                    }
                };
                return Err(WorkflowError::ClusterBusy {
                    cluster: cluster.clone(),
                    workflow: held.workflow,
                    kind: held.kind,
                });
            }
            Ok(TxnOutcome::Conflict { key, .. }) => {
                return Err(StoreError::Internal(format!("new workflow id collided at {key}")).into());
            }
            Err(StoreError::LeaseExpired(_)) => return Err(WorkflowError::Fenced),
            Err(e) => return Err(e.into()),
        };
        tracing::info!(workflow = %id, kind, cluster = %cluster, "workflow started");
        let mut ev = Event::new(cluster.clone(), "started", now);
        ev.workflow = Some(id.to_string());
        ev.kind = Some(kind.to_owned());
        self.shared.emit(ev).await;
        Ok(self.spawn(record, stages, owner_rev, BTreeMap::new()))
    }

    fn spawn(
        &self,
        record: WorkflowRecord,
        stages: Vec<Stage>,
        owner_rev: u64,
        journal: BTreeMap<String, StepRecord>,
    ) -> WorkflowHandle {
        let id = record.id.clone();
        let run = Arc::new(Run {
            shared: self.shared.clone(),
            id: id.clone(),
            stages,
            record: tokio::sync::Mutex::new(record),
            owner_rev,
            token: self.shared.stop.child_token(),
            cancelled_by: Mutex::new(None),
            halted: AtomicBool::new(false),
            approvals: watch::channel(0).0,
            epoch: Mutex::new(None),
            started: tokio::time::Instant::now(),
        });
        self.shared.running.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), run.clone());
        let (tx, rx) = oneshot::channel();
        self.shared.tracker.spawn(run.run(journal, tx));
        WorkflowHandle { id, done: rx }
    }

    /// Finds workflows left `running` or `waiting_approval` whose engine is
    /// gone (its lease expired, or it had this engine's name), claims them
    /// and runs each from its first step not journalled as succeeded; a step
    /// journalled as started without an end runs again (its attempt count
    /// continues). Workflows another live engine owns are left alone.
    pub async fn resume_all(&self) -> Result<Vec<WorkflowHandle>, WorkflowError> {
        self.check_live()?;
        let mut handles = Vec::new();
        for kv in self.shared.store.list(keys::WORKFLOWS).await? {
            if !kv.key.ends_with("/record") {
                continue;
            }
            let record: WorkflowRecord = from_json(&kv.key, &kv.value.value)?;
            if !matches!(record.state, WorkflowState::Running | WorkflowState::WaitingApproval) {
                continue;
            }
            if self.shared.running.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&record.id) {
                continue;
            }
            match self.resume_one(record).await {
                Ok(Some(h)) => handles.push(h),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cannot resume a workflow"),
            }
        }
        Ok(handles)
    }

    async fn resume_one(&self, mut record: WorkflowRecord) -> Result<Option<WorkflowHandle>, WorkflowError> {
        let id = record.id.clone();
        let owner_key = keys::workflow_owner(id.as_str());
        let expect = match self.shared.store.get(&owner_key).await? {
            None => Expect::Absent,
            Some(v) => {
                let claim: OwnerClaim = from_json(&owner_key, &v.value)?;
                if claim.owner != self.shared.owner {
                    tracing::info!(workflow = %id, owner = %claim.owner, "workflow is owned by a live engine; not resuming");
                    return Ok(None);
                }
                Expect::Revision(v.revision)
            }
        };
        let def = self.def(&record.kind)?;
        let stages = build_stages(def.as_ref(), &record.params)?;
        record.resumed += 1;
        record.role_changing = def.role_changing();
        let now = self.shared.clock.now();
        let claim = OwnerClaim { owner: self.shared.owner.clone(), since: now };
        let record_key = keys::workflow_record(id.as_str());
        let mut txn = Txn::new()
            .check(&owner_key, expect)
            .put(&owner_key, to_json(&owner_key, &claim)?, Some(self.shared.lease))
            .put(&record_key, to_json(&record_key, &record)?, None);
        let lock_key = keys::cluster_lock(record.cluster.as_str());
        let mut lock_conflict = None;
        if record.role_changing {
            match self.shared.store.get(&lock_key).await? {
                None => {
                    // Re-take a lock that vanished, so nothing else starts meanwhile.
                    let lock = ClusterLock { workflow: id.clone(), kind: record.kind.clone(), since: now };
                    txn = txn.check(&lock_key, Expect::Absent).put(&lock_key, to_json(&lock_key, &lock)?, None);
                }
                Some(v) => {
                    let lock: ClusterLock = from_json(&lock_key, &v.value)?;
                    if lock.workflow != id {
                        lock_conflict = Some(lock);
                    }
                }
            }
        }
        let owner_rev = match self.shared.store.txn(txn).await? {
            TxnOutcome::Done(rev) => rev,
            TxnOutcome::Conflict { key, .. } => {
                tracing::info!(workflow = %id, %key, "another engine claimed the workflow first");
                return Ok(None);
            }
        };
        let mut journal = BTreeMap::new();
        for kv in self.shared.store.list(&keys::workflow_steps_prefix(id.as_str())).await? {
            let rec: StepRecord = from_json(&kv.key, &kv.value.value)?;
            journal.insert(rec.name.clone(), rec);
        }
        tracing::info!(workflow = %id, kind = %record.kind, cluster = %record.cluster, resumed = record.resumed, "resuming workflow");
        let mut ev = Event::new(record.cluster.clone(), "resumed", now);
        ev.workflow = Some(id.to_string());
        ev.kind = Some(record.kind.clone());
        ev.epoch = record.epoch;
        self.shared.emit(ev).await;
        if let Some(lock) = lock_conflict {
            // Cannot happen through this engine; fail loudly rather than run
            // two role changes at once.
            let msg = format!("cluster lock is held by {} workflow {}", lock.kind, lock.workflow);
            tracing::error!(workflow = %id, "{msg}");
            let stages = vec![Stage::one(crate::Step::from_fn("resume-check", "check the cluster lock", move |_| {
                let msg = msg.clone();
                async move { Err(crate::StepError::fatal(msg)) }
            }))];
            record.role_changing = false;
            return Ok(Some(self.spawn(record, stages, owner_rev, BTreeMap::new())));
        }
        Ok(Some(self.spawn(record, stages, owner_rev, journal)))
    }

    /// Lets a workflow waiting at an approval gate go on, recording who
    /// approved. Returns the gates approved.
    pub async fn approve(&self, id: &WorkflowId, by: &str) -> Result<Vec<String>, WorkflowError> {
        let record = self.get(id).await?.ok_or_else(|| WorkflowError::NotFound(id.clone()))?;
        if record.state != WorkflowState::WaitingApproval {
            return Err(WorkflowError::NotWaitingApproval { id: id.clone(), state: record.state });
        }
        let waiting: Vec<String> = self
            .journal(id)
            .await?
            .into_iter()
            .filter(|s| s.state == StepState::WaitingApproval)
            .map(|s| s.name)
            .collect();
        if waiting.is_empty() {
            return Err(WorkflowError::NotWaitingApproval { id: id.clone(), state: record.state });
        }
        let signoff = Signoff { by: by.to_owned(), at: self.shared.clock.now() };
        for gate in &waiting {
            let key = keys::workflow_approval(id.as_str(), gate);
            // Approving twice keeps the first approval.
            self.shared.store.compare_and_set(&key, Expect::Absent, to_json(&key, &signoff)?, None).await?;
        }
        tracing::info!(workflow = %id, by, gates = ?waiting, "workflow approved");
        Ok(waiting)
    }

    /// Asks a workflow to stop: its running step is cancelled, it ends as
    /// `cancelled` and releases the cluster lock. Works whichever engine
    /// runs it (the request is a key in the store that the runner watches).
    pub async fn cancel(&self, id: &WorkflowId, by: &str) -> Result<(), WorkflowError> {
        let record = self.get(id).await?.ok_or_else(|| WorkflowError::NotFound(id.clone()))?;
        if record.state.is_terminal() {
            return Err(WorkflowError::Ended { id: id.clone(), state: record.state });
        }
        let key = keys::workflow_cancel(id.as_str());
        let signoff = Signoff { by: by.to_owned(), at: self.shared.clock.now() };
        if let Outcome::Done(_) =
            self.shared.store.compare_and_set(&key, Expect::Absent, to_json(&key, &signoff)?, None).await?
        {
            tracing::info!(workflow = %id, by, "workflow cancel requested");
        }
        let local = self.shared.running.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned();
        if let Some(run) = local {
            run.check_cancel().await;
        }
        Ok(())
    }

    /// A workflow's record.
    pub async fn get(&self, id: &WorkflowId) -> Result<Option<WorkflowRecord>, WorkflowError> {
        let key = keys::workflow_record(id.as_str());
        Ok(match self.shared.store.get(&key).await? {
            Some(v) => Some(from_json(&key, &v.value)?),
            None => None,
        })
    }

    /// A workflow's step journal, in stage order.
    pub async fn journal(&self, id: &WorkflowId) -> Result<Vec<StepRecord>, WorkflowError> {
        let mut out = Vec::new();
        for kv in self.shared.store.list(&keys::workflow_steps_prefix(id.as_str())).await? {
            out.push(from_json(&kv.key, &kv.value.value)?);
        }
        Ok(out)
    }

    /// Every workflow in the store, oldest first.
    pub async fn list(&self) -> Result<Vec<WorkflowRecord>, WorkflowError> {
        let mut out = Vec::new();
        for kv in self.shared.store.list(keys::WORKFLOWS).await? {
            if kv.key.ends_with("/record") {
                out.push(from_json(&kv.key, &kv.value.value)?);
            }
        }
        Ok(out)
    }

    /// Stops every running workflow where it is (they stay `running` in
    /// the store), waits for the runners, and gives up the engine's lease so
    /// another engine can resume them at once.
    pub async fn shutdown(&self) {
        self.shared.stop.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
        if let Err(e) = self.shared.store.revoke(self.shared.lease).await {
            tracing::warn!(error = %e, "cannot revoke the engine's lease; it expires by itself");
        }
    }
}

/// Keeps the engine's lease alive; if it is lost, stops every runner (their
/// claims are gone, so another engine may resume them).
async fn keep_alive(shared: Arc<Shared>, ttl: Duration) {
    let every = (ttl / 3).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match shared.store.keep_alive(shared.lease).await {
            Ok(()) => {}
            Err(StoreError::LeaseExpired(_)) => {
                tracing::error!(owner = %shared.owner, "the workflow engine lost its lease; stopping its workflows");
                shared.fenced.store(true, Ordering::SeqCst);
                shared.stop.cancel();
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the workflow engine's lease"),
        }
    }
}
