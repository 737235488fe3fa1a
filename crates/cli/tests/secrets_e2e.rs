//! `pgdr secrets` end to end, on a fresh `pgdr sandbox up` (east: primary
//! and replica, west: standby) with `pgdr run` (controller and proxies):
//!
//! - a rotation with no extra setup creates the managed logins, writes
//!   every region's file store (mode 0600) with that region's proxy writer
//!   endpoint, and every stored secret logs in through its proxy and
//!   directly on every node;
//! - with the alternating strategy, a rotation while pgbench logs in again
//!   and again (`-C`) with the current secret through the proxy costs
//!   pgbench zero errors, and the previous secret still logs in;
//! - a store that cannot be reached makes the rotation fail with exit 1
//!   before the database changes; a store left behind is brought up to date
//!   by the next rotation;
//! - through a switchover, every stored secret keeps logging in, and the
//!   next rotation lands on the new primary with the new epoch;
//! - a `single` role's password changes in place: the stored secret logs
//!   in, the previous one no longer does;
//! - no password shows in pgdr's output, the controller's events, or any
//!   file of the sandbox but the stores: pgdr's, the agents' and
//!   PostgreSQL's logs, the data directories and their WAL (which carry the
//!   SCRAM verifier only).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgdr_config::{Access, Config};
use pgdr_drill::scenario::Hosts;
use pgdr_sandbox::{Sandbox, SandboxGuard};
use pgdr_secrets::SecretValue;
use serde_json::Value;

const PGDR: &str = env!("CARGO_BIN_EXE_pgdr");

/// `pgdr run`, killed and reaped on drop.
struct Run(std::process::Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pgdr(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(PGDR).arg("--config").arg(config).args(args).output().expect("run pgdr");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn pgdr_async(config: &Path, args: &[&str]) -> (i32, String, String) {
    let config = config.to_owned();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        pgdr(&config, &a)
    })
    .await
    .expect("join")
}

fn stored(dir: &Path, region: &str) -> SecretValue {
    let p = dir.join("secret-stores").join(region).join("main.app.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .expect("a pgdr secret")
}

/// Every file below `dir` (but `skip`) that contains one of `needles`:
/// each file read once.
fn files_containing(dir: &Path, needles: &[String], skip: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.starts_with(skip) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            files_containing(&p, needles, skip, found);
        } else if meta.is_file()
            && let Ok(bytes) = std::fs::read(&p)
        {
            // std's substring search (built optimized), not a debug-built loop.
            let text = String::from_utf8_lossy(&bytes);
            if needles.iter().any(|n| text.contains(n.as_str())) {
                found.push(p);
            }
        }
    }
}

