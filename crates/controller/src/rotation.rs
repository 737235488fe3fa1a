//! The `rotate-secrets` workflow (issue 16; docs/secrets.md): a rotation of
//! a cluster's managed roles run by the controller's engine, journalled
//! step by step and resumed by a restarted controller.
//!
//! - It holds the cluster's lock (a switchover, a failback or another
//!   rotation is refused while it runs) but never blocks a failover: the
//!   monitor keeps detecting while it runs ([`crate::Controller::busy`]
//!   does not count it), and a failover that must start cancels it first
//!   ([`preempt`]). The rotation's steps leave every store with a login the
//!   servers accept at every point (alternating: the stores are flipped only
//!   after every standby replayed the change and every proxy reloaded; see
//!   `pgdr_secrets::rotate`), so a cancelled rotation needs no undo; it is
//!   marked to run again, and [`run`] starts it once the cluster is free.
//! - [`run`] also starts scheduled rotations (`[clusters.secrets]
//!   schedule` or `every`), each cluster offset within `spread` by its name
//!   so clusters of one schedule do not rotate at once.
//!
//! Nothing here sees a password: the steps journal `pgdr_secrets`' reports
//! (versions, logins, stores), and the password lives only inside the
//! step that sets it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pgdr_api::controller::{RotateRequest, SecretsView, WorkflowStarted};
use pgdr_config::{Cluster, RotationSchedule};
use pgdr_drill::readiness::{Finding, Severity};
use pgdr_model::{ClusterName, Epoch, Role};
use pgdr_secrets::rotate::{Report, Topology, TopologySource};
use pgdr_store::Expect;
use pgdr_workflow::{
    ClusterLock, RetryPolicy, Stage, Step, StepContext, StepError, StepOutput, WorkflowDef, WorkflowId,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::controller::{Controller, ControllerError};
use crate::runtime::Shared;

pub const ROTATE_SECRETS: &str = "rotate-secrets";

/// How long a failover waits for a cancelled rotation to let the lock go.
const PREEMPT_WAIT: Duration = Duration::from_secs(5);
/// How often [`run`] looks for due and preempted rotations, at most.
const TICK: Duration = Duration::from_secs(30);

/// The parameters of a rotation, fixed when it starts (no secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateParams {
    pub cluster: ClusterName,
    /// Why it runs: an operator, the schedule, a rerun after a failover.
    pub reason: String,
    /// One managed role (default: every role of the cluster).
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub requested_by: Option<String>,
}

fn fatal(e: impl std::fmt::Display) -> StepError {
    StepError::fatal(e.to_string())
}

/// `/pgdr/clusters/<c>/secrets/rerun`: a rotation a failover preempted.
fn rerun_key(cluster: &str) -> String {
    format!("{}secrets/rerun", pgdr_store::keys::cluster_prefix(cluster))
}

/// The workflow kind, for the engine's registry.
pub fn def(sh: &Arc<Shared>) -> impl WorkflowDef + 'static {
    Def { sh: sh.clone() }
}

struct Def {
    sh: Arc<Shared>,
}

impl WorkflowDef for Def {
    fn kind(&self) -> &str {
        ROTATE_SECRETS
    }

    /// It takes the cluster's lock; a failover preempts it ([`preempt`]).
    fn role_changing(&self) -> bool {
        true
    }

    fn build(&self, params: &Value) -> Result<Vec<Stage>, String> {
        let p: RotateParams = serde_json::from_value(params.clone()).map_err(|e| format!("bad params: {e}"))?;
        let (_, roles) = pgdr_secrets::rotate::managed(&self.sh.config, p.cluster.as_str(), p.role.as_deref())
            .map_err(|e| e.to_string())?;
        let mut s: Vec<Stage> = Vec::new();
        s.push(
            step(&self.sh, &p, "check", "read the primary, the epoch, the replica set and every region's store", None)
                .retry(RetryPolicy {
                    max_attempts: 5,
                    initial: Duration::from_millis(500),
                    factor: 2.0,
                    max: Duration::from_secs(5),
                })
                .check("the cluster has a primary; no re-establish is running")
                .into(),
        );
        for r in roles {
            s.push(
                step(
                    &self.sh,
                    &p,
                    &format!("rotate_{}", r.name),
                    &format!(
                        "role {}: new password on the primary (epoch checked in its transaction), replayed by every standby, proxies reloaded, every region's store of the set written and logged in with",
                        r.name
                    ),
                    Some(r.name.clone()),
                )
                .retry(RetryPolicy::once())
                .check("stores are flipped to the changed login only after every standby replayed it and every proxy reloaded")
                .into(),
            );
        }
        s.push(
            step(&self.sh, &p, "report", "every role rotated and every store of the set logs in, else fail", None)
                .retry(RetryPolicy::once())
                .into(),
        );
        Ok(s)
    }
}

