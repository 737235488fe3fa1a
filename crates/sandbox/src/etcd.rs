//! A local etcd cluster: real `etcd` processes (Debian's `etcd-server`) on
//! loopback ports, for `pgdr sandbox up --store etcd` and for tests of the
//! etcd state store.
//!
//! Every member is started by PID and recorded in an [`EtcdRecord`] (kept in
//! the sandbox's `sandbox.json`), so [`EtcdRecord::stop_all`] stops exactly
//! those processes, never anything found by name. [`EtcdCluster`] is the
//! test guard: it owns a temporary folder and stops every member and removes
//! the folder when dropped, test passed or panicked.
//!
//! Clients talk to the members over TLS when [`EtcdTlsFiles`] are given
//! (optionally requiring client certificates); members talk to each other
//! over plain HTTP on loopback. Health is read from each member's plain
//! metrics listener (`/health`), which does not need the client's TLS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::SandboxError;
use crate::down::alive;

/// How long members may take to elect a leader after a start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a member may take to stop on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Certificates the members serve to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdTlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Members refuse clients without a certificate signed by `ca`.
    pub client_cert_auth: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMemberRecord {
    pub name: String,
    /// Where the member stands in the sandbox's story (all run on this
    /// host): the first members one per region, the others in `witness`, a
    /// third place, so one region's loss leaves a quorum.
    #[serde(default)]
    pub region: Option<String>,
    pub pid: Option<i32>,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// What was started: enough to stop, restart or find every member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdRecord {
    pub dir: PathBuf,
    pub binary: PathBuf,
    pub token: String,
    pub tls: Option<EtcdTlsFiles>,
    pub members: Vec<EtcdMemberRecord>,
}

fn etcd_err(msg: impl Into<String>) -> SandboxError {
    SandboxError::Etcd(msg.into())
}

/// Finds Debian's `etcd` binary.
pub fn find_binary() -> Result<PathBuf, SandboxError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| etcd_err("no etcd binary on PATH: install Debian's etcd-server (scripts/setup does)"))
}

