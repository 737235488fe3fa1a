//! The agent in-process against a real PostgreSQL: auth, status, idempotent
//! actions, fencing, an action on a stopped server, epoch refusal that
//! survives an agent restart, epoch jumps only as far as the controller's
//! store, servers outside the config refused, a huge timeout clamped; a
//! start beside another server on the port, a rebuild after the primary's
//! postmaster was killed mid-query.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{PgGuard, login};
use pgdr_api::ApiError;
use pgdr_api::agent::{
    AgentClient, Endpoint, FenceMode, FenceRequest, PromoteRequest, RebuildRequest, RewindRequest, StopMode,
    StopRequest, UpstreamRequest,
};
use pgdr_model::{Epoch, NodeName, Role};
use pgdr_node::agent::{AgentConfig, AgentState, ControllerRef, Target, serve};
use pgdr_node::{LocalPg, PgBinaries, RunAs};
use tokio_util::sync::CancellationToken;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

struct Agent {
    client: AgentClient,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Agent {
    async fn start(cfg: AgentConfig) -> Agent {
        let token = cfg.token.clone();
        let state = AgentState::new(cfg).expect("agent state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(listener, Arc::clone(&state), cancel.clone()));
        let client = AgentClient::new(&addr.to_string(), token).expect("client").with_timeout(Duration::from_secs(10));
        Agent { client, cancel, task }
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// A stand-in for the controller's `GET /v1/clusters/main`, holding `epoch`.
async fn stub_controller(epoch: u64) -> (String, CancellationToken) {
    let body = serde_json::json!({
        "name": "main", "epoch": epoch, "primary": "n1", "tier": "gold", "rpo_seconds": 0.0,
        "replication": "async", "degraded": false, "nodes": [], "detection": "healthy", "workflow": null
    });
    let app = axum::Router::new()
        .route("/v1/clusters/main", axum::routing::get(move || async move { axum::Json(body.clone()) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
    });
    (addr, cancel)
}

const SETTINGS: [(&str, &str); 1] = [("fsync", "off")];

/// A running server in a new folder in /tmp (open to the server's user),
/// with the superuser of [`login`].
async fn server() -> (tempfile::TempDir, LocalPg) {
    let bin = PgBinaries::find(None).expect("PostgreSQL binaries");
    let dir = tempfile::Builder::new().prefix("pgdr-agent-").tempdir_in("/tmp").expect("tempdir");
    std::process::Command::new("chmod").arg("755").arg(dir.path()).status().expect("chmod");
    let run_as = RunAs::for_node(None).expect("run as");
    let pg = LocalPg::new(bin, dir.path().join("data"), "127.0.0.1", free_port(), run_as);
    pg.initdb("postgres", "secret").await.expect("initdb");
    pg.configure(&SETTINGS.map(|(k, v)| (k.to_owned(), v.to_owned()))).expect("configure");
    pg.start(Duration::from_secs(30)).await.expect("start");
    (dir, pg)
}

/// The agent of node n1 on `pg`, with the token `tok`.
fn config(pg: &LocalPg) -> AgentConfig {
    AgentConfig {
        node: "n1".into(),
        cluster: "main".into(),
        region: "east".into(),
        pg: pg.clone(),
        login: login(),
        replication_user: "postgres".into(),
        settings: SETTINGS.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec(),
        token: Some("tok".into()),
        promote_timeout: Duration::from_secs(30),
        pg_wait: Duration::from_secs(30),
        // A replica elsewhere, the only server rebuild/rewind may copy from.
        targets: vec![Target { name: "n2".into(), host: "127.0.0.1".into(), port: free_port(), proxy: false }],
        controller: None,
        https: None,
        http_tls: Default::default(),
    }
}

#[tokio::test]
async fn agent_actions_on_one_server() {
    let (_dir, pg) = server().await;
    let _guard = PgGuard(pg.clone());
    let login = login();
    let cfg = config(&pg);
    let agent = Agent::start(cfg.clone()).await;
    let c = &agent.client;

    // Health needs no token; everything else does.
    let anon = AgentClient::new(c.addr(), None).expect("client");
    assert!(anon.health().await.expect("health").ok);
    assert!(
        matches!(anon.status().await, Err(ApiError::Unauthorized { .. })),
        "status without a token must be refused"
    );
    let wrong = AgentClient::new(c.addr(), Some("nope".into())).expect("client");
    assert!(matches!(wrong.start(Epoch(1)).await, Err(ApiError::Unauthorized { .. })));

    let s = c.status().await.expect("status");
    assert_eq!(s.role, Role::Primary);
    assert!(s.up && s.running);
    assert_eq!(s.pid, pg.postmaster_pid());
    assert_eq!(s.timeline.map(|t| t.0), Some(1));
    assert!(s.current_lsn.is_some());
    assert!(!s.fenced);

    // An epoch jump no controller confirms is refused and changes nothing.
    match c.start(Epoch(5)).await {
        Err(ApiError::Failed { status: 422, kind, .. }) => assert_eq!(kind, "epoch_unconfirmed"),
        other => panic!("expected an unconfirmed-epoch refusal, got {other:?}"),
    }
    assert_eq!(c.status().await.expect("status").epoch, Epoch(0));
    assert!(!c.start(Epoch(1)).await.expect("start a running server").changed);

    // Idempotent: promote on a primary and start on a running server
    // succeed; a huge timeout is clamped, not a panic.
    let r =
        c.promote(&PromoteRequest { epoch: Epoch(2), timeout_ms: Some(u64::MAX) }).await.expect("promote a primary");
    assert!(!r.changed, "{r:?}");
    assert!(r.steps.iter().any(|s| s.contains("limited")), "{r:?}");
    assert_eq!(r.epoch, Epoch(2));
    assert!(!c.start(Epoch(2)).await.expect("start a running server").changed);

    // A stale epoch is refused with 409.
    match c.start(Epoch(1)).await {
        Err(ApiError::StaleEpoch { seen, .. }) => assert_eq!(seen, Epoch(2)),
        other => panic!("expected a stale-epoch refusal, got {other:?}"),
    }

    // Fence read-only: an open session is ended, new writes fail.
    let session = pg.connect(&login).await.expect("connect");
    session.batch_execute("create table t (x int)").await.expect("create");
    let f = c.fence(&FenceRequest { epoch: Epoch(2), mode: FenceMode::ReadOnly }).await.expect("fence");
    assert!(f.changed, "{f:?}");
    assert!(session.batch_execute("select 1").await.is_err(), "the fenced server must end open sessions");
    let fresh = pg.connect(&login).await.expect("connect");
    let err = fresh.batch_execute("insert into t values (1)").await.expect_err("a fenced server must refuse writes");
    let msg = pgdr_node::local::pg_detail(&err);
    assert!(msg.contains("read-only"), "{msg}");
    let s = c.status().await.expect("status");
    assert!(s.fenced && s.read_only);
    assert!(!c.fence(&FenceRequest { epoch: Epoch(2), mode: FenceMode::ReadOnly }).await.expect("fence again").changed);
    assert!(c.unfence(Epoch(2)).await.expect("unfence").changed);
    let fresh = pg.connect(&login).await.expect("connect");
    fresh.batch_execute("insert into t values (1)").await.expect("writes work after unfence");

    // Stop, twice; status and actions on a stopped server.
    assert!(c.stop(&StopRequest { epoch: Epoch(2), mode: StopMode::Fast }).await.expect("stop").changed);
    assert!(!c.stop(&StopRequest { epoch: Epoch(2), mode: StopMode::Immediate }).await.expect("stop again").changed);
    let s = c.status().await.expect("status of a stopped server");
    assert_eq!(s.role, Role::Down);
    assert!(!s.up && !s.running);
    assert!(s.error.is_some());
    match c.promote(&PromoteRequest { epoch: Epoch(2), timeout_ms: None }).await {
        Err(ApiError::Failed { kind, message, .. }) => {
            assert_eq!(kind, "postgres_down");
            assert!(message.contains("not up"), "{message}");
        }
        other => panic!("expected postgres_down, got {other:?}"),
    }
    assert!(c.start(Epoch(3)).await.expect("start").changed);
    assert_eq!(c.status().await.expect("status").role, Role::Primary);

    // A server outside the config is refused before any connection.
    for (host, port) in [("10.255.255.1".to_owned(), 5432), ("127.0.0.1".to_owned(), free_port())] {
        let from = Endpoint { host: host.clone(), port, node: None };
        match c.rebuild(&RebuildRequest { epoch: Epoch(3), from, slot: None, from_backup: None }).await {
            Err(ApiError::Failed { status: 400, message, .. }) => assert!(message.contains("not a node"), "{message}"),
            other => panic!("expected 400 for {host}:{port}, got {other:?}"),
        }
    }
    // A named node is looked up in the agent's own config, whatever
    // address the request carries: an unknown name is refused; a known
    // one is taken with the agent's address for it (here the request goes
    // on to the check that a writable primary is never rewound).
    let from = Endpoint { host: "127.0.0.1".into(), port: 5432, node: Some(NodeName::new("nowhere")) };
    match c.rebuild(&RebuildRequest { epoch: Epoch(3), from, slot: None, from_backup: None }).await {
        Err(ApiError::Failed { status: 400, message, .. }) => {
            assert!(message.contains("node nowhere is not a node"), "{message}")
        }
        other => panic!("expected 400 for an unknown node name, got {other:?}"),
    }
    let from = Endpoint { host: "10.255.255.1".into(), port: 5432, node: Some(NodeName::new("n2")) };
    match c.rewind(&RewindRequest { epoch: Epoch(3), from, slot: None }).await {
        Err(e) => assert!(!e.to_string().contains("not a node"), "the name was not resolved: {e}"),
        Ok(r) => panic!("a writable primary was rewound: {r:?}"),
    }
    let from = Endpoint { host: "127.0.0.1' host=evil".into(), port: 5432, node: None };
    assert!(matches!(
        c.rewind(&RewindRequest { epoch: Epoch(3), from, slot: None }).await,
        Err(ApiError::Failed { status: 400, .. })
    ));
    assert!(matches!(
        c.upstream(&UpstreamRequest {
            epoch: Epoch(3),
            host: "10.255.255.1".into(),
            port: 5432,
            node: None,
            slot: None
        })
        .await,
        Err(ApiError::Failed { status: 400, .. })
    ));

    // A bad body is a 400, not a panic.
    match c.action(pgdr_api::agent::Action::Stop, &serde_json::json!({"mode": "fast"})).await {
        Err(ApiError::Failed { status: 400, kind, .. }) => assert_eq!(kind, "bad_request"),
        other => panic!("expected a 400, got {other:?}"),
    }

    // The epoch survives an agent restart.
    agent.stop().await;
    let agent = Agent::start(cfg.clone()).await;
    assert_eq!(agent.client.status().await.expect("status").epoch, Epoch(3));
    assert!(matches!(agent.client.start(Epoch(2)).await, Err(ApiError::StaleEpoch { .. })));
    assert!(agent.client.start(Epoch(3)).await.is_ok());
    agent.stop().await;

    // An epoch jump the controller's store confirms is taken; one beyond
    // what it holds is not (a stand-in controller answers GET /v1/clusters/main).
    let (ctl_addr, ctl_stop) = stub_controller(7).await;
    let mut with_ctl = cfg.clone();
    with_ctl.controller = Some(ControllerRef { addrs: vec![ctl_addr], token: None });
    let agent = Agent::start(with_ctl).await;
    match agent.client.start(Epoch(8)).await {
        Err(ApiError::Failed { status: 422, kind, message, .. }) => {
            assert_eq!(kind, "epoch_unconfirmed");
            assert!(message.contains("holds epoch 7"), "{message}");
        }
        other => panic!("expected an unconfirmed-epoch refusal, got {other:?}"),
    }
    assert!(agent.client.start(Epoch(7)).await.is_ok());
    assert_eq!(agent.client.status().await.expect("status").epoch, Epoch(7));
    agent.stop().await;
    ctl_stop.cancel();
    pg.stop(pgdr_node::local::StopMode::Fast, Duration::from_secs(30)).await.expect("stop");
}

/// Another server answers on the node's port (two sandboxes side by side:
/// a server whose TCP port is taken still starts, on its Unix socket). The
/// agent reports its node down with the reason, never the other server's
/// role, and does not act on that server.
#[tokio::test]
async fn another_server_on_the_port_is_not_ours() {
    let (_dir_a, a) = server().await;
    let _guard_a = PgGuard(a.clone());
    let (_dir_b, b) = server().await;
    let _guard_b = PgGuard(b.clone());
    let mut crossed = a.clone();
    crossed.port = b.port;
    let agent = Agent::start(config(&crossed)).await;

    let s = agent.client.status().await.expect("status");
    assert_eq!(s.role, Role::Down, "{s:?}");
    assert!(!s.up && s.running, "{s:?}");
    assert!(s.timeline.is_none() && s.current_lsn.is_none(), "{s:?}");
    let error = s.error.expect("a reason");
    assert!(error.contains("not this node's") && error.contains(&b.data_dir.display().to_string()), "{error}");

    // No action reaches the other server: a fence is refused, and B still
    // takes writes.
    match agent.client.fence(&FenceRequest { epoch: Epoch(1), mode: FenceMode::ReadOnly }).await {
        Err(ApiError::Failed { kind, message, .. }) => {
            assert_eq!(kind, "postgres_down");
            assert!(message.contains("not this node's"), "{message}");
        }
        other => panic!("expected postgres_down, got {other:?}"),
    }
    let on_b = b.connect(&login()).await.expect("connect to B");
    on_b.batch_execute("create table t (x int); insert into t values (1)").await.expect("B still takes writes");
    agent.stop().await;

    // On its own port, the same agent reports its own server.
    let agent = Agent::start(config(&a)).await;
    let s = agent.client.status().await.expect("status");
    assert_eq!(s.role, Role::Primary, "{s:?}");
    assert!(s.up && s.error.is_none(), "{s:?}");
    agent.stop().await;
    for pg in [&a, &b] {
        pg.stop(pgdr_node::local::StopMode::Fast, Duration::from_secs(30)).await.expect("stop");
    }
}

/// The node's server is down and another one holds its port: the agent's
/// start fails at once, naming the address, the data directory the other
/// server serves and the node's own, instead of timing out; nothing is
/// started (and the other server still takes writes).
#[tokio::test]
async fn start_beside_another_server_on_the_port_names_it() {
    let (_dir_a, a) = server().await;
    let _guard_a = PgGuard(a.clone());
    let (_dir_b, b) = server().await;
    let _guard_b = PgGuard(b.clone());
    a.stop(pgdr_node::local::StopMode::Fast, Duration::from_secs(30)).await.expect("stop A");
    // A configured for B's port, as two sandboxes that picked the same one.
    let mut crossed = a.clone();
    crossed.port = b.port;
    crossed.configure(&SETTINGS.map(|(k, v)| (k.to_owned(), v.to_owned()))).expect("configure");
    let mut cfg = config(&crossed);
    // Long enough that a start waiting on the port would be told apart.
    cfg.pg_wait = Duration::from_secs(30);
    let agent = Agent::start(cfg).await;

    let asked = std::time::Instant::now();
    match agent.client.start(Epoch(1)).await {
        Err(ApiError::Failed { status: 422, kind, message, .. }) => {
            assert_eq!(kind, "port_taken", "{message}");
            for part in
                [format!("127.0.0.1:{}", b.port), b.data_dir.display().to_string(), a.data_dir.display().to_string()]
            {
                assert!(message.contains(&part), "{part} missing from: {message}");
            }
        }
        other => panic!("expected a port_taken refusal, got {other:?}"),
    }
    assert!(asked.elapsed() < Duration::from_secs(10), "the refusal took {:?}", asked.elapsed());
    assert!(!a.is_running().await, "A was started on a taken port");
    let s = agent.client.status().await.expect("status");
    assert_eq!(s.role, Role::Down, "{s:?}");
    assert!(s.error.is_some_and(|e| e.contains("not this node's")), "status must say why");
    let on_b = b.connect(&login()).await.expect("connect to B");
    on_b.batch_execute("create table t (x int); insert into t values (1)").await.expect("B still takes writes");
    agent.stop().await;

    // Back on its own port, the same start brings A up.
    a.configure(&SETTINGS.map(|(k, v)| (k.to_owned(), v.to_owned()))).expect("configure");
    let agent = Agent::start(config(&a)).await;
    assert!(agent.client.start(Epoch(1)).await.expect("start A on its port").changed);
    assert_eq!(agent.client.status().await.expect("status").role, Role::Primary);
    agent.stop().await;
    for pg in [&a, &b] {
        pg.stop(pgdr_node::local::StopMode::Fast, Duration::from_secs(30)).await.expect("stop");
    }
}

/// The processes running `postgres` whose working folder is `data` or a
/// folder beside it named after it (`data.old-*`), with that folder.
fn processes_of(pg: &LocalPg) -> Vec<(i32, std::path::PathBuf)> {
    use pgdr_node::leftover::resolved;
    let postgres = resolved(&pg.bin.path("postgres"));
    let data = resolved(&pg.data_dir);
    let name = data.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if std::fs::read_link(e.path().join("exe")).ok().as_deref() != Some(postgres.as_path()) {
            continue;
        }
        let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else { continue };
        let shown = cwd.to_string_lossy();
        if cwd.parent() == data.parent() && shown.rsplit('/').next().is_some_and(|n| n.starts_with(&name)) {
            found.push((pid, cwd));
        }
    }
    found
}

/// The primary's postmaster is killed (SIGKILL, alone) while one of its
/// backends is busy in a loop, which outlives it; then the node is rebuilt
/// as a standby of another server. The rebuild stops the leftover backend
/// (and says so in its steps) before moving the old data aside, so no
/// process of the old data directory remains, there or in `data.old-*`;
/// the rebuilt standby streams from the new primary.
#[tokio::test]
async fn rebuild_after_the_primary_postmaster_was_killed_mid_query() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use pgdr_node::local::pid_alive;
    let (dir_a, a) = server().await;
    let _guard_a = PgGuard(a.clone());
    let (_dir_b, b) = server().await;
    let _guard_b = PgGuard(b.clone());
    let login = login();

    // A backend of A busy in a loop: it never notices its postmaster's death.
    let (busy, backend) = crate::common::busy_backend(&a, &login).await;
    let mut backend_guard = crate::common::KillOnDrop(vec![backend]);

    let postmaster = a.postmaster_pid().expect("postmaster.pid");
    kill(Pid::from_raw(postmaster), Signal::SIGKILL).expect("kill A's postmaster");

    // The agent of A, with B as the node n2 it may copy from.
    let mut cfg = config(&a);
    cfg.targets = vec![Target { name: "n2".into(), host: "127.0.0.1".into(), port: b.port, proxy: false }];
    let agent = Agent::start(cfg).await;
    let from = Endpoint { host: "127.0.0.1".into(), port: b.port, node: Some(NodeName::new("n2")) };
    let r = agent
        .client
        .rebuild(&RebuildRequest { epoch: Epoch(1), from, slot: None, from_backup: None })
        .await
        .expect("rebuild A as a standby of B");
    assert!(r.changed, "{r:?}");
    let killed = format!("pids [{backend}]");
    assert!(
        r.steps.iter().any(|s| s.contains("a dead postmaster left") && s.contains(&killed)),
        "no step says the leftover backend {backend} was stopped: {:?}",
        r.steps
    );
    assert!(r.steps.iter().any(|s| s.contains("moved the old data directory")), "{:?}", r.steps);

    // The leftover and the killed postmaster are gone; what runs in the
    // data directory is the new standby's, and nothing runs in the old
    // data moved aside.
    assert!(!pid_alive(backend), "the leftover backend {backend} survived the rebuild");
    backend_guard.0.clear();
    assert!(!pid_alive(postmaster), "the killed postmaster {postmaster} is back?");
    let aside: Vec<_> = std::fs::read_dir(dir_a.path())
        .expect("read dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("data.old-"))
        .collect();
    assert_eq!(aside.len(), 1, "the old data directory was moved aside once");
    let standby = a.postmaster_pid().expect("the rebuilt standby's postmaster.pid");
    assert_ne!(standby, postmaster);
    let data = pgdr_node::leftover::resolved(&a.data_dir);
    for (pid, cwd) in processes_of(&a) {
        assert_eq!(cwd, data, "process {pid} runs in {}, not in the rebuilt data directory", cwd.display());
        assert!(
            pid == standby || pgdr_node::leftover::parent(pid) == Some(standby),
            "process {pid} in the data directory is not the rebuilt standby's (postmaster {standby})"
        );
    }

    // The rebuilt standby streams from B: B's writes reach it.
    let on_b = b.connect(&login).await.expect("connect to B");
    on_b.batch_execute("create table after_rebuild (x int); insert into after_rebuild values (7)")
        .await
        .expect("write");
    let on_a = a.connect(&login).await.expect("connect to the rebuilt A");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = on_a
            .query_one(
                "select pg_is_in_recovery(), (select status from pg_stat_wal_receiver), \
                 (select sender_port from pg_stat_wal_receiver), to_regclass('after_rebuild') is not null",
                &[],
            )
            .await
            .expect("query the standby");
        let (recovering, status, port, seen): (bool, Option<String>, Option<i32>, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert!(recovering, "the rebuilt node is not a standby");
        if status.as_deref() == Some("streaming") && port == Some(i32::from(b.port)) && seen {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the standby does not stream B's writes (receiver {status:?} from port {port:?}, table seen: {seen})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let x: i32 = on_a.query_one("select x from after_rebuild", &[]).await.expect("read on the standby").get(0);
    assert_eq!(x, 7);
    let rows = on_b
        .query("select 1 from pg_stat_replication where application_name = 'n1' and state = 'streaming'", &[])
        .await
        .expect("pg_stat_replication");
    assert_eq!(rows.len(), 1, "B does not list n1 as a streaming standby");

    busy.abort();
    agent.stop().await;
    drop((on_a, on_b));
    for pg in [&a, &b] {
        pg.stop(pgdr_node::local::StopMode::Fast, Duration::from_secs(30)).await.expect("stop");
    }
}
