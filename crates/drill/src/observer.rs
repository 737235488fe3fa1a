//! How a drill learns what the system did: [`DrillObserver`].
//!
//! The controller's HTTP API implements it (primary and epoch from
//! `/v1/clusters/{name}`, detection and steps from `/v1/events` and
//! `/v1/workflows/{id}`); [`SqlObserver`] asks every node directly with SQL
//! and knows nothing about detection or workflows, which the report then says.

use std::time::Duration;

use async_trait::async_trait;
use pgdr_config::{Cluster, Node};
use pgdr_model::Role;
use serde::{Deserialize, Serialize};

use crate::DrillError;

/// One node as observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub region: String,
    pub role: Role,
}

/// The topology now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    pub epoch: Option<u64>,
    /// The node taking writes, if exactly one is.
    pub primary: Option<String>,
    pub nodes: Vec<NodeView>,
}

impl Topology {
    pub fn node(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Nodes that answer as primary (more than one is split brain).
    pub fn primaries(&self) -> Vec<&NodeView> {
        self.nodes.iter().filter(|n| n.role == Role::Primary).collect()
    }
}

/// A point on the report's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkerKind {
    Fault,
    Detection,
    Fence,
    Promote,
    Resume,
    Restore,
    Other,
}

impl MarkerKind {
    pub fn label(self) -> &'static str {
        match self {
            MarkerKind::Fault => "fault",
            MarkerKind::Detection => "detection",
            MarkerKind::Fence => "fence",
            MarkerKind::Promote => "promote",
            MarkerKind::Resume => "resume",
            MarkerKind::Restore => "restore",
            MarkerKind::Other => "event",
        }
    }

    /// The marker a workflow step or event name stands for.
    pub fn of_step(name: &str) -> MarkerKind {
        let n = name.to_ascii_lowercase();
        if n.contains("detect") || n.contains("outage") {
            MarkerKind::Detection
        } else if n.contains("fence") {
            MarkerKind::Fence
        } else if n.contains("promote") {
            MarkerKind::Promote
        } else if n.contains("resume") || n.contains("reroute") {
            MarkerKind::Resume
        } else {
            MarkerKind::Other
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub kind: MarkerKind,
    pub at_unix_ms: f64,
    pub label: String,
}

/// One journalled workflow step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    pub workflow: String,
    pub step: String,
    pub started_unix_ms: f64,
    pub ended_unix_ms: Option<f64>,
    pub outcome: String,
}

impl StepTiming {
    pub fn duration_seconds(&self) -> Option<f64> {
        self.ended_unix_ms.map(|e| (e - self.started_unix_ms) / 1000.0)
    }
}

/// What the system did after the fault.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    pub markers: Vec<Marker>,
    pub steps: Vec<StepTiming>,
    /// How the system recovered, when it says (e.g. `restart in place`,
    /// `failover to n3`).
    pub path: Option<String>,
}

impl Observed {
    /// The first detection marker at or after `fault_unix_ms`.
    pub fn detection_after(&self, fault_unix_ms: f64) -> Option<f64> {
        self.markers
            .iter()
            .filter(|m| m.kind == MarkerKind::Detection && m.at_unix_ms >= fault_unix_ms)
            .map(|m| m.at_unix_ms)
            .min_by(f64::total_cmp)
    }
}

/// What a drill asks of the system under test.
#[async_trait]
pub trait DrillObserver: Send + Sync {
    /// Says where the answers come from, for the report.
    fn describe(&self) -> String;
    /// Whether this observer sees detection and workflow steps.
    fn sees_workflows(&self) -> bool;
    /// The topology now.
    async fn topology(&self) -> Result<Topology, DrillError>;
    /// Markers and steps from `since_unix_ms` on.
    async fn observed_since(&self, since_unix_ms: f64) -> Result<Observed, DrillError>;
    /// Runs a planned switchover to a node or region and returns when done.
    async fn switchover(&self, to: Option<&str>) -> Result<(), DrillError>;
    /// Runs a failback to the original primary region and returns when done.
    async fn failback(&self) -> Result<(), DrillError>;
}