/// A step of the rotation, timed into `pgdr_workflow_step_seconds` like the
/// role changes' steps.
fn step(sh: &Arc<Shared>, p: &RotateParams, name: &str, description: &str, role: Option<String>) -> Step {
    let (sh, p, label) = (sh.clone(), p.clone(), name.to_owned());
    Step::from_fn(name, description, move |sc: StepContext| {
        let (sh, p, label, role) = (sh.clone(), p.clone(), label.clone(), role.clone());
        async move {
            let started = Instant::now();
            let out = match (label.as_str(), role) {
                ("check", _) => check(&sh, &p, &sc).await,
                ("report", _) => report(&sh, &p, &sc).await,
                (_, Some(role)) => rotate_role(&sh, &p, &role, &sc).await,
                (other, None) => Err(fatal(format!("no step {other}"))),
            };
            sh.metrics
                .step_seconds
                .get_or_create(&crate::metrics::StepLabel { kind: ROTATE_SECRETS.into(), step: label })
                .observe(started.elapsed().as_secs_f64());
            out
        }
    })
}

/// The live topology, read by the controller itself: the epoch and the
/// primary from the state store, each node from its agent now.
struct Live {
    sh: Arc<Shared>,
    cluster: ClusterName,
    /// This rotation's id: its own lock is not a role change in the way.
    own: Option<WorkflowId>,
}

