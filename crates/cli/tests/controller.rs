//! End-to-end tests of the controller on real sandboxes: `pgdr run`
//! (controller and proxies in one process) over a sandbox of real
//! PostgreSQL with its agent processes, faults injected with real signals
//! by PID, clients through the proxy's writer endpoint.
//!
//! Each test has its own sandbox (torn down on drop, pass or fail) with
//! short timings written into its `pgdr.toml` (agents restarted to read
//! them). Tests print what they measured (detection, workflow time, time
//! until writes work again, client errors, lost commits) and assert only
//! correctness: the epoch, one writable primary, no lost acknowledged
//! commit where the mode guarantees it, no client error where the product
//! promises none. Never a time bound.

mod common;

use common::wait_for;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pgdr_api::controller::{ClusterView, ControllerClient, WorkflowView};
use pgdr_config::Config;
use pgdr_drill::hosts::{LocalHosts, pid_alive};
use pgdr_drill::scenario::Hosts;
use pgdr_drill::workload::{Workload, WorkloadRecord, WorkloadSpec};
use pgdr_sandbox::{Sandbox, SandboxGuard};
use serde_json::Value;

const PGDR: &str = env!("CARGO_BIN_EXE_pgdr");

/// Short timings for tests: detection window 3 × 300 ms + 250 ms.
const TIMING: &str = "\n[timing]\nprobe_interval = \"300ms\"\nprobe_timeout = \"250ms\"\nfailure_threshold = 3\n\
lease_ttl = \"3s\"\nlease_renew = \"500ms\"\nlease_margin = \"1s\"\nrestart_deadline = \"5s\"\n\
promote_timeout = \"20s\"\ndrain_timeout = \"2s\"\n";

#[derive(Debug, Clone, Copy, Default)]
struct Opts {
    /// `on_crash = "failover"` (else the default restart-first).
    failover_on_crash: bool,
    /// `replication = "sync"` with quorum 1.
    sync: bool,
    /// The state store on the sandbox's three-member etcd (`--store etcd`).
    etcd: bool,
    /// A real BIND 9 with the cluster's writer name (`[clusters.dns]`,
    /// [`DNS_EAST`] / [`DNS_WEST`] per region), and `region_preference =
    /// ["west"]` so a failover crosses regions.
    dns: bool,
}

/// The writer name's endpoint per region in the `dns` tests.
const DNS_EAST: &str = "10.0.1.20";
const DNS_WEST: &str = "10.0.2.20";
const DNS_NAME: &str = "main-writer.pgdr.test";
/// Test data only: the TSIG secret named and pgdr share.
const DNS_SECRET: &str = "cGdkci10ZXN0LXRzaWctc2VjcmV0LTMyLWJ5dGVzISE=";

/// `pgdr run` as a child process, killed (SIGKILL) and reaped on drop.
struct Run {
    child: Child,
}

impl Run {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sandbox with `pgdr run` on it. Fields drop in order: the controller
/// first (so it does not react to the teardown), then the sandbox.
struct Env {
    run: Option<Run>,
    /// Further `pgdr run`s on the same config (standbys, with etcd).
    standbys: Vec<Run>,
    /// BIND 9 with the writer name (`Opts::dns`), killed before the sandbox goes.
    named: Option<pgdr_dns::testing::Named>,
    runs: u32,
    sb: SandboxGuard,
    cfg: Config,
    hosts: LocalHosts,
    api: ControllerClient,
    /// libpq conninfo of the east proxy's writer endpoint.
    writer: String,
    name: &'static str,
}

impl Drop for Env {
    /// On failure, the tail of every `pgdr run` log (the sandbox folder is
    /// removed with the guard).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.kill_run();
        let agents = self.node_names().into_iter().map(|n| format!("agent-{n}.log"));
        for name in (1..=self.runs).map(|i| format!("run-{i}.log")).chain(agents) {
            let p = self.sb.dir.join("logs").join(name);
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- [{}] {} (last 60 lines)", self.name, p.display());
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
        }
    }
}

fn sig(pid: i32, s: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), s).unwrap_or_else(|e| panic!("{s} to {pid}: {e}"));
}

