//! End-to-end tests of `pgdr adopt`, `pgdr replica add` and `pgdr migrate`
//! on a PostgreSQL server started outside pgdr, the way a team's existing
//! server runs: plain `initdb` (no checksums) and `pg_ctl start` as user
//! `postgres`, `pg_hba.conf` without replication entries, TLS off. The
//! config around it has TLS and tokens on, as pgdr's default.
//!
//! Everything started is stopped by PID on drop (servers by
//! `postmaster.pid`, agents and `pgdr run` by their child PIDs).

mod common;

use common::{free_port, wait_for};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgdr_node::{PgBinaries, RunAs};

const PGDR: &str = env!("CARGO_BIN_EXE_pgdr");

fn mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
}

fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn kill(pid: i32, s: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), s);
}

/// A PostgreSQL server made and started the way a team would, as `postgres`.
struct Legacy {
    data: PathBuf,
    port: u16,
    bin: PgBinaries,
    run_as: RunAs,
}

impl Legacy {
    fn start(dir: &Path, name: &str, password: &str) -> Legacy {
        let bin = PgBinaries::find(None).expect("PostgreSQL binaries");
        let run_as = RunAs::for_node(None).expect("postgres user");
        let home = dir.join(name);
        std::fs::create_dir_all(&home).expect("mkdir");
        let chown = |p: &Path| {
            if let Some((_, uid, gid)) = &run_as.user {
                nix::unistd::chown(p, Some(nix::unistd::Uid::from_raw(*uid)), Some(nix::unistd::Gid::from_raw(*gid)))
                    .expect("chown");
            }
        };
        chown(&home);
        mode(&home, 0o755);
        let pw = home.join("pw");
        std::fs::write(&pw, password).expect("pwfile");
        chown(&pw);
        mode(&pw, 0o600);
        let data = home.join("data");
        let l = Legacy { data: data.clone(), port: free_port(), bin, run_as };
        l.run(
            "initdb",
            &[
                "-D",
                &l.data_s(),
                "-U",
                "postgres",
                "--pwfile",
                &pw.display().to_string(),
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        std::fs::remove_file(&pw).ok();
        // The team's own settings: a port, TCP on loopback, its socket folder.
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        text.push_str(&format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nshared_buffers = 32MB\n",
            l.port,
            home.display()
        ));
        std::fs::write(&conf, text).expect("write postgresql.conf");
        // No replication entries, as many production files have none.
        let hba = data.join("pg_hba.conf");
        let text: String = std::fs::read_to_string(&hba)
            .expect("pg_hba.conf")
            .lines()
            .filter(|l| !l.contains("replication"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&hba, text).expect("write pg_hba.conf");
        let log = home.join("server.log").display().to_string();
        l.run("pg_ctl", &["-D", &l.data_s(), "-l", &log, "-w", "start"]);
        l
    }

    fn data_s(&self) -> String {
        self.data.display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let mut cmd = Command::new(self.bin.path(program));
        cmd.args(args).current_dir("/");
        self.run_as.apply_std(&mut cmd);
        let out = cmd.output().expect("run a PostgreSQL program");
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
    }
}

/// Stops whatever runs in `data` (immediate stop, then SIGKILL by PID).
fn stop_server(data: &Path) {
    let Some(pid) = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
    else {
        return;
    };
    kill(pid, nix::sys::signal::Signal::SIGQUIT);
    let end = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(pid, nix::sys::signal::Signal::SIGKILL);
}

/// A folder with a `pgdr.toml` (TLS and tokens on, regions east and west,
/// no cluster yet) and the processes started in it.
struct World {
    dir: tempfile::TempDir,
    config: PathBuf,
    password_file: PathBuf,
    password: String,
    ca: pgdr_tls::ca::Authority,
    controller: u16,
    children: Vec<Child>,
    /// `pgdr` processes started by name, stopped in reverse order.
    named: Vec<(String, Child)>,
    agents: std::collections::HashMap<String, Child>,
    pids: Vec<i32>,
    servers: Vec<PathBuf>,
}

impl Drop for World {
    fn drop(&mut self) {
        while let Some((_, mut c)) = self.named.pop() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in self.agents.values_mut().chain(self.children.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in &self.pids {
            kill(*p, nix::sys::signal::Signal::SIGKILL);
        }
        for s in &self.servers {
            stop_server(s);
        }
    }
}

const TIMING: &str = "[timing]\nprobe_interval = \"300ms\"\nprobe_timeout = \"250ms\"\nfailure_threshold = 3\n\
lease_ttl = \"3s\"\nlease_renew = \"500ms\"\nlease_margin = \"1s\"\nrestart_deadline = \"5s\"\n\
promote_timeout = \"20s\"\ndrain_timeout = \"2s\"\n";

impl World {
    fn new() -> World {
        let dir = tempfile::Builder::new().prefix("pgdr-adopt-").tempdir_in("/tmp").expect("tempdir");
        mode(dir.path(), 0o755);
        let d = dir.path();
        for sub in ["secrets", "state"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
            mode(&d.join(sub), 0o700);
        }
        std::fs::create_dir_all(d.join("tls")).expect("mkdir");
        mode(&d.join("tls"), 0o755);
        let rand = |n: usize| -> String {
            use std::time::SystemTime;
            let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|t| t.as_nanos()).unwrap_or(1);
            format!("{:x}{:x}", t, std::process::id()).chars().cycle().take(n).collect()
        };
        let password = format!("pw{}", rand(20));
        let password_file = d.join("secrets/postgres.password");
        std::fs::write(&password_file, format!("{password}\n")).expect("password");
        for (f, i) in [("operator", 1), ("viewer", 2), ("lease", 3), ("agent", 4)] {
            std::fs::write(d.join(format!("secrets/{f}.token")), format!("{}{i}", rand(32))).expect("token");
        }
        let ca = pgdr_tls::ca::Authority::generate("adopt test CA").expect("CA");
        pgdr_tls::ca::write_new(&d.join("tls/ca.crt"), ca.cert_pem(), 0o644).expect("ca.crt");
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        for part in ["controller", "agent", "proxy", "client"] {
            let c = ca.issue(&format!("pgdr {part}"), &names).expect("issue");
            pgdr_tls::ca::write_new(&d.join(format!("tls/{part}.crt")), &c.cert_pem, 0o644).expect("crt");
            pgdr_tls::ca::write_new(&d.join(format!("tls/{part}.key")), &c.key_pem, 0o600).expect("key");
        }
        let controller = free_port();
        let mut text =
            format!("[controller]\nlisten = \"127.0.0.1:{controller}\"\nregion = \"west\"\nstate_dir = \"state\"\n\n");
        for (name, role) in [("operator", "operator"), ("viewer", "viewer"), ("lease", "agent")] {
            text.push_str(&format!(
                "[[controller.tokens]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken = {{ file = \"secrets/{name}.token\" }}\n\n"
            ));
        }
        text.push_str("[agents]\ntoken = { file = \"secrets/agent.token\" }\n\n");
        text.push_str("[tls]\nmode = \"verify-full\"\nca = \"tls/ca.crt\"\nclient_certs = true\n");
        for part in ["controller", "agent", "proxy", "client"] {
            text.push_str(&format!("{part} = {{ cert = \"tls/{part}.crt\", key = \"tls/{part}.key\" }}\n"));
        }
        text.push('\n');
        text.push_str(TIMING);
        text.push_str("\n[[regions]]\nname = \"east\"\n\n[[regions]]\nname = \"west\"\n\n");
        text.push_str("[[tiers]]\nname = \"gold\"\nrpo = \"5s\"\nrto = \"30s\"\n");
        let config = d.join("pgdr.toml");
        std::fs::write(&config, text).expect("pgdr.toml");
        pgdr_config::Config::load(&config).expect("the test's config loads");
        World {
            dir,
            config,
            password_file,
            password,
            ca,
            controller,
            children: Vec::new(),
            named: Vec::new(),
            agents: Default::default(),
            pids: Vec::new(),
            servers: Vec::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A certificate for a PostgreSQL server, its key owned by `postgres`.
    fn server_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        let c = self.ca.issue(name, &["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("issue");
        let (crt, key) =
            (self.path().join(format!("tls/{name}-pg.crt")), self.path().join(format!("tls/{name}-pg.key")));
        pgdr_tls::ca::write_new(&crt, &c.cert_pem, 0o644).expect("crt");
        pgdr_tls::ca::write_new(&key, &c.key_pem, 0o600).expect("key");
        RunAs::for_node(None).expect("postgres").give(&key).expect("chown key");
        (crt, key)
    }

    fn legacy(&mut self, name: &str) -> Legacy {
        let l = Legacy::start(self.path(), name, &self.password);
        self.servers.push(l.data.clone());
        l
    }

    fn pgdr(&self, args: &[&str]) -> Output {
        let out = Command::new(PGDR)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("PGPASSWORD")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run pgdr");
        eprintln!(
            "$ pgdr {}\n[exit {:?}]\n{}{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Stops the agent [`Self::start_agent`] started (SIGTERM, then its end) and starts it again.
    fn restart_agent(&mut self, node: &str) {
        let mut child = self.agents.remove(node).expect("agent started by the test");
        kill(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
        let _ = child.wait();
        self.start_agent(node);
    }

    fn start_agent(&mut self, node: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join(format!("state/agent-{node}.test.log")))
            .expect("log");
        let err = log.try_clone().expect("log");
        let child = Command::new(PGDR)
            .args(["agent", "--config"])
            .arg(&self.config)
            .args(["--node", node])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start agent");
        self.agents.insert(node.to_owned(), child);
        // Until it listens: the controller's view of the node comes from
        // PostgreSQL, and stays "reachable" while the agent restarts.
        let cfg = pgdr_config::Config::load(&self.config).expect("config");
        let addr = cfg.cluster("main").and_then(|c| c.node(node)).map(|n| n.agent.clone()).expect("agent address");
        let end = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < end, "the agent of {node} did not listen on {addr} within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn sql(&self, port: u16, q: &str) -> Vec<Vec<Option<String>>> {
        let tls = pgdr_tls::pg::PgTls::new(&self.path().join("tls/ca.crt")).expect("tls");
        let conninfo = format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres password={} connect_timeout=5",
            self.password
        );
        // TLS when the server serves it, else plain (before adoption).
        let client = match pgdr_node::local::connect(&conninfo, "db", Some(&tls)).await {
            Ok(c) => c,
            Err(_) => pgdr_node::local::connect(&conninfo, "db", None).await.expect("connect"),
        };
        client
            .simple_query(q)
            .await
            .expect("query")
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect()
    }

    /// [`Self::sql`], `None` when the server does not answer.
    async fn try_sql(&self, port: u16, q: &str) -> Option<Vec<Vec<Option<String>>>> {
        let tls = pgdr_tls::pg::PgTls::new(&self.path().join("tls/ca.crt")).ok()?;
        let conninfo = format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres password={} connect_timeout=5",
            self.password
        );
        let client = pgdr_node::local::connect(&conninfo, "db", Some(&tls)).await.ok()?;
        let rows = client.simple_query(q).await.ok()?;
        Some(
            rows.into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                    }
                    _ => None,
                })
                .collect(),
        )
    }

    async fn settings(&self, port: u16) -> String {
        let rows = self.sql(port, "select name || '=' || setting from pg_settings order by name").await;
        rows.into_iter().map(|r| r[0].clone().unwrap_or_default()).collect::<Vec<_>>().join("\n")
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn adopt_args<'a>(w: &'a World, l: &'a Legacy, conninfo: &'a str, data: &'a str, agent: &'a str) -> Vec<String> {
    let _ = (w, l);
    vec![
        "adopt".into(),
        "--node".into(),
        "east-1".into(),
        "--region".into(),
        "east".into(),
        "--conninfo".into(),
        conninfo.into(),
        "--data-dir".into(),
        data.into(),
        "--cluster".into(),
        "main".into(),
        "--agent".into(),
        agent.into(),
        "--password-file".into(),
        w.password_file.display().to_string(),
        "--replica-host".into(),
        "127.0.0.1".into(),
    ]
}

/// Adopts the legacy server: dry run, reload-level fixes, then the restart.
async fn adopt(w: &mut World, l: &Legacy) -> String {
    let conninfo = format!("postgresql://postgres@127.0.0.1:{}/postgres", l.port);
    let agent = format!("127.0.0.1:{}", free_port());
    let (crt, key) = w.server_cert("east-1");
    let base = adopt_args(w, l, &conninfo, &l.data_s(), &agent);
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v = base.clone();
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let cert_args = ["--ssl-cert", crt.to_str().unwrap_or(""), "--ssl-key", key.to_str().unwrap_or("")];

    // 1. Dry run: every gap with its fix, nothing changed.
    let before_settings = w.settings(l.port).await;
    let before_hba = std::fs::read(l.data.join("pg_hba.conf")).expect("hba");
    let before_auto = std::fs::read(l.data.join("postgresql.auto.conf")).expect("auto.conf");
    let before_config = std::fs::read(&w.config).expect("config");
    let pid = l.pid();
    let mut args = with(&["--dry-run"]);
    args.extend(cert_args.iter().map(|s| (*s).to_owned()));
    let out = w.pgdr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "gaps block adoption:\n{t}");
    for want in [
        "wal_log_hints",
        "ALTER SYSTEM SET wal_log_hints = 'on';",
        "host",
        "replication postgres 127.0.0.1/32 scram-sha-256",
        "[reload] ssl",
        "ALTER SYSTEM SET ssl = 'on';",
        "[advice] archive_mode",
        "[advice] pg_hba.conf TLS",
        "[reload] restart_after_crash",
        "dry run: nothing changed",
        "need a restart: wal_log_hints",
    ] {
        assert!(t.contains(want), "dry run output lacks {want:?}:\n{t}");
    }
    assert_eq!(w.settings(l.port).await, before_settings, "a dry run changed a setting");
    assert_eq!(std::fs::read(l.data.join("pg_hba.conf")).expect("hba"), before_hba, "a dry run changed pg_hba.conf");
    assert_eq!(std::fs::read(l.data.join("postgresql.auto.conf")).expect("auto"), before_auto);
    assert_eq!(std::fs::read(&w.config).expect("config"), before_config, "a dry run changed the config");
    assert_eq!(l.pid(), pid, "a dry run restarted the server");
    assert!(!w.path().join("state/pgdr.redb").exists(), "a dry run wrote the store");

    // 2. Reload-level fixes only: the restart-level gap is left, never restarted.
    let mut args = with(&["--apply-reloadable"]);
    args.extend(cert_args.iter().map(|s| (*s).to_owned()));
    let out = w.pgdr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "wal_log_hints still needs a restart:\n{t}");
    assert!(t.contains("applied: ALTER SYSTEM SET ssl = 'on';"), "{t}");
    assert!(t.contains("need a restart") && t.contains("wal_log_hints"), "{t}");
    assert_eq!(l.pid(), pid, "adopt restarted without --restart");
    assert_eq!(std::fs::read(&w.config).expect("config"), before_config, "not adopted: config unchanged");
    let ssl = w.sql(l.port, "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()").await;
    assert_eq!(ssl[0][0].as_deref(), Some("true"), "the reload turned TLS on");

    // 3. With --restart: adopted, into the config and the store.
    let out = w.pgdr(&with(&["--restart"]).iter().map(String::as_str).collect::<Vec<_>>());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "adopted:\n{t}");
    assert_ne!(l.pid(), pid, "--restart restarted it");
    assert!(t.contains("store: cluster main at epoch 1, primary east-1"), "{t}");
    let cfg = pgdr_config::Config::load(&w.config).expect("config after adopt");
    let node = cfg.cluster("main").and_then(|c| c.node("east-1")).expect("east-1 in cluster main");
    assert_eq!(node.port, l.port);
    // What a rebuild must keep is in the node's settings: no config check warning.
    for k in ["restart_after_crash", "ssl_cert_file"] {
        assert!(node.settings.iter().any(|(n, _)| n == k), "{k} in the node's settings: {:?}", node.settings);
    }
    let out = w.pgdr(&["config", "check"]);
    assert!(!text(&out).contains("restart_after_crash"), "{}", text(&out));
    let hints = w.sql(l.port, "show wal_log_hints").await;
    assert_eq!(hints[0][0].as_deref(), Some("on"));
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_reports_gaps_dry_run_changes_nothing_then_adopts() {
    let mut w = World::new();
    let l = w.legacy("legacy");
    adopt(&mut w, &l).await;
    // Again: already adopted, nothing to do.
    let conninfo = format!("postgresql://postgres@127.0.0.1:{}/postgres", l.port);
    let cfg = pgdr_config::Config::load(&w.config).expect("config");
    let agent = cfg.cluster("main").and_then(|c| c.node("east-1")).map(|n| n.agent.clone()).expect("agent");
    let args = adopt_args(&w, &l, &conninfo, &l.data_s(), &agent);
    let out = w.pgdr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Bad usage: a password in the conninfo, exit 2.
    let bad = format!("postgresql://postgres:secret@127.0.0.1:{}/postgres", l.port);
    let mut args = adopt_args(&w, &l, &bad, &l.data_s(), &agent);
    args.push("--dry-run".into());
    let out = w.pgdr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!text(&out).contains("secret"), "the password is never echoed");
}

