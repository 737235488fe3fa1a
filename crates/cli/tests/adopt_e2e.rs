//! End-to-end tests of `pgdr adopt`, `pgdr replica add` and `pgdr migrate`
//! on a PostgreSQL server started outside pgdr, the way a team's existing
//! server runs: plain `initdb` (no checksums) and `pg_ctl start` as user
//! `postgres`, `pg_hba.conf` without replication entries, TLS off. The
//! config around it has TLS and tokens on, as pgdr's default.
//!
//! Everything started is stopped by PID on drop (servers by
//! `postmaster.pid`, agents and `pgdr run` by their child PIDs).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgdr_node::{PgBinaries, RunAs};

const PGDR: &str = env!("CARGO_BIN_EXE_pgdr");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

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
    #[allow(dead_code)]
    controller: u16,
    children: Vec<Child>,
    pids: Vec<i32>,
    servers: Vec<PathBuf>,
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
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

    #[allow(dead_code)]
    fn start_agent(&mut self, node: &str) {
        let log = std::fs::File::create(self.path().join(format!("state/agent-{node}.test.log"))).expect("log");
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
        self.children.push(child);
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

/// Adopt, then `replica add` in the second region: a streaming standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_then_replica_add_streams() {
    let mut w = World::new();
    let l = w.legacy("legacy");
    adopt(&mut w, &l).await;
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
    let port: u16 = port.parse().expect("port");
    let rows = w
        .sql(
            l.port,
            "select application_name, state, sync_state from pg_stat_replication where application_name = 'west-1'",
        )
        .await;
    assert_eq!(rows.first().and_then(|r| r[1].clone()).as_deref(), Some("streaming"), "{rows:?}");
    let slot = w.sql(l.port, "select active::text from pg_replication_slots where slot_name = 'pgdr_west_1'").await;
    assert_eq!(slot.first().and_then(|r| r[0].clone()).as_deref(), Some("true"), "streams through its slot: {slot:?}");
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
    let cert = w.sql(port, "show ssl_cert_file").await;
    assert_eq!(cert[0][0].as_deref(), crt.to_str(), "the standby serves its own certificate");
    let cfg = pgdr_config::Config::load(&w.config).expect("config");
    assert!(cfg.cluster("main").and_then(|c| c.node("west-1")).is_some());
}
