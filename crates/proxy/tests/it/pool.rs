//! Pooling (`pool = "transaction"`) against real PostgreSQL: clients share
//! backends between transactions, what one client sets never reaches
//! another, state that cannot move pins a client to its backend until it
//! ends, a full pool queues then answers 53300 naming the pool, and 1,000
//! pgbench clients run through one endpoint of a server allowing 100
//! connections.

use std::time::Duration;

use futures::StreamExt;
use pgdr_proxy::Settings;
use tokio_postgres::AsyncMessage;

use crate::harness::{Proxy, Servers, auto_auth, client_program};

fn pooled(size: usize) -> Settings {
    Settings {
        pool: pgdr_config::PoolMode::Transaction,
        pool_size: size,
        pool_timeout: Duration::from_secs(1),
        ..Settings::default()
    }
}

async fn pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0)
}

async fn show(c: &tokio_postgres::Client, what: &str) -> String {
    c.query_one(&format!("SHOW {what}"), &[]).await.expect("show").get(0)
}

/// A client whose notifications arrive on a channel.
async fn listener(conninfo: &str) -> (tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (client, mut conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await.expect("connect");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_share_backends_without_sharing_state_and_pin_while_state_cannot_move() {
    let servers = Servers::start(false).await;
    let proxy = Proxy::start(servers.routing(), auto_auth(), pooled(1)).await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;

    // One backend for both: they take turns on it.
    assert_eq!(pid(&a).await, pid(&b).await, "a pool of one backend serves both clients");

    // SET follows its client and never reaches the other one.
    a.batch_execute("SET work_mem = '7MB'; SET application_name = 'client_a'").await.expect("set");
    assert_eq!(show(&b, "work_mem").await, "4MB", "a SET leaked to another client");
    assert_eq!(show(&b, "application_name").await, "", "application_name leaked");
    assert_eq!(show(&a, "work_mem").await, "7MB");
    assert_eq!(show(&a, "application_name").await, "client_a");
    // A failed SET is not replayed; a rolled-back one neither.
    assert!(a.batch_execute("SET no_such_setting_at_all = 1").await.is_err());
    a.batch_execute("BEGIN; SET work_mem = '9MB'; ROLLBACK").await.expect("rolled back set");
    assert_eq!(show(&b, "work_mem").await, "4MB");
    assert_eq!(show(&a, "work_mem").await, "7MB");

    // Protocol-level named statements of both clients, interleaved, and
    // SQL PREPARE with the same name in each client.
    let sa = a.prepare("SELECT $1::int + 1").await.expect("prepare a");
    let sb = b.prepare("SELECT $1::int * 10").await.expect("prepare b");
    let sb2 = b.prepare("SELECT $1::int + 1").await.expect("same text in b");
    for i in 0..5i32 {
        assert_eq!(a.query_one(&sa, &[&i]).await.expect("a").get::<_, i32>(0), i + 1);
        assert_eq!(b.query_one(&sb, &[&i]).await.expect("b").get::<_, i32>(0), i * 10);
        assert_eq!(b.query_one(&sb2, &[&i]).await.expect("b2").get::<_, i32>(0), i + 1);
    }
    drop(sb2);
    a.batch_execute("PREPARE q AS SELECT 'a'::text").await.expect("sql prepare a");
    b.batch_execute("PREPARE q AS SELECT 'b'::text").await.expect("sql prepare b (same name)");
    let got = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
        rows.into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap_or_default()
    };
    assert_eq!(got(a.simple_query("EXECUTE q").await.expect("execute a")), "a");
    assert_eq!(got(b.simple_query("EXECUTE q").await.expect("execute b")), "b");
    a.batch_execute("DEALLOCATE q").await.expect("deallocate");
    assert_eq!(got(b.simple_query("EXECUTE q").await.expect("execute b again")), "b");
    assert!(a.simple_query("EXECUTE q").await.is_err(), "deallocated in a");

    // Pinning: while `a` holds a temporary table the only backend is its;
    // `b` waits, then gets 53300 naming the pool.
    a.batch_execute("CREATE TEMP TABLE mine (i int)").await.expect("temp");
    let e = b.simple_query("SELECT 1").await.expect_err("the pool is held by a pinned client");
    let msg = e.as_db_error().map(|d| (d.code().code().to_owned(), d.message().to_owned())).unwrap_or_default();
    assert_eq!(msg.0, "53300", "{e}");
    assert!(msg.1.contains("writer pool of postgres@postgres") && msg.1.contains("1 backends"), "{}", msg.1);
    let metrics = proxy.handle.metrics_text();
    assert!(metrics.contains("pgdr_proxy_pins_total{cluster=\"main\",reason=\"temp_table\"} 1"), "{metrics}");
    assert!(metrics.contains("pgdr_proxy_pinned{cluster=\"main\",reason=\"temp_table\"} 1"), "{metrics}");
    a.batch_execute("DROP TABLE mine").await.expect("drop temp");
    let b2 = proxy.connect().await;
    assert_eq!(show(&b2, "work_mem").await, "4MB");
    assert!(proxy.handle.metrics_text().contains("pgdr_proxy_pinned{cluster=\"main\",reason=\"temp_table\"} 0"));

    // Each other pinning reason pins and unpins.
    for (pin, unpin, reason) in [
        ("SELECT pg_advisory_lock(42)", "SELECT pg_advisory_unlock_all()", "advisory_lock"),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "CLOSE c", "with_hold_cursor"),
        ("LISTEN jobs", "UNLISTEN *", "listen"),
    ] {
        let b = proxy.connect().await;
        a.batch_execute(pin).await.expect(pin);
        let e = b.simple_query("SELECT 1").await.expect_err(reason);
        assert_eq!(
            e.as_db_error().map(|d| d.code().code()),
            Some("53300"),
            "{reason}: {e} {}",
            proxy.handle.metrics_text().lines().filter(|l| l.contains("error")).collect::<Vec<_>>().join("\n")
        );
        let b2 = proxy.connect_result().await;
        assert!(b2.is_err(), "{reason}: a new client waits for the pinned backend too");
        a.batch_execute(unpin).await.expect(unpin);
        let b3 = proxy.connect().await;
        b3.simple_query("SELECT 1").await.expect(reason);
        let m = proxy.handle.metrics_text();
        assert!(m.contains(&format!("pgdr_proxy_pins_total{{cluster=\"main\",reason=\"{reason}\"}} 1")), "{m}");
    }

    // A client that leaves inside a transaction leaves no dirty backend.
    let c = proxy.connect().await;
    c.batch_execute("CREATE TABLE t (i int)").await.expect("create");
    c.batch_execute("BEGIN; INSERT INTO t VALUES (1); SET LOCAL work_mem = '1MB'").await.expect("open tx");
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = proxy.connect().await;
    let row = d.query_one("SELECT count(*) FROM t", &[]).await.expect("count");
    assert_eq!(row.get::<_, i64>(0), 0);
    assert_eq!(show(&d, "work_mem").await, "4MB");
    let admin = Servers::admin(&servers.primary).await;
    let row = admin
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'", &[])
        .await
        .expect("activity");
    assert_eq!(row.get::<_, i64>(0), 0, "a backend was left inside the client's transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_the_listening_client() {
    let servers = Servers::start(false).await;
    let proxy = Proxy::start(servers.routing(), auto_auth(), pooled(3)).await;
    let (l1, mut rx1) = listener(&proxy.conninfo(proxy.writer)).await;
    let (l2, mut rx2) = listener(&proxy.conninfo(proxy.writer)).await;
    l1.batch_execute("LISTEN one").await.expect("listen one");
    l2.batch_execute("LISTEN two").await.expect("listen two");
    let n = proxy.connect().await;
    n.batch_execute("NOTIFY one, 'to one'; NOTIFY two, 'to two'").await.expect("notify");
    let got1 = tokio::time::timeout(Duration::from_secs(5), rx1.recv()).await.expect("notification one");
    let got2 = tokio::time::timeout(Duration::from_secs(5), rx2.recv()).await.expect("notification two");
    assert_eq!(got1.as_deref(), Some("to one"));
    assert_eq!(got2.as_deref(), Some("to two"));
    assert!(rx1.try_recv().is_err() && rx2.try_recv().is_err(), "each client gets only its channel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pgbench_clients_on_a_server_allowing_a_hundred() {
    let servers = Servers::start_with(false, &[("max_connections", "100")]).await;
    let settings = Settings { pool_timeout: Duration::from_secs(60), ..pooled(40) };
    let proxy = Proxy::start(servers.routing(), auto_auth(), settings).await;
    let port = proxy.writer.port();
    let (ok, _, err) = client_program("pgbench", port, &["-i", "-s", "2", "-q", "postgres"], None).await;
    assert!(ok, "pgbench -i: {err}");
    for mode in ["prepared"] {
        let (ok, out, err) =
            client_program("pgbench", port, &["-M", mode, "-c", "1000", "-j", "2", "-t", "2", "-n", "postgres"], None)
                .await;
        assert!(ok, "pgbench -M {mode} through the pool: {out}\n{err}");
        assert!(out.contains("number of failed transactions: 0"), "{mode}: {out}");
        assert!(out.contains("number of transactions actually processed: 2000/2000"), "{mode}: {out}");
    }
    let m = proxy.handle.metrics_text();
    assert!(m.contains("pgdr_proxy_pool_size{"), "{m}");
}

/// The value of a metric line starting with `prefix` (labels included).
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_queues_in_order_and_keeps_idle_backends_warm() {
    let servers = Servers::start(false).await;
    let settings = Settings { pool_min_idle: 2, pool_timeout: Duration::from_secs(5), ..pooled(2) };
    let proxy = Proxy::start(servers.routing(), auto_auth(), settings).await;
    let labels = "{cluster=\"main\",endpoint=\"writer\",user=\"postgres\",database=\"postgres\"}";

    // A client's first transaction leaves the pool with min_idle ready.
    let a = proxy.connect().await;
    a.simple_query("SELECT 1").await.expect("first");
    a.simple_query("SELECT 1").await.expect("second");
    // (The backend is given back and a new one opened just after the
    // client has its answer.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut m = proxy.handle.metrics_text();
    while metric(&m, &format!("pgdr_proxy_pool_idle{labels}")) < 2.0 {
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = proxy.handle.metrics_text();
    }
    assert_eq!(metric(&m, "pgdr_proxy_pool_backends_opened_total{cluster=\"main\"}"), 2.0, "{m}");

    // Both backends held inside transactions: the next clients wait, in
    // the order they came, and are counted while they do.
    a.batch_execute("CREATE TABLE served (id serial, i int)").await.expect("create");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(proxy.connect().await);
    }
    let b = proxy.connect().await;
    a.batch_execute("BEGIN").await.expect("begin a");
    b.batch_execute("BEGIN").await.expect("begin b");
    let mut waiters = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        waiters.push(tokio::spawn(async move {
            c.batch_execute(&format!("INSERT INTO served (i) VALUES ({i})")).await.expect("waited insert");
        }));
        // Each waiter queued before the next one comes.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while metric(&proxy.handle.metrics_text(), &format!("pgdr_proxy_pool_waiting{labels}")) < (i + 1) as f64 {
            assert!(std::time::Instant::now() < deadline, "client {i} is not waiting");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let m = proxy.handle.metrics_text();
    assert_eq!(metric(&m, &format!("pgdr_proxy_pool_in_use{labels}")), 2.0, "{m}");
    a.batch_execute("COMMIT").await.expect("commit a");
    for w in waiters {
        w.await.expect("waiter");
    }
    let served: Vec<i32> =
        a.query("SELECT i FROM served ORDER BY id", &[]).await.expect("served").iter().map(|r| r.get(0)).collect();
    assert_eq!(served, vec![0, 1, 2], "first come, first served");
    b.batch_execute("COMMIT").await.expect("commit b");
    let m = proxy.handle.metrics_text();
    assert_eq!(metric(&m, &format!("pgdr_proxy_pool_waiting{labels}")), 0.0, "{m}");
    assert!(metric(&m, "pgdr_proxy_pool_wait_seconds_count{cluster=\"main\"}") >= 3.0, "{m}");
    assert_eq!(metric(&m, "pgdr_proxy_pool_backends_opened_total{cluster=\"main\"}"), 2.0, "no churn: {m}");
}
