//! The drill loop: per run, start the workload, inject the fault, wait for
//! writes to come back, let throughput settle, stop, check the ledger on the
//! primary, read what the controller did, restore the topology.

use std::time::{Duration, Instant, SystemTime};

use pgdr_config::{Cluster, Config, Tier};

use crate::DrillError;
use crate::checker;
use crate::observer::{DrillObserver, Marker, MarkerKind, Topology, connect_node};
use crate::report::{DrillReport, Objectives, RunReport, StepReport, Stranded, TimelineMarker};
use crate::scenario::{self, FaultGuard, Hosts, Scenario};
use crate::timeline;
use crate::workload::{Workload, WorkloadSpec, prepare};
use crate::writable::{WritableProbe, WritableTimeline};

/// How a drill runs.
#[derive(Debug, Clone)]
pub struct DrillSpec {
    pub scenario: Scenario,
    pub runs: u32,
    /// Workload before the fault (the throughput baseline).
    pub warmup: Duration,
    /// Workload after writes came back (throughput recovery).
    pub settle: Duration,
    /// Longest wait for writes to come back.
    pub recovery_timeout: Duration,
    /// Longest wait for the topology to be whole again after a run.
    pub restore_timeout: Duration,
    pub writers: usize,
    pub readers: usize,
}

impl DrillSpec {
    pub fn new(scenario: Scenario, tier: &Tier) -> DrillSpec {
        DrillSpec {
            scenario,
            runs: 1,
            warmup: Duration::from_secs(3),
            settle: Duration::from_secs(3),
            recovery_timeout: (tier.rto * 4).max(Duration::from_secs(45)),
            restore_timeout: Duration::from_secs(90),
            writers: 4,
            readers: 1,
        }
    }
}

/// Where the workload connects: the proxy in the primary's region when
/// there is one, else straight to the primary (then a failover is not
/// hidden from clients, and the report says so).
pub async fn endpoints(
    cfg: &Config,
    cluster: &Cluster,
    primary: &str,
) -> Result<(String, Option<String>, String), DrillError> {
    endpoints_where(cfg, cluster, primary, false).await
}

/// As [`endpoints`]; with `outside`, a proxy in another region than the
/// primary's (the clients a partition of the primary's region leaves on the
/// reachable side).
pub async fn endpoints_where(
    cfg: &Config,
    cluster: &Cluster,
    primary: &str,
    outside: bool,
) -> Result<(String, Option<String>, String), DrillError> {
    let region = cluster.node(primary).map(|n| n.region.clone());
    let mut proxies = Vec::new();
    let mut silent = Vec::new();
    for p in cfg.proxies_of(cluster.name.as_str()) {
        // A configured proxy that is not running is no endpoint.
        match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(p.writer)).await {
            Ok(Ok(_)) => proxies.push(p),
            _ => silent.push(p.writer.to_string()),
        }
    }
    let proxy = if outside {
        proxies.iter().find(|p| Some(&p.region) != region.as_ref())
    } else {
        proxies.iter().find(|p| Some(&p.region) == region.as_ref()).or(proxies.first())
    };
    // `tls`: whether this endpoint speaks TLS (nodes do under [tls]; a proxy
    // when it has a certificate for its clients).
    let auth = |host: String, port: u16, tls: bool| -> Result<String, DrillError> {
        let mut s = format!(
            "host={host} port={port} user={} dbname={} connect_timeout=10 application_name=pgdr-drill",
            pgdr_node::local::conn_quote(&cluster.user),
            pgdr_node::local::conn_quote(&cluster.database)
        );
        if let Some(p) = &cluster.password {
            s.push_str(&format!(" password={}", pgdr_node::local::conn_quote(&p.resolve()?)));
        }
        if let Some(t) = cfg.tls.as_ref().filter(|_| tls) {
            s.push_str(&pgdr_tls::pg::libpq_params(&t.ca));
        }
        Ok(s)
    };
    match proxy {
        Some(p) => {
            let w = auth(p.writer.ip().to_string(), p.writer.port(), p.tls.is_some())?;
            let r = match p.reader {
                Some(r) => Some(auth(r.ip().to_string(), r.port(), p.tls.is_some())?),
                None => None,
            };
            Ok((
                w,
                r,
                format!(
                    "proxy {} (writer {}{})",
                    p.name,
                    p.writer,
                    p.reader.map(|r| format!(", reader {r}")).unwrap_or_default()
                ),
            ))
        }
        None => {
            let n = cluster.node(primary).ok_or_else(|| DrillError::Topology(format!("no node {primary}")))?;
            Ok((
                auth(n.host.clone(), n.port, true)?,
                None,
                if silent.is_empty() {
                    format!("node {primary} directly (the cluster has no proxy: clients see the role change)")
                } else {
                    format!(
                        "node {primary} directly, because no configured proxy answers ({}): clients see the role change",
                        silent.join(", ")
                    )
                },
            ))
        }
    }
}

