//! Real PostgreSQL servers (a primary, optionally a streaming replica made
//! with `pg_basebackup -R`) and an in-process proxy, all on free loopback
//! ports; everything is stopped by PID on drop.

use std::net::SocketAddr;
use std::time::Duration;

use pgdr_model::Epoch;
use pgdr_node::local::Login;
use pgdr_node::{LocalPg, PgBinaries, RunAs};
use pgdr_proxy::{
    AdminLogin, AuthConfig, Backend, ClusterListeners, ClusterSpec, Listeners, ProxyHandle, ProxySpec, Routing,
    Settings,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const PASSWORD: &str = "secret";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub struct Servers {
    pub primary: LocalPg,
    pub replica: Option<LocalPg>,
    pub dir: tempfile::TempDir,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for pg in std::iter::once(&self.primary).chain(self.replica.iter()) {
            if let Some(pid) = pg.postmaster_pid() {
                // Immediate shutdown of that postmaster and its children.
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGQUIT);
            }
        }
    }
}

fn settings(overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut s: Vec<(String, String)> =
        [("fsync", "off"), ("full_page_writes", "off"), ("max_connections", "200"), ("shared_buffers", "32MB")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    for (k, v) in overrides {
        s.retain(|(ck, _)| ck != k);
        s.push((k.to_string(), v.to_string()));
    }
    s
}

impl Servers {
    pub async fn start(with_replica: bool) -> Servers {
        Self::start_with(with_replica, &[]).await
    }

    /// Like `start`, with server settings replaced or added.
    pub async fn start_with(with_replica: bool, overrides: &[(&str, &str)]) -> Servers {
        let bin = PgBinaries::find(None).expect("PostgreSQL binaries");
        let dir = tempfile::Builder::new().prefix("pgdr-proxy-").tempdir_in("/tmp").expect("tempdir");
        std::process::Command::new("chmod").arg("755").arg(dir.path()).status().expect("chmod");
        let run_as = RunAs::for_node(None).expect("run as");
        let primary = LocalPg::new(bin.clone(), dir.path().join("primary"), "127.0.0.1", free_port(), run_as.clone());
        primary.initdb("postgres", PASSWORD).await.expect("initdb");
        primary.configure(&settings(overrides)).expect("configure");
        primary.start(Duration::from_secs(30)).await.expect("start primary");
        let mut s = Servers { primary, replica: None, dir };
        if with_replica {
            let replica = LocalPg::new(bin, s.dir.path().join("replica"), "127.0.0.1", free_port(), run_as);
            replica.prepare_dirs().expect("replica dirs");
            let data = replica.data_dir.display().to_string();
            let port = s.primary.port.to_string();
            replica
                .run(
                    "pg_basebackup",
                    &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-D", &data, "-R", "-X", "stream", "--no-sync"],
                    &[("PGPASSWORD", PASSWORD)],
                )
                .await
                .expect("pg_basebackup");
            replica.configure(&settings(overrides)).expect("configure replica");
            replica.start(Duration::from_secs(30)).await.expect("start replica");
            s.replica = Some(replica);
        }
        s
    }

    pub fn backend(pg: &LocalPg, name: &str) -> Backend {
        Backend::new(name, "127.0.0.1", pg.port)
    }

    pub fn routing(&self) -> Routing {
        Routing {
            epoch: Epoch(1),
            primary: Some(Self::backend(&self.primary, "n1")),
            replicas: self.replica.iter().map(|r| Self::backend(r, "n2")).collect(),
        }
    }

    /// Waits (up to 20 s) until the replica replayed all the primary wrote.
    pub async fn wait_caught_up(&self) {
        let old = Self::admin(&self.primary).await;
        let target: String = old.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.expect("lsn").get(0);
        drop(old);
        let new = Self::admin(self.replica.as_ref().expect("replica")).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let caught: bool = new
                .query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&target])
                .await
                .expect("replay lsn")
                .get(0);
            if caught {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "replica did not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Promotes the replica and routes the proxy's writers to it at epoch
    /// 2; returns an admin connection to it.
    pub async fn promote_and_route(&self, routing: &watch::Sender<Routing>) -> tokio_postgres::Client {
        let replica = self.replica.as_ref().expect("replica");
        let new = Self::admin(replica).await;
        let promoted: bool = new.query_one("SELECT pg_promote(true, 30)", &[]).await.expect("promote").get(0);
        assert!(promoted);
        routing.send_replace(Routing {
            epoch: Epoch(2),
            primary: Some(Self::backend(replica, "n2")),
            replicas: vec![],
        });
        new
    }

    pub async fn admin(pg: &LocalPg) -> tokio_postgres::Client {
        pg.connect(&Login {
            user: "postgres".into(),
            password: Some(PASSWORD.into()),
            database: "postgres".into(),
            tls: None,
        })
        .await
        .expect("connect directly")
    }
}

pub struct Proxy {
    pub handle: ProxyHandle,
    pub writer: SocketAddr,
    pub reader: SocketAddr,
    pub api: SocketAddr,
    pub routing: watch::Sender<Routing>,
    token: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.token.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub fn auto_auth() -> AuthConfig {
    AuthConfig::Auto(AdminLogin {
        user: "postgres".into(),
        password: Some(PASSWORD.into()),
        database: "postgres".into(),
        tls: None,
    })
}

impl Proxy {
    pub async fn start(routing: Routing, auth: AuthConfig, settings: Settings) -> Proxy {
        Self::start_tls(routing, auth, settings, None).await
    }

    pub async fn start_tls(
        routing: Routing,
        auth: AuthConfig,
        settings: Settings,
        tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ) -> Proxy {
        Self::start_spec(routing, auth, settings, tls, false).await
    }

    /// With `require_tls`: clients that do not start TLS are refused.
    pub async fn start_spec(
        routing: Routing,
        auth: AuthConfig,
        settings: Settings,
        tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
        require_tls: bool,
    ) -> Proxy {
        let (tx, rx) = watch::channel(routing);
        let handle = ProxyHandle::new(ProxySpec {
            clusters: vec![ClusterSpec { name: "main".into(), routing: rx, settings, auth }],
            tls,
            require_tls,
            api_token: None,
            api_tls: None,
        })
        .expect("proxy");
        let writer = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let reader = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (w, r, a) =
            (writer.local_addr().expect("addr"), reader.local_addr().expect("addr"), api.local_addr().expect("addr"));
        let token = CancellationToken::new();
        let listeners = Listeners {
            clusters: vec![ClusterListeners { cluster: "main".into(), writer, reader: Some(reader) }],
            api: Some(api),
        };
        let (h, t) = (handle.clone(), token.clone());
        let task = tokio::spawn(async move {
            h.serve(listeners, t).await.expect("serve");
        });
        Proxy { handle, writer: w, reader: r, api: a, routing: tx, token, task: Some(task) }
    }

    pub fn conninfo(&self, addr: SocketAddr) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password={PASSWORD} dbname=postgres connect_timeout=10",
            addr.port()
        )
    }

    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.conninfo(self.writer)).await.expect("connect through the proxy")
    }

    pub async fn connect_result(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect(&self.conninfo(self.writer)).await
    }
}

pub async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Runs a client program (psql, pgbench) against `port`, returning
/// (success, stdout, stderr).
pub async fn client_program(program: &str, port: u16, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(args)
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn client program");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.expect("write stdin");
    }
    drop(input);
    let out = child.wait_with_output().await.expect("client program output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
