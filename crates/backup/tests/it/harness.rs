//! Test harness: a real PostgreSQL archiving through `pgdr-wal`, a real
//! S3-compatible server (moto), config files, and guards that stop what they
//! started, by PID, even when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgdr_node::local::{Login, StopMode};
use pgdr_node::{LocalPg, PgBinaries, RunAs};

pub const PASSWORD: &str = "secret";
pub const KEY_LOCAL: &str = "1111111111111111111111111111111111111111111111111111111111111111";
pub const KEY_COPY: &str = "2222222222222222222222222222222222222222222222222222222222222222";
pub const KEY_S3: &str = "3333333333333333333333333333333333333333333333333333333333333333";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub fn wal_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pgdr-wal"))
}

pub fn login() -> Login {
    Login { user: "postgres".into(), password: Some(PASSWORD.into()), database: "postgres".into(), tls: None }
}

/// A temp dir under /tmp the `postgres` user can enter.
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").expect("tempdir");
    chmod(d.path(), "755");
    d
}

pub fn chmod(p: &Path, mode: &str) {
    Command::new("chmod").arg(mode).arg(p).status().expect("chmod");
}

/// Makes a folder the server's user can write (archive_command runs as it).
pub fn shared_dir(p: &Path) {
    std::fs::create_dir_all(p).expect("mkdir");
    chmod(p, "777");
}

/// A running PostgreSQL, stopped (SIGQUIT to the postmaster, by PID) on drop.
pub struct PgGuard {
    pub pg: LocalPg,
}

impl Drop for PgGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pg.postmaster_pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGQUIT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl PgGuard {
    /// Wraps a server some code started (e.g. a restore).
    pub fn adopt(pg: LocalPg) -> PgGuard {
        PgGuard { pg }
    }

    pub async fn start_new(dir: &Path, port: u16, settings: &[(String, String)]) -> PgGuard {
        let bin = PgBinaries::find(None).expect("PostgreSQL binaries");
        let run_as = RunAs::for_node(None).expect("run as");
        let pg = LocalPg::new(bin, dir.to_path_buf(), "127.0.0.1", port, run_as);
        pg.initdb("postgres", PASSWORD).await.expect("initdb");
        let mut all = vec![("fsync".to_owned(), "off".to_owned()), ("max_wal_senders".to_owned(), "5".to_owned())];
        all.extend(settings.iter().cloned());
        pg.configure(&all).expect("configure");
        let guard = PgGuard { pg };
        guard.pg.start(Duration::from_secs(30)).await.expect("start");
        guard
    }

    pub async fn sql(&self, q: &str) -> Vec<tokio_postgres::SimpleQueryMessage> {
        let c = self.pg.connect(&login()).await.expect("connect");
        c.simple_query(q).await.unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    pub async fn one(&self, q: &str) -> String {
        for m in self.sql(q).await {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                return r.get(0).unwrap_or("").to_owned();
            }
        }
        panic!("no row from {q}")
    }

    /// `pg_dump` of one database, as text.
    pub async fn dump(&self, db: &str) -> String {
        let port = self.pg.port.to_string();
        self.pg
            .run(
                "pg_dump",
                &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "--no-password", db],
                &[("PGPASSWORD", PASSWORD)],
            )
            .await
            .expect("pg_dump")
    }

    /// Switches WAL and waits until the segment holding everything written so
    /// far is archived.
    pub async fn archive_now(&self) {
        let seg = self.one("select pg_walfile_name(pg_switch_wal())").await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last = self.one("select coalesce(last_archived_wal, '') from pg_stat_archiver").await;
            if last.as_str() >= seg.as_str() {
                return;
            }
            let failed = self.one("select coalesce(last_failed_wal, '') from pg_stat_archiver").await;
            assert!(
                Instant::now() < deadline,
                "WAL {seg} not archived within 60s (last archived {last:?}, last failed {failed:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(&self) {
        self.pg.stop(StopMode::Fast, Duration::from_secs(30)).await.expect("stop");
    }
}

/// moto's S3 server on a free loopback port, killed by PID on drop.
pub struct Moto {
    pub port: u16,
    child: Option<Child>,
}

