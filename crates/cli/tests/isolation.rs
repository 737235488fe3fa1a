//! Isolation between clusters watched by one controller (issue 20, item 4),
//! on `sandbox up --clusters 3` (c01..c03, a primary in east and a standby
//! in west each) with `pgdr run`:
//!
//! - c01 hangs: its primary (postmaster and every child) and its standby's
//!   agent are frozen with SIGSTOP, so its probes time out and any role
//!   change it tries waits on an agent that does not answer;
//! - meanwhile c02 loses its primary's host (the agent and the postmaster
//!   SIGKILLed) and must fail over to its standby while c01 still hangs;
//! - c03 is left alone: at every look during the faults it is healthy, on
//!   the same primary and epoch, and its canary probes kept succeeding.
//!
//! Each cluster has the drills' overlap checker (every node asked directly
//! every 50 ms to accept a write): never two writable servers at any
//! instant. Timings are printed, not asserted.
//!
//! And the clusters' first scheduled backups, all due at once when
//! `pgdr run` starts, take turns: with `max_concurrent_backups = 1` no two
//! backup workflows' lifetimes overlap, by the journal's own times.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Frozen, PGDR, Run, unix_ms, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgdr_api::controller::{ClusterView, ControllerClient};
use pgdr_config::{Access, Config};
use pgdr_drill::hosts::LocalHosts;
use pgdr_drill::scenario::{Hosts, children_of};
use pgdr_drill::writable::WritableProbe;
use pgdr_sandbox::{Sandbox, SandboxGuard};

