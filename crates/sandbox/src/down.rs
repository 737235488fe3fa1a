//! Tearing a sandbox down, synchronously (so a guard's `Drop` can do it):
//! agents by recorded PID (SIGTERM, then SIGKILL of their process group
//! after a grace period), PostgreSQL with `pg_ctl stop -m fast`, then
//! immediate, then SIGKILL of the postmaster; then the server processes a
//! postmaster left behind (see [`stop_orphans`]); then a check that no
//! recorded PID is alive and no recorded port listens.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use pgdr_node::RunAs;
use pgdr_node::leftover::{parent, resolved};
use pgdr_node::local::postmaster_pid;

use crate::SandboxError;
use crate::record::{Record, RecordState};

/// What `down` did.
#[derive(Debug, Default, Clone)]
pub struct DownReport {
    /// There was a running sandbox (false: nothing to do).
    pub was_up: bool,
    pub agents_stopped: usize,
    pub servers_stopped: usize,
    /// etcd members stopped (`--store etcd`).
    pub etcd_stopped: usize,
    /// PostgreSQL processes whose postmaster was gone (see [`stop_orphans`]).
    pub orphans_stopped: usize,
    pub purged: bool,
}

const AGENT_GRACE: Duration = Duration::from_secs(5);
const PG_WAIT_SECS: &str = "15";

/// Stops the sandbox in `dir`; with `purge`, removes the folder. A folder
/// without a sandbox, or one already down, is a no-op success (`purge` then
/// removes it only when it holds a sandbox record).
pub fn down(dir: &Path, purge: bool) -> Result<DownReport, SandboxError> {
    let mut report = DownReport::default();
    if !dir.exists() {
        return Ok(report);
    }
    let Some(mut record) = Record::load(dir)? else {
        return Ok(report);
    };
    if record.state == RecordState::Up {
        report.was_up = true;
        stop_record(&record, &mut report)?;
        record.state = RecordState::Down;
        record.save()?;
    }
    if purge {
        std::fs::remove_dir_all(dir).map_err(SandboxError::io(dir))?;
        report.purged = true;
    }
    Ok(report)
}

