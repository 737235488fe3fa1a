//! `POST /v1/probe` against a real PostgreSQL: a committed heartbeat from
//! the agent, a refused port, a host that accepts and never answers (timeout
//! at the deadline), a read-only server (error), bad input, a host outside
//! the config, a huge timeout (clamped) and a missing token.

use std::sync::Arc;
use std::time::Duration;

use pgdr_api::ApiError;
use pgdr_api::agent::{AgentClient, FenceMode, FenceRequest, ProbeKind, ProbeRequest};
use pgdr_model::Epoch;
use pgdr_node::agent::{AgentConfig, AgentState, Target, serve};
use pgdr_node::{LocalPg, PgBinaries, RunAs};
use tokio_util::sync::CancellationToken;

use crate::common::PgGuard;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn req(port: u16, timeout_ms: u64) -> ProbeRequest {
    ProbeRequest { host: "127.0.0.1".into(), port, timeout_ms, row: Some(42), with_status: false }
}

#[tokio::test]
async fn probe_outcomes_from_the_agent() {
    let bin = PgBinaries::find(None).expect("PostgreSQL binaries");
    let dir = tempfile::Builder::new().prefix("pgdr-probe-").tempdir_in("/tmp").expect("tempdir");
    std::process::Command::new("chmod").arg("755").arg(dir.path()).status().expect("chmod");
    let pg =
        LocalPg::new(bin, dir.path().join("data"), "127.0.0.1", free_port(), RunAs::for_node(None).expect("run as"));
    let _guard = PgGuard(pg.clone());
    pg.initdb("postgres", "secret").await.expect("initdb");
    let settings = vec![("fsync".to_owned(), "off".to_owned())];
    pg.configure(&settings).expect("configure");
    pg.start(Duration::from_secs(30)).await.expect("start");
    let login = crate::common::login();
    // The agent probes only nodes and proxies of its config: these three
    // stand for them (a server, a port where nothing listens, a silent host).
    let refused_port = free_port();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let target =
        |name: &str, port: u16, proxy: bool| Target { name: name.into(), host: "127.0.0.1".into(), port, proxy };
    let cfg = AgentConfig {
        node: "w1".into(),
        cluster: "main".into(),
        region: "west".into(),
        pg: pg.clone(),
        login: login.clone(),
        replication_user: "postgres".into(),
        settings,
        token: Some("tok".into()),
        promote_timeout: Duration::from_secs(30),
        pg_wait: Duration::from_secs(30),
        targets: vec![target("w1", pg.port, false), target("e1", refused_port, false), target("px", silent_port, true)],
        controller: None,
        https: None,
        http_tls: Default::default(),
    };
    let state = AgentState::new(cfg).expect("agent state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(serve(listener, Arc::clone(&state), cancel.clone()));
    let c = AgentClient::new(&addr, Some("tok".into())).expect("client").with_timeout(Duration::from_secs(10));

    // A committed heartbeat, twice (the second updates the row).
    for n in 1..=2i64 {
        let r = c.probe(&req(pg.port, 2000)).await.expect("probe");
        assert_eq!(r.outcome, ProbeKind::Ok, "{r:?}");
        assert_eq!(r.region.as_str(), "west");
        assert!(r.heartbeat_at.is_some() && r.error.is_none(), "{r:?}");
        let s = pg.connect(&login).await.expect("connect");
        let row = s
            .query_one("select counter, written_by from pgdr.heartbeat where id = 42", &[])
            .await
            .expect("heartbeat row");
        assert_eq!(row.get::<_, i64>(0), n);
        assert_eq!(row.get::<_, String>(1), "pgdr-agent-w1");
    }

    // Asked for, the agent's own status comes with the probe (one request
    // per vantage point and probe); not asked for, none.
    assert!(c.probe(&req(pg.port, 2000)).await.expect("probe").status.is_none());
    let r = c.probe(&ProbeRequest { with_status: true, ..req(pg.port, 2000) }).await.expect("probe");
    assert_eq!(r.outcome, ProbeKind::Ok, "{r:?}");
    let s = r.status.expect("the agent's status with the probe");
    assert!(s.up && s.role == pgdr_model::Role::Primary && s.node.as_str() == "w1", "{s:?}");
    let g = c.status().await.expect("status");
    assert_eq!(
        (&s.cluster, s.role, s.timeline, s.fenced),
        (&g.cluster, g.role, g.timeline, g.fenced),
        "as GET /v1/status"
    );

    // Nothing listens: refused at once.
    let r = c.probe(&req(refused_port, 2000)).await.expect("probe");
    assert_eq!(r.outcome, ProbeKind::Refused, "{r:?}");

    // A host that accepts and never answers: timeout at the deadline.
    let r = c.probe(&req(silent_port, 300)).await.expect("probe");
    assert_eq!(r.outcome, ProbeKind::Timeout, "{r:?}");
    assert!(r.latency_ms >= 300.0, "a timeout is never reported before its deadline: {r:?}");
    drop(silent);

    // A read-only (fenced) server answers with an error.
    c.fence(&FenceRequest { epoch: Epoch(1), mode: FenceMode::ReadOnly }).await.expect("fence");
    let r = c.probe(&req(pg.port, 2000)).await.expect("probe");
    assert_eq!(r.outcome, ProbeKind::Error, "{r:?}");
    assert!(r.error.as_deref().unwrap_or("").contains("read-only"), "{r:?}");

    // A huge timeout is clamped, not a panic and not a wait of ages.
    let r = c.probe(&req(pg.port, u64::MAX)).await.expect("probe with a huge timeout");
    assert_eq!(r.outcome, ProbeKind::Error, "{r:?}");

    // A host or port outside the config is refused before any connection.
    for (host, port) in [("10.255.255.1", pg.port), ("127.0.0.1", free_port()), ("db.example.com", 5432)] {
        match c.probe(&ProbeRequest { host: host.into(), port, timeout_ms: 100, row: None, with_status: false }).await {
            Err(ApiError::Failed { status: 400, message, .. }) => assert!(message.contains("not a node"), "{message}"),
            other => panic!("expected 400 for {host}:{port}, got {other:?}"),
        }
    }
    match c
        .probe(&ProbeRequest {
            host: "127.0.0.1 sslmode=disable".into(),
            port: pg.port,
            timeout_ms: 100,
            row: None,
            with_status: false,
        })
        .await
    {
        Err(ApiError::Failed { status: 400, .. }) => {}
        other => panic!("expected 400 for a malformed host, got {other:?}"),
    }

    // Bad input and a missing token.
    match c.probe(&req(pg.port, 0)).await {
        Err(ApiError::Failed { status: 400, .. }) => {}
        other => panic!("expected 400, got {other:?}"),
    }
    let anon = AgentClient::new(&addr, None).expect("client");
    assert!(matches!(anon.probe(&req(pg.port, 100)).await, Err(ApiError::Unauthorized { .. })));

    cancel.cancel();
    let _ = task.await;
}
