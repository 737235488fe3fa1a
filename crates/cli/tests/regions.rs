//! Controllers in two regions, end to end: `pgdr sandbox up --store etcd
//! --controller-per-region --standbys-per-region 2` (east: primary and a
//! replica, west: two standbys; etcd members in east, west and a witness
//! place), one `pgdr run --controller REGION` per region (each its region's
//! controller and proxy), faults by real signals to recorded PIDs.
//!
//! One sandbox. The west controller starts first and leads; once east's
//! stands by, leadership moves to east, the primary's region, by itself
//! (a leader in the other region would leave the primary without renewals
//! if that region were lost). Then, in a row:
//!
//! 0. The witness place (its etcd member) goes dark for three lease TTLs:
//!    nothing changes.
//! 1. The west region goes dark (SIGSTOP to its agents, its PostgreSQL
//!    servers and their children, its `pgdr run`, its etcd member: every
//!    connection stays open and nothing answers) for three lease TTLs, then
//!    comes back. Nothing may change: the east controller keeps leading,
//!    the same primary takes writes throughout, no workflow starts.
//! 2. A switchover inside east (east-1 to east-2) while a client writes
//!    through the west proxy, which the standing-by west `pgdr run`
//!    serves: the leader pauses and resumes that proxy with its own, so
//!    the client waits through the change and sees no error.
//! 3. The east region is lost (SIGKILL to the same parts of east, the
//!    leading controller and the primary among them). The west controller
//!    takes leadership and fails over to a west node by itself; writes
//!    work through the west proxy.
//!
//! The drills' overlap checker (`pgdr_drill::writable`: every node asked
//! directly every 50 ms to accept a `BEGIN READ WRITE` write) runs from
//! before the first fault to the end: never two writable servers at any
//! instant. Timings are printed, not asserted.

mod common;

use common::{Frozen, PGDR, Run, unix_ms, wait_for};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgdr_api::controller::{ClusterView, ControllerClient};
use pgdr_config::Config;
use pgdr_drill::hosts::LocalHosts;
use pgdr_drill::scenario::{Hosts, children_of};
use pgdr_drill::writable::{Answer, WritableProbe};
use pgdr_sandbox::{Sandbox, SandboxGuard};

/// One region's `pgdr run` (`--controller REGION`), its log `logs/run-REGION.log`.
fn run_in(sb: &Sandbox, controller: &str) -> Run {
    Run::start(&sb.dir, &sb.config, &["--controller", controller], &format!("run-{controller}.log"))
}

/// A client of the sandbox's etcd as the controllers see it.
async fn etcd_store(cfg: &Config) -> pgdr_store::EtcdStore {
    let pgdr_config::StoreKind::Etcd(e) = &cfg.controller.store else { panic!("not an etcd sandbox") };
    let mut o = pgdr_store::EtcdOptions::new(e.endpoints.clone());
    o.prefix = e.prefix.clone();
    if let (Some(ca), Some(id)) = (&e.ca, &e.identity) {
        let read = |p: &Path| std::fs::read(p).expect("read a certificate");
        o.tls = Some(pgdr_store::EtcdTls { ca_pem: read(ca), identity: Some((read(&id.cert), read(&id.key))) });
    }
    pgdr_store::EtcdStore::connect(o).await.expect("connect to the sandbox's etcd")
}

/// The controller leader key's holder and term; `None` while the key is
/// vacant (between a resignation or a handoff and the next campaign).
async fn leader_now(etcd: &pgdr_store::EtcdStore) -> Option<(String, u64)> {
    let v =
        pgdr_store::StateStore::get(etcd, pgdr_store::keys::CONTROLLER_LEADER).await.expect("read the leader key")?;
    let info: serde_json::Value = serde_json::from_slice(&v.value).expect("json");
    Some((info["holder"].as_str().unwrap_or_default().to_owned(), info["term"].as_u64().unwrap_or_default()))
}

/// The controller leader key's holder and term, once the key is held.
async fn leader(etcd: &pgdr_store::EtcdStore) -> (String, u64) {
    wait_for("a controller to hold the leader key", Duration::from_secs(30), || leader_now(etcd)).await
}