/// `replica add` of west-1 (a standby in region west) with its agent
/// started by the command; returns its port.
async fn add_standby(w: &mut World, primary_port: u16) -> u16 {
    let (crt, key) = w.server_cert("west-1");
    let home = w.path().join("west-1");
    std::fs::create_dir_all(&home).expect("mkdir");
    mode(&home, 0o755);
    let data = home.join("data");
    w.servers.push(data.clone());
    let port = free_port().to_string();
    let agent = format!("127.0.0.1:{}", free_port());
    let out = w.pgdr(&[
        "replica",
        "add",
        "--cluster",
        "main",
        "--node",
        "west-1",
        "--region",
        "west",
        "--agent",
        &agent,
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--data-dir",
        data.to_str().unwrap_or(""),
        "--ssl-cert",
        crt.to_str().unwrap_or(""),
        "--ssl-key",
        key.to_str().unwrap_or(""),
        "--setting",
        "fsync=off",
        "--setting",
        "wal_log_hints=on",
        "--start-agent",
        "--json",
        "--timeout",
        "120s",
    ]);
    let t = text(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if let Some(pid) = v.get("agent_pid").and_then(serde_json::Value::as_i64) {
        w.pids.push(pid as i32);
    }
    assert_eq!(out.status.code(), Some(0), "replica add:\n{t}");
    let copied = v.get("copied_bytes").and_then(serde_json::Value::as_i64).unwrap_or(0);
    assert!(copied > 1 << 20, "the copy's progress was read on the primary:\n{t}");
    let rows = w
        .sql(primary_port, "select application_name, state from pg_stat_replication where application_name = 'west-1'")
        .await;
    assert_eq!(rows.first().and_then(|r| r[1].clone()).as_deref(), Some("streaming"), "{rows:?}");
    let slot =
        w.sql(primary_port, "select active::text from pg_replication_slots where slot_name = 'pgdr_west_1'").await;
    assert_eq!(slot.first().and_then(|r| r[0].clone()).as_deref(), Some("true"), "streams through its slot: {slot:?}");
    let port: u16 = port.parse().expect("port");
    let cert = w.sql(port, "show ssl_cert_file").await;
    assert_eq!(cert[0][0].as_deref(), crt.to_str(), "the standby serves its own certificate");
    port
}

/// Adopt, then `replica add` in the second region: a streaming standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_then_replica_add_streams() {
    let mut w = World::new();
    let l = w.legacy("legacy");
    adopt(&mut w, &l).await;
    let port = add_standby(&mut w, l.port).await;
    // A write on the primary reaches the standby.
    w.sql(l.port, "create table t_adopt(x int); insert into t_adopt values (42)").await;
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = w.sql(port, "select count(*) from pg_class where relname = 't_adopt'").await;
        if ok.first().and_then(|r| r[0].clone()).as_deref() == Some("1") {
            break;
        }
        assert!(Instant::now() < end, "the standby did not replay");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cfg = pgdr_config::Config::load(&w.config).expect("config");
    assert!(cfg.cluster("main").and_then(|c| c.node("west-1")).is_some());
}