fn rotation(out: &str, err: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("rotate --json: {e}: {out}\n{err}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_writes_every_region_logs_in_everywhere_and_leaks_nothing() {
    let sb = SandboxGuard::start_temp(Sandbox::builder(), Path::new(PGDR)).await.expect("sandbox up");
    let cfg = Config::load(&sb.config).expect("the sandbox's config");
    let (run, api) = run_and_wait(&sb, &cfg, 2).await;
    let mut passwords = Vec::new();

    // 1. The first rotation: no setup beyond `sandbox up`.
    let (code, out, err) = pgdr_async(&sb.config, &["secrets", "rotate", "--cluster", "main", "--json"]).await;
    assert_eq!(code, 0, "rotate: {out}\n{err}");
    let r = rotation(&out, &err);
    let role = &r["roles"][0];
    assert_eq!(role["login"], "app", "{r:#}");
    assert_eq!(role["version"], 1);
    assert_eq!(role["replicas"].as_array().map(Vec::len), Some(2), "{r:#}");
    for region in ["east", "west"] {
        let v = stored(&sb.dir, region);
        passwords.push(v.password.clone());
        assert!(v.password.len() >= 32);
        assert_eq!((v.username.as_str(), v.version, v.engine.as_str()), ("app", 1, "postgres"));
        let proxy = cfg.proxies.iter().find(|p| p.region.as_str() == region).expect("proxy");
        assert_eq!((v.host.clone(), v.port), (proxy.writer.ip().to_string(), proxy.writer.port()), "{region}");
        let mode = std::fs::metadata(sb.dir.join("secret-stores").join(region).join("main.app.json"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("meta");
        assert_eq!(mode, 0o600);
        pgdr_secrets::rotate::login(&v, None, sb.pg_tls())
            .await
            .unwrap_or_else(|e| panic!("{region} through its proxy: {e}"));
        for n in sb.nodes() {
            pgdr_secrets::rotate::login(&v, Some((&n.host, n.port)), sb.pg_tls())
                .await
                .unwrap_or_else(|e| panic!("{region}'s secret directly on {}: {e}", n.name));
        }
    }
    assert_eq!(passwords[0], passwords[1], "one password, every region");

    // 2. Alternating under load: pgbench logs in for every transaction
    // (-C) through the east proxy with the current secret (app) while the
    // rotation changes app_b and flips the stores.
    let v1 = stored(&sb.dir, "east");
    let script = sb.dir.join("select.sql");
    std::fs::write(&script, "SELECT 1;\n").expect("script");
    let bench = Command::new("pgbench")
        .args(["-n", "-C", "-h", &v1.host, "-p", &v1.port.to_string(), "-U", &v1.username])
        .args(["-c", "4", "-j", "2", "-T", "8", "-f"])
        .arg(&script)
        .arg(&v1.dbname)
        .env("PGPASSWORD", &v1.password)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgbench");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, out, err) = pgdr_async(&sb.config, &["secrets", "rotate", "--cluster", "main", "--json"]).await;
    assert_eq!(code, 0, "rotate under load: {out}\n{err}");
    assert_eq!(rotation(&out, &err)["roles"][0]["login"], "app_b");
    let bench = tokio::task::spawn_blocking(move || bench.wait_with_output().expect("pgbench")).await.expect("join");
    let (bout, berr) = (String::from_utf8_lossy(&bench.stdout), String::from_utf8_lossy(&bench.stderr));
    assert!(bench.status.success(), "pgbench failed during the rotation:\n{bout}\n{berr}");
    assert!(!berr.contains("error") && !bout.contains("aborted"), "client errors:\n{bout}\n{berr}");
    let processed: u64 = bout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pgbench summary:\n{bout}\n{berr}"));
    assert!(processed > 0, "{bout}");
    eprintln!("pgbench -C through the proxy during the rotation: {processed} transactions, 0 errors");
    let v2 = stored(&sb.dir, "west");
    passwords.push(v2.password.clone());
    assert_eq!((v2.username.as_str(), v2.version), ("app_b", 2));
    pgdr_secrets::rotate::login(&v2, None, sb.pg_tls()).await.expect("the new secret through the west proxy");
    pgdr_secrets::rotate::login(&v1, None, sb.pg_tls())
        .await
        .expect("the previous secret still logs in until the next rotation");

    // 3. An unreachable store: nothing changes, exit 1; back, a rerun works.
    let west = sb.dir.join("secret-stores").join("west");
    let away = sb.dir.join("secret-stores").join("west.away");
    std::fs::rename(&west, &away).expect("hide west's store");
    let (code, out, err) = pgdr_async(&sb.config, &["secrets", "rotate", "--cluster", "main", "--json"]).await;
    assert_eq!(code, 1, "an unreachable store must fail the rotation: {out}\n{err}");
    let r = rotation(&out, &err);
    let west_rep = r["roles"][0]["stores"].as_array().and_then(|s| s.iter().find(|s| s["region"] == "west")).cloned();
    assert!(west_rep.as_ref().is_some_and(|s| s["error"].as_str().is_some_and(|e| e.contains("unreachable"))), "{r:#}");
    assert_eq!(stored(&sb.dir, "east").version, 2, "nothing changed while a store was unreachable");
    std::fs::rename(&away, &west).expect("west's store back");
    // West left behind (its previous version restored, as if a write had
    // been lost): the rerun brings it up to date, then rotates.
    std::fs::copy(west.join("main.app.v1.json"), west.join("main.app.json")).expect("west behind");
    assert_eq!(stored(&sb.dir, "west").version, 1);
    let (code, out, err) = pgdr_async(&sb.config, &["secrets", "rotate", "--cluster", "main", "--json"]).await;
    assert_eq!(code, 0, "the rerun: {out}\n{err}");
    for region in ["east", "west"] {
        let v = stored(&sb.dir, region);
        assert_eq!((v.username.as_str(), v.version), ("app", 3), "{region}");
        pgdr_secrets::rotate::login(&v, None, sb.pg_tls())
            .await
            .unwrap_or_else(|e| panic!("{region} after the rerun: {e}"));
        passwords.push(v.password);
    }

    // 4. status and verify: every region logs in; no password printed.
    let (code, vout, verr) = pgdr_async(&sb.config, &["secrets", "verify", "--cluster", "main"]).await;
    assert_eq!(code, 0, "verify: {vout}\n{verr}");
    assert!(vout.contains("logs in"), "{vout}");
    let (code, sout, serr) = pgdr_async(&sb.config, &["secrets", "status", "--cluster", "main", "--json"]).await;
    assert_eq!(code, 0, "status: {sout}\n{serr}");
    let s: Value = serde_json::from_str(&sout).expect("status --json");
    assert_eq!(s["roles"][0]["version"], 3, "{s:#}");
    // `pgdr check`: per region, whether the stored secret logs in now.
    let (_, cout, cerr) = pgdr_async(&sb.config, &["check", "--cluster", "main", "--json"]).await;
    let c: Value = serde_json::from_str(&cout).unwrap_or_else(|e| panic!("check --json: {e}: {cout}\n{cerr}"));
    let secrets: Vec<&Value> =
        c["findings"].as_array().map(|f| f.iter().filter(|f| f["check"] == "secrets").collect()).unwrap_or_default();
    assert_eq!(secrets.len(), 2, "one finding per region: {c:#}");
    assert!(
        secrets.iter().all(|f| f["severity"] == "ok" && f["message"].as_str().is_some_and(|m| m.contains("logs in"))),
        "{c:#}"
    );

    // 5. Through a switchover: the stored secret keeps logging in through
    // every proxy (the change replicated), and the next rotation lands on
    // the new primary with the new epoch.
    let before = api.cluster("main").await.expect("cluster");
    let (code, wout, werr) =
        pgdr_async(&sb.config, &["switchover", "--cluster", "main", "--to", "east-2", "--yes", "--json"]).await;
    assert_eq!(code, 0, "switchover: {wout}\n{werr}");
    let after = api.cluster("main").await.expect("cluster");
    assert_eq!(after.primary.as_ref().map(|p| p.to_string()).as_deref(), Some("east-2"));
    assert!(after.epoch.0 > before.epoch.0);
    for region in ["east", "west"] {
        let v = stored(&sb.dir, region);
        let t = Instant::now();
        // The proxy routes to the new primary once the workflow resumed it.
        while let Err(e) = pgdr_secrets::rotate::login(&v, None, sb.pg_tls()).await {
            assert!(t.elapsed() < Duration::from_secs(20), "{region}'s secret after the switchover: {e}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let t = Instant::now();
    let (code, out, err) = loop {
        // The controller may still list the switchover's follow-up for a moment.
        let r = pgdr_async(&sb.config, &["secrets", "rotate", "--cluster", "main", "--json"]).await;
        if r.0 == 0 || t.elapsed() > Duration::from_secs(30) || !r.1.contains("is running on cluster") {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(code, 0, "rotate after the switchover: {out}\n{err}");
    let r = rotation(&out, &err);
    assert_eq!(r["roles"][0]["primary"], "east-2", "{r:#}");
    assert_eq!(r["roles"][0]["epoch"], after.epoch.0, "{r:#}");
    for region in ["east", "west"] {
        let v = stored(&sb.dir, region);
        assert_eq!((v.username.as_str(), v.version, v.epoch), ("app_b", 4, after.epoch.0), "{region}");
        pgdr_secrets::rotate::login(&v, None, sb.pg_tls())
            .await
            .unwrap_or_else(|e| panic!("{region} after the switchover: {e}"));
        passwords.push(v.password);
    }

    // 6. A `single` role: its own password changes in place; the previous
    // secret stops working, the stored one logs in everywhere.
    let mut text = std::fs::read_to_string(&sb.config).expect("config");
    text.push_str("\n[[clusters.secrets.roles]]\nname = \"batch\"\nstrategy = \"single\"\n");
    std::fs::write(&sb.config, text).expect("config");
    // The controller rotates the roles of its config: it starts again to learn the new one.
    drop(run);
    let (_run, _) = run_and_wait(&sb, &cfg, 2).await;
    let batch = |region: &str| -> SecretValue {
        let p = sb.dir.join("secret-stores").join(region).join("main.batch.json");
        serde_json::from_str(&std::fs::read_to_string(&p).expect("batch secret")).expect("json")
    };
    let mut previous: Option<SecretValue> = None;
    for version in 1..=2u64 {
        let (code, out, err) =
            pgdr_async(&sb.config, &["secrets", "rotate", "--cluster", "main", "--role", "batch", "--json"]).await;
        assert_eq!(code, 0, "rotate batch: {out}\n{err}");
        for region in ["east", "west"] {
            let v = batch(region);
            assert_eq!((v.username.as_str(), v.version), ("batch", version), "{region}");
            pgdr_secrets::rotate::login(&v, None, sb.pg_tls())
                .await
                .unwrap_or_else(|e| panic!("batch in {region}: {e}"));
            passwords.push(v.password.clone());
        }
        if let Some(old) = &previous {
            assert!(
                pgdr_secrets::rotate::login(old, None, sb.pg_tls()).await.is_err(),
                "single: the old password must stop working"
            );
        }
        previous = Some(batch("east"));
    }

    // 6. No password anywhere but the stores: pgdr's output, the
    // sandbox's files (pgdr's, the agents' and PostgreSQL's logs, data
    // directories, WAL), the controller's events.
    let events = serde_json::to_string(&api.events(None).await.expect("events")).expect("json");
    let outputs = [out, err, vout, verr, sout, serr, wout, werr, cout, cerr].join("\n");
    for p in &passwords {
        assert!(!outputs.contains(p.as_str()), "a password in pgdr's output");
        assert!(!events.contains(p.as_str()), "a password in the controller's events");
    }
    let mut found = Vec::new();
    files_containing(&sb.dir, &passwords, &sb.dir.join("secret-stores"), &mut found);
    assert!(found.is_empty(), "a password in {found:?}");
    assert!(sb.dir.join("logs").join("run.log").metadata().is_ok_and(|m| m.len() > 0), "pgdr run logged nothing");
}

/// Starts `pgdr run` on the sandbox and waits until the controller names a
/// primary with `replicas` nodes following it.
async fn run_and_wait(
    sb: &SandboxGuard,
    cfg: &Config,
    replicas: usize,
) -> (Run, pgdr_api::controller::ControllerClient) {
    // Appended to: a test that restarts `pgdr run` keeps both logs.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(sb.dir.join("logs").join("run.log"))
        .expect("run log");
    let run = Run(Command::new(PGDR)
        .arg("run")
        .arg("--config")
        .arg(&sb.config)
        .current_dir(&sb.dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("pgdr run"));
    let operator = cfg.controller_client_token(Access::Operator).expect("token");
    let api =
        pgdr_api::controller::ControllerClient::new_with(&cfg.controller.listen.to_string(), operator, sb.http_tls())
            .expect("client")
            .with_timeout(Duration::from_secs(5));
    let t = Instant::now();
    loop {
        if let Ok(c) = api.cluster("main").await
            && c.primary.is_some()
            && c.epoch.0 > 0
            && c.nodes.iter().filter(|n| n.role == pgdr_model::Role::Replica).count() == replicas
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the controller did not record the cluster");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (run, api)
}

/// Rotates (retrying while the controller still lists a role change's
/// follow-up) and returns the report.
async fn rotate_now(config: &Path, state: &str) -> Value {
    let t = Instant::now();
    loop {
        let (code, out, err) = pgdr_async(config, &["secrets", "rotate", "--cluster", "main", "--json"]).await;
        if code == 0 {
            return rotation(&out, &err);
        }
        assert!(
            out.contains("is running on cluster") && t.elapsed() < Duration::from_secs(60),
            "rotate in state {state}: exit {code}\n{out}\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the controller's view satisfies `f`.
async fn wait_view(
    api: &pgdr_api::controller::ControllerClient,
    what: &str,
    limit: Duration,
    f: impl Fn(&pgdr_api::controller::ClusterView) -> bool,
) -> pgdr_api::controller::ClusterView {
    let t = Instant::now();
    loop {
        if let Ok(c) = api.cluster("main").await
            && f(&c)
        {
            return c;
        }
        assert!(t.elapsed() < limit, "gave up waiting for {what} after {limit:?}: {:#?}", api.cluster("main").await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn role_of(c: &pgdr_api::controller::ClusterView, node: &str) -> Option<pgdr_model::Role> {
    c.nodes.iter().find(|n| n.name.as_str() == node).map(|n| n.role)
}

/// Every store of the replica set holds `version` and logs in through its
/// region's proxy and directly on the primary.
async fn assert_stores(sb: &SandboxGuard, regions: &[&str], version: u64, primary: (&str, u16), state: &str) {
    for region in regions {
        let v = stored(&sb.dir, region);
        assert_eq!(v.version, version, "state {state}: {region}'s store");
        let t = Instant::now();
        // The proxy may still be moving to a new primary.
        while let Err(e) = pgdr_secrets::rotate::login(&v, None, sb.pg_tls()).await {
            assert!(t.elapsed() < Duration::from_secs(20), "state {state}: {region}'s secret through its proxy: {e}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        pgdr_secrets::rotate::login(&v, Some(primary), sb.pg_tls())
            .await
            .unwrap_or_else(|e| panic!("state {state}: {region}'s secret on the primary: {e}"));
    }
}

/// The five states of a failover and failback (issue 16), with a rotation
/// in each, on a sandbox of one node per region (east-1 primary, west-1
/// standby), so that losing east takes every node of a region out of the
/// replica set:
///
/// 1. primary east: both stores rotate;
/// 2. east's host lost, west promoted, the old east primary out of the
///    set: the rotation writes west's store and leaves east's untouched
///    (byte for byte);
/// 3. the old east host back, re-established by the controller as a
///    standby of west: its workflow brings east's store up to the version
///    west holds (before any rotation), then a rotation writes both;
/// 4. failback by switchover to east-1: both stores rotate on the new
///    primary;
/// 5. back at the start (east primary, west standby): a last rotation,
///    every store logs in.
#[tokio::test(flavor = "multi_thread")]
async fn five_states_of_a_failover_and_failback_keep_every_store_valid() {
    let sb =
        SandboxGuard::start_temp(Sandbox::builder().replicas_per_region(0).standbys_per_region(1), Path::new(PGDR))
            .await
            .expect("sandbox up");
    let cfg = Config::load(&sb.config).expect("the sandbox's config");
    let (run, api) = run_and_wait(&sb, &cfg, 1).await;
    let cluster = cfg.cluster("main").expect("main").clone();
    let at = |name: &str| -> (String, u16) {
        let n = cluster.node(name).expect("node");
        (n.host.clone(), n.port)
    };
    let hosts = pgdr_drill::hosts::LocalHosts::new(&cfg, PathBuf::from(PGDR));
    let east1 = cluster.node("east-1").expect("east-1").clone();
    let mut passwords = Vec::new();
    let t0 = Instant::now();

    // 1. Primary east.
    let r = rotate_now(&sb.config, "1").await;
    assert_eq!(r["roles"][0]["primary"], "east-1", "{r:#}");
    let (h, p) = at("east-1");
    assert_stores(&sb, &["east", "west"], 1, (&h, p), "1").await;
    passwords.push(stored(&sb.dir, "east").password);

    // From here on, applications write through every region's proxy with
    // the secret their region's store holds.
    {
        let mut c = tokio_postgres::Config::new();
        c.host(&h).port(p).user(&cluster.user).password(sb.password()).dbname(&cluster.database);
        let admin = pgdr_tls::pg::connect(&c, sb.pg_tls()).await.expect("connect to east-1 as the admin");
        admin
            .batch_execute(
                "CREATE TABLE walk_load (region text, client text, version bigint, at timestamptz DEFAULT now());
                 GRANT INSERT, SELECT ON walk_load TO app",
            )
            .await
            .expect("the load's table");
    }
    let load = Load::start(&sb.dir, sb.pg_tls());
    load.wait_version(1).await;

    // 2. East's host is lost (agent and server killed): west is promoted
    // and the old primary is out of the set.
    let before = api.cluster("main").await.expect("cluster");
    let killed_at = Instant::now();
    for pid in [hosts.agent_pid(&east1).expect("agent"), hosts.postmaster_pid(&east1).expect("postmaster")] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");
    }
    let c = wait_view(&api, "west-1 promoted", Duration::from_secs(90), |c| {
        c.primary.as_ref().is_some_and(|p| p.as_str() == "west-1") && c.epoch > before.epoch && c.workflow.is_none()
    })
    .await;
    let failed_over_at = Instant::now();
    eprintln!("state 2: west-1 primary at epoch {}", c.epoch.0);
    let east_before = std::fs::read(sb.dir.join("secret-stores").join("east").join("main.app.json")).expect("east");
    eprintln!(
        "state 2 reached after {:.1}s: {:?}",
        t0.elapsed().as_secs_f64(),
        api.cluster("main").await.map(|c| c
            .nodes
            .iter()
            .map(|n| (n.name.to_string(), n.role, n.reachable))
            .collect::<Vec<_>>())
    );
    let r = rotate_now(&sb.config, "2").await;
    assert_eq!(r["roles"][0]["primary"], "west-1", "{r:#}");
    let east_rep = r["roles"][0]["stores"].as_array().and_then(|s| s.iter().find(|s| s["region"] == "east")).cloned();
    assert!(east_rep.as_ref().is_some_and(|s| s["skipped"].is_string()), "east must be skipped: {r:#}");
    let east_after = std::fs::read(sb.dir.join("secret-stores").join("east").join("main.app.json")).expect("east");
    assert_eq!(east_before, east_after, "state 2: the store of the region out of the set was touched");
    let (h, p) = at("west-1");
    assert_stores(&sb, &["west"], 2, (&h, p), "2").await;
    passwords.push(stored(&sb.dir, "west").password);

    // 3. The old east host comes back (server first, as at boot, then its
    // agent); the controller re-establishes it as a standby of west.
    hosts.start_postgres(&east1).await.expect("start east-1's server");
    hosts.start_agent(&east1).await.expect("start east-1's agent");
    wait_view(&api, "east-1 re-established as a replica", Duration::from_secs(120), |c| {
        role_of(c, "east-1") == Some(pgdr_model::Role::Replica)
            && c.nodes.iter().any(|n| n.name.as_str() == "east-1" && n.reachable && !n.fenced)
            && c.workflow.is_none()
    })
    .await;
    // Its region's store is brought up to date as it rejoins (the
    // re-establish workflow's sync_secrets step), before any rotation.
    let t = Instant::now();
    while stored(&sb.dir, "east").version != 2 {
        assert!(t.elapsed() < Duration::from_secs(60), "east's store was not brought up to date at the rejoin");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let synced = stored(&sb.dir, "east");
    assert_eq!(synced.password, stored(&sb.dir, "west").password, "east's store holds west's secret");
    pgdr_secrets::rotate::login(&synced, None, sb.pg_tls()).await.expect("east's synced secret through its proxy");
    eprintln!(
        "state 3 reached after {:.1}s: {:?}",
        t0.elapsed().as_secs_f64(),
        api.cluster("main").await.map(|c| c
            .nodes
            .iter()
            .map(|n| (n.name.to_string(), n.role, n.reachable))
            .collect::<Vec<_>>())
    );
    let r = rotate_now(&sb.config, "3").await;
    assert_eq!(r["roles"][0]["primary"], "west-1", "{r:#}");
    assert!(
        r["roles"][0]["replicas"]
            .as_array()
            .is_some_and(|x| x.iter().any(|x| x["node"] == "east-1" && x["replayed"] == true)),
        "state 3: the returned east-1 must have replayed the change: {r:#}"
    );
    assert_stores(&sb, &["east", "west"], 3, (&h, p), "3").await;
    passwords.push(stored(&sb.dir, "east").password);

    // 4. Failback: a switchover to east-1.
    let (code, wout, werr) =
        pgdr_async(&sb.config, &["switchover", "--cluster", "main", "--to", "east-1", "--yes", "--json"]).await;
    assert_eq!(code, 0, "failback: {wout}\n{werr}");
    wait_view(&api, "east-1 primary again", Duration::from_secs(60), |c| {
        c.primary.as_ref().is_some_and(|p| p.as_str() == "east-1") && c.workflow.is_none()
    })
    .await;
    // The old primary (west-1) may still be on its way back into the set:
    // a store of a region out of the set is left as it was.
    let before4: Vec<(&str, Vec<u8>)> = ["east", "west"]
        .into_iter()
        .map(|r| (r, std::fs::read(sb.dir.join("secret-stores").join(r).join("main.app.json")).expect("store")))
        .collect();
    eprintln!(
        "state 4 reached after {:.1}s: {:?}",
        t0.elapsed().as_secs_f64(),
        api.cluster("main").await.map(|c| c
            .nodes
            .iter()
            .map(|n| (n.name.to_string(), n.role, n.reachable))
            .collect::<Vec<_>>())
    );
    let r = rotate_now(&sb.config, "4").await;
    assert_eq!(r["roles"][0]["primary"], "east-1", "{r:#}");
    let skipped: Vec<&str> = r["roles"][0]["stores"]
        .as_array()
        .map(|s| s.iter().filter(|s| s["skipped"].is_string()).filter_map(|s| s["region"].as_str()).collect())
        .unwrap_or_default();
    eprintln!("state 4: stores skipped (region out of the set): {skipped:?}");
    assert!(!skipped.contains(&"east"), "{r:#}");
    for (region, bytes) in &before4 {
        if skipped.contains(region) {
            let now = std::fs::read(sb.dir.join("secret-stores").join(region).join("main.app.json")).expect("store");
            assert_eq!(&now, bytes, "state 4: {region} was out of the set and its store changed");
        }
    }
    let (h, p) = at("east-1");
    let written: Vec<&str> = ["east", "west"].into_iter().filter(|r| !skipped.contains(r)).collect();
    assert_stores(&sb, &written, 4, (&h, p), "4").await;
    passwords.push(stored(&sb.dir, "east").password);

    // 5. Back at the start, with west following east again.
    wait_view(&api, "west-1 following east-1", Duration::from_secs(60), |c| {
        role_of(c, "west-1") == Some(pgdr_model::Role::Replica)
    })
    .await;
    eprintln!(
        "state 5 reached after {:.1}s: {:?}",
        t0.elapsed().as_secs_f64(),
        api.cluster("main").await.map(|c| c
            .nodes
            .iter()
            .map(|n| (n.name.to_string(), n.role, n.reachable))
            .collect::<Vec<_>>())
    );
    let r = rotate_now(&sb.config, "5").await;
    assert_eq!(r["roles"][0]["replicas"].as_array().map(Vec::len), Some(1), "{r:#}");
    assert_stores(&sb, &["east", "west"], 5, (&h, p), "5").await;
    passwords.push(stored(&sb.dir, "east").password);

    // The load, through a failover, a rejoin, a failback and four
    // rotations: no stored secret was ever refused, and no client saw an
    // error outside the failover (from the kill until the controller had
    // west-1 primary and its workflow done: a transaction on the lost
    // host, or a login while the proxies still routed there, may fail).
    load.wait_version(5).await;
    let (attempts, sticky): (Vec<Attempt>, Vec<Attempt>) =
        load.stop().await.into_iter().partition(|a| a.client != "sticky");
    eprintln!(
        "sticky sessions (kept until an error, whatever the store holds): {} transactions, errors: {:?}",
        sticky.len(),
        sticky
            .iter()
            .filter_map(|a| a.error.as_ref().map(|e| format!(
                "{} v{} at {:.2}s: {e:?}",
                a.region,
                a.version,
                a.started.duration_since(t0).as_secs_f64()
            )))
            .collect::<Vec<_>>()
    );
    let in_failover = |a: &Attempt| a.ended >= killed_at && a.started <= failed_over_at;
    let refused: Vec<&Attempt> = attempts.iter().filter(|a| a.refused()).collect();
    let errors: Vec<&Attempt> = attempts.iter().filter(|a| a.error.is_some() && !in_failover(a)).collect();
    let failover: Vec<&Attempt> = attempts.iter().filter(|a| in_failover(a)).collect();
    let mut kinds: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for a in failover.iter().filter(|a| a.error.is_some()) {
        let (code, _) = a.error.as_ref().expect("an error");
        *kinds.entry(code.clone().unwrap_or_else(|| "no SQLSTATE".into())).or_default() += 1;
    }
    let mut by_version: std::collections::BTreeMap<(&str, &str, u64), usize> = std::collections::BTreeMap::new();
    for a in attempts.iter().filter(|a| a.error.is_none()) {
        *by_version.entry((a.region, a.client, a.version)).or_default() += 1;
    }
    eprintln!(
        "load: {} transactions, {} ok; outside the failover {} errors; during the failover ({:.1}s) {} attempts, {} errors by SQLSTATE {kinds:?}; logins refused {}; ok by (region, client, version): {by_version:?}",
        attempts.len(),
        attempts.iter().filter(|a| a.error.is_none()).count(),
        errors.len(),
        failed_over_at.duration_since(killed_at).as_secs_f64(),
        failover.len(),
        failover.iter().filter(|a| a.error.is_some()).count(),
        refused.len(),
    );
    let show = |list: &[&Attempt]| -> Vec<String> {
        list.iter()
            .take(20)
            .map(|a| {
                format!(
                    "{} {} v{} at {:.2}s: {:?}",
                    a.region,
                    a.client,
                    a.version,
                    a.started.duration_since(t0).as_secs_f64(),
                    a.error
                )
            })
            .collect()
    };
    assert!(refused.is_empty(), "a stored secret was refused: {:#?}", show(&refused));
    assert!(errors.is_empty(), "client errors outside the failover: {:#?}", show(&errors));
    for region in ["east", "west"] {
        for client in ["per-transaction", "session"] {
            assert!(
                attempts.iter().any(|a| a.region == region && a.client == client && a.error.is_none()),
                "the {region} {client} client never wrote"
            );
        }
    }

    // No password in the controller's events or any file but the stores.
    let events = serde_json::to_string(&api.events(None).await.expect("events")).expect("json");
    assert!(passwords.iter().all(|p| !events.contains(p.as_str())), "a password in the controller's events");
    drop(run);
    let mut found = Vec::new();
    files_containing(&sb.dir, &passwords, &sb.dir.join("secret-stores"), &mut found);
    assert!(found.is_empty(), "a password in {found:?}");
}

/// A rotation racing a failover: `pgdr secrets rotate` started, and the
/// primary's host lost (postmaster and agent SIGKILLed) while it runs. A
/// watcher logs in with every region's stored secret through the region's
/// proxy every 100 ms from before the rotation until the end: no stored
/// secret is ever refused by the server (SQLSTATE 28P01, at any instant;
/// other errors, the proxies pausing, are expected). Then a rerun succeeds
/// on the new primary and every store logs in there.
#[tokio::test(flavor = "multi_thread")]
async fn rotation_racing_a_failover_never_stores_a_refused_secret() {
    let sb = SandboxGuard::start_temp(Sandbox::builder(), Path::new(PGDR)).await.expect("sandbox up");
    let cfg = Config::load(&sb.config).expect("the sandbox's config");
    let (_run, api) = run_and_wait(&sb, &cfg, 2).await;
    let hosts = pgdr_drill::hosts::LocalHosts::new(&cfg, PathBuf::from(PGDR));
    let cluster = cfg.cluster("main").expect("main").clone();
    let east1 = cluster.node("east-1").expect("east-1").clone();
    let first = rotate_now(&sb.config, "before").await;
    assert_eq!(first["roles"][0]["primary"], "east-1", "{first:#}");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (dir, tls, stop) = (sb.dir.clone(), sb.pg_tls().cloned(), stop.clone());
        tokio::spawn(async move {
            let (mut tries, mut refused) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for region in ["east", "west"] {
                    let v = stored(&dir, region);
                    tries += 1;
                    if let Err(e) = pgdr_secrets::rotate::login(&v, None, tls.as_ref()).await
                        && (e.contains("28P01") || e.contains("password authentication failed"))
                    {
                        refused.push(format!("{region} v{}: {e}", v.version));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (tries, refused)
        })
    };
    let rotation = tokio::spawn({
        let config = sb.config.clone();
        async move { pgdr_async(&config, &["secrets", "rotate", "--cluster", "main", "--json"]).await }
    });
    // Mid-way: the rotation has started (its CLI is connecting, reading
    // the stores, changing the password) when the host goes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for pid in [hosts.agent_pid(&east1).expect("agent"), hosts.postmaster_pid(&east1).expect("postmaster")] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");
    }
    let (code, out, err) = rotation.await.expect("rotation task");
    eprintln!("the racing rotation exited {code}: {out}");
    assert!(code == 0 || code == 1, "exit {code}\n{out}\n{err}");
    let c = wait_view(&api, "a new primary", Duration::from_secs(90), |c| {
        c.primary.as_ref().is_some_and(|p| p.as_str() != "east-1") && c.workflow.is_none()
    })
    .await;
    let primary = c.primary.expect("primary").to_string();
    // A rerun repairs whatever the race left, on the new primary.
    let r = rotate_now(&sb.config, "after").await;
    assert_eq!(r["roles"][0]["primary"], primary.as_str(), "{r:#}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (tries, refused) = watcher.await.expect("watcher");
    eprintln!("watcher: {tries} logins with stored secrets, {} refused", refused.len());
    assert!(refused.is_empty(), "a stored secret was refused by the server: {refused:#?}");
    let version = r["roles"][0]["version"].as_u64().expect("version");
    let node = cluster.node(&primary).expect("primary node");
    // Each region keeps a node of the set (east-2 or west-1 promoted, the
    // other one a standby): both stores are written and log in.
    assert_stores(&sb, &["east", "west"], version, (&node.host, node.port), "after the race").await;
}

/// The rotation is the controller's `rotate-secrets` workflow: a plan
/// first (`--dry-run`: nothing changes), then a rotation started through
/// the API; `pgdr run` (controller and proxies) is SIGKILLed while the
/// workflow's `rotate_app` step runs and started again: the new controller
/// resumes the workflow from its journal (the interrupted step runs again)
/// and it ends with every region's stored secret logging in through its
/// proxy and directly on every node. No password in the journal, the
/// events, pgdr's output or any file of the sandbox (the state store
/// included).
#[tokio::test(flavor = "multi_thread")]
async fn a_controller_killed_mid_rotation_resumes_it_and_every_store_logs_in() {
    let sb = SandboxGuard::start_temp(Sandbox::builder(), Path::new(PGDR)).await.expect("sandbox up");
    let cfg = Config::load(&sb.config).expect("the sandbox's config");
    let (run, api) = run_and_wait(&sb, &cfg, 2).await;
    let mut passwords = Vec::new();

    // Through the CLI: the workflow, followed to its end.
    let first = rotate_now(&sb.config, "first").await;
    assert_eq!(first["state"], "succeeded", "{first:#}");
    let id = first["workflow"].as_str().expect("the workflow's id").to_owned();
    let w = api.workflow(&id).await.expect("workflow");
    assert_eq!(w.kind, "rotate-secrets");
    let steps: Vec<(&str, &str)> = w.steps.iter().map(|s| (s.name.as_str(), s.state.as_str())).collect();
    assert_eq!(steps, [("check", "succeeded"), ("rotate_app", "succeeded"), ("report", "succeeded")], "{w:#?}");
    passwords.push(stored(&sb.dir, "east").password);

    // A dry run plans and changes nothing.
    let (code, plan, perr) = pgdr_async(&sb.config, &["secrets", "rotate", "--cluster", "main", "--dry-run"]).await;
    assert_eq!(code, 0, "{plan}\n{perr}");
    assert!(plan.contains("rotate_app") && plan.contains("live check: primary east-1"), "{plan}");
    assert_eq!(stored(&sb.dir, "east").version, 1, "a dry run changed a store");

    // Started through the API, then the controller killed mid-step.
    let started = api
        .rotate_secrets("main", &pgdr_api::controller::RotateRequest::default())
        .await
        .expect("rotate through the API");
    let id = started.id.expect("id");
    let t = Instant::now();
    loop {
        let w = api.workflow(&id).await.expect("workflow");
        if w.steps.iter().any(|s| s.name == "rotate_app" && s.state == "started") {
            break;
        }
        assert!(w.state == "running", "the rotation ended before the kill: {w:#?}");
        assert!(t.elapsed() < Duration::from_secs(30), "rotate_app never started: {w:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut run = run;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(run.0.id() as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL pgdr run");
    let _ = run.0.wait();
    eprintln!("pgdr run SIGKILLed {} ms into the rotation", t.elapsed().as_millis());
    let (_run, api) = run_and_wait(&sb, &cfg, 2).await;
    let t = Instant::now();
    let w = loop {
        let w = api.workflow(&id).await.expect("workflow after the restart");
        if matches!(w.state.as_str(), "succeeded" | "failed" | "cancelled") {
            break w;
        }
        assert!(t.elapsed() < Duration::from_secs(90), "the resumed rotation did not end: {w:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(w.state, "succeeded", "{w:#?}");
    let step = w.steps.iter().find(|s| s.name == "rotate_app").expect("rotate_app");
    assert!(step.attempts >= 2, "the interrupted step ran again after the restart: {w:#?}");
    let east = stored(&sb.dir, "east");
    for region in ["east", "west"] {
        let v = stored(&sb.dir, region);
        assert_eq!((v.version, v.username.as_str()), (east.version, east.username.as_str()), "{region}");
        assert!(v.version >= 2, "{region} holds version {}", v.version);
        passwords.push(v.password.clone());
        pgdr_secrets::rotate::login(&v, None, sb.pg_tls())
            .await
            .unwrap_or_else(|e| panic!("{region} through its proxy after the resume: {e}"));
        for n in sb.nodes() {
            let t = Instant::now();
            // A standby reached directly may still be replaying.
            while let Err(e) = pgdr_secrets::rotate::login(&v, Some((&n.host, n.port)), sb.pg_tls()).await {
                assert!(t.elapsed() < Duration::from_secs(10), "{region}'s secret on {}: {e}", n.name);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // Events per store, and the rotation in `secrets show`.
    let events = serde_json::to_string(&api.events(None).await.expect("events")).expect("json");
    assert!(events.contains("secret_store_verified"), "no per-store event");
    let (code, show, serr) = pgdr_async(&sb.config, &["secrets", "show", "--cluster", "main"]).await;
    assert_eq!(code, 0, "{show}\n{serr}");
    assert!(show.contains(&format!("current login {}", east.username)) && show.contains(&id), "{show}");
    let journal = serde_json::to_string(&w).expect("json");
    let outputs = [plan, perr, show, serr, first.to_string(), journal].join("\n");
    for p in &passwords {
        assert!(!outputs.contains(p.as_str()), "a password in pgdr's output or the journal");
        assert!(!events.contains(p.as_str()), "a password in the controller's events");
    }
    let mut found = Vec::new();
    files_containing(&sb.dir, &passwords, &sb.dir.join("secret-stores"), &mut found);
    assert!(found.is_empty(), "a password in {found:?}");
}

/// A scheduled rotation: the sandbox's `[clusters.secrets] schedule` set to
/// a cron expression that fires every 10 seconds (6 fields, seconds first)
/// with no spread, and `pgdr run` started; nothing else asks for a
/// rotation. Every region's store advances by itself, twice, each time
/// through a `rotate-secrets` workflow the schedule started (journalled
/// with its reason, every step succeeded) whose per-store events are in the
/// controller's log; the stored secrets log in; no password in the events.
#[tokio::test(flavor = "multi_thread")]
async fn the_schedule_rotates_by_itself_and_journals_it() {
    let sb =
        SandboxGuard::start_temp(Sandbox::builder().replicas_per_region(0).standbys_per_region(1), Path::new(PGDR))
            .await
            .expect("sandbox up");
    let text = std::fs::read_to_string(&sb.config).expect("config");
    let daily = "schedule = \"0 3 * * *\"";
    assert!(text.contains(daily), "the sandbox's schedule changed: update this test");
    std::fs::write(&sb.config, text.replace(daily, "schedule = \"*/10 * * * * *\"\nspread = \"0s\"")).expect("config");
    let (code, out, err) = pgdr_async(&sb.config, &["config", "check"]).await;
    assert_eq!(code, 0, "config check: {out}\n{err}");
    let cfg = Config::load(&sb.config).expect("the edited config");
    let (run, api) = run_and_wait(&sb, &cfg, 1).await;
    let view = api.secrets("main").await.expect("secrets view");
    assert!(view.schedule.as_deref().is_some_and(|s| s.contains("*/10 * * * * *")), "{view:?}");
    assert!(view.next_due.is_some(), "{view:?}");

    let store = |region: &str| sb.dir.join("secret-stores").join(region).join("main.app.json");
    let t = Instant::now();
    while !["east", "west"].iter().all(|r| store(r).exists() && stored(&sb.dir, r).version >= 2) {
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "the schedule did not rotate twice: {:?}",
            api.secrets("main").await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The second workflow may still be at its last step (`report`) when
    // the stores hold its version.
    let flows = loop {
        let all: Vec<pgdr_api::controller::WorkflowView> =
            api.workflows().await.expect("workflows").into_iter().filter(|w| w.kind == "rotate-secrets").collect();
        let done: Vec<pgdr_api::controller::WorkflowView> =
            all.iter().filter(|w| w.state == "succeeded").cloned().collect();
        if done.len() >= 2 {
            break done;
        }
        assert!(
            !all.iter().any(|w| matches!(w.state.as_str(), "failed" | "cancelled")),
            "a scheduled rotation did not succeed: {all:#?}"
        );
        assert!(t.elapsed() < Duration::from_secs(90), "two scheduled rotations journalled: {all:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut passwords = Vec::new();
    for region in ["east", "west"] {
        let v = stored(&sb.dir, region);
        pgdr_secrets::rotate::login(&v, None, sb.pg_tls())
            .await
            .unwrap_or_else(|e| panic!("{region}'s scheduled secret through its proxy: {e}"));
        passwords.push(v.password);
    }
    let events = api.events(None).await.expect("events");
    for w in &flows {
        assert_eq!(w.params["requested_by"], "schedule", "{w:#?}");
        assert!(w.params["reason"].as_str().is_some_and(|r| r.starts_with("scheduled")), "{w:#?}");
        assert!(w.steps.iter().all(|s| s.state == "succeeded"), "{w:#?}");
        let verified =
            events.iter().filter(|e| e["workflow"] == w.id.as_str() && e["state"] == "secret_store_verified").count();
        assert_eq!(verified, 2, "one secret_store_verified event per region for workflow {}", w.id);
    }
    eprintln!(
        "scheduled rotations: {} in {:.1}s ({})",
        flows.len(),
        t.elapsed().as_secs_f64(),
        flows
            .iter()
            .map(|w| format!("{} {}", w.id, w.created_at.clone().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let events = serde_json::to_string(&events).expect("json");
    assert!(passwords.iter().all(|p| !events.contains(p.as_str())), "a password in the controller's events");
    drop(run);
}

/// Controllers in two regions (`--store etcd --controller-per-region`; east-1
/// primary, west-1 standby): one `pgdr run --controller REGION` per region,
/// each serving its own region's proxy. West starts first (so its proxy is
/// bound), then east, which takes the lead (the primary's region). Three
/// rotations by the east leader: each reloads the verifiers of both
/// regions' proxies (east's in-process, west's through its admin API)
/// before the stores flip, so each exits 0 with west's store logging in
/// through west's proxy at once. (Before, only the leader's own proxy was
/// reloaded: the second rotation changes `app_b`, which west's proxy still
/// knew with its old verifier, and its login there was refused.)
#[tokio::test(flavor = "multi_thread")]
async fn with_a_controller_per_region_every_regions_proxy_reloads() {
    let builder =
        Sandbox::builder().etcd(true).controller_per_region(true).replicas_per_region(0).standbys_per_region(1);
    let sb = SandboxGuard::start_temp(builder, Path::new(PGDR)).await.expect("sandbox up");
    let cfg = Config::load(&sb.config).expect("the sandbox's config");
    let start = |region: &str| {
        let log = std::fs::File::create(sb.dir.join("logs").join(format!("run-{region}.log"))).expect("log");
        Run(Command::new(PGDR)
            .args(["run", "--controller", region, "--config"])
            .arg(&sb.config)
            .current_dir(&sb.dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("pgdr run"))
    };
    let api = pgdr_api::controller::ControllerClient::new_multi(
        &cfg.controller_addrs(),
        cfg.controller_client_token(Access::Operator).expect("operator token"),
        sb.http_tls(),
    )
    .expect("client")
    .with_timeout(Duration::from_secs(2));
    let _west = start("west");
    wait_view(&api, "the west controller to record the cluster", Duration::from_secs(60), |c| {
        c.primary.is_some() && c.epoch.0 > 0
    })
    .await;
    let _east = start("east");
    let west_log = sb.dir.join("logs").join("run-west.log");
    let t = Instant::now();
    while !std::fs::read_to_string(&west_log).is_ok_and(|l| l.contains("standing by: another controller leads")) {
        assert!(t.elapsed() < Duration::from_secs(60), "leadership did not move to east");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_view(&api, "the east controller to record the cluster", Duration::from_secs(60), |c| {
        c.primary.as_ref().is_some_and(|p| p.as_str() == "east-1") && c.workflow.is_none()
    })
    .await;
    let west_api =
        cfg.proxies.iter().find(|p| p.region.as_str() == "west").and_then(|p| p.api).expect("west's proxy API");
    let mut passwords = Vec::new();
    for version in 1..=3u64 {
        let r = rotate_now(&sb.config, &format!("rotation {version}")).await;
        let role = &r["roles"][0];
        assert_eq!(role["version"], version, "{r:#}");
        for region in ["east", "west"] {
            let v = stored(&sb.dir, region);
            assert_eq!(v.version, version, "{region}");
            pgdr_secrets::rotate::login(&v, None, sb.pg_tls())
                .await
                .unwrap_or_else(|e| panic!("rotation {version}: {region}'s secret through its proxy: {e}"));
            passwords.push(v.password);
        }
        let proxies = role["proxies"].as_array().cloned().unwrap_or_default();
        assert_eq!(proxies.len(), 2, "both regions' proxies reloaded: {r:#}");
        assert!(proxies.iter().all(|p| p["refreshed"] == true), "{r:#}");
        assert!(proxies.iter().any(|p| p["proxy"] == west_api.to_string()), "west's proxy through its API: {r:#}");
    }
    let events = serde_json::to_string(&api.events(None).await.expect("events")).expect("json");
    assert!(passwords.iter().all(|p| !events.contains(p.as_str())), "a password in the controller's events");
}

// ------------------------------------------------------------------ load

/// One attempt of a [`Load`] client: a write transaction through the
/// region's proxy with the secret its store held when the client (re)opened
/// its connection.
#[derive(Debug, Clone)]
struct Attempt {
    region: &'static str,
    /// `per-transaction` (log in for every transaction, like `pgbench -C`)
    /// or `session` (one connection kept while its secret is the store's
    /// current or previous one), or `sticky` (one connection kept until it
    /// fails, whatever the store holds: reported, not asserted).
    client: &'static str,
    /// The stored version the connection logged in with.
    version: u64,
    started: Instant,
    ended: Instant,
    /// The SQLSTATE and message when it failed.
    error: Option<(Option<String>, String)>,
}

impl Attempt {
    /// A login refused (SQLSTATE class 28: invalid authorization, wrong
    /// password) by the proxy or the server.
    fn refused(&self) -> bool {
        self.error.as_ref().is_some_and(|(code, _)| code.as_deref().is_some_and(|c| c.starts_with("28")))
    }
}

/// Applications of the walk: per region, a client that logs in for every
/// transaction and a client that keeps a session, both with the secret
/// their region's store holds (read again at every login, as an
/// application re-reads its secret), writing through the endpoint the
/// secret names (the region's proxy writer).
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Per region (east, west): the newest version a per-transaction client
    /// logged in and wrote with.
    progress: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Attempt>>>,
}

impl Load {
    fn start(dir: &Path, tls: Option<&pgdr_node::local::PgTls>) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let progress =
            std::sync::Arc::new([std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicU64::new(0)]);
        let mut tasks = Vec::new();
        for (i, region) in ["east", "west"].into_iter().enumerate() {
            for client in ["per-transaction", "session", "sticky"] {
                let (dir, tls, stop, progress) = (dir.to_owned(), tls.cloned(), stop.clone(), progress.clone());
                tasks.push(tokio::spawn(
                    async move { load_client(&dir, region, client, tls, &stop, &progress[i]).await },
                ));
            }
        }
        Load { stop, progress, tasks }
    }

    /// Waits until a client of every region wrote with `version`.
    async fn wait_version(&self, version: u64) {
        let t = Instant::now();
        while self.progress.iter().any(|p| p.load(std::sync::atomic::Ordering::Relaxed) < version) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the load's clients did not write with version {version}: {:?}",
                self.progress
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) -> Vec<Attempt> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("load client"));
        }
        all
    }
}

async fn load_login(
    v: &SecretValue,
    tls: Option<&pgdr_node::local::PgTls>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut c = tokio_postgres::Config::new();
    c.host(&v.host)
        .port(v.port)
        .user(&v.username)
        .password(&v.password)
        .dbname(&v.dbname)
        .application_name("walk-load")
        .connect_timeout(Duration::from_secs(5));
    pgdr_tls::pg::connect(&c, tls).await
}

fn sqlstate(e: &tokio_postgres::Error) -> (Option<String>, String) {
    (e.code().map(|c| c.code().to_owned()), pgdr_node::local::pg_detail(e))
}

async fn load_client(
    dir: &Path,
    region: &'static str,
    client: &'static str,
    tls: Option<pgdr_node::local::PgTls>,
    stop: &std::sync::atomic::AtomicBool,
    progress: &std::sync::atomic::AtomicU64,
) -> Vec<Attempt> {
    let mut out = Vec::new();
    let mut session: Option<(tokio_postgres::Client, u64)> = None;
    let insert = "INSERT INTO walk_load (region, client, version) VALUES ($1, $2, $3)";
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let started = Instant::now();
        // The store is written atomically (a rename): a read sees one version.
        let v = stored(dir, region);
        // A session is kept while its secret is current or previous: the
        // alternating strategy's promise ("connections opened with the
        // previous secret keep working until the next rotation").
        // (`sticky` keeps its session until an error: reported, not asserted.)
        if (client == "session" && session.as_ref().is_some_and(|(_, ver)| ver + 1 < v.version))
            || client == "per-transaction"
        {
            session = None;
        }
        let result = tokio::time::timeout(Duration::from_secs(15), async {
            if session.is_none() {
                session = Some((load_login(&v, tls.as_ref()).await.map_err(|e| sqlstate(&e))?, v.version));
            }
            let (c, ver) = session.as_ref().expect("a session");
            c.execute(insert, &[&region, &client, &(*ver as i64)]).await.map_err(|e| sqlstate(&e))?;
            Ok::<u64, (Option<String>, String)>(*ver)
        })
        .await
        .unwrap_or_else(|_| Err((None, "no answer within 15s".into())));
        let (version, error) = match result {
            Ok(ver) => (ver, None),
            Err(e) => {
                session = None;
                (v.version, Some(e))
            }
        };
        if error.is_none() && client == "per-transaction" {
            progress.fetch_max(version, std::sync::atomic::Ordering::Relaxed);
        }
        out.push(Attempt { region, client, version, started, ended: Instant::now(), error });
        tokio::time::sleep(Duration::from_millis(if out.last().is_some_and(|a| a.error.is_some()) { 100 } else { 20 }))
            .await;
    }
    out
}
