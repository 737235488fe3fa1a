//! Every route of the controller, walked from its own route table
//! (`pgdr_controller::api::ROUTES`, which the router is built from): no
//! token and wrong tokens get 401, a token whose role does not allow the
//! route gets 403, and none of them changes anything; a token of a role
//! that allows it gets through; only the status page's files are open.

use std::time::Duration;

use pgdr_config::Access;
use pgdr_controller::api::{Need, ROUTES};
use tokio_util::sync::CancellationToken;

use crate::{closed_port, config, controller};

const TOKENS: &str = r#"
[[controller.tokens]]
name = "ops"
role = "operator"
token = { value = "op-secret" }
[[controller.tokens]]
name = "grafana"
role = "viewer"
token = { value = "view-secret" }
[[controller.tokens]]
name = "lease"
role = "agent"
token = { value = "agent-secret" }
"#;

fn token_of(role: Access) -> &'static str {
    match role {
        Access::Operator => "op-secret",
        Access::Viewer => "view-secret",
        Access::Agent => "agent-secret",
    }
}

fn concrete(path: &str) -> String {
    path.replace("{name}", "c").replace("{kind}", "switchover").replace("{id}", "wf-does-not-exist")
}

#[tokio::test]
async fn every_controller_route_needs_a_token_of_the_right_role() {
    let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    let agents = [addr(closed_port().await), addr(closed_port().await), addr(closed_port().await)];
    let cfg = config(agents, closed_port().await, TOKENS);
    let ctl = controller(cfg).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let at = listener.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    let server = tokio::spawn({
        let (router, cancel) = (pgdr_controller::api::router(ctl.clone()), cancel.clone());
        async move { axum::serve(listener, router).with_graceful_shutdown(cancel.cancelled_owned()).await }
    });
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("http");
    // A body every POST route would act on if it got through (a real
    // failover with data loss allowed; a lease for node a).
    let body = serde_json::json!({ "allow_data_loss": true, "to": "b", "node": "a", "epoch": 1, "by": "mallory" });
    let events_before = ctl.sh.events.tail(10_000).await.expect("events").len();

    let mut refused = 0;
    for r in ROUTES {
        let url = format!("http://{at}{}", concrete(r.path));
        let send = |auth: Option<String>| {
            let mut req = http.request(r.method.clone(), &url).json(&body);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            async move { req.send().await.expect("request").status().as_u16() }
        };
        match r.need {
            Need::Public => {
                assert_eq!(send(None).await, 200, "{r:?} is public");
            }
            Need::Role(need) => {
                for auth in [None, Some(String::new()), Some("Bearer wrong".into()), Some("op-secret".into())] {
                    let s = send(auth.clone()).await;
                    assert_eq!(s, 401, "{r:?} with authorization {auth:?}");
                    refused += 1;
                }
                for role in Access::ALL.into_iter().filter(|role| !role.grants(need)) {
                    let s = send(Some(format!("Bearer {}", token_of(role)))).await;
                    assert_eq!(s, 403, "{r:?} with a {role} token");
                    refused += 1;
                }
            }
        }
    }
    let guarded = ROUTES.iter().filter(|r| r.need != Need::Public).count();
    assert!(refused >= guarded * 5, "{refused} refusals for {guarded} routes");

    // Nothing changed: no workflow, no event, no cluster state.
    let name = pgdr_model::ClusterName::new("c");
    assert!(!ctl.sh.clusters.freezes(&name).await.expect("freezes").any(), "a refused request froze the cluster");
    assert!(ctl.workflows().await.expect("workflows").is_empty(), "a refused request started a workflow");
    assert_eq!(ctl.sh.events.tail(10_000).await.expect("events").len(), events_before);

    // The roles that allow a route get past the guard (GET routes only:
    // POST routes would act).
    for r in ROUTES.iter().filter(|r| r.method == axum::http::Method::GET) {
        let Need::Role(need) = r.need else { continue };
        for role in Access::ALL.into_iter().filter(|role| role.grants(need)) {
            let url = format!("http://{at}{}", concrete(r.path));
            let s = http.get(&url).bearer_auth(token_of(role)).send().await.expect("request").status().as_u16();
            assert!(s != 401 && s != 403, "{r:?} with a {role} token: {s}");
        }
    }
    // The table says what the issue asks.
    let need = |m: &str, p: &str| {
        ROUTES.iter().find(|r| r.method.as_str() == m && r.path == p).map(|r| r.need).expect("a route")
    };
    assert_eq!(need("POST", "/v1/clusters/{name}/lease"), Need::Role(Access::Agent));
    assert_eq!(need("POST", "/v1/clusters/{name}/{kind}"), Need::Role(Access::Operator));
    assert_eq!(need("POST", "/v1/workflows/{id}/approve"), Need::Role(Access::Operator));
    assert_eq!(need("POST", "/v1/clusters/{name}/secrets/rotate"), Need::Role(Access::Operator));
    assert_eq!(need("GET", "/v1/clusters/{name}/secrets"), Need::Role(Access::Viewer));
    assert_eq!(need("GET", "/metrics"), Need::Role(Access::Viewer));
    assert_eq!(need("GET", "/v1/snapshot"), Need::Role(Access::Viewer));
    assert_eq!(need("GET", "/v1/rules"), Need::Role(Access::Viewer));
    assert_eq!(need("POST", "/v1/rules/freeze"), Need::Role(Access::Operator));
    assert_eq!(need("POST", "/v1/rules/unfreeze"), Need::Role(Access::Operator));
    let public: Vec<&str> = ROUTES.iter().filter(|r| r.need == Need::Public).map(|r| r.path).collect();
    assert_eq!(public, ["/", "/status", "/status/page.css", "/status/page.js"]);
    // A method a path does not list is refused before any handler.
    let s = http.get(format!("http://{at}/v1/clusters/c/lease")).send().await.expect("request").status();
    assert_eq!(s.as_u16(), 405);

    cancel.cancel();
    let _ = server.await;
}
