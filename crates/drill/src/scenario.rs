//! The faults a drill injects, and how each is undone.
//!
//! Faults are real: signals to real processes by PID (the postmaster's from
//! its `postmaster.pid`, agents' from the sandbox's record), and partitions
//! through [`pgdr_wan`]'s control file. [`Hosts`] is what the drill needs
//! from wherever the nodes run.

use std::path::PathBuf;
use std::str::FromStr;

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgdr_config::{Cluster, Node};
use serde::{Deserialize, Serialize};

use crate::DrillError;
use crate::observer::Topology;

/// A drill scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// SIGKILL of the primary's postmaster.
    KillPrimary,
    /// The primary's postmaster and agent killed: its host is gone.
    HostLoss,
    /// SIGSTOP of the primary's postmaster and its children: a host that
    /// stops answering without closing sockets.
    FreezePrimary,
    /// Every node and agent of the primary's region killed.
    RegionLoss,
    /// The primary's region cut off by a partition (no resets, no refusals).
    RegionPartition,
    /// One replica's postmaster killed.
    ReplicaLoss,
    /// A planned switchover.
    Switchover,
    /// A switchover back to the original primary region.
    Failback,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::KillPrimary,
        Scenario::HostLoss,
        Scenario::FreezePrimary,
        Scenario::RegionLoss,
        Scenario::RegionPartition,
        Scenario::ReplicaLoss,
        Scenario::Switchover,
        Scenario::Failback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::KillPrimary => "kill-primary",
            Scenario::HostLoss => "host-loss",
            Scenario::FreezePrimary => "freeze-primary",
            Scenario::RegionLoss => "region-loss",
            Scenario::RegionPartition => "region-partition",
            Scenario::ReplicaLoss => "replica-loss",
            Scenario::Switchover => "switchover",
            Scenario::Failback => "failback",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Scenario::KillPrimary => "SIGKILL of the primary's postmaster",
            Scenario::HostLoss => "the primary's postmaster and agent killed (host lost)",
            Scenario::FreezePrimary => "SIGSTOP of the primary's postmaster and children (host stops answering)",
            Scenario::RegionLoss => "every node and agent of the primary's region killed",
            Scenario::RegionPartition => "the primary's region partitioned from the others",
            Scenario::ReplicaLoss => "one replica's postmaster killed",
            Scenario::Switchover => "planned switchover",
            Scenario::Failback => "failback to the original primary region",
        }
    }

    /// Whether the scenario is planned (no fault; nothing may be lost and
    /// clients should see no errors).
    pub fn planned(self) -> bool {
        matches!(self, Scenario::Switchover | Scenario::Failback)
    }

    /// Whether writes stop until something recovers them.
    pub fn interrupts_writes(self) -> bool {
        !matches!(self, Scenario::ReplicaLoss)
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Scenario, String> {
        Scenario::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| {
            format!(
                "unknown scenario {s:?}; one of: {}",
                Scenario::ALL.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// What the drill needs from the hosts the nodes run on.
#[async_trait]
pub trait Hosts: Send + Sync {
    /// The postmaster's PID, when known.
    fn postmaster_pid(&self, node: &Node) -> Option<i32>;
    /// The agent process's PID, when known.
    fn agent_pid(&self, node: &Node) -> Option<i32>;
    /// Starts a node's PostgreSQL again (after a kill that no failover followed).
    async fn start_postgres(&self, node: &Node) -> Result<(), DrillError>;
    /// Starts a node's agent again.
    async fn start_agent(&self, node: &Node) -> Result<(), DrillError>;
    /// The WAN control file, when the topology has relays between regions.
    fn wan_control(&self) -> Option<PathBuf>;
}

/// How to undo a fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "undo")]
pub enum Undo {
    /// SIGCONT to these processes.
    Continue { pids: Vec<i32> },
    /// Heal a partitioned region.
    Heal { region: String },
    /// Start a killed agent.
    StartAgent { node: String },
    /// Start a killed PostgreSQL, unless another node was promoted meanwhile
    /// (then re-establishing it is the controller's job: starting it as it
    /// was would make a second primary).
    StartPostgres { node: String, was_primary: bool },
}

/// A fault that was injected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Injected {
    pub description: String,
    pub undo: Vec<Undo>,
}

/// An injected fault not yet undone. Dropped while armed (a drill that
/// failed, panicked or was cancelled), it undoes at once what leaves the
/// cluster stuck without it: frozen processes are continued, partitioned
/// regions healed. Killed processes are left to the controller.
pub struct FaultGuard {
    injected: Injected,
    wan_control: Option<PathBuf>,
    armed: bool,
}

impl FaultGuard {
    pub fn new(injected: Injected, hosts: &dyn Hosts) -> FaultGuard {
        FaultGuard { injected, wan_control: hosts.wan_control(), armed: true }
    }

    pub fn injected(&self) -> &Injected {
        &self.injected
    }

    /// The fault has been undone another way.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for step in &self.injected.undo {
            match step {
                Undo::Continue { pids } => {
                    for pid in pids {
                        let _ = kill(Pid::from_raw(*pid), Signal::SIGCONT);
                    }
                    tracing::warn!("drill ended early: SIGCONT to {} frozen processes", pids.len());
                }
                Undo::Heal { region } => {
                    if let Some(c) = &self.wan_control {
                        match pgdr_wan::control::heal(c, Some(region)) {
                            Ok(_) => tracing::warn!("drill ended early: region {region} healed"),
                            Err(e) => tracing::error!("drill ended early: cannot heal region {region}: {e}"),
                        }
                    }
                }
                Undo::StartAgent { .. } | Undo::StartPostgres { .. } => {}
            }
        }
    }
}

fn signal(pid: i32, sig: Signal, what: &str) -> Result<(), DrillError> {
    kill(Pid::from_raw(pid), sig).map_err(|source| DrillError::Signal {
        action: format!("send {sig} to"),
        target: format!("{what} (pid {pid})"),
        source,
    })
}

/// The direct children of a process, from `/proc`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The command may contain spaces and parentheses: fields follow the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let mut fields = rest.split_whitespace();
        let _state = fields.next();
        if fields.next().and_then(|p| p.parse::<i32>().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out
}

fn node<'a>(cluster: &'a Cluster, name: &str) -> Result<&'a Node, DrillError> {
    cluster.node(name).ok_or_else(|| DrillError::Topology(format!("node {name} is not in cluster {}", cluster.name)))
}

