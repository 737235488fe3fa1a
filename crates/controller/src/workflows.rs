//! The role-changing workflows, as step lists for the engine
//! (`pgdr-workflow`): failover (with the crash path), switchover, failback
//! (a switchover back to the original primary region) and re-establish.
//!
//! Every step is idempotent (the engine re-runs a step a crash interrupted)
//! and journals what it did and saw as JSON; dynamic choices (the candidate,
//! the new epoch) are made inside steps and read back by later ones through
//! their journalled outputs, so a resumed workflow continues with the same
//! choices.

use std::sync::Arc;
use std::time::Duration;

use pgdr_api::agent::{
    FenceMode, FenceRequest, PromoteRequest, RebuildRequest, RewindRequest, StopMode, StopRequest, UpstreamRequest,
};
use pgdr_api::peer::{PeerClient, WithdrawRequest};
use pgdr_config::{Cluster, Node, OnCrash};
use pgdr_model::{ClusterName, Epoch, Lsn, NodeName, RegionName, ReplicationMode, Role};
use pgdr_workflow::{RetryPolicy, Stage, Step, StepContext, StepError, StepOutput, WorkflowDef};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::candidate::{self, CandidateInfo, Policy, Target};
use crate::fence::{self, AgentFence, FenceDecision, LeaseView};
use crate::runtime::Shared;

pub const FAILOVER: &str = "failover";
pub const SWITCHOVER: &str = "switchover";
pub const FAILBACK: &str = "failback";
pub const REESTABLISH: &str = "reestablish";
/// A live move of the primary (`pgdr migrate`): preparation, an approval
/// gate, then the switchover's cutover; see [`crate::migrate`].
pub const MIGRATE: &str = "migrate";

/// How long a step waits for an agent's status: longer than a probe's, as a
/// busy host answering slowly is not a down one.
const STEP_STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a step waits for the status of an agent the monitor last saw
/// failing: a failure (a frozen host, a partitioned region) already made
/// it unreachable, and the step decides from the nodes that answered.
const SEEN_DOWN_STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// A candidate preferred by region may lack this much WAL behind the most
/// advanced node and still be chosen, fetching it first.
const CATCH_UP_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// How long the preferred candidate may take to fetch that WAL before the
/// most advanced node is promoted instead.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// The parameters of every workflow here, fixed when it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub cluster: ClusterName,
    /// Why it runs (an outage verdict, an operator).
    pub reason: String,
    /// Switchover/failback target: a node or region name.
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub allow_data_loss: bool,
    #[serde(default)]
    pub require_approval: bool,
    #[serde(default)]
    pub requested_by: Option<String>,
    /// The primary being replaced and the epoch it held.
    #[serde(default)]
    pub old_primary: Option<NodeName>,
    #[serde(default)]
    pub old_epoch: Epoch,
    /// The old primary's last known WAL position.
    #[serde(default)]
    pub old_lsn: Option<Lsn>,
    /// Only the postmaster died and the host answers.
    #[serde(default)]
    pub crash: bool,
    /// Re-establish: the node to bring back.
    #[serde(default)]
    pub node: Option<NodeName>,
    /// Re-establish: keep the node's data directory aside (rebuild) rather
    /// than rewinding it, because it may hold transactions nobody else has.
    #[serde(default)]
    pub keep_tail: bool,
    /// The controller decided it (an outage verdict), not an operator: the
    /// freeze rule gates it ([`pgdr_decide::rules::admit`]).
    #[serde(default)]
    pub automatic: bool,
}

impl Params {
    pub fn origin(&self) -> pgdr_decide::rules::Origin {
        if self.automatic { pgdr_decide::rules::Origin::Automatic } else { pgdr_decide::rules::Origin::Operator }
    }
}

pub(crate) fn fatal(e: impl std::fmt::Display) -> StepError {
    StepError::fatal(e.to_string())
}

pub(crate) fn retry(e: impl std::fmt::Display) -> StepError {
    StepError::retryable(e.to_string())
}

pub(crate) struct Ctx {
    pub(crate) sh: Arc<Shared>,
    pub(crate) p: Params,
}

impl Ctx {
    pub(crate) fn cluster(&self) -> Result<&Cluster, StepError> {
        self.sh
            .cluster(self.p.cluster.as_str())
            .ok_or_else(|| fatal(format!("no cluster {} in the config", self.p.cluster)))
    }

    pub(crate) fn node(&self, name: &NodeName) -> Result<&Node, StepError> {
        self.cluster()?
            .node(name.as_str())
            .ok_or_else(|| fatal(format!("no node {name} in cluster {}", self.p.cluster)))
    }

    pub(crate) fn old_primary(&self) -> Result<&NodeName, StepError> {
        self.p.old_primary.as_ref().ok_or_else(|| fatal("the workflow names no old primary"))
    }
}