impl World {
    fn api(&self) -> pgdr_api::controller::ControllerClient {
        let d = self.path();
        let id = pgdr_tls::Identity { cert: d.join("tls/client.crt"), key: d.join("tls/client.key") };
        let tls = pgdr_api::HttpTls::new(&d.join("tls/ca.crt"), Some(&id)).expect("https");
        let token = std::fs::read_to_string(d.join("secrets/operator.token")).expect("token");
        pgdr_api::controller::ControllerClient::new_with(
            &format!("127.0.0.1:{}", self.controller),
            Some(token.trim().into()),
            &tls,
        )
        .expect("controller client")
        .with_timeout(Duration::from_secs(5))
    }

    /// PgBouncer (as `postgres`, transaction pooling) in front of
    /// `127.0.0.1:port`, as a team runs it today; returns its port.
    fn start_pgbouncer(&mut self, port: u16) -> u16 {
        let dir = self.path().join("bouncer");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let run_as = RunAs::for_node(None).expect("postgres");
        let listen = free_port();
        std::fs::write(dir.join("userlist.txt"), format!("\"postgres\" \"{}\"\n", self.password)).expect("userlist");
        self.write_bouncer_ini(listen, port);
        for f in ["", "userlist.txt", "pgbouncer.ini"] {
            let p = dir.join(f);
            if let Some((_, uid, gid)) = &run_as.user {
                nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(*uid)), Some(nix::unistd::Gid::from_raw(*gid)))
                    .expect("chown");
            }
        }
        mode(&dir.join("userlist.txt"), 0o600);
        let mut cmd = Command::new("/usr/sbin/pgbouncer");
        cmd.arg(dir.join("pgbouncer.ini")).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        run_as.apply_std(&mut cmd);
        self.named.push(("pgbouncer".into(), cmd.spawn().expect("pgbouncer")));
        listen
    }

    fn write_bouncer_ini(&self, listen: u16, port: u16) {
        let dir = self.path().join("bouncer");
        let ini = format!(
            "[databases]\npostgres = host=127.0.0.1 port={port} dbname=postgres\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\n\
             unix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {}\npool_mode = transaction\nmax_client_conn = 100\n\
             default_pool_size = 10\nadmin_users = postgres\nserver_tls_sslmode = prefer\nlogfile = {}\n",
            dir.join("userlist.txt").display(),
            dir.join("pgbouncer.log").display()
        );
        // Replaced in place: PgBouncer (as postgres) rereads it on RELOAD.
        std::fs::write(dir.join("pgbouncer.ini"), ini).expect("pgbouncer.ini");
    }

    /// `pgdr ARGS --config F` as a child, its log in `state/NAME.test.log`.
    fn start_process(&mut self, name: &str, args: &[&str]) {
        let log = std::fs::File::create(self.path().join(format!("state/{name}.test.log"))).expect("log");
        let err = log.try_clone().expect("log");
        let child = Command::new(PGDR)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start pgdr");
        self.named.push((name.to_owned(), child));
    }

    /// SIGTERM to a child started by [`Self::start_process`], and its end.
    fn stop_process(&mut self, name: &str) {
        if let Some(i) = self.named.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.named.remove(i);
            kill(c.id() as i32, nix::sys::signal::Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn tail(&self, file: &str) {
        let t = std::fs::read_to_string(self.path().join("state").join(file)).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        eprintln!("---- {file} (last 40 lines)");
        for l in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("{l}");
        }
    }
}

