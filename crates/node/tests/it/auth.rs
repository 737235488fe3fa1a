//! Every route of the agent, walked from the agent's own route table
//! (`pgdr_node::agent::ROUTES`, which the router is built from, peer routes
//! included): without a token, with a wrong one, and with tokens meant for
//! other servers, each gets 401 and changes nothing; only `/v1/health` is
//! open.

use std::sync::Arc;
use std::time::Duration;

use pgdr_model::Epoch;
use pgdr_node::agent::{AgentConfig, AgentState, Need, ROUTES, serve};
use pgdr_node::local::Login;
use pgdr_node::{LocalPg, PgBinaries, RunAs};
use tokio_util::sync::CancellationToken;

/// A concrete path for a route pattern.
fn concrete(path: &str) -> String {
    path.replace("{action}", "promote")
}

#[tokio::test]
async fn every_agent_route_refuses_a_missing_or_wrong_token() {
    let bin = PgBinaries::find(None).expect("PostgreSQL binaries");
    let dir = tempfile::Builder::new().prefix("pgdr-agent-auth-").tempdir_in("/tmp").expect("tempdir");
    // No server: a refused request never reaches PostgreSQL anyway.
    let pg = LocalPg::new(bin, dir.path().join("data"), "127.0.0.1", 1, RunAs::for_node(None).expect("run as"));
    let cfg = AgentConfig {
        node: "n1".into(),
        cluster: "main".into(),
        region: "east".into(),
        pg,
        login: Login { user: "postgres".into(), password: Some("pw".into()), database: "postgres".into(), tls: None },
        replication_user: "postgres".into(),
        settings: Vec::new(),
        token: Some("the-agents-token".into()),
        promote_timeout: Duration::from_secs(5),
        pg_wait: Duration::from_secs(5),
        targets: Vec::new(),
        controller: None,
        https: None,
        http_tls: Default::default(),
    };
    let state = AgentState::new(cfg).expect("agent state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    let task = tokio::spawn(serve(listener, Arc::clone(&state), cancel.clone()));
    let http = pgdr_api::tls::HttpTls::plain().client(std::time::Duration::from_secs(5)).expect("http");

    // A body that would act if it got through: promote at a new epoch,
    // withdraw support for n2 at epoch 5.
    let body = serde_json::json!({ "epoch": 7, "cluster": "main", "primary": "n2", "host": "127.0.0.1", "port": 1, "timeout_ms": 100 });
    let wrong = ["", "Bearer ", "Bearer nope", "the-agents-token", "Basic the-agents-token"];
    let mut checked = 0;
    for r in ROUTES {
        let url = format!("http://{addr}{}", concrete(r.path));
        let mut tries: Vec<Option<&str>> = vec![None];
        tries.extend(wrong.iter().map(|w| Some(*w)));
        for auth in tries {
            let mut req = http.request(r.method.clone(), &url).json(&body);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let status = req.send().await.expect("request").status().as_u16();
            match r.need {
                Need::Public => assert!(status < 400, "{r:?} with {auth:?}: {status}, expected it open"),
                Need::Token => assert_eq!(status, 401, "{r:?} with authorization {auth:?}"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, ROUTES.len() * (wrong.len() + 1));
    for path in ["/v1/peer/support", "/v1/peer/withdraw", "/v1/probe", "/v1/status", "/v1/actions/{action}"] {
        assert!(ROUTES.iter().any(|r| r.path == path && r.need == Need::Token), "{path} must need the token");
    }
    // Nothing changed: no epoch seen, support not withdrawn.
    assert_eq!(state.epoch.current(), Epoch(0));
    assert!(
        state.epoch.durable().withdrawn.is_empty(),
        "a refused withdraw must not have withdrawn support: {:?}",
        state.epoch.durable()
    );
    cancel.cancel();
    let _ = task.await;
}
