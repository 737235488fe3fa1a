//! One PostgreSQL server on this host: initdb, configure, start, stop, and a
//! client connection. The agent and the sandbox are built on this.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

pub use pgdr_tls::pg::PgTls;

use crate::bin::PgBinaries;
use crate::files;
use crate::os::{OsError, RunAs};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(transparent)]
    Os(#[from] OsError),
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{program} failed ({status}): {output}")]
    Failed { program: String, status: String, output: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot connect to PostgreSQL at {addr}: {}", pg_detail(source))]
    Connect { addr: String, source: tokio_postgres::Error },
    #[error("query failed on {addr}: {}", pg_detail(source))]
    Query { addr: String, source: tokio_postgres::Error },
    /// `pg_rewind` could not bring the data directory in line with the
    /// source (different systems, missing WAL, no checksums or
    /// `wal_log_hints`): rebuild from a base backup instead.
    #[error("pg_rewind cannot rewind this node (rebuild it from a base backup instead): {0}")]
    RewindImpossible(String),
    /// Another server answers on the configured address: this data
    /// directory's may be down, or listening on its Unix socket only (a
    /// server whose TCP port is taken still starts).
    #[error(
        "the server at {addr} is not this node's: it serves the data directory {served}, not {} (another server took the port?)",
        data_dir.display()
    )]
    NotOurs { addr: String, served: String, data_dir: PathBuf },
    /// Something that cannot be told apart answers on the node's address
    /// while the node's own server is down (see
    /// [`LocalPg::check_port_free`]): ours could not listen there.
    #[error(
        "another server answers at {addr}, where this node's server (data directory {}) must listen, and {detail}: stop it or give one of them another port",
        data_dir.display()
    )]
    PortTaken { addr: String, detail: String, data_dir: PathBuf },
    #[error("timed out after {secs}s waiting for {what}")]
    Timeout { what: String, secs: u64 },
    #[error("{0}")]
    Invalid(String),
}

impl PgError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PgError + '_ {
        move |source| PgError::Io { path: path.to_owned(), source }
    }
}

/// The lines of `pg_controldata` a switchover reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlData {
    /// `Database cluster state`: `shut down` after a clean (fast or smart)
    /// stop of a primary, `shut down in recovery` for a replica.
    pub state: String,
    /// `Latest checkpoint location`: after a clean stop, the shutdown
    /// checkpoint, the last WAL record the server wrote.
    pub checkpoint: pgdr_model::Lsn,
}

impl ControlData {
    /// Parses `pg_controldata` output (run with `LC_ALL=C`).
    pub fn parse(out: &str) -> Option<ControlData> {
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_owned()))
        };
        Some(ControlData {
            state: field("Database cluster state")?,
            checkpoint: field("Latest checkpoint location")?.parse().ok()?,
        })
    }

    /// Stopped cleanly as a primary: the checkpoint is a shutdown
    /// checkpoint and nothing was written after it.
    pub fn shut_down_as_primary(&self) -> bool {
        self.state == "shut down"
    }

    /// Stopped cleanly, as a primary or in recovery: what pg_rewind takes
    /// without running crash recovery first.
    pub fn shut_down_cleanly(&self) -> bool {
        self.shut_down_as_primary() || self.state == "shut down in recovery"
    }
}

/// How `stop` shuts the server down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Roll back running transactions, checkpoint, exit.
    Fast,
    /// Exit without a checkpoint: crash recovery on next start.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A local PostgreSQL server: its binaries, data directory, port and the
/// user it runs as.
#[derive(Debug, Clone)]
pub struct LocalPg {
    pub bin: PgBinaries,
    pub data_dir: PathBuf,
    pub host: String,
    pub port: u16,
    pub run_as: RunAs,
}

/// Credentials pgdr connects with, and how it checks the server. Its
/// `Debug` shows whether there is a password, never the password.
#[derive(Clone)]
pub struct Login {
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// TLS with the cluster's CA (`verify-full`), or plain TCP when `None`.
    pub tls: Option<PgTls>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .field("tls", &self.tls)
            .finish()
    }
}

impl LocalPg {
    pub fn new(bin: PgBinaries, data_dir: PathBuf, host: impl Into<String>, port: u16, run_as: RunAs) -> LocalPg {
        LocalPg { bin, data_dir, host: host.into(), port, run_as }
    }