fn kill_postgres(hosts: &dyn Hosts, n: &Node) -> Result<(), DrillError> {
    let pid = hosts
        .postmaster_pid(n)
        .ok_or_else(|| DrillError::Topology(format!("node {}: postmaster PID unknown (is it running?)", n.name)))?;
    signal(pid, Signal::SIGKILL, &format!("postmaster of {}", n.name))
}

fn kill_agent(hosts: &dyn Hosts, n: &Node) -> Result<(), DrillError> {
    let pid = hosts.agent_pid(n).ok_or_else(|| {
        DrillError::Topology(format!("node {}: agent PID unknown (the sandbox records it in sandbox.json)", n.name))
    })?;
    signal(pid, Signal::SIGKILL, &format!("agent of {}", n.name))
}

/// Injects a fault scenario's fault. Planned scenarios inject nothing here:
/// the run loop asks the observer for the switchover.
pub fn inject(
    scenario: Scenario,
    cluster: &Cluster,
    topology: &Topology,
    hosts: &dyn Hosts,
) -> Result<Injected, DrillError> {
    let primary_name = topology
        .primary
        .clone()
        .ok_or_else(|| DrillError::Topology(format!("cluster {} has no single primary now", cluster.name)))?;
    let primary = node(cluster, &primary_name)?;
    let mut undo = Vec::new();
    let description = match scenario {
        Scenario::KillPrimary => {
            kill_postgres(hosts, primary)?;
            undo.push(Undo::StartPostgres { node: primary_name.clone(), was_primary: true });
            format!("SIGKILL to the postmaster of {primary_name}")
        }
        Scenario::HostLoss => {
            // The agent first, so it cannot notice and restart PostgreSQL.
            kill_agent(hosts, primary)?;
            undo.push(Undo::StartAgent { node: primary_name.clone() });
            kill_postgres(hosts, primary)?;
            undo.push(Undo::StartPostgres { node: primary_name.clone(), was_primary: true });
            format!("SIGKILL to the agent and the postmaster of {primary_name}")
        }
        Scenario::FreezePrimary => {
            let pid = hosts.postmaster_pid(primary).ok_or_else(|| {
                DrillError::Topology(format!("node {primary_name}: postmaster PID unknown (is it running?)"))
            })?;
            // The postmaster first, so it does not react to its children stopping.
            signal(pid, Signal::SIGSTOP, &format!("postmaster of {primary_name}"))?;
            let mut pids = vec![pid];
            for child in children_of(pid) {
                if signal(child, Signal::SIGSTOP, "a PostgreSQL process").is_ok() {
                    pids.push(child);
                }
            }
            let n = pids.len();
            undo.push(Undo::Continue { pids });
            format!("SIGSTOP to the postmaster of {primary_name} and its {} children", n - 1)
        }
        Scenario::RegionLoss => {
            let region = primary.region.clone();
            let mut names = Vec::new();
            for n in cluster.nodes.iter().filter(|n| n.region == region) {
                kill_agent(hosts, n)?;
                undo.push(Undo::StartAgent { node: n.name.to_string() });
                if hosts.postmaster_pid(n).is_some() {
                    kill_postgres(hosts, n)?;
                }
                undo.push(Undo::StartPostgres {
                    node: n.name.to_string(),
                    was_primary: n.name.as_str() == primary_name,
                });
                names.push(n.name.to_string());
            }
            format!("SIGKILL to every agent and postmaster of region {region} ({})", names.join(", "))
        }
        Scenario::RegionPartition => {
            let control = hosts.wan_control().ok_or_else(|| DrillError::NotAvailable {
                what: "a region partition".into(),
                why: "the topology has no WAN relays (start the sandbox with `pgdr sandbox up --wan-delay 40ms`)"
                    .into(),
            })?;
            let region = primary.region.to_string();
            pgdr_wan::control::partition_region(&control, &region)?;
            undo.push(Undo::Heal { region: region.clone() });
            format!("region {region} partitioned from every other region")
        }
        Scenario::ReplicaLoss => {
            let replica = topology
                .nodes
                .iter()
                .filter(|n| n.name != primary_name && n.role == pgdr_model::Role::Replica)
                .min_by_key(|n| n.region != primary.region.as_str())
                .ok_or_else(|| DrillError::Topology(format!("cluster {} has no running replica", cluster.name)))?;
            let r = node(cluster, &replica.name)?;
            kill_postgres(hosts, r)?;
            undo.push(Undo::StartPostgres { node: replica.name.clone(), was_primary: false });
            format!("SIGKILL to the postmaster of replica {}", replica.name)
        }
        Scenario::Switchover | Scenario::Failback => format!("{} requested", scenario.describe()),
    };
    Ok(Injected { description, undo })
}