/// The node a planned switchover moves the primary to: a running replica
/// in the primary's region when there is one (the usual maintenance
/// switchover), else any running replica.
pub fn switchover_target(cluster: &Cluster, topology: &Topology) -> Option<String> {
    let primary = topology.primary.as_deref()?;
    let home = cluster.node(primary).map(|n| n.region.as_str());
    let replicas: Vec<&crate::observer::NodeView> =
        topology.nodes.iter().filter(|n| n.name != primary && n.role == pgdr_model::Role::Replica).collect();
    replicas.iter().find(|n| Some(n.region.as_str()) == home).or(replicas.first()).map(|n| n.name.clone())
}

/// Progress lines for the caller to show.
pub trait Progress: Send + Sync {
    fn say(&self, line: &str);
}

impl<F: Fn(&str) + Send + Sync> Progress for F {
    fn say(&self, line: &str) {
        self(line)
    }
}

/// Everything a drill needs.
pub struct Drill<'a> {
    pub config: &'a Config,
    pub cluster: &'a Cluster,
    pub tier: &'a Tier,
    pub observer: &'a dyn DrillObserver,
    pub hosts: &'a dyn Hosts,
    pub progress: &'a dyn Progress,
}

impl Drill<'_> {
    /// Runs every run of a scenario and summarises.
    pub async fn run(&self, spec: &DrillSpec) -> DrillReport {
        let mut runs = Vec::new();
        let mut failed = Vec::new();
        // Every run starts from, and is restored to, the topology found now.
        let (start, whole, _) = self.wait_whole(spec.restore_timeout).await;
        let Some(home) = start.primary.clone() else {
            failed.push(format!("cluster {} has no single primary", self.cluster.name));
            return DrillReport::summarize(spec.scenario.as_str(), spec.scenario.describe(), runs, failed);
        };
        if !whole {
            self.progress.say("not every node is up: the drill starts anyway");
        }
        for i in 1..=spec.runs {
            self.progress.say(&format!("{} run {i}/{}: starting", spec.scenario, spec.runs));
            if i > 1 {
                let _ = self.wait_whole(spec.restore_timeout).await;
            }
            match self.one(spec, i, &home).await {
                Ok(r) => {
                    self.progress.say(&format!(
                        "{} run {i}: RTO {}, detection {}, client errors {}, lost commits {}",
                        spec.scenario,
                        r.rto_seconds.map_or("none (writes did not come back)".into(), |x| format!("{x:.2} s")),
                        r.detection_seconds.map_or("not observed".into(), |x| format!("{x:.2} s")),
                        r.client_errors,
                        r.lost_commits
                    ));
                    runs.push(r);
                }
                Err(e) => {
                    self.progress.say(&format!("{} run {i} failed: {e}", spec.scenario));
                    failed.push(format!("run {i}: {e}"));
                    // A topology we could not restore makes further runs meaningless.
                    break;
                }
            }
        }
        DrillReport::summarize(spec.scenario.as_str(), spec.scenario.describe(), runs, failed)
    }

    async fn topology(&self) -> Result<Topology, DrillError> {
        self.observer.topology().await
    }

    /// One run. Whatever ends it, the fault is undone: an error after the
    /// injection restores what it can here, and the fault's guard continues
    /// frozen processes and heals partitions even when the run is dropped.
    async fn one(&self, spec: &DrillSpec, run: u32, home: &str) -> Result<RunReport, DrillError> {
        // The drill's tables first (best effort: the run checks again), so
        // the overlap checker's probes find them rather than create them
        // alongside the setup.
        if let Some(p) = self.topology().await.ok().and_then(|t| t.primary)
            && let Some(node) = self.cluster.node(&p)
            && let Ok(c) = connect_node(self.cluster, node, Duration::from_secs(5), self.config.tls.as_ref()).await
        {
            let _ = prepare(&c).await;
        }
        let probe = WritableProbe::start(self.cluster, self.config.tls.as_ref())?;
        let mut fault: Option<FaultGuard> = None;
        let result = self.one_inner(spec, run, home, &mut fault).await;
        if let Some(guard) = fault.take() {
            let topology = self.topology().await.ok();
            let done = self.restore_known(guard.injected(), topology.as_ref()).await;
            guard.disarm();
            self.progress.say(&format!("{}: the run failed; undone: {}", spec.scenario, done.join("; ")));
        }
        let log = probe.stop().await;
        let mut report = result?;
        let timeline = log.analyse(report.workload_started_unix_ms);
        if !timeline.overlaps.is_empty() {
            let what = timeline.describe_overlaps();
            self.progress.say(&format!("{}: SPLIT BRAIN: {what}", spec.scenario));
            report.notes.push(format!(
                "SPLIT BRAIN: two servers accepted direct BEGIN READ WRITE writes at the same time: {what}"
            ));
            report.objectives.single_writer = false;
            report.objectives.passed = false;
        }
        report.writable = timeline;
        Ok(report)
    }

    async fn one_inner(
        &self,
        spec: &DrillSpec,
        run: u32,
        home: &str,
        fault: &mut Option<FaultGuard>,
    ) -> Result<RunReport, DrillError> {
        let mut notes = Vec::new();
        let mut before = self.topology().await?;
        let original = before
            .primary
            .clone()
            .ok_or_else(|| DrillError::Topology(format!("cluster {} has no single primary", self.cluster.name)))?;
        if spec.scenario == Scenario::Failback {
            // A failback needs the primary away from home first (untimed).
            let home = self.cluster.node(&original).map(|n| n.region.to_string()).unwrap_or_default();
            let away = self.cluster.nodes.iter().find(|n| n.region.as_str() != home).map(|n| n.name.to_string());
            self.progress
                .say(&format!("failback: switching over to {} first (not measured)", away.as_deref().unwrap_or("?")));
            self.observer.switchover(away.as_deref()).await?;
            before = self.wait_primary(spec.restore_timeout).await?;
        }
        let primary = before.primary.clone().unwrap_or_else(|| original.clone());
        let pnode = self
            .cluster
            .node(&primary)
            .ok_or_else(|| DrillError::Topology(format!("primary {primary} is not in the config")))?;
        let direct = connect_node(self.cluster, pnode, Duration::from_secs(5), self.config.tls.as_ref()).await?;
        prepare(&direct).await?;
        drop(direct);

        let partition = spec.scenario == Scenario::RegionPartition;
        if matches!(spec.scenario, Scenario::RegionPartition | Scenario::RegionLoss) {
            // A primary that still reaches a majority of its cluster's agents
            // keeps taking writes by design (no split brain, no demotion on a
            // control-plane outage), so a cut-off region holding that majority
            // is never failed over. Say so before injecting anything.
            let in_region = self.cluster.nodes.iter().filter(|n| n.region == pnode.region).count();
            if in_region * 2 > self.cluster.nodes.len() {
                return Err(DrillError::Topology(format!(
                    "{}: region {} holds {in_region} of the cluster's {} nodes, a majority of its agents, so its primary keeps taking writes when the region is cut off and nothing may be promoted (by design: no split brain); give the other regions more nodes (e.g. pgdr sandbox up --standbys-per-region 2)",
                    spec.scenario.as_str(),
                    pnode.region,
                    self.cluster.nodes.len()
                )));
            }
        }
        let (writer, reader, endpoint) = endpoints_where(self.config, self.cluster, &primary, partition).await?;
        notes.push(format!("workload through {endpoint}, {} writers, {} readers", spec.writers, spec.readers));
        // A partition strands the clients in the primary's region with the
        // old primary: they keep writing to it until it fences itself. Their
        // acknowledged commits are checked too (the new primary may lack
        // them: that is the partition's data loss); the RTO is what the
        // clients on the reachable side saw.
        let mut stranded = if partition {
            let (w, _, e) = endpoints_where(self.config, self.cluster, &primary, false).await?;
            notes.push(format!("clients in the partitioned region: 2 writers through {e}"));
            let mut s = WorkloadSpec::new(w);
            s.writers = 2;
            s.readers = 0;
            // Each workload of a process gets its own id range (see
            // `Workload::start`), so the two sides never collide.
            Some(Workload::start(s))
        } else {
            None
        };
        let mut wspec = WorkloadSpec::new(writer);
        wspec.reader = reader;
        wspec.writers = spec.writers;
        wspec.readers = spec.readers;
        let started_at = SystemTime::now();
        let workload = Workload::start(wspec);
        tokio::time::sleep(spec.warmup).await;

        let fault_ms = workload.now_ms();
        let fault_unix = crate::unix_ms(SystemTime::now());
        self.progress.say(&format!("{}: injecting: {}", spec.scenario, spec.scenario.describe()));
        let mut planned_done_ms = None;
        let injected = match spec.scenario {
            Scenario::Switchover | Scenario::Failback => {
                let r = if spec.scenario == Scenario::Failback {
                    self.observer.failback().await
                } else {
                    match switchover_target(self.cluster, &before) {
                        Some(t) => self.observer.switchover(Some(&t)).await,
                        None => Err(DrillError::Topology(format!(
                            "cluster {} has no running replica to switch over to",
                            self.cluster.name
                        ))),
                    }
                };
                r?;
                planned_done_ms = Some(workload.now_ms());
                scenario::Injected { description: spec.scenario.describe().to_owned(), undo: Vec::new() }
            }
            s => scenario::inject(s, self.cluster, &before, self.hosts)?,
        };
        let injected = fault.insert(FaultGuard::new(injected, self.hosts)).injected().clone();

        // Writes back?
        let t0 = Instant::now();
        let mut recovered = false;
        while t0.elapsed() < spec.recovery_timeout {
            let back = if spec.scenario.interrupts_writes() {
                workload.recovered_since(fault_ms)
            } else {
                workload.acks_after(fault_ms) > 0
            };
            if back {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if recovered {
            self.progress.say(&format!("{}: writes are back; settling", spec.scenario));
            tokio::time::sleep(spec.settle).await;
        } else {
            notes.push(format!("writes did not come back within {:.0} s", spec.recovery_timeout.as_secs_f64()));
            self.progress
                .say(&format!("{}: writes did not come back within {:?}", spec.scenario, spec.recovery_timeout));
        }
        let record = workload.stop().await;
        let stranded = match stranded.take() {
            Some(w) => Some(w.stop().await),
            None => None,
        };

        // What happened, and on which primary to check.
        let after = self.topology().await.unwrap_or_default();
        let mut restored = Vec::new();
        let mut check_on = after.primary.clone();
        if check_on.is_none() {
            // Nothing took over (no controller, or it failed): restore first,
            // then check the ledger on whatever primary that leaves.
            restored.extend(self.restore(&injected, &after).await);
            if let Some(g) = fault.take() {
                g.disarm();
            }
            check_on = self.wait_primary(spec.restore_timeout).await.ok().and_then(|t| t.primary);
        }
        let check_node =
            check_on.clone().ok_or_else(|| DrillError::Topology("no primary to check the ledger on".into()))?;
        let cnode =
            self.cluster.node(&check_node).ok_or_else(|| DrillError::Topology(format!("no node {check_node}")))?;
        let client = connect_node(self.cluster, cnode, Duration::from_secs(10), self.config.tls.as_ref()).await?;
        let mut loss = checker::check_ledger(&client, &record, Some(fault_ms)).await?;
        let mut stranded_report = None;
        if let Some(st) = &stranded {
            let offset = st.started_unix_ms - record.started_unix_ms;
            let l2 = checker::check_ledger(&client, st, Some(fault_ms - offset)).await?;
            notes.push(format!(
                "clients in the partitioned region: {} commits acknowledged, {} of them missing on {check_node}, {} client errors",
                l2.acknowledged_commits,
                l2.lost_commits(),
                st.write_failures().count()
            ));
            let last_ack_unix =
                st.acks.iter().map(|a| a.at_ms).max_by(f64::total_cmp).map(|ms| st.started_unix_ms + ms);
            stranded_report = Some((l2.acknowledged_commits, l2.lost_commits(), last_ack_unix));
            loss = checker::merge(loss, l2, offset, fault_ms);
        }
        drop(client);
        if loss.lost_commits() > 0 {
            self.progress.say(&format!(
                "{}: {} acknowledged commits are missing on {check_node}",
                spec.scenario,
                loss.lost_commits()
            ));
        }

        let observed = self.observer.observed_since(fault_unix - 1000.0).await.unwrap_or_default();
        if !self.observer.sees_workflows() {
            notes.push(format!("observed through {}", self.observer.describe()));
        }
        let detection = observed.detection_after(fault_unix).map(|d| (d - fault_unix) / 1000.0);
        let mut markers =
            vec![Marker { kind: MarkerKind::Fault, at_unix_ms: fault_unix, label: injected.description.clone() }];
        markers.extend(observed.markers.iter().cloned());
        for st in &observed.steps {
            let k = MarkerKind::of_step(&st.step);
            if k != MarkerKind::Other {
                markers.push(Marker {
                    kind: k,
                    at_unix_ms: st.started_unix_ms,
                    label: format!("{}: {}", st.workflow, st.step),
                });
            }
        }
        let (rto, outage) = match planned_done_ms {
            // Clients of a planned change see a pause, not an outage.
            Some(done) => {
                notes.push(
                    "RTO of a planned change: the longest time no write was acknowledged while the workflow ran".into(),
                );
                (checker::rto_pause(&record, fault_ms, done), None)
            }
            None if !spec.scenario.interrupts_writes() => {
                notes.push("writes were not interrupted by design: RTO is the longest time no write was acknowledged after the fault".into());
                (checker::rto_pause(&record, fault_ms, record.duration_ms), None)
            }
            None => {
                let o = checker::writes_unavailable(&record, fault_ms);
                (o.map(|o| o.seconds()), o)
            }
        };
        match outage {
            Some(o) => markers.push(Marker {
                kind: MarkerKind::Resume,
                at_unix_ms: record.started_unix_ms + o.until_ms,
                label: "writes back: first commit acknowledged by another server instance".into(),
            }),
            None => {
                if let Some(r) = rto {
                    markers.push(Marker {
                        kind: MarkerKind::Resume,
                        at_unix_ms: fault_unix + r * 1000.0,
                        label: "end of the longest write pause".into(),
                    });
                }
            }
        }
        // The partition's clients: their last acknowledged commit must come
        // before anything else was promoted, or two servers took writes.
        let promotion_unix = observed
            .steps
            .iter()
            .filter(|s| MarkerKind::of_step(&s.step) == MarkerKind::Promote && s.started_unix_ms >= fault_unix)
            .map(|s| s.started_unix_ms)
            .min_by(f64::total_cmp);
        let stranded_report = stranded_report.map(|(acknowledged, missing, last_ack_unix)| {
            let before_promotion = match (last_ack_unix, promotion_unix) {
                (Some(a), Some(p)) => Some(a < p),
                (None, _) => Some(true),
                (Some(_), None) => None,
            };
            if before_promotion == Some(false) {
                notes.push(
                    "SPLIT BRAIN: the partitioned region's clients had a commit acknowledged after another node's promotion started"
                        .into(),
                );
            }
            Stranded {
                acknowledged_commits: acknowledged,
                missing_on_new_primary: missing,
                last_ack_after_fault_seconds: last_ack_unix.map(|a| (a - fault_unix) / 1000.0),
                promotion_after_fault_seconds: promotion_unix.map(|p| (p - fault_unix) / 1000.0),
                last_ack_before_promotion: before_promotion,
            }
        });
        let buckets = timeline::buckets(&record);
        let (baseline, rto90) = checker::rto_throughput(&buckets, fault_ms, rto.map(|r| fault_ms + r * 1000.0));
        let (wkinds, rkinds) = checker::errors_by_kind(&record);
        let client_errors = record.write_failures().count() as u64;

        if !after.primaries().is_empty() && after.primaries().len() > 1 {
            notes.push(format!(
                "SPLIT BRAIN: {} nodes answered as writable primaries after the fault: {}",
                after.primaries().len(),
                after.primaries().iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }

        // Restore so the next run starts from the same topology.
        if check_on == after.primary {
            restored.extend(self.restore(&injected, &after).await);
            if let Some(g) = fault.take() {
                g.disarm();
            }
        }
        restored.extend(self.back_home(home, spec).await);

        let rto_s = self.tier.rto.as_secs_f64();
        let rpo_s = self.tier.rpo.as_secs_f64();
        let rto_met = rto.is_some_and(|r| r <= rto_s);
        let rpo_met = loss.rpo_seconds <= rpo_s;
        // A planned change must be invisible: no lost commit, no client error.
        let planned_clean = !spec.scenario.planned() || (loss.lost_commits() == 0 && client_errors == 0);
        let single_writer = stranded_report.as_ref().is_none_or(|s| s.last_ack_before_promotion != Some(false));
        if !planned_clean {
            notes.push(format!(
                "a planned {} must lose no commit and show clients no error: {} lost, {} client errors",
                spec.scenario,
                loss.lost_commits(),
                client_errors
            ));
        }
        Ok(RunReport {
            scenario: spec.scenario.as_str().to_owned(),
            run,
            started_at: crate::rfc3339(crate::unix_ms(started_at)),
            fault: injected.description,
            fault_at: crate::rfc3339(fault_unix),
            old_primary: Some(primary),
            new_primary: check_on,
            epoch_before: before.epoch,
            epoch_after: after.epoch,
            rto_seconds: rto,
            writes_unavailable: outage,
            rto_throughput_seconds: rto90,
            baseline_commits_per_second: baseline,
            detection_seconds: detection,
            steps: observed.steps.iter().map(|s| StepReport::from_timing(s, fault_unix)).collect(),
            recovery_path: observed.path.clone(),
            client_errors,
            write_errors_by_kind: wkinds,
            read_errors_by_kind: rkinds,
            reads: record.reads.len() as u64,
            acknowledged_commits: loss.acknowledged_commits,
            lost_commits: loss.lost_commits(),
            lost_span_seconds: loss.lost_span_seconds,
            rpo_seconds: loss.rpo_seconds,
            lost: loss.lost.clone(),
            unknown_outcome_writes: loss.unknown_outcome,
            unknown_outcome_committed: loss.unknown_committed,
            failed_but_present: loss.failed_but_present.clone(),
            objectives: Objectives {
                tier: self.tier.name.to_string(),
                rto_seconds: rto_s,
                rpo_seconds: rpo_s,
                rto_met,
                rpo_met,
                single_writer,
                passed: rto_met && rpo_met && planned_clean && single_writer,
            },
            restored,
            notes,
            workload_started_unix_ms: record.started_unix_ms,
            fault_ms,
            timeline: buckets,
            markers: markers.iter().map(|m| TimelineMarker::from_marker(m, record.started_unix_ms)).collect(),
            stranded: stranded_report,
            writable: WritableTimeline::default(),
        })
    }

    /// Undoes a fault after a failed run. Without a known topology a killed
    /// primary is not started again (another node may have been promoted).
    async fn restore_known(&self, injected: &scenario::Injected, topology: Option<&Topology>) -> Vec<String> {
        match topology {
            Some(t) => self.restore(injected, t).await,
            None => {
                let safe = scenario::Injected {
                    description: injected.description.clone(),
                    undo: injected
                        .undo
                        .iter()
                        .filter(|u| !matches!(u, scenario::Undo::StartPostgres { was_primary: true, .. }))
                        .cloned()
                        .collect(),
                };
                let mut done = self.restore(&safe, &Topology::default()).await;
                if safe.undo.len() < injected.undo.len() {
                    done.push("the old primary was not started again: the topology is unknown".into());
                }
                done
            }
        }
    }

    async fn restore(&self, injected: &scenario::Injected, topology: &Topology) -> Vec<String> {
        let mut done = Vec::new();
        for step in &injected.undo {
            match scenario::undo(step, self.cluster, self.hosts, topology).await {
                Ok(Some(what)) => done.push(what),
                Ok(None) => {}
                Err(e) => done.push(format!("could not undo {step:?}: {e}")),
            }
        }
        done
    }

    /// Waits until exactly one node is primary.
    async fn wait_primary(&self, timeout: Duration) -> Result<Topology, DrillError> {
        let t0 = Instant::now();
        loop {
            let t = self.topology().await?;
            if t.primary.is_some() {
                return Ok(t);
            }
            if t0.elapsed() > timeout {
                return Err(DrillError::Timeout { what: "a single primary".into(), seconds: timeout.as_secs_f64() });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits for every node to be back (primary or replica); returns the
    /// last topology seen and whether it was whole.
    async fn wait_whole(&self, timeout: Duration) -> (Topology, bool, Option<String>) {
        let t0 = Instant::now();
        let mut last = Topology::default();
        let mut error: Option<String>;
        loop {
            match self.topology().await {
                Ok(t) => {
                    let whole = t.primary.is_some()
                        && t.nodes
                            .iter()
                            .all(|n| matches!(n.role, pgdr_model::Role::Primary | pgdr_model::Role::Replica));
                    last = t;
                    error = None;
                    if whole {
                        return (last, true, None);
                    }
                }
                Err(e) => error = Some(e.to_string()),
            }
            if t0.elapsed() >= timeout {
                return (last, false, error);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits for every node to be back (primary or replica), then brings the
    /// primary back to `home` if it moved, and waits for the node it left to
    /// be a replica again.
    async fn back_home(&self, home: &str, spec: &DrillSpec) -> Vec<String> {
        let mut done = Vec::new();
        let t0 = Instant::now();
        let (last, whole, error) = self.wait_whole(spec.restore_timeout).await;
        if let Some(e) = error {
            done.push(format!("topology unknown: {e}"));
        }
        let down: Vec<&str> = last
            .nodes
            .iter()
            .filter(|n| !matches!(n.role, pgdr_model::Role::Primary | pgdr_model::Role::Replica))
            .map(|n| n.name.as_str())
            .collect();
        if !whole {
            done.push(format!(
                "after {:.0} s these nodes are still not back: {}",
                t0.elapsed().as_secs_f64(),
                down.join(", ")
            ));
            return done;
        }
        done.push(format!("every node back after {:.1} s", t0.elapsed().as_secs_f64()));
        if last.primary.as_deref().is_some_and(|p| p != home) {
            match self.observer.switchover(Some(home)).await {
                Ok(()) => {
                    let t1 = Instant::now();
                    let (_, whole, _) = self.wait_whole(spec.restore_timeout).await;
                    done.push(if whole {
                        format!("switched back to {home}; every node back after {:.1} s", t1.elapsed().as_secs_f64())
                    } else {
                        format!("switched back to {home}, but not every node is back yet")
                    });
                }
                Err(e) => done.push(format!("could not switch back to {home}: {e}")),
            }
        }
        done
    }
}
