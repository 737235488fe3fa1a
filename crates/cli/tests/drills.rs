//! End-to-end drills on sandboxes of real PostgreSQL: `pgdr run`
//! (controller and proxies) as a child process and `pgdr drill` (the debug
//! binary) injecting the fault for real.
//!
//! - `region-partition` on a sandbox with `--wan-delay 40ms` whose west
//!   region holds half the nodes (east: primary + replica, west: two
//!   standbys): the east region is cut off (packets vanish), west-1 takes
//!   over, the drill heals and restores. Afterwards exactly one node is a
//!   writable primary, checked on every node directly; the report counts
//!   the acknowledged commits the new primary lacks (those of the clients
//!   stranded in the partitioned region included), id by id.
//!
//! Not here yet: `freeze-primary`. It passed twice, then failed once: a
//! backend not yet stopped acknowledged a write sent just after the
//! SIGSTOP, the drill took that for "writes are back" before any failover
//! and checked its ledger on the frozen old primary (a race in
//! `pgdr_drill::run`'s recovery wait, to fix there first).
//!
//! Asserts correctness only, never a timing: the measured numbers are
//! printed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgdr_api::controller::ControllerClient;
use pgdr_sandbox::{Sandbox, SandboxBuilder, SandboxGuard};
use serde_json::Value;

const PGDR: &str = env!("CARGO_BIN_EXE_pgdr");

/// `pgdr run` as a child process, killed (SIGKILL, by PID) and reaped on drop.
struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A sandbox with `pgdr run` on it. Fields drop in order: the controller
/// first (so it does not react to the teardown), then the sandbox.
struct Env {
    run: Run,
    sb: SandboxGuard,
    log: PathBuf,
    name: &'static str,
}

impl Drop for Env {
    /// On failure, the tail of the `pgdr run` log (the sandbox folder goes
    /// with the guard).
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(text) = std::fs::read_to_string(&self.log)
        {
            let lines: Vec<&str> = text.lines().filter(|l| !l.contains("DEBUG")).collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("[{}] pgdr run log (tail):\n{}", self.name, tail.join("\n"));
        }
    }
}

