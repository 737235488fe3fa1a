//! End-to-end: the `pgdr` binary and real agent processes over a sandbox of
//! real PostgreSQL. `sandbox up/down` leave nothing behind, `status` sees
//! the topology streaming, an unreachable agent is reported, and promote,
//! rewind, upstream and rebuild work through the agents.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgdr_api::ApiError;
use pgdr_api::agent::{
    Endpoint, FenceMode, FenceRequest, PromoteRequest, RebuildRequest, RewindRequest, StopMode, StopRequest,
    UpstreamRequest,
};
use pgdr_model::{Epoch, Role};
use pgdr_sandbox::{Sandbox, SandboxGuard};
use serde_json::Value;

const PGDR: &str = env!("CARGO_BIN_EXE_pgdr");

fn pgdr(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(PGDR).args(args).output().expect("run pgdr");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A temp folder whose sandbox is torn down on drop, even when a test fails.
struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        let tmp = tempfile::Builder::new().prefix("pgdr-e2e-").tempdir_in("/tmp").expect("tempdir");
        Command::new("chmod").arg("755").arg(tmp.path()).status().expect("chmod");
        Dir { tmp }
    }

    fn sandbox(&self) -> PathBuf {
        self.tmp.path().join("sb")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if let Err(e) = pgdr_sandbox::down(&self.sandbox(), false) {
            eprintln!("cleanup failed: {e}");
        }
    }
}

fn alive(pid: i64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
}

fn listening(port: u64) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port as u16)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn status_json(config: &Path) -> (i32, Value) {
    let (code, out, err) = pgdr(&["status", "--json", "--config", &config.display().to_string()]);
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out} {err}"));
    (code, v)
}