/// The conninfo of `region`'s proxy writer (or reader) endpoint, and its
/// name for messages.
fn endpoint(cfg: &Config, sb: &Sandbox, region: &str, reader: bool, connect_timeout: u32) -> (String, String) {
    let proxy = cfg.proxies.iter().find(|p| p.region.as_str() == region).expect("the region's proxy");
    let (addr, kind) =
        if reader { (proxy.reader.expect("a reader endpoint"), "reader") } else { (proxy.writer, "writer") };
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres password={} connect_timeout={connect_timeout}{}",
        addr.port(),
        sb.password(),
        sb.tls_params()
    );
    (conninfo, format!("the {region} {kind} endpoint"))
}

/// Commits one write through `region`'s proxy writer endpoint.
async fn write_through(cfg: &Config, sb: &Sandbox, region: &str) -> Option<()> {
    let (writer, what) = endpoint(cfg, sb, region, false, 2);
    let c = pgdr_drill::observer::connect(&writer, &what, Duration::from_secs(2)).await.ok()?;
    c.batch_execute("create table if not exists region_loss (at timestamptz); insert into region_loss values (now())")
        .await
        .ok()
}

/// Whether a read through `region`'s proxy reader endpoint landed on a
/// replica (`None`: no answer).
async fn read_through(cfg: &Config, sb: &Sandbox, region: &str) -> Option<bool> {
    let (reader, what) = endpoint(cfg, sb, region, true, 2);
    let c = pgdr_drill::observer::connect(&reader, &what, Duration::from_secs(2)).await.ok()?;
    let row = c.query_one("select pg_is_in_recovery()", &[]).await.ok()?;
    row.try_get::<_, bool>(0).ok()
}

/// Writes through `region`'s proxy writer endpoint, one at a time on one
/// session (a new one after a lost connection, the loss counted as an
/// error), until stopped.
struct WriteLoad {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Load>,
}

#[derive(Debug, Default)]
struct Load {
    commits: u64,
    longest_ms: u128,
    errors: Vec<String>,
}