/// Builds a step whose body gets the shared state and the params.
pub(crate) fn step<F, Fut>(sh: &Arc<Shared>, p: &Params, name: &str, description: &str, f: F) -> Step
where
    F: Fn(Arc<Ctx>, StepContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<StepOutput, StepError>> + Send + 'static,
{
    let ctx = Arc::new(Ctx { sh: sh.clone(), p: p.clone() });
    let kind_step = name.to_owned();
    let f = Arc::new(f);
    Step::from_fn(name, description, move |sc: StepContext| {
        let (ctx, f, kind_step) = (ctx.clone(), f.clone(), kind_step.clone());
        async move {
            let started = Instant::now();
            let kind = sc.kind.clone();
            let out = f(ctx.clone(), sc).await;
            ctx.sh
                .metrics
                .step_seconds
                .get_or_create(&crate::metrics::StepLabel { kind, step: kind_step })
                .observe(started.elapsed().as_secs_f64());
            out
        }
    })
}

fn skipped(ctx: &StepContext) -> bool {
    ctx.output("restart_in_place").and_then(|v| v.get("restarted")).and_then(Value::as_bool) == Some(true)
}

fn chosen(ctx: &StepContext) -> Result<NodeName, StepError> {
    for name in ["catch_up", "choose_candidate", "check_target"] {
        if let Some(n) = ctx.output(name).and_then(|v| v.get("node")).and_then(Value::as_str) {
            return Ok(NodeName::new(n));
        }
    }
    Err(fatal("no candidate was chosen"))
}

fn new_epoch(ctx: &StepContext) -> Result<Epoch, StepError> {
    ctx.output("raise_epoch")
        .and_then(|v| v.get("epoch"))
        .and_then(Value::as_u64)
        .map(Epoch)
        .ok_or_else(|| fatal("the epoch was not raised"))
}

// ---------------------------------------------------------------- steps

async fn restart_in_place(c: Arc<Ctx>, sc: StepContext) -> Result<StepOutput, StepError> {
    let cluster = c.cluster()?;
    if !c.p.crash || cluster.on_crash != OnCrash::RestartFirst {
        return Ok(StepOutput::json(json!({"path": "failover", "restarted": false,
            "why": if c.p.crash { "on_crash = failover" } else { "the host does not answer" }})));
    }
    let node = c.node(c.old_primary()?)?;
    let deadline = c.sh.config.timing.restart_deadline;
    let started = Instant::now();
    let end = started + deadline;
    // Retried until the deadline: a start can fail for a moment after a
    // crash (a killed postmaster not yet reaped still holds its lock file).
    let mut attempts = 0u32;
    let error = loop {
        attempts += 1;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break format!("not back within restart_deadline ({})", pgdr_model::format_duration(deadline));
        }
        let agent = c.sh.agent(node).map_err(fatal)?.with_action_timeout(left);
        let last = match tokio::time::timeout(left, agent.start(c.p.old_epoch)).await {
            Ok(Ok(_)) => {
                // Crash recovery done: check a write commits.
                let mut prober =
                    crate::probe::Prober::new(c.sh.target(cluster, node), crate::probe::ROW_DIRECT, "pgdr-controller");
                let left = end.saturating_duration_since(Instant::now()).max(Duration::from_millis(500));
                let r = prober.probe(left).await;
                if r.outcome.is_ok() {
                    return Ok(StepOutput::json(json!({"path": "restart-in-place", "restarted": true,
                        "attempts": attempts, "took_ms": started.elapsed().as_millis() as u64})));
                }
                format!("restarted but a write did not commit: {:?}", r.outcome)
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => {
                break format!("not back within restart_deadline ({})", pgdr_model::format_duration(deadline));
            }
        };
        if Instant::now() + Duration::from_millis(250) >= end {
            break last;
        }
        tokio::select! {
            _ = sc.cancel.cancelled() => return Err(retry("cancelled while restarting the old primary")),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    };
    Ok(StepOutput::json(json!({"path": "failover", "restarted": false, "attempts": attempts, "restart_error": error})))
}

async fn pause_proxy(c: Arc<Ctx>, sc: StepContext, unroute_primary: bool) -> Result<StepOutput, StepError> {
    if skipped(&sc) {
        return Ok(StepOutput::json(json!({"skipped": "restarted in place"})));
    }
    let cluster = c.cluster()?;
    if unroute_primary {
        c.sh.leases.block(&cluster.name, c.old_primary()?);
        if let Ok(Some(state)) = c.sh.clusters.state(&cluster.name).await {
            let mut route = c.sh.route(cluster, &state);
            route.primary = None;
            c.sh.proxies.publish(&cluster.name, &route);
        }
    }
    let started = Instant::now();
    // A failover's old primary is down, frozen or cut off: nothing running
    // there can finish in a way that counts, so the pause does not wait.
    let drain = if unroute_primary { crate::runtime::Drain::Nothing } else { crate::runtime::Drain::Running };
    let res = c.sh.proxies.pause(&cluster.name, drain).await;
    Ok(StepOutput::json(
        json!({"paused": res.is_ok(), "error": res.err(), "took_ms": started.elapsed().as_millis() as u64}),
    ))
}

async fn fence_old_primary(c: Arc<Ctx>, sc: StepContext) -> Result<StepOutput, StepError> {
    if skipped(&sc) {
        return Ok(StepOutput::json(json!({"skipped": "restarted in place"})));
    }
    let cluster = c.cluster()?;
    let old = c.old_primary()?.clone();
    let node = c.node(&old)?;
    let timing = &c.sh.config.timing;
    let started = Instant::now();
    // 0. Block its renewals in the store, where every controller reads
    //    them (a restarted one included): the next epoch, naming no
    //    primary. From here its agent's renewals are refused and it fences
    //    at once when it hears so.
    let fence_epoch = raise_fence_epoch(&c, &sc, &old).await?;
    // 1. Ask its agent (fast path). It runs alongside the withdrawals: an
    //    agent cut off by a partition must not hold the step for its whole
    //    timeout when the lease already proves the old primary fenced.
    let agent = c.sh.agent(node).map_err(fatal)?.with_action_timeout(timing.drain_timeout.max(Duration::from_secs(2)));
    let fence_req = FenceRequest { epoch: c.p.old_epoch, mode: FenceMode::Stop };
    let mut agent_call = tokio::spawn(async move {
        match agent.fence(&fence_req).await {
            Ok(r) => AgentFence::Confirmed(r.message),
            Err(e) => AgentFence::NotConfirmed(e.to_string()),
        }
    });
    // Aborts the agent's call when the step ends, whatever the path.
    let _abort = AbortOnDrop(agent_call.abort_handle());
    // 2. The operator's hook.
    let hook = match &cluster.fence_hook {
        Some(cmd) => Some(run_hook(cmd, cluster, node).await),
        None => None,
    };
    // 3. Withdraw the other agents' support, so a partitioned old primary
    //    cannot count a majority and fences itself when its lease lapses.
    //    Asked whatever the agent answers (it may never answer).
    let mut withdrawn = Vec::new();
    {
        let req = WithdrawRequest { cluster: cluster.name.clone(), primary: old.clone(), epoch: c.p.old_epoch };
        let mut set = tokio::task::JoinSet::new();
        for n in cluster.nodes.iter().filter(|n| n.name != old) {
            let (req, addr, token, name) = (req.clone(), n.agent.clone(), c.sh.agent_token.clone(), n.name.clone());
            let tls = c.sh.http_tls.clone();
            set.spawn(async move {
                let ok = match PeerClient::new_with(&addr, token, Duration::from_secs(2), &tls) {
                    Ok(p) => p.withdraw(&req).await.is_ok(),
                    Err(_) => false,
                };
                (name, ok)
            });
        }
        // Enough withdrawals settle it: an agent cut off by a partition is
        // not waited for (dropping the set aborts its call).
        let needed = fence::withdrawals_needed(cluster.nodes.len());
        while let Some(r) = set.join_next().await {
            if let Ok((name, true)) = r {
                withdrawn.push(name);
            }
            if withdrawn.len() >= needed {
                break;
            }
        }
    }
    let withdrawn_at = (withdrawn.len() >= fence::withdrawals_needed(cluster.nodes.len())).then_some(Instant::now());
    let mut view = LeaseView {
        last_grant: c.sh.leases.last_grant(&cluster.name, &old),
        support_withdrawn_at: withdrawn_at,
        ttl: timing.lease_ttl,
        renew: timing.lease_renew,
        margin: timing.lease_margin,
    };
    // 4. Wait until it is certainly fenced: the agent confirms, or the
    //    lease rule holds (never weaker than before: a pending agent call
    //    counts as not confirmed).
    let mut agent_fence: Option<AgentFence> = None;
    let evidence = loop {
        // Re-read at every check: a renewal that was being granted when
        // the fence epoch was written moves it.
        view.last_grant = c.sh.leases.last_grant(&cluster.name, &old);
        let seen = agent_fence.clone().unwrap_or_else(|| AgentFence::NotConfirmed("no answer yet".into()));
        let wait_until = match fence::decide(&seen, &view, Instant::now()) {
            FenceDecision::Fenced(e) => break e,
            FenceDecision::WaitUntil(t) => Some(t),
            FenceDecision::NoQuorum if agent_fence.is_none() => None,
            FenceDecision::NoQuorum => {
                return Err(retry(format!(
                    "cannot prove {old} is fenced: its agent does not confirm ({}) and only {} of the {} other agents withdrew their support",
                    match &seen {
                        AgentFence::NotConfirmed(e) => e.as_str(),
                        AgentFence::Confirmed(_) => "",
                    },
                    withdrawn.len(),
                    cluster.nodes.len() - 1
                )));
            }
        };
        let sleep = async {
            match wait_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sc.cancel.cancelled() => return Err(retry("cancelled while waiting for the old primary's fence")),
            r = &mut agent_call, if agent_fence.is_none() => {
                agent_fence = Some(r.unwrap_or_else(|e| AgentFence::NotConfirmed(format!("the agent call failed: {e}"))));
            }
            _ = sleep => {}
        }
    };
    let agent_fence =
        agent_fence.unwrap_or_else(|| AgentFence::NotConfirmed("no answer before the lease proved it fenced".into()));
    let _ = c.sh.clusters.break_primary_lease(&cluster.name).await;
    Ok(StepOutput::json(json!({
        "node": old,
        "fence_epoch": fence_epoch,
        "evidence": evidence,
        "agent": match &agent_fence { AgentFence::Confirmed(m) => json!({"confirmed": m}), AgentFence::NotConfirmed(e) => json!({"not_confirmed": e}) },
        "hook": hook,
        "support_withdrawn_by": withdrawn,
        "took_ms": started.elapsed().as_millis() as u64,
    })))
}

/// The fence step's first act: the epoch after the old primary's, naming
/// no primary (compare-and-set from the old epoch; already done when a
/// resumed workflow runs the step again). The rule is
/// [`pgdr_decide::renewal::fence_epoch`].
async fn raise_fence_epoch(c: &Ctx, sc: &StepContext, old: &NodeName) -> Result<Epoch, StepError> {
    use pgdr_decide::renewal::{FenceEpoch, StoreView};
    let cluster = c.cluster()?;
    let state =
        c.sh.clusters.state(&cluster.name).await.map_err(retry)?.ok_or_else(|| fatal("the cluster has no state"))?;
    let view = StoreView { epoch: state.epoch, primary: state.primary.clone() };
    match pgdr_decide::renewal::fence_epoch(&view, c.p.old_epoch) {
        FenceEpoch::Raise(next) => {
            let reason = format!("fence {old}: {} {}", sc.kind, sc.workflow.as_str());
            // An automatic role change starts here: the freeze switches are
            // checked in this write's own transaction.
            let raised = if c.p.automatic {
                c.sh.clusters.raise_epoch_unless_frozen(&cluster.name, c.p.old_epoch, None, &reason).await
            } else {
                c.sh.clusters.raise_epoch(&cluster.name, c.p.old_epoch, None, &reason).await
            };
            if let Err(e @ pgdr_store::ClusterError::Frozen { .. }) = &raised {
                let refusal =
                    pgdr_decide::rules::Refusal { rule: pgdr_decide::rules::Rule::Freeze, why: e.to_string() };
                c.sh.emit(refused_event(c, sc, &refusal)).await;
            }
            let s = raised.map_err(|e| if e.is_retryable() { retry(e) } else { fatal(e) })?;
            tracing::warn!(cluster = %cluster.name, epoch = %s.epoch, old_primary = %old, "fence epoch written: renewals of {old} are refused from now on");
            debug_assert_eq!(s.epoch, next.epoch);
            Ok(s.epoch)
        }
        FenceEpoch::Already => Ok(state.epoch),
        FenceEpoch::Moved => Err(fatal(format!(
            "the epoch moved from {} to {} (primary {}) under this workflow: another controller acted",
            c.p.old_epoch,
            state.epoch,
            state.primary.as_ref().map(|p| p.as_str()).unwrap_or("none")
        ))),
    }
}

/// The epoch a failover's raise_epoch step raises from: the fence epoch
/// when the fence step wrote one, else the old primary's.
fn epoch_before_promotion(c: &Ctx, sc: &StepContext) -> Epoch {
    sc.output("fence_old_primary")
        .and_then(|v| v.get("fence_epoch"))
        .and_then(Value::as_u64)
        .map(Epoch)
        .unwrap_or(c.p.old_epoch)
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run_hook(cmd: &str, cluster: &Cluster, node: &Node) -> Value {
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .env("PGDR_CLUSTER", cluster.name.as_str())
        .env("PGDR_NODE", node.name.as_str())
        .env("PGDR_HOST", &node.host)
        .env("PGDR_PORT", node.port.to_string())
        .kill_on_drop(true);
    // The hook's output may carry whatever the operator's tooling prints
    // (credentials included): it goes to the controller's log only, never
    // into the journal that `GET /v1/workflows/{id}`, events and webhooks
    // show. The journal says where it came from and how it ended.
    let hook = format!("clusters.{}.fence_hook", cluster.name);
    match tokio::time::timeout(Duration::from_secs(30), c.output()).await {
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            tracing::info!(cluster = %cluster.name, node = %node.name, status = ?out.status.code(), "fence hook ran; stdout: {}; stderr: {}", stdout.trim(), stderr.trim());
            json!({"hook": hook, "status": out.status.code(), "output": "in the controller's log"})
        }
        Ok(Err(e)) => json!({"hook": hook, "error": format!("cannot run sh: {}", e.kind())}),
        Err(_) => json!({"hook": hook, "error": "timed out after 30s"}),
    }
}

/// What the controller knows of each node, as candidate input. Every
/// agent is asked at once; one the monitor last saw failing gets a short
/// deadline, and `skip` (a failed primary, which is never a candidate) is
/// not asked at all.
async fn candidates(c: &Ctx, cluster: &Cluster, skip: Option<&NodeName>) -> Vec<CandidateInfo> {
    let (lag, seen_down) =
        c.sh.observed
            .lock()
            .ok()
            .and_then(|o| {
                o.get(&cluster.name).map(|o| {
                    let down: Vec<NodeName> = o
                        .statuses
                        .iter()
                        .filter(|(_, s)| s.as_ref().is_ok_and(|s| !s.up) || s.is_err())
                        .map(|(n, _)| n.clone())
                        .collect();
                    (o.lag.clone(), down)
                })
            })
            .unwrap_or_default();
    let mut set = tokio::task::JoinSet::new();
    for n in cluster.nodes.iter().filter(|n| Some(&n.name) != skip) {
        let timeout = if seen_down.contains(&n.name) { SEEN_DOWN_STATUS_TIMEOUT } else { STEP_STATUS_TIMEOUT };
        let (name, client) = (n.name.clone(), c.sh.agent(n).map(|a| a.with_timeout(timeout)));
        set.spawn(async move {
            let st = match client {
                Ok(a) => tokio::time::timeout(timeout, a.status()).await.ok().and_then(Result::ok),
                Err(_) => None,
            };
            (name, st)
        });
    }
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(r) = set.join_next().await {
        if let Ok((name, Some(st))) = r {
            statuses.insert(name, st);
        }
    }
    candidate_infos(cluster, &statuses, &lag, c.p.old_lsn)
}

/// Candidate input from agent statuses (absent: did not answer) and the
/// monitor's last known heartbeat lags.
/// A node whose lag is unknown (a restarted controller has seen no
/// heartbeat yet) but whose position reaches the old primary's last known
/// one lags nothing.
pub(crate) fn candidate_infos(
    cluster: &Cluster,
    statuses: &std::collections::BTreeMap<NodeName, pgdr_api::agent::Status>,
    lag: &std::collections::BTreeMap<NodeName, f64>,
    old_lsn: Option<Lsn>,
) -> Vec<CandidateInfo> {
    cluster
        .nodes
        .iter()
        .map(|n| {
            let st = statuses.get(&n.name);
            let lsn = st.and_then(|s| s.receive_lsn.max(s.replay_lsn));
            let caught_up = matches!((lsn, old_lsn), (Some(l), Some(o)) if l >= o);
            CandidateInfo {
                node: n.name.clone(),
                region: n.region.clone(),
                reachable: st.is_some_and(|s| s.up),
                // A primary back under the boot guard runs in standby mode but
                // holds the old primary's history: never a candidate.
                role: st.map(|s| if s.boot_guard { Role::Primary } else { s.role }).unwrap_or(Role::Unknown),
                lsn,
                lag_seconds: lag.get(&n.name).copied().or(caught_up.then_some(0.0)),
            }
        })
        .collect()
}

async fn policy(
    c: &Ctx,
    cluster: &Cluster,
    old: &NodeName,
    target: Option<Target>,
    allow_data_loss: bool,
) -> Result<Policy, StepError> {
    let primary_region = c.node(old)?.region.clone();
    policy_for(&c.sh, cluster, old, primary_region, target, allow_data_loss).await.map_err(retry)
}

/// The candidate rules of a cluster whose primary `old` is replaced; in
/// synchronous mode with the set stored for `old`.
pub(crate) async fn policy_for(
    sh: &Shared,
    cluster: &Cluster,
    old: &NodeName,
    primary_region: RegionName,
    target: Option<Target>,
    allow_data_loss: bool,
) -> Result<Policy, String> {
    let tier = sh.tier(cluster).ok_or_else(|| format!("tier {} is not in the config", cluster.tier))?;
    let sync = match cluster.replication {
        ReplicationMode::Sync { .. } => {
            crate::sync::stored(sh, cluster).await?.filter(|s| s.primary == *old).map(|s| s.set)
        }
        ReplicationMode::Async => None,
    };
    Ok(Policy {
        old_primary: old.clone(),
        primary_region,
        region_preference: cluster.region_preference.clone(),
        rpo: tier.rpo,
        availability_over_rpo: cluster.availability_over_rpo,
        allow_data_loss,
        target,
        sync,
        catch_up_max_bytes: CATCH_UP_MAX_BYTES,
    })
}

fn parse_target(cluster: &Cluster, to: &str) -> Result<Target, StepError> {
    if cluster.node(to).is_some() {
        Ok(Target::Node(NodeName::new(to)))
    } else if cluster.nodes.iter().any(|n| n.region.as_str() == to) {
        Ok(Target::Region(RegionName::new(to)))
    } else {
        Err(fatal(format!("{to:?} is neither a node nor a region of cluster {}", cluster.name)))
    }
}

/// The event of a change a safety rule refused: `role_change_refused`,
/// naming the rule.
fn refused_event(c: &Ctx, sc: &StepContext, refusal: &pgdr_decide::rules::Refusal) -> pgdr_store::Event {
    let mut ev = c.sh.event(&c.p.cluster, "role_change_refused", refusal.to_string());
    ev.workflow = Some(sc.workflow.as_str().to_owned());
    ev.kind = Some(sc.kind.clone());
    ev.step = Some(sc.step.clone());
    ev.epoch = Some(c.p.old_epoch);
    ev
}

/// Failover, before anything is paused or fenced: a node can be promoted.
/// Fencing the old primary without one would stop the last server that
/// holds the data (it may only be slow, or waiting on a synchronous
/// standby): the workflow fails here instead and nothing changes.
async fn check_candidate(c: Arc<Ctx>, sc: StepContext) -> Result<StepOutput, StepError> {
    if skipped(&sc) {
        return Ok(StepOutput::json(json!({"skipped": "restarted in place"})));
    }
    let cluster = c.cluster()?;
    let old = c.old_primary()?.clone();
    // The freeze rule, before anything is paused: the fence epoch's
    // transaction checks it again.
    if c.p.automatic {
        let f = c.sh.clusters.freezes(&cluster.name).await.map_err(retry)?;
        let frozen = pgdr_decide::rules::Frozen { global: f.global.is_some(), cluster: f.cluster.is_some() };
        if let Err(refusal) = pgdr_decide::rules::admit(c.p.origin(), frozen) {
            c.sh.emit(refused_event(&c, &sc, &refusal)).await;
            return Err(fatal(format!("not fencing {old}: {refusal}")));
        }
    }
    let target = c.p.to.as_deref().map(|t| parse_target(cluster, t)).transpose()?;
    let infos = candidates(&c, cluster, Some(&old)).await;
    let pol = policy(&c, cluster, &old, target, c.p.allow_data_loss).await?;
    match candidate::choose(&infos, &pol) {
        Ok(choice) => Ok(StepOutput::json(json!({"would_promote": choice.node, "why": choice.why}))),
        Err(e) => Err(retry(format!("not fencing {old}: {e}"))),
    }
}

async fn choose_candidate(c: Arc<Ctx>, sc: StepContext) -> Result<StepOutput, StepError> {
    if skipped(&sc) {
        return Ok(StepOutput::json(json!({"skipped": "restarted in place"})));
    }
    let cluster = c.cluster()?;
    let old = c.old_primary()?.clone();
    let target = c.p.to.as_deref().map(|t| parse_target(cluster, t)).transpose()?;
    let infos = candidates(&c, cluster, Some(&old)).await;
    let pol = policy(&c, cluster, &old, target, c.p.allow_data_loss).await?;
    let choice = candidate::choose(&infos, &pol).map_err(retry)?;
    if choice.past_rpo {
        c.sh.emit(c.sh.event(
            &cluster.name,
            "rpo_overridden",
            format!(
                "promoting {} although it lags past the RPO ({})",
                choice.node,
                if c.p.allow_data_loss { "--allow-data-loss" } else { "availability_over_rpo" }
            ),
        ))
        .await;
    }
    let mut out = serde_json::to_value(&choice).map_err(fatal)?;
    // Journalled for repoint_replicas: agents that did not answer here
    // (a partitioned region) get a short status timeout there.
    if let Value::Object(m) = &mut out {
        let unreachable: Vec<&NodeName> = infos.iter().filter(|i| !i.reachable).map(|i| &i.node).collect();
        m.insert("unreachable".into(), json!(unreachable));
    }
    Ok(StepOutput::json(out))
}

/// Failover: when the chosen node lacks a little WAL that the most
/// advanced node has (choose_candidate preferred it by region), it streams
/// from that node until it has it all; if it does not within
/// CATCH_UP_TIMEOUT, the most advanced node is promoted instead.
async fn catch_up(c: Arc<Ctx>, sc: StepContext) -> Result<StepOutput, StepError> {
    if skipped(&sc) {
        return Ok(StepOutput::json(json!({"skipped": "restarted in place"})));
    }
    let choice = sc.output("choose_candidate").ok_or_else(|| fatal("no candidate was chosen"))?;
    let node = chosen_by_choice(choice)?;
    let (Some(from), Some(to)) = (
        choice.get("catch_up_from").and_then(Value::as_str).map(NodeName::new),
        choice.get("catch_up_to").and_then(Value::as_str).and_then(|s| s.parse::<Lsn>().ok()),
    ) else {
        return Ok(StepOutput::json(json!({"node": node, "needed": false})));
    };
    let started = Instant::now();
    let target = c.node(&node)?;
    let source = c.node(&from)?;
    let agent = c.sh.agent(target).map_err(fatal)?;
    let req = UpstreamRequest {
        epoch: epoch_before_promotion(&c, &sc),
        host: source.host.clone(),
        port: source.port,
        node: Some(source.name.clone()),
        slot: None,
    };
    let outcome: Result<Value, String> = async {
        agent.clone().with_action_timeout(CATCH_UP_TIMEOUT).upstream(&req).await.map_err(|e| e.to_string())?;
        loop {
            let st = agent.clone().with_timeout(Duration::from_secs(1)).status().await.ok();
            if let Some(s) = &st
                && s.receive_lsn.max(s.replay_lsn).is_some_and(|l| l >= to)
            {
                return Ok(json!({"received": s.receive_lsn, "replayed": s.replay_lsn}));
            }
            if started.elapsed() > CATCH_UP_TIMEOUT {
                return Err(format!(
                    "{node} did not reach {to} within {}",
                    pgdr_model::format_duration(CATCH_UP_TIMEOUT)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    .await;
    let took_ms = started.elapsed().as_millis() as u64;
    let cluster = c.cluster()?;
    match outcome {
        Ok(v) => {
            c.sh.emit(c.sh.event(
                &cluster.name,
                "catch_up",
                format!("{node} fetched the WAL it lacked from {from} up to {to} in {took_ms} ms; it is promoted"),
            ))
            .await;
            Ok(StepOutput::json(json!({"node": node, "from": from, "to": to, "caught_up": v, "took_ms": took_ms})))
        }
        Err(e) => {
            c.sh.emit(c.sh.event(
                &cluster.name,
                "catch_up",
                format!("{e}; promoting {from}, the most advanced node, instead"),
            ))
            .await;
            Ok(StepOutput::json(json!({"node": from, "instead_of": node, "error": e, "took_ms": took_ms})))
        }
    }
}

fn chosen_by_choice(choice: &Value) -> Result<NodeName, StepError> {
    choice.get("node").and_then(Value::as_str).map(NodeName::new).ok_or_else(|| fatal("no candidate was chosen"))
}

/// Synchronous mode: stores the new primary's standby set and sets it on
/// the node before it is promoted, so its first acknowledged commit is
/// already on a synchronous standby (or waits for one).
async fn set_sync_standbys(c: Arc<Ctx>, sc: StepContext) -> Result<StepOutput, StepError> {
    if skipped(&sc) {
        return Ok(StepOutput::json(json!({"skipped": "restarted in place"})));
    }
    let cluster = c.cluster()?;
    let ReplicationMode::Sync { quorum } = cluster.replication else {
        return Ok(StepOutput::json(json!({"skipped": "asynchronous replication"})));
    };
    let node = chosen(&sc)?;
    let old = c.old_primary()?.clone();
    let healthy: Vec<NodeName> = {
        let obs = c.sh.observed.lock().map_err(|e| retry(e.to_string()))?;
        obs.get(&cluster.name).map(|o| crate::sync::healthy(&o.statuses)).unwrap_or_default()
    };
    let healthy: Vec<NodeName> = healthy.into_iter().filter(|n| *n != old && *n != node).collect();
    let (set, degraded) = crate::sync::standby_set(cluster, &node, &healthy, quorum);
    crate::sync::set_on(&c.sh, cluster, &node, &set).await.map_err(retry)?;
    Ok(StepOutput::json(json!({"node": node, "setting": crate::sync::setting(&set), "degraded": degraded})))
}

/// The `set_sync_standbys` step of a failover and of a switchover.
fn sync_standbys_step(sh: &Arc<Shared>, p: &Params) -> Step {
    step(
        sh,
        p,
        "set_sync_standbys",
        "synchronous mode: store the new primary's standby set and set it before it is promoted",
        set_sync_standbys,
    )
}

async fn raise_epoch(c: Arc<Ctx>, sc: StepContext) -> Result<StepOutput, StepError> {
    if skipped(&sc) {
        return Ok(StepOutput::json(json!({"skipped": "restarted in place"})));
    }
    let cluster = c.cluster()?;
    let node = chosen(&sc)?;
    let state = c.sh.clusters.state(&cluster.name).await.map_err(retry)?;
    let from = epoch_before_promotion(&c, &sc);
    if let Some(s) = &state
        && s.epoch == from.next()
        && s.primary.as_ref() == Some(&node)
    {
        return Ok(StepOutput::json(json!({"epoch": s.epoch, "primary": node, "already": true})).with_epoch(s.epoch));
    }
    if let Some(s) = &state {
        let view = pgdr_decide::renewal::StoreView { epoch: s.epoch, primary: s.primary.clone() };
        let chose = sc.output("choose_candidate").or_else(|| sc.output("check_target"));
        let promotion = pgdr_decide::rules::Promotion {
            state: &view,
            new_primary: &node,
            // A switchover's old primary stopped with its shutdown checkpoint.
            old_stopped: sc.output("stop_old_primary").is_some() && s.primary.as_ref() == c.p.old_primary.as_ref(),
            past_rpo: chose.and_then(|v| v.get("past_rpo")).and_then(Value::as_bool).unwrap_or(false),
            data_loss_allowed: c.p.allow_data_loss || cluster.availability_over_rpo,
        };
        if let Err(refusal) = pgdr_decide::rules::check_promotion(&promotion) {
            c.sh.emit(refused_event(&c, &sc, &refusal)).await;
            return Err(fatal(refusal));
        }
    }
    let reason = format!("{} {}", sc.kind, sc.workflow.as_str());
    let s =
        c.sh.clusters
            .raise_epoch(&cluster.name, from, Some(node.clone()), &reason)
            .await
            .map_err(|e| if e.is_retryable() { retry(e) } else { fatal(e) })?;
    c.sh.metrics
        .epoch
        .get_or_create(&crate::metrics::ClusterLabel { cluster: cluster.name.to_string() })
        .set(s.epoch.0 as i64);
    Ok(StepOutput::json(json!({"epoch": s.epoch, "primary": node})).with_epoch(s.epoch))
}

async fn promote(c: Arc<Ctx>, sc: StepContext) -> Result<StepOutput, StepError> {
    if skipped(&sc) {
        return Ok(StepOutput::json(json!({"skipped": "restarted in place"})));
    }
    let node = c.node(&chosen(&sc)?)?;
    let epoch = new_epoch(&sc)?;
    let timeout = c.sh.config.timing.promote_timeout;
    let agent = c.sh.agent(node).map_err(fatal)?.with_action_timeout(timeout + Duration::from_secs(5));
    let r =
        agent.promote(&PromoteRequest { epoch, timeout_ms: Some(timeout.as_millis() as u64) }).await.map_err(retry)?;
    let lsn = agent.status().await.ok().and_then(|s| s.current_lsn);
    Ok(StepOutput::json(json!({"node": node.name, "message": r.message, "agent_ms": r.took_ms, "lsn": lsn}))
        .with_epoch(epoch))
}

async fn repoint_replicas(c: Arc<Ctx>, sc: StepContext, skip_old: bool) -> Result<StepOutput, StepError> {
    if skipped(&sc) {
        return Ok(StepOutput::json(json!({"skipped": "restarted in place"})));
    }
    let cluster = c.cluster()?;
    let new = c.node(&chosen(&sc)?)?;
    let epoch = new_epoch(&sc)?;
    let old = c.old_primary()?.clone();
    let mut done = serde_json::Map::new();
    // Nodes waiting to be re-established follow no one yet: their rejoin
    // points them at the current primary (and their agent may be busy
    // rebuilding, which would hold this step up to its timeout).
    let rejoining: Vec<NodeName> =
        c.sh.needs_rejoin
            .lock()
            .map(|r| r.keys().filter(|(cl, _)| *cl == cluster.name).map(|(_, n)| n.clone()).collect())
            .unwrap_or_default();
    for n in rejoining.iter().filter(|n| **n != new.name) {
        done.insert(n.to_string(), json!({"skipped": "waiting to be re-established"}));
    }
    // Concurrently, and a node whose agent does not answer a status within
    // STEP_STATUS_TIMEOUT (1 s if choose_candidate already found it
    // unreachable: a partitioned region) is left out rather than
    // holding the step (and the proxies' resume after it) for the
    // upstream call's whole timeout; like a failed call, it is recorded.
    let unreachable: Vec<String> = sc
        .output("choose_candidate")
        .and_then(|v| v.get("unreachable"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    let mut set = tokio::task::JoinSet::new();
    for n in cluster
        .nodes
        .iter()
        .filter(|n| n.name != new.name && !(skip_old && n.name == old) && !rejoining.contains(&n.name))
    {
        let agent = c.sh.agent(n);
        // Seen down a moment ago: a second chance, but a short one.
        let status_timeout =
            if unreachable.iter().any(|u| u == n.name.as_str()) { Duration::from_secs(1) } else { STEP_STATUS_TIMEOUT };
        let (name, req) = (
            n.name.clone(),
            UpstreamRequest { epoch, host: new.host.clone(), port: new.port, node: Some(new.name.clone()), slot: None },
        );
        set.spawn(async move {
            let res = match agent {
                Ok(a) => match a.clone().with_timeout(status_timeout).status().await {
                    Err(e) => Err(format!("agent unreachable ({e}); not repointed")),
                    Ok(_) => a
                        .with_action_timeout(Duration::from_secs(30))
                        .upstream(&req)
                        .await
                        .map(|r| r.message)
                        .map_err(|e| e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            (name, res)
        });
    }
    let mut missed = Vec::new();
    while let Some(r) = set.join_next().await {
        let Ok((name, res)) = r else { continue };
        if res.is_err() {
            missed.push(name.clone());
        }
        done.insert(
            name.to_string(),
            match res {
                Ok(m) => json!({"ok": m}),
                Err(e) => json!({"error": e, "rejoins": "when its agent answers"}),
            },
        );
    }
    // A node left following the old primary (cut off, its agent down)
    // would stay so: it is brought back (pg_rewind, else a base backup)
    // once its agent answers, as an old primary is.
    if let Ok(mut r) = c.sh.needs_rejoin.lock() {
        for n in missed {
            r.entry((cluster.name.clone(), n)).or_insert(false);
        }
    }
    Ok(StepOutput::json(Value::Object(done)))
}

async fn resume_proxy(c: Arc<Ctx>, sc: StepContext) -> Result<StepOutput, StepError> {
    let cluster = c.cluster()?;
    c.sh.leases.unblock(&cluster.name);
    if skipped(&sc) {
        // The monitor held the proxies while it suspected the primary.
        let res = c.sh.proxies.resume(&cluster.name).await;
        return Ok(StepOutput::json(
            json!({"skipped": "restarted in place", "resumed": res.is_ok(), "error": res.err()}),
        ));
    }
    let state =
        c.sh.clusters.state(&cluster.name).await.map_err(retry)?.ok_or_else(|| fatal("the cluster has no state"))?;
    let route = c.sh.route(cluster, &state);
    // The route reaches every proxy before the resume does.
    let res = c.sh.proxies.publish_and_resume(&cluster.name, &route).await;
    Ok(StepOutput::json(
        json!({"epoch": state.epoch, "primary": state.primary, "resumed": res.is_ok(), "error": res.err()}),
    )
    .with_epoch(state.epoch))
}

async fn report(c: Arc<Ctx>, sc: StepContext) -> Result<StepOutput, StepError> {
    let cluster = c.cluster()?;
    let old = c.old_primary()?.clone();
    if skipped(&sc) {
        c.sh.emit(c.sh.event(
            &cluster.name,
            "restarted_in_place",
            format!("{old} restarted in place; nothing promoted"),
        ))
        .await;
        return Ok(StepOutput::json(json!({"path": "restart-in-place", "lost_bytes": 0})));
    }
    let promoted_lsn = sc
        .output("choose_candidate")
        .and_then(|v| v.get("lsn"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Lsn>().ok());
    let lost = match (c.p.old_lsn, promoted_lsn) {
        (Some(o), Some(p)) => Some(o.bytes_since(p)),
        _ => None,
    };
    if let Ok(mut r) = c.sh.needs_rejoin.lock() {
        r.insert((cluster.name.clone(), old.clone()), true);
    }
    let msg = format!(
        "failover done: {} promoted; old primary {old} last known at {}, promoted at {}: {} bytes possibly lost; {old} rejoins as a replica (its data directory is kept aside) when its host answers",
        chosen(&sc)?,
        c.p.old_lsn.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into()),
        promoted_lsn.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into()),
        lost.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into())
    );
    let mut ev = c.sh.event(&cluster.name, "failover_report", msg);
    ev.workflow = Some(sc.workflow.as_str().to_owned());
    ev.kind = Some(sc.kind.clone());
    c.sh.emit(ev).await;
    Ok(StepOutput::json(json!({
        "path": "failover",
        "old_primary": old,
        "old_lsn": c.p.old_lsn,
        "promoted": chosen(&sc)?,
        "promoted_lsn": promoted_lsn,
        "lost_bytes": lost,
    })))
}

async fn check_target(c: Arc<Ctx>, _sc: StepContext) -> Result<StepOutput, StepError> {
    let cluster = c.cluster()?;
    let old = c.old_primary()?.clone();
    let target = c.p.to.as_deref().map(|t| parse_target(cluster, t)).transpose()?;
    let infos = candidates(&c, cluster, None).await;
    match infos.iter().find(|i| i.node == old) {
        Some(i) if i.reachable && i.role == Role::Primary => {}
        // Retried: an agent that answered late is not a primary that is down.
        _ => return Err(retry(format!("the primary {old} is not up: a switchover needs it (use failover)"))),
    }
    let mut pol = policy(&c, cluster, &old, target, false).await?;
    // The old primary is up and the target must replay its shutdown
    // checkpoint (check_replayed), whatever the synchronous set: no
    // catch-up detour, no quorum to reach.
    pol.catch_up_max_bytes = 0;
    pol.sync = None;
    let choice = candidate::choose(&infos, &pol).map_err(retry)?;
    // A checkpoint now, before the pause, leaves the shutdown checkpoint
    // little to write (as Patroni does before a switchover).
    let started = Instant::now();
    let checkpoint =
        match crate::probe::connect(&c.sh.target(cluster, c.node(&old)?), Duration::from_secs(5), "pgdr-switchover")
            .await
        {
            Ok(client) => client.batch_execute("CHECKPOINT").await.map_err(|e| e.to_string()),
            Err(e) => Err(format!("{e:?}")),
        };
    let mut out = serde_json::to_value(&choice).map_err(fatal)?;
    if let Value::Object(m) = &mut out {
        m.insert("checkpoint".into(), json!({"ok": checkpoint.is_ok(), "error": checkpoint.err(), "took_ms": started.elapsed().as_millis() as u64}));
    }
    Ok(StepOutput::json(out))
}

/// Switchover: stops the old primary with a fast shutdown and reads its
/// shutdown checkpoint. A fast shutdown rolls back running transactions,
/// ends every session (no `BEGIN READ WRITE` can slip past it, unlike a
/// read-only setting), writes the shutdown checkpoint as its last WAL record
/// and has its WAL senders send everything up to it before exiting: once
/// the target has replayed that checkpoint it has every commit the old
/// primary acknowledged.
async fn stop_for_switchover(c: Arc<Ctx>, _sc: StepContext) -> Result<StepOutput, StepError> {
    let old = c.node(c.old_primary()?)?;
    let started = Instant::now();
    let agent = c.sh.agent(old).map_err(fatal)?.with_action_timeout(Duration::from_secs(60));
    let r = agent.stop(&StopRequest { epoch: c.p.old_epoch, mode: StopMode::Fast }).await.map_err(retry)?;
    let took_ms = started.elapsed().as_millis() as u64;
    let Some(checkpoint) = r.checkpoint_lsn else {
        // Stopped, but not cleanly as a primary: nothing proves what the
        // target must have. Put things back as they were.
        let why = format!("{} stopped without a shutdown checkpoint of a primary ({})", old.name, r.steps.join("; "));
        return Err(undo_stop(&c, &why).await);
    };
    Ok(StepOutput::json(
        json!({"message": r.message, "steps": r.steps, "checkpoint_lsn": checkpoint, "took_ms": took_ms}),
    ))
}

/// Switchover: the target must have received and replayed the old
/// primary's shutdown checkpoint before it is promoted. It is refused
/// otherwise (after `timing.drain_timeout`), and the old primary is started
/// again as it was and the proxies resumed: nothing changed.
async fn check_replayed(c: Arc<Ctx>, sc: StepContext) -> Result<StepOutput, StepError> {
    let checkpoint: Lsn = sc
        .output("stop_old_primary")
        .and_then(|v| v.get("checkpoint_lsn"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fatal("no shutdown checkpoint journalled"))?;
    let node = c.node(&chosen(&sc)?)?;
    let agent = c.sh.agent(node).map_err(fatal)?.with_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let limit = c.sh.config.timing.drain_timeout;
    loop {
        let last = match agent.status().await {
            Ok(s) => {
                // The record starts at `checkpoint`: replaying it moves the
                // replay position past it.
                if candidate::has_replayed(s.replay_lsn, checkpoint) {
                    return Ok(StepOutput::json(json!({"checkpoint_lsn": checkpoint, "received": s.receive_lsn,
                        "replayed": s.replay_lsn, "waited_ms": started.elapsed().as_millis() as u64})));
                }
                format!(
                    "received {}, replayed {}",
                    s.receive_lsn.map(|l| l.to_string()).unwrap_or_else(|| "nothing".into()),
                    s.replay_lsn.map(|l| l.to_string()).unwrap_or_else(|| "nothing".into())
                )
            }
            Err(e) => format!("its agent does not answer: {e}"),
        };
        if started.elapsed() > limit {
            let why = format!(
                "{} has not replayed the old primary's shutdown checkpoint at {checkpoint} within {} ({}): not promoted",
                node.name,
                pgdr_model::format_duration(limit),
                last
            );
            return Err(undo_stop(&c, &why).await);
        }
        tokio::select! {
            _ = sc.cancel.cancelled() => return Err(retry("cancelled")),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// A refused switchover: starts the old primary again (it kept its epoch:
/// nothing was raised) and resumes the proxies, then fails the workflow.
async fn undo_stop(c: &Ctx, why: &str) -> StepError {
    let Ok(cluster) = c.cluster() else { return fatal(why) };
    let started = match c.old_primary().and_then(|o| c.node(o)) {
        Ok(old) => match c.sh.agent(old) {
            Ok(a) => a
                .with_action_timeout(Duration::from_secs(60))
                .start(c.p.old_epoch)
                .await
                .map(|r| r.message)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    let resumed = c.sh.proxies.resume(&cluster.name).await;
    let msg = format!(
        "switchover refused: {why}; old primary {}; proxies {}",
        match &started {
            Ok(m) => format!("started again ({m})"),
            Err(e) => format!("NOT started again: {e}"),
        },
        match &resumed {
            Ok(()) => "resumed".to_owned(),
            Err(e) => format!("NOT resumed: {e}"),
        }
    );
    c.sh.emit(c.sh.event(&cluster.name, "switchover_refused", msg.clone())).await;
    fatal(msg)
}

/// Brings `node` back as a replica of `primary`: `pg_rewind`, falling back to
/// a fresh base backup; with `keep_tail`, straight to the base backup, which
/// keeps the old data directory aside.
pub async fn rejoin(
    sh: &Shared,
    node: &Node,
    primary: &Node,
    epoch: Epoch,
    keep_tail: bool,
) -> Result<Value, StepError> {
    let agent = sh.agent(node).map_err(retry)?.with_action_timeout(Duration::from_secs(600));
    let from = Shared::endpoint(primary);
    let mut notes = Vec::new();
    if !keep_tail {
        match agent.rewind(&RewindRequest { epoch, from: from.clone(), slot: None }).await {
            Ok(r) => return Ok(json!({"how": "pg_rewind", "steps": r.steps})),
            Err(e) if e.is_unreachable() => return Err(retry(e)),
            Err(e) => notes.push(format!("pg_rewind failed ({e}); rebuilding from a base backup")),
        }
    }
    let r = agent.rebuild(&RebuildRequest { epoch, from, slot: None, from_backup: None }).await.map_err(retry)?;
    let kept = r.steps.iter().find_map(|s| s.strip_prefix("moved the old data directory to ").map(str::to_owned));
    Ok(json!({"how": "base backup", "steps": r.steps, "old_data_kept_at": kept, "notes": notes}))
}

async fn rejoin_old_primary(c: Arc<Ctx>, sc: StepContext) -> Result<StepOutput, StepError> {
    let old = c.node(c.old_primary()?)?;
    let new = c.node(&chosen(&sc)?)?;
    let epoch = new_epoch(&sc)?;
    Ok(StepOutput::json(rejoin(&c.sh, old, new, epoch, false).await?))
}

async fn reestablish(c: Arc<Ctx>, _sc: StepContext) -> Result<StepOutput, StepError> {
    let cluster = c.cluster()?;
    let name = c.p.node.clone().ok_or_else(|| fatal("no node to re-establish"))?;
    let node = c.node(&name)?;
    // It holds no cluster lock: never rebuild under a running role change
    // (the primary it would follow may be about to change).
    if let Ok(Some(_)) = c.sh.store.get(&pgdr_store::keys::cluster_lock(cluster.name.as_str())).await {
        return Err(fatal("a role change is running on the cluster"));
    }
    let state = c.sh.clusters.state(&cluster.name).await.map_err(retry)?.ok_or_else(|| fatal("no cluster state"))?;
    let primary = state.primary.clone().ok_or_else(|| retry("the cluster has no primary now"))?;
    if primary == name {
        return Ok(StepOutput::json(json!({"skipped": "it is the primary"})));
    }
    // Flagged until it succeeds: a re-establish cancelled by a failover is
    // started again afterwards, and the failover does not wait on this
    // node's agent (busy rebuilding) to repoint it.
    if let Ok(mut r) = c.sh.needs_rejoin.lock() {
        r.insert((cluster.name.clone(), name.clone()), c.p.keep_tail);
    }
    let out = rejoin(&c.sh, node, c.node(&primary)?, state.epoch, c.p.keep_tail).await?;
    if let Ok(mut r) = c.sh.needs_rejoin.lock() {
        r.remove(&(cluster.name.clone(), name.clone()));
    }
    Ok(StepOutput::json(out).with_epoch(state.epoch))
}

/// A node back in the replica set: the secret stores of its region are
/// brought up to the newest version that logs in on the primary (a
/// rotation that ran while the region was out of the set skipped them).
/// A store that cannot be brought up to date is reported in the output
/// and an event; the rejoin itself stands.
async fn sync_secrets(c: Arc<Ctx>, sc: StepContext) -> Result<StepOutput, StepError> {
    let cluster = c.cluster()?;
    if cluster.secrets.is_none() {
        return Ok(StepOutput::json(json!({"skipped": "no managed roles"})));
    }
    let (node, primary) = if sc.kind == REESTABLISH {
        if sc.output("rejoin").and_then(|v| v.get("skipped")).is_some() {
            return Ok(StepOutput::json(json!({"skipped": "the node did not rejoin"})));
        }
        let state =
            c.sh.clusters.state(&cluster.name).await.map_err(retry)?.ok_or_else(|| fatal("no cluster state"))?;
        let node = c.p.node.clone().ok_or_else(|| fatal("no node"))?;
        (node, state.primary.clone().ok_or_else(|| retry("the cluster has no primary now"))?)
    } else {
        (c.old_primary()?.clone(), chosen(&sc)?)
    };
    let mut regions: Vec<String> =
        [&node, &primary].iter().map(|n| c.node(n).map(|n| n.region.to_string())).collect::<Result<_, _>>()?;
    regions.dedup();
    let report = pgdr_secrets::rotate::sync(&c.sh.config, cluster.name.as_str(), primary.as_str(), &regions)
        .await
        .map_err(|e| fatal(e.to_string()))?;
    let written: Vec<String> = report
        .roles
        .iter()
        .flat_map(|r| {
            r.stores
                .iter()
                .filter(|s| s.written || s.version.is_some())
                .map(move |s| format!("{}@{}", r.role, s.region))
        })
        .collect();
    if !report.ok {
        tracing::warn!(cluster = %cluster.name, node = %node, "secret stores not brought up to date at rejoin");
    }
    Ok(StepOutput::json(json!({"ok": report.ok, "regions": regions, "stores": written, "report": report})))
}

// ---------------------------------------------------------------- definitions

/// The workflows this controller runs, for the engine's registry.
pub fn registry(sh: &Arc<Shared>) -> pgdr_workflow::Registry {
    pgdr_workflow::Registry::new()
        .register(Def { kind: FAILOVER, sh: sh.clone() })
        .register(Def { kind: SWITCHOVER, sh: sh.clone() })
        .register(Def { kind: FAILBACK, sh: sh.clone() })
        .register(Def { kind: REESTABLISH, sh: sh.clone() })
        .register(Def { kind: MIGRATE, sh: sh.clone() })
}

struct Def {
    kind: &'static str,
    sh: Arc<Shared>,
}

fn secrets_step(sh: &Arc<Shared>, p: &Params) -> Step {
    step(
        sh,
        p,
        "sync_secrets",
        "bring the secret stores of the rejoined node's region up to the newest version that logs in",
        sync_secrets,
    )
    .retry(RetryPolicy {
        max_attempts: 3,
        initial: Duration::from_secs(1),
        factor: 2.0,
        max: Duration::from_secs(5),
    })
}

/// After the proxies moved: the writer name in DNS follows the primary's
/// region. Never fails the workflow (see [`crate::dns`]).
fn dns_step(sh: &Arc<Shared>, p: &Params) -> Step {
    step(
        sh,
        p,
        "update_dns",
        "point the cluster's writer name at the new primary's region (RFC 2136 update signed with TSIG; [clusters.dns])",
        crate::dns::step,
    )
    .retry(RetryPolicy::once())
}

fn gate(p: &Params, stages: &mut Vec<Stage>) {
    if p.require_approval {
        stages.push(Step::approval("approve", "wait for an operator: pgdr approve <id>").into());
    }
}

impl WorkflowDef for Def {
    fn kind(&self) -> &str {
        self.kind
    }

    /// Re-establish rebuilds a replica and may take minutes (a base
    /// backup): it does not take the cluster's lock, so detection keeps
    /// running and a failover can start (it cancels the re-establish; see
    /// [`crate::Controller::start_params`]). One role change per cluster
    /// still holds for failover, switchover and failback.
    fn role_changing(&self) -> bool {
        self.kind != REESTABLISH
    }

    fn build(&self, params: &Value) -> Result<Vec<Stage>, String> {
        let p: Params = serde_json::from_value(params.clone()).map_err(|e| format!("bad params: {e}"))?;
        let sh = &self.sh;
        let mut s: Vec<Stage> = Vec::new();
        let quick = RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_millis(200),
            factor: 2.0,
            max: Duration::from_secs(2),
        };
        match self.kind {
            FAILOVER => {
                gate(&p, &mut s);
                s.push(step(sh, &p, "restart_in_place", "crash path: restart the old primary in place within timing.restart_deadline (on_crash = restart-first)", restart_in_place)
                    .retry(RetryPolicy::once())
                    .check("only when the postmaster died and its host answers")
                    .into());
                s.push(
                    step(
                        sh,
                        &p,
                        "check_candidate",
                        "check a node can be promoted before anything is fenced",
                        check_candidate,
                    )
                    .retry(quick)
                    .check("a candidate exists: never fence the last server that holds the data")
                    .into(),
                );
                s.push(
                    step(sh, &p, "pause_proxy", "stop routing to the old primary; queue new transactions", |c, sc| {
                        pause_proxy(c, sc, true)
                    })
                    .retry(quick)
                    .into(),
                );
                s.push(step(sh, &p, "fence_old_primary", "fence the old primary: its agent stops it, the fence hook runs, or its lease certainly expired", fence_old_primary)
                    .retry(RetryPolicy { max_attempts: 20, initial: Duration::from_millis(500), factor: 1.5, max: Duration::from_secs(5) })
                    .check("the old primary's agent confirms it stopped, or lease_ttl + lease_margin passed since its last renewal and a majority of agents withdrew their support")
                    .into());
                s.push(step(sh, &p, "choose_candidate", "choose the most advanced healthy replica within the tier's RPO", choose_candidate)
                    .retry(quick)
                    .check("a reachable replica in recovery, lagging less than the tier's RPO (unless --allow-data-loss or availability_over_rpo); in synchronous mode a member of the stored set, once n-k+1 members answered")
                    .into());
                s.push(step(sh, &p, "catch_up", "when the chosen node was preferred by region and lacks a little WAL: fetch it from the most advanced node first", catch_up)
                    .retry(RetryPolicy::once())
                    .into());
                s.push(
                    step(
                        sh,
                        &p,
                        "raise_epoch",
                        "raise the cluster epoch (compare-and-set) naming the candidate",
                        raise_epoch,
                    )
                    .retry(quick)
                    .into(),
                );
                s.push(sync_standbys_step(sh, &p).retry(quick).into());
                s.push(
                    step(sh, &p, "promote", "promote the candidate and check a write commits", promote)
                        .retry(quick)
                        .into(),
                );
                s.push(
                    step(sh, &p, "repoint_replicas", "point the other replicas at the new primary", |c, sc| {
                        repoint_replicas(c, sc, true)
                    })
                    .retry(quick)
                    .into(),
                );
                s.push(
                    step(sh, &p, "resume_proxy", "publish the new routing and resume the proxy", resume_proxy)
                        .retry(quick)
                        .into(),
                );
                s.push(dns_step(sh, &p).into());
                s.push(
                    step(sh, &p, "report", "record the data-loss window and schedule the old primary's rejoin", report)
                        .retry(quick)
                        .into(),
                );
            }
            SWITCHOVER | FAILBACK | MIGRATE => {
                if self.kind == MIGRATE {
                    // The slow steps first, side by side; the gate before
                    // anything changes; then the switchover's cutover.
                    s.push(crate::migrate::prepare(sh, &p));
                    s.push(Step::approval("approve", "wait for an operator: pgdr approve <id>").into());
                } else {
                    gate(&p, &mut s);
                }
                s.push(
                    step(sh, &p, "check_target", "check the primary is up and choose the target", check_target)
                        .retry(quick)
                        .check("the primary is up; the target is a healthy replica within the RPO")
                        .into(),
                );
                s.push(
                    step(sh, &p, "pause_proxy", "pause the proxies (writer, and the reader's fallback to the primary) and drain running transactions", |c, sc| {
                        pause_proxy(c, sc, false)
                    })
                    .retry(quick)
                    .into(),
                );
                s.push(
                    step(
                        sh,
                        &p,
                        "stop_old_primary",
                        "stop the old primary (fast shutdown) and read its shutdown checkpoint",
                        stop_for_switchover,
                    )
                    .retry(quick)
                    .into(),
                );
                s.push(
                    step(
                        sh,
                        &p,
                        "check_replayed",
                        "check the target replayed the shutdown checkpoint; else start the old primary again",
                        check_replayed,
                    )
                    .retry(RetryPolicy::once())
                    .check("the target's replay position is past the old primary's shutdown checkpoint")
                    .into(),
                );
                s.push(
                    step(sh, &p, "raise_epoch", "raise the cluster epoch naming the target", raise_epoch)
                        .retry(quick)
                        .into(),
                );
                s.push(sync_standbys_step(sh, &p).retry(quick).into());
                s.push(step(sh, &p, "promote", "promote the target", promote).retry(quick).into());
                s.push(
                    step(sh, &p, "resume_proxy", "publish the new routing and resume the proxy", resume_proxy)
                        .retry(quick)
                        .into(),
                );
                s.push(
                    step(sh, &p, "repoint_replicas", "point the other replicas at the new primary", |c, sc| {
                        repoint_replicas(c, sc, true)
                    })
                    .retry(quick)
                    .into(),
                );
                s.push(dns_step(sh, &p).into());
                s.push(
                    step(
                        sh,
                        &p,
                        "rejoin_old_primary",
                        "bring the old primary back as a replica (pg_rewind, else base backup)",
                        rejoin_old_primary,
                    )
                    .retry(RetryPolicy {
                        max_attempts: 3,
                        initial: Duration::from_secs(1),
                        factor: 2.0,
                        max: Duration::from_secs(10),
                    })
                    .into(),
                );
                s.push(secrets_step(sh, &p).into());
            }
            REESTABLISH => {
                s.push(
                    step(sh, &p, "rejoin", "bring the node back as a replica of the current primary", reestablish)
                        .retry(RetryPolicy {
                            max_attempts: 5,
                            initial: Duration::from_secs(1),
                            factor: 2.0,
                            max: Duration::from_secs(10),
                        })
                        .into(),
                );
                s.push(secrets_step(sh, &p).into());
            }
            other => return Err(format!("unknown workflow kind {other}")),
        }
        Ok(s)
    }
}