#[tokio::test(flavor = "multi_thread")]
async fn up_status_down_through_the_binary() {
    let dir = Dir::new();
    let sb_dir = dir.sandbox();
    let d = sb_dir.display().to_string();
    let (code, out, err) = pgdr(&["sandbox", "up", "--dir", &d, "--json"]);
    assert_eq!(code, 0, "sandbox up failed: {err}");
    let up: Value = serde_json::from_str(&out).expect("up --json");
    let nodes = up["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    let roles: Vec<(&str, &str)> =
        nodes.iter().map(|n| (n["region"].as_str().unwrap_or(""), n["role"].as_str().unwrap_or(""))).collect();
    assert_eq!(roles, [("east", "primary"), ("east", "replica"), ("west", "standby")]);
    assert!(nodes[0]["uri"].as_str().is_some_and(|u| u.starts_with("postgresql://postgres:")));

    // up twice: a clear error, exit 2.
    let (code, _, err) = pgdr(&["sandbox", "up", "--dir", &d]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already up"), "{err}");

    // Writes on the primary reach both replicas: poll until lag is 0.
    let sb = Sandbox::open(&sb_dir).expect("open").expect("a sandbox");
    agents_speak_only_mutual_tls(&sb).await;
    sb.sql("east-1", "create table t (x int); insert into t select generate_series(1, 10000)").await.expect("write");
    let config = sb.config.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let (code, v) = status_json(&config);
        assert_eq!(code, 0);
        let c = &v["clusters"][0];
        let caught_up = c["nodes"].as_array().is_some_and(|ns| {
            ns.iter().filter(|n| n["role"] == "replica").count() == 2
                && ns
                    .iter()
                    .filter(|n| n["role"] == "replica")
                    .all(|n| n["lag_bytes"] == 0 && n["health"] == "streaming")
        });
        if caught_up {
            break v;
        }
        assert!(Instant::now() < deadline, "replicas did not catch up: {v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let c = &report["clusters"][0];
    assert_eq!(c["name"], "main");
    assert_eq!(c["tier"], "gold");
    assert_eq!(c["primary"], "east-1");
    assert!(c["writer"].as_str().is_some_and(|w| w.starts_with("postgresql://127.0.0.1:")));
    // The proxies take only TLS: the URI a user copies says how to check them.
    assert!(
        c["writer"]
            .as_str()
            .is_some_and(|w| w.contains("?sslmode=verify-full&sslrootcert=") && w.ends_with("/tls/ca.crt")),
        "{}",
        c["writer"]
    );
    assert_eq!(c["endpoints"].as_array().map(Vec::len), Some(2));
    let ns = c["nodes"].as_array().expect("nodes");
    assert_eq!(ns.iter().filter(|n| n["role"] == "primary").count(), 1);
    for n in ns {
        assert_eq!(n["reachable"], true);
        assert_eq!(n["up"], true);
        assert_eq!(n["timeline"], 1);
        assert!(n["data_dir"].as_str().is_some_and(|p| p.starts_with(&d)));
        if n["role"] == "replica" {
            assert_eq!(n["sync_state"], "async");
        }
    }
    let (code, table, _) = pgdr(&["status", "--config", &config.display().to_string()]);
    assert_eq!(code, 0);
    assert!(table.contains("east-1") && table.contains("streaming"), "{table}");

    // An unreachable agent is reported; the command still answers.
    let west = sb.node("west-1").expect("west-1");
    let pid = west.agent_pid.expect("agent pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).expect("kill agent");
    let deadline = Instant::now() + Duration::from_secs(10);
    while listening(u64::from(west.agent_port)) {
        assert!(Instant::now() < deadline, "agent did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, v) = status_json(&config);
    assert_eq!(code, 0);
    let w = v["clusters"][0]["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["name"] == "west-1"))
        .cloned()
        .expect("west-1");
    assert_eq!(w["reachable"], false);
    assert_eq!(w["health"], "unreachable");
    assert!(w["error"].as_str().is_some_and(|e| e.contains("refused")), "{w}");
    assert_eq!(v["clusters"][0]["primary"], "east-1");

    // A backend busy in a loop outlives its postmaster's SIGKILL (it would
    // notice only at its next wait): down stops it too.
    let busy = {
        let sb = Sandbox::open(&sb_dir).expect("open").expect("a sandbox");
        tokio::spawn(async move { sb.sql("east-1", "DO $$BEGIN LOOP END LOOP; END$$").await })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let backend: i32 = loop {
        let rows = sb
            .sql("east-1", "SELECT pid FROM pg_stat_activity WHERE query LIKE 'DO $$BEGIN LOOP%'")
            .await
            .expect("pg_stat_activity");
        if let Some(pid) = rows.first().and_then(|r| r[0].as_deref()).and_then(|p| p.parse().ok()) {
            break pid;
        }
        assert!(Instant::now() < deadline, "the busy backend did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pid_file = sb.node("east-1").expect("east-1").data_dir.join("postmaster.pid");
    let postmaster: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse().ok())
        .expect("postmaster.pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(postmaster), nix::sys::signal::Signal::SIGKILL)
        .expect("kill the postmaster");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(alive(i64::from(backend)), "the backend {backend} outlives its postmaster (what down must clean up)");

    // down: no recorded process alive, no recorded port listening.
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(sb_dir.join("sandbox.json")).expect("record")).expect("json");
    let (code, out, err) = pgdr(&["sandbox", "down", "--dir", &d]);
    assert_eq!(code, 0, "{out} {err}");
    for n in record["nodes"].as_array().expect("nodes") {
        for key in ["agent_pid", "postmaster_pid"] {
            let pid = n[key].as_i64().expect("pid");
            assert!(!alive(pid), "{key} {pid} still alive");
        }
        for key in ["port", "agent_port"] {
            let port = n[key].as_u64().expect("port");
            assert!(!listening(port), "port {port} still listening");
        }
    }
    assert!(!alive(i64::from(backend)), "the orphaned backend {backend} is still alive after down");
    assert!(out.contains("left behind by a killed postmaster"), "{out}");
    busy.abort();
    // down twice: a no-op success; status now reaches nobody (exit 1).
    let (code, out, _) = pgdr(&["sandbox", "down", "--dir", &d]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");
    let (code, v) = status_json(&config);
    assert_eq!(code, 1);
    assert_eq!(v["clusters"][0]["primary"], Value::Null);
    // The folder is kept until --purge.
    assert!(sb_dir.join("pgdr.toml").is_file());
    let (code, _, _) = pgdr(&["sandbox", "down", "--dir", &d, "--purge"]);
    assert_eq!(code, 0);
    assert!(!sb_dir.exists());
}

/// The agents serve HTTPS only, with the sandbox's CA, to clients showing a
/// certificate of that CA: plain HTTP, a client trusting another CA, and a
/// client without a certificate all fail; the sandbox's own client works.
async fn agents_speak_only_mutual_tls(sb: &Sandbox) {
    let agent = sb.node("east-1").expect("east-1").agent.clone();
    let token: Option<pgdr_config::Redacted> = Some(sb.token().into());
    assert!(sb.http_tls().is_tls(), "the sandbox turns TLS on");
    sb.agent("east-1").expect("client").health().await.expect("the sandbox's own client (CA + client cert)");

    let plain = pgdr_api::agent::AgentClient::new(&agent, token.clone()).expect("client");
    let e = plain.health().await.expect_err("plain HTTP must be refused");
    eprintln!("plain HTTP: {e}");

    let tls = sb.dir.join("tls");
    let other = tempfile::tempdir().expect("tempdir");
    let ca = pgdr_tls::ca::Authority::generate("another CA").expect("ca");
    let other_ca = other.path().join("ca.crt");
    std::fs::write(&other_ca, ca.cert_pem()).expect("write");
    let id = pgdr_tls::Identity { cert: tls.join("client.crt"), key: tls.join("client.key") };
    let stranger = pgdr_api::HttpTls::new(&other_ca, Some(&id)).expect("tls");
    let e = pgdr_api::agent::AgentClient::new_with(&agent, token.clone(), &stranger)
        .expect("client")
        .health()
        .await
        .expect_err("a server certificate from an unknown CA must be refused by the client");
    eprintln!("unknown CA: {e}");

    let no_cert = pgdr_api::HttpTls::new(&tls.join("ca.crt"), None).expect("tls");
    let e = pgdr_api::agent::AgentClient::new_with(&agent, token.clone(), &no_cert)
        .expect("client")
        .health()
        .await
        .expect_err("a client without a certificate must be refused (mTLS)");
    eprintln!("no client certificate: {e}");

    // A client certificate from another CA is refused too.
    let leaf = ca.issue("stranger", &["127.0.0.1".to_owned()]).expect("leaf");
    std::fs::write(other.path().join("s.crt"), &leaf.cert_pem).expect("crt");
    std::fs::write(other.path().join("s.key"), &leaf.key_pem).expect("key");
    let foreign = pgdr_tls::Identity { cert: other.path().join("s.crt"), key: other.path().join("s.key") };
    let foreign = pgdr_api::HttpTls::new(&tls.join("ca.crt"), Some(&foreign)).expect("tls");
    pgdr_api::agent::AgentClient::new_with(&agent, token, &foreign)
        .expect("client")
        .health()
        .await
        .expect_err("a client certificate from another CA must be refused");
}

async fn wait_streaming(sb: &Sandbox, upstream: &str, replica: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = sb
            .sql(
                upstream,
                &format!(
                    "select 1 from pg_stat_replication where application_name = '{replica}' and state = 'streaming'"
                ),
            )
            .await
            .unwrap_or_default();
        if !rows.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{replica} does not stream from {upstream}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_row(sb: &Sandbox, node: &str, query: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = sb
            .sql(node, query)
            .await
            .ok()
            .and_then(|r| r.into_iter().next())
            .and_then(|r| r.into_iter().next())
            .flatten();
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{node}: {query} gave {got:?}, expected {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn promote_rewind_upstream_rebuild_through_agents() {
    let sb = SandboxGuard::start_temp(Sandbox::builder(), Path::new(PGDR)).await.expect("sandbox up");
    let e1 = sb.agent("east-1").expect("agent");
    let e2 = sb.agent("east-2").expect("agent");
    let w1 = sb.agent("west-1").expect("agent");
    let epoch = Epoch(1);
    let east2 = sb.node("east-2").expect("east-2");
    let from_e2 = Endpoint { host: east2.host.clone(), port: east2.port, node: None };

    sb.sql("east-1", "create table t (x text); insert into t values ('before')").await.expect("write");
    // Switchover: fence the old primary by a clean stop (its last WAL reaches
    // both replicas), promote east-2.
    let r = e1.fence(&FenceRequest { epoch, mode: FenceMode::Stop }).await.expect("fence");
    assert!(r.changed);
    let r = e2.promote(&PromoteRequest { epoch, timeout_ms: None }).await.expect("promote");
    assert!(r.changed, "{r:?}");
    let again = e2.promote(&PromoteRequest { epoch, timeout_ms: None }).await.expect("promote again");
    assert!(!again.changed, "a second promote is a no-op: {again:?}");
    let s = e2.status().await.expect("status");
    assert_eq!(s.role, Role::Primary);
    assert_eq!(s.timeline.map(|t| t.0), Some(2));
    sb.sql("east-2", "insert into t values ('after')").await.expect("the new primary takes writes");

    // A stale epoch is refused.
    match e2.start(Epoch(0)).await {
        Err(ApiError::StaleEpoch { seen, .. }) => assert_eq!(seen, epoch),
        other => panic!("expected 409, got {other:?}"),
    }

    // west-1 follows the new primary.
    let r = w1
        .upstream(&UpstreamRequest { epoch, host: from_e2.host.clone(), port: from_e2.port, node: None, slot: None })
        .await
        .expect("upstream");
    assert!(r.changed, "{r:?}");
    wait_streaming(&sb, "east-2", "west-1").await;
    wait_row(&sb, "west-1", "select count(*) from t where x = 'after'", "1").await;

    // The old primary diverges (started alone, takes a write), then is
    // stopped and rewound to follow the new primary.
    assert!(e1.start(epoch).await.expect("start old primary").changed);
    sb.sql("east-1", "insert into t values ('diverged')").await.expect("divergent write");
    let r = e1.rewind(&RewindRequest { epoch, from: from_e2.clone(), slot: None }).await;
    match &r {
        Err(ApiError::Failed { kind, .. }) => {
            assert_eq!(kind, "failed", "a writable primary must be fenced first: {r:?}")
        }
        other => panic!("rewinding a writable primary must be refused, got {other:?}"),
    }
    // A crash-like stop of a primary under the boot guard (its agent keeps
    // pgdr.boot-guard and standby.signal beside a running primary; written
    // here so the test does not depend on when the lease loop does it):
    // pg_rewind's own crash recovery (single-user) refuses standby mode, so
    // the agent must bring the target to a clean shutdown first.
    let data = sb.node("east-1").expect("east-1").data_dir.clone();
    let owner = std::fs::metadata(&data).expect("data dir");
    for (f, text) in [("pgdr.boot-guard", "pgdr: boot guard (test)\n"), ("standby.signal", "")] {
        use std::os::unix::fs::MetadataExt;
        std::fs::write(data.join(f), text).expect("guard file");
        std::os::unix::fs::chown(data.join(f), Some(owner.uid()), Some(owner.gid())).expect("chown");
    }
    e1.stop(&StopRequest { epoch, mode: StopMode::Immediate }).await.expect("immediate stop");
    let r = e1.rewind(&RewindRequest { epoch, from: from_e2.clone(), slot: None }).await.expect("rewind");
    assert!(r.steps.iter().any(|s| s.starts_with("crash recovery under the boot guard")), "{r:?}");
    assert!(r.steps.iter().any(|s| s.starts_with("pg_rewind")), "{r:?}");
    let s = e1.status().await.expect("status");
    assert_eq!(s.role, Role::Replica);
    wait_streaming(&sb, "east-2", "east-1").await;
    wait_row(&sb, "east-1", "select string_agg(x, ',' order by x) from t", "after,before").await;

    // Rebuild west-1 from the new primary: a fresh copy, the old one kept aside.
    sb.sql("east-2", "insert into t values ('rebuilt')").await.expect("write");
    let r = w1
        .rebuild(&RebuildRequest { epoch, from: from_e2.clone(), slot: None, from_backup: None })
        .await
        .expect("rebuild");
    assert!(r.steps.iter().any(|s| s.starts_with("base backup")), "{r:?}");
    wait_streaming(&sb, "east-2", "west-1").await;
    wait_row(&sb, "west-1", "select count(*) from t", "3").await;
    let west_dir = sb.node("west-1").expect("west-1").data_dir.parent().map(Path::to_owned).expect("parent");
    let asides = std::fs::read_dir(&west_dir)
        .expect("read")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("data.old-"))
        .count();
    assert_eq!(asides, 1);
    // A second rebuild keeps only one aside.
    w1.rebuild(&RebuildRequest { epoch, from: from_e2, slot: None, from_backup: None }).await.expect("rebuild again");
    let asides = std::fs::read_dir(&west_dir)
        .expect("read")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("data.old-"))
        .count();
    assert_eq!(asides, 1);

    // status sees the new topology: east-2 primary on timeline 2, both others streaming.
    let (code, v) = status_json(&sb.config);
    assert_eq!(code, 0);
    let c = &v["clusters"][0];
    assert_eq!(c["primary"], "east-2");
    assert_eq!(c["epoch"], 1);
    for n in c["nodes"].as_array().expect("nodes") {
        assert_eq!(n["timeline"], 2, "{n}");
    }

    // Every replication connection, after the rewind, the upstream change and
    // the rebuilds, is TLS, and so is ours (the sandbox's CA, verify-full).
    let rows = sb
        .sql(
            "east-2",
            "select r.application_name, s.ssl from pg_stat_replication r join pg_stat_ssl s using (pid) \
             order by 1",
        )
        .await
        .expect("pg_stat_ssl");
    let seen: Vec<(String, String)> =
        rows.into_iter().map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default())).collect();
    assert_eq!(seen, vec![("east-1".to_owned(), "t".to_owned()), ("west-1".to_owned(), "t".to_owned())]);
    let ours = sb.sql("east-2", "select ssl from pg_stat_ssl where pid = pg_backend_pid()").await.expect("ssl");
    assert_eq!(ours[0][0].as_deref(), Some("t"), "the sandbox's own connections use TLS");
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_up_stops_what_it_started() {
    let dir = Dir::new();
    // An "agent" binary that exits at once: up fails after PostgreSQL started.
    let err = Sandbox::builder().dir(dir.sandbox()).start(Path::new("/bin/false")).await.expect_err("up must fail");
    assert!(err.to_string().contains("agent"), "{err}");
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.sandbox().join("sandbox.json")).expect("record"))
            .expect("json");
    assert_eq!(record["state"], "down");
    for n in record["nodes"].as_array().expect("nodes") {
        if let Some(pid) = n["postmaster_pid"].as_i64() {
            assert!(!alive(pid), "postmaster {pid} left running");
        }
        assert!(!listening(n["port"].as_u64().expect("port")));
    }
    // The folder now holds a stopped sandbox: up again says so (exit 2).
    let (code, _, err) = pgdr(&["sandbox", "up", "--dir", &dir.sandbox().display().to_string()]);
    assert_eq!(code, 2);
    assert!(err.contains("stopped sandbox") && err.contains("--purge"), "{err}");
}

/// `sandbox up --store etcd`: three etcd members started by PID and
/// recorded, the config selects them (TLS with the sandbox's CA and the
/// controller's client certificate), `config check` accepts it, and `down`
/// stops exactly those members.
#[tokio::test(flavor = "multi_thread")]
async fn up_with_etcd_and_down_stops_its_members() {
    let dir = Dir::new();
    let sb_dir = dir.sandbox();
    let d = sb_dir.display().to_string();
    let (code, _, err) = pgdr(&["sandbox", "up", "--dir", &d, "--store", "etcd", "--replicas-per-region", "0"]);
    assert_eq!(code, 0, "sandbox up --store etcd failed: {err}");
    let config = sb_dir.join("pgdr.toml");
    let text = std::fs::read_to_string(&config).expect("pgdr.toml");
    assert!(text.contains("store = \"etcd\"") && text.contains("etcd_prefix"), "{text}");
    let (code, out, err) = pgdr(&["config", "check", "--config", &config.display().to_string()]);
    assert_eq!(code, 0, "config check: {out} {err}");
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(sb_dir.join("sandbox.json")).expect("record")).expect("json");
    let members = record["etcd"]["members"].as_array().expect("etcd members recorded").clone();
    assert_eq!(members.len(), 3);
    for m in &members {
        assert!(alive(m["pid"].as_i64().expect("pid")), "member {m} not running");
        assert!(listening(m["client_port"].as_u64().expect("port")));
    }
    let cfg = pgdr_config::Config::load(&config).expect("load");
    let pgdr_config::StoreKind::Etcd(e) = &cfg.controller.store else { panic!("not etcd") };
    assert!(e.endpoints.iter().all(|u| u.starts_with("https://127.0.0.1:")), "{:?}", e.endpoints);
    assert!(e.ca.is_some() && e.identity.is_some(), "TLS with a client certificate");

    let (code, out, err) = pgdr(&["sandbox", "down", "--dir", &d, "--json"]);
    assert_eq!(code, 0, "{out} {err}");
    let down: Value = serde_json::from_str(&out).expect("down --json");
    assert_eq!(down["etcd_stopped"], 3, "{down}");
    for m in &members {
        assert!(!alive(m["pid"].as_i64().expect("pid")), "member {m} still alive");
        for key in ["client_port", "peer_port", "metrics_port"] {
            assert!(!listening(m[key].as_u64().expect("port")), "{key} of {m} still listening");
        }
    }
}

/// `sandbox up --clusters 3`: three two-node clusters c01..c03 in one
/// sandbox, each streaming with a primary (as `pgdr status` sees it through
/// the agents), small settings on every server, one proxy per cluster and
/// region in `pgdr.toml`; `down` stops every server and agent.
#[tokio::test(flavor = "multi_thread")]
async fn up_three_clusters_status_down() {
    let dir = Dir::new();
    let sb_dir = dir.sandbox();
    let d = sb_dir.display().to_string();
    let (code, out, err) = pgdr(&[
        "sandbox",
        "up",
        "--dir",
        &d,
        "--clusters",
        "3",
        "--replicas-per-region",
        "0",
        "--standbys-per-region",
        "1",
        "--json",
    ]);
    assert_eq!(code, 0, "sandbox up failed: {err}");
    let up: Value = serde_json::from_str(&out).expect("up --json");
    assert_eq!(up["clusters"], serde_json::json!(["c01", "c02", "c03"]));
    let names: Vec<&str> = up["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(names, ["c01-east-1", "c01-west-1", "c02-east-1", "c02-west-1", "c03-east-1", "c03-west-1"]);

    let config = sb_dir.join("pgdr.toml");
    let cfg = pgdr_config::Config::load(&config).expect("pgdr.toml validates");
    assert_eq!(cfg.proxies.len(), 6, "a proxy per cluster and region");
    let sb = Sandbox::open(&sb_dir).expect("open").expect("a sandbox");
    let rows = sb.sql("c02-east-1", "show shared_buffers").await.expect("sql");
    assert_eq!(rows[0][0].as_deref(), Some("16MB"));

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, v) = status_json(&config);
        let clusters = v["clusters"].as_array().cloned().unwrap_or_default();
        let seen: Vec<(String, String)> = clusters
            .iter()
            .map(|c| (c["name"].as_str().unwrap_or("").to_owned(), c["primary"].as_str().unwrap_or("").to_owned()))
            .collect();
        let streaming = clusters.iter().all(|c| {
            c["nodes"]
                .as_array()
                .is_some_and(|ns| ns.iter().any(|n| n["role"] == "replica" && n["health"] == "streaming"))
        });
        let want = [("c01", "c01-east-1"), ("c02", "c02-east-1"), ("c03", "c03-east-1")];
        if code == 0 && streaming && seen.iter().map(|(a, b)| (a.as_str(), b.as_str())).eq(want) {
            break;
        }
        assert!(Instant::now() < deadline, "status never showed 3 streaming clusters: {v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let record = sb.record.clone();
    let (code, out, err) = pgdr(&["sandbox", "down", "--dir", &d]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("6 agents, 6 PostgreSQL servers"), "{out}");
    for n in &record.nodes {
        for pid in [n.agent_pid, n.postmaster_pid].into_iter().flatten() {
            assert!(!alive(i64::from(pid)), "{} pid {pid} still alive", n.name);
        }
        assert!(!listening(u64::from(n.port)), "port {} still listening", n.port);
    }
}