impl WriteLoad {
    async fn start(cfg: &Config, sb: &Sandbox, region: &str) -> WriteLoad {
        let (writer, what) = endpoint(cfg, sb, region, false, 10);
        let first = pgdr_drill::observer::connect(&writer, &what, Duration::from_secs(10)).await.expect("connect");
        first.batch_execute("create table if not exists region_switch (at timestamptz)").await.expect("create");
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut load = Load::default();
            let mut client = Some(first);
            let t0 = Instant::now();
            while !*stopped.borrow() {
                let c = match client.take() {
                    Some(c) => c,
                    None => match pgdr_drill::observer::connect(&writer, &what, Duration::from_secs(10)).await {
                        Ok(c) => c,
                        Err(e) => {
                            load.errors.push(format!("connect: {e} ({} ms after the start)", t0.elapsed().as_millis()));
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    },
                };
                let t = Instant::now();
                match c.execute("insert into region_switch values (now())", &[]).await {
                    Ok(_) => {
                        load.commits += 1;
                        load.longest_ms = load.longest_ms.max(t.elapsed().as_millis());
                        client = Some(c);
                    }
                    Err(e) => {
                        let what = match e.as_db_error() {
                            Some(d) => format!("{}: {}", d.code().code(), d.message()),
                            None => e.to_string(),
                        };
                        load.errors.push(format!("{what} ({} ms after the start)", t0.elapsed().as_millis()));
                        if !c.is_closed() {
                            client = Some(c);
                        }
                    }
                }
                tokio::select! {
                    _ = stopped.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            load
        });
        WriteLoad { stop, task }
    }

    async fn stop(self) -> Load {
        let _ = self.stop.send(true);
        self.task.await.expect("the write load's task")
    }
}

/// Every agent, postmaster and PostgreSQL child process of `region`.
fn region_processes(cfg: &Config, hosts: &LocalHosts, region: &str) -> (Vec<i32>, Vec<i32>) {
    let cluster = cfg.cluster("main").expect("cluster main");
    let (mut agents, mut postgres) = (Vec::new(), Vec::new());
    for n in cluster.nodes.iter().filter(|n| n.region.as_str() == region) {
        agents.push(hosts.agent_pid(n).unwrap_or_else(|| panic!("agent PID of {}", n.name)));
        let pm = hosts.postmaster_pid(n).unwrap_or_else(|| panic!("postmaster PID of {}", n.name));
        postgres.push(pm);
        postgres.extend(children_of(pm));
    }
    (agents, postgres)
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_either_region_leaves_one_writable_primary_and_fails_over_by_itself() {
    let name = "regions";
    let t0 = Instant::now();
    let builder = Sandbox::builder().etcd(true).controller_per_region(true).standbys_per_region(2);
    let sb = SandboxGuard::start_temp(builder, Path::new(PGDR)).await.expect("sandbox up");
    // The tier's RPO, 10 s instead of the sandbox's 5 s, before the
    // controllers start: after the loss of the leader's region the next
    // leader ages the handed-over lags by the time since they were
    // measured, here the record's age (up to a second and a half), the
    // dead leader's lease (3 s) and etcd's election when the lost member
    // led it: 3-6 s seen, which 5 s would refuse (rightly: it then asks for
    // `--allow-data-loss`) in some runs. See docs/etcd.md (Handover).
    let text = std::fs::read_to_string(&sb.config).expect("read the sandbox config");
    assert!(text.contains("rpo = \"5s\""), "the sandbox's tier RPO changed: adjust this test");
    std::fs::write(&sb.config, text.replace("rpo = \"5s\"", "rpo = \"10s\"")).expect("write the sandbox config");
    let cfg = Config::load(&sb.config).expect("sandbox config");
    let names: Vec<&str> = cfg.controller.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["east", "west"], "a controller per region");
    let etcd_regions: Vec<Option<String>> =
        sb.record.etcd.as_ref().expect("etcd").members.iter().map(|m| m.region.clone()).collect();
    assert_eq!(etcd_regions, [Some("east".into()), Some("west".into()), Some("witness".into())]);
    let hosts = LocalHosts::new(&cfg, PathBuf::from(PGDR));
    let api = ControllerClient::new_multi(
        &cfg.controller_addrs(),
        cfg.controller_client_token(pgdr_config::Access::Operator).expect("operator token"),
        sb.http_tls(),
    )
    .expect("controller client")
    .with_timeout(Duration::from_secs(2));
    let cluster = || async { api.cluster("main").await.ok() };

    // West first: it leads while the primary is in east, the case where
    // losing west would leave east's primary without renewals. Once east's
    // controller stands by, the leader hands leadership over to it.
    let west = run_in(&sb, "west");
    let healthy = |c: &ClusterView| c.primary.is_some() && c.epoch.0 > 0 && c.detection == "healthy";
    let before = wait_for("the west controller to record a healthy cluster", Duration::from_secs(60), || async {
        cluster().await.filter(|c| healthy(c))
    })
    .await;
    assert_eq!(before.primary.as_ref().map(|p| p.as_str()), Some("east-1"));
    let etcd = etcd_store(&cfg).await;
    let (first, first_term) = leader(&etcd).await;
    assert!(first.contains("region west"), "west leads first: {first}");
    let checker = WritableProbe::start(cfg.cluster("main").expect("main"), cfg.tls.as_ref()).expect("overlap checker");
    let origin = unix_ms();
    // Let the checker open its connections first: their server processes
    // are children of the postmasters, frozen with them below.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let handover_from = unix_ms();
    let east = run_in(&sb, "east");
    let handed = Instant::now();
    // East's proxy serves before its controller leads: on the routes the
    // store names (the handover waits for two lease TTLs of quiet first).
    // Its reader endpoint lands on a replica the leader saw replaying.
    wait_for("a write and a replica read through the east proxy while west leads", Duration::from_secs(30), || async {
        let wrote = write_through(&cfg, &sb, "east").await;
        let on_replica = read_through(&cfg, &sb, "east").await;
        let (holder, _) = leader(&etcd).await;
        assert!(
            holder.contains("region west"),
            "east led ({holder}) before its proxy served: {wrote:?} {on_replica:?}"
        );
        (wrote.is_some() && on_replica == Some(true)).then_some(())
    })
    .await;
    eprintln!(
        "[{name}] a write committed through the east proxy {:.1}s after east's pgdr run started, west leading",
        handed.elapsed().as_secs_f64()
    );
    let (holder, term) = wait_for("leadership to move to the primary's region", Duration::from_secs(60), || async {
        leader_now(&etcd).await.filter(|(h, _)| h.contains("region east"))
    })
    .await;
    assert!(term > first_term, "a new term: {term} after {first_term}");
    eprintln!(
        "[{name}] leadership handed from west to east {:.1}s after the east controller started",
        handed.elapsed().as_secs_f64()
    );
    wait_for("the west controller to stand by again", Duration::from_secs(30), || async {
        west.log_has("standing by: another controller leads").then_some(())
    })
    .await;
    let handover = wait_for("the handover event", Duration::from_secs(30), || async {
        api.events(None).await.ok()?.into_iter().find(|e| e["state"] == "leadership_handed_over")
    })
    .await;
    eprintln!("[{name}] event: {}", handover["message"]);
    let healthy_again =
        wait_for("the east controller to record a healthy cluster", Duration::from_secs(60), || async {
            cluster().await.filter(|c| healthy(c))
        })
        .await;
    assert_eq!(
        (healthy_again.epoch, healthy_again.primary.clone()),
        (before.epoch, before.primary.clone()),
        "no role change"
    );
    let handover_until = unix_ms();
    eprintln!(
        "[{name}] sandbox, two controllers ready in {:.1}s; leader {holder} (term {term})",
        t0.elapsed().as_secs_f64()
    );

    let workflows_before = api.workflows().await.expect("workflows").len();

    let dark = cfg.timing.lease_ttl * 3;
    // 0. The witness place (its etcd member alone) goes dark for three
    // lease TTLs first (just before the loss of east it would slow etcd's
    // next election, and with it the failover).
    let m3 = sb.record.etcd.as_ref().and_then(|e| e.members[2].pid).expect("etcd m3 PID");
    let witness_from = unix_ms();
    let frozen = Frozen::stop(vec![m3]);
    tokio::time::sleep(dark).await;
    let during = cluster().await.expect("the controller answers while the witness is dark");
    let witness_until = unix_ms();
    drop(frozen);
    eprintln!("[{name}] witness etcd member dark for {dark:?}, back");
    assert_eq!((during.epoch, during.primary.clone()), (before.epoch, before.primary.clone()), "no role change");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. West goes dark as long.
    let (agents, postgres) = region_processes(&cfg, &hosts, "west");
    let m2 = sb.record.etcd.as_ref().and_then(|e| e.members[1].pid).expect("etcd m2 PID");
    let mut pids = agents.clone();
    pids.extend(&postgres);
    pids.extend([m2, west.pid()]);
    let dark_from = unix_ms();
    let frozen = Frozen::stop(pids);
    eprintln!("[{name}] west dark: SIGSTOP to {} processes (agents, PostgreSQL, pgdr run, etcd m2)", frozen.0.len());
    tokio::time::sleep(dark).await;
    let during = cluster().await.expect("the east controller answers while west is dark");
    let dark_until = unix_ms();
    drop(frozen);
    eprintln!("[{name}] west back (SIGCONT) after {dark:?}");
    assert_eq!((during.epoch, during.primary.clone()), (before.epoch, before.primary.clone()), "no role change");
    let after_dark = wait_for("the cluster healthy again", Duration::from_secs(60), || async {
        cluster().await.filter(|c| healthy(c) && c.nodes.iter().all(|n| n.reachable))
    })
    .await;
    assert_eq!((after_dark.epoch, after_dark.primary.clone()), (before.epoch, before.primary.clone()));
    assert_eq!(api.workflows().await.expect("workflows").len(), workflows_before, "no workflow started");
    // Leadership should stay in east, but is not a safety property: once,
    // in a full CI run on two loaded cores, the east controller's etcd
    // lease lapsed while m2 was frozen and west led after SIGCONT (term 2)
    // with no role change. Said, not failed; step 2 then runs with west
    // leading. See docs/etcd.md (leadership does not follow the primary).
    let now = leader(&etcd).await;
    if now != (holder.clone(), term) {
        eprintln!("[{name}] NOTE: leadership moved while west was dark: {} (term {}), was {holder}", now.0, now.1);
    }

    // 2. A switchover inside east (east-1 to east-2) while a client writes
    // through the *west* proxy, which the standing-by west `pgdr run`
    // serves: the leader pauses it with its own, so that client waits
    // through the change and sees no error.
    let writes = WriteLoad::start(&cfg, &sb, "west").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let switch_from = unix_ms();
    let req = pgdr_api::controller::RoleChangeRequest {
        to: Some("east-2".into()),
        requested_by: Some("regions test".into()),
        ..Default::default()
    };
    let started = api.role_change("main", "switchover", &req).await.expect("start the switchover");
    let id = started.id.expect("a workflow id");
    let switched = wait_for("the switchover to finish", Duration::from_secs(60), || async {
        api.workflows().await.ok()?.into_iter().find(|w| w.id == id && w.state != "running")
    })
    .await;
    assert_eq!(switched.state, "succeeded", "{switched:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let load = writes.stop().await;
    let switch_until = unix_ms();
    eprintln!(
        "[{name}] switchover east-1 -> east-2 in {:?} ms; through the west proxy: {} commits, longest wait {} ms, errors {:?}",
        switched.duration_ms, load.commits, load.longest_ms, load.errors
    );
    assert!(load.commits > 0, "the west client wrote");
    assert_eq!(load.errors, Vec::<String>::new(), "the west proxy's client saw errors through the switchover");
    assert!(west.log_has("writer endpoint paused"), "the leader paused the west proxy");
    // Both regions' proxies answered the pause and the resume.
    let steps = api.workflow(&id).await.expect("the switchover's steps").steps;
    let output = |step: &str| steps.iter().find(|s| s.name == step).and_then(|s| s.output.clone()).unwrap_or_default();
    assert_eq!(output("pause_proxy")["paused"], true, "{}", output("pause_proxy"));
    assert_eq!(output("resume_proxy")["resumed"], true, "{}", output("resume_proxy"));
    // Settled before the next fault, as before the first: every node
    // reachable, every replica's lag measured and small, and the leader's
    // handover record (written at most once a second) about east-2. A
    // region lost seconds after a switchover can leave the next leader
    // lags aged past the RPO, and then it rightly waits for a person.
    let before = wait_for("the cluster settled on east-2", Duration::from_secs(60), || async {
        cluster().await.filter(|c| {
            healthy(c)
                && c.primary.as_ref().map(|p| p.as_str()) == Some("east-2")
                && c.epoch > before.epoch
                && c.workflow.is_none()
                && c.nodes
                    .iter()
                    .all(|n| n.reachable && (n.name.as_str() == "east-2" || n.lag_seconds.is_some_and(|l| l < 1.0)))
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. East is lost: its agents, PostgreSQL, controller and proxy (pgdr
    // run), and etcd member, all at once.
    let (agents, postgres) = region_processes(&cfg, &hosts, "east");
    let m1 = sb.record.etcd.as_ref().and_then(|e| e.members[0].pid).expect("etcd m1 PID");
    let killed = Instant::now();
    let killed_ms = unix_ms();
    for p in agents.iter().chain(&postgres).chain([&m1, &(east.pid())]) {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    drop(east);
    eprintln!("[{name}] east lost: SIGKILL to its agents, PostgreSQL, pgdr run and etcd m1");
    let after = wait_for("a west primary", Duration::from_secs(90), || async {
        cluster()
            .await
            .filter(|c| c.epoch > before.epoch && c.primary.as_ref().is_some_and(|p| p.as_str().starts_with("west-")))
    })
    .await;
    let new_primary = after.primary.clone().expect("primary").to_string();
    let (holder2, term2) = leader(&etcd).await;
    eprintln!(
        "[{name}] {:.1}s after the loss: {new_primary} primary at epoch {}, leader {holder2} (term {term2})",
        killed.elapsed().as_secs_f64(),
        after.epoch
    );
    assert!(holder2.contains("region west") && term2 > term, "the west controller leads: {holder2} (term {term2})");
    let failover = wait_for("the failover to finish", Duration::from_secs(60), || async {
        api.workflows().await.ok()?.into_iter().find(|w| w.kind == "failover" && w.state != "running")
    })
    .await;
    assert_eq!(failover.state, "succeeded", "{failover:?}");
    eprintln!("[{name}] automatic failover {} {} in {:?} ms", failover.id, failover.state, failover.duration_ms);

    // Writes through the west proxy (served by the west controller now).
    wait_for("a write through the west proxy", Duration::from_secs(60), || write_through(&cfg, &sb, "west")).await;
    eprintln!(
        "[{name}] a write committed through the west proxy {:.1}s after the loss",
        killed.elapsed().as_secs_f64()
    );
    // A last look at every node before the checker stops.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let timeline = checker.stop().await.analyse(origin);
    for lane in &timeline.lanes {
        let segs: Vec<String> = lane
            .segments
            .iter()
            .map(|s| format!("{} {:.2}..{:.2}s", s.answer.label(), s.from_ms / 1000.0, s.until_ms / 1000.0))
            .collect();
        eprintln!("[{name}] {}: {}", lane.node, segs.join(", "));
    }
    assert!(timeline.probes > 0, "the overlap checker probed");
    assert_eq!(timeline.overlaps, vec![], "two servers accepted writes at once: {}", timeline.describe_overlaps());
    // West was dark (its nodes did not answer), and east-1 took writes all
    // through it (no demotion).
    let (from, until) = (dark_from - origin, dark_until - origin);
    for lane in timeline.lanes.iter().filter(|l| l.node.starts_with("west-")) {
        let dark =
            lane.segments.iter().any(|s| s.answer == Answer::Unreachable && s.from_ms < until && s.until_ms > from);
        assert!(dark, "{} did not answer while west was dark: {:?}", lane.node, lane.segments);
    }
    let lane = |node: &str| timeline.lanes.iter().find(|l| l.node == node).expect("the node's lane");
    let writable_through = |node: &str, from: f64, until: f64| {
        lane(node).segments.iter().any(|s| s.answer == Answer::Writable && s.from_ms <= from && s.until_ms >= until)
    };
    assert!(
        writable_through("east-1", from, until),
        "east-1 writable from {from:.0} to {until:.0} ms: {:?}",
        lane("east-1").segments
    );
    let (wf, wu) = (witness_from - origin, witness_until - origin);
    assert!(
        writable_through("east-1", wf, wu),
        "east-1 writable while the witness was dark: {:?}",
        lane("east-1").segments
    );
    // The leadership handover did not interrupt the primary either.
    let (hf, hu) = (handover_from - origin, handover_until - origin);
    assert!(
        writable_through("east-1", hf, hu),
        "east-1 writable through the handover, {hf:.0} to {hu:.0} ms: {:?}",
        lane("east-1").segments
    );
    // The switchover: east-1 until it, east-2 after it until east was lost.
    let (sf, su) = (switch_from - origin, switch_until - origin);
    assert!(writable_through("east-1", hf, sf), "east-1 writable until the switchover: {:?}", lane("east-1").segments);
    assert!(
        writable_through("east-2", su, killed_ms - origin - 50.0),
        "east-2 writable after the switchover: {:?}",
        lane("east-2").segments
    );
    let first_west = timeline.first_writable(&new_primary, killed_ms - origin).expect("the new primary took writes");
    eprintln!(
        "[{name}] measured: the new primary {new_primary} first took a write {:.2}s after the east region was killed",
        (first_west - (killed_ms - origin)) / 1000.0
    );
    drop(west);
}
