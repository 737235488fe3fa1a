//! [`LocalHosts`]: the [`Hosts`] of nodes on this machine (a sandbox, or a
//! config whose nodes have `data_dir`): postmaster PIDs from
//! `postmaster.pid`, agent PIDs from the sandbox's `sandbox.json`, restarts
//! with `pg_ctl` (as the node's OS user) and `pgdr agent`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pgdr_config::{Config, Node};

use crate::DrillError;
use crate::scenario::Hosts;

/// Whether a process exists and is not a zombie (a killed postmaster stays a
/// zombie until its parent reaps it, and PostgreSQL will not start over a
/// lock file whose PID still exists).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()).is_some_and(|s| s != "Z" && s != "X")
        }
        Err(_) => false,
    }
}

/// Nodes on this machine.
pub struct LocalHosts {
    pub config_file: PathBuf,
    /// The sandbox folder (holds `sandbox.json`), when a sandbox.
    pub sandbox_dir: Option<PathBuf>,
    /// The `pgdr` binary, to start agents again.
    pub pgdr: PathBuf,
    /// The WAN control file, when the sandbox has relays.
    pub wan_control: Option<PathBuf>,
}

impl LocalHosts {
    pub fn new(config: &Config, pgdr: PathBuf) -> LocalHosts {
        let sandbox_dir = config.sandbox.as_ref().map(|s| s.dir.clone());
        let wan_control = sandbox_dir.as_ref().map(|d| d.join("wan.json")).filter(|p| p.exists());
        LocalHosts { config_file: config.file.clone(), sandbox_dir, pgdr, wan_control }
    }

    fn record(&self) -> Option<serde_json::Value> {
        let dir = self.sandbox_dir.as_ref()?;
        let text = std::fs::read_to_string(dir.join("sandbox.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn save_agent_pid(&self, node: &str, pid: i32) -> Result<(), DrillError> {
        let (Some(dir), Some(mut rec)) = (self.sandbox_dir.as_ref(), self.record()) else { return Ok(()) };
        if let Some(nodes) = rec.get_mut("nodes").and_then(|n| n.as_array_mut()) {
            for n in nodes {
                if n.get("name").and_then(|v| v.as_str()) == Some(node) {
                    n["agent_pid"] = serde_json::Value::from(pid);
                }
            }
        }
        let path = dir.join("sandbox.json");
        let tmp = dir.join("sandbox.json.tmp");
        let text = serde_json::to_string_pretty(&rec).map_err(|e| DrillError::Other(e.to_string()))?;
        std::fs::write(&tmp, text + "\n").map_err(DrillError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(DrillError::io(&path))
    }
}

fn read_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

#[async_trait]
impl Hosts for LocalHosts {
    fn postmaster_pid(&self, node: &Node) -> Option<i32> {
        read_pid(node.data_dir.as_ref()?).filter(|p| pid_alive(*p))
    }

    fn agent_pid(&self, node: &Node) -> Option<i32> {
        let rec = self.record()?;
        rec.get("nodes")?
            .as_array()?
            .iter()
            .find(|n| n.get("name").and_then(|v| v.as_str()) == Some(node.name.as_str()))?
            .get("agent_pid")?
            .as_i64()
            .map(|p| p as i32)
            .filter(|p| pid_alive(*p))
    }

    async fn start_postgres(&self, node: &Node) -> Result<(), DrillError> {
        let data = node.data_dir.clone().ok_or_else(|| DrillError::NotAvailable {
            what: format!("restarting {}", node.name),
            why: "the config has no data_dir for it".into(),
        })?;
        // Wait for a killed postmaster to be reaped, or PostgreSQL refuses its lock file.
        if let Some(old) = read_pid(&data) {
            let t0 = Instant::now();
            while std::path::Path::new(&format!("/proc/{old}")).exists()
                && !pid_alive(old)
                && t0.elapsed() < Duration::from_secs(15)
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let bin = pgdr_node::PgBinaries::find(node.bin_dir.as_deref()).map_err(|e| DrillError::Other(e.to_string()))?;
        let run_as =
            pgdr_node::RunAs::for_node(node.os_user.as_deref()).map_err(|e| DrillError::Other(e.to_string()))?;
        let pg = pgdr_node::LocalPg::new(bin, data, node.host.clone(), node.port, run_as);
        pg.start(Duration::from_secs(60)).await.map_err(|e| DrillError::Other(format!("starting {}: {e}", node.name)))
    }

    async fn start_agent(&self, node: &Node) -> Result<(), DrillError> {
        let log_path = self
            .sandbox_dir
            .as_ref()
            .map(|d| d.join("logs").join(format!("agent-{}.log", node.name)))
            .unwrap_or_else(|| std::env::temp_dir().join(format!("pgdr-agent-{}.log", node.name)));
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(DrillError::io(&log_path))?;
        let err = log.try_clone().map_err(DrillError::io(&log_path))?;
        let mut cmd = std::process::Command::new(&self.pgdr);
        cmd.arg("agent").arg("--config").arg(&self.config_file).arg("--node").arg(node.name.as_str());
        if let Some(d) = &self.sandbox_dir {
            cmd.current_dir(d);
        }
        use std::os::unix::process::CommandExt;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| DrillError::Other(format!("cannot run {} agent: {e}", self.pgdr.display())))?;
        self.save_agent_pid(node.name.as_str(), child.id() as i32)
    }

    fn wan_control(&self) -> Option<PathBuf> {
        self.wan_control.clone()
    }
}
