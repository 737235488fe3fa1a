//! The per-cluster watch loop: every `timing.probe_interval` it probes the
//! primary (a heartbeat write directly; every `timing.proxy_probe_interval`
//! also through each proxy writer endpoint, for the metrics), asks every
//! agent for its status, reads the
//! replicated heartbeat on replicas (lag against the tier's RPO), publishes
//! the routing, keeps synchronous mode's standby list, declares outages and
//! starts failovers, and starts re-establish for old primaries that answer
//! again.
//!
//! Writes are held, not refused, while the primary is suspect: the first
//! failed direct probe pauses the cluster's proxies (new connections and
//! transactions queue; see [`Hold`]), a probe that succeeds again resumes
//! them, and a declared outage hands the pause to the failover workflow,
//! which resumes the proxies on the new primary. So clients see a delay of
//! about the detection window plus the failover instead of errors.
//!
//! Vantage points: the controller's own probe, the primary's agent (its
//! status says whether PostgreSQL answers on the host), and one agent in
//! each other region of the cluster, asked to probe the primary
//! (`POST /v1/probe`) every interval. While one of those can be asked, an
//! outage needs one of them to agree (see [`crate::detect`] and
//! docs/failover-math.md, "Vantage points").

use std::collections::HashMap;
use std::sync::Arc;

use pgdr_api::ApiError;
use pgdr_api::agent::{ProbeKind, ProbeReply, ProbeRequest, Status};
use pgdr_config::{Cluster, Node};
use pgdr_model::{ClusterName, NodeName, ReplicationMode, Role};
use pgdr_store::ClusterState;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::controller::Controller;
use crate::detect::{Detector, ProbeOutcome, Verdict};
use crate::probe::{self, Prober};
use crate::runtime::{RouteInfo, VantageView};
use crate::workflows::{self, Params};

pub const VANTAGE_CONTROLLER: &str = "controller";
pub const VANTAGE_AGENT: &str = "primary-agent";

fn agent_outcome(status: Option<&Result<Status, ApiError>>) -> ProbeOutcome {
    match status {
        Some(Ok(s)) if s.up && s.role == Role::Primary => ProbeOutcome::Ok,
        Some(Ok(s)) if s.up => ProbeOutcome::Failed(format!("PostgreSQL is {}", s.role)),
        Some(Ok(s)) => ProbeOutcome::Failed(format!(
            "PostgreSQL does not answer on its host: {}",
            s.error.as_deref().unwrap_or("down")
        )),
        Some(Err(e)) if e.is_refused() => ProbeOutcome::Refused,
        Some(Err(e)) if e.is_timeout() => ProbeOutcome::TimedOut,
        Some(Err(e)) => ProbeOutcome::Failed(e.to_string()),
        None => ProbeOutcome::Failed("no status".into()),
    }
}

/// The vantage point probing from `region`.
pub fn remote_vantage(region: &str) -> String {
    format!("agent:{region}")
}

/// One agent per region other than the primary's, to probe the primary from
/// there: the first node of the region whose agent answered last time (else
/// the region's first node), with its heartbeat row.
fn remote_vantages<'a>(
    cfg: &pgdr_config::Config,
    cluster: &'a Cluster,
    primary: &Node,
    answered: &[NodeName],
) -> Vec<(String, &'a Node, i32)> {
    let mut regions: Vec<&pgdr_model::RegionName> = Vec::new();
    for n in &cluster.nodes {
        if n.region != primary.region && !regions.contains(&&n.region) {
            regions.push(&n.region);
        }
    }
    regions
        .into_iter()
        .filter_map(|r| {
            let in_region: Vec<&Node> = cluster.nodes.iter().filter(|n| n.region == *r).collect();
            let node = in_region.iter().find(|n| answered.contains(&n.name)).or_else(|| in_region.first()).copied()?;
            let row = 10 + cfg.regions.iter().position(|x| x.name == *r).unwrap_or(0) as i32;
            Some((remote_vantage(r.as_str()), node, row))
        })
        .collect()
}