/// The whole story: a server pgdr did not create is adopted, gains a
/// standby in another region, the proxy takes over its clients while it is
/// still a single server, and `pgdr migrate` moves the primary to the other
/// region under pgbench through the proxy: the dry run changes nothing,
/// the approval gate holds, no client error, every acknowledged commit on
/// the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_the_adopted_primary_live_through_the_proxy() {
    let mut w = World::new();
    let l = w.legacy("legacy");
    adopt(&mut w, &l).await;
    w.sql(l.port, "create table acked(id bigserial primary key, client int not null, at timestamptz default now())")
        .await;

    // 0. The team's PgBouncer in front of the server, and clients on it.
    let script = w.path().join("acked.sql");
    std::fs::write(&script, "insert into acked(client) values (:client_id);\n").expect("script");
    let bouncer = w.start_pgbouncer(l.port);
    let bouncer_s = bouncer.to_string();
    let password = w.password.clone();
    let psql_ok = |port: String, db: &'static str, sql: &'static str| {
        let pw = password.clone();
        async move {
            let out = Command::new("psql")
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", db, "-Atc", sql])
                .env("PGPASSWORD", &pw)
                .output()
                .ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        }
    };
    wait_for("PgBouncer to serve", Duration::from_secs(30), || psql_ok(bouncer_s.clone(), "postgres", "select 1"))
        .await;
    let bench_b = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            "2",
            "-j",
            "1",
            "-T",
            "55",
            "-f",
            script.to_str().unwrap_or(""),
            "-h",
            "127.0.0.1",
            "-p",
            &bouncer_s,
            "-U",
            "postgres",
            "postgres",
        ])
        .env("PGPASSWORD", &w.password)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgbench through PgBouncer");

    // 1. The proxy in front of the single server, as its own process
    //    (routing by polling the nodes until a controller publishes routes).
    let (writer, api) = (free_port(), free_port());
    std::fs::write(w.path().join("secrets/proxy-api.token"), "proxyapitoken0123456789abcdef").expect("token");
    let mut conf = std::fs::read_to_string(&w.config).expect("config");
    conf.push_str(&format!(
        "\n[[proxies]]\ncluster = \"main\"\nregion = \"east\"\ntls_cert = \"tls/proxy.crt\"\ntls_key = \"tls/proxy.key\"\nwriter = \"127.0.0.1:{writer}\"\napi = \"127.0.0.1:{api}\"\napi_token = {{ file = \"secrets/proxy-api.token\" }}\n"
    ));
    std::fs::write(&w.config, conf).expect("config");
    pgdr_config::Config::load(&w.config).expect("config with the proxy");
    w.start_process("proxy", &["proxy"]);
    let writer_s = writer.to_string();
    wait_for("the proxy to serve", Duration::from_secs(30), || async {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &writer_s, "-U", "postgres", "-d", "postgres", "-Atc", "select 1"])
            .env("PGPASSWORD", &w.password)
            .output()
            .ok()?;
        out.status.success().then_some(())
    })
    .await;

    // 2. pgbench through the proxy from now to after the migrate, one
    //    committed row per transaction.
    let mut bench = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            "50",
            "-P",
            "5",
            "-f",
            script.to_str().unwrap_or(""),
            "-h",
            "127.0.0.1",
            "-p",
            &writer_s,
            "-U",
            "postgres",
            "postgres",
        ])
        .env("PGPASSWORD", &w.password)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgbench");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. The controller, then the primary's agent (a freshly started agent
    //    of a writable primary needs a renewal).
    w.start_process("controller-1", &["controller"]);
    let api_client = w.api();
    wait_for("the controller", Duration::from_secs(60), || async { api_client.cluster("main").await.ok() }).await;
    w.start_agent("east-1");

    // PgBouncer now points at the pgdr proxy: RELOAD, and its server
    // connections are reopened through the proxy as transactions end.
    w.write_bouncer_ini(bouncer, writer);
    psql_ok(bouncer_s.clone(), "pgbouncer", "RELOAD").await.expect("RELOAD");
    wait_for("PgBouncer's server connections through the proxy", Duration::from_secs(30), || {
        let (b, wr) = (bouncer_s.clone(), writer_s.clone());
        let check = psql_ok(b, "pgbouncer", "SHOW SERVERS");
        async move {
            let out = check.await?;
            let rows: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
            (!rows.is_empty() && rows.iter().all(|r| r.contains(&format!("|{wr}|")))).then_some(())
        }
    })
    .await;

    // 4. A standby in the second region, under load; then the controller
    //    restarted to watch it (the proxy, a process of its own, keeps its clients).
    let west_port = add_standby(&mut w, l.port).await;
    w.stop_process("controller-1");
    w.start_process("controller-2", &["controller"]);
    wait_for("the controller", Duration::from_secs(60), || async {
        api_client.cluster("main").await.ok().filter(|v| v.nodes.len() == 2)
    })
    .await;
    // The primary's agent still acts only toward the nodes it loaded: a
    // migrate now could not bring east-1 back from west-1, and says so.
    let out = w.pgdr(&["migrate", "--cluster", "main", "--to", "west-1", "--dry-run"]);
    let t = text(&out);
    assert!(t.contains("NOT ready") && t.contains("the agent of east-1 was started before west-1 joined"), "{t}");
    // So the primary's agent restarts, and counts west-1 as a member.
    w.restart_agent("east-1");
    let view = wait_for("both nodes up, east-1 primary", Duration::from_secs(60), || async {
        let v = api_client.cluster("main").await.ok()?;
        (v.nodes.len() == 2
            && v.primary.as_ref().map(|p| p.as_str()) == Some("east-1")
            && v.nodes.iter().all(|n| n.reachable)
            && v.detection == "healthy")
            .then_some(v)
    })
    .await;
    let epoch = view.epoch;

    // 5. Dry run: the checks against the live topology, nothing changes.
    let before = std::fs::read(&w.config).expect("config");
    let out = w.pgdr(&["migrate", "--cluster", "main", "--to", "west-1", "--dry-run"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("catch_up_target") && t.contains("approve") && t.contains("stop_old_primary"), "{t}");
    assert!(t.contains("west-1 is ready to be the primary"), "{t}");
    assert_eq!(std::fs::read(&w.config).expect("config"), before, "a dry run changed the config");
    let v = api_client.cluster("main").await.expect("view");
    assert_eq!((v.epoch, v.primary.clone()), (epoch, Some("east-1".into())), "a dry run changed the topology");
    assert!(api_client.workflows().await.expect("workflows").is_empty(), "a dry run started a workflow");

    // 6. The migrate: preparation, the gate, the cutover.
    let out = w.pgdr(&["migrate", "--cluster", "main", "--to", "west-1", "--yes", "--no-wait", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let started: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let id = started.get("id").and_then(serde_json::Value::as_str).expect("workflow id").to_owned();
    let waiting = wait_for("the approval gate", Duration::from_secs(120), || async {
        let v = api_client.workflow(&id).await.ok()?;
        assert_ne!(v.state, "failed", "the preparation failed: {v:?}");
        (v.state == "waiting_approval").then_some(v)
    })
    .await;
    // The gate holds: nothing moves while it waits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = api_client.cluster("main").await.expect("view");
    assert_eq!((v.epoch, v.primary.clone()), (epoch, Some("east-1".into())), "the cutover ran before approval");
    assert_eq!(api_client.workflow(&id).await.expect("workflow").state, "waiting_approval");
    let east = w.sql(l.port, "select pg_is_in_recovery()::text").await;
    assert_eq!(east[0][0].as_deref(), Some("false"), "east-1 is still the primary at the gate");
    eprintln!(
        "preparation before the gate: {:?}",
        waiting.steps.iter().map(|s| (&s.name, s.duration_ms)).collect::<Vec<_>>()
    );

    assert!(bench.try_wait().expect("pgbench").is_none(), "pgbench ended before the cutover: lengthen -T");
    let out = w.pgdr(&["approve", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let done = wait_for("the migrate to end", Duration::from_secs(180), || async {
        let v = api_client.workflow(&id).await.ok()?;
        matches!(v.state.as_str(), "succeeded" | "failed" | "cancelled").then_some(v)
    })
    .await;
    let out = w.pgdr(&["workflows", &id]);
    let journal = text(&out);
    if done.state != "succeeded" {
        w.tail("controller-2.test.log");
        w.tail("proxy.test.log");
        w.tail("agent-east-1.test.log");
    }
    assert_eq!(done.state, "succeeded", "{journal}");
    let ms = |name: &str| done.steps.iter().find(|s| s.name == name).and_then(|s| s.duration_ms).unwrap_or(0);
    let paused: u64 = [
        "pause_proxy",
        "stop_old_primary",
        "check_replayed",
        "raise_epoch",
        "set_sync_standbys",
        "promote",
        "resume_proxy",
    ]
    .iter()
    .map(|s| ms(s))
    .sum();
    eprintln!("[migrate] pause_proxy .. resume_proxy took {paused} ms by the journal");
    // The proxy's own measure: how long it held the writer endpoint.
    let log = std::fs::read_to_string(w.path().join("state/proxy.test.log")).unwrap_or_default();
    let held: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("writer endpoint resumed"))
        .filter_map(|l| {
            // Without the colour codes around the value.
            let mut plain = String::new();
            let mut esc = false;
            for c in l.chars() {
                match (esc, c) {
                    (false, '\u{1b}') => esc = true,
                    (true, 'm') => esc = false,
                    (true, _) => {}
                    (false, c) => plain.push(c),
                }
            }
            let rest = plain[plain.find("paused_ms=")? + "paused_ms=".len()..].to_owned();
            let digits: String =
                rest.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    eprintln!("[migrate] the proxy held writes for {:?} ms (every pause it logged; the last is the cutover's)", held);

    let out = bench.wait_with_output().expect("pgbench");
    let (so, se) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    eprintln!("pgbench:\n{so}{se}");
    if !out.status.success() {
        for f in ["agent-east-1.test.log", "proxy.test.log", "controller-2.test.log", "controller-1.test.log"] {
            w.tail(f);
        }
    }
    assert!(out.status.success(), "pgbench had client errors:\n{so}{se}");
    assert!(!se.to_lowercase().contains("error"), "pgbench saw an error:\n{se}");
    let processed: i64 = so
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.trim().parse().ok())
        .expect("pgbench's count");
    if let Some(f) = so.lines().find(|l| l.starts_with("number of failed transactions")) {
        assert!(f.contains(": 0 "), "failed transactions: {f}");
    }
    let out_b = bench_b.wait_with_output().expect("pgbench through PgBouncer");
    let (so_b, se_b) =
        (String::from_utf8_lossy(&out_b.stdout).into_owned(), String::from_utf8_lossy(&out_b.stderr).into_owned());
    eprintln!("pgbench through PgBouncer:\n{so_b}{se_b}");
    assert!(out_b.status.success(), "pgbench through PgBouncer had client errors:\n{so_b}{se_b}");
    let processed_b: i64 = so_b
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.trim().parse().ok())
        .expect("pgbench's count");
    let processed = processed + processed_b;
    // Every acknowledged commit is on the new primary.
    let v = api_client.cluster("main").await.expect("view");
    assert_eq!(v.primary.as_ref().map(|p| p.as_str()), Some("west-1"), "{v:?}");
    assert!(v.epoch > epoch);
    let west = w.sql(west_port, "select pg_is_in_recovery()::text, count(*)::text from acked").await;
    assert_eq!(west[0][0].as_deref(), Some("false"), "west-1 is the primary");
    let rows: i64 = west[0][1].as_deref().and_then(|s| s.parse().ok()).expect("count");
    eprintln!(
        "[migrate] pgbench acknowledged {processed} transactions ({processed_b} through PgBouncer); the new primary holds {rows} rows"
    );
    assert!(processed > 0);
    assert!(rows >= processed, "lost acknowledged commits: {processed} acknowledged, {rows} on the new primary");
    // The old primary came back as a standby of the new one.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let east = w.try_sql(l.port, "select pg_is_in_recovery()::text").await;
        if east.as_ref().and_then(|r| r.first()).and_then(|r| r[0].clone()).as_deref() == Some("true") {
            break;
        }
        if Instant::now() > deadline {
            w.tail("agent-east-1.test.log");
            w.tail("controller-2.test.log");
            panic!("east-1 did not come back as a standby ({east:?}):\n{journal}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