async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Env {
    async fn start(name: &'static str, builder: SandboxBuilder) -> Env {
        let t0 = Instant::now();
        let sb = SandboxGuard::start_temp(builder, Path::new(PGDR)).await.expect("sandbox up");
        let log = sb.dir.join("logs").join("run.log");
        let out = std::fs::File::create(&log).expect("run log");
        let err = out.try_clone().expect("run log");
        let child = Command::new(PGDR)
            .arg("run")
            .arg("--config")
            .arg(&sb.config)
            .current_dir(&sb.dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start pgdr run");
        let env = Env { run: Run(child), sb, log, name };
        let cfg = pgdr_config::Config::load(&env.sb.config).expect("sandbox config");
        let api = ControllerClient::new(&cfg.controller.listen.to_string(), None)
            .expect("controller client")
            .with_timeout(Duration::from_secs(5));
        wait_for("the controller to record a healthy cluster", Duration::from_secs(60), || async {
            api.cluster("main").await.ok().filter(|c| c.primary.is_some() && c.epoch.0 > 0 && c.detection == "healthy")
        })
        .await;
        eprintln!("[{name}] sandbox and pgdr run (PID {}) ready in {:.1}s", env.run.0.id(), t0.elapsed().as_secs_f64());
        env
    }

    /// `pgdr drill` with short phases; returns its report.json.
    async fn drill(&self, scenario: &str) -> Value {
        let report_dir = self.sb.dir.join("report");
        let (config, dir, scenario_arg) = (self.sb.config.clone(), report_dir.clone(), scenario.to_owned());
        let out = tokio::task::spawn_blocking(move || {
            Command::new(PGDR)
                .args(["drill", "--cluster", "main", "--scenario", &scenario_arg, "--warmup", "2s", "--settle", "2s"])
                .arg("--config")
                .arg(&config)
                .arg("--report")
                .arg(&dir)
                .output()
        })
        .await
        .expect("join")
        .expect("run pgdr drill");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("[{}] pgdr drill --scenario {scenario} ({}):\n{stdout}{stderr}", self.name, out.status);
        let text = std::fs::read_to_string(report_dir.join("report.json"))
            .unwrap_or_else(|e| panic!("no report.json ({e}); drill output:\n{stdout}\n{stderr}"));
        serde_json::from_str(&text).expect("report.json is JSON")
    }

    /// Nodes that are not in recovery and commit a write, asked directly.
    async fn writable_primaries(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.sb.record.nodes {
            let name = n.name.to_string();
            let in_recovery = self.sb.sql(&name, "select pg_is_in_recovery()::text").await.ok();
            let not_in_recovery =
                in_recovery.as_ref().and_then(|r| r.first()).is_some_and(|r| r[0].as_deref() == Some("false"));
            let wrote = self
                .sb
                .sql(
                    &name,
                    "create table if not exists drill_test_probe (at timestamptz); insert into drill_test_probe values (now())",
                )
                .await
                .is_ok();
            eprintln!("[{}] {name}: in recovery {:?}, write committed {wrote}", self.name, in_recovery);
            if not_in_recovery && wrote {
                out.push(name);
            }
        }
        out
    }

    /// Exactly one writable primary (waiting for the restored topology to
    /// settle); returns it.
    async fn one_primary(&self) -> String {
        wait_for("exactly one writable primary", Duration::from_secs(60), || async {
            let p = self.writable_primaries().await;
            (p.len() == 1).then(|| p[0].clone())
        })
        .await
    }
}

/// The report's one run, with the fields issue 6 requires.
fn the_run<'a>(report: &'a Value, scenario: &str) -> &'a Value {
    let drills = report["drills"].as_array().expect("drills");
    assert_eq!(drills.len(), 1, "{report}");
    assert_eq!(drills[0]["scenario"], scenario);
    let runs = drills[0]["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{scenario}: the run completed (failed runs: {})", drills[0]["failed_runs"]);
    let run = &runs[0];
    for field in
        ["scenario", "rto_seconds", "detection_seconds", "client_errors", "acknowledged_commits", "lost_commits"]
    {
        assert!(run.get(field).is_some(), "{scenario}: run lacks {field}");
    }
    assert!(run["objectives"]["passed"].is_boolean(), "{scenario}: objectives.passed");
    assert!(run["acknowledged_commits"].as_u64().unwrap_or(0) > 0, "{scenario}: the workload committed");
    assert!(run["rto_seconds"].is_number(), "{scenario}: writes came back");
    assert!(run["detection_seconds"].is_number(), "{scenario}: detection observed");
    assert_ne!(run["old_primary"], run["new_primary"], "{scenario}: failed over");
    // Lost commits are listed id by id, each id once.
    let lost = run["lost"].as_array().expect("lost");
    let n = run["lost_commits"].as_u64().expect("lost_commits is a count");
    assert_eq!(lost.len() as u64, n, "{scenario}: lost_commits matches the ids listed");
    let mut ids: Vec<i64> = lost.iter().map(|l| l["id"].as_i64().expect("lost id")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len() as u64, n, "{scenario}: lost ids are distinct");
    eprintln!(
        "[{scenario}] measured: RTO {} s, detection {} s, client errors {}, acknowledged {}, lost {} (span {} s), {} → {}, steps: {}",
        run["rto_seconds"],
        run["detection_seconds"],
        run["client_errors"],
        run["acknowledged_commits"],
        n,
        run["lost_span_seconds"],
        run["old_primary"],
        run["new_primary"],
        run["steps"]
            .as_array()
            .map(|s| s
                .iter()
                .map(|s| format!(
                    "{} {:.2}s",
                    s["step"].as_str().unwrap_or("?"),
                    s["duration_seconds"].as_f64().unwrap_or(0.0)
                ))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    run
}

#[tokio::test(flavor = "multi_thread")]
async fn region_partition_under_wan_delay_leaves_one_writable_primary_and_counts_stranded_commits() {
    let env = Env::start(
        "region-partition",
        Sandbox::builder()
            .regions(["east", "west"])
            .standbys_per_region(2)
            .wan_delay(Duration::from_millis(40))
            .on_crash("failover"),
    )
    .await;
    let report = env.drill("region-partition").await;
    assert_eq!(report["wan_delay_ms"], 40, "the report records the WAN delay");
    let run = the_run(&report, "region-partition");
    assert!(
        run["new_primary"].as_str().is_some_and(|p| p.starts_with("west-")),
        "the reachable region took over: {}",
        run["new_primary"]
    );
    // The clients stranded in the partitioned region: their acknowledged
    // commits the new primary lacks are counted (in lost_commits, listed).
    let note = run["notes"]
        .as_array()
        .expect("notes")
        .iter()
        .filter_map(Value::as_str)
        .find(|n| n.contains("clients in the partitioned region:") && n.contains("commits acknowledged"))
        .unwrap_or_else(|| panic!("no count of the partitioned region's commits in {}", run["notes"]));
    let nums: Vec<u64> = note.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect();
    let (acked, missing) = (nums[0], nums[1]);
    assert!(acked > 0, "the stranded clients committed: {note}");
    assert!(missing <= acked, "{note}");
    assert!(
        missing <= run["lost_commits"].as_u64().unwrap_or(0),
        "the partitioned region's losses are in lost_commits: {note}"
    );
    eprintln!("[region-partition] {note}");
    // Healed and restored: exactly one node takes writes.
    let primary = env.one_primary().await;
    eprintln!("[region-partition] the one writable primary after the drill: {primary}");
}