/// The sum of the controller's successful canary probes of `cluster` (every
/// path), read from `/metrics` with the viewer token.
async fn ok_probes(http: &reqwest::Client, cfg: &Config, cluster: &str) -> f64 {
    let token = cfg.controller_client_token(Access::Viewer).expect("viewer token").expect("a token");
    let url = format!("https://{}/metrics", cfg.controller.listen);
    let text = http
        .get(&url)
        .bearer_auth(token.expose())
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let label = format!("cluster=\"{cluster}\"");
    text.lines()
        .filter(|l| l.starts_with("pgdr_probes_total{") && l.contains(&label) && l.contains("outcome=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The sandbox controller's API with the operator token.
fn operator_api(cfg: &Config, sb: &Sandbox) -> ControllerClient {
    ControllerClient::new_with(
        &cfg.controller.listen.to_string(),
        cfg.controller_client_token(Access::Operator).expect("operator token"),
        sb.http_tls(),
    )
    .expect("controller client")
    .with_timeout(Duration::from_secs(5))
}

/// Nodes of `cluster` that commit a write when asked directly.
async fn writable(sb: &Sandbox, cfg: &Config, cluster: &str) -> Vec<String> {
    let mut out = Vec::new();
    for n in &cfg.cluster(cluster).expect("cluster").nodes {
        let name = n.name.to_string();
        let q =
            "create table if not exists isolation_probe (at timestamptz); insert into isolation_probe values (now())";
        let primary = sb.sql(&name, "select (not pg_is_in_recovery())::text").await.ok();
        if primary.as_ref().and_then(|r| r.first()).is_some_and(|r| r[0].as_deref() == Some("true"))
            && sb.sql(&name, q).await.is_ok()
        {
            out.push(name);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_cluster_does_not_hold_up_another_clusters_failover_or_probes() {
    let t0 = Instant::now();
    let builder = Sandbox::builder().clusters(3).replicas_per_region(0).standbys_per_region(1);
    let sb = SandboxGuard::start_temp(builder, Path::new(PGDR)).await.expect("sandbox up");
    let cfg = Config::load(&sb.config).expect("sandbox config");
    let hosts = LocalHosts::new(&cfg, PathBuf::from(PGDR));
    let mut run = Run::start(&sb.dir, &sb.config, &[], "run.log");
    let api = operator_api(&cfg, &sb);
    let http = sb.http_tls().client(Duration::from_secs(5)).expect("http client");
    let clusters = ["c01", "c02", "c03"];

    let before: Vec<ClusterView> = wait_for("three healthy clusters", Duration::from_secs(120), || {
        run.assert_running();
        let api = &api;
        async move {
            let views = api.clusters().await.ok()?;
            let ready = views.len() == 3
                && views.iter().all(|v| v.primary.is_some() && v.epoch.0 > 0 && v.detection == "healthy")
                && views.iter().all(|v| v.nodes.iter().all(|n| n.reachable));
            ready.then_some(views)
        }
    })
    .await;
    let view = |name: &str| before.iter().find(|v| v.name.as_str() == name).expect("cluster view").clone();
    let primary_of = |name: &str| view(name).primary.expect("a primary").to_string();
    eprintln!("[isolation] sandbox and pgdr run ready in {:.1}s", t0.elapsed().as_secs_f64());

    let checkers: Vec<(&str, WritableProbe)> = clusters
        .iter()
        .map(|c| (*c, WritableProbe::start(cfg.cluster(c).expect("cluster"), cfg.tls.as_ref()).expect("checker")))
        .collect();
    let origin = unix_ms();
    // The checker's connections first: their server processes are children
    // of the postmaster frozen below.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // c01 hangs.
    let c01 = cfg.cluster("c01").expect("c01");
    let (c01_primary, c01_standby) = {
        let p = primary_of("c01");
        let s = c01.nodes.iter().find(|n| n.name.as_str() != p).expect("c01's standby").clone();
        (c01.node(&p).expect("node").clone(), s)
    };
    let pm = hosts.postmaster_pid(&c01_primary).expect("c01 primary's postmaster");
    let mut pids = vec![pm];
    pids.extend(children_of(pm));
    pids.push(hosts.agent_pid(&c01_standby).expect("c01 standby's agent"));
    let probes_before = ok_probes(&http, &cfg, "c03").await;
    let frozen = Frozen::stop(pids);
    let fault = Instant::now();
    eprintln!("[isolation] froze {}'s postgres and {}'s agent", c01_primary.name, c01_standby.name);

    // c02 loses its primary's host.
    let c02 = cfg.cluster("c02").expect("c02");
    let old = c02.node(&primary_of("c02")).expect("node").clone();
    for pid in [hosts.agent_pid(&old).expect("agent"), hosts.postmaster_pid(&old).expect("postmaster")] {
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("SIGKILL");
    }
    eprintln!("[isolation] killed {}'s agent and postmaster", old.name);

    // c02 fails over while c01 hangs; c03 is healthy at every look.
    let (c03_primary, c03_epoch) = (view("c03").primary, view("c03").epoch);
    let (mut looks, c01_seen) = (0u32, std::cell::RefCell::new(Vec::<String>::new()));
    let new = wait_for("c02 to fail over while c01 hangs", Duration::from_secs(90), || {
        run.assert_running();
        let (api, sb, cfg, old) = (&api, &sb, &cfg, old.name.to_string());
        looks += 1;
        let c01_seen = &c01_seen;
        let c03_primary = c03_primary.clone();
        async move {
            let views = api.clusters().await.ok()?;
            for v in &views {
                match v.name.as_str() {
                    "c03" => {
                        assert_eq!(v.detection, "healthy", "c03 was judged unhealthy during the others' faults: {v:?}");
                        assert_eq!((&v.primary, v.epoch), (&c03_primary, c03_epoch), "c03 changed roles: {v:?}");
                    }
                    "c01" => {
                        let s = format!("{} {:?}", v.detection, v.workflow);
                        let mut seen = c01_seen.borrow_mut();
                        if seen.last() != Some(&s) {
                            seen.push(s);
                        }
                    }
                    _ => {}
                }
            }
            let c02 = views.iter().find(|v| v.name.as_str() == "c02")?;
            let p = c02.primary.as_ref()?.to_string();
            (p != old && writable(sb, cfg, "c02").await == vec![p.clone()]).then_some(p)
        }
    })
    .await;
    let took = fault.elapsed();
    let probes_after = ok_probes(&http, &cfg, "c03").await;
    eprintln!(
        "[isolation] c02 failed over to {new} {:.1}s after the kill, c01 frozen all along; c03: {} ok probes in that time; c01 seen as {:?}",
        took.as_secs_f64(),
        probes_after - probes_before,
        c01_seen.borrow()
    );
    assert!(probes_after > probes_before, "c03 was not probed while c01 hung and c02 failed over");
    assert!(looks > 1, "c03 was looked at only once");

    // c01 thaws and settles to one writable primary.
    drop(frozen);
    let settled = wait_for("c01 to settle on one writable primary", Duration::from_secs(120), || {
        run.assert_running();
        let (sb, cfg) = (&sb, &cfg);
        async move {
            let w = writable(sb, cfg, "c01").await;
            (w.len() == 1).then(|| w[0].clone())
        }
    })
    .await;
    eprintln!("[isolation] c01 thawed; its writable primary is {settled}");
    let c03 = api.cluster("c03").await.expect("c03");
    assert_eq!((c03.primary, c03.epoch), (c03_primary, c03_epoch), "c03 changed roles");

    for (c, checker) in checkers {
        let timeline = checker.stop().await.analyse(origin);
        eprintln!("[isolation] {c}: {} checker rounds", timeline.probes);
        assert!(timeline.probes > 0, "{c}: the overlap checker asked nothing");
        assert_eq!(
            timeline.overlaps,
            vec![],
            "{c}: two servers accepted writes at once: {}",
            timeline.describe_overlaps()
        );
    }
    drop(run);
}

/// A backup workflow's lifetime from the journal: start and end, in ms
/// since the Unix epoch.
fn lifetime(w: &pgdr_api::controller::WorkflowView) -> (i128, i128) {
    let at = w.created_at.as_deref().expect("created_at");
    let start = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339")
        .unix_timestamp_nanos()
        / 1_000_000;
    (start, start + i128::from(w.duration_ms.expect("an ended workflow's duration")))
}

#[tokio::test(flavor = "multi_thread")]
async fn first_scheduled_backups_of_many_clusters_take_turns() {
    let builder = Sandbox::builder().clusters(3).replicas_per_region(0).standbys_per_region(1);
    let sb = SandboxGuard::start_temp(builder, Path::new(PGDR)).await.expect("sandbox up");
    let text = std::fs::read_to_string(&sb.config).expect("pgdr.toml");
    let anchor = "state_dir = \"state\"\n";
    assert!(text.contains(anchor), "unexpected sandbox config:\n{text}");
    let text = text.replacen(anchor, &format!("{anchor}max_concurrent_backups = 1\n"), 1);
    std::fs::write(&sb.config, text).expect("write pgdr.toml");
    let cfg = Config::load(&sb.config).expect("the edited config validates");
    assert_eq!(cfg.controller.max_concurrent_backups, 1);
    let mut run = Run::start(&sb.dir, &sb.config, &[], "run.log");
    let api = operator_api(&cfg, &sb);
    let t0 = Instant::now();
    let done = wait_for("a scheduled backup of each cluster", Duration::from_secs(240), || {
        run.assert_running();
        let api = &api;
        async move {
            let all = api.workflows().await.ok()?;
            let backups: Vec<_> = all.into_iter().filter(|w| w.kind == "backup").collect();
            for w in &backups {
                assert!(matches!(w.state.as_str(), "running" | "succeeded"), "a backup workflow {}: {w:?}", w.state);
            }
            let ended: Vec<_> = backups.iter().filter(|w| w.state == "succeeded").cloned().collect();
            let mut clusters: Vec<String> = ended.iter().map(|w| w.cluster.to_string()).collect();
            clusters.sort();
            clusters.dedup();
            (clusters == ["c01", "c02", "c03"]).then_some(ended)
        }
    })
    .await;
    let mut spans: Vec<(i128, i128, String)> =
        done.iter().map(|w| (lifetime(w).0, lifetime(w).1, format!("{} {}", w.cluster, w.id))).collect();
    spans.sort();
    for (a, b) in spans.iter().zip(spans.iter().skip(1)) {
        eprintln!("[backups] {} ran {} ms; {} started {} ms after it ended", a.2, a.1 - a.0, b.2, b.0 - a.1);
        assert!(a.1 <= b.0, "two scheduled backups ran at once: {} until {}, {} from {}", a.2, a.1, b.2, b.0);
    }
    assert!(
        run.log_has("scheduled backups wait for a slot"),
        "the cap never held a backup back (were they not due together?)"
    );
    eprintln!("[backups] three first backups, one at a time, in {:.1}s", t0.elapsed().as_secs_f64());
}
