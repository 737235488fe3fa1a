//! A switch of primary while pgbench (prepared mode) runs through the
//! writer endpoint: pause (drain), let the replica catch up, promote it,
//! publish the new routing with a raised epoch, stop the old primary,
//! resume. pgbench must finish without a failed transaction or a client
//! restart, no acknowledged commit may be lost, and idle sessions
//! (including a prepared statement and a SET) continue on the new primary.

use std::time::Duration;

use pgdr_model::Epoch;
use pgdr_node::local::StopMode;
use pgdr_proxy::Settings;

use crate::harness::{Proxy, Servers, auto_auth, client_program};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_and_idle_sessions_survive_a_primary_switch() {
    let servers = Servers::start(true).await;
    let replica = servers.replica.clone().expect("replica");
    // A short drain timeout: one session below stays inside a transaction.
    let settings = Settings { drain_timeout: Duration::from_secs(1), ..Settings::default() };
    let proxy = Proxy::start(servers.routing(), auto_auth(), settings).await;
    let port = proxy.writer.port();
    let (ok, _, err) = client_program("pgbench", port, &["-i", "-s", "1", "-q", "postgres"], None).await;
    assert!(ok, "pgbench -i: {err}");

    // Idle sessions with state that moves: a prepared statement, a SET.
    let idle = proxy.connect().await;
    let stmt = idle.prepare("SELECT count(*) FROM pgbench_branches WHERE bid = $1").await.expect("prepare");
    assert_eq!(idle.query_one(&stmt, &[&1i32]).await.expect("prepared").get::<_, i64>(0), 1);
    idle.batch_execute("SET application_name = 'survivor'").await.expect("set");
    let idle2 = proxy.connect().await;
    idle2.simple_query("SELECT 1").await.expect("query");
    // A session holding a temporary table cannot move: it must be closed
    // with a clear error rather than silently lose the table.
    let pinned = proxy.connect().await;
    pinned.batch_execute("CREATE TEMP TABLE mine(a int)").await.expect("temp table");

    // The reader endpoint leads to the replica.
    let reader = crate::harness::connect(&proxy.conninfo(proxy.reader)).await.expect("reader endpoint");
    let row = reader.query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[]).await.expect("reader query");
    assert!(row.get::<_, bool>(0), "the reader endpoint must reach a replica");
    assert_eq!(row.get::<_, i32>(1), replica.port as i32);
    drop(reader);

    // A session inside a transaction when its primary goes away.
    let intx = proxy.connect().await;
    intx.batch_execute("CREATE TABLE lost(a int)").await.expect("create");
    intx.batch_execute("BEGIN; INSERT INTO lost VALUES (1)").await.expect("open transaction");

    let bench = tokio::spawn(async move {
        client_program("pgbench", port, &["-M", "prepared", "-c", "4", "-j", "2", "-T", "8", "postgres"], None).await
    });
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The switchover, as the controller will do it.
    let out = proxy.handle.pause("main").await.expect("pause");
    // Everything drained but the session left inside its transaction.
    assert_eq!(out.active, 1, "{out:?}");
    servers.wait_caught_up().await;
    let new = servers.promote_and_route(&proxy.routing).await;
    servers.primary.stop(StopMode::Fast, Duration::from_secs(30)).await.expect("stop old primary");
    let resumed = proxy.handle.resume("main").expect("resume");
    eprintln!("pause: {out:?}, resume: {resumed:?}");

    let (ok, stdout, stderr) = bench.await.expect("pgbench task");
    eprintln!("{stdout}");
    assert!(ok, "pgbench failed across the switch: {stderr}\n{stdout}");
    assert!(stdout.contains("number of failed transactions: 0"), "{stdout}");
    let processed: i64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .expect("processed count");
    // Every acknowledged pgbench transaction is on the new primary.
    let history: i64 = match new.query_one("SELECT count(*) FROM pgbench_history", &[]).await {
        Ok(r) => r.get(0),
        Err(e) => panic!("history: {e:?}"),
    };
    assert_eq!(history, processed, "acknowledged commits lost or duplicated");

    // Idle sessions continue on the new primary, prepared statement included.
    assert_eq!(idle.query_one(&stmt, &[&1i32]).await.expect("prepared after the switch").get::<_, i64>(0), 1);
    let row = idle
        .query_one("SELECT pg_is_in_recovery(), inet_server_port(), current_setting('application_name')", &[])
        .await
        .expect("where am I");
    assert!(!row.get::<_, bool>(0));
    assert_eq!(row.get::<_, i32>(1), replica.port as i32);
    assert_eq!(row.get::<_, String>(2), "survivor");
    idle2
        .execute("INSERT INTO pgbench_history(tid, bid, aid, delta) VALUES (1, 1, 1, 0)", &[])
        .await
        .expect("write after the switch");
    let e = pinned.simple_query("SELECT * FROM mine").await.expect_err("the pinned session is closed");
    let msg = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| format!("{e:?}"));
    assert!(msg.contains("temporary table"), "{msg}");
    // The transaction that was open on the old primary: an error for it,
    // then the session continues on the new primary.
    let e = intx.batch_execute("INSERT INTO lost VALUES (2)").await.expect_err("the lost transaction reports an error");
    assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::CONNECTION_FAILURE), "{e:?}");
    intx.batch_execute("ROLLBACK").await.expect("rollback");
    let n: i64 = intx.query_one("SELECT count(*) FROM lost", &[]).await.expect("continues").get(0);
    assert_eq!(n, 0, "nothing of the lost transaction may survive");
    // No transaction is left counted (a statement's Close from the client
    // may still be in flight right after the last query: let it finish).
    let mut status = proxy.handle.status();
    for _ in 0..100 {
        if status.clusters[0].active_transactions == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = proxy.handle.status();
    }
    assert_eq!(status.clusters[0].routing.epoch, Epoch(2));
    assert_eq!(status.clusters[0].active_transactions, 0, "{status:?}");
}
