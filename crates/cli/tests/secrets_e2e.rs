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
    let log = std::fs::File::create(sb.dir.join("logs").join("run.log")).expect("run log");
    let _run = Run(Command::new(PGDR)
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
    let viewer = cfg.controller_client_token(Access::Viewer).expect("token");
    let api =
        pgdr_api::controller::ControllerClient::new_with(&cfg.controller.listen.to_string(), viewer, sb.http_tls())
            .expect("client")
            .with_timeout(Duration::from_secs(5));
    let t = Instant::now();
    loop {
        if let Ok(c) = api.cluster("main").await
            && c.primary.is_some()
            && c.epoch.0 > 0
            && c.nodes.iter().filter(|n| n.role == pgdr_model::Role::Replica).count() == 2
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the controller did not record the cluster");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
        pgdr_secrets::rotate::login(&v, None).await.unwrap_or_else(|e| panic!("{region} through its proxy: {e}"));
        for n in sb.nodes() {
            pgdr_secrets::rotate::login(&v, Some((&n.host, n.port)))
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
    pgdr_secrets::rotate::login(&v2, None).await.expect("the new secret through the west proxy");
    pgdr_secrets::rotate::login(&v1, None).await.expect("the previous secret still logs in until the next rotation");

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
        pgdr_secrets::rotate::login(&v, None).await.unwrap_or_else(|e| panic!("{region} after the rerun: {e}"));
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
        while let Err(e) = pgdr_secrets::rotate::login(&v, None).await {
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
        pgdr_secrets::rotate::login(&v, None).await.unwrap_or_else(|e| panic!("{region} after the switchover: {e}"));
        passwords.push(v.password);
    }

    // 6. A `single` role: its own password changes in place; the previous
    // secret stops working, the stored one logs in everywhere.
    let mut text = std::fs::read_to_string(&sb.config).expect("config");
    text.push_str("\n[[clusters.secrets.roles]]\nname = \"batch\"\nstrategy = \"single\"\n");
    std::fs::write(&sb.config, text).expect("config");
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
            pgdr_secrets::rotate::login(&v, None).await.unwrap_or_else(|e| panic!("batch in {region}: {e}"));
            passwords.push(v.password.clone());
        }
        if let Some(old) = &previous {
            assert!(
                pgdr_secrets::rotate::login(old, None).await.is_err(),
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