impl Env {
    async fn start(name: &'static str, opts: Opts) -> Env {
        let t0 = Instant::now();
        let sb = SandboxGuard::start_temp(Sandbox::builder().etcd(opts.etcd), std::path::Path::new(PGDR))
            .await
            .expect("sandbox up");
        // Short timings and the cluster's options, then agents that read them.
        let mut text = std::fs::read_to_string(&sb.config).expect("read pgdr.toml");
        let mut extra = String::new();
        if opts.failover_on_crash {
            extra.push_str("on_crash = \"failover\"\n");
        }
        if opts.sync {
            extra.push_str("replication = \"sync\"\nsync_quorum = 1\n");
        }
        let named = opts.dns.then(|| {
            let zone = pgdr_dns::testing::NamedZone {
                zone: "pgdr.test".into(),
                key_name: "pgdr-main".into(),
                algorithm: pgdr_dns::Algorithm::HmacSha256,
                secret: DNS_SECRET.into(),
            };
            pgdr_dns::testing::Named::start(&sb.dir.join("named"), &zone).expect("named (Debian's bind9)")
        });
        if named.is_some() {
            extra.push_str("region_preference = [\"west\"]\n");
        }
        let anchor = "name = \"main\"\ntier = \"gold\"\n";
        assert!(text.contains(anchor), "unexpected sandbox config:\n{text}");
        text = text.replacen(anchor, &format!("{anchor}{extra}"), 1);
        // Our timings replace any the sandbox wrote.
        if let Some(start) = text.find("\n[timing]\n") {
            let rest = &text[start + 1..];
            let end = rest[1..].find("\n[").map(|i| start + 1 + i + 2).unwrap_or(text.len());
            text.replace_range(start + 1..end, "");
        }
        text.push_str(TIMING);
        if let Some(ns) = &named {
            let key = sb.dir.join("secrets").join("dns-main.key");
            std::fs::write(&key, format!("key \"pgdr-main\" {{ algorithm hmac-sha256; secret \"{DNS_SECRET}\"; }};\n"))
                .expect("write the TSIG key");
            text.push_str(&format!(
                "\n[clusters.dns]\nserver = \"{}\"\nzone = \"pgdr.test\"\nname = \"{DNS_NAME}\"\nttl = \"5s\"\ntimeout = \"1s\"\n\
                 tsig_key = \"pgdr-main\"\ntsig_secret = {{ file = \"{}\" }}\n\n[clusters.dns.endpoints]\neast = \"{DNS_EAST}\"\nwest = \"{DNS_WEST}\"\n",
                ns.addr,
                key.display()
            ));
        }
        std::fs::write(&sb.config, &text).expect("write pgdr.toml");
        let cfg = Config::load(&sb.config).expect("config with test timings");
        let hosts = LocalHosts::new(&cfg, PathBuf::from(PGDR));
        let cluster = cfg.cluster("main").expect("cluster main").clone();
        // One at a time, the primary's last: with no controller yet, a
        // restarted agent of a writable primary keeps it only with a majority
        // of support (it starts lapsed), so its peers must be up to answer.
        let mut order: Vec<&pgdr_config::Node> = Vec::new();
        for node in &cluster.nodes {
            let primary = sb
                .sql(node.name.as_str(), "select pg_is_in_recovery()::text")
                .await
                .is_ok_and(|rows| rows.first().is_some_and(|r| r[0].as_deref() == Some("false")));
            if primary { order.push(node) } else { order.insert(0, node) }
        }
        for node in order {
            let pid = hosts.agent_pid(node).expect("agent pid");
            sig(pid, Signal::SIGTERM);
            wait_for("the agent to exit", Duration::from_secs(20), || async { (!pid_alive(pid)).then_some(()) }).await;
            hosts.start_agent(node).await.expect("start agent");
            let a = sb.agent(node.name.as_str()).expect("agent client").with_timeout(Duration::from_millis(500));
            wait_for("the agent to answer", Duration::from_secs(30), || async { a.health().await.ok() }).await;
        }
        let proxy = cfg.proxies.iter().find(|p| p.region.as_str() == "east").expect("east proxy");
        let writer = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres password={} connect_timeout=10{}",
            proxy.writer.port(),
            sb.password(),
            sb.tls_params()
        );
        let api = ControllerClient::new_with(
            &cfg.controller.listen.to_string(),
            cfg.controller_client_token(pgdr_config::Access::Operator).expect("operator token"),
            sb.http_tls(),
        )
        .expect("controller client")
        .with_timeout(Duration::from_secs(5));
        let mut env = Env { run: None, standbys: Vec::new(), named, runs: 0, sb, cfg, hosts, api, writer, name };
        env.start_run();
        env.wait_ready().await;
        eprintln!("[{name}] sandbox and pgdr run ready in {:.1}s", t0.elapsed().as_secs_f64());
        env
    }

    fn start_run(&mut self) {
        assert!(self.run.is_none(), "pgdr run is already running");
        self.run = Some(self.spawn_run());
    }

    /// Another `pgdr run` on the same config, kept apart from the leader's
    /// (with the etcd store it stands by until it leads).
    fn start_standby(&mut self) -> (i32, PathBuf) {
        let r = self.spawn_run();
        let out = (r.pid(), self.sb.dir.join("logs").join(format!("run-{}.log", self.runs)));
        self.standbys.push(r);
        out
    }

    fn spawn_run(&mut self) -> Run {
        self.runs += 1;
        let log_path = self.sb.dir.join("logs").join(format!("run-{}.log", self.runs));
        let log = std::fs::File::create(&log_path).expect("run log");
        let err = log.try_clone().expect("run log");
        let child = Command::new(PGDR)
            .arg("run")
            .arg("--config")
            .arg(&self.sb.config)
            .current_dir(&self.sb.dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start pgdr run");
        Run { child }
    }

    /// SIGKILL to `pgdr run` (controller and proxies die together).
    fn kill_run(&mut self) {
        drop(self.run.take());
    }

    fn run_pid(&self) -> i32 {
        self.run.as_ref().expect("pgdr run").pid()
    }

    fn node(&self, name: &str) -> pgdr_config::Node {
        self.cfg.cluster("main").and_then(|c| c.node(name)).cloned().unwrap_or_else(|| panic!("no node {name}"))
    }

    fn node_names(&self) -> Vec<String> {
        self.cfg.cluster("main").expect("main").nodes.iter().map(|n| n.name.to_string()).collect()
    }

    fn postmaster_pid(&self, name: &str) -> i32 {
        self.hosts.postmaster_pid(&self.node(name)).unwrap_or_else(|| panic!("no postmaster PID for {name}"))
    }

    fn agent_pid(&self, name: &str) -> i32 {
        self.hosts.agent_pid(&self.node(name)).unwrap_or_else(|| panic!("no agent PID for {name}"))
    }

    async fn cluster(&self) -> Option<ClusterView> {
        self.api.cluster("main").await.ok()
    }

    /// Waits until the controller has the cluster's state and a write
    /// commits through the writer endpoint.
    /// Gives up at once, with the reason in the run log, when `pgdr run`
    /// exited (a port it was to bind taken, a config it refused).
    async fn wait_ready(&mut self) {
        let limit = Duration::from_secs(60);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.run.as_mut().and_then(|r| r.child.try_wait().ok().flatten()) {
                panic!("pgdr run exited ({status}) before the controller recorded the cluster");
            }
            if self.cluster().await.is_some_and(|c| c.primary.is_some() && c.epoch.0 > 0 && c.detection == "healthy") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for the controller to record the cluster after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_for("a write through the proxy", Duration::from_secs(60), || async {
            let c = pgdr_drill::observer::connect(&self.writer, "the writer endpoint", Duration::from_secs(5))
                .await
                .ok()?;
            c.batch_execute(pgdr_drill::workload::LEDGER_DDL).await.ok()
        })
        .await;
    }

    /// Nodes that answer as a writable primary (not in recovery, not
    /// read-only), asked directly.
    async fn writable_primaries(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in self.node_names() {
            let q = "select pg_is_in_recovery()::text, current_setting('default_transaction_read_only')";
            if let Ok(rows) = self.sb.sql(&n, q).await
                && rows.first().is_some_and(|r| r[0].as_deref() == Some("false") && r[1].as_deref() == Some("off"))
            {
                out.push(n);
            }
        }
        out
    }

    /// The one writable primary, waiting for the cluster to settle.
    async fn one_primary(&self) -> String {
        wait_for("exactly one writable primary", Duration::from_secs(60), || async {
            let p = self.writable_primaries().await;
            (p.len() == 1).then(|| p[0].clone())
        })
        .await
    }

    async fn workflows(&self) -> Vec<WorkflowView> {
        self.api.workflows().await.unwrap_or_default()
    }

    /// Waits for a workflow of `kind` not in `seen` to appear.
    async fn new_workflow(&self, kind: &str, seen: &[String], limit: Duration) -> WorkflowView {
        wait_for(&format!("a {kind} workflow"), limit, || async {
            self.workflows().await.into_iter().find(|w| w.kind == kind && !seen.contains(&w.id))
        })
        .await
    }

    /// Waits for a workflow to end; returns it with its journal.
    async fn finished(&self, id: &str, limit: Duration) -> WorkflowView {
        wait_for(&format!("workflow {id} to end"), limit, || async {
            let v = self.api.workflow(id).await.ok()?;
            matches!(v.state.as_str(), "succeeded" | "failed" | "cancelled").then_some(v)
        })
        .await
    }

    fn ids(ws: &[WorkflowView]) -> Vec<String> {
        ws.iter().map(|w| w.id.clone()).collect()
    }

    fn print_workflow(&self, v: &WorkflowView) {
        eprintln!(
            "[{}] {} {}: {} in {}",
            self.name,
            v.kind,
            v.id,
            v.state,
            v.duration_ms.map(|d| format!("{:.2}s", d as f64 / 1000.0)).unwrap_or_else(|| "?".into())
        );
        for s in &v.steps {
            eprintln!(
                "    {:<20} {:<10} {:>7} attempts={}{}",
                s.name,
                s.state,
                s.duration_ms.map(|d| format!("{d}ms")).unwrap_or_default(),
                s.attempts,
                s.error.as_deref().map(|e| format!(" error: {e}")).unwrap_or_default()
            );
        }
        if let Some(e) = &v.error {
            eprintln!("    error: {e}");
        }
    }

    /// The drill workload through the writer endpoint.
    fn workload(&self, writers: usize) -> Workload {
        let mut spec = WorkloadSpec::new(self.writer.clone());
        spec.writers = writers;
        spec.readers = 0;
        spec.pace = Duration::from_millis(5);
        Workload::start(spec)
    }

    /// Compares the ledger on `primary` with what the clients were told and
    /// prints it; returns the number of lost acknowledged commits.
    async fn check(&self, primary: &str, record: &WorkloadRecord, fault_ms: Option<f64>) -> u64 {
        let n = self.node(primary);
        let conninfo = format!(
            "host={} port={} user=postgres dbname=postgres password={} connect_timeout=5{}",
            n.host,
            n.port,
            self.sb.password(),
            self.sb.tls_params()
        );
        let c = pgdr_drill::observer::connect(&conninfo, primary, Duration::from_secs(10)).await.expect("connect");
        let loss = pgdr_drill::checker::check_ledger(&c, record, fault_ms).await.expect("check ledger");
        let (writes, _) = pgdr_drill::checker::errors_by_kind(record);
        let rto = fault_ms.and_then(|f| pgdr_drill::checker::writes_unavailable(record, f)).map(|o| o.seconds());
        eprintln!(
            "[{}] workload: {} acknowledged commits, {} lost, {} outcome unknown ({} of them committed); client errors: {:?}{}",
            self.name,
            loss.acknowledged_commits,
            loss.lost_commits(),
            loss.unknown_outcome,
            loss.unknown_committed,
            writes,
            rto.map(|r| format!("; writes unavailable through the proxy for {r:.2}s")).unwrap_or_default()
        );
        let mut samples = std::collections::BTreeMap::new();
        for f in record.write_failures() {
            let e = samples.entry(f.kind.label()).or_insert_with(|| (f.at_ms, f.at_ms, f.message.clone()));
            e.1 = e.1.max(f.at_ms);
        }
        let after = |ms: f64| (ms - fault_ms.unwrap_or(0.0)) / 1000.0;
        for (k, (first, last, m)) in samples {
            eprintln!(
                "[{}]   {k}: from {:.2}s to {:.2}s after the fault, e.g. {m}",
                self.name,
                after(first),
                after(last)
            );
        }
        assert!(loss.acknowledged_commits > 0, "the workload committed nothing");
        loss.lost_commits()
    }
}

fn step<'a>(v: &'a WorkflowView, name: &str) -> &'a pgdr_api::controller::StepView {
    v.steps.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no step {name} in {}", v.kind))
}

/// Waits until the workload's writes commit again after `fault_ms`.
async fn wait_recovered(w: &Workload, fault_ms: f64) {
    wait_for("writes to work again through the proxy", Duration::from_secs(60), || async {
        w.recovered_since(fault_ms).then_some(())
    })
    .await;
}

/// libpq conninfo of one node, directly (not through the proxy).
fn direct(env: &Env, name: &str) -> String {
    let n = env.node(name);
    format!(
        "host={} port={} user=postgres dbname=postgres password={} connect_timeout=1{}",
        n.host,
        n.port,
        env.sb.password(),
        env.sb.tls_params()
    )
}

/// The drills' overlap checker (`pgdr_drill::writable`): every node asked
/// directly every 50 ms to accept a real `BEGIN READ WRITE` write.
struct WriteWatch {
    probe: pgdr_drill::writable::WritableProbe,
    origin_unix_ms: f64,
}

impl WriteWatch {
    fn start(env: &Env) -> WriteWatch {
        let cluster = env.cfg.cluster("main").expect("cluster main");
        let origin_unix_ms = pgdr_drill::unix_ms(std::time::SystemTime::now());
        WriteWatch {
            probe: pgdr_drill::writable::WritableProbe::start(cluster, env.cfg.tls.as_ref()).expect("overlap checker"),
            origin_unix_ms,
        }
    }

    /// Stops and asserts no instant saw two writable servers.
    async fn assert_never_two(self, name: &str) {
        let t = self.probe.stop().await.analyse(self.origin_unix_ms);
        let writable: Vec<String> = t
            .lanes
            .iter()
            .map(|l| {
                let n = l.segments.iter().filter(|s| s.answer == pgdr_drill::writable::Answer::Writable).count();
                format!("{} {n}", l.node)
            })
            .collect();
        eprintln!("[{name}] overlap checker: {} probes, writable segments per node: {}", t.probes, writable.join(", "));
        assert!(t.probes > 0);
        assert_eq!(t.overlaps, vec![], "two servers accepted writes at once: {}", t.describe_overlaps());
    }
}

