//! No silent loss of session state at a move (issue 19, item 7): across a
//! switchover (session mode) and a failover (pooled), LISTEN channels and
//! SQL prepared statements (also from a query of several statements) are
//! carried to the new primary, with settings made by `SET` and by
//! `set_config`; an idle listener follows the primary without sending
//! anything and is told (NoticeResponse) that notifications may have been
//! missed; a prepared statement made by dynamic SQL, whose text the proxy
//! cannot know, ends its session with a clear error at the move.

use std::time::Duration;

use futures::StreamExt;
use pgdr_node::local::StopMode;
use pgdr_proxy::Settings;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

use crate::harness::{Proxy, Servers, auto_auth};

enum Event {
    Notification(String, String),
    Notice(String),
}

/// A client whose notifications and notices arrive on a channel.
async fn listener(conninfo: &str) -> (tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<Event>) {
    let (client, mut conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await.expect("connect");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = stream.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    let _ = tx.send(Event::Notice(format!("connection error: {e:?}")));
                    break;
                }
            };
            let _ = tx.send(match m {
                AsyncMessage::Notification(n) => Event::Notification(n.channel().to_owned(), n.payload().to_owned()),
                AsyncMessage::Notice(n) => Event::Notice(n.message().to_owned()),
                _ => continue,
            });
        }
    });
    (client, rx)
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>, what: &str) -> Event {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 15 s"))
        .unwrap_or_else(|| panic!("{what}: the listener's connection ended"))
}

async fn text(c: &tokio_postgres::Client, sql: &str) -> String {
    let rows = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    rows.into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default()
}

async fn state_follows_the_primary(pooled: bool, failover: bool) {
    let servers = Servers::start(true).await;
    let replica = servers.replica.clone().expect("replica");
    let settings = Settings {
        pool: if pooled { pgdr_config::PoolMode::Transaction } else { pgdr_config::PoolMode::Session },
        pool_size: 4,
        drain_timeout: Duration::from_secs(1),
        ..Settings::default()
    };
    let proxy = Proxy::start(servers.routing(), auto_auth(), settings).await;
    let conninfo = proxy.conninfo(proxy.writer);

    let (l, mut events) = listener(&conninfo).await;
    l.batch_execute("LISTEN jobs; LISTEN \"Other Ch\"").await.expect("listen");
    let p = proxy.connect().await;
    p.batch_execute("PREPARE q1 (int) AS SELECT $1 * 2").await.expect("prepare");
    p.batch_execute("SELECT 1; PREPARE q2 AS SELECT 'two;'::text; SET work_mem = '5MB'").await.expect("several");
    p.batch_execute("SELECT set_config('application_name', 'via_set_config', false)").await.expect("set_config");
    let d = proxy.connect().await;
    d.batch_execute("DO $$ BEGIN EXECUTE 'PREPARE dyn AS SELECT 1'; END $$").await.expect("dynamic prepare");
    assert_eq!(text(&d, "EXECUTE dyn").await, "1");

    let n = proxy.connect().await;
    n.batch_execute("NOTIFY jobs, 'before'").await.expect("notify");
    match next(&mut events, "before the move").await {
        Event::Notification(c, m) => assert_eq!((c.as_str(), m.as_str()), ("jobs", "before")),
        Event::Notice(m) => panic!("unexpected notice {m}"),
    }
    drop(n);

    // The role change, as the controller does it.
    let paused = if failover {
        servers.primary.stop(StopMode::Immediate, Duration::from_secs(30)).await.expect("crash the primary");
        None
    } else {
        let out = proxy.handle.pause("main").await.expect("pause");
        servers.wait_caught_up().await;
        Some(out)
    };
    servers.promote_and_route(&proxy.routing).await;
    if paused.is_some() {
        servers.primary.stop(StopMode::Fast, Duration::from_secs(30)).await.expect("stop old primary");
        proxy.handle.resume("main").expect("resume");
    }

    // The idle listener followed by itself and was told (the server's
    // own notice about its shutdown may come first).
    loop {
        match next(&mut events, "the move's notice").await {
            Event::Notice(m) if m.contains("may have been missed") => break,
            Event::Notice(m) => assert!(m.contains("shutdown") && !m.contains("connection error"), "{m}"),
            Event::Notification(c, m) => panic!("unexpected notification {c} {m}"),
        }
    }
    let n = proxy.connect().await;
    n.batch_execute("NOTIFY jobs, 'after'; NOTIFY \"Other Ch\", 'other'").await.expect("notify after");
    let mut got = Vec::new();
    for _ in 0..2 {
        match next(&mut events, "after the move").await {
            Event::Notification(c, m) => got.push(format!("{c}:{m}")),
            Event::Notice(m) => panic!("unexpected notice {m}"),
        }
    }
    got.sort();
    assert_eq!(got, ["Other Ch:other", "jobs:after"]);
    let port: String = text(&l, "SELECT inet_server_port()").await;
    assert_eq!(port, replica.port.to_string());

    // SQL prepared statements and settings came along.
    assert_eq!(text(&p, "EXECUTE q1(21)").await, "42");
    assert_eq!(text(&p, "EXECUTE q2").await, "two;");
    assert_eq!(text(&p, "SHOW work_mem").await, "5MB");
    assert_eq!(text(&p, "SHOW application_name").await, "via_set_config");
    assert_eq!(text(&p, "SELECT pg_is_in_recovery()").await, "f");

    // The statement prepared by dynamic SQL could not come along: the
    // session ends with an error saying so.
    let e = d.simple_query("EXECUTE dyn").await.expect_err("the session cannot move");
    let msg = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| format!("{e:?}"));
    assert!(msg.contains("dynamic SQL") && msg.contains("reconnect"), "{msg}");
    if pooled {
        let m = proxy.handle.metrics_text();
        assert!(m.contains("pgdr_proxy_pins_total{cluster=\"main\",reason=\"untracked_prepare\"} 1"), "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_state_follows_a_switchover() {
    state_follows_the_primary(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_state_follows_a_failover() {
    state_follows_the_primary(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_state_follows_a_switchover() {
    state_follows_the_primary(true, false).await;
}
