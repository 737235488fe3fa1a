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
//! - `host-loss`, `freeze-primary`, `replica-loss` and `failback` on the
//!   default sandbox (east: primary + replica, west: one standby).
//! - A switchover under load with a client writing straight to the old
//!   primary (`BEGIN READ WRITE`, reconnecting after errors, no proxy).
//!
//! Every drill runs the overlap checker (every node asked directly every
//! 50 ms to accept a `BEGIN READ WRITE` write): each test asserts that no
//! two servers accepted writes at the same instant, and that the drill
//! undid its fault.
//!
//! Asserts correctness only, never a timing: the measured numbers are
//! printed.

mod common;

use common::{PGDR, Run, wait_for};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pgdr_api::controller::ControllerClient;
use pgdr_sandbox::{Sandbox, SandboxBuilder, SandboxGuard};
use serde_json::Value;

/// A sandbox with `pgdr run` on it. Fields drop in order: the controller
/// first (so it does not react to the teardown), then the sandbox.
/// (On failure the `pgdr run` log's tail is printed by [`Run`].)
struct Env {
    run: Run,
    sb: SandboxGuard,
    name: &'static str,
}

impl Env {
    async fn start(name: &'static str, builder: SandboxBuilder) -> Env {
        let t0 = Instant::now();
        let sb = SandboxGuard::start_temp(builder, Path::new(PGDR)).await.expect("sandbox up");
        let run = Run::start(&sb.dir, &sb.config, &[], "run.log");
        let mut env = Env { run, sb, name };
        let cfg = pgdr_config::Config::load(&env.sb.config).expect("sandbox config");
        let api = ControllerClient::new_with(
            &cfg.controller.listen.to_string(),
            cfg.controller_client_token(pgdr_config::Access::Operator).expect("operator token"),
            env.sb.http_tls(),
        )
        .expect("controller client")
        .with_timeout(Duration::from_secs(5));
        // Gives up at once, with the reason in the run log, when `pgdr run`
        // exited (a port it was to bind taken, a config it refused).
        let limit = Duration::from_secs(60);
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = env.run.child.try_wait() {
                panic!("pgdr run exited ({status}) before the controller recorded a healthy cluster");
            }
            let seen = api.cluster("main").await;
            if seen.as_ref().is_ok_and(|c| c.primary.is_some() && c.epoch.0 > 0 && c.detection == "healthy") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for the controller to record a healthy cluster after {limit:?}; last answer: {:?}",
                seen.map(|c| (c.primary, c.epoch, c.detection))
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "[{name}] sandbox and pgdr run (PID {}) ready in {:.1}s",
            env.run.child.id(),
            t0.elapsed().as_secs_f64()
        );
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

    /// Waits until every node but `primary` streams from it (the primary's
    /// `pg_stat_replication` lists each by name, streaming).
    async fn all_follow(&self, primary: &str, nodes: usize) {
        wait_for("every other node to stream from the primary", Duration::from_secs(90), || async {
            let rows = self
                .sb
                .sql(primary, "select application_name from pg_stat_replication where state = 'streaming'")
                .await
                .ok()?;
            (rows.len() == nodes - 1).then_some(())
        })
        .await
    }
}

/// The report's one run, with the fields issue 6 requires, and the safety
/// issue 14 requires: never two writable servers at any instant.
fn the_run<'a>(report: &'a Value, scenario: &str, fails_over: bool) -> &'a Value {
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
    if fails_over {
        assert_ne!(run["old_primary"], run["new_primary"], "{scenario}: failed over");
    } else {
        assert_eq!(run["old_primary"], run["new_primary"], "{scenario}: the primary stayed");
    }
    // The overlap checker ran through the whole run and saw one writer at most.
    let writable = &run["writable"];
    assert!(writable["probes"].as_u64().unwrap_or(0) > 0, "{scenario}: the overlap checker probed");
    for lane in writable["lanes"].as_array().expect("lanes") {
        let segs: Vec<String> = lane["segments"]
            .as_array()
            .expect("segments")
            .iter()
            .map(|s| {
                format!(
                    "{} {:.2}..{:.2}s",
                    s["answer"].as_str().unwrap_or("?"),
                    (s["from_ms"].as_f64().unwrap_or(0.0) - run["fault_ms"].as_f64().unwrap_or(0.0)) / 1000.0,
                    (s["until_ms"].as_f64().unwrap_or(0.0) - run["fault_ms"].as_f64().unwrap_or(0.0)) / 1000.0
                )
            })
            .collect();
        eprintln!("[{scenario}] {}: {}", lane["node"].as_str().unwrap_or("?"), segs.join(", "));
    }
    assert_eq!(writable["overlaps"], Value::Array(vec![]), "{scenario}: two servers accepted writes at once");
    assert_eq!(run["objectives"]["single_writer"], true, "{scenario}: {}", run["notes"]);
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
    let run = the_run(&report, "region-partition", true);
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
    // Every commit the stranded clients saw acknowledged came before the
    // promotion started: the old primary had stopped taking writes.
    let stranded = &run["stranded"];
    eprintln!("[region-partition] stranded clients: {stranded}");
    assert_eq!(
        stranded["last_ack_before_promotion"], true,
        "the partitioned region's last acknowledged commit came before the promotion: {stranded}"
    );
    // Healed and restored: exactly one node takes writes.
    let primary = env.one_primary().await;
    eprintln!("[region-partition] the one writable primary after the drill: {primary}");
    // The partitioned region's nodes, cut off during the failover, follow
    // the primary again once reachable (rejoined, not left on the old one).
    env.all_follow(&primary, 4).await;
}

