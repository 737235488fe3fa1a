//! Pause, queue, resume; max_pause expiry gives SQLSTATE 57P03.

use std::sync::Arc;
use std::time::Duration;

use pgdr_proxy::Settings;

use crate::harness::{Proxy, Servers, auto_auth, connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_clients_run_after_resume_in_order() {
    let servers = Servers::start(false).await;
    let proxy = Proxy::start(servers.routing(), auto_auth(), Settings::default()).await;
    let setup = proxy.connect().await;
    setup.batch_execute("CREATE TABLE log(seq bigserial primary key, who int)").await.expect("create");
    // Idle sessions opened before the pause, and a transaction that is
    // running when the pause starts (it must be allowed to finish).
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(proxy.connect().await);
    }
    let running = proxy.connect().await;
    running.batch_execute("BEGIN; INSERT INTO log(who) VALUES (-1)").await.expect("begin");
    let p = tokio::spawn({
        let h = proxy.handle.clone();
        async move { h.pause("main").await.expect("pause") }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.batch_execute("COMMIT").await.expect("the running transaction drains");
    let outcome = p.await.expect("pause task");
    assert!(outcome.drained, "{outcome:?}");

    // While paused: new transactions from idle sessions and new connections queue.
    let order = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for (i, c) in idle.into_iter().enumerate() {
        let order = order.clone();
        waiters.push(tokio::spawn(async move {
            c.execute("INSERT INTO log(who) VALUES ($1)", &[&(i as i32)]).await.expect("queued transaction");
            order.lock().await.push(i);
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ci = proxy.conninfo(proxy.writer);
    let new_conn = tokio::spawn(async move {
        let c = connect(&ci).await.expect("queued connection");
        c.simple_query("SELECT 1").await.expect("query");
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = proxy.handle.status();
    assert!(status.clusters[0].paused);
    assert_eq!(status.clusters[0].queued, 6, "{status:?}");
    let n: i64 = setup_count(&servers).await;
    assert_eq!(n, 1, "nothing queued may run while paused");

    let r = proxy.handle.resume("main").expect("resume");
    assert_eq!(r.released, 6);
    for w in waiters {
        w.await.expect("waiter");
    }
    new_conn.await.expect("new connection");
    // Every queued transaction ran once, after the resume. (The queue
    // releases in arrival order — see the gate's unit test — but the
    // released sessions then run concurrently on their own backends, so
    // their commit order is not asserted here.)
    let direct = Servers::admin(&servers.primary).await;
    let rows = direct.query("SELECT who FROM log WHERE who >= 0 ORDER BY who", &[]).await.expect("rows");
    let who: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(who, vec![0, 1, 2, 3, 4]);
    assert_eq!(order.lock().await.len(), 5);
}

async fn setup_count(servers: &Servers) -> i64 {
    let direct = Servers::admin(&servers.primary).await;
    direct.query_one("SELECT count(*) FROM log", &[]).await.expect("count").get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pause_expiry_gives_cannot_connect_now() {
    let servers = Servers::start(false).await;
    let settings = Settings { max_pause: Duration::from_millis(700), ..Settings::default() };
    let proxy = Proxy::start(servers.routing(), auto_auth(), settings).await;
    let idle = proxy.connect().await;
    proxy.handle.pause("main").await.expect("pause");
    let e = connect(&proxy.conninfo(proxy.writer)).await.expect_err("a new connection times out in the queue");
    assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW), "{e}");
    let e = idle.simple_query("SELECT 1").await.expect_err("a queued transaction times out");
    assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW), "{e}");
    assert_eq!(proxy.handle.status().clusters[0].queued, 0);
    proxy.handle.resume("main").expect("resume");
    proxy.connect().await.simple_query("SELECT 1").await.expect("works after resume");
}

/// With no replica routed, the reader endpoint falls back to the primary;
/// during a pause (a role change) it must not: a reader session's `BEGIN
/// READ WRITE` write, from an idle session or a new connection, waits for
/// the resume like a writer's, so nothing reaches the primary being
/// replaced. Checked directly on the primary at every 50 ms while paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_fallback_to_the_primary_waits_out_a_pause() {
    let servers = Servers::start(false).await;
    let routing = servers.routing();
    assert!(routing.replicas.is_empty());
    let proxy = Proxy::start(routing, auto_auth(), Settings::default()).await;
    let direct = Servers::admin(&servers.primary).await;
    direct.batch_execute("CREATE TABLE log(seq bigserial primary key, who int)").await.expect("create");
    let reader = proxy.conninfo(proxy.reader);
    let idle = connect(&reader).await.expect("reader session");
    idle.simple_query("SELECT 1").await.expect("the reader falls back to the primary");
    let out = proxy.handle.pause("main").await.expect("pause");
    assert!(out.drained, "{out:?}");
    let from_idle = tokio::spawn(async move {
        idle.batch_execute("BEGIN READ WRITE; INSERT INTO log(who) VALUES (1); COMMIT").await.expect("after resume");
    });
    let from_new = tokio::spawn(async move {
        let c = connect(&reader).await.expect("new reader session");
        c.batch_execute("BEGIN READ WRITE; INSERT INTO log(who) VALUES (2); COMMIT").await.expect("after resume");
    });
    for _ in 0..20 {
        let n: i64 = direct.query_one("SELECT count(*) FROM log", &[]).await.expect("count").get(0);
        assert_eq!(n, 0, "a reader session wrote to the primary while the proxy was paused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!from_idle.is_finished() && !from_new.is_finished());
    proxy.handle.resume("main").expect("resume");
    from_idle.await.expect("idle reader");
    from_new.await.expect("new reader");
    let n: i64 = direct.query_one("SELECT count(*) FROM log", &[]).await.expect("count").get(0);
    assert_eq!(n, 2);
}

/// A held pause (a controller in another region, which may not be there to
/// resume, or whose pause may arrive after its resume) ends by itself after
/// its hold, and queued transactions then run; a hold never ends a pause
/// that came after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_pause_ends_by_itself_but_never_a_later_one() {
    let servers = Servers::start(false).await;
    let proxy = Proxy::start(servers.routing(), auto_auth(), Settings::default()).await;
    let idle = proxy.connect().await;
    let hold = Duration::from_millis(600);
    proxy.handle.pause_held("main", None, Some(hold)).await.expect("pause");
    let started = std::time::Instant::now();
    idle.simple_query("SELECT 1").await.expect("the queued transaction runs once the hold ends");
    assert!(started.elapsed() >= Duration::from_millis(400), "it waited for the hold: {:?}", started.elapsed());
    assert!(!proxy.handle.status().clusters[0].paused);

    // Resumed and paused again (no hold) before the first hold ends: that
    // pause stays until it is resumed.
    proxy.handle.pause_held("main", None, Some(hold)).await.expect("held pause");
    proxy.handle.resume("main").expect("resume");
    proxy.handle.pause("main").await.expect("pause");
    tokio::time::sleep(hold * 2).await;
    assert!(proxy.handle.status().clusters[0].paused, "an old hold ended a later pause");
    let queued = tokio::spawn(async move { idle.simple_query("SELECT 1").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!queued.is_finished(), "nothing runs while paused");
    proxy.handle.resume("main").expect("resume");
    queued.await.expect("task").expect("runs after the resume");
}