/// Undoes one step of a fault, given the topology now. Returns what it did.
pub async fn undo(
    step: &Undo,
    cluster: &Cluster,
    hosts: &dyn Hosts,
    topology: &Topology,
) -> Result<Option<String>, DrillError> {
    match step {
        Undo::Continue { pids } => {
            for pid in pids {
                // A process that died meanwhile is fine.
                let _ = kill(Pid::from_raw(*pid), Signal::SIGCONT);
            }
            Ok(Some(format!("SIGCONT to {} processes", pids.len())))
        }
        Undo::Heal { region } => {
            let control =
                hosts.wan_control().ok_or_else(|| DrillError::Other("the WAN control file is gone".into()))?;
            pgdr_wan::control::heal(&control, Some(region))?;
            Ok(Some(format!("region {region} healed")))
        }
        Undo::StartAgent { node: name } => {
            let n = node(cluster, name)?;
            if hosts.agent_pid(n).is_some_and(|p| kill(Pid::from_raw(p), None).is_ok()) {
                return Ok(None);
            }
            hosts.start_agent(n).await?;
            Ok(Some(format!("agent of {name} started")))
        }
        Undo::StartPostgres { node: name, was_primary } => {
            let n = node(cluster, name)?;
            if *was_primary
                && let Some(p) = &topology.primary
                && p != name
            {
                // Another node is primary: the old one must come back through
                // re-establish (rewind), never as it was.
                return Ok(Some(format!("{name} left for the controller to re-establish as a replica of {p}")));
            }
            if hosts.postmaster_pid(n).is_some_and(|p| kill(Pid::from_raw(p), None).is_ok()) {
                return Ok(None);
            }
            hosts.start_postgres(n).await?;
            Ok(Some(format!("PostgreSQL of {name} started")))
        }
    }
}
