//! Scheduled backups: the controller's scheduler loop and the `backup`
//! workflow.
//!
//! The loop ([`run`]) asks `pgdr-backup` which clusters their tier's cron
//! schedule says are due (the same rule as `pgdr_backup::job::run_due`: never
//! backed up, or a scheduled time passed since the newest backup) and starts
//! one `backup` workflow per due cluster on the engine: a `backup` step (the
//! base backup to the tier's destination) then a stage with one
//! `copy_to_<destination>` step per copy destination, run in parallel, then
//! a `prune` step applying the tier's retention (never on immutable
//! destinations). The engine journals each step, retries the retryable
//! failures (`BackupError::is_retryable`: network or storage trouble) with
//! backoff, and emits step events; at the end the loop adds a
//! `backup_succeeded` or `backup_failed` event naming the backup and its
//! copies.
//!
//! Backups never change roles: the workflow kind is not role-changing, so it
//! never takes (or waits for) the cluster's role-change lock and a failover
//! can always start while a backup runs.
//!
//! Metrics (`pgdr_backup_*`) come from two places: each run's bytes and
//! duration per destination, and `pgdr_backup::status` (newest backup per
//! cluster and destination, its age against the tier's RPO), refreshed on
//! every pass of the loop and after every workflow.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pgdr_backup::base::{self, BackupOptions};
use pgdr_backup::schedule::Selector;
use pgdr_backup::{BackupError, Dest, Progress};
use pgdr_model::ClusterName;
use pgdr_workflow::{RetryPolicy, Stage, Step, StepContext, StepError, StepOutput, WorkflowDef, WorkflowState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Controller;
use crate::runtime::Shared;

/// The workflow kind.
pub const KIND: &str = "backup";

/// The longest the loop sleeps between looks at the schedules (it also
/// refreshes the status metrics then).
const MAX_WAIT: Duration = Duration::from_secs(30);
const MIN_WAIT: Duration = Duration::from_secs(1);

type F64Gauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestLabel {
    pub cluster: String,
    pub destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabel {
    pub cluster: String,
    pub tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub cluster: String,
    pub outcome: String,
}

/// The `pgdr_backup_*` metric families.
#[derive(Debug, Default)]
pub struct BackupMetrics {
    pub bytes: Family<DestLabel, F64Gauge>,
    pub stored_bytes: Family<DestLabel, F64Gauge>,
    pub duration_seconds: Family<DestLabel, F64Gauge>,
    pub last_success: Family<DestLabel, F64Gauge>,
    pub newest_age: Family<DestLabel, F64Gauge>,
    pub backups: Family<DestLabel, F64Gauge>,
    pub wal_files: Family<DestLabel, F64Gauge>,
    pub readable: Family<DestLabel, F64Gauge>,
    pub rpo_seconds: Family<TierLabel, F64Gauge>,
    pub runs: Family<OutcomeLabel, Counter>,
}

impl BackupMetrics {
    /// Adds the families to the controller's registry.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "pgdr_backup_bytes",
            "Plaintext bytes of the last backup (primary destination) or copy (copy destinations) this controller ran",
            self.bytes.clone(),
        );
        r.register(
            "pgdr_backup_duration_seconds",
            "Duration of the last backup or copy this controller ran, per destination",
            self.duration_seconds.clone(),
        );
        r.register(
            "pgdr_backup_last_success_timestamp_seconds",
            "Start time (Unix seconds) of the newest complete backup at the destination",
            self.last_success.clone(),
        );
        r.register(
            "pgdr_backup_newest_age_seconds",
            "Age of the newest complete backup at the destination (compare with pgdr_backup_tier_rpo_seconds)",
            self.newest_age.clone(),
        );
        r.register(
            "pgdr_backup_newest_stored_bytes",
            "Stored (compressed, encrypted) bytes of the newest backup at the destination",
            self.stored_bytes.clone(),
        );
        r.register("pgdr_backup_count", "Complete backups at the destination", self.backups.clone());
        r.register("pgdr_backup_wal_files", "Archived WAL files at the destination", self.wal_files.clone());
        r.register(
            "pgdr_backup_destination_readable",
            "1 when the destination could be listed on the last look, else 0",
            self.readable.clone(),
        );
        r.register("pgdr_backup_tier_rpo_seconds", "The RPO of the cluster's tier", self.rpo_seconds.clone());
        r.register("pgdr_backup_runs", "Scheduled backup workflows by outcome", self.runs.clone());
    }

    /// Sets the gauges read from the destinations.
    pub fn set_status(&self, list: &[pgdr_backup::status::BackupStatus]) {
        for s in list {
            let l = DestLabel { cluster: s.cluster.clone(), destination: s.destination.clone() };
            self.readable.get_or_create(&l).set(if s.error.is_some() { 0.0 } else { 1.0 });
            self.rpo_seconds
                .get_or_create(&TierLabel { cluster: s.cluster.clone(), tier: s.tier.clone() })
                .set(s.rpo_seconds as f64);
            if s.error.is_some() {
                continue;
            }
            self.backups.get_or_create(&l).set(s.backups as f64);
            self.wal_files.get_or_create(&l).set(s.wal_files as f64);
            if let Some(at) = s.newest_at.as_deref().and_then(|t| DateTime::parse_from_rfc3339(t).ok()) {
                self.last_success.get_or_create(&l).set(at.timestamp_millis() as f64 / 1000.0);
            }
            if let Some(a) = s.newest_age_seconds {
                self.newest_age.get_or_create(&l).set(a as f64);
            }
            if let Some(b) = s.newest_stored_bytes {
                self.stored_bytes.get_or_create(&l).set(b as f64);
            }
        }
    }

    fn measured(&self, cluster: &str, destination: &str, bytes: u64, seconds: f64) {
        let l = DestLabel { cluster: cluster.to_owned(), destination: destination.to_owned() };
        self.bytes.get_or_create(&l).set(bytes as f64);
        self.duration_seconds.get_or_create(&l).set(seconds);
    }
}