/// The fault was undone: the run says what it restored.
fn restored(run: &Value, what: &str) {
    let r = run["restored"].as_array().expect("restored");
    assert!(r.iter().filter_map(Value::as_str).any(|l| l.contains(what)), "nothing restored says {what:?}: {r:?}");
}

/// The primary's postmaster and agent killed: failover after the lease.
#[tokio::test(flavor = "multi_thread")]
async fn host_loss_drill_fails_over_with_never_two_writable_servers() {
    let env = Env::start("host-loss", Sandbox::builder()).await;
    let report = env.drill("host-loss").await;
    let run = the_run(&report, "host-loss", true);
    assert!(run["detection_seconds"].is_number(), "detection observed");
    restored(run, "agent of");
    let primary = env.one_primary().await;
    eprintln!("[host-loss] the one writable primary after the drill: {primary}");
}

/// SIGSTOP of the primary and its children: a write acknowledged just
/// after the SIGSTOP is not recovery (the drill waits for a commit by
/// another server instance), and the frozen server is continued.
#[tokio::test(flavor = "multi_thread")]
async fn freeze_primary_drill_fails_over_and_continues_the_frozen_server() {
    let env = Env::start("freeze-primary", Sandbox::builder()).await;
    let report = env.drill("freeze-primary").await;
    let run = the_run(&report, "freeze-primary", true);
    assert!(run["detection_seconds"].is_number(), "detection observed");
    let outage = &run["writes_unavailable"];
    assert!(outage["until_ms"].as_f64() > outage["from_ms"].as_f64(), "an outage was measured: {outage}");
    restored(run, "SIGCONT");
    let primary = env.one_primary().await;
    eprintln!("[freeze-primary] the one writable primary after the drill (switched back home): {primary}");
}

/// A replica's postmaster killed: writes go on, nothing is promoted, the
/// replica is started again.
#[tokio::test(flavor = "multi_thread")]
async fn replica_loss_drill_keeps_the_primary_and_restarts_the_replica() {
    let env = Env::start("replica-loss", Sandbox::builder()).await;
    let report = env.drill("replica-loss").await;
    let run = the_run(&report, "replica-loss", false);
    assert_eq!(run["lost_commits"], 0, "losing a replica loses no commit");
    assert_eq!(run["epoch_before"], run["epoch_after"], "nothing was promoted");
    restored(run, "PostgreSQL of");
    assert_eq!(Value::from(env.one_primary().await), run["old_primary"]);
}

/// Switchover to the other region (not measured), then the failback home:
/// planned, so no lost commit and no client error.
#[tokio::test(flavor = "multi_thread")]
async fn failback_drill_comes_home_without_loss() {
    let env = Env::start("failback", Sandbox::builder()).await;
    let report = env.drill("failback").await;
    let run = the_run(&report, "failback", true);
    assert!(
        run["new_primary"].as_str().is_some_and(|p| p.starts_with("east-")),
        "back in the home region: {}",
        run["new_primary"]
    );
    assert_eq!(run["lost_commits"], 0, "a failback loses no acknowledged commit");
    assert_eq!(run["client_errors"], 0, "a failback shows clients no error: {}", run["write_errors_by_kind"]);
    // The failback may pick either east node; when it is not the original
    // primary, the drill's restore switches over to it afterwards. Either
    // way exactly one server takes writes, in the home region.
    let primary = env.one_primary().await;
    assert!(primary.starts_with("east-"), "one writable primary, in the home region: {primary}");
}