/// Writes what a next leader needs of this cluster (see
/// [`crate::handover`]); only on a store other controllers share.
async fn hand_over(
    sh: &crate::runtime::Shared,
    cluster: &ClusterName,
    primary: &NodeName,
    primary_lsn: Option<pgdr_model::Lsn>,
    lag: &std::collections::BTreeMap<NodeName, f64>,
) {
    if !matches!(sh.config.controller.store, pgdr_config::StoreKind::Etcd(_)) {
        return;
    }
    let record =
        crate::handover::Handover { at_unix_ms: unix_ms(), primary: primary.clone(), primary_lsn, lag: lag.clone() };
    let Ok(bytes) = serde_json::to_vec(&record) else { return };
    if let Err(e) = sh.store.put(&pgdr_store::keys::cluster_observed(cluster.as_str()), bytes, None).await {
        tracing::debug!(cluster = %cluster, "cannot write the handover record: {e}");
    }
}

/// Starts from what the previous leader last saw of this cluster, when this
/// controller has seen nothing yet (it has just started leading).
async fn take_over(sh: &crate::runtime::Shared, cluster: &ClusterName, primary: &NodeName) {
    let known = sh.observed.lock().ok().is_some_and(|o| o.get(cluster).is_some_and(|o| o.primary_lsn.is_some()));
    if known || !matches!(sh.config.controller.store, pgdr_config::StoreKind::Etcd(_)) {
        return;
    }
    let record = match sh.store.get(&pgdr_store::keys::cluster_observed(cluster.as_str())).await {
        Ok(Some(v)) => serde_json::from_slice::<crate::handover::Handover>(&v.value).ok(),
        _ => None,
    };
    let Some(seed) = record.as_ref().and_then(|r| crate::handover::seed(r, primary, unix_ms())) else { return };
    tracing::info!(
        cluster = %cluster,
        primary = %primary,
        lag = ?seed.lag,
        "taking over the previous leader's observations (lags aged by the time since they were seen)"
    );
    if let Ok(mut o) = sh.observed.lock() {
        let e = o.entry(cluster.clone()).or_default();
        e.primary_lsn = e.primary_lsn.or(seed.primary_lsn);
        for (n, l) in seed.lag {
            e.lag.entry(n).or_insert(l);
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The detector's reading of an agent's probe answer.
fn remote_outcome(r: &ProbeReply) -> ProbeOutcome {
    match r.outcome {
        ProbeKind::Ok => ProbeOutcome::Ok,
        ProbeKind::Refused => ProbeOutcome::Refused,
        ProbeKind::Timeout => ProbeOutcome::TimedOut,
        ProbeKind::Error => ProbeOutcome::Failed(r.error.clone().unwrap_or_else(|| "error".into())),
    }
}

/// What the monitor wants of the proxies while it suspects the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Not held (resume if we paused).
    Open,
    /// Hold new connections and transactions.
    Held,
    /// A workflow took the pause over and resumes the proxies itself.
    HandedOver,
}

/// The proxies' pause while the primary is suspect, driven by one task per
/// cluster so that pause and resume reach the proxies in the order they
/// were asked for (a resume never overtakes the pause it undoes).
struct Hold {
    want: tokio::sync::watch::Sender<Want>,
    /// Since when the proxies are held because of a suspicion.
    since: Option<Instant>,
}

impl Hold {
    /// Starts the cluster's pause task on `tracker`; it ends when `cancel`
    /// fires or the [`Hold`] is dropped.
    fn start(ctl: &Controller, cluster: &ClusterName, cancel: &CancellationToken, tracker: &TaskTracker) -> Hold {
        let (want, mut rx) = tokio::sync::watch::channel(Want::Open);
        let (sh, cluster, cancel) = (ctl.sh.clone(), cluster.clone(), cancel.clone());
        // Holding new transactions needs no wait for running ones to drain:
        // the pause flag is set as the call starts.
        let pause_wait = sh.config.timing.probe_interval;
        tracker.spawn(async move {
            let mut paused = false;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = rx.changed() => if r.is_err() { return },
                }
                let want = *rx.borrow_and_update();
                match want {
                    Want::Held if !paused => {
                        paused = true;
                        match tokio::time::timeout(
                            pause_wait,
                            sh.proxies.pause(&cluster, crate::runtime::Drain::Nothing),
                        )
                        .await
                        {
                            Ok(Err(e)) => tracing::warn!(cluster = %cluster, "cannot pause the proxies: {e}"),
                            Ok(Ok(())) | Err(_) => {
                                tracing::info!(cluster = %cluster, "primary suspect: the proxies hold new transactions")
                            }
                        }
                    }
                    Want::Open if paused => {
                        paused = false;
                        match sh.proxies.resume(&cluster).await {
                            Err(e) => tracing::warn!(cluster = %cluster, "cannot resume the proxies: {e}"),
                            Ok(()) => tracing::info!(cluster = %cluster, "primary answers again: the proxies resumed"),
                        }
                    }
                    Want::HandedOver => paused = false,
                    _ => {}
                }
            }
        });
        Hold { want, since: None }
    }

    fn hold(&mut self, now: Instant) {
        if self.since.is_none() {
            self.since = Some(now);
            self.want.send_replace(Want::Held);
        }
    }

    /// Resumes the proxies: the suspicion is over. Returns how long they
    /// were held.
    fn release(&mut self) -> Option<std::time::Duration> {
        let since = self.since.take()?;
        self.want.send_replace(Want::Open);
        Some(since.elapsed())
    }

    /// Leaves the proxies paused for a workflow that resumes them.
    fn hand_over(&mut self) {
        if self.since.take().is_some() {
            self.want.send_replace(Want::HandedOver);
        }
    }
}

