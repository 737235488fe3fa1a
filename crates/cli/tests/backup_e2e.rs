//! End-to-end backups on a sandbox: it archives WAL from its first start,
//! `pgdr run`'s controller backs it up on its tier's schedule (every 10 s
//! here) to the local destination and copies each backup, with the WAL, to
//! a second destination on an S3-compatible server; point-in-time restore
//! works from either destination; `pgdr backup verify` catches a corrupted
//! object.
//!
//! The S3 server is moto (`moto_server`, PyPI `moto[server]`) on loopback:
//! it stands in for a cloud's S3 API, which cannot be reached here.

mod common;

use common::free_port;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgdr_sandbox::{Sandbox, SandboxGuard};
use serde_json::Value;

const PGDR: &str = env!("CARGO_BIN_EXE_pgdr");
const S3_KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

fn pgdr(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(PGDR).args(args).output().expect("run pgdr");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A child process killed (SIGKILL, by PID) and reaped on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// moto's S3 server on a free loopback port.
fn start_moto() -> (Killed, u16) {
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start moto_server ({e}); install it with `pip install 'moto[server]'`"));
    let moto = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not listen on 127.0.0.1:{port} within 30s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = Command::new("curl")
        .args(["-sf", "-X", "PUT", &format!("http://127.0.0.1:{port}/pgdr-e2e")])
        .stdout(Stdio::null())
        .status()
        .expect("curl");
    assert!(st.success(), "cannot create the bucket");
    (moto, port)
}

/// A restored server (started by `pgdr restore --start`), stopped by the
/// PID in its postmaster.pid on drop.
struct Restored {
    dir: PathBuf,
    port: u16,
}

impl Drop for Restored {
    fn drop(&mut self) {
        let text = std::fs::read_to_string(self.dir.join("postmaster.pid")).unwrap_or_default();
        if let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
            let deadline = Instant::now() + Duration::from_secs(20);
            while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn psql(port: u16, password: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-Atc", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run psql");
    assert!(out.status.success(), "psql on {port}: {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn status(config: &str) -> Vec<Value> {
    let (_, out, err) = pgdr(&["--config", config, "backup", "status", "--json"]);
    match serde_json::from_str::<Value>(&out) {
        Ok(Value::Array(a)) => a,
        _ => panic!("backup status --json is not a JSON list: {out} {err}"),
    }
}

fn dest_status<'a>(list: &'a [Value], dest: &str) -> &'a Value {
    list.iter().find(|s| s["destination"] == dest).unwrap_or_else(|| panic!("no status for {dest}: {list:?}"))
}

async fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The sandbox's tier: backups every 10 s, copied to `s3`.
fn configure(config: &Path, s3_port: u16) {
    let mut text = std::fs::read_to_string(config).expect("read pgdr.toml");
    let schedule = "schedule = \"0 */6 * * *\"\ndestination = \"local\"\n";
    assert!(text.contains(schedule), "unexpected sandbox config:\n{text}");
    text = text.replacen(schedule, "schedule = \"*/10 * * * * *\"\ndestination = \"local\"\ncopies = [\"s3\"]\n", 1);
    let anchor = "[[tiers]]\n";
    let s3 = format!(
        "# moto's S3 server on loopback stands in for a cloud's S3 API.\n[[destinations]]\nname = \"s3\"\nurl = \"s3://pgdr-e2e/backups\"\nendpoint = \"http://127.0.0.1:{s3_port}\"\nallow_http = true\nregion = \"us-east-1\"\naccess_key_id = {{ value = \"testing\" }}\nsecret_access_key = {{ value = \"testing\" }}\nkey = {{ value = \"{S3_KEY}\" }}\nconcurrency = 4\n\n"
    );
    text = text.replacen(anchor, &format!("{s3}{anchor}"), 1);
    std::fs::write(config, text).expect("write pgdr.toml");
    pgdr_config::Config::load(config).expect("the edited config validates");
}

/// Restores `from` at `target` into a fresh folder, starts it, and returns
/// the rows of table `t`.
fn restore(root: &Path, config: &str, from: &str, target: &str, password: &str) -> (Restored, String) {
    let dir = root.join(format!("restore-{from}"));
    let port = free_port();
    let t0 = Instant::now();
    let (code, out, err) = pgdr(&[
        "--config",
        config,
        "restore",
        "--cluster",
        "main",
        "--from",
        from,
        "--target-time",
        target,
        "--to",
        &dir.display().to_string(),
        "--start",
        "--port",
        &port.to_string(),
    ]);
    let restored = Restored { dir: dir.clone(), port };
    assert_eq!(code, 0, "restore from {from} failed: {out} {err}");
    eprintln!("restore from {from}: {} ({:.1}s)", out.trim(), t0.elapsed().as_secs_f64());
    let rows = psql(restored.port, password, "select string_agg(x::text, ',' order by x) from t");
    (restored, rows)
}

/// The largest stored object of a backup folder other than its manifest.
fn first_part(dir: &Path) -> Option<PathBuf> {
    let mut todo = vec![dir.to_path_buf()];
    let mut best: Option<(u64, PathBuf)> = None;
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).ok()?.filter_map(|e| e.ok()) {
            let p = e.path();
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            if p.is_dir() {
                todo.push(p);
            } else if p.file_name().is_some_and(|n| n != "manifest.json") && best.as_ref().is_none_or(|b| len > b.0) {
                best = Some((len, p));
            }
        }
    }
    best.map(|b| b.1)
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_backups_to_two_destinations_pitr_from_each_and_verify() {
    let t0 = Instant::now();
    let (moto, s3_port) = start_moto();
    let sb = SandboxGuard::start_temp(Sandbox::builder().regions(["east"]), Path::new(PGDR)).await.expect("sandbox up");
    let root = sb.temp_root().expect("temp root").to_path_buf();
    let config = sb.config.display().to_string();
    configure(&sb.config, s3_port);
    let primary = sb.primary().clone();
    let password = sb.password().to_owned();

    // Archiving is on from the sandbox's first start.
    let rows = sb.sql(&primary.name, "select pg_switch_wal()::text").await.expect("switch wal");
    assert!(!rows.is_empty());

    let log_path = sb.dir.join("logs").join("run-backup-e2e.log");
    let log = std::fs::File::create(&log_path).expect("run log");
    let run = Killed(
        Command::new(PGDR)
            .args(["run", "--config", &config])
            .current_dir(&sb.dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start pgdr run"),
    );

    // The controller backs up at once (never backed up) and copies to s3.
    let first = wait_for("a scheduled backup on local and its copy on s3", Duration::from_secs(60), || {
        let list = status(&config);
        let (l, s) = (dest_status(&list, "local"), dest_status(&list, "s3"));
        let ok = l["backups"].as_u64() >= Some(1) && s["backups"].as_u64() >= Some(1) && s["newest"] == l["newest"];
        ok.then(|| l["newest"].as_str().unwrap_or_default().to_owned())
    })
    .await;
    eprintln!("[{:.1}s] backup {first} on local and s3", t0.elapsed().as_secs_f64());
    let archiver = sb
        .sql(&primary.name, "select archived_count, failed_count from pg_stat_archiver")
        .await
        .expect("pg_stat_archiver");
    let archived: u64 = archiver[0][0].as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
    let failed: u64 = archiver[0][1].as_deref().and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
    assert!(archived >= 1 && failed == 0, "archiver: {archived} archived, {failed} failed");

    // Two known transactions, a target time between them.
    let p = primary.port;
    psql(p, &password, "create table t(x int); insert into t values (1)");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let target = psql(p, &password, "select now()::text");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    psql(p, &password, "insert into t values (2)");
    let segment = psql(p, &password, "select pg_walfile_name(pg_current_wal_lsn())");
    psql(p, &password, "select pg_switch_wal()");
    // Continuously archived to local by archive_command; carried to s3 by the next scheduled copy.
    for dest in ["local", "s3"] {
        wait_for(&format!("WAL {segment} at {dest}"), Duration::from_secs(60), || {
            let list = status(&config);
            let newest = dest_status(&list, dest)["newest_wal"].as_str().unwrap_or_default().to_owned();
            (newest.as_str() >= segment.as_str()).then_some(())
        })
        .await;
        eprintln!("[{:.1}s] WAL {segment} archived at {dest}", t0.elapsed().as_secs_f64());
    }
    let list = status(&config);
    eprintln!("backup status: {}", serde_json::to_string(&list).unwrap_or_default());
    let tls = sb.http_tls();
    let http = tls.client(Duration::from_secs(5)).expect("http client");
    let viewer = pgdr_config::Config::load(&sb.config)
        .expect("config")
        .controller_client_token(pgdr_config::Access::Viewer)
        .expect("viewer token")
        .expect("a viewer token");
    let metrics = http
        .get(format!(
            "{}://{}/metrics",
            tls.scheme(),
            pgdr_config::Config::load(&sb.config).expect("config").controller.listen
        ))
        .bearer_auth(viewer.expose())
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    for name in ["pgdr_backup_last_success_timestamp_seconds", "pgdr_backup_newest_age_seconds", "pgdr_backup_bytes"] {
        assert!(
            metrics.lines().any(|l| l.starts_with(name) && l.contains("destination=\"s3\"")),
            "/metrics lacks {name} for s3:\n{metrics}"
        );
    }
    // The backups ran as workflows: the backup as one step, the copy as
    // another; each run's end is an event in the store's log.
    let api = pgdr_config::Config::load(&sb.config).expect("config").controller.listen;
    let get = |path: String| {
        let (http, viewer) = (http.clone(), viewer.clone());
        async move {
            let r = http
                .get(format!("{}://{api}{path}", tls.scheme()))
                .bearer_auth(viewer.expose())
                .send()
                .await
                .expect("GET");
            r.json::<Value>().await.expect("JSON")
        }
    };
    let workflows = get("/v1/workflows".into()).await;
    let done = workflows
        .as_array()
        .expect("workflow list")
        .iter()
        .find(|w| w["kind"] == "backup" && w["state"] == "succeeded")
        .unwrap_or_else(|| panic!("no succeeded backup workflow: {workflows}"));
    let view = get(format!("/v1/workflows/{}", done["id"].as_str().unwrap_or_default())).await;
    let steps: Vec<&str> = view["steps"].as_array().expect("steps").iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(steps, ["backup", "copy_to_s3", "prune"], "steps of {view}");
    let events = get("/v1/events".into()).await;
    let ok = events.as_array().expect("events").iter().find(|e| e["state"] == "backup_succeeded");
    let ok = ok.unwrap_or_else(|| panic!("no backup_succeeded event: {events}"));
    eprintln!("event: {}", ok["message"]);
    drop(run);

    // Point-in-time restore from each destination: the first row, not the second.
    for from in ["local", "s3"] {
        let (restored, rows) = restore(&root, &config, from, &target, &password);
        assert_eq!(rows, "1", "restore from {from} to {target}: rows of t");
        drop(restored);
    }

    // The stopped restored server's directory: refused without --delta (exit 1,
    // naming the flag), a usage error with --verify (exit 2), and brought back
    // in place with --delta.
    let old = root.join("restore-local");
    let to = old.display().to_string();
    let base = ["--config", config.as_str(), "restore", "--cluster", "main", "--from", "local"];
    let (code, out, err) = pgdr(&[&base[..], &["--to", to.as_str()]].concat());
    assert_eq!(code, 1, "a non-empty --to without --delta: {out} {err}");
    assert!(err.contains("--delta"), "the error names --delta: {err}");
    let (code, out, err) = pgdr(&[&base[..], &["--delta", "--verify"]].concat());
    assert_eq!(code, 2, "--delta with --verify is a usage error: {out} {err}");
    let port = free_port();
    let port_s = port.to_string();
    let delta =
        ["--target-time", target.as_str(), "--to", to.as_str(), "--delta", "--start", "--port", port_s.as_str()];
    let (code, out, err) = pgdr(&[&base[..], &delta[..]].concat());
    let restored = Restored { dir: old.clone(), port };
    assert_eq!(code, 0, "delta restore: {out} {err}");
    assert!(out.contains("kept as they were"), "the delta restore says what it kept: {out}");
    eprintln!("delta restore: {}", out.trim());
    assert_eq!(psql(port, &password, "select string_agg(x::text, ',' order by x) from t"), "1");
    drop(restored);

    // A corrupted object is caught by verify, with its name.
    let dir = sb.dir.join("backups").join("main").join("backups").join(&first);
    let part = first_part(&dir).unwrap_or_else(|| panic!("no part of backup {first} under {}", dir.display()));
    let mut bytes = std::fs::read(&part).expect("read part");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&part, bytes).expect("corrupt part");
    let (code, out, err) =
        pgdr(&["--config", &config, "backup", "verify", "--cluster", "main", "--from", "local", "--backup", &first]);
    assert_eq!(code, 1, "verify of a corrupted backup must fail: {out} {err}");
    let name = part.strip_prefix(&dir).ok().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    assert!(err.contains("corrupt") && err.contains(&name), "verify names the corrupted object: {out} {err}");
    eprintln!("verify: {} {}", err.trim(), out.trim());
    let (code, out, err) =
        pgdr(&["--config", &config, "backup", "verify", "--cluster", "main", "--from", "s3", "--backup", &first]);
    assert_eq!(code, 0, "the s3 copy is intact: {out} {err}");
    drop(moto);
    eprintln!("done in {:.1}s", t0.elapsed().as_secs_f64());
}