/// Stops everything `record` names and checks nothing is left.
pub(crate) fn stop_record(record: &Record, report: &mut DownReport) -> Result<(), SandboxError> {
    // Agents first, so none restarts its PostgreSQL meanwhile.
    let agents: Vec<i32> = record
        .nodes
        .iter()
        .filter_map(|n| n.agent_pid)
        .filter(|pid| is_ours(*pid, &[&record.config.display().to_string(), "agent"]))
        .collect();
    for pid in &agents {
        let _ = killpg(Pid::from_raw(*pid), Signal::SIGTERM).or_else(|_| kill(Pid::from_raw(*pid), Signal::SIGTERM));
    }
    let deadline = Instant::now() + AGENT_GRACE;
    while agents.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in &agents {
        if alive(*pid) {
            tracing::warn!(pid, "agent did not stop on SIGTERM; sending SIGKILL");
            let _ =
                killpg(Pid::from_raw(*pid), Signal::SIGKILL).or_else(|_| kill(Pid::from_raw(*pid), Signal::SIGKILL));
        }
    }
    report.agents_stopped = agents.len();

    let run_as = RunAs::for_node(record.os_user.as_deref()).unwrap_or_default();
    let pg_ctl = record.bin_dir.join("pg_ctl");
    let mut postmasters = Vec::new();
    for n in &record.nodes {
        let data = n.data_dir.display().to_string();
        let mut pids: Vec<i32> = n.postmaster_pid.into_iter().collect();
        pids.extend(postmaster_pid(&n.data_dir));
        pids.retain(|p| is_ours(*p, &[&data]) || postmaster_pid(&n.data_dir) == Some(*p));
        pids.dedup();
        if pids.iter().any(|p| alive(*p)) {
            report.servers_stopped += 1;
            // A drill may have frozen the server (SIGSTOP): thaw the postmaster
            // and its children first, or they could neither shut down nor
            // notice their postmaster's death.
            for p in &pids {
                thaw(*p);
            }
            for mode in ["fast", "immediate"] {
                let mut cmd = Command::new(&pg_ctl);
                cmd.args(["-D", &data, "-m", mode, "-w", "-t", PG_WAIT_SECS, "stop"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                if let Some(parent) = n.data_dir.parent() {
                    cmd.current_dir(parent);
                }
                run_as.apply_std(&mut cmd);
                let _ = cmd.status();
                if !pids.iter().any(|p| alive(*p)) {
                    break;
                }
            }
            for p in &pids {
                if alive(*p) {
                    tracing::warn!(pid = p, "postmaster did not stop; sending SIGKILL");
                    let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
                }
            }
            // Until it is gone its children are a live postmaster's, which
            // `stop_orphans` leaves alone.
            let deadline = Instant::now() + Duration::from_secs(5);
            while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        postmasters.extend(pids);
    }

    let postgres = resolved(&record.bin_dir.join("postgres"));
    let orphans = stop_orphans(&resolved(&record.dir), &postgres);
    report.orphans_stopped = orphans.len();

    // The relays last (nothing needs them once the servers are down).
    let relay = record
        .wan
        .as_ref()
        .and_then(|w| w.relay_pid)
        .filter(|pid| is_ours(*pid, &[&record.dir.display().to_string(), "relay"]));
    if let Some(pid) = relay {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM).or_else(|_| kill(Pid::from_raw(pid), Signal::SIGTERM));
        let deadline = Instant::now() + AGENT_GRACE;
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pid) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL).or_else(|_| kill(Pid::from_raw(pid), Signal::SIGKILL));
        }
    }

    // etcd after everything that could write to it.
    if let Some(etcd) = &record.etcd {
        let mut etcd = etcd.clone();
        if let Err(e) = etcd.stop_all() {
            tracing::warn!("stopping etcd: {e}");
        }
        report.etcd_stopped = etcd.members.len();
    }

    // Verify: no PID alive, no port listening (a killed postmaster's
    // children may hold the socket a moment longer).
    let mut all: Vec<i32> = agents.clone();
    all.extend(relay);
    all.extend(postmasters);
    all.extend(orphans);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive_pids: Vec<i32> = all.iter().copied().filter(|p| alive(*p)).collect();
        let ports: Vec<u16> = record.listening_ports().into_iter().filter(|p| listening(*p)).collect();
        if alive_pids.is_empty() && ports.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SandboxError::Leftover(format!("pids {alive_pids:?}, ports {ports:?}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the PostgreSQL processes working in the sandbox's folder whose
/// postmaster is gone ([`pgdr_node::leftover`]): their program is
/// `postgres` of the sandbox's `bin_dir` and their working folder is inside
/// `dir` (a data directory, or one moved aside as `data.old-*`, removed or
/// not). Every postmaster of the sandbox was stopped just before.
fn stop_orphans(dir: &Path, postgres: &Path) -> Vec<i32> {
    pgdr_node::leftover::stop(postgres, |cwd| cwd.starts_with(dir))
}

/// Alive and not a zombie; reaps our own exited children on the way.
pub(crate) fn alive(pid: i32) -> bool {
    let p = Pid::from_raw(pid);
    let _ = waitpid(p, Some(WaitPidFlag::WNOHANG));
    if kill(p, None).is_err() {
        return false;
    }
    // A zombie of someone else's still answers kill(0); its state says Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The process's command line contains every one of `needles` (guards
/// against a recorded PID reused by an unrelated process).
fn is_ours(pid: i32, needles: &[&str]) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(bytes) => {
            let cmdline = String::from_utf8_lossy(&bytes).replace('\0', " ");
            needles.iter().all(|n| cmdline.contains(n))
        }
        Err(_) => false,
    }
}

pub(crate) fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_ok()
}

/// Paths inside the sandbox, for callers that only have the folder.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("pgdr.toml")
}

/// Sends SIGCONT to a process and to its children.
fn thaw(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for e in entries.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if parent(child) == Some(pid) {
            let _ = kill(Pid::from_raw(child), Signal::SIGCONT);
        }
    }
}