/// The `backup` workflow's parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupParams {
    pub destination: String,
    #[serde(default)]
    pub copies: Vec<String>,
}

impl BackupParams {
    /// The tier's destination and copies for `cluster`.
    pub fn for_cluster(config: &pgdr_config::Config, cluster: &str) -> Result<BackupParams, BackupError> {
        let p = pgdr_backup::policy(config, cluster)?;
        Ok(BackupParams {
            destination: p.destination.clone(),
            copies: p.copies.iter().filter(|c| **c != p.destination).cloned().collect(),
        })
    }
}

/// The `backup` workflow definition.
pub struct BackupDef {
    sh: Arc<Shared>,
    /// Resume journals of copies (a retried copy continues where it stopped).
    journal_dir: PathBuf,
}

/// The definition to register in the engine's registry.
pub fn def(sh: &Arc<Shared>) -> BackupDef {
    BackupDef { sh: sh.clone(), journal_dir: sh.config.controller.state_dir.join("backup-journal") }
}

fn step_error(e: BackupError) -> StepError {
    if e.is_retryable() { StepError::retryable(e.to_string()) } else { StepError::fatal(e.to_string()) }
}

fn backup_retry() -> RetryPolicy {
    RetryPolicy { max_attempts: 3, initial: Duration::from_secs(5), factor: 3.0, max: Duration::from_secs(120) }
}

fn copy_retry() -> RetryPolicy {
    // Copies resume from their journal, so retrying is cheap.
    RetryPolicy { max_attempts: 6, initial: Duration::from_secs(5), factor: 3.0, max: Duration::from_secs(300) }
}