/// A planned switchover under load while one client writes straight to the
/// old primary (`BEGIN READ WRITE`, which a read-only setting does not
/// stop; reconnecting after every error; no proxy) and two write through
/// the proxy: none of their acknowledged commits is lost, no two servers
/// take writes at once, and one writable server is left.
#[tokio::test(flavor = "multi_thread")]
async fn switchover_under_load_keeps_a_direct_writers_commits() {
    use pgdr_drill::workload::{Workload, WorkloadSpec};
    let env = Env::start("switchover-direct", Sandbox::builder()).await;
    let cfg = pgdr_config::Config::load(&env.sb.config).expect("config");
    let cluster = cfg.cluster("main").expect("cluster main").clone();
    let old = env.one_primary().await;
    let old_node = cluster.node(&old).expect("old primary node").clone();
    let target = cluster
        .nodes
        .iter()
        .find(|n| n.region == old_node.region && n.name != old_node.name)
        .expect("a replica in the primary's region")
        .name
        .to_string();
    let password = env.sb.password().to_owned();
    let tls = env.sb.tls_params();
    let conninfo = |host: &str, port: u16| {
        format!("host={host} port={port} user=postgres dbname=postgres password={password} connect_timeout=2{tls}")
    };
    let direct_conninfo = conninfo(&old_node.host, old_node.port);
    let setup = pgdr_drill::observer::connect(&direct_conninfo, &old, Duration::from_secs(10)).await.expect("connect");
    pgdr_drill::workload::prepare(&setup).await.expect("ledger");
    drop(setup);
    let proxy = cfg.proxies.iter().find(|p| p.region == old_node.region).expect("a proxy in the primary's region");

    let probe = pgdr_drill::writable::WritableProbe::start(&cluster, cfg.tls.as_ref()).expect("overlap checker");
    let mut direct_spec = WorkloadSpec::new(direct_conninfo);
    direct_spec.writers = 1;
    direct_spec.readers = 0;
    direct_spec.begin_read_write = true;
    direct_spec.connect_timeout = Duration::from_secs(2);
    direct_spec.statement_timeout = Duration::from_secs(3);
    direct_spec.pace = Duration::from_millis(5);
    let direct = Workload::start(direct_spec);
    let mut proxied_spec = WorkloadSpec::new(conninfo(&proxy.writer.ip().to_string(), proxy.writer.port()));
    proxied_spec.writers = 2;
    proxied_spec.readers = 0;
    proxied_spec.pace = Duration::from_millis(5);
    let proxied = Workload::start(proxied_spec);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let requested_ms = direct.now_ms();
    let (config, to) = (env.sb.config.clone(), target.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(PGDR)
            .args(["switchover", "--cluster", "main", "--to", &to, "--yes", "--json", "--config"])
            .arg(&config)
            .output()
            .expect("pgdr switchover")
    })
    .await
    .expect("join");
    let done_ms = direct.now_ms();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let direct_record = direct.stop().await;
    let proxied_record = proxied.stop().await;
    let log = probe.stop().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "switchover failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));

    let primary = env.one_primary().await;
    assert_eq!(primary, target, "the switchover's target is the one writable primary");
    let pnode = cluster.node(&primary).expect("new primary");
    let client = pgdr_drill::observer::connect(&conninfo(&pnode.host, pnode.port), &primary, Duration::from_secs(10))
        .await
        .expect("connect to the new primary");
    let direct_loss =
        pgdr_drill::checker::check_ledger(&client, &direct_record, Some(requested_ms)).await.expect("direct ledger");
    let offset = proxied_record.started_unix_ms - direct_record.started_unix_ms;
    let proxied_loss =
        pgdr_drill::checker::check_ledger(&client, &proxied_record, Some(requested_ms - offset)).await.expect("ledger");
    let timeline = log.analyse(direct_record.started_unix_ms);
    for lane in &timeline.lanes {
        let segs: Vec<String> = lane
            .segments
            .iter()
            .map(|s| {
                format!(
                    "{} {:.2}..{:.2}s",
                    s.answer.label(),
                    (s.from_ms - requested_ms) / 1000.0,
                    (s.until_ms - requested_ms) / 1000.0
                )
            })
            .collect();
        eprintln!("[switchover-direct] {}: {}", lane.node, segs.join(", "));
    }
    let after: Vec<&pgdr_drill::workload::Ack> =
        direct_record.acks.iter().filter(|a| a.at_ms >= requested_ms).collect();
    let (direct_errors, _) = pgdr_drill::checker::errors_by_kind(&direct_record);
    let pause = pgdr_drill::checker::rto_pause(&proxied_record, requested_ms - offset, done_ms - offset);
    eprintln!(
        "[switchover-direct] {old} -> {primary} in {:.2}s; direct client: {} acknowledged ({} after the request, the last {:.3}s after it), {} lost, errors {direct_errors:?}; proxied clients: {} acknowledged, {} lost, {} errors, longest write pause {:?}s",
        (done_ms - requested_ms) / 1000.0,
        direct_loss.acknowledged_commits,
        after.len(),
        after.iter().map(|a| a.at_ms).fold(requested_ms, f64::max) / 1000.0 - requested_ms / 1000.0,
        direct_loss.lost_commits(),
        proxied_loss.acknowledged_commits,
        proxied_loss.lost_commits(),
        proxied_record.write_failures().count(),
        pause
    );
    assert!(direct_loss.acknowledged_commits > 0, "the direct client committed");
    assert_eq!(direct_loss.lost, vec![], "the direct client's acknowledged commits are all on the new primary");
    assert_eq!(proxied_loss.lost, vec![], "the proxied clients' acknowledged commits are all on the new primary");
    assert_eq!(timeline.overlaps, vec![], "two servers accepted writes at once: {}", timeline.describe_overlaps());
}