/// libpq connection string for a node, straight to PostgreSQL; with `tls`,
/// over TLS verified against its CA.
pub fn node_conninfo(
    cluster: &Cluster,
    node: &Node,
    connect_timeout_s: u32,
    tls: Option<&pgdr_config::Tls>,
) -> Result<String, DrillError> {
    let mut s = format!(
        "host={} port={} user={} dbname={} connect_timeout={} application_name=pgdr-drill",
        node.host,
        node.port,
        pgdr_node::local::conn_quote(&cluster.user),
        pgdr_node::local::conn_quote(&cluster.database),
        connect_timeout_s.max(1)
    );
    if let Some(p) = &cluster.password {
        s.push_str(&format!(" password={}", pgdr_node::local::conn_quote(&p.resolve()?)));
    }
    if let Some(t) = tls {
        s.push_str(&pgdr_tls::pg::libpq_params(&t.ca));
    }
    Ok(s)
}

/// Connects to a node directly, giving up after `timeout`.
pub async fn connect_node(
    cluster: &Cluster,
    node: &Node,
    timeout: Duration,
    tls: Option<&pgdr_config::Tls>,
) -> Result<tokio_postgres::Client, DrillError> {
    let conninfo = node_conninfo(cluster, node, timeout.as_secs() as u32, tls)?;
    connect(&conninfo, &format!("node {}", node.name), timeout).await
}

/// Connects with a deadline (a libpq connection string: `sslmode` and
/// `sslrootcert` ask for TLS); the connection's task is spawned.
pub async fn connect(conninfo: &str, what: &str, timeout: Duration) -> Result<tokio_postgres::Client, DrillError> {
    let (conninfo, tls) =
        pgdr_tls::pg::split_conninfo(conninfo).map_err(|source| DrillError::Tls { what: what.to_owned(), source })?;
    match tokio::time::timeout(timeout, pgdr_tls::pg::connect_str(&conninfo, tls.as_ref())).await {
        Err(_) => Err(DrillError::Timeout { what: format!("a connection to {what}"), seconds: timeout.as_secs_f64() }),
        Ok(Err(source)) => Err(DrillError::Connect { what: what.to_owned(), source }),
        Ok(Ok(client)) => Ok(client),
    }
}

/// Asks each node with SQL whether it is in recovery. Knows nothing of
/// epochs, detection or workflows, and cannot run a switchover.
pub struct SqlObserver {
    cluster: Cluster,
    timeout: Duration,
    tls: Option<pgdr_config::Tls>,
}

impl SqlObserver {
    /// With `tls` (the config's `[tls]`), connections use TLS.
    pub fn new(cluster: Cluster, tls: Option<pgdr_config::Tls>) -> SqlObserver {
        SqlObserver { cluster, timeout: Duration::from_secs(2), tls }
    }

    async fn role_of(&self, node: &Node) -> Role {
        let Ok(client) = connect_node(&self.cluster, node, self.timeout, self.tls.as_ref()).await else {
            return Role::Down;
        };
        let q = client
            .query_one("SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only') = 'on'", &[]);
        match tokio::time::timeout(self.timeout, q).await {
            Ok(Ok(row)) => {
                let (recovery, ro): (bool, bool) = (row.get(0), row.get(1));
                match (recovery, ro) {
                    (true, _) => Role::Replica,
                    // A fenced primary is read-only: not taking writes.
                    (false, true) => Role::Down,
                    (false, false) => Role::Primary,
                }
            }
            _ => Role::Down,
        }
    }
}

#[async_trait]
impl DrillObserver for SqlObserver {
    fn describe(&self) -> String {
        "the nodes, asked directly with SQL (no controller: detection and workflow steps are not observed)".into()
    }

    fn sees_workflows(&self) -> bool {
        false
    }

    async fn topology(&self) -> Result<Topology, DrillError> {
        let mut nodes = Vec::new();
        for n in &self.cluster.nodes {
            nodes.push(NodeView {
                name: n.name.to_string(),
                region: n.region.to_string(),
                role: self.role_of(n).await,
            });
        }
        let prim: Vec<&NodeView> = nodes.iter().filter(|n| n.role == Role::Primary).collect();
        let primary = if prim.len() == 1 { Some(prim[0].name.clone()) } else { None };
        Ok(Topology { epoch: None, primary, nodes })
    }

    async fn observed_since(&self, _since_unix_ms: f64) -> Result<Observed, DrillError> {
        Ok(Observed::default())
    }

    async fn switchover(&self, _to: Option<&str>) -> Result<(), DrillError> {
        Err(DrillError::NotAvailable {
            what: "a switchover".into(),
            why: "it is run by the controller, and no controller API is configured or reachable".into(),
        })
    }

    async fn failback(&self) -> Result<(), DrillError> {
        Err(DrillError::NotAvailable {
            what: "a failback".into(),
            why: "it is run by the controller, and no controller API is configured or reachable".into(),
        })
    }
}