async fn backup_step(sh: Arc<Shared>, p: BackupParams, ctx: StepContext) -> Result<StepOutput, StepError> {
    let cluster = ctx.cluster.as_str().to_owned();
    let policy = pgdr_backup::policy(&sh.config, &cluster).map_err(step_error)?;
    let dest = Dest::open_named(&sh.config, &p.destination).map_err(|e| step_error(e.into()))?;
    let opts = BackupOptions { level: policy.compression_level, ..BackupOptions::default() };
    let (m, measured) = base::run_backup(&sh.config, &cluster, &dest, &opts, &Progress::default(), &ctx.cancel)
        .await
        .map_err(step_error)?;
    sh.metrics.backup.measured(&cluster, &dest.name, measured.plain_bytes, measured.seconds);
    Ok(StepOutput::json(json!({
        "backup": m.id,
        "destination": dest.name,
        "source_node": m.source_node,
        "from_replica": m.from_replica,
        "plain_bytes": measured.plain_bytes,
        "stored_bytes": measured.stored_bytes,
        "seconds": measured.seconds,
    })))
}

async fn copy_step(
    sh: Arc<Shared>,
    p: BackupParams,
    target: String,
    journal_dir: PathBuf,
    ctx: StepContext,
) -> Result<StepOutput, StepError> {
    let cluster = ctx.cluster.as_str().to_owned();
    let id = ctx
        .output("backup")
        .and_then(|o| o.get("backup"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| StepError::fatal("the backup step left no backup id"))?;
    let src = Dest::open_named(&sh.config, &p.destination).map_err(|e| step_error(e.into()))?;
    let dst = Dest::open_named(&sh.config, &target).map_err(|e| step_error(e.into()))?;
    let progress = Progress::default();
    let started = Instant::now();
    let r = pgdr_backup::copy::copy_backup(&src, &dst, &cluster, &id, &journal_dir, &progress, &ctx.cancel)
        .await
        .map_err(step_error)?;
    sh.metrics.backup.measured(
        &cluster,
        &target,
        progress.plain_bytes.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    );
    Ok(StepOutput::json(json!({
        "backup": id,
        "target": target,
        "copied": r.copied,
        "resumed": r.resumed,
        "wal_copied": r.wal_copied,
        "already_complete": r.already_complete,
    })))
}

/// Applies the tier's retention at its destination and copies; immutable
/// destinations are left to the storage's own lock policy.
async fn prune_step(sh: Arc<Shared>, p: BackupParams, ctx: StepContext) -> Result<StepOutput, StepError> {
    let cluster = ctx.cluster.as_str().to_owned();
    let policy = pgdr_backup::retention::Policy::from(pgdr_backup::policy(&sh.config, &cluster).map_err(step_error)?);
    let mut out = serde_json::Map::new();
    for name in std::iter::once(&p.destination).chain(p.copies.iter()) {
        let dest = Dest::open_named(&sh.config, name).map_err(|e| step_error(e.into()))?;
        if dest.immutable {
            out.insert(name.clone(), json!({"skipped": "immutable"}));
            continue;
        }
        let r = pgdr_backup::retention::prune(&dest, &cluster, &policy, false).await.map_err(step_error)?;
        out.insert(
            name.clone(),
            json!({"kept": r.plan.keep.len(), "removed": r.plan.remove, "wal_removed": r.wal_removed.len()}),
        );
    }
    Ok(StepOutput::json(Value::Object(out)))
}

impl WorkflowDef for BackupDef {
    fn kind(&self) -> &str {
        KIND
    }

    /// A backup never changes roles: no cluster lock, so it never blocks a
    /// failover or switchover (nor waits for one).
    fn role_changing(&self) -> bool {
        false
    }

    fn build(&self, params: &Value) -> Result<Vec<Stage>, String> {
        let p: BackupParams = serde_json::from_value(params.clone()).map_err(|e| format!("bad params: {e}"))?;
        let mut stages = Vec::new();
        let (sh, p1) = (self.sh.clone(), p.clone());
        stages.push(
            Step::from_fn(
                "backup",
                format!(
                    "streamed base backup (from a healthy replica when there is one) to destination {}",
                    p.destination
                ),
                move |ctx| backup_step(sh.clone(), p1.clone(), ctx),
            )
            .retry(backup_retry())
            .into(),
        );
        let copies: Vec<Step> = p
            .copies
            .iter()
            .map(|target| {
                let (sh, p2, t, j) = (self.sh.clone(), p.clone(), target.clone(), self.journal_dir.clone());
                Step::from_fn(
                    format!("copy_to_{target}"),
                    format!(
                        "copy the backup and the WAL it lacks to destination {target}, checking checksums; resumes"
                    ),
                    move |ctx| copy_step(sh.clone(), p2.clone(), t.clone(), j.clone(), ctx),
                )
                .retry(copy_retry())
            })
            .collect();
        if !copies.is_empty() {
            stages.push(Stage::parallel(copies));
        }
        let (sh, p3) = (self.sh.clone(), p.clone());
        stages.push(
            Step::from_fn(
                "prune",
                "remove backups and WAL beyond the tier's retention (count, age) where the destination is not immutable",
                move |ctx| prune_step(sh.clone(), p3.clone(), ctx),
            )
            .retry(backup_retry())
            .into(),
        );
        Ok(stages)
    }
}

/// Starts a `backup` workflow for `cluster` now (what the scheduler does
/// when it is due).
pub async fn start(ctl: &Controller, cluster: &str) -> Result<pgdr_workflow::WorkflowHandle, String> {
    let params = BackupParams::for_cluster(&ctl.sh.config, cluster).map_err(|e| e.to_string())?;
    let name = ClusterName::new(cluster);
    let params = serde_json::to_value(&params).map_err(|e| e.to_string())?;
    ctl.engine.start(KIND, &name, params).await.map_err(|e| e.to_string())
}

/// Reads every destination and updates the status gauges.
pub async fn refresh_metrics(sh: &Shared) {
    match pgdr_backup::status::status(&sh.config, &Selector::default()).await {
        Ok(list) => sh.metrics.backup.set_status(&list),
        Err(e) => tracing::warn!(error = %e, "cannot read backup status for metrics"),
    }
}

fn has_backups(config: &pgdr_config::Config) -> bool {
    config.clusters.iter().any(|c| config.tier(c.tier.as_str()).is_some_and(|t| t.backup.is_some()))
}

/// When the next scheduled time of any tier comes, capped to [`MAX_WAIT`].
fn next_wake(config: &pgdr_config::Config, now: DateTime<Utc>) -> Duration {
    let next = config
        .tiers
        .iter()
        .filter_map(|t| t.backup.as_ref())
        .filter_map(|b| b.schedule.parse::<croner::Cron>().ok())
        .filter_map(|c| c.find_next_occurrence(&now, false).ok())
        .min();
    match next {
        Some(at) => (at - now).to_std().unwrap_or(MIN_WAIT).clamp(MIN_WAIT, MAX_WAIT),
        None => MAX_WAIT,
    }
}

/// The scheduler: until `cancel` fires, starts a `backup` workflow for every
/// cluster whose tier's schedule says one is due (at most one at a time per
/// cluster, and at most `controller.max_concurrent_backups` in all: the
/// others wait for a slot, never backed up first, then the longest due), and
/// keeps the status metrics fresh.
pub async fn run(ctl: Controller, cancel: CancellationToken) {
    let sh = ctl.sh.clone();
    if !has_backups(&sh.config) {
        return;
    }
    let tracker = TaskTracker::new();
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let slots = sh.config.controller.max_concurrent_backups.max(1) as usize;
    // Woken when a backup ends, so a waiting one takes its slot at once.
    let ended = Arc::new(tokio::sync::Notify::new());
    // When each cluster's last workflow started: a failed backup waits for
    // the next scheduled time instead of being retried on every pass (the
    // engine already retried it).
    let mut attempted: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    let sel = Selector::default();
    loop {
        refresh_metrics(&sh).await;
        let now = Utc::now();
        match pgdr_backup::schedule::last_backups(&sh.config, &sel).await {
            Ok(mut last) => {
                for (c, at) in &attempted {
                    let e = last.entry(c.clone()).or_insert(*at);
                    *e = (*e).max(*at);
                }
                match pgdr_backup::schedule::due(&sh.config, &last, now, &sel) {
                    Ok(mut due) => {
                        // Never backed up (None) first, then the longest due.
                        due.sort_by_key(|d| d.scheduled);
                        let mut waiting = 0;
                        for d in due {
                            let (busy, full) = running
                                .lock()
                                .map(|r| (r.contains(&d.cluster), r.len() >= slots))
                                .unwrap_or((true, true));
                            if busy {
                                continue;
                            }
                            if full {
                                waiting += 1;
                                continue;
                            }
                            attempted.insert(d.cluster.clone(), now);
                            match start(&ctl, &d.cluster).await {
                                Ok(handle) => {
                                    if let Ok(mut r) = running.lock() {
                                        r.insert(d.cluster.clone());
                                    }
                                    tracing::info!(cluster = %d.cluster, workflow = %handle.id, "scheduled backup started");
                                    tracker.spawn(finish(
                                        ctl.clone(),
                                        d.cluster.clone(),
                                        handle,
                                        running.clone(),
                                        ended.clone(),
                                    ));
                                }
                                Err(e) => {
                                    tracing::error!(cluster = %d.cluster, error = %e, "cannot start a scheduled backup")
                                }
                            }
                        }
                        if waiting > 0 {
                            tracing::info!(
                                waiting,
                                slots,
                                "scheduled backups wait for a slot (controller.max_concurrent_backups)"
                            );
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "backup schedules"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list backups to find due clusters"),
        }
        let wait = next_wake(&sh.config, Utc::now());
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            _ = ended.notified() => {}
        }
    }
    tracker.close();
    tracker.wait().await;
}

/// Waits for a backup workflow's end, then emits the summary event and
/// refreshes the metrics.
async fn finish(
    ctl: Controller,
    cluster: String,
    handle: pgdr_workflow::WorkflowHandle,
    running: Arc<Mutex<HashSet<String>>>,
    ended: Arc<tokio::sync::Notify>,
) {
    let id = handle.id.clone();
    let result = handle.wait().await;
    if let Ok(mut r) = running.lock() {
        r.remove(&cluster);
    }
    ended.notify_one();
    let name = ClusterName::new(cluster.as_str());
    let (state, message) = match result {
        Ok(rec) if rec.state == WorkflowState::Succeeded => {
            let summary = summary(&ctl, &id.to_string()).await;
            ("backup_succeeded", format!("scheduled backup of {cluster}: {summary}"))
        }
        Ok(rec) => (
            "backup_failed",
            format!(
                "scheduled backup of {cluster} ended {:?}: {}",
                rec.state,
                rec.error.as_deref().unwrap_or("no error recorded")
            ),
        ),
        // The engine stopped (controller shutting down): the next one resumes it.
        Err(_) => return,
    };
    ctl.sh.metrics.backup.runs.get_or_create(&OutcomeLabel { cluster: cluster.clone(), outcome: state.into() }).inc();
    let mut ev = ctl.sh.event(&name, state, message);
    ev.workflow = Some(id.to_string());
    ev.kind = Some(KIND.to_owned());
    if state == "backup_failed" {
        tracing::error!(cluster = %cluster, workflow = %id, "scheduled backup failed");
    }
    ctl.sh.emit(ev).await;
    refresh_metrics(&ctl.sh).await;
}

/// "backup B to D (N MiB in S s); copied to X, Y" from the steps' outputs.
async fn summary(ctl: &Controller, id: &str) -> String {
    let Ok(view) = ctl.workflow_view(id).await else { return format!("workflow {id} succeeded") };
    let outputs: HashMap<String, Value> =
        view.steps.iter().filter_map(|s| s.output.clone().map(|o| (s.name.clone(), o))).collect();
    let b = outputs.get("backup");
    let field = |k: &str| b.and_then(|o| o.get(k)).cloned().unwrap_or(Value::Null);
    let copies: Vec<String> =
        outputs.values().filter_map(|o| o.get("target").and_then(Value::as_str).map(str::to_owned)).collect();
    format!(
        "backup {} to {} ({} MiB in {:.1}s){}",
        field("backup").as_str().unwrap_or("?"),
        field("destination").as_str().unwrap_or("?"),
        field("plain_bytes").as_u64().unwrap_or(0) >> 20,
        field("seconds").as_f64().unwrap_or(0.0),
        if copies.is_empty() { String::new() } else { format!("; copied to {}", copies.join(", ")) }
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use pgdr_config::Config;
    use pgdr_store::{MemoryStore, StateStore};
    use pgdr_workflow::{ClusterLock, WorkflowId};

    use super::*;

    const CONFIG: &str = r#"
[controller]
listen = "127.0.0.1:1"
state_dir = "/tmp/pgdr-backups-unit"

[[regions]]
name = "r1"

[[destinations]]
name = "local"
url = "file:///tmp/pgdr-backups-unit/local"
key = { value = "1111111111111111111111111111111111111111111111111111111111111111" }

[[destinations]]
name = "far"
url = "file:///tmp/pgdr-backups-unit/far"
key = { value = "2222222222222222222222222222222222222222222222222222222222222222" }

[[tiers]]
name = "gold"
rpo = "5s"
rto = "30s"
backup = { schedule = "*/10 * * * * *", destination = "local", copies = ["local", "far"] }

[[clusters]]
name = "main"
tier = "gold"
nodes = [{ name = "n1", region = "r1", agent = "127.0.0.1:1", host = "127.0.0.1", port = 1 }]
"#;

    fn config() -> Config {
        Config::parse(Path::new("/tmp/pgdr-backups-unit/pgdr.toml"), CONFIG).expect("config")
    }

    #[test]
    fn wakes_at_the_next_scheduled_time_within_bounds() {
        let c = config();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc);
        assert_eq!(next_wake(&c, at("2026-01-01T12:00:03Z")), Duration::from_secs(7));
        // Right on a scheduled second: the next one, at least MIN_WAIT.
        assert_eq!(next_wake(&c, at("2026-01-01T12:00:10Z")), Duration::from_secs(10));
        assert_eq!(next_wake(&c, at("2026-01-01T12:00:09.9Z")), MIN_WAIT);
    }

    #[test]
    fn params_name_the_tier_destination_and_other_copies() {
        let p = BackupParams::for_cluster(&config(), "main").expect("params");
        assert_eq!(p.destination, "local");
        assert_eq!(p.copies, ["far"]);
        assert!(BackupParams::for_cluster(&config(), "nope").is_err());
    }

    /// A backup is no role change: it starts while a failover holds the
    /// cluster's lock, and holds no lock itself.
    #[tokio::test]
    async fn a_backup_starts_while_a_role_change_holds_the_lock() {
        let c = config();
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let now = time::OffsetDateTime::now_utc();
        let lock = ClusterLock { workflow: WorkflowId::new(now), kind: "failover".into(), since: now };
        let key = pgdr_store::keys::cluster_lock("main");
        store.put(&key, serde_json::to_vec(&lock).expect("json"), None).await.expect("lock");
        let proxies = Arc::new(crate::runtime::HttpProxies::from_config(&c).expect("proxies"));
        let ctl = Controller::new(c, store.clone(), proxies, "unit", crate::webhook::Webhooks::none())
            .await
            .expect("controller");
        let params =
            serde_json::to_value(BackupParams::for_cluster(&ctl.sh.config, "main").expect("params")).expect("json");
        let plan = ctl.engine.plan(KIND, &ClusterName::new("main"), params).await.expect("plan");
        assert!(plan.blocked_by.is_none(), "a backup waits for no lock: {plan:?}");
        let names: Vec<Vec<&str>> = plan.stages.iter().map(|s| s.iter().map(|p| p.name.as_str()).collect()).collect();
        assert_eq!(names, vec![vec!["backup"], vec!["copy_to_far"], vec!["prune"]]);
        let handle = start(&ctl, "main").await.expect("a backup starts while the lock is held");
        // The lock is still the failover's.
        let held: ClusterLock =
            serde_json::from_slice(&store.get(&key).await.expect("get").expect("lock").value).expect("lock json");
        assert_eq!(held.kind, "failover");
        let _ = ctl.engine.cancel(&handle.id, "unit test").await;
        ctl.engine.shutdown().await;
    }
}