/// Records the cluster's first state: the one node that is primary.
async fn bootstrap(ctl: &Controller, cluster: &Cluster) -> Option<ClusterState> {
    let statuses = ctl.sh.observe(cluster).await;
    let primaries: Vec<&NodeName> = statuses
        .iter()
        .filter(|(_, s)| matches!(s, Ok(s) if s.up && s.role == Role::Primary))
        .map(|(n, _)| n)
        .collect();
    if primaries.len() != 1 {
        tracing::warn!(cluster = %cluster.name, "cannot record the cluster's first state: {} nodes are primary", primaries.len());
        return None;
    }
    let epoch = statuses.values().filter_map(|s| s.as_ref().ok()).map(|s| s.epoch).max().unwrap_or_default().next();
    ctl.sh.clusters.init(&cluster.name, epoch, Some(primaries[0].clone()), "bootstrap").await.ok()
}

/// Watches one cluster until `cancel` fires; returns once its helper task
/// (the proxies' pause, [`Hold`]) has stopped too.
pub async fn run(ctl: Controller, cluster: Cluster, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    watch(ctl, cluster, &cancel, &tracker).await;
    tracker.close();
    tracker.wait().await;
}

async fn watch(ctl: Controller, cluster: Cluster, cancel: &CancellationToken, tracker: &TaskTracker) {
    let sh = ctl.sh.clone();
    let timing = sh.config.timing.clone();
    let new_detector = |remote: &[String]| {
        Detector::new(
            timing.failure_threshold,
            timing.probe_quorum,
            [VANTAGE_CONTROLLER.to_owned(), VANTAGE_AGENT.to_owned()],
        )
        .with_independent(timing.probe_quorum, remote.iter().cloned())
    };
    let mut remote_names: Vec<String> = Vec::new();
    let mut det = new_detector(&remote_names);
    // The controller's readings agree on an outage that no other region
    // sees: it is cut off from the primary, not the primary from the world.
    let mut cut_off = false;
    let mut direct: Option<Prober> = None;
    let mut via_proxy: Vec<Prober> = Vec::new();
    // One kept connection per replica for the lag reads.
    let mut lag_readers: HashMap<NodeName, probe::LagReader> = HashMap::new();
    let mut published: Option<RouteInfo> = None;
    // The freeze rule refused a failover for the outage going on (its
    // event is sent once).
    let mut freeze_refused = false;
    // Since when the state store cannot be read (the cluster runs without
    // a control plane).
    let mut store_lost: Option<(Instant, time::OffsetDateTime)> = None;
    let mut breached: std::collections::HashSet<NodeName> = Default::default();
    let mut hold = Hold::start(&ctl, &cluster.name, cancel, tracker);
    let mut tick = tokio::time::interval(timing.probe_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    // When the controller's last probe of this cluster started (jitter).
    let mut last_probe: Option<Instant> = None;
    // The last handover record written (see crate::handover).
    let mut handed_over: Option<Instant> = None;
    let mut seeded = false;
    // When the canary last went through the proxies.
    let mut via_proxy_at: Option<Instant> = None;
    // Metric handles, made once (no label strings built per probe).
    let jitter = sh
        .metrics
        .probe_jitter_seconds
        .get_or_create(&crate::metrics::ClusterLabel { cluster: cluster.name.to_string() })
        .clone();
    let mut probe_counters: HashMap<(&'static str, &'static str), prometheus_client::metrics::counter::Counter> =
        HashMap::new();
    let mut count_probe = |path: &'static str, outcome: &'static str| {
        probe_counters
            .entry((path, outcome))
            .or_insert_with(|| {
                sh.metrics
                    .probes
                    .get_or_create(&crate::metrics::ProbeLabel {
                        cluster: cluster.name.to_string(),
                        path: path.into(),
                        outcome: outcome.into(),
                    })
                    .clone()
            })
            .inc();
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        let state = match sh.clusters.state(&cluster.name).await {
            Ok(Some(s)) => s,
            Ok(None) => match bootstrap(&ctl, &cluster).await {
                Some(s) => s,
                None => continue,
            },
            Err(e) => {
                tracing::warn!(cluster = %cluster.name, "state store: {e}");
                if store_lost.is_none() {
                    store_lost = Some((Instant::now(), time::OffsetDateTime::now_utc()));
                    // The store cannot record it: the log and webhooks can.
                    sh.emit(sh.event(
                        &cluster.name,
                        "control_plane_lost",
                        format!("the state store cannot be read ({e}): the cluster runs without a control plane; the primary keeps its role while a majority of agents support it, and no automatic role change happens until the store answers"),
                    ))
                    .await;
                }
                if let Ok(mut o) = sh.observed.lock() {
                    let o = o.entry(cluster.name.clone()).or_default();
                    o.control_plane = Some(format!("state store unreachable: {e}"));
                    o.control_plane_since = store_lost.map(|(_, at)| at);
                }
                continue;
            }
        };
        if let Ok(mut o) = sh.observed.lock() {
            o.entry(cluster.name.clone()).or_default().state = Some(state.clone());
        }
        if let Some((lost, _)) = store_lost.take() {
            sh.emit(sh.event(
                &cluster.name,
                "control_plane_back",
                format!(
                    "the state store answers again after {:.1}s without a control plane",
                    lost.elapsed().as_secs_f64()
                ),
            ))
            .await;
            if let Ok(mut o) = sh.observed.lock() {
                let o = o.entry(cluster.name.clone()).or_default();
                o.control_plane = None;
                o.control_plane_since = None;
            }
        }
        let busy = ctl.busy(&cluster.name).await;
        let Some(primary) = state.primary.clone() else { continue };
        let Some(pnode) = cluster.node(primary.as_str()) else { continue };
        if !seeded {
            seeded = true;
            take_over(&sh, &cluster.name, &primary).await;
        }
        // Probe and observe together.
        let target = sh.target(&cluster, pnode);
        let prober = direct.get_or_insert_with(|| Prober::new(target.clone(), probe::ROW_DIRECT, "pgdr-controller"));
        prober.retarget(target.clone());
        // Vantage points in other regions (none while a workflow runs).
        // Which agents answered last time (not a copy of their statuses).
        let answered: Vec<NodeName> = sh
            .observed
            .lock()
            .ok()
            .and_then(|o| {
                o.get(&cluster.name)
                    .map(|o| o.statuses.iter().filter(|(_, s)| s.is_ok()).map(|(n, _)| n.clone()).collect())
            })
            .unwrap_or_default();
        let remotes = remote_vantages(&sh.config, &cluster, pnode, &answered);
        let names: Vec<String> = remotes.iter().map(|(n, _, _)| n.clone()).collect();
        if names != remote_names {
            det = new_detector(&names);
            remote_names = names;
        }
        // Each remote vantage point answers its probe with its own status:
        // one request per agent and probe, not two.
        let asked: Vec<NodeName> =
            if busy { Vec::new() } else { remotes.iter().map(|(_, n, _)| n.name.clone()).collect() };
        let remote_fut = async {
            let asks = remotes.iter().filter(|_| !busy).map(|(name, node, row)| {
                let client = sh.agent(node).map(|c| c.with_timeout(timing.probe_interval.max(timing.probe_timeout)));
                let req = ProbeRequest {
                    host: pnode.host.clone(),
                    port: pnode.port,
                    timeout_ms: timing.probe_timeout.as_millis().max(1) as u64,
                    row: Some(*row),
                    with_status: true,
                };
                async move {
                    let r = match client {
                        Ok(c) => c.probe(&req).await,
                        Err(e) => Err(e),
                    };
                    (name.clone(), node.name.to_string(), node.region.to_string(), r)
                }
            });
            let mut out = futures::future::join_all(asks).await;
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        };
        let t0 = Instant::now();
        if let Some(prev) = last_probe.replace(t0) {
            let gap = t0.duration_since(prev).as_secs_f64();
            jitter.observe((gap - timing.probe_interval.as_secs_f64()).abs());
        }
        det.probe_started(VANTAGE_CONTROLLER, t0 + timing.probe_timeout);
        let (res, mut statuses, mut remote_seen) = tokio::join!(
            prober.probe(timing.probe_timeout),
            sh.observe_nodes(&cluster, None, |n| !asked.contains(n)),
            remote_fut
        );
        // The statuses the probes brought back; an agent that predates
        // `with_status`, or refused the probe, is asked for it separately.
        let mut older = Vec::new();
        for (_, node, _, r) in &mut remote_seen {
            let Some(node) = cluster.node(node) else { continue };
            match r {
                Ok(reply) => match reply.status.take() {
                    Some(s) => {
                        statuses.insert(node.name.clone(), Ok(*s));
                    }
                    None => older.push(node.name.clone()),
                },
                // Not reached: its status would not come either.
                Err(e) if e.is_unreachable() => {
                    statuses.insert(node.name.clone(), Err(e.clone()));
                }
                // It answered, refusing the probe: its status may still come.
                Err(_) => older.push(node.name.clone()),
            }
        }
        if !older.is_empty() {
            statuses.extend(sh.observe_nodes(&cluster, None, |n| older.contains(n)).await);
        }
        let now = Instant::now();
        // Hold writes at the first failed probe; let them go when it passes.
        if !busy {
            if !res.outcome.is_ok() && !cut_off {
                hold.hold(now);
            } else if let Some(held) = hold.release() {
                tracing::info!(cluster = %cluster.name, "the primary answers again; the proxies held writes for {:.2}s", held.as_secs_f64());
            }
        }
        count_probe("direct", res.outcome.kind());
        let agent_seen = agent_outcome(statuses.get(&primary));
        // Through the proxies (metrics only: a paused proxy is not an outage,
        // and a held one would only make this probe wait).
        if !busy
            && hold.since.is_none()
            && via_proxy_at.is_none_or(|t| t0 + timing.probe_interval / 2 >= t + timing.proxy_probe_interval)
        {
            via_proxy_at = Some(t0);
            if via_proxy.is_empty() {
                for p in sh.config.proxies_of(cluster.name.as_str()) {
                    let mut t = target.clone();
                    t.host = p.writer.ip().to_string();
                    t.port = p.writer.port();
                    // The proxy speaks TLS to clients only when it has a certificate.
                    if p.tls.is_none() {
                        t.tls = None;
                    }
                    via_proxy.push(Prober::new(t, probe::ROW_PROXY, "pgdr-controller-via-proxy"));
                }
            }
            for pp in &mut via_proxy {
                let r = pp.probe(timing.probe_timeout).await;
                count_probe("proxy", r.outcome.kind());
            }
        }
        // Lag from the replicated heartbeat.
        let mut lag = std::collections::BTreeMap::new();
        // What was seen before, field by field (not a copy of the whole view).
        let (prev_hb, prev_lsn) = sh
            .observed
            .lock()
            .ok()
            .and_then(|o| o.get(&cluster.name).map(|o| (o.heartbeat_at, o.primary_lsn)))
            .unwrap_or_default();
        let primary_hb = res.heartbeat_at.or(prev_hb);
        if res.outcome.is_ok()
            && let Some(hb) = primary_hb
        {
            for node in cluster.nodes.iter().filter(|n| n.name != primary) {
                if !matches!(statuses.get(&node.name), Some(Ok(s)) if s.up) {
                    continue;
                }
                let target = sh.target(&cluster, node);
                let reader =
                    lag_readers.entry(node.name.clone()).or_insert_with(|| probe::LagReader::new(target.clone()));
                reader.retarget(target);
                if let Ok(Some(r)) = reader.read(timing.probe_timeout).await {
                    let l = probe::heartbeat_lag(hb, r);
                    lag.insert(node.name.clone(), l);
                    sh.metrics
                        .lag_seconds
                        .get_or_create(&crate::metrics::NodeLabel {
                            cluster: cluster.name.to_string(),
                            node: node.name.to_string(),
                        })
                        .set(l);
                    if let Some(tier) = sh.tier(&cluster) {
                        let over = l > tier.rpo.as_secs_f64();
                        if over && breached.insert(node.name.clone()) {
                            sh.metrics
                                .rpo_breaches
                                .get_or_create(&crate::metrics::NodeLabel {
                                    cluster: cluster.name.to_string(),
                                    node: node.name.to_string(),
                                })
                                .inc();
                            sh.emit(sh.event(
                                &cluster.name,
                                "rpo_breached",
                                format!(
                                    "{} lags {l:.1}s, past the tier's RPO of {}",
                                    node.name,
                                    pgdr_model::format_duration(tier.rpo)
                                ),
                            ))
                            .await;
                        } else if !over {
                            breached.remove(&node.name);
                        }
                    }
                }
            }
        }
        // Record what we saw.
        {
            let primary_lsn = match statuses.get(&primary) {
                Some(Ok(s)) if s.up => s.current_lsn.or(prev_lsn),
                _ => prev_lsn,
            };
            // Fresh readings only (the primary answered, lags measured now)
            // are handed over: a re-stamped old reading would hide its age.
            let fresh = res.outcome.is_ok() && statuses.get(&primary).is_some_and(|s| s.as_ref().is_ok_and(|s| s.up));
            if fresh && handed_over.is_none_or(|t| t.elapsed().as_millis() as u64 >= crate::handover::EVERY_MS) {
                handed_over = Some(Instant::now());
                hand_over(&sh, &cluster.name, &primary, primary_lsn, &lag).await;
            }
            if let Ok(mut o) = sh.observed.lock() {
                let e = o.entry(cluster.name.clone()).or_default();
                e.statuses = statuses
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Ok(s) => Ok(s.clone()),
                            Err(e) => Err(e.to_string()),
                        };
                        (k.clone(), v)
                    })
                    .collect();
                // The latest lag of each replica measured now; the others
                // keep their last one.
                e.lag.extend(lag);
                e.primary_lsn = primary_lsn;
                e.heartbeat_at = primary_hb;
                e.vantages.retain(|k, _| remote_names.contains(k));
                for (name, node, region, r) in &remote_seen {
                    let v = e.vantages.entry(name.clone()).or_insert_with(VantageView::default);
                    v.node = node.clone();
                    v.region = region.clone();
                    v.target = format!("primary {primary} ({}:{}, heartbeat write)", pnode.host, pnode.port);
                    v.at = Some(now);
                    match r {
                        Ok(reply) => {
                            v.outcome = reply.outcome.as_str().to_owned();
                            v.latency_ms = Some(reply.latency_ms);
                            v.detail = reply.error.clone();
                        }
                        Err(err) => {
                            v.outcome = "unreachable".into();
                            v.latency_ms = None;
                            v.detail = Some(format!("the agent of {node} did not answer; no vote: {err}"));
                        }
                    }
                    *v.counts.entry(v.outcome.clone()).or_default() += 1;
                }
            }
        }
        if busy {
            hold.hand_over();
            cut_off = false;
            det.reset();
            if let Ok(mut o) = sh.observed.lock() {
                o.entry(cluster.name.clone()).or_default().detection = "workflow running".into();
            }
            continue;
        }
        // Routing, and sync mode's standby list.
        let route = sh.route(&cluster, &state);
        // Again now and then: a proxy that restarted (standalone, behind its
        // admin API) learns the epoch's route without waiting for a change.
        if published.as_ref() != Some(&route) || n.is_multiple_of(20) {
            sh.proxies.publish(&cluster.name, &route);
            published = Some(route);
        }
        if let ReplicationMode::Sync { quorum } = cluster.replication
            && res.outcome.is_ok()
            && n % 3 == 1
        {
            match crate::sync::apply(&sh, &cluster, &primary, quorum).await {
                Ok(degraded) => {
                    let was =
                        sh.observed.lock().ok().and_then(|o| o.get(&cluster.name).map(|o| o.degraded)).unwrap_or(false);
                    if degraded != was {
                        sh.emit(sh.event(
                            &cluster.name,
                            if degraded { "sync_degraded" } else { "sync_restored" },
                            if degraded {
                                format!(
                                    "degraded: no synchronous standby (fewer than {quorum} healthy replicas): commits wait for one"
                                )
                            } else {
                                format!("{quorum} or more healthy replicas stream again: commits are acknowledged")
                            },
                        ))
                        .await;
                    }
                    if let Ok(mut o) = sh.observed.lock() {
                        o.entry(cluster.name.clone()).or_default().degraded = degraded;
                    }
                }
                Err(e) => tracing::warn!(cluster = %cluster.name, "cannot set synchronous_standby_names: {e}"),
            }
        }
        // Detection.
        det.record(VANTAGE_CONTROLLER, res.outcome.clone(), now);
        det.record(VANTAGE_AGENT, agent_seen.clone(), now);
        for (name, _, _, r) in &remote_seen {
            match r {
                Ok(reply) => det.record(name, remote_outcome(reply), now),
                Err(_) => det.absent(name),
            }
        }
        let verdict = det.verdict();
        let was_cut_off = cut_off;
        cut_off = matches!(verdict, Verdict::Unconfirmed { .. });
        if cut_off && !was_cut_off {
            // Another region writes to the primary: do not hold writes for
            // the controller's own trouble.
            if let Some(held) = hold.release() {
                tracing::warn!(cluster = %cluster.name, "held writes for {:.2}s; released: only this controller sees the primary out", held.as_secs_f64());
            }
            sh.emit(sh.event(
                &cluster.name,
                "outage_unconfirmed",
                format!("this controller sees primary {primary} out, but no vantage point in another region agrees: nothing is declared"),
            ))
            .await;
        }
        if let Ok(mut o) = sh.observed.lock() {
            o.entry(cluster.name.clone()).or_default().detection = match &verdict {
                Verdict::Healthy => "healthy".into(),
                Verdict::Suspect { agreeing, needed } => format!("suspect ({agreeing} of {needed} vantage points)"),
                Verdict::Unconfirmed { agreeing } => format!(
                    "unconfirmed ({} see the primary out; no vantage point in another region agrees)",
                    agreeing.join(", ")
                ),
                Verdict::Outage { .. } => "outage".into(),
            };
        }
        if !matches!(verdict, Verdict::Outage { .. }) {
            freeze_refused = false;
        }
        if let Verdict::Outage { since, agreeing } = verdict {
            // The freeze rule: read now (a failed read decides nothing), and
            // again in the fence epoch's transaction.
            let frozen = match sh.clusters.freezes(&cluster.name).await {
                Ok(f) => pgdr_decide::rules::Frozen { global: f.global.is_some(), cluster: f.cluster.is_some() },
                Err(e) => {
                    tracing::warn!(cluster = %cluster.name, "state store: {e}: no failover decided");
                    continue;
                }
            };
            if let Err(refusal) = pgdr_decide::rules::admit(pgdr_decide::rules::Origin::Automatic, frozen) {
                // Clients are not held for a failover that will not come.
                hold.release();
                if !freeze_refused {
                    freeze_refused = true;
                    let mut ev = sh.event(
                        &cluster.name,
                        "failover_blocked",
                        format!(
                            "primary {primary} is out (agreed by {}), no automatic failover: {refusal}",
                            agreeing.join(", ")
                        ),
                    );
                    ev.epoch = Some(state.epoch);
                    sh.emit(ev).await;
                }
                if let Ok(mut o) = sh.observed.lock() {
                    o.entry(cluster.name.clone()).or_default().detection =
                        "outage; frozen: no automatic failover".into();
                }
                continue;
            }
            let detection = now.duration_since(since);
            sh.metrics
                .detection_seconds
                .get_or_create(&crate::metrics::ClusterLabel { cluster: cluster.name.to_string() })
                .observe(detection.as_secs_f64());
            let crash = matches!(statuses.get(&primary), Some(Ok(s)) if !s.up);
            let old_lsn = sh.observed.lock().ok().and_then(|o| o.get(&cluster.name).and_then(|o| o.primary_lsn));
            let mut ev = sh.event(&cluster.name, "outage_declared", format!(
                "primary {primary} is out (agreed by {}; first failure {:.1}s ago; direct probe: {:?}; agent: {:?})",
                agreeing.join(", "), detection.as_secs_f64(), res.outcome, agent_seen
            ));
            ev.epoch = Some(state.epoch);
            sh.emit(ev).await;
            let params = Params {
                cluster: cluster.name.clone(),
                reason: format!("outage of {primary} detected in {:.1}s", detection.as_secs_f64()),
                to: None,
                allow_data_loss: false,
                require_approval: false,
                requested_by: Some("detector".into()),
                old_primary: Some(primary.clone()),
                old_epoch: state.epoch,
                old_lsn,
                crash,
                node: None,
                keep_tail: true,
                automatic: true,
            };
            match ctl.start_params(workflows::FAILOVER, params).await {
                Ok(id) => {
                    hold.hand_over();
                    tracing::warn!(cluster = %cluster.name, workflow = %id, "failover started")
                }
                Err(e) => tracing::warn!(cluster = %cluster.name, "cannot start a failover: {e}"),
            }
            det.reset();
            continue;
        }
        // Re-establish old primaries that answer again (not while the
        // primary is suspect). A re-establish holds no cluster lock, so
        // detection goes on while it rebuilds; a failover cancels it.
        if hold.since.is_some() {
            continue;
        }
        for node in cluster.nodes.iter().filter(|n| n.name != primary) {
            let flagged =
                sh.needs_rejoin.lock().ok().and_then(|r| r.get(&(cluster.name.clone(), node.name.clone())).copied());
            // A deposed primary writable again, or one that came back under
            // the boot guard (read-only, standby mode, following no one).
            let stale_primary =
                matches!(statuses.get(&node.name), Some(Ok(s)) if s.up && (s.role == Role::Primary || s.boot_guard));
            let answers = matches!(statuses.get(&node.name), Some(Ok(_)));
            if answers && (flagged.is_some() || stale_primary) {
                let params = Params {
                    cluster: cluster.name.clone(),
                    reason: format!("{} answers again after a failover", node.name),
                    to: None,
                    allow_data_loss: false,
                    require_approval: false,
                    requested_by: Some("controller".into()),
                    old_primary: Some(primary.clone()),
                    old_epoch: state.epoch,
                    old_lsn: None,
                    crash: false,
                    node: Some(node.name.clone()),
                    // A node that may have taken writes of its own keeps
                    // them aside; a replica a role change missed rewinds.
                    keep_tail: stale_primary || flagged.unwrap_or(true),
                    automatic: false,
                };
                match ctl.start_params(workflows::REESTABLISH, params).await {
                    Ok(id) => {
                        tracing::info!(cluster = %cluster.name, node = %node.name, workflow = %id, "re-establish started")
                    }
                    Err(e) => tracing::debug!(cluster = %cluster.name, "re-establish not started: {e}"),
                }
                break;
            }
        }
    }
}

/// Exposed for tests: the agent vantage point's reading of a status.
pub fn agent_vantage(status: Option<&Result<Status, ApiError>>) -> ProbeOutcome {
    agent_outcome(status)
}

/// Shared handle type used by the monitor.
pub type Handle = Arc<crate::runtime::Shared>;
