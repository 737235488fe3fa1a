//! The writer endpoint holds a new connection, or an idle session starting a
//! transaction, while the primary refuses connections: it succeeds once the
//! routing names a new primary within max_pause, and gets SQLSTATE 57P03
//! (not a hang, not 08006) when nothing changes.

use std::time::Duration;

use pgdr_node::local::StopMode;
use pgdr_proxy::Settings;
use tokio_postgres::error::SqlState;

use crate::harness::{Proxy, Servers, auto_auth, connect};

fn held_total(proxy: &Proxy) -> u64 {
    proxy
        .handle
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix("pgdr_proxy_held_on_unreachable_total{cluster=\"main\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_waits_for_a_new_primary_while_the_old_one_refuses() {
    let servers = Servers::start(true).await;
    let replica = servers.replica.clone().expect("replica");
    let settings = Settings { max_pause: Duration::from_secs(20), ..Settings::default() };
    let proxy = Proxy::start(servers.routing(), auto_auth(), settings).await;
    // Verifiers are loaded and an idle session exists before the fault.
    let idle = proxy.connect().await;
    idle.simple_query("SELECT 1").await.expect("query");

    servers.primary.stop(StopMode::Immediate, Duration::from_secs(30)).await.expect("stop primary");

    // A new connection and an idle session's next transaction, both while
    // nothing accepts connections at the routed primary.
    let ci = proxy.conninfo(proxy.writer);
    let new_conn = tokio::spawn(async move {
        let c = connect(&ci).await.expect("the new connection is held, then succeeds");
        c.query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[]).await.expect("query on the new primary")
    });
    let idle_tx = tokio::spawn(async move {
        let r = idle.query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[]).await;
        (idle, r)
    });
    // Both are held (counted) before anything changes.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while held_total(&proxy) < 2 {
        assert!(std::time::Instant::now() < deadline, "clients were not held:\n{}", proxy.handle.metrics_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!new_conn.is_finished() && !idle_tx.is_finished(), "held clients must not fail");

    servers.promote_and_route(&proxy.routing).await;

    let row = new_conn.await.expect("new connection task");
    assert!(!row.get::<_, bool>(0), "the new connection must reach the new primary");
    assert_eq!(row.get::<_, i32>(1), replica.port as i32);
    let (idle, r) = idle_tx.await.expect("idle session task");
    let row = r.expect("the idle session's transaction runs on the new primary");
    assert!(!row.get::<_, bool>(0));
    assert_eq!(row.get::<_, i32>(1), replica.port as i32);
    idle.simple_query("SELECT 1").await.expect("the session continues");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_gives_cannot_connect_now_after_max_pause_when_nothing_changes() {
    let servers = Servers::start(false).await;
    let settings = Settings { max_pause: Duration::from_millis(800), ..Settings::default() };
    let proxy = Proxy::start(servers.routing(), auto_auth(), settings).await;
    let idle = proxy.connect().await;
    idle.simple_query("SELECT 1").await.expect("query");

    servers.primary.stop(StopMode::Immediate, Duration::from_secs(30)).await.expect("stop primary");

    let e = connect(&proxy.conninfo(proxy.writer)).await.expect_err("no primary answers");
    assert_eq!(e.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{e}");
    let e = idle.simple_query("SELECT 1").await.expect_err("no primary answers");
    assert_eq!(e.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{e}");
    assert_eq!(held_total(&proxy), 2, "{}", proxy.handle.metrics_text());
    let status = proxy.handle.status();
    assert_eq!(status.clusters[0].active_transactions, 0, "{status:?}");

    // The reader endpoint is unchanged: it fails at once, as before.
    let e = connect(&proxy.conninfo(proxy.reader)).await.expect_err("reader fails");
    assert_eq!(e.code(), Some(&SqlState::CONNECTION_FAILURE), "{e}");
}