/// A standby that `pgdr replica add --from-backup` built from the latest
/// backup on the S3-compatible destination (moto) and the WAL archived
/// there since: rows written after the backup reach it, part through the
/// archive (`restore_command`), the rest streamed from the primary through
/// its slot, and the primary served no base backup.
#[tokio::test(flavor = "multi_thread")]
async fn replica_add_from_backup_restores_replays_the_archive_and_streams() {
    let t0 = Instant::now();
    let (moto, s3_port) = start_moto();
    let sb = SandboxGuard::start_temp(
        Sandbox::builder().regions(["east", "west"]).replicas_per_region(0).tls(false),
        Path::new(PGDR),
    )
    .await
    .expect("sandbox up");
    let root = sb.temp_root().expect("temp root").to_path_buf();
    let config = sb.config.display().to_string();
    // The tier backs up to s3 and archives its WAL there (archive_command
    // reads the config at every segment).
    configure(&sb.config, s3_port);
    let text = std::fs::read_to_string(&sb.config).expect("read pgdr.toml");
    let text = text.replacen(
        "schedule = \"*/10 * * * * *\"\ndestination = \"local\"\ncopies = [\"s3\"]\n",
        "schedule = \"0 */6 * * *\"\ndestination = \"s3\"\n",
        1,
    );
    std::fs::write(&sb.config, text).expect("write pgdr.toml");
    pgdr_config::Config::load(&sb.config).expect("the edited config validates");
    let primary = sb.primary().clone();
    let password = sb.password().to_owned();
    let p = primary.port;
    psql(p, &password, "create table t(x int); insert into t values (1)");
    psql(p, &password, "select pg_switch_wal()");

    // `pgdr run` holds the cluster's state; it takes a backup at once (never backed up).
    let log_path = sb.dir.join("logs").join("run-replica-from-backup.log");
    let log = std::fs::File::create(&log_path).expect("run log");
    let run = Killed(
        Command::new(PGDR)
            .args(["run", "--config", &config])
            .current_dir(&sb.dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start pgdr run"),
    );
    let backup = wait_for("a backup on s3", Duration::from_secs(90), || {
        let list = status(&config);
        let s = dest_status(&list, "s3");
        (s["backups"].as_u64() >= Some(1)).then(|| s["newest"].as_str().unwrap_or_default().to_owned())
    })
    .await;
    eprintln!("[{:.1}s] backup {backup} on s3", t0.elapsed().as_secs_f64());

    // After the backup: rows archived to s3 (a switched segment), then rows only the primary has.
    psql(p, &password, "insert into t select g from generate_series(2, 1000) g");
    let segment = psql(p, &password, "select pg_walfile_name(pg_current_wal_lsn())");
    psql(p, &password, "select pg_switch_wal()");
    wait_for(&format!("WAL {segment} at s3"), Duration::from_secs(60), || {
        let list = status(&config);
        let newest = dest_status(&list, "s3")["newest_wal"].as_str().unwrap_or_default().to_owned();
        (newest.as_str() >= segment.as_str()).then_some(())
    })
    .await;
    psql(p, &password, "insert into t select g from generate_series(1001, 2000) g");

    let data = root.join("west-9").join("data");
    std::fs::create_dir_all(data.parent().expect("parent")).expect("mkdir");
    std::fs::set_permissions(data.parent().expect("parent"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let port = free_port();
    let agent = format!("127.0.0.1:{}", free_port());
    let standby = Restored { dir: data.clone(), port };
    let add = Command::new(PGDR)
        .args(["--config", &config, "replica", "add", "--cluster", "main", "--node", "west-9", "--region", "west"])
        .args(["--agent", &agent, "--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .args(["--setting", "fsync=off", "--from-backup", "--json", "--timeout", "180s"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pgdr replica add");
    let mut add = Killed(add);
    // Its agent, as on the new host, once the config names the node.
    wait_for("west-9 in the config", Duration::from_secs(60), || {
        let cfg = pgdr_config::Config::load(&sb.config).ok()?;
        cfg.cluster("main").and_then(|c| c.node("west-9")).map(|_| ())
    })
    .await;
    let agent_log = std::fs::File::create(sb.dir.join("logs").join("agent-west-9.test.log")).expect("agent log");
    let _agent = Killed(
        Command::new(PGDR)
            .args(["agent", "--config", &config, "--node", "west-9"])
            .stdin(Stdio::null())
            .stdout(agent_log.try_clone().expect("log"))
            .stderr(agent_log)
            .spawn()
            .expect("start the agent of west-9"),
    );
    let (code, stdout, stderr) = {
        let child = &mut add.0;
        let (mut o, mut e) = (String::new(), String::new());
        use std::io::Read;
        child.stdout.take().expect("stdout").read_to_string(&mut o).expect("read stdout");
        child.stderr.take().expect("stderr").read_to_string(&mut e).expect("read stderr");
        (child.wait().expect("wait").code(), o, e)
    };
    eprintln!("$ pgdr replica add --from-backup\n[exit {code:?}]\n{stdout}{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap_or_default();
    assert_eq!(code, Some(0), "replica add --from-backup: {stdout} {stderr}");
    let steps: Vec<&str> = v["steps"].as_array().expect("steps").iter().filter_map(Value::as_str).collect();
    assert!(
        steps.iter().any(|s| s.starts_with(&format!("restored backup {backup} from s3"))),
        "restored the latest backup from s3: {steps:?}"
    );
    assert!(!steps.iter().any(|s| s.contains("base backup")), "no base backup of the primary: {steps:?}");

    // Streaming through its slot, every row there, the archived segment replayed from s3.
    let rows = psql(p, &password, "select state from pg_stat_replication where application_name = 'west-9'");
    assert_eq!(rows, "streaming");
    let slot = psql(p, &password, "select active::text from pg_replication_slots where slot_name = 'pgdr_west_9'");
    assert_eq!(slot, "true", "streams through its slot");
    psql(p, &password, "insert into t values (2001)");
    wait_for("every row on the standby", Duration::from_secs(30), || {
        let n = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-Atc"])
            .arg("select count(*), max(x) from t")
            .env("PGPASSWORD", &password)
            .output()
            .ok()?;
        (String::from_utf8_lossy(&n.stdout).trim() == "2001|2001").then_some(())
    })
    .await;
    assert_eq!(psql(port, &password, "select pg_is_in_recovery()::text"), "true");
    let server_log = std::fs::read_to_string(root.join("west-9").join("data.log")).unwrap_or_default();
    assert!(
        server_log.contains(&format!("restored log file \"{segment}\" from archive")),
        "the standby fetched {segment} through restore_command:\n{server_log}"
    );
    eprintln!("[{:.1}s] west-9 streams with every row", t0.elapsed().as_secs_f64());
    drop(_agent);
    drop(standby);
    drop(run);
    drop(moto);
}