    /// The server log file, beside the data directory.
    pub fn log_file(&self) -> PathBuf {
        let mut name = self.data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".log");
        self.data_dir.with_file_name(name)
    }

    /// Folder for the server's Unix socket, beside the data directory.
    pub fn socket_dir(&self) -> PathBuf {
        let mut name = self.data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".run");
        self.data_dir.with_file_name(name)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.path(program));
        self.run_as.apply(&mut cmd);
        // The unprivileged user may not be able to read our working folder.
        if let Some(parent) = self.data_dir.parent() {
            cmd.current_dir(parent);
        }
        cmd.env_remove("PGDATA").env("LC_ALL", "C.UTF-8").kill_on_drop(true);
        cmd
    }

    /// Runs a server program to completion, returning its stdout.
    pub async fn run(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, PgError> {
        let mut cmd = self.command(program);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().await.map_err(|source| PgError::Spawn { program: program.to_owned(), source })?;
        if !out.status.success() {
            let mut output = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if output.is_empty() {
                output = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            }
            return Err(PgError::Failed { program: program.to_owned(), status: out.status.to_string(), output });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates the folders the server needs, owned by its user.
    pub fn prepare_dirs(&self) -> Result<(), PgError> {
        if let Some(parent) = self.data_dir.parent() {
            self.run_as.check_reachable(parent)?;
        }
        use std::os::unix::fs::PermissionsExt;
        // Both private to the server's user: no other local user reaches
        // the data or the server's socket.
        for dir in [self.data_dir.clone(), self.socket_dir()] {
            std::fs::create_dir_all(&dir).map_err(PgError::io(&dir))?;
            files::give_dir(&dir, &self.run_as).map_err(PgError::io(&dir))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(PgError::io(&dir))?;
        }
        Ok(())
    }

    /// `initdb` with a superuser and password (SCRAM on TCP and on the
    /// Unix socket alike: no `trust` anywhere), checksums on (so
    /// `pg_rewind` works), no fsync (the caller decides durability through
    /// `configure`). The password reaches initdb in a 0600 file, never on
    /// its command line.
    pub async fn initdb(&self, superuser: &str, password: &str) -> Result<(), PgError> {
        self.prepare_dirs()?;
        let pwfile = self.data_dir.with_extension("pw");
        let _ = std::fs::remove_file(&pwfile);
        files::create_new(&pwfile, 0o600, &self.run_as)
            .and_then(|mut f| std::io::Write::write_all(&mut f, password.as_bytes()))
            .map_err(PgError::io(&pwfile))?;
        let data = self.data_dir.display().to_string();
        let pw = pwfile.display().to_string();
        let res = self
            .run(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-U",
                    superuser,
                    "--pwfile",
                    &pw,
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--data-checksums",
                ],
                &[],
            )
            .await;
        let _ = std::fs::remove_file(&pwfile);
        res.map(|_| ())
    }

    /// Writes pgdr's settings to `pgdr.conf` in the data directory and makes
    /// `postgresql.conf` include it. Idempotent. Every file is replaced
    /// atomically without following a link ([`files`]); a setting's name
    /// must be a plain identifier and its value is written as one literal
    /// ([`conf_value`]), so no value can add a line of its own.
    pub fn configure(&self, settings: &[(String, String)]) -> Result<(), PgError> {
        self.ensure_include("pgdr.conf")?;
        let mut body = String::from("# Written by pgdr; changes here are overwritten.\n");
        valid_host(&self.host).map_err(PgError::Invalid)?;
        let mut all: Vec<(String, String)> = vec![
            ("listen_addresses".into(), quote(&self.host)),
            ("port".into(), self.port.to_string()),
            ("unix_socket_directories".into(), quote(&self.socket_dir().display().to_string())),
        ];
        all.extend(settings.iter().cloned());
        for (k, v) in all {
            if !valid_setting_name(&k) {
                return Err(PgError::Invalid(format!(
                    "setting name {k:?}: expected letters, digits, _ and . (a PostgreSQL parameter name)"
                )));
            }
            body.push_str(&format!("{k} = {}\n", conf_value(&v)));
        }
        self.write_file("pgdr.conf", body.as_bytes())
    }

    /// Replaces `name` in the data directory atomically (mode 600, owned by
    /// the server's user), never through a link planted there.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> Result<(), PgError> {
        let path = self.data_dir.join(name);
        files::write_atomic(&path, contents, 0o600, &self.run_as).map_err(PgError::io(&path))
    }

    /// Reads `name` in the data directory (bounded, not through a link).
    pub fn read_file(&self, name: &str) -> Result<String, PgError> {
        let path = self.data_dir.join(name);
        files::read(&path).map_err(PgError::io(&path))
    }

    /// Starts the server and waits until it accepts connections.
    pub async fn start(&self, wait: Duration) -> Result<(), PgError> {
        // A postmaster killed a moment ago still answers kill(pid, 0) until
        // its parent reaps it, and the new one would refuse the lock file
        // that names it ("lock file postmaster.pid already exists").
        self.wait_dead_postmaster(DEAD_POSTMASTER_WAIT).await;
        if self.postmaster_pid().is_some() && self.is_running().await {
            return Ok(());
        }
        // Backends of a killed postmaster keep its shared memory: the new
        // one would refuse to start.
        self.stop_leftovers().await;
        let data = self.data_dir.display().to_string();
        let log = self.log_file().display().to_string();
        let log_file = self.log_file();
        match files::create_new(&log_file, 0o600, &self.run_as) {
            Ok(_) => {}
            // pg_ctl opens it as the server's user, who owns the folder anyway.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(PgError::Io { path: log_file, source: e }),
        }
        let secs = wait.as_secs().max(1).to_string();
        match self.run("pg_ctl", &["-D", &data, "-l", &log, "-w", "-t", &secs, "start"], &[]).await {
            Ok(_) => Ok(()),
            Err(PgError::Failed { program, status, output }) => {
                // pg_ctl only says "examine the log output": bring the log's end.
                let tail = self.log_tail(8);
                let output =
                    if tail.is_empty() { output } else { format!("{output}\n{}:\n{tail}", self.log_file().display()) };
                Err(PgError::Failed { program, status, output })
            }
            Err(e) => Err(e),
        }
    }

    /// Waits, at most `limit`, while a PID one of the server's lock files
    /// names (`postmaster.pid`, and the socket's `.s.PGSQL.<port>.lock`,
    /// which outlives a data directory moved aside) is a postmaster that
    /// is dying or dead but not yet reaped: a zombie (`Z`), being reaped
    /// (`X`), or with a SIGKILL pending ([`proc_fate`]). A new postmaster
    /// refuses a lock file whose PID still exists. Only a process that
    /// runs `postgres` (its command name, which a zombie keeps) counts. A
    /// live postmaster is never waited on, nor signalled; nor is anything
    /// reaped here: that is its parent's job (init, or a subreaper). After
    /// `limit` it logs which parent has not reaped it and returns, for
    /// pg_ctl to report.
    async fn wait_dead_postmaster(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut waited = false;
        loop {
            let dying = [self.postmaster_pid(), postmaster_pid_in(&self.socket_lock_file())]
                .into_iter()
                .flatten()
                .find_map(|pid| match proc_fate(pid) {
                    Some(ProcFate::Dying { comm, parent }) if comm == "postgres" => Some((pid, parent)),
                    _ => None,
                });
            let Some((pid, parent)) = dying else { break };
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    pid,
                    parent,
                    data_dir = %self.data_dir.display(),
                    "a killed postmaster is still not reaped after {}s (its parent, PID {parent}, has not waited for it); going on",
                    limit.as_secs()
                );
                return;
            }
            waited = true;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if waited {
            tracing::info!(data_dir = %self.data_dir.display(), "waited for a killed postmaster to be reaped");
        }
    }

    /// The lock file of the server's Unix socket, naming its postmaster.
    fn socket_lock_file(&self) -> PathBuf {
        self.socket_dir().join(format!(".s.PGSQL.{}.lock", self.port))
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = files::read_tail(&self.log_file(), 64 << 10);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Stops the server; a server that is not running is a success.
    pub async fn stop(&self, mode: StopMode, wait: Duration) -> Result<(), PgError> {
        if !self.is_running().await {
            return Ok(());
        }
        // Signal the postmaster and watch its pid file at 10 ms, as pg_ctl
        // does at 100 ms: the shutdown itself takes tens of milliseconds,
        // and a switchover's write pause waits on it. pg_ctl when the
        // signal cannot be sent (another user's server).
        if let Some(pid) = self.postmaster_pid() {
            let sig = match mode {
                StopMode::Fast => nix::sys::signal::Signal::SIGINT,
                StopMode::Immediate => nix::sys::signal::Signal::SIGQUIT,
            };
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).is_ok() {
                let deadline = tokio::time::Instant::now() + wait;
                // The postmaster removes its pid file last, once every
                // child exited (and, fast, after the shutdown checkpoint).
                while self.postmaster_pid() == Some(pid) && pid_alive(pid) {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(PgError::Timeout {
                            what: format!("PostgreSQL to stop ({})", mode.as_arg()),
                            secs: wait.as_secs(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                return Ok(());
            }
        }
        let data = self.data_dir.display().to_string();
        let secs = wait.as_secs().max(1).to_string();
        match self.run("pg_ctl", &["-D", &data, "-m", mode.as_arg(), "-w", "-t", &secs, "stop"], &[]).await {
            Ok(_) => Ok(()),
            Err(_) if !self.is_running().await => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// What `pg_controldata` says of the (stopped) data directory.
    pub async fn control_data(&self) -> Result<ControlData, PgError> {
        let data = self.data_dir.display().to_string();
        let out = self.run("pg_controldata", &["-D", &data], &[]).await?;
        ControlData::parse(&out).ok_or_else(|| {
            PgError::Invalid(format!("pg_controldata -D {data}: no cluster state or checkpoint location in its output"))
        })
    }

    /// The postmaster's PID from `postmaster.pid`, if the file is there.
    pub fn postmaster_pid(&self) -> Option<i32> {
        postmaster_pid(&self.data_dir)
    }

    /// Stops the server processes a dead postmaster of this data directory
    /// left behind ([`crate::leftover`]): those whose working folder is the
    /// data directory, or the data directory removed. Nothing while a
    /// postmaster named by `postmaster.pid` is alive. Returns their PIDs
    /// once they are gone (or after 5 s, when the start that follows will
    /// say what still holds the data directory).
    pub async fn stop_leftovers(&self) -> Vec<i32> {
        // A postmaster killed a moment ago and still exiting is no
        // running server.
        self.wait_dead_postmaster(DEAD_POSTMASTER_WAIT).await;
        if self.is_running().await {
            return Vec::new();
        }
        let postgres = crate::leftover::resolved(&self.bin.path("postgres"));
        let data = crate::leftover::resolved(&self.data_dir);
        let removed = crate::replica::sibling(&data, " (deleted)");
        let stopped = tokio::task::spawn_blocking(move || {
            crate::leftover::stop(&postgres, |cwd| cwd == data.as_path() || cwd == removed.as_path())
        })
        .await
        .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while stopped.iter().any(|p| pid_alive(*p)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stopped
    }

    /// Whether a postmaster is alive for this data directory.
    pub async fn is_running(&self) -> bool {
        match self.postmaster_pid() {
            Some(pid) => pid_alive(pid),
            None => false,
        }
    }

    /// A tokio-postgres connection string for this server (TLS is
    /// [`Login::tls`], not part of the string).
    pub fn conninfo(&self, login: &Login) -> String {
        let mut s = format!(
            "host={} port={} user={} dbname={} connect_timeout=5",
            conn_quote(&self.host),
            self.port,
            conn_quote(&login.user),
            conn_quote(&login.database)
        );
        if let Some(p) = &login.password {
            s.push_str(&format!(" password={}", conn_quote(p)));
        }
        s
    }

    /// Connects with tokio-postgres over TCP; the connection task is spawned.
    pub async fn connect(&self, login: &Login) -> Result<tokio_postgres::Client, PgError> {
        connect(&self.conninfo(login), &self.addr(), login.tls.as_ref()).await
    }

    /// [`LocalPg::connect`], then [`LocalPg::check_served`]: a connection
    /// to this data directory's server, never to another one that answers
    /// on its address.
    pub async fn connect_own(&self, login: &Login) -> Result<tokio_postgres::Client, PgError> {
        let client = self.connect(login).await?;
        self.check_served(&client).await?;
        Ok(client)
    }

    /// Whether the server `client` talks to serves this data directory:
    /// [`PgError::NotOurs`] when it serves another. It is this one's when
    /// its `data_directory` is the same folder (the same path, or the same
    /// inode: links resolved) and not when our folder is not there at all.
    /// When that cannot be told (a login without `pg_read_all_settings`
    /// does not see `data_directory`; a path this process cannot look at)
    /// the check is skipped, at DEBUG.
    pub async fn check_served(&self, client: &tokio_postgres::Client) -> Result<(), PgError> {
        let Some(served) = self.served(client).await? else {
            tracing::debug!(addr = %self.addr(), "cannot tell which data directory the server serves: data_directory is not visible to this login");
            return Ok(());
        };
        match same_dir(Path::new(&served), &self.data_dir) {
            Some(true) => Ok(()),
            Some(false) => Err(PgError::NotOurs { addr: self.addr(), served, data_dir: self.data_dir.clone() }),
            None => {
                tracing::debug!(addr = %self.addr(), served, data_dir = %self.data_dir.display(), "cannot tell whether the server serves this data directory");
                Ok(())
            }
        }
    }

    /// Before starting this node's server: whether another one already
    /// answers on its address (another sandbox's, one started by hand).
    /// PostgreSQL then either fails to listen ("could not create any
    /// TCP/IP sockets") or, when the host name has several addresses,
    /// comes up on one the clients do not reach, and a start that waits for
    /// it to answer only times out. [`PgError::NotOurs`] naming the data
    /// directory the other server serves when `login` can read it,
    /// [`PgError::PortTaken`] when not; nothing to check while this data
    /// directory's postmaster runs, or when nothing accepts a connection.
    pub async fn check_port_free(&self, login: &Login) -> Result<(), PgError> {
        if self.is_running().await {
            return Ok(());
        }
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        match tokio::time::timeout(PORT_CHECK_TIMEOUT, tcp).await {
            Ok(Ok(_)) => {}
            // Refused, unreachable, or no answer: nothing listens there.
            Ok(Err(_)) | Err(_) => return Ok(()),
        }
        let taken = |detail: String| PgError::PortTaken { addr: self.addr(), detail, data_dir: self.data_dir.clone() };
        let client = match tokio::time::timeout(PORT_CHECK_TIMEOUT, self.connect(login)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(taken(format!("does not let pgdr's login in to tell which it is ({e})"))),
            Err(_) => {
                return Err(taken(format!(
                    "accepts connections but did not complete a login within {}s",
                    PORT_CHECK_TIMEOUT.as_secs()
                )));
            }
        };
        let Some(served) = self.served(&client).await? else {
            return Err(taken("does not show this login which data directory it serves".to_owned()));
        };
        // Ours is not running, so whatever answers is another server,
        // unless it serves this very folder (its postmaster.pid says
        // otherwise: another PID namespace?), which pg_ctl will sort out.
        match same_dir(Path::new(&served), &self.data_dir) {
            Some(true) => Ok(()),
            _ => Err(PgError::NotOurs { addr: self.addr(), served, data_dir: self.data_dir.clone() }),
        }
    }

    /// The `data_directory` of the server `client` talks to; `None` when
    /// the login may not see it (it needs `pg_read_all_settings`).
    async fn served(&self, client: &tokio_postgres::Client) -> Result<Option<String>, PgError> {
        let row = client
            .query_one("select (select setting from pg_settings where name = 'data_directory')", &[])
            .await
            .map_err(|source| PgError::Query { addr: self.addr(), source })?;
        Ok(row.get(0))
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The postmaster's PID from `postmaster.pid` in `data_dir`, if the file
/// is there (bounded, not through a link).
pub fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    postmaster_pid_in(&data_dir.join("postmaster.pid"))
}

/// The PID on the first line of a PostgreSQL lock file (bounded, not
/// through a link).
fn postmaster_pid_in(lock_file: &Path) -> Option<i32> {
    let text = files::read_limited(lock_file, 4096).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Whether `served` (a server's `data_directory`) is the folder `ours`:
/// the same path or the same inode; not when `ours` is not there; `None`
/// when that cannot be told.
fn same_dir(served: &Path, ours: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    if served == ours {
        return Some(true);
    }
    match (std::fs::metadata(served), std::fs::metadata(ours)) {
        (Ok(a), Ok(b)) => Some(a.dev() == b.dev() && a.ino() == b.ino()),
        (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Some(false),
        _ => None,
    }
}

/// Connects to `conninfo` (a tokio-postgres connection string), over TLS
/// when `tls` is given, spawning the connection's task.
pub async fn connect(conninfo: &str, addr: &str, tls: Option<&PgTls>) -> Result<tokio_postgres::Client, PgError> {
    pgdr_tls::pg::connect_str(conninfo, tls).await.map_err(|source| PgError::Connect { addr: addr.to_owned(), source })
}

/// A client error with the server's message (tokio-postgres's own Display
/// says only "db error").
pub fn pg_detail(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

/// Quotes a value for postgresql.conf: one single-quoted literal, quotes
/// doubled, backslashes escaped (the server unescapes `\\`), line breaks
/// and other control characters written as escapes, so the value stays on its
/// line whatever it holds.
pub fn quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            // The server reads octal escapes: \ooo.
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A setting's value as written to postgresql.conf: a plain word or number
/// (`on`, `32MB`, `0.9`, `-1`) or an already well-formed single-quoted
/// literal as is, anything else quoted with [`quote`].
pub fn conf_value(v: &str) -> String {
    let plain = !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '+'));
    if plain || is_conf_literal(v) { v.to_owned() } else { quote(v) }
}

/// Whether `v` is exactly one single-quoted literal as the server's
/// configuration lexer reads it: `'([^'\\\n]|\\.|'')*'`.
fn is_conf_literal(v: &str) -> bool {
    let Some(inner) = v.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) else { return false };
    if v.len() < 2 {
        return false;
    }
    let mut it = inner.chars();
    while let Some(c) = it.next() {
        match c {
            '\n' | '\r' => return false,
            '\\' => match it.next() {
                None | Some('\n' | '\r') => return false,
                Some(_) => {}
            },
            '\'' if it.next() != Some('\'') => return false,
            _ => {}
        }
    }
    true
}

/// A PostgreSQL parameter name ([`pgdr_model::is_setting_name`]).
pub fn valid_setting_name(k: &str) -> bool {
    pgdr_model::is_setting_name(k)
}

/// A host pgdr writes into PostgreSQL's configuration and connects to
/// ([`pgdr_model::check_host`]).
pub fn valid_host(h: &str) -> Result<(), String> {
    pgdr_model::check_host(h)
}

/// A `pg_hba.conf` taking TCP logins only over TLS: SCRAM on the Unix
/// socket (what the server's own user and local tools use), `hostssl ...
/// scram-sha-256` from `networks` (CIDR, such as `127.0.0.1/32`) for every
/// database and for replication, and `hostnossl ... reject` before
/// anything else, so a client that does not start TLS is told why it is
/// refused ("no encryption") instead of meeting no rule. No `trust`.
pub fn tls_only_hba(networks: &[&str]) -> String {
    let mut s = String::from(
        "# Written by pgdr: TCP logins only over TLS, SCRAM everywhere, no trust.\n\
         # TYPE    DATABASE     USER  ADDRESS  METHOD\n\
         local     all          all            scram-sha-256\n\
         local     replication  all            scram-sha-256\n\
         hostnossl all          all   all      reject\n\
         hostnossl replication  all   all      reject\n",
    );
    for net in networks {
        s.push_str(&format!("hostssl   all          all   {net}  scram-sha-256\n"));
        s.push_str(&format!("hostssl   replication  all   {net}  scram-sha-256\n"));
    }
    s
}

/// The `pg_hba.conf` of a server that listens on loopback only and has no
/// certificate (a restored copy): SCRAM on the Unix socket and from
/// 127.0.0.1 and ::1, nothing from elsewhere, no `trust`.
pub fn loopback_hba() -> String {
    "# Written by pgdr: a restored copy, reachable from this host only, SCRAM, no trust.\n\
     # TYPE  DATABASE     USER  ADDRESS       METHOD\n\
     local   all          all                 scram-sha-256\n\
     local   replication  all                 scram-sha-256\n\
     host    all          all   127.0.0.1/32  scram-sha-256\n\
     host    all          all   ::1/128       scram-sha-256\n"
        .to_owned()
}

/// Quotes a value for a libpq connection string.
pub fn conn_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// How long [`LocalPg::check_port_free`] waits for a TCP connection, then
/// for a login.
const PORT_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// How long `start` waits for a killed postmaster to be reaped (a zombie
/// of PID 1 lingers for a second or two on some hosts).
const DEAD_POSTMASTER_WAIT: Duration = Duration::from_secs(5);

/// What `/proc` tells of a process that exists ([`proc_fate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcFate {
    /// Running, sleeping or stopped, with no SIGKILL pending.
    Live,
    /// A zombie (`Z`), being reaped (`X`), or with a SIGKILL pending: it is
    /// gone as soon as it exits and its parent reaps it.
    Dying {
        /// Its command name (`/proc/<pid>/comm`), which a zombie keeps.
        comm: String,
        /// Its parent's PID, the process that must reap it.
        parent: i32,
    },
}

/// The fate of process `pid`, read from `/proc/<pid>/stat` and
/// `/proc/<pid>/status`; `None` when there is no such process.
pub fn proc_fate(pid: i32) -> Option<ProcFate> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (comm, state, parent) = parse_stat(&stat)?;
    let dying = matches!(state, "Z" | "X")
        || std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| sigkill_pending(&s));
    Some(if dying { ProcFate::Dying { comm: comm.to_owned(), parent } } else { ProcFate::Live })
}

/// The command name, state and parent's PID of a `/proc/<pid>/stat` line.
/// The command is parenthesised and may itself hold spaces or parentheses.
fn parse_stat(stat: &str) -> Option<(&str, &str, i32)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((comm, state, parent))
}

/// Whether `/proc/<pid>/status` shows SIGKILL pending for the thread
/// (`SigPnd`) or the process (`ShdPnd`): it cannot be blocked or caught,
/// so the process is exiting.
fn sigkill_pending(status: &str) -> bool {
    const SIGKILL_BIT: u64 = 1 << (9 - 1);
    status.lines().any(|l| {
        let Some((name, mask)) = l.split_once(':') else { return false };
        matches!(name, "SigPnd" | "ShdPnd") && u64::from_str_radix(mask.trim(), 16).is_ok_and(|m| m & SIGKILL_BIT != 0)
    })
}

/// Whether a process is alive: it exists and is not a zombie. A postmaster
/// killed with SIGKILL is reparented to PID 1 and may stay a zombie for a
/// moment; treating it as alive would make `start` a no-op.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself
        // contain spaces or parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_tls_only_hba_refuses_plain_tcp_first_and_trusts_no_one() {
        let hba = tls_only_hba(&["127.0.0.1/32", "::1/128"]);
        let rules: Vec<Vec<&str>> =
            hba.lines().filter(|l| !l.trim_start().starts_with('#')).map(|l| l.split_whitespace().collect()).collect();
        assert!(rules.iter().all(|r| r.last() != Some(&"trust")), "{hba}");
        // Every TCP rule is TLS-only or a reject, and the rejects come first.
        let tcp: Vec<&Vec<&str>> = rules.iter().filter(|r| r[0] != "local").collect();
        assert!(tcp.iter().all(|r| r[0] == "hostssl" || (r[0] == "hostnossl" && r[4] == "reject")), "{hba}");
        assert_eq!(tcp.iter().take(2).map(|r| r[0]).collect::<Vec<_>>(), ["hostnossl", "hostnossl"]);
        assert_eq!(tcp.iter().filter(|r| r[0] == "hostssl" && r[1] == "replication").count(), 2);
    }

    #[test]
    fn a_login_never_prints_its_password() {
        let l =
            Login { user: "pgdr".into(), password: Some("hunter2-pw".into()), database: "postgres".into(), tls: None };
        let shown = format!("{l:?} {l:#?}");
        assert!(!shown.contains("hunter2") && shown.contains("***") && shown.contains("pgdr"), "{shown}");
    }

    /// What the server's configuration lexer makes of a quoted literal
    /// (`GUC_scanstr`): `''` is a quote, `\b \f \n \r \t`, `\ooo` octal,
    /// any other `\x` is `x`.
    fn scan(lit: &str) -> Option<String> {
        let inner = lit.strip_prefix('\'')?.strip_suffix('\'')?;
        let mut out = String::new();
        let mut it = inner.chars().peekable();
        while let Some(c) = it.next() {
            match c {
                '\'' => {
                    if it.next()? != '\'' {
                        return None;
                    }
                    out.push('\'');
                }
                '\\' => match it.next()? {
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    d @ '0'..='7' => {
                        let mut v = d.to_digit(8)?;
                        for _ in 0..2 {
                            match it.peek().and_then(|c| c.to_digit(8)) {
                                Some(x) => {
                                    v = v * 8 + x;
                                    it.next();
                                }
                                None => break,
                            }
                        }
                        out.push(char::from_u32(v)?);
                    }
                    x => out.push(x),
                },
                '\n' | '\r' => return None,
                c => out.push(c),
            }
        }
        Some(out)
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(quote(r"C:\x"), r"'C:\\x'");
        assert_eq!(quote("a\nb = 1"), r"'a\nb = 1'");
        assert_eq!(conf_value("on"), "on");
        assert_eq!(conf_value("32MB"), "32MB");
        assert_eq!(conf_value("'replica'"), "'replica'");
        assert_eq!(conf_value("'a''b'"), "'a''b'");
        assert_eq!(conf_value("'x' \ninclude '/etc/shadow'"), quote("'x' \ninclude '/etc/shadow'"));
        assert_eq!(conf_value("'unterminated"), quote("'unterminated"));
        assert_eq!(conf_value("'a'b'"), quote("'a'b'"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever a value holds, it is written on one line, as one
        /// literal the server reads back exactly.
        #[test]
        fn quoted_values_read_back_exactly(v in any::<String>()) {
            let q = quote(&v);
            prop_assert!(!q.contains('\n') && !q.contains('\r'));
            prop_assert!(is_conf_literal(&q));
            prop_assert_eq!(scan(&q), Some(v.clone()));
            let w = conf_value(&v);
            prop_assert!(!w.contains('\n') && !w.contains('\r'));
        }

        /// An accepted host holds nothing that could end a conninfo value
        /// or a configuration line.
        #[test]
        fn accepted_hosts_are_inert(h in any::<String>()) {
            if valid_host(&h).is_ok() {
                prop_assert!(h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')));
            }
        }
    }

    #[test]
    fn stat_and_status_of_a_dying_process() {
        let stat = "4242 (postgres) Z 1 4242 4242 0 -1 4194316 0 0 0 0";
        assert_eq!(parse_stat(stat), Some(("postgres", "Z", 1)));
        // A command name with a space and a parenthesis of its own.
        assert_eq!(parse_stat("7 (a) b) S 3 7 7"), Some(("a) b", "S", 3)));
        assert_eq!(parse_stat("garbage"), None);
        let status = "Name:\tpostgres\nState:\tR (running)\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\n";
        assert!(sigkill_pending(status));
        assert!(!sigkill_pending(&status.replace("0000000000000100", "0000000000004000")));
        // This process is alive; a PID that cannot exist is no process.
        assert_eq!(proc_fate(std::process::id() as i32), Some(ProcFate::Live));
        assert_eq!(proc_fate(-1), None);
        assert_eq!(proc_fate(i32::MAX), None);
    }

    #[test]
    fn same_dir_by_path_or_inode() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir(&a).expect("mkdir");
        std::fs::create_dir(&b).expect("mkdir");
        std::os::unix::fs::symlink(&a, tmp.path().join("link")).expect("symlink");
        assert_eq!(same_dir(&a, &a), Some(true));
        assert_eq!(same_dir(&tmp.path().join("link"), &a), Some(true));
        assert_eq!(same_dir(&b, &a), Some(false));
        // Nothing serves a folder that is not there.
        assert_eq!(same_dir(&b, &tmp.path().join("gone")), Some(false));
        // A folder this host does not have (a server elsewhere): cannot tell.
        assert_eq!(same_dir(&tmp.path().join("elsewhere"), &a), None);
    }

    #[test]
    fn control_data_of_a_clean_stop() {
        let out = "pg_control version number:            1300\n\
                   Database cluster state:               shut down\n\
                   pg_control last modified:             Wed 02 Dec 2026 14:00:00 UTC\n\
                   Latest checkpoint location:           0/3000028\n\
                   Latest checkpoint's REDO location:    0/3000028\n";
        let c = ControlData::parse(out).expect("parsed");
        assert_eq!(c.checkpoint, pgdr_model::Lsn(0x300_0028));
        assert!(c.shut_down_as_primary());
        let replica = out.replace("shut down\n", "shut down in recovery\n");
        assert!(!ControlData::parse(&replica).expect("parsed").shut_down_as_primary());
        assert_eq!(ControlData::parse("garbage"), None);
    }
}
