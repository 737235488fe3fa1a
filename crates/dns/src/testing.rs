//! A real BIND 9 (`named`, Debian's `bind9`) on a free loopback port with
//! one TSIG-protected dynamic zone, for tests and the sandbox.
//!
//! [`Named`] starts `named -g` as a child of the caller (the caller's user:
//! it binds an unprivileged port, so root is not needed), in the folder the
//! caller gives, and stops exactly that process (by its PID, SIGKILL) when
//! dropped, test passed or panicked.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The zone and the key the server accepts updates with.
#[derive(Debug, Clone)]
pub struct NamedZone {
    /// Like `pgdr.test` (no trailing dot).
    pub zone: String,
    pub key_name: String,
    pub algorithm: crate::Algorithm,
    /// Base64, as in BIND's key clause. Test data only.
    pub secret: String,
}

/// A running `named`. Dropping it kills the process.
#[derive(Debug)]
pub struct Named {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub log: PathBuf,
}

/// Finds Debian's `named` (in `/usr/sbin`, often not on a user's PATH).
pub fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("named"))
        .find(|p| p.is_file())
}

fn free_port() -> std::io::Result<u16> {
    for _ in 0..20 {
        let t = TcpListener::bind("127.0.0.1:0")?;
        let port = t.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no free port for both TCP and UDP"))
}

impl Named {
    /// Writes the config and zone into `dir` and starts `named`; returns
    /// once it serves the zone.
    pub fn start(dir: &Path, z: &NamedZone) -> std::io::Result<Named> {
        let bin = find_binary()
            .ok_or_else(|| std::io::Error::other("no named binary: install Debian's bind9 (scripts/setup does)"))?;
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let zone_file = dir.join(format!("{}.zone", z.zone));
        std::fs::write(
            &zone_file,
            format!(
                "$TTL 60\n@ IN SOA ns.{0}. admin.{0}. 1 60 60 600 60\n@ IN NS ns.{0}.\nns IN A 127.0.0.1\n",
                z.zone
            ),
        )?;
        let mut last = None;
        // A port found free may be taken before named binds it: try again.
        for _ in 0..3 {
            let port = free_port()?;
            let conf = dir.join("named.conf");
            let d = dir.display();
            std::fs::write(
                &conf,
                format!(
                    r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "{key}" {{ algorithm {alg}; secret "{secret}"; }};
zone "{zone}" {{ type primary; file "{file}"; allow-update {{ key "{key}"; }}; }};
"#,
                    key = z.key_name,
                    alg = z.algorithm.as_str(),
                    secret = z.secret,
                    zone = z.zone,
                    file = zone_file.display(),
                ),
            )?;
            let log = dir.join("named.log");
            let out = std::fs::File::create(&log)?;
            let child = Command::new(&bin)
                .args(["-g", "-4", "-n", "1", "-c"])
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()?;
            let mut named = Named { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), dir: dir.clone(), log };
            match named.wait_running(Duration::from_secs(20)) {
                Ok(()) => return Ok(named),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("named did not start")))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The tail of named's log, for a failing test's message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn wait_running(&mut self, limit: Duration) -> std::io::Result<()> {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(std::io::Error::other(format!("named exited ({status}): {}", self.log_tail())));
            }
            // `-g` logs "running" once every zone is loaded and it listens.
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.lines().any(|l| l.ends_with("running")) {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(std::io::Error::other(format!(
                    "named did not log 'running' within {limit:?}: {}",
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
