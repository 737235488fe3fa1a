//! The stable schema of `pgdr status --json` (documented in
//! `docs/status-json.md`): per cluster its epoch, primary, endpoints and
//! nodes. Fields are only ever added, never renamed or removed.

use serde::{Deserialize, Serialize};

/// The whole answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub clusters: Vec<ClusterStatus>,
    /// Why the controller's view is missing (`controller` of each cluster
    /// null): no controller answered, or no token to ask it with. `None`
    /// when it answered.
    #[serde(default)]
    pub controller_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub name: String,
    pub tier: String,
    /// The cluster's epoch: for now the highest any agent reports.
    pub epoch: u64,
    /// The node that is primary now, `null` when none (or none reachable).
    pub primary: Option<String>,
    /// The first proxy's writer endpoint, `postgresql://host:port/db`.
    pub writer: Option<String>,
    /// The first proxy's reader endpoint.
    pub reader: Option<String>,
    /// Every proxy of the cluster.
    pub endpoints: Vec<EndpointStatus>,
    pub nodes: Vec<NodeStatus>,
    /// What the controller holds for the cluster (its state store's epoch
    /// and primary, its detection, a running workflow, a freeze); `None`
    /// when no controller answered.
    #[serde(default)]
    pub controller: Option<ControllerSeen>,
}

/// The controller's view of one cluster, as `pgdr status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControllerSeen {
    /// The epoch in the state store.
    pub epoch: u64,
    /// The primary the state store names (none while a failover fences).
    pub primary: Option<String>,
    /// `healthy`, `suspect ...`, `outage`, `workflow running`.
    pub detection: String,
    /// The role-changing workflow running now (`kind id`).
    pub workflow: Option<String>,
    /// The freeze switch that applies: who, when and why (no automatic role
    /// change while it is on).
    pub frozen: Option<String>,
    /// Set while the controller cannot read its state store.
    pub control_plane: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub proxy: String,
    pub region: String,
    pub writer: String,
    pub reader: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub region: String,
    /// `primary`, `replica`, `down` (PostgreSQL not answering) or `unknown`
    /// (agent unreachable).
    pub role: String,
    pub host: String,
    pub port: u16,
    /// When the config knows it (the agent runs on this machine).
    pub data_dir: Option<String>,
    /// The agent's address.
    pub agent: String,
    /// The agent answered.
    pub reachable: bool,
    /// PostgreSQL answered the agent.
    pub up: bool,
    pub timeline: Option<u32>,
    /// The primary's current WAL position, a replica's replay position.
    pub lsn: Option<String>,
    /// Bytes of WAL the primary has that this node has not replayed.
    pub lag_bytes: Option<u64>,
    /// Seconds behind the primary's last commit (0 when caught up).
    pub lag_seconds: Option<f64>,
    /// For a replica: its `sync_state` on the primary (`async`, `sync`,
    /// `quorum`, `potential`), `null` when not connected to it.
    pub sync_state: Option<String>,
    /// One word: `ok`, `streaming`, `not-streaming`, `fenced`, `down`,
    /// `unreachable`.
    pub health: String,
    /// What went wrong, when something did.
    pub error: Option<String>,
}