impl EtcdRecord {
    /// Starts `members` members under `dir` (created; must not hold a
    /// previous cluster) on free loopback ports and waits until every one
    /// reports healthy. On failure, stops what it started.
    pub fn start(dir: &Path, members: usize, tls: Option<EtcdTlsFiles>) -> Result<EtcdRecord, SandboxError> {
        if members == 0 {
            return Err(etcd_err("an etcd cluster needs at least one member"));
        }
        std::fs::create_dir_all(dir).map_err(SandboxError::io(dir))?;
        let binary = find_binary()?;
        let ports = crate::up::allocate_ports(0, 3 * members)?;
        let token = format!("pgdr-{:016x}", rand::random::<u64>());
        let mut record = EtcdRecord {
            dir: dir.to_owned(),
            binary,
            token,
            tls,
            members: (0..members)
                .map(|i| EtcdMemberRecord {
                    name: format!("m{}", i + 1),
                    region: None,
                    pid: None,
                    client_port: ports[3 * i],
                    peer_port: ports[3 * i + 1],
                    metrics_port: ports[3 * i + 2],
                    data_dir: dir.join(format!("m{}", i + 1)),
                    log: dir.join(format!("m{}.log", i + 1)),
                })
                .collect(),
        };
        let started = (|| {
            for i in 0..members {
                record.spawn(i)?;
            }
            record.wait_healthy(START_TIMEOUT)
        })();
        if let Err(e) = started {
            let _ = record.stop_all();
            return Err(e);
        }
        Ok(record)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The client URLs, one per member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client_port)).collect()
    }

    /// Every port a running member listens on.
    pub fn ports(&self) -> Vec<u16> {
        self.members.iter().flat_map(|m| [m.client_port, m.peer_port, m.metrics_port]).collect()
    }

    fn spawn(&mut self, i: usize) -> Result<(), SandboxError> {
        let cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let scheme = self.scheme();
        let m = &self.members[i];
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let state = if m.data_dir.join("member").exists() { "existing" } else { "new" };
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&m.log).map_err(SandboxError::io(&m.log))?;
        let log2 = log.try_clone().map_err(SandboxError::io(&m.log))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{}", m.metrics_port)])
            .args(["--initial-cluster", &cluster, "--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", state])
            .args(["--logger", "zap", "--log-level", "warn"])
            // Loopback: a lost leader is replaced within 0.6-1.2 s (etcd's
            // defaults, for WAN round trips, take 1-2 s).
            .args(["--heartbeat-interval", "100", "--election-timeout", "600"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a Ctrl-C to whoever started it does not reach it.
            .process_group(0);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file").arg(&t.cert).arg("--key-file").arg(&t.key).arg("--trusted-ca-file").arg(&t.ca);
            if t.client_cert_auth {
                cmd.arg("--client-cert-auth");
            }
        }
        let child = cmd.spawn().map_err(SandboxError::io(&self.binary))?;
        self.members[i].pid = i32::try_from(child.id()).ok();
        Ok(())
    }

    /// Waits until every member whose process runs reports healthy (a
    /// leader is known).
    pub fn wait_healthy(&self, timeout: Duration) -> Result<(), SandboxError> {
        let deadline = Instant::now() + timeout;
        loop {
            let sick: Vec<&str> = self
                .members
                .iter()
                .filter(|m| m.pid.is_some_and(alive))
                .filter(|m| !healthy(m.metrics_port))
                .map(|m| m.name.as_str())
                .collect();
            let dead: Vec<&str> =
                self.members.iter().filter(|m| !m.pid.is_some_and(alive)).map(|m| m.name.as_str()).collect();
            if sick.is_empty() && dead.len() < self.members.len() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let logs = self.members.iter().map(|m| m.log.display().to_string()).collect::<Vec<_>>().join(", ");
                return Err(etcd_err(format!(
                    "members {sick:?} not healthy after {timeout:?} (not running: {dead:?}); see {logs}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn is_member(&self, m: &EtcdMemberRecord, pid: i32) -> bool {
        match std::fs::read(format!("/proc/{pid}/cmdline")) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).replace('\0', " ").contains(&m.data_dir.display().to_string()),
            Err(_) => false,
        }
    }

    /// The member's PID when it is alive and still ours (a recorded PID
    /// reused by another process is never signalled).
    fn live_pid(&self, i: usize) -> Option<i32> {
        let m = &self.members[i];
        m.pid.filter(|p| alive(*p) && self.is_member(m, *p))
    }

    /// Stops member `i`: SIGTERM, then SIGKILL after a grace period.
    pub fn stop_member(&mut self, i: usize) -> Result<(), SandboxError> {
        if let Some(pid) = self.live_pid(i) {
            let p = Pid::from_raw(pid);
            let _ = kill(p, Signal::SIGCONT);
            let _ = kill(p, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive(pid) {
                let _ = kill(p, Signal::SIGKILL);
                let deadline = Instant::now() + STOP_GRACE;
                while alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            if alive(pid) {
                return Err(SandboxError::Leftover(format!("etcd member {} (pid {pid})", self.members[i].name)));
            }
        }
        self.members[i].pid = None;
        Ok(())
    }

    /// Kills member `i` at once (SIGKILL), as a crash would.
    pub fn kill_member(&mut self, i: usize) -> Result<(), SandboxError> {
        if let Some(pid) = self.live_pid(i) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let deadline = Instant::now() + STOP_GRACE;
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.members[i].pid = None;
        Ok(())
    }

    /// Starts member `i` again (with its data: it rejoins the cluster).
    pub fn start_member(&mut self, i: usize) -> Result<(), SandboxError> {
        if self.live_pid(i).is_none() {
            self.spawn(i)?;
        }
        Ok(())
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) member `i`: it holds its
    /// connections but answers nothing, as a hung host.
    pub fn freeze_member(&self, i: usize, frozen: bool) -> Result<(), SandboxError> {
        if let Some(pid) = self.live_pid(i) {
            let sig = if frozen { Signal::SIGSTOP } else { Signal::SIGCONT };
            kill(Pid::from_raw(pid), sig).map_err(|e| etcd_err(format!("signal to pid {pid}: {e}")))?;
        }
        Ok(())
    }

    /// Stops every member and checks none is left running or listening.
    pub fn stop_all(&mut self) -> Result<(), SandboxError> {
        let mut first_err = None;
        for i in 0..self.members.len() {
            if let Err(e) = self.stop_member(i) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ports: Vec<u16> = self.ports().into_iter().filter(|p| crate::down::listening(*p)).collect();
            if ports.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::Leftover(format!("etcd ports {ports:?} still listening")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `GET /health` on a member's metrics listener says `"health":"true"`.
fn healthy(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

/// A test's etcd cluster in a temporary folder: every member stopped and
/// the folder removed when dropped.
#[derive(Debug)]
pub struct EtcdCluster {
    pub record: EtcdRecord,
    tmp: Option<tempfile::TempDir>,
}

impl EtcdCluster {
    /// Starts `members` members in a fresh folder under /tmp, plain HTTP.
    pub fn start_temp(members: usize) -> Result<EtcdCluster, SandboxError> {
        Self::start_temp_with(members, |_| Ok(None))
    }

    /// As [`EtcdCluster::start_temp`]; `tls` may write certificates into the
    /// folder and return them.
    pub fn start_temp_with(
        members: usize,
        tls: impl FnOnce(&Path) -> Result<Option<EtcdTlsFiles>, SandboxError>,
    ) -> Result<EtcdCluster, SandboxError> {
        let tmp = tempfile::Builder::new()
            .prefix("pgdr-etcd-")
            .tempdir_in("/tmp")
            .map_err(SandboxError::io(Path::new("/tmp")))?;
        let tls = tls(tmp.path())?;
        let record = EtcdRecord::start(&tmp.path().join("etcd"), members, tls)?;
        Ok(EtcdCluster { record, tmp: Some(tmp) })
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.record.endpoints()
    }

    /// The temporary folder (certificates written by `start_temp_with` live here).
    pub fn dir(&self) -> &Path {
        self.tmp.as_ref().map_or(self.record.dir.as_path(), |t| t.path())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if let Err(e) = self.record.stop_all() {
            eprintln!("etcd guard: stopping {} failed: {e}", self.record.dir.display());
        }
        if let Some(tmp) = self.tmp.take()
            && let Err(e) = tmp.close()
        {
            eprintln!("etcd guard: removing the folder failed: {e}");
        }
    }
}

/// Makes a CA, a member certificate and a client certificate under `dir`
/// (`etcd-ca.crt`, `etcd-server.{crt,key}`, `etcd-client.{crt,key}`), all
/// naming `127.0.0.1` and `localhost`.
pub fn make_certs(dir: &Path, client_cert_auth: bool) -> Result<EtcdTlsFiles, SandboxError> {
    use pgdr_tls::ca::{Authority, write_new};
    let err = |e: pgdr_tls::TlsError| SandboxError::Tls(e.to_string());
    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let ca = Authority::generate("pgdr etcd test CA").map_err(err)?;
    write_new(&dir.join("etcd-ca.crt"), ca.cert_pem(), 0o644).map_err(err)?;
    for part in ["server", "client"] {
        let c = ca.issue(&format!("etcd {part}"), &names).map_err(err)?;
        write_new(&dir.join(format!("etcd-{part}.crt")), &c.cert_pem, 0o644).map_err(err)?;
        write_new(&dir.join(format!("etcd-{part}.key")), &c.key_pem, 0o600).map_err(err)?;
    }
    Ok(EtcdTlsFiles {
        ca: dir.join("etcd-ca.crt"),
        cert: dir.join("etcd-server.crt"),
        key: dir.join("etcd-server.key"),
        client_cert_auth,
    })
}