/// A client writing straight to one node (not through the proxy) with the
/// drill's workload: `BEGIN READ WRITE`, reconnecting after errors.
fn direct_writer(env: &Env, name: &str) -> Workload {
    let mut spec = WorkloadSpec::new(direct(env, name));
    spec.writers = 1;
    spec.readers = 0;
    spec.begin_read_write = true;
    spec.connect_timeout = Duration::from_secs(1);
    spec.statement_timeout = Duration::from_secs(2);
    spec.pace = Duration::from_millis(5);
    Workload::start(spec)
}

/// kill -9 of the primary's postmaster (`on_crash = "failover"`) while
/// writers commit through the proxy: the cluster is writable again through
/// the same endpoint, with the epoch raised and one primary. Async
/// replication may lose acknowledged commits: the count is printed, not
/// asserted (the sync test asserts it).
#[tokio::test(flavor = "multi_thread")]
async fn kill_primary_fails_over_through_the_proxy() {
    let env = Env::start("kill-primary", Opts { failover_on_crash: true, ..Opts::default() }).await;
    let before = env.cluster().await.expect("cluster");
    let old = before.primary.clone().expect("primary").to_string();
    // The agent of the other region probes the primary (POST /v1/probe) and
    // the status page shows its exact reading.
    let tls = env.sb.http_tls();
    let snapshot = format!("{}://{}/v1/snapshot", tls.scheme(), env.cfg.controller.listen);
    let viewer =
        env.cfg.controller_client_token(pgdr_config::Access::Viewer).expect("viewer token").expect("a viewer token");
    let http = tls.client(Duration::from_secs(2)).expect("http client");
    let row = wait_for("an agent in another region to probe the primary", Duration::from_secs(20), || async {
        let s: Value = http.get(&snapshot).bearer_auth(viewer.expose()).send().await.ok()?.json().await.ok()?;
        let probes = s["clusters"][0]["probes"].as_array()?.clone();
        probes.into_iter().find(|p| {
            p["vantage"].as_str().is_some_and(|v| v.contains("'s agent (") && !v.starts_with("primary"))
                && p["latest"] == "ok"
        })
    })
    .await;
    eprintln!("[{}] remote vantage point: {} -> {} ({})", env.name, row["vantage"], row["latest"], row["detail"]);
    let seen = Env::ids(&env.workflows().await);
    let w = env.workload(4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fault_ms = w.now_ms();
    sig(env.postmaster_pid(&old), Signal::SIGKILL);
    let wf = env.new_workflow("failover", &seen, Duration::from_secs(30)).await;
    let wf = env.finished(&wf.id, Duration::from_secs(60)).await;
    env.print_workflow(&wf);
    eprintln!("[{}] {}", env.name, wf.params["reason"].as_str().unwrap_or(""));
    assert_eq!(wf.state, "succeeded", "{wf:#?}");
    assert_eq!(step(&wf, "restart_in_place").output.as_ref().map(|o| o["path"].clone()), Some(Value::from("failover")));
    wait_recovered(&w, fault_ms).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let record = w.stop().await;
    let primary = env.one_primary().await;
    assert_ne!(primary, old, "the killed node is primary again");
    let after = env.cluster().await.expect("cluster");
    assert!(after.epoch > before.epoch, "epoch {} not raised (was {})", after.epoch, before.epoch);
    assert_eq!(after.primary.as_ref().map(|p| p.to_string()), Some(primary.clone()));
    let lost = env.check(&primary, &record, Some(fault_ms)).await;
    eprintln!("[{}] async replication: {lost} acknowledged commits lost (not guaranteed zero in async mode)", env.name);
    // The other region's agent agreed on the outage.
    let events = env.api.events(None).await.expect("events");
    let declared = events.iter().find(|e| e["state"] == "outage_declared").expect("an outage_declared event");
    let msg = declared["message"].as_str().unwrap_or("");
    eprintln!("[{}] {msg}", env.name);
    assert!(msg.contains("agent:"), "no vantage point in another region agreed: {msg}");
}

/// Host loss: the primary's postmaster and agent killed. Nothing confirms
/// the fence, so the controller waits for the old lease to expire, then
/// promotes: one writable primary afterwards, epoch raised.
#[tokio::test(flavor = "multi_thread")]
async fn host_loss_fails_over_after_the_lease_expires() {
    let env = Env::start("host-loss", Opts::default()).await;
    let before = env.cluster().await.expect("cluster");
    let old = before.primary.clone().expect("primary").to_string();
    let seen = Env::ids(&env.workflows().await);
    let w = env.workload(2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fault_ms = w.now_ms();
    sig(env.agent_pid(&old), Signal::SIGKILL);
    sig(env.postmaster_pid(&old), Signal::SIGKILL);
    let wf = env.new_workflow("failover", &seen, Duration::from_secs(30)).await;
    let wf = env.finished(&wf.id, Duration::from_secs(60)).await;
    env.print_workflow(&wf);
    eprintln!("[{}] {}", env.name, wf.params["reason"].as_str().unwrap_or(""));
    assert_eq!(wf.state, "succeeded", "{wf:#?}");
    let fence = step(&wf, "fence_old_primary").output.clone().expect("fence output");
    eprintln!("[{}] fence evidence: {}", env.name, fence["evidence"]);
    assert!(fence["evidence"].to_string().to_lowercase().contains("lease"), "not the lease path: {fence}");
    wait_recovered(&w, fault_ms).await;
    let record = w.stop().await;
    let primary = env.one_primary().await;
    assert_ne!(primary, old);
    let after = env.cluster().await.expect("cluster");
    assert!(after.epoch > before.epoch);
    assert_eq!(after.primary.as_ref().map(|p| p.to_string()), Some(primary.clone()));
    let lost = env.check(&primary, &record, Some(fault_ms)).await;
    eprintln!("[{}] async replication: {lost} acknowledged commits lost", env.name);
}

/// A blip shorter than the detection window (every process of the primary
/// frozen with SIGSTOP, then SIGCONT) causes no failover, and clients see
/// delay rather than errors.
#[tokio::test(flavor = "multi_thread")]
async fn blip_shorter_than_the_window_causes_no_failover() {
    let env = Env::start("blip", Opts { failover_on_crash: true, ..Opts::default() }).await;
    let before = env.cluster().await.expect("cluster");
    let old = before.primary.clone().expect("primary").to_string();
    let window = env.cfg.timing.detection_window();
    let blip = Duration::from_millis(400);
    assert!(blip < window);
    let seen = Env::ids(&env.workflows().await);
    let w = env.workload(2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pm = env.postmaster_pid(&old);
    for _ in 0..3 {
        let mut pids = vec![pm];
        pids.extend(pgdr_drill::scenario::children_of(pm));
        // Backends come and go: one that exited meanwhile is no error.
        let send = |p: i32, s: Signal| {
            let r = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), s);
            assert!(p != pm || r.is_ok(), "{s} to the postmaster {pm}: {r:?}");
        };
        for p in &pids {
            send(*p, Signal::SIGSTOP);
        }
        tokio::time::sleep(blip).await;
        for p in &pids {
            send(*p, Signal::SIGCONT);
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    tokio::time::sleep(window).await;
    let record = w.stop().await;
    let after = env.cluster().await.expect("cluster");
    let new: Vec<WorkflowView> = env.workflows().await.into_iter().filter(|w| !seen.contains(&w.id)).collect();
    eprintln!(
        "[{}] 3 blips of {blip:?} (window {window:?}): epoch {} -> {}, new workflows: {:?}",
        env.name,
        before.epoch,
        after.epoch,
        new.iter().map(|w| &w.kind).collect::<Vec<_>>()
    );
    assert!(new.is_empty(), "a blip started workflows: {new:#?}");
    assert_eq!(after.epoch, before.epoch);
    assert_eq!(env.writable_primaries().await, vec![old.clone()]);
    let lost = env.check(&old, &record, None).await;
    assert_eq!(lost, 0);
    let errors = record.write_failures().count();
    assert_eq!(errors, 0, "clients saw errors during blips: {:?}", record.failures);
}

/// The controller (`pgdr run`, SIGKILL) dies in the middle of a failover,
/// while the fence step waits for the lost host's lease: a new `pgdr run`
/// resumes the workflow from its journal and finishes it, and the cluster
/// ends with exactly one primary.
#[tokio::test(flavor = "multi_thread")]
async fn controller_killed_mid_failover_resumes_and_finishes() {
    let mut env = Env::start("controller-crash", Opts::default()).await;
    controller_killed_mid_failover(&mut env).await;
}

/// The same with the state (the cluster's epoch and the workflow's journal)
/// in the sandbox's three-member etcd: the restarted controller resumes
/// the failover from the journal it reads back from etcd.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_store_controller_killed_mid_failover_resumes_and_finishes() {
    let mut env = Env::start("etcd-controller-crash", Opts { etcd: true, ..Opts::default() }).await;
    let etcd = etcd_store(&env).await;
    let before = etcd_state(&etcd).await;
    controller_killed_mid_failover(&mut env).await;
    let after = etcd_state(&etcd).await;
    eprintln!("[etcd-controller-crash] in etcd: {before} -> {after}");
    assert_eq!(after["epoch"].as_u64(), before["epoch"].as_u64().map(|e| e + 2), "the epochs were written to etcd");
}

/// kill -9 of the primary's postmaster with the state in etcd: the
/// failover runs, raises the epoch in etcd, and the writer endpoint works.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_store_kill_primary_fails_over() {
    let env = Env::start("etcd-kill-primary", Opts { failover_on_crash: true, etcd: true, ..Opts::default() }).await;
    let text = std::fs::read_to_string(&env.sb.config).expect("config");
    assert!(text.contains("store = \"etcd\""), "the sandbox config selects etcd:\n{text}");
    assert_eq!(env.sb.record.etcd.as_ref().map(|e| e.members.len()), Some(3));
    let etcd = etcd_store(&env).await;
    let before = env.cluster().await.expect("cluster");
    assert_eq!(etcd_state(&etcd).await["epoch"].as_u64(), Some(before.epoch.0));
    let old = before.primary.clone().expect("primary").to_string();
    let seen = Env::ids(&env.workflows().await);
    let w = env.workload(2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fault_ms = w.now_ms();
    sig(env.postmaster_pid(&old), Signal::SIGKILL);
    let wf = env.new_workflow("failover", &seen, Duration::from_secs(30)).await;
    let wf = env.finished(&wf.id, Duration::from_secs(60)).await;
    env.print_workflow(&wf);
    assert_eq!(wf.state, "succeeded", "{wf:#?}");
    wait_recovered(&w, fault_ms).await;
    let record = w.stop().await;
    let primary = env.one_primary().await;
    assert_ne!(primary, old);
    let after = env.cluster().await.expect("cluster");
    assert!(after.epoch > before.epoch);
    let in_etcd = etcd_state(&etcd).await;
    eprintln!("[{}] cluster state in etcd: {in_etcd}", env.name);
    assert_eq!(in_etcd["epoch"].as_u64(), Some(after.epoch.0));
    assert_eq!(in_etcd["primary"].as_str(), Some(primary.as_str()));
    let journal = pgdr_store::StateStore::list(&etcd, &format!("/pgdr/workflows/{}/steps/", wf.id))
        .await
        .expect("journal in etcd");
    assert!(!journal.is_empty(), "the failover's journal is in etcd");
    env.check(&primary, &record, Some(fault_ms)).await;
}

/// Two controllers (`pgdr run`) on the sandbox's etcd: the second stands by
/// (binds nothing) while the first leads. The leader is killed (SIGKILL) in
/// the middle of a failover, while the fence step waits for the lost host's
/// lease: the standby is elected once the leader's lease runs out, resumes
/// the failover from the journal in etcd and finishes it, with the next
/// leader term.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_store_standby_controller_finishes_the_failover_its_leader_died_in() {
    let mut env = Env::start("etcd-standby", Opts { etcd: true, ..Opts::default() }).await;
    let etcd = etcd_store(&env).await;
    let leader = |v: Option<pgdr_store::Versioned>| -> Value {
        serde_json::from_slice(&v.expect("a leader key").value).expect("json")
    };
    let first = leader(pgdr_store::StateStore::get(&etcd, pgdr_store::keys::CONTROLLER_LEADER).await.expect("read"));
    assert!(first["holder"].as_str().is_some_and(|h| h.contains(&format!("pid {}", env.run_pid()))), "{first}");
    let (standby_pid, standby_log) = env.start_standby();
    wait_for("the second controller to stand by", Duration::from_secs(30), || async {
        std::fs::read_to_string(&standby_log).unwrap_or_default().contains("standing by").then_some(())
    })
    .await;
    let before = env.cluster().await.expect("cluster");
    let old = before.primary.clone().expect("primary").to_string();
    let seen = Env::ids(&env.workflows().await);
    sig(env.agent_pid(&old), Signal::SIGKILL);
    sig(env.postmaster_pid(&old), Signal::SIGKILL);
    let wf = env.new_workflow("failover", &seen, Duration::from_secs(30)).await;
    wait_for("the fence step to start", Duration::from_secs(30), || async {
        let v = env.api.workflow(&wf.id).await.ok()?;
        let s = v.steps.iter().find(|s| s.name == "fence_old_primary")?;
        (s.state == "started" || s.state == "retrying").then_some(())
    })
    .await;
    let killed = Instant::now();
    sig(env.run_pid(), Signal::SIGKILL);
    env.kill_run();
    eprintln!("[{}] leader (pgdr run) killed with fence_old_primary running", env.name);
    let v = env.finished(&wf.id, Duration::from_secs(90)).await;
    env.print_workflow(&v);
    eprintln!(
        "[{}] the standby finished the failover {:.2}s after the leader was killed",
        env.name,
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(v.state, "succeeded", "{v:#?}");
    let now = leader(pgdr_store::StateStore::get(&etcd, pgdr_store::keys::CONTROLLER_LEADER).await.expect("read"));
    eprintln!("[{}] leader in etcd: {first} -> {now}", env.name);
    assert!(now["holder"].as_str().is_some_and(|h| h.contains(&format!("pid {standby_pid}"))), "{now}");
    assert_eq!(now["term"].as_u64(), first["term"].as_u64().map(|t| t + 1));
    let log = std::fs::read_to_string(&standby_log).unwrap_or_default();
    assert!(log.contains("this controller leads"), "the standby's log: {log}");
    let primary = env.one_primary().await;
    assert_ne!(primary, old);
    let after = env.cluster().await.expect("cluster");
    assert_eq!(after.epoch.0, before.epoch.0 + 2, "one fence epoch, one promotion");
    assert_eq!(after.primary.as_ref().map(|p| p.to_string()), Some(primary));
    env.wait_ready().await;
}

/// A fault of the sandbox's etcd, held for four times the lease TTL.
#[derive(Debug, Clone, Copy)]
enum EtcdFault {
    /// Two of three members stopped: no quorum, no leader.
    Stopped,
    /// Every member frozen (SIGSTOP): connections open, nothing answers
    /// (a store that hangs).
    Frozen,
}

/// The etcd quorum lost two ways (stopped members; every member frozen, so
/// requests hang) for four times the lease TTL, under a write workload
/// through the proxy: the healthy primary stays writable through the proxy
/// the whole time, no workflow starts and the epoch does not move; once the
/// members are back the controller carries on with the same leader.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_quorum_lost_keeps_the_healthy_primary_writable() {
    etcd_fault_keeps_the_primary(EtcdFault::Stopped).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_frozen_keeps_the_healthy_primary_writable() {
    etcd_fault_keeps_the_primary(EtcdFault::Frozen).await;
}

async fn etcd_fault_keeps_the_primary(fault: EtcdFault) {
    let name = match fault {
        EtcdFault::Stopped => "etcd-quorum-lost",
        EtcdFault::Frozen => "etcd-frozen",
    };
    let env = Env::start(name, Opts { etcd: true, failover_on_crash: true, ..Opts::default() }).await;
    let before = env.cluster().await.expect("cluster");
    let old = before.primary.clone().expect("primary").to_string();
    let seen = Env::ids(&env.workflows().await);
    let etcd_client = etcd_store(&env).await;
    let leader_before = pgdr_store::StateStore::get(&etcd_client, pgdr_store::keys::CONTROLLER_LEADER)
        .await
        .expect("read")
        .expect("a leader");
    let w = env.workload(2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outage = env.cfg.timing.lease_ttl * 4;
    let mut etcd = env.sb.record.etcd.clone().expect("etcd members");
    let fault_ms = w.now_ms();
    etcd = tokio::task::spawn_blocking(move || {
        match fault {
            EtcdFault::Stopped => {
                etcd.stop_member(1).expect("stop m2");
                etcd.stop_member(2).expect("stop m3");
            }
            EtcdFault::Frozen => {
                for i in 0..3 {
                    etcd.freeze_member(i, true).expect("freeze");
                }
            }
        }
        etcd
    })
    .await
    .expect("join");
    eprintln!("[{}] etcd {fault:?} for {outage:?}", env.name);
    tokio::time::sleep(outage).await;
    let during = w.now_ms();
    let dir = env.sb.dir.clone();
    tokio::task::spawn_blocking(move || {
        match fault {
            EtcdFault::Stopped => {
                etcd.start_member(1).expect("start m2");
                etcd.start_member(2).expect("start m3");
                // The sandbox's record names the members' new PIDs, so teardown stops them.
                let mut r = pgdr_sandbox::Record::load(&dir).expect("record").expect("a record");
                r.etcd = Some(etcd.clone());
                r.save().expect("save record");
            }
            EtcdFault::Frozen => {
                for i in 0..3 {
                    etcd.freeze_member(i, false).expect("thaw");
                }
            }
        }
        etcd.wait_healthy(Duration::from_secs(30)).expect("etcd healthy again");
    })
    .await
    .expect("join");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let record = w.stop().await;
    let after = wait_for("the controller to answer again", Duration::from_secs(30), || env.cluster()).await;
    let new: Vec<WorkflowView> = env.workflows().await.into_iter().filter(|w| !seen.contains(&w.id)).collect();
    let failures: Vec<_> = record.write_failures().collect();
    let commits_during = record.acks.iter().filter(|a| a.sent_ms >= fault_ms && a.sent_ms < during).count();
    eprintln!(
        "[{}] epoch {} -> {}, new workflows {:?}, commits through the proxy while etcd was out: {commits_during}, write errors: {}",
        env.name,
        before.epoch,
        after.epoch,
        new.iter().map(|w| &w.kind).collect::<Vec<_>>(),
        failures.len()
    );
    assert!(new.is_empty(), "the outage started workflows: {new:#?}");
    assert_eq!(after.epoch, before.epoch, "no role change");
    assert_eq!(env.writable_primaries().await, vec![old.clone()], "the same writable primary");
    assert!(commits_during > 0, "nothing committed through the proxy during the outage");
    assert!(failures.is_empty(), "clients saw errors while etcd was out: {failures:?}");
    assert_eq!(env.check(&old, &record, None).await, 0);
    let leader_after = pgdr_store::StateStore::get(&etcd_client, pgdr_store::keys::CONTROLLER_LEADER)
        .await
        .expect("read")
        .expect("a leader after the outage");
    // A frozen etcd expires leases when it thaws (its clock ran on), so the
    // leader may have lost its key: its controller part stood by and won
    // again (the next term), while its proxies served throughout.
    let (b, a): (Value, Value) = (
        serde_json::from_slice(&leader_before.value).expect("json"),
        serde_json::from_slice(&leader_after.value).expect("json"),
    );
    eprintln!("[{}] leader before {b}, after {a}", env.name);
    assert_eq!(a["holder"], b["holder"], "the same controller leads");
}

/// A client of the sandbox's etcd as the controller sees it (its prefix,
/// the sandbox's CA and the controller's client certificate).
async fn etcd_store(env: &Env) -> pgdr_store::EtcdStore {
    let pgdr_config::StoreKind::Etcd(e) = &env.cfg.controller.store else { panic!("not an etcd sandbox") };
    let mut o = pgdr_store::EtcdOptions::new(e.endpoints.clone());
    o.prefix = e.prefix.clone();
    if let (Some(ca), Some(id)) = (&e.ca, &e.identity) {
        let read = |p: &std::path::Path| std::fs::read(p).expect("read a certificate");
        o.tls = Some(pgdr_store::EtcdTls { ca_pem: read(ca), identity: Some((read(&id.cert), read(&id.key))) });
    }
    pgdr_store::EtcdStore::connect(o).await.expect("connect to the sandbox's etcd")
}

async fn etcd_state(etcd: &pgdr_store::EtcdStore) -> Value {
    use pgdr_store::StateStore;
    let v =
        etcd.get(&pgdr_store::keys::cluster_state("main")).await.expect("read etcd").expect("cluster state in etcd");
    serde_json::from_slice(&v.value).expect("json")
}

async fn controller_killed_mid_failover(env: &mut Env) {
    let before = env.cluster().await.expect("cluster");
    let old = before.primary.clone().expect("primary").to_string();
    let seen = Env::ids(&env.workflows().await);
    sig(env.agent_pid(&old), Signal::SIGKILL);
    sig(env.postmaster_pid(&old), Signal::SIGKILL);
    let wf = env.new_workflow("failover", &seen, Duration::from_secs(30)).await;
    // Kill the controller once the journal shows the fence step started.
    let at = wait_for("the fence step to start", Duration::from_secs(30), || async {
        let v = env.api.workflow(&wf.id).await.ok()?;
        let s = v.steps.iter().find(|s| s.name == "fence_old_primary")?;
        (s.state == "started" || s.state == "retrying").then(|| s.state.clone())
    })
    .await;
    let killed = Instant::now();
    sig(env.run_pid(), Signal::SIGKILL);
    env.kill_run();
    eprintln!("[{}] pgdr run killed with fence_old_primary {at}", env.name);
    // Nothing was promoted while no controller ran.
    assert!(env.writable_primaries().await.is_empty(), "a primary appeared while the controller was dead");
    env.start_run();
    let v = env.finished(&wf.id, Duration::from_secs(60)).await;
    env.print_workflow(&v);
    eprintln!(
        "[{}] the restarted controller finished the failover {:.2}s after the kill",
        env.name,
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(v.state, "succeeded", "{v:#?}");
    assert!(step(&v, "fence_old_primary").attempts >= 2, "the fence step was not re-run");
    let primary = env.one_primary().await;
    assert_ne!(primary, old);
    let after = env.cluster().await.expect("cluster");
    // The fence epoch (no primary) written before fencing, then the promotion's.
    assert_eq!(after.epoch.0, before.epoch.0 + 2, "one fence epoch, one promotion");
    assert_eq!(after.primary.as_ref().map(|p| p.to_string()), Some(primary));
    env.wait_ready().await;
}

fn pgbench_script(dir: &std::path::Path) -> PathBuf {
    let p = dir.join("insert.sql");
    std::fs::write(&p, "INSERT INTO sw_ledger (client) VALUES (:client_id);\n").expect("script");
    p
}

/// Runs `pgdr switchover --to <to>`; returns (success, the workflow).
async fn switchover(env: &Env, to: &str) -> (bool, WorkflowView) {
    let config = env.sb.config.display().to_string();
    let to = to.to_owned();
    let seen = Env::ids(&env.workflows().await);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(PGDR)
            .args(["switchover", "--cluster", "main", "--to", &to, "--yes", "--json", "--config", &config])
            .output()
            .expect("pgdr switchover")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = match serde_json::from_str::<WorkflowView>(&stdout) {
        Ok(v) => v,
        Err(_) => {
            let w = env.new_workflow("switchover", &seen, Duration::from_secs(5)).await;
            env.finished(&w.id, Duration::from_secs(120)).await
        }
    };
    env.print_workflow(&v);
    if !out.status.success() {
        eprintln!("[{}] pgdr switchover: {stdout} {}", env.name, String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), v)
}

/// Switchover under load through the proxy's writer endpoint (pgbench
/// `-M prepared`, 4 clients, and the drill's writers), with idle sessions
/// holding named prepared statements, and a client writing straight to the
/// old primary with `BEGIN READ WRITE` (not through the proxy, reconnecting
/// after errors): zero client errors through the proxy, every acknowledged
/// commit (the direct client's too) on the new primary, the idle sessions
/// and their statements kept, and at no 50 ms instant two servers that
/// accept a write. Prints the write pause the clients saw.
#[tokio::test(flavor = "multi_thread")]
async fn switchover_under_load_loses_nothing_and_errs_nothing() {
    let env = Env::start("switchover", Opts::default()).await;
    let before = env.cluster().await.expect("cluster");
    let old = before.primary.clone().expect("primary").to_string();
    let c = pgdr_drill::observer::connect(&env.writer, "writer", Duration::from_secs(10)).await.expect("connect");
    c.batch_execute(
        "create table sw_ledger (id bigserial primary key, client int not null, at timestamptz default now())",
    )
    .await
    .expect("create table");
    drop(c);
    // Idle sessions through the proxy, each with a named prepared statement.
    let mut idle = Vec::new();
    for i in 0..4 {
        let c = pgdr_drill::observer::connect(&env.writer, "writer", Duration::from_secs(10)).await.expect("idle");
        let st = c.prepare("insert into sw_ledger (client) values ($1) returning id").await.expect("prepare");
        c.query_one(&st, &[&(1000 + i)]).await.expect("prepared insert");
        idle.push((c, st));
    }
    let watch = WriteWatch::start(&env);
    let direct = direct_writer(&env, &old);
    let w = env.workload(2);
    let script = pgbench_script(&env.sb.dir);
    let port = env.cfg.proxies.iter().find(|p| p.region.as_str() == "east").expect("east").writer.port();
    let mut bench = Command::new("pgbench")
        .args(["-n", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-M", "prepared"])
        .args(["-c", "4", "-j", "2", "-T", "8", "-f"])
        .arg(&script)
        .arg("postgres")
        .env("PGPASSWORD", env.sb.password())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgbench");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from_ms = w.now_ms();
    let (ok, v) = switchover(&env, "east-2").await;
    let until_ms = w.now_ms();
    assert!(ok, "switchover failed");
    let bench_out = tokio::task::spawn_blocking(move || {
        let _ = bench.wait();
        let mut o = String::new();
        let mut e = String::new();
        use std::io::Read;
        if let Some(mut s) = bench.stdout.take() {
            let _ = s.read_to_string(&mut o);
        }
        if let Some(mut s) = bench.stderr.take() {
            let _ = s.read_to_string(&mut e);
        }
        (bench.wait().map(|s| s.success()).unwrap_or(false), o, e)
    })
    .await
    .expect("join");
    let record = w.stop().await;
    let direct_record = direct.stop().await;
    // The idle sessions and their statements moved to the new primary.
    for (i, (c, st)) in idle.iter().enumerate() {
        c.query_one(st, &[&(2000 + i as i32)])
            .await
            .expect("an idle session's prepared statement after the switchover");
    }
    let (ok, bout, berr) = bench_out;
    let processed: u64 = bout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pgbench summary:\n{bout}\n{berr}"));
    let failed_line = bout.lines().find(|l| l.starts_with("number of failed transactions")).unwrap_or("").to_owned();
    let primary = env.one_primary().await;
    watch.assert_never_two(env.name).await;
    let rows = env.sb.sql(&primary, "select count(*) from sw_ledger where client < 1000").await.expect("count");
    let present: u64 = rows[0][0].as_deref().and_then(|s| s.parse().ok()).expect("count");
    let paused_steps: u64 = [
        "pause_proxy",
        "stop_old_primary",
        "check_replayed",
        "raise_epoch",
        "set_sync_standbys",
        "promote",
        "resume_proxy",
    ]
    .iter()
    .filter_map(|s| step(&v, s).duration_ms)
    .sum();
    let pause = pgdr_drill::checker::rto_pause(&record, from_ms, until_ms);
    eprintln!(
        "[{}] pgbench: {processed} transactions, {failed_line}; rows on {primary}: {present}; steps from pause to resume {paused_steps}ms; longest time without an acknowledged write through the proxy: {}",
        env.name,
        pause.map(|p| format!("{:.3}s", p)).unwrap_or_else(|| "none acknowledged".into()),
    );
    let lost = env.check(&primary, &record, None).await;
    assert_eq!(lost, 0, "the drill's writers lost acknowledged commits");
    eprintln!("[{}] the client writing straight to {old}:", env.name);
    let direct_lost = env.check(&primary, &direct_record, None).await;
    assert_eq!(direct_lost, 0, "the client writing straight to the old primary lost acknowledged commits");
    assert_eq!(record.write_failures().count(), 0, "the drill's writers saw errors");
    assert!(ok, "pgbench failed:\n{bout}\n{berr}");
    assert!(!berr.contains("abort") && !berr.to_lowercase().contains("error"), "pgbench clients saw errors:\n{berr}");
    assert_eq!(primary, "east-2");
    assert_ne!(primary, old);
    assert!(processed > 0);
    assert_eq!(present, processed, "every acknowledged transaction inserted exactly one row");
    let after = env.cluster().await.expect("cluster");
    assert!(after.epoch > before.epoch);
    // The old primary is back as a replica of the new one.
    let rows = env.sb.sql(&old, "select pg_is_in_recovery()::text").await.expect("old primary answers");
    assert_eq!(rows[0][0].as_deref(), Some("true"));
}

/// A target that has not replayed the old primary's shutdown checkpoint
/// (its replay paused) is not promoted: the switchover fails, the old
/// primary is started again as it was (same epoch), the proxies resume and
/// writes through them work; at no 50 ms instant two servers take writes.
#[tokio::test(flavor = "multi_thread")]
async fn switchover_refused_when_the_target_has_not_replayed_restarts_the_old_primary() {
    let env = Env::start("switchover-refused", Opts::default()).await;
    let before = env.cluster().await.expect("cluster");
    let old = before.primary.clone().expect("primary").to_string();
    env.sb.sql("east-2", "select pg_wal_replay_pause()").await.expect("pause replay on the target");
    let watch = WriteWatch::start(&env);
    let (ok, v) = switchover(&env, "east-2").await;
    assert!(!ok, "the switchover succeeded although the target replays nothing");
    assert_eq!(v.state, "failed", "{v:#?}");
    let err = step(&v, "check_replayed").error.clone().unwrap_or_default();
    assert!(err.contains("has not replayed") && err.contains("started again"), "{err}");
    // Writes work again through the proxy, on the old primary, same epoch.
    wait_for("a write through the proxy", Duration::from_secs(30), || async {
        let c = pgdr_drill::observer::connect(&env.writer, "writer", Duration::from_secs(2)).await.ok()?;
        c.batch_execute("insert into pgdr_drill.ledger (id, writer) values (-1, -1) on conflict do nothing").await.ok()
    })
    .await;
    assert_eq!(env.one_primary().await, old);
    let after = env.cluster().await.expect("cluster");
    assert_eq!(after.epoch, before.epoch);
    assert_eq!(after.primary.map(|p| p.to_string()), Some(old));
    watch.assert_never_two(env.name).await;
    env.sb.sql("east-2", "select pg_wal_replay_resume()").await.expect("resume replay");
}

/// Synchronous replication (ANY 1): kill -9 of the primary under load, no
/// acknowledged commit is lost.
#[tokio::test(flavor = "multi_thread")]
async fn sync_mode_kill_primary_loses_no_acknowledged_commit() {
    let env = Env::start("sync", Opts { failover_on_crash: true, sync: true, ..Opts::default() }).await;
    let before = env.cluster().await.expect("cluster");
    let old = before.primary.clone().expect("primary").to_string();
    let names = wait_for("synchronous_standby_names on the primary", Duration::from_secs(30), || async {
        let rows = env.sb.sql(&old, "show synchronous_standby_names").await.ok()?;
        rows[0][0].clone().filter(|s| !s.is_empty())
    })
    .await;
    eprintln!("[{}] synchronous_standby_names = {names}", env.name);
    let seen = Env::ids(&env.workflows().await);
    let w = env.workload(4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fault_ms = w.now_ms();
    sig(env.postmaster_pid(&old), Signal::SIGKILL);
    let wf = env.new_workflow("failover", &seen, Duration::from_secs(30)).await;
    let wf = env.finished(&wf.id, Duration::from_secs(60)).await;
    env.print_workflow(&wf);
    assert_eq!(wf.state, "succeeded", "{wf:#?}");
    wait_recovered(&w, fault_ms).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let record = w.stop().await;
    let primary = env.one_primary().await;
    assert_ne!(primary, old);
    assert!(env.cluster().await.expect("cluster").epoch > before.epoch);
    let lost = env.check(&primary, &record, Some(fault_ms)).await;
    assert_eq!(lost, 0, "sync mode lost acknowledged commits");
}

fn pgdr(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(PGDR).args(args).output().expect("run pgdr");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `status --json` without what moves by itself (positions, lag).
fn status_shape(config: &str) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for k in ["lsn", "lag_bytes", "lag_seconds", "detection"] {
                    m.remove(k);
                }
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let (code, out, err) = pgdr(&["status", "--json", "--config", config]);
    assert_eq!(code, 0, "{err}");
    let mut v: Value = serde_json::from_str(&out).expect("status json");
    strip(&mut v);
    v
}

/// A dry run changes nothing; an approval gate holds until `pgdr approve`;
/// a second role change while one runs is refused with a clear message.
#[tokio::test(flavor = "multi_thread")]
async fn dry_run_approval_gate_and_one_workflow_at_a_time() {
    let env = Env::start("gates", Opts::default()).await;
    let config = env.sb.config.display().to_string();
    let before = env.cluster().await.expect("cluster");
    let old = before.primary.clone().expect("primary").to_string();
    let seen = Env::ids(&env.workflows().await);

    // Dry run.
    let status_before = status_shape(&config);
    let (code, out, err) =
        pgdr(&["switchover", "--cluster", "main", "--to", "east-2", "--dry-run", "--config", &config]);
    assert_eq!(code, 0, "{out} {err}");
    eprintln!("[{}] dry run:\n{out}", env.name);
    assert!(out.contains("dry run") && out.contains("promote") && out.contains("would promote east-2"), "{out}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(status_shape(&config), status_before, "the dry run changed the cluster");
    assert!(env.workflows().await.iter().all(|w| seen.contains(&w.id)), "the dry run started a workflow");
    assert_eq!(env.cluster().await.expect("cluster").epoch, before.epoch);

    // Approval gate.
    let (code, out, err) = pgdr(&[
        "switchover",
        "--cluster",
        "main",
        "--to",
        "east-2",
        "--approval",
        "--no-wait",
        "--yes",
        "--json",
        "--config",
        &config,
    ]);
    assert_eq!(code, 0, "{out} {err}");
    let started: Value = serde_json::from_str(&out).expect("json");
    let id = started["id"].as_str().expect("id").to_owned();
    wait_for("the gate", Duration::from_secs(10), || async {
        (env.api.workflow(&id).await.ok()?.state == "waiting_approval").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = env.api.workflow(&id).await.expect("workflow");
    assert_eq!(v.state, "waiting_approval", "the gate did not hold");
    assert_eq!(env.writable_primaries().await, vec![old.clone()]);

    // A second role change is refused while the first holds the cluster.
    let (code, out, err) = pgdr(&["switchover", "--cluster", "main", "--to", "west-1", "--yes", "--config", &config]);
    eprintln!("[{}] second switchover: exit {code}: {}", env.name, err.trim());
    assert_eq!(code, 2, "{out} {err}");
    assert!(err.contains("busy") && err.contains(&id), "not a clear refusal: {err}");

    // Approve: it runs to the end.
    let (code, out, err) = pgdr(&["approve", &id, "--config", &config]);
    assert_eq!(code, 0, "{out} {err}");
    let v = env.finished(&id, Duration::from_secs(60)).await;
    env.print_workflow(&v);
    assert_eq!(v.state, "succeeded");
    // The approver is the token's holder (the sandbox's operator token), not
    // a name the client wrote.
    let gate = v.steps.iter().find(|s| s.name == "approve").expect("the approval step");
    assert_eq!(gate.output.as_ref().and_then(|o| o["approved_by"].as_str()), Some("operator"), "{gate:?}");
    assert_eq!(env.one_primary().await, "east-2");
    let after = env.cluster().await.expect("cluster");
    assert_eq!(after.epoch.0, before.epoch.0 + 1);
}

/// The primary cut off from the controller only (the controller frozen
/// with SIGSTOP, so no renewal is granted): the other agents still support
/// it, so by design it keeps taking writes (a control-plane outage alone
/// never demotes a healthy primary) and nothing is promoted. Then, with the
/// other agents' support withdrawn (as the failover's fence step does), the
/// same lapse makes it fence itself. See docs/failover-math.md.
#[tokio::test(flavor = "multi_thread")]
async fn primary_cut_off_from_the_controller() {
    let mut env = Env::start("partition", Opts::default()).await;
    let before = env.cluster().await.expect("cluster");
    let old = before.primary.clone().expect("primary").to_string();
    let seen = Env::ids(&env.workflows().await);
    let t = &env.cfg.timing.clone();
    let lapse = t.lease_ttl + t.lease_margin + t.lease_renew * 4;

    // 1. Controller frozen, agents support the primary: it keeps writes.
    sig(env.run_pid(), Signal::SIGSTOP);
    tokio::time::sleep(lapse).await;
    let writable = env.writable_primaries().await;
    let wrote = env
        .sb
        .sql(&old, "create table if not exists still_primary (x int); insert into still_primary values (1)")
        .await;
    sig(env.run_pid(), Signal::SIGCONT);
    eprintln!(
        "[{}] controller frozen {lapse:?}: writable primaries {writable:?}, write on {old}: {:?}",
        env.name,
        wrote.as_ref().map(|_| "ok")
    );
    assert_eq!(writable, vec![old.clone()], "a control-plane outage changed the primary");
    assert!(wrote.is_ok(), "the primary stopped taking writes: {wrote:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(env.workflows().await.iter().all(|w| seen.contains(&w.id)), "something was started");
    assert_eq!(env.cluster().await.expect("cluster").epoch, before.epoch);
    env.wait_ready().await;

    // 2. Support withdrawn, controller frozen again: it fences itself.
    let token = Some(pgdr_config::Redacted::from(env.sb.token()));
    for n in env.node_names().into_iter().filter(|n| *n != old) {
        let peer = pgdr_api::peer::PeerClient::new_with(
            &env.node(&n).agent,
            token.clone(),
            Duration::from_secs(2),
            env.sb.http_tls(),
        )
        .expect("peer");
        peer.withdraw(&pgdr_api::peer::WithdrawRequest {
            cluster: pgdr_model::ClusterName::new("main"),
            primary: pgdr_model::NodeName::new(&old),
            epoch: before.epoch,
        })
        .await
        .expect("withdraw");
    }
    sig(env.run_pid(), Signal::SIGSTOP);
    let frozen = Instant::now();
    let fenced = wait_for("the primary to fence itself", Duration::from_secs(30), || async {
        env.writable_primaries().await.is_empty().then(|| frozen.elapsed())
    })
    .await;
    sig(env.run_pid(), Signal::SIGCONT);
    // The last grant came at most one renewal interval before the freeze,
    // so the controller could presume the node fenced from this point on.
    let presumed = (t.lease_ttl + t.lease_margin).saturating_sub(t.lease_renew);
    eprintln!(
        "[{}] without support the primary fenced itself {:.2}s after the controller froze; the controller presumes it fenced no earlier than {:.2}s (lease {} + margin {} after the last grant): {:.2}s to spare",
        env.name,
        fenced.as_secs_f64(),
        presumed.as_secs_f64(),
        pgdr_model::format_duration(t.lease_ttl),
        pgdr_model::format_duration(t.lease_margin),
        presumed.as_secs_f64() - fenced.as_secs_f64()
    );
    // Whatever the controller does next, the cluster ends with one primary.
    let primary = env.one_primary().await;
    eprintln!("[{}] primary afterwards: {primary}", env.name);
}

/// The default `on_crash = "restart-first"`: kill -9 of the postmaster while
/// its host answers restarts it in place. Nothing is promoted, the epoch
/// stays, crash recovery loses no acknowledged commit (even in async mode),
/// and the proxies held by the suspicion are resumed on the same primary.
#[tokio::test(flavor = "multi_thread")]
async fn crash_restarts_in_place_by_default() {
    let env = Env::start("restart-first", Opts::default()).await;
    let before = env.cluster().await.expect("cluster");
    let old = before.primary.clone().expect("primary").to_string();
    let seen = Env::ids(&env.workflows().await);
    let w = env.workload(4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fault_ms = w.now_ms();
    sig(env.postmaster_pid(&old), Signal::SIGKILL);
    let wf = env.new_workflow("failover", &seen, Duration::from_secs(30)).await;
    let wf = env.finished(&wf.id, Duration::from_secs(60)).await;
    env.print_workflow(&wf);
    assert_eq!(wf.state, "succeeded", "{wf:#?}");
    let restart = step(&wf, "restart_in_place").output.clone().expect("restart output");
    eprintln!("[{}] restart_in_place: {restart}", env.name);
    assert_eq!(restart["restarted"], Value::Bool(true), "not restarted in place: {restart}");
    wait_recovered(&w, fault_ms).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let record = w.stop().await;
    assert_eq!(env.one_primary().await, old);
    let after = env.cluster().await.expect("cluster");
    assert_eq!(after.epoch, before.epoch, "nothing was promoted");
    let lost = env.check(&old, &record, Some(fault_ms)).await;
    assert_eq!(lost, 0, "crash recovery lost acknowledged commits");
}

/// Issue 14, finding 1, as tried on a sandbox: after a host-loss failover,
/// the agent of the third node restarted, the controller stopped, and the
/// old primary's PostgreSQL started as it was (a host coming back with
/// PostgreSQL enabled at boot), then its agent. The old primary must not
/// take a single write: every node is asked directly for a real write every
/// 50 ms, and two writable servers at any instant fail the test.
#[tokio::test(flavor = "multi_thread")]
async fn a_returning_old_primary_never_takes_a_write() {
    let mut env = Env::start("host-returns", Opts::default()).await;
    let old = env.cluster().await.expect("cluster").primary.expect("primary").to_string();
    let seen = Env::ids(&env.workflows().await);
    sig(env.agent_pid(&old), Signal::SIGKILL);
    sig(env.postmaster_pid(&old), Signal::SIGKILL);
    let wf = env.new_workflow("failover", &seen, Duration::from_secs(30)).await;
    let wf = env.finished(&wf.id, Duration::from_secs(60)).await;
    env.print_workflow(&wf);
    assert_eq!(wf.state, "succeeded", "{wf:#?}");
    let new = env.one_primary().await;
    assert_ne!(new, old);
    let cluster = env.cfg.cluster("main").expect("main").clone();
    let probe = pgdr_drill::writable::WritableProbe::start(&cluster, env.cfg.tls.as_ref()).expect("overlap checker");
    // The third node's agent restarts (it forgets what lived only in memory).
    let third = env.node_names().into_iter().find(|n| *n != old && *n != new).expect("a third node");
    let pid = env.agent_pid(&third);
    sig(pid, Signal::SIGTERM);
    wait_for("the agent to exit", Duration::from_secs(20), || async { (!pid_alive(pid)).then_some(()) }).await;
    env.hosts.start_agent(&env.node(&third)).await.expect("restart the third agent");
    // No controller from here on.
    env.kill_run();
    // The old host comes back: PostgreSQL first (started at boot), then its agent.
    env.hosts.start_postgres(&env.node(&old)).await.expect("start the old primary's PostgreSQL");
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.hosts.start_agent(&env.node(&old)).await.expect("start the old primary's agent");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = probe.stop().await;
    let timeline =
        log.analyse(log.nodes.iter().flat_map(|(_, p)| p.first()).map(|p| p.sent_unix_ms).fold(f64::MAX, f64::min));
    eprintln!("[{}] {}", env.name, timeline.describe_overlaps());
    let old_probes = &log.nodes.iter().find(|(n, _)| *n == old).expect("old primary's lane").1;
    let answered: Vec<_> =
        old_probes.iter().filter(|p| p.answer != pgdr_drill::writable::Answer::Unreachable).collect();
    eprintln!(
        "[{}] {old}: {} probes, {} answered, {} writable",
        env.name,
        old_probes.len(),
        answered.len(),
        answered.iter().filter(|p| p.answer == pgdr_drill::writable::Answer::Writable).count()
    );
    assert!(!answered.is_empty(), "the old primary never answered: the test saw nothing");
    assert!(
        answered.iter().all(|p| p.answer == pgdr_drill::writable::Answer::Refused),
        "the returning old primary took a write: {:?}",
        answered.iter().find(|p| p.answer == pgdr_drill::writable::Answer::Writable)
    );
    assert!(timeline.overlaps.is_empty(), "two writable servers: {:?}", timeline.overlaps);
}

/// The writer name's A records as the test's BIND answers them.
async fn dns_answer(env: &Env) -> Vec<String> {
    let ns = env.named.as_ref().expect("named");
    pgdr_dns::lookup(ns.addr, DNS_NAME, "A", Duration::from_secs(2)).await.unwrap_or_default()
}

/// `[clusters.dns]` on a real BIND 9 (TSIG-protected dynamic zone on a
/// loopback port): the controller points the writer name at the primary's
/// region when it starts; a failover to the other region moves it there in
/// its `update_dns` step, after the proxy resumed (checked with a real DNS
/// query); a switchover back while BIND is frozen (SIGSTOP) still succeeds,
/// journals the failed update and a `dns_update_failed` event, and the
/// background retry moves the name once BIND answers again. With a wrong
/// secret, the update is refused (BADSIG) and a `dns_update_failed` event
/// says so.
#[tokio::test(flavor = "multi_thread")]
async fn dns_writer_name_follows_the_primary_across_regions() {
    let mut env = Env::start("dns", Opts { failover_on_crash: true, dns: true, ..Opts::default() }).await;
    let before = env.cluster().await.expect("cluster");
    let old = before.primary.clone().expect("primary").to_string();
    assert!(env.node(&old).region.as_str() == "east", "the sandbox's primary is in east");
    wait_for("the name to point at east", Duration::from_secs(20), || async {
        (dns_answer(&env).await == [DNS_EAST]).then_some(())
    })
    .await;

    // Failover: east's primary killed, west-1 promoted (region_preference).
    let seen = Env::ids(&env.workflows().await);
    sig(env.postmaster_pid(&old), Signal::SIGKILL);
    let wf = env.new_workflow("failover", &seen, Duration::from_secs(30)).await;
    let wf = env.finished(&wf.id, Duration::from_secs(60)).await;
    env.print_workflow(&wf);
    assert_eq!(wf.state, "succeeded", "{wf:#?}");
    let names: Vec<&str> = wf.steps.iter().map(|s| s.name.as_str()).collect();
    let at = |n: &str| names.iter().position(|s| *s == n).unwrap_or_else(|| panic!("no step {n}"));
    assert!(at("resume_proxy") < at("update_dns"), "the name moves after the proxy: {names:?}");
    let out = step(&wf, "update_dns").output.clone().expect("update_dns output");
    eprintln!("[dns] failover update_dns: {out}");
    assert_eq!((out["updated"].as_bool(), out["region"].as_str()), (Some(true), Some("west")), "{out}");
    assert_eq!(out["region_changed"], true);
    assert_eq!(dns_answer(&env).await, [DNS_WEST], "a real query right after the failover");

    // Switchover back to east while BIND is frozen: the role change does
    // not wait for DNS and is not undone by it.
    let ns_pid = env.named.as_ref().expect("named").pid() as i32;
    sig(ns_pid, Signal::SIGSTOP);
    let (ok, v) = switchover(&env, "east-2").await;
    let out = step(&v, "update_dns").output.clone().expect("update_dns output");
    eprintln!("[dns] switchover update_dns with BIND frozen: {out}");
    sig(ns_pid, Signal::SIGCONT);
    let thawed = Instant::now();
    assert!(ok, "the switchover failed: {v:#?}");
    assert_eq!(out["updated"], false, "{out}");
    assert_eq!(out["error_kind"], "timeout", "{out}");
    assert_eq!(env.one_primary().await, "east-2");
    let events = env.api.events(None).await.expect("events");
    assert!(events.iter().any(|e| e["state"] == "dns_update_failed"), "no dns_update_failed event");
    wait_for("the background retry to move the name to east", Duration::from_secs(30), || async {
        (dns_answer(&env).await == [DNS_EAST]).then_some(())
    })
    .await;
    eprintln!("[dns] the background retry had moved the name {:.1}s after BIND thawed", thawed.elapsed().as_secs_f64());

    // A wrong secret (the file is read at every update): the restarted
    // controller's first sync is refused by BIND and reported as such.
    let key = env.sb.dir.join("secrets").join("dns-main.key");
    std::fs::write(&key, "key \"pgdr-main\" { algorithm hmac-sha256; secret \"d3Jvbmctc2VjcmV0\"; };\n").expect("key");
    env.kill_run();
    env.start_run();
    let refused = wait_for("a dns_update_failed event naming BADSIG", Duration::from_secs(30), || async {
        let events = env.api.events(None).await.ok()?;
        events
            .into_iter()
            .find(|e| e["state"] == "dns_update_failed" && e["message"].as_str().is_some_and(|m| m.contains("BADSIG")))
    })
    .await;
    eprintln!("[dns] wrong secret: {}", refused["message"]);
    assert!(!refused["message"].as_str().unwrap_or("").contains("d3Jvbmct"), "the secret is in the event");
    assert_eq!(dns_answer(&env).await, [DNS_EAST], "a refused update changes nothing");
}

/// Issue 17, the freeze rule. A frozen cluster whose primary's postmaster
/// is killed gets no automatic failover: checked every 100 ms while frozen
/// (the same epoch and primary in the store, no failover workflow, no
/// second writable server) until a `failover_blocked` event naming the rule
/// has been there for 3 s; an operator's failover still runs; unfrozen, the
/// controller fails over on its own again.
#[tokio::test(flavor = "multi_thread")]
async fn frozen_cluster_gets_no_automatic_failover_but_an_operator_one_runs() {
    let mut env = Env::start("freeze", Opts { failover_on_crash: true, ..Opts::default() }).await;
    let config = env.sb.config.display().to_string();
    let before = env.cluster().await.expect("cluster");
    let old = before.primary.clone().expect("primary").to_string();
    let seen = Env::ids(&env.workflows().await);

    let (code, out, err) = pgdr(&["freeze", "--cluster", "main", "--reason", "maintenance", "--config", &config]);
    assert_eq!(code, 0, "{out} {err}");
    eprintln!("[{}] pgdr freeze:\n{out}", env.name);
    assert!(out.contains("FROZEN by operator") && out.contains("maintenance"), "{out}");
    let (code, out, err) = pgdr(&["rules", "--json", "--config", &config]);
    assert_eq!(code, 0, "{out} {err}");
    let rules: Value = serde_json::from_str(&out).expect("rules json");
    let names: Vec<&str> =
        rules["rules"].as_array().expect("rules").iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["one-writable-primary", "route-epoch-primary", "rpo-lag", "freeze"]);
    assert_eq!(rules["clusters"][0]["frozen"]["by"], "operator", "{rules}");
    assert!(rules["global_freeze"].is_null(), "{rules}");
    let view = env.cluster().await.expect("cluster");
    assert_eq!(view.frozen.as_ref().map(|f| f.by.as_str()), Some("operator"));
    // `pgdr status` shows it, beside the store's epoch.
    let (code, out, err) = pgdr(&["status", "--config", &config]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("FROZEN (no automatic failover): by operator") && out.contains("maintenance"), "{out}");
    assert!(out.contains(&format!("epoch {}  primary {old}", view.epoch)), "{out}");
    let (code, out, err) = pgdr(&["status", "--json", "--config", &config]);
    assert_eq!(code, 0, "{out} {err}");
    let status: Value = serde_json::from_str(&out).expect("status json");
    let held = &status["clusters"][0]["controller"];
    assert_eq!(
        (held["epoch"].as_u64(), held["primary"].as_str()),
        (Some(view.epoch.0), Some(old.as_str())),
        "{status}"
    );
    assert!(held["frozen"].as_str().is_some_and(|f| f.contains("operator") && f.contains("maintenance")), "{status}");

    let killed = Instant::now();
    sig(env.postmaster_pid(&old), Signal::SIGKILL);
    let mut blocked_at: Option<Instant> = None;
    let mut polls = 0;
    while blocked_at.is_none_or(|b| b.elapsed() < Duration::from_secs(3)) {
        assert!(killed.elapsed() < Duration::from_secs(30), "no failover_blocked event 30 s after the kill");
        let c = env.cluster().await.expect("cluster");
        assert_eq!(
            (c.epoch, c.primary.as_ref().map(|p| p.to_string())),
            (before.epoch, Some(old.clone())),
            "frozen, yet the role changed"
        );
        let new: Vec<WorkflowView> = env.workflows().await.into_iter().filter(|w| !seen.contains(&w.id)).collect();
        assert!(new.is_empty(), "frozen, yet a workflow started: {new:?}");
        assert!(env.writable_primaries().await.is_empty(), "frozen: the killed primary came back writable");
        if blocked_at.is_none() {
            let events = env.api.events(None).await.expect("events");
            if let Some(e) = events.iter().find(|e| e["state"] == "failover_blocked") {
                let msg = e["message"].as_str().unwrap_or("");
                eprintln!("[{}] {:.1}s after the kill: {msg}", env.name, killed.elapsed().as_secs_f64());
                assert!(msg.contains("refused by rule freeze"), "{msg}");
                blocked_at = Some(Instant::now());
            }
        }
        polls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "[{}] no role change in {polls} polls over {:.1}s while frozen",
        env.name,
        killed.elapsed().as_secs_f64()
    );
    let view = env.cluster().await.expect("cluster");
    assert!(view.detection.contains("frozen"), "{}", view.detection);

    // An operator's failover is not gated.
    let (code, out, err) = pgdr(&["failover", "--cluster", "main", "--yes", "--json", "--config", &config]);
    assert_eq!(code, 0, "{out} {err}");
    let wf = env.new_workflow("failover", &seen, Duration::from_secs(10)).await;
    let wf = env.finished(&wf.id, Duration::from_secs(60)).await;
    env.print_workflow(&wf);
    assert_eq!(wf.state, "succeeded", "{wf:#?}");
    let primary = env.one_primary().await;
    assert_ne!(primary, old);
    let after = env.cluster().await.expect("cluster");
    assert!(after.epoch > before.epoch);

    // Unfrozen: back to normal, the controller fails over by itself.
    let (code, out, err) = pgdr(&["unfreeze", "--cluster", "main", "--config", &config]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(env.cluster().await.expect("cluster").frozen.is_none());
    let (_, out, _) = pgdr(&["status", "--json", "--config", &config]);
    let status: Value = serde_json::from_str(&out).expect("status json");
    assert!(status["clusters"][0]["controller"]["frozen"].is_null(), "{status}");
    let events = env.api.events(None).await.expect("events");
    for state in ["frozen", "unfrozen"] {
        assert!(events.iter().any(|e| e["state"] == state), "no {state} event");
    }
    env.wait_ready().await;
    let seen = Env::ids(&env.workflows().await);
    sig(env.postmaster_pid(&primary), Signal::SIGKILL);
    let wf = env.new_workflow("failover", &seen, Duration::from_secs(30)).await;
    let wf = env.finished(&wf.id, Duration::from_secs(60)).await;
    env.print_workflow(&wf);
    assert_eq!(wf.state, "succeeded", "{wf:#?}");
    assert_ne!(env.one_primary().await, primary);
}
