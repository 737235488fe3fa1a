//! `sandbox.json`: what `up` started (every PID and port), so `down` stops
//! exactly that. Written atomically after every phase of `up`, so even an
//! `up` killed midway leaves enough behind for `down`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::SandboxError;

pub const RECORD_FILE: &str = "sandbox.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// `up` ran (or is running): processes may be alive.
    Up,
    /// `down` finished: nothing of this sandbox runs.
    Down,
}

/// What a node was made as by `up` (the agents report what it is now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxRole {
    Primary,
    /// A replica in the primary's region.
    Replica,
    /// A replica in another region, kept warm for DR.
    Standby,
}

impl std::fmt::Display for SandboxRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SandboxRole::Primary => "primary",
            SandboxRole::Replica => "replica",
            SandboxRole::Standby => "standby",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    /// The cluster the node belongs to (`main` unless `up --clusters N`).
    #[serde(default = "main_cluster")]
    pub cluster: String,
    pub region: String,
    pub role: SandboxRole,
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// The agent's address, `127.0.0.1:port`.
    pub agent: String,
    pub agent_port: u16,
    pub agent_pid: Option<i32>,
    /// The postmaster `up` started; an agent may have restarted it since, so
    /// `down` also reads the data directory's `postmaster.pid`.
    pub postmaster_pid: Option<i32>,
}

fn main_cluster() -> String {
    MAIN_CLUSTER.to_owned()
}

/// The name of a sandbox's only cluster (with `up --clusters N`, N > 1, the
/// clusters are `c01`..: see [`cluster_names`]).
pub const MAIN_CLUSTER: &str = "main";

/// The names of a sandbox's `n` clusters: `main` alone, else `c01`, `c02`...
pub fn cluster_names(n: usize) -> Vec<String> {
    if n <= 1 { vec![MAIN_CLUSTER.to_owned()] } else { (1..=n).map(|i| format!("c{i:02}")).collect() }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub state: RecordState,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub bin_dir: PathBuf,
    /// The user PostgreSQL runs as, when pgdr runs as root.
    pub os_user: Option<String>,
    pub nodes: Vec<NodeRecord>,
    /// Ports given to the controller and proxies in `pgdr.toml` (nothing of
    /// the sandbox listens there until those are started).
    pub reserved_ports: Vec<u16>,
    /// Relays between regions, when started with a WAN delay.
    #[serde(default)]
    pub wan: Option<crate::wan::WanRecord>,
    /// The etcd members, when started with `--store etcd`.
    #[serde(default)]
    pub etcd: Option<crate::etcd::EtcdRecord>,
}

impl Record {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(RECORD_FILE)
    }

    /// Reads `dir/sandbox.json`; `None` when absent.
    pub fn load(dir: &Path) -> Result<Option<Record>, SandboxError> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SandboxError::Io { path, source }),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| SandboxError::Record { path, detail: e.to_string() })
    }

    /// Replaces `dir/sandbox.json` atomically.
    pub fn save(&self) -> Result<(), SandboxError> {
        let path = Self::path(&self.dir);
        let tmp = self.dir.join(format!("{RECORD_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| SandboxError::Record { path: path.clone(), detail: e.to_string() })?;
        std::fs::write(&tmp, text + "\n").map_err(SandboxError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(SandboxError::io(&path))
    }

    /// Ports something of the sandbox listens on while it is up.
    pub fn listening_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.nodes.iter().flat_map(|n| [n.port, n.agent_port]).collect();
        if let Some(w) = &self.wan {
            ports.extend(w.routes.iter().map(|r| r.listen.port()));
        }
        if let Some(e) = &self.etcd {
            ports.extend(e.ports());
        }
        ports
    }

    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The clusters, in the order `up` made them.
    pub fn clusters(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for n in &self.nodes {
            if !out.contains(&n.cluster) {
                out.push(n.cluster.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cluster_is_main_many_are_numbered() {
        assert_eq!(cluster_names(1), ["main"]);
        assert_eq!(cluster_names(3), ["c01", "c02", "c03"]);
        assert_eq!(cluster_names(100).last().map(String::as_str), Some("c100"));
    }

    #[test]
    fn a_record_without_clusters_reads_as_main() {
        let n: NodeRecord = serde_json::from_str(
            r#"{"name":"east-1","region":"east","role":"primary","host":"127.0.0.1","port":1,"data_dir":"/d",
                "agent":"127.0.0.1:2","agent_port":2,"agent_pid":null,"postmaster_pid":null}"#,
        )
        .expect("an older record");
        assert_eq!(n.cluster, "main");
    }
}