impl Moto {
    pub fn start(port: u16) -> Moto {
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start moto_server ({e}): the S3 tests need it; install it with `pip install 'moto[server]'`"
                )
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on 127.0.0.1:{port} within 30s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { port, child: Some(child) }
    }

    pub fn create_bucket(&self, name: &str) {
        self.create_bucket_with(name, &[]);
    }

    /// Creates a bucket with S3 Object Lock enabled (and so versioning).
    pub fn create_locked_bucket(&self, name: &str) {
        self.create_bucket_with(name, &["-H", "x-amz-bucket-object-lock-enabled: true"]);
    }

    fn create_bucket_with(&self, name: &str, extra: &[&str]) {
        let st = Command::new("curl")
            .args(["-sf", "-X", "PUT"])
            .args(extra)
            .arg(format!("http://127.0.0.1:{}/{name}", self.port))
            .stdout(Stdio::null())
            .status()
            .expect("curl");
        assert!(st.success(), "cannot create bucket {name}");
    }

    /// Kills the server (the destination goes down).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A config with one cluster (one node) and destinations `local` (file),
/// `copy` (file, concurrency 2), `vault` (file, immutable) and, when a moto
/// port is given, `s3`.
pub fn write_config(dir: &Path, pg_port: u16, data_dir: &Path, s3_port: Option<u16>, primary: &str) -> PathBuf {
    write_config_nodes(dir, &[(pg_port, data_dir)], s3_port, primary)
}

/// Same, with several nodes (`n1`, `n2`, …) in the cluster.
pub fn write_config_nodes(dir: &Path, nodes: &[(u16, &Path)], s3_port: Option<u16>, primary: &str) -> PathBuf {
    let mut s3 = String::new();
    if let Some(p) = s3_port {
        s3 = format!(
            r#"
[[destinations]]
name = "s3"
url = "s3://pgdr-test/backups"
endpoint = "http://127.0.0.1:{p}"
allow_http = true
region = "us-east-1"
access_key_id = {{ value = "testing" }}
secret_access_key = {{ value = "testing" }}
key = {{ value = "{KEY_S3}" }}
concurrency = 4

[[destinations]]
name = "s3lock"
url = "s3://pgdr-lock/backups"
endpoint = "http://127.0.0.1:{p}"
allow_http = true
region = "us-east-1"
access_key_id = {{ value = "testing" }}
secret_access_key = {{ value = "testing" }}
key = {{ value = "{KEY_S3}" }}
immutable = true
concurrency = 2
"#
        );
    }
    let text = format!(
        r#"
[[regions]]
name = "r1"

[[destinations]]
name = "local"
url = "file://{local}"
key = {{ value = "{KEY_LOCAL}" }}
key_id = "local-1"
concurrency = 4

[[destinations]]
name = "copy"
url = "file://{copy}"
key = {{ value = "{KEY_COPY}" }}
key_id = "copy-1"
concurrency = 2

[[destinations]]
name = "vault"
url = "file://{vault}"
key = {{ value = "{KEY_COPY}" }}
immutable = true
concurrency = 2
{s3}
[[tiers]]
name = "gold"
rpo = "5s"
rto = "30s"
backup = {{ schedule = "0 * * * *", destination = "{primary}", copies = ["copy"], retain_count = 1, compression_level = 3 }}

[[clusters]]
name = "c1"
tier = "gold"
password = {{ value = "{PASSWORD}" }}
nodes = [{nodes}]
"#,
        local = dir.join("dest-local").display(),
        copy = dir.join("dest-copy").display(),
        vault = dir.join("dest-vault").display(),
        nodes = nodes
            .iter()
            .enumerate()
            .map(|(i, (port, data))| format!(
                r#"{{ name = "n{n}", region = "r1", agent = "127.0.0.1:{n}", host = "127.0.0.1", port = {port}, data_dir = "{d}" }}"#,
                n = i + 1,
                d = data.display()
            ))
            .collect::<Vec<_>>()
            .join(", "),
    );
    for d in ["dest-local", "dest-copy", "dest-vault"] {
        shared_dir(&dir.join(d));
        shared_dir(&dir.join(d).join("c1"));
        shared_dir(&dir.join(d).join("c1/wal"));
    }
    let path = dir.join("pgdr.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Compares two `pg_dump` outputs, ignoring the random `\restrict` keys
/// newer pg_dump versions write; on a difference, shows the first one.
pub fn assert_same_dump(a: &str, b: &str) {
    let clean = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .map(str::to_owned)
            .collect()
    };
    let (a, b) = (clean(a), clean(b));
    if a != b {
        let i = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
        panic!(
            "dumps differ at line {i} ({} vs {} lines): source {:?} / restored {:?}",
            a.len(),
            b.len(),
            a.get(i),
            b.get(i)
        );
    }
    assert!(a.len() > 10, "dump looks empty");
}