#[async_trait]
impl TopologySource for Live {
    async fn current(&self) -> Result<Topology, String> {
        let c = self.sh.cluster(self.cluster.as_str()).ok_or_else(|| format!("no cluster {}", self.cluster))?;
        let state = self
            .sh
            .clusters
            .state(&self.cluster)
            .await
            .map_err(|e| format!("state store: {e}"))?
            .ok_or_else(|| format!("cluster {} has no recorded state yet", self.cluster))?;
        let primary = state.primary.clone().ok_or_else(|| format!("cluster {} has no primary now", self.cluster))?;
        let statuses = self.sh.observe_within(c, Some(Duration::from_secs(3))).await;
        let (mut replicas, mut excluded, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
        for n in &c.nodes {
            if n.name == primary {
                continue;
            }
            match statuses.get(&n.name) {
                Some(Ok(s)) if s.fenced => excluded.push((n.name.to_string(), "fenced".to_owned())),
                Some(Ok(s)) if s.role == Role::Replica => replicas.push(n.name.to_string()),
                Some(Ok(s)) if !matches!(s.role, Role::Down | Role::Unknown) => {
                    excluded.push((n.name.to_string(), format!("role {}", s.role)))
                }
                // Its agent did not answer, or its server is down: the
                // rotation asks the server directly.
                _ => unknown.push(n.name.to_string()),
            }
        }
        let busy = lock_of(&self.sh, self.cluster.as_str())
            .await
            .filter(|l| Some(&l.workflow) != self.own.as_ref())
            .map(|l| format!("{} {}", l.kind, l.workflow.as_str()));
        Ok(Topology { epoch: state.epoch.0, primary: primary.to_string(), replicas, excluded, unknown, busy })
    }

    async fn refresh_proxies(&self) -> Vec<(String, Result<(), String>)> {
        self.sh.proxies.refresh_users(&self.cluster).await
    }
}

async fn lock_of(sh: &Shared, cluster: &str) -> Option<ClusterLock> {
    let v = sh.store.get(&pgdr_store::keys::cluster_lock(cluster)).await.ok()??;
    serde_json::from_slice(&v.value).ok()
}

async fn check(sh: &Arc<Shared>, p: &RotateParams, sc: &StepContext) -> Result<StepOutput, StepError> {
    let live = Live { sh: sh.clone(), cluster: p.cluster.clone(), own: Some(sc.workflow.clone()) };
    let t = live.current().await.map_err(StepError::retryable)?;
    let status =
        pgdr_secrets::rotate::status(&sh.config, p.cluster.as_str(), p.role.as_deref(), false).await.map_err(fatal)?;
    Ok(StepOutput::json(json!({
        "epoch": t.epoch,
        "primary": t.primary,
        "replicas": t.replicas,
        "excluded": t.excluded,
        "unknown": t.unknown,
        "stores": stored(&status),
    }))
    .with_epoch(Epoch(t.epoch)))
}

/// What each store holds, in words (`app@east: v3 app_b`).
fn stored(r: &Report) -> Vec<String> {
    r.roles
        .iter()
        .flat_map(|role| {
            role.stores.iter().map(move |s| match (&s.version, &s.login, &s.error) {
                (Some(v), Some(l), _) => format!("{}@{}: v{v} {l}", role.role, s.region),
                (_, _, Some(e)) => format!("{}@{}: {e}", role.role, s.region),
                _ => format!("{}@{}: nothing stored", role.role, s.region),
            })
        })
        .collect()
}

async fn rotate_role(
    sh: &Arc<Shared>,
    p: &RotateParams,
    role: &str,
    sc: &StepContext,
) -> Result<StepOutput, StepError> {
    let live = Live { sh: sh.clone(), cluster: p.cluster.clone(), own: Some(sc.workflow.clone()) };
    let report =
        pgdr_secrets::rotate::rotate(&sh.config, p.cluster.as_str(), Some(role), &live).await.map_err(fatal)?;
    // One event per store, like the steps' own: written, verified, failed.
    for r in &report.roles {
        for s in &r.stores {
            let (state, msg) = match (&s.error, &s.skipped, s.written, s.verified) {
                (Some(e), _, _, _) => {
                    ("secret_store_failed", format!("role {} store {} ({}): {e}", r.role, s.store, s.region))
                }
                (_, Some(k), _, _) => {
                    ("secret_store_skipped", format!("role {} store {} ({}): {k}", r.role, s.store, s.region))
                }
                (_, _, true, Some(true)) => (
                    "secret_store_verified",
                    format!(
                        "role {} store {} ({}): version {} ({}) written and logs in through {}",
                        r.role,
                        s.store,
                        s.region,
                        s.version.unwrap_or_default(),
                        s.login.as_deref().unwrap_or("-"),
                        s.via.as_deref().unwrap_or("-")
                    ),
                ),
                (_, _, true, _) => (
                    "secret_store_written",
                    format!(
                        "role {} store {} ({}): version {} written",
                        r.role,
                        s.store,
                        s.region,
                        s.version.unwrap_or_default()
                    ),
                ),
                _ => continue,
            };
            let mut ev = sh.event(&p.cluster, state, msg);
            ev.workflow = Some(sc.workflow.as_str().to_owned());
            ev.kind = Some(ROTATE_SECRETS.to_owned());
            ev.step = Some(sc.step.clone());
            ev.epoch = r.epoch.map(Epoch);
            sh.emit(ev).await;
        }
    }
    let role_report = report.roles.into_iter().next();
    let epoch = role_report.as_ref().and_then(|r| r.epoch);
    let ok = role_report.as_ref().is_some_and(|r| r.ok);
    let out = StepOutput::json(json!({"ok": ok, "report": role_report}));
    Ok(match epoch {
        Some(e) => out.with_epoch(Epoch(e)),
        None => out,
    })
}

/// The end: fails the workflow (its error names why) unless every role
/// rotated and every store of the set logs in.
async fn report(sh: &Arc<Shared>, p: &RotateParams, sc: &StepContext) -> Result<StepOutput, StepError> {
    let (_, roles) = pgdr_secrets::rotate::managed(&sh.config, p.cluster.as_str(), p.role.as_deref()).map_err(fatal)?;
    let mut problems = Vec::new();
    let mut done = Vec::new();
    for r in roles {
        let out = sc.output(&format!("rotate_{}", r.name));
        let rep = out.and_then(|o| o.get("report"));
        let ok = out.and_then(|o| o.get("ok")).and_then(Value::as_bool) == Some(true);
        if ok {
            done.push(format!(
                "{}: version {} ({})",
                r.name,
                rep.and_then(|x| x.get("version")).and_then(Value::as_u64).unwrap_or_default(),
                rep.and_then(|x| x.get("login")).and_then(Value::as_str).unwrap_or("-")
            ));
            continue;
        }
        let mut why: Vec<String> = Vec::new();
        if let Some(e) = rep.and_then(|x| x.get("error")).and_then(Value::as_str) {
            why.push(e.to_owned());
        }
        for s in rep.and_then(|x| x.get("stores")).and_then(Value::as_array).into_iter().flatten() {
            if let Some(e) = s.get("error").and_then(Value::as_str) {
                why.push(format!("store {}: {e}", s.get("region").and_then(Value::as_str).unwrap_or("?")));
            }
        }
        for x in rep.and_then(|x| x.get("replicas")).and_then(Value::as_array).into_iter().flatten() {
            if x.get("replayed").and_then(Value::as_bool) == Some(false) {
                why.push(format!("standby {} did not replay", x.get("node").and_then(Value::as_str).unwrap_or("?")));
            }
        }
        problems.push(format!("role {}: {}", r.name, if why.is_empty() { "failed".into() } else { why.join("; ") }));
    }
    // The status page's stored-login column, checked again now.
    sh.logins_due.notify_one();
    if problems.is_empty() {
        Ok(StepOutput::json(json!({"rotated": done})))
    } else {
        Err(fatal(format!("{} (every store keeps a login that logs in; rotate again to finish)", problems.join(" | "))))
    }
}

// ---------------------------------------------------------------- starting

/// Starts a rotation (or plans it, with `dry_run`). Refused while a role
/// change, another rotation (the cluster's lock) or a re-establish runs.
pub async fn start(ctl: &Controller, cluster: &str, req: RotateRequest) -> Result<WorkflowStarted, ControllerError> {
    let c = ctl.sh.cluster(cluster).ok_or_else(|| ControllerError::UnknownCluster(cluster.to_owned()))?;
    pgdr_secrets::rotate::managed(&ctl.sh.config, cluster, req.role.as_deref())
        .map_err(|e| ControllerError::BadRequest(e.to_string()))?;
    let params = RotateParams {
        cluster: c.name.clone(),
        reason: format!("rotation requested by {}", req.requested_by.as_deref().unwrap_or("an operator")),
        role: req.role.clone(),
        requested_by: req.requested_by.clone(),
    };
    let value = serde_json::to_value(&params).map_err(|e| ControllerError::BadRequest(e.to_string()))?;
    let plan = ctl.engine.plan(ROTATE_SECRETS, &c.name, value.clone()).await?;
    let mut lines: Vec<String> = Vec::new();
    for stage in &plan.stages {
        for s in stage {
            lines.push(format!("{}: {}", s.name, s.description));
            for k in &s.checks {
                lines.push(format!("    check: {k}"));
            }
        }
    }
    if req.dry_run {
        lines.extend(would_change(ctl, &params).await);
        if let Some(b) = &plan.blocked_by {
            lines.push(format!("blocked: {} workflow {} is running on the cluster", b.kind, b.workflow.as_str()));
        }
        return Ok(WorkflowStarted {
            id: None,
            kind: ROTATE_SECRETS.into(),
            cluster: c.name.clone(),
            plan: lines,
            dry_run: true,
        });
    }
    let id = start_params(ctl, params).await?;
    Ok(WorkflowStarted {
        id: Some(id.as_str().to_owned()),
        kind: ROTATE_SECRETS.into(),
        cluster: c.name.clone(),
        plan: lines,
        dry_run: false,
    })
}

async fn start_params(ctl: &Controller, params: RotateParams) -> Result<WorkflowId, ControllerError> {
    if let Some(id) = ctl.reestablishing(&params.cluster).await?.first() {
        return Err(ControllerError::Conflict(format!(
            "re-establish workflow {} is running on cluster {}: rotate once it ends",
            id.as_str(),
            params.cluster
        )));
    }
    let value = serde_json::to_value(&params).map_err(|e| ControllerError::BadRequest(e.to_string()))?;
    let handle = ctl.engine.start(ROTATE_SECRETS, &params.cluster, value).await?;
    tracing::info!(cluster = %params.cluster, workflow = %handle.id, reason = %params.reason, "secret rotation started");
    Ok(handle.id)
}

/// The live check of a dry run: what each role's rotation would change.
async fn would_change(ctl: &Controller, p: &RotateParams) -> Vec<String> {
    let live = Live { sh: ctl.sh.clone(), cluster: p.cluster.clone(), own: None };
    let mut out = Vec::new();
    match live.current().await {
        Ok(t) => out.push(format!(
            "live check: primary {} at epoch {}; standbys of the set: {}; left out: {}",
            t.primary,
            t.epoch,
            if t.replicas.is_empty() { "none".into() } else { t.replicas.join(", ") },
            if t.excluded.is_empty() && t.unknown.is_empty() {
                "none".into()
            } else {
                t.excluded
                    .iter()
                    .map(|(n, w)| format!("{n} ({w})"))
                    .chain(t.unknown.iter().map(|n| format!("{n} (no answer)")))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )),
        Err(e) => out.push(format!("live check: {e}")),
    }
    if let Ok(status) = pgdr_secrets::rotate::status(&ctl.sh.config, p.cluster.as_str(), p.role.as_deref(), false).await
    {
        for line in stored(&status) {
            out.push(format!("live check: store {line}"));
        }
    }
    out
}

/// A failover must start on `cluster`: a rotation holding the lock is
/// cancelled (its steps leave every store with a login that logs in), its
/// rerun recorded, and the lock waited for (at most [`PREEMPT_WAIT`]).
pub async fn preempt(ctl: &Controller, cluster: &ClusterName, by: &str) {
    let Some(lock) = lock_of(&ctl.sh, cluster.as_str()).await else { return };
    if lock.kind != ROTATE_SECRETS {
        return;
    }
    let rerun = json!({"preempted": lock.workflow.as_str(), "by": by, "at": Utc::now().to_rfc3339()});
    if let Err(e) = ctl.sh.store.put(&rerun_key(cluster.as_str()), rerun.to_string().into_bytes(), None).await {
        tracing::warn!(cluster = %cluster, "cannot record the preempted rotation's rerun: {e}");
    }
    match ctl.engine.cancel(&lock.workflow, by).await {
        Ok(()) => {
            tracing::warn!(cluster = %cluster, workflow = %lock.workflow, "secret rotation preempted: {by}; it runs again once the cluster is free")
        }
        Err(e) => {
            tracing::warn!(cluster = %cluster, workflow = %lock.workflow, "cannot cancel the secret rotation: {e}")
        }
    }
    let deadline = Instant::now() + PREEMPT_WAIT;
    while Instant::now() < deadline {
        match lock_of(&ctl.sh, cluster.as_str()).await {
            Some(l) if l.workflow == lock.workflow => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => return,
        }
    }
    tracing::warn!(cluster = %cluster, workflow = %lock.workflow, "the cancelled rotation still holds the lock");
}

/// Whether the cluster's lock is held by a rotation (which a failover
/// preempts: detection goes on while it runs).
pub async fn is_rotation_lock(sh: &Shared, cluster: &str) -> bool {
    lock_of(sh, cluster).await.is_some_and(|l| l.kind == ROTATE_SECRETS)
}

/// [`is_rotation_lock`] of a lock's stored value (a value that does not
/// parse is not a rotation's).
pub fn is_rotation_lock_value(value: &[u8]) -> bool {
    serde_json::from_slice::<ClusterLock>(value).is_ok_and(|l| l.kind == ROTATE_SECRETS)
}

// ---------------------------------------------------------------- schedule

/// The fixed offset of `cluster` within `spread`: FNV-1a of its name, so it
/// is the same in every controller and every run.
pub fn offset(cluster: &str, spread: Duration) -> Duration {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cluster.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let ms = spread.as_millis() as u64;
    if ms == 0 { Duration::ZERO } else { Duration::from_millis(h % ms) }
}

/// When the next scheduled rotation of a cluster is due: the schedule's
/// next time after `last` (the newest stored secret's `rotated_at`, or when
/// the controller started), plus the cluster's offset within `spread`.
pub fn next_due(
    schedule: &RotationSchedule,
    cluster: &str,
    spread: Duration,
    last: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let base = match schedule {
        RotationSchedule::Every(d) => last + chrono::Duration::from_std(*d).ok()?,
        RotationSchedule::Cron(expr) => expr.parse::<croner::Cron>().ok()?.find_next_occurrence(&last, false).ok()?,
    };
    Some(base + chrono::Duration::from_std(offset(cluster, spread)).ok()?)
}

/// The newest `rotated_at` of the cluster's stores (any role).
async fn last_rotated(sh: &Shared, c: &Cluster) -> Option<DateTime<Utc>> {
    let status = pgdr_secrets::rotate::status(&sh.config, c.name.as_str(), None, false).await.ok()?;
    let now = Utc::now();
    status
        .roles
        .iter()
        .flat_map(|r| &r.stores)
        .filter_map(|s| s.age_seconds)
        .min()
        .map(|age| now - chrono::Duration::seconds(age as i64))
}

/// Starts the scheduled rotations when due and the rotations a failover
/// preempted once their cluster is free, until `cancel` fires.
pub async fn run(ctl: Controller, cancel: CancellationToken) {
    let clusters: Vec<Cluster> = ctl.sh.config.clusters.iter().filter(|c| c.secrets.is_some()).cloned().collect();
    if clusters.is_empty() {
        return;
    }
    let started = Utc::now();
    // When each cluster's last scheduled rotation was started here: a
    // failed one waits for the next due time (the next schedule point).
    let mut attempted: BTreeMap<ClusterName, DateTime<Utc>> = BTreeMap::new();
    loop {
        let mut wait = TICK;
        for c in &clusters {
            let busy = lock_of(&ctl.sh, c.name.as_str()).await.is_some()
                || ctl.reestablishing(&c.name).await.map(|r| !r.is_empty()).unwrap_or(true);
            // A rotation a failover preempted runs again first.
            if let Ok(Some(v)) = ctl.sh.store.get(&rerun_key(c.name.as_str())).await {
                if busy {
                    wait = wait.min(Duration::from_secs(2));
                    continue;
                }
                let why = String::from_utf8_lossy(&v.value).to_string();
                let p = RotateParams {
                    cluster: c.name.clone(),
                    reason: format!("rerun of a rotation a failover preempted: {why}"),
                    role: None,
                    requested_by: Some("controller".into()),
                };
                match start_params(&ctl, p).await {
                    Ok(_) => {
                        let _ = ctl.sh.store.delete(&rerun_key(c.name.as_str()), Expect::Any).await;
                    }
                    Err(e) => {
                        tracing::warn!(cluster = %c.name, "cannot rerun the preempted rotation yet: {e}");
                        wait = wait.min(Duration::from_secs(2));
                    }
                }
                continue;
            }
            let Some(s) = c.secrets.as_ref() else { continue };
            let Some(schedule) = &s.schedule else { continue };
            let last = last_rotated(&ctl.sh, c).await.unwrap_or(started);
            let last = attempted.get(&c.name).map_or(last, |a| last.max(*a));
            let Some(due) = next_due(schedule, c.name.as_str(), s.spread, last) else { continue };
            let now = Utc::now();
            if due > now {
                wait = wait.min((due - now).to_std().unwrap_or(TICK));
                continue;
            }
            // Due: look again soon once the cluster is free, and after this
            // start (the next due time counts from the rotation it stores).
            wait = wait.min(Duration::from_secs(2));
            if busy {
                continue;
            }
            attempted.insert(c.name.clone(), now);
            let p = RotateParams {
                cluster: c.name.clone(),
                reason: format!("scheduled ({schedule}), due {}", due.to_rfc3339()),
                role: None,
                requested_by: Some("schedule".into()),
            };
            if let Err(e) = start_params(&ctl, p).await {
                tracing::error!(cluster = %c.name, "cannot start the scheduled secret rotation: {e}");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait.max(Duration::from_millis(200))) => {}
        }
    }
}

/// `GET /v1/clusters/{name}/secrets`: the latest rotation, the next due
/// time and a pending rerun (never a secret).
pub async fn view(ctl: &Controller, cluster: &str) -> Result<SecretsView, ControllerError> {
    let c = ctl.sh.cluster(cluster).ok_or_else(|| ControllerError::UnknownCluster(cluster.to_owned()))?;
    let s =
        c.secrets.as_ref().ok_or_else(|| ControllerError::BadRequest(format!("cluster {cluster} manages no roles")))?;
    let last = ctl
        .engine
        .list()
        .await?
        .into_iter()
        .filter(|r| r.kind == ROTATE_SECRETS && r.cluster == c.name)
        .max_by_key(|r| r.created_at);
    let last = match last {
        Some(r) => Some(ctl.workflow_view(r.id.as_str()).await?),
        None => None,
    };
    let next_due = match &s.schedule {
        Some(sch) => {
            let at = last_rotated(&ctl.sh, c).await.unwrap_or_else(Utc::now);
            next_due(sch, cluster, s.spread, at).map(|d| d.to_rfc3339())
        }
        None => None,
    };
    let rerun = ctl.sh.store.get(&rerun_key(cluster)).await?.map(|v| String::from_utf8_lossy(&v.value).to_string());
    Ok(SecretsView {
        cluster: c.name.clone(),
        schedule: s.schedule.as_ref().map(|x| x.to_string()),
        next_due,
        last,
        rerun,
    })
}

// ---------------------------------------------------------------- stored logins

/// How often the controller logs in with every region's stored secret for
/// the status page; a rotation that ends asks for a check at once.
const LOGIN_CHECK: Duration = Duration::from_secs(15);

/// Whether one region's stored secret of one managed role logs in now,
/// through the endpoint it names (the region's proxy writer). Never the
/// password.
#[derive(Debug, Clone, Serialize)]
pub struct StoredLogin {
    pub role: String,
    pub region: String,
    /// The store, as it describes itself (a path, an ARN).
    pub store: String,
    pub version: Option<u64>,
    pub login: Option<String>,
    /// `Some(false)`: the login was refused or failed; `None`: nothing was
    /// tried (no secret stored yet, the store could not be read).
    pub logs_in: Option<bool>,
    /// The endpoint logged in through.
    pub via: Option<String>,
    pub error: Option<String>,
    pub too_old: bool,
    /// When this was checked (RFC 3339, UTC).
    pub checked_at: String,
}

/// Logs in with every region's stored secret of `cluster` now.
pub async fn check_logins(cfg: &pgdr_config::Config, cluster: &str) -> Result<Vec<StoredLogin>, String> {
    let report = pgdr_secrets::rotate::status(cfg, cluster, None, true).await.map_err(|e| e.to_string())?;
    let at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok(report
        .roles
        .iter()
        .flat_map(|r| {
            r.stores.iter().map(|s| StoredLogin {
                role: r.role.clone(),
                region: s.region.clone(),
                store: s.store.clone(),
                version: s.version,
                login: s.login.clone(),
                logs_in: s.verified,
                via: s.via.clone(),
                error: s.error.clone(),
                too_old: s.too_old,
                checked_at: at.clone(),
            })
        })
        .collect())
}

/// Keeps [`Shared::stored_logins`] fresh for the status page: every
/// [`LOGIN_CHECK`], and at once when a rotation ends, until `cancel` fires.
pub async fn watch_logins(ctl: Controller, cancel: CancellationToken) {
    let clusters: Vec<ClusterName> =
        ctl.sh.config.clusters.iter().filter(|c| c.secrets.is_some()).map(|c| c.name.clone()).collect();
    if clusters.is_empty() {
        return;
    }
    loop {
        for c in &clusters {
            let checked = tokio::select! {
                _ = cancel.cancelled() => return,
                r = check_logins(&ctl.sh.config, c.as_str()) => r,
            };
            match checked {
                Ok(list) => {
                    if let Ok(mut m) = ctl.sh.stored_logins.lock() {
                        m.insert(c.clone(), list);
                    }
                }
                Err(e) => tracing::warn!(cluster = %c, "cannot check the stored secrets: {e}"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(LOGIN_CHECK) => {}
            _ = ctl.sh.logins_due.notified() => {}
        }
    }
}

// ---------------------------------------------------------------- readiness

/// Readiness (`pgdr check`, and the controller's scheduled run shown on
/// the status page): does each region's stored secret log in now, through
/// the endpoint it names? One finding per role and region; never the
/// password.
pub async fn findings(cfg: &pgdr_config::Config, only: Option<&str>) -> Vec<Finding> {
    let mut out = Vec::new();
    let clusters = cfg.clusters.iter().filter(|c| c.secrets.is_some() && only.is_none_or(|o| o == c.name.as_str()));
    for c in clusters {
        let report = match pgdr_secrets::rotate::status(cfg, c.name.as_str(), None, true).await {
            Ok(r) => r,
            Err(e) => {
                out.push(Finding {
                    severity: Severity::Error,
                    cluster: c.name.to_string(),
                    check: "secrets".into(),
                    node: None,
                    message: e.to_string(),
                    fix: String::new(),
                });
                continue;
            }
        };
        for r in &report.roles {
            for s in &r.stores {
                let what = format!("role {}'s secret in {}'s store", r.role, s.region);
                let (severity, message, fix) = match (&s.error, s.version) {
                    (Some(e), None) if e.contains("no secret stored yet") => (
                        Severity::Warning,
                        format!("{what}: none stored yet"),
                        format!("`pgdr secrets rotate --cluster {}`", c.name),
                    ),
                    (Some(e), _) => (
                        Severity::Error,
                        format!("{what}: {e}"),
                        format!("`pgdr secrets rotate --cluster {}` once the store and the endpoint answer", c.name),
                    ),
                    (None, _) if s.too_old => (
                        Severity::Warning,
                        format!("{what} (version {}) is older than max_age", s.version.unwrap_or(0)),
                        format!("`pgdr secrets rotate --cluster {}`", c.name),
                    ),
                    (None, _) => (
                        Severity::Ok,
                        format!(
                            "{what} (version {}, login {}) logs in through {}",
                            s.version.unwrap_or(0),
                            s.login.as_deref().unwrap_or("-"),
                            s.via.as_deref().unwrap_or("-")
                        ),
                        String::new(),
                    ),
                };
                out.push(Finding {
                    severity,
                    cluster: c.name.to_string(),
                    check: "secrets".into(),
                    node: None,
                    message,
                    fix,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_spread_clusters_and_stay_put() {
        let spread = Duration::from_secs(600);
        let a = offset("c01", spread);
        assert_eq!(a, offset("c01", spread), "the same every time");
        assert!(a < spread);
        let all: std::collections::BTreeSet<_> =
            (1..=30).map(|i| offset(&format!("c{i:02}"), spread).as_secs()).collect();
        assert!(all.len() > 20, "30 clusters land on {} distinct seconds", all.len());
        assert_eq!(offset("c01", Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn due_times_follow_the_schedule_plus_the_offset() {
        let last: DateTime<Utc> = "2026-12-03T01:00:00Z".parse().expect("test value");
        let spread = Duration::from_secs(600);
        let off = chrono::Duration::from_std(offset("main", spread)).expect("test value");
        let cron = RotationSchedule::Cron("0 3 * * *".into());
        assert_eq!(
            next_due(&cron, "main", spread, last).expect("test value"),
            "2026-12-03T03:00:00Z".parse::<DateTime<Utc>>().expect("test value") + off
        );
        let every = RotationSchedule::Every(Duration::from_secs(12 * 3600));
        assert_eq!(
            next_due(&every, "main", spread, last).expect("test value"),
            "2026-12-03T13:00:00Z".parse::<DateTime<Utc>>().expect("test value") + off
        );
        assert_eq!(
            next_due(&every, "main", Duration::ZERO, last).expect("test value"),
            "2026-12-03T13:00:00Z".parse::<DateTime<Utc>>().expect("test value")
        );
    }
}
