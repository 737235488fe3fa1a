//! Ordinary traffic through the proxy: psql, pgbench in every query mode,
//! COPY both ways, cancel, large rows, many connections, auth.

use std::time::Duration;

use pgdr_proxy::{AuthConfig, Settings};

use crate::harness::{Proxy, Servers, auto_auth, client_program, connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_pgbench_copy_cancel_large_rows_many_clients() {
    let servers = Servers::start(false).await;
    let proxy = Proxy::start(servers.routing(), auto_auth(), Settings::default()).await;
    let port = proxy.writer.port();

    // psql, simple protocol, with a multi-statement script.
    let (ok, out, err) = client_program(
        "psql",
        port,
        &["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", "postgres"],
        Some("CREATE TABLE t(id int primary key, v text);\nINSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g;\nSELECT count(*) FROM t;\n"),
    )
    .await;
    assert!(ok, "psql failed: {err}");
    assert!(out.lines().any(|l| l.trim() == "1000"), "unexpected psql output: {out}");

    // COPY out and in through psql.
    let (ok, out, err) = client_program("psql", port, &["-X", "-d", "postgres", "-c", "COPY t TO STDOUT"], None).await;
    assert!(ok, "COPY out failed: {err}");
    assert_eq!(out.lines().count(), 1000);
    let data: String = (1001..=3000).map(|i| format!("{i}\tc{i}\n")).collect();
    let (ok, _, err) =
        client_program("psql", port, &["-X", "-d", "postgres", "-c", "COPY t FROM STDIN"], Some(&data)).await;
    assert!(ok, "COPY in failed: {err}");

    // Extended protocol, prepared statements and a large row (8 MB) both ways.
    let c = proxy.connect().await;
    assert_eq!(c.query_one("SELECT count(*) FROM t", &[]).await.expect("count").get::<_, i64>(0), 3000);
    let stmt = c.prepare("SELECT v FROM t WHERE id = $1").await.expect("prepare");
    assert_eq!(c.query_one(&stmt, &[&2500i32]).await.expect("prepared").get::<_, String>(0), "c2500");
    let big = "x".repeat(8 << 20);
    c.execute("INSERT INTO t VALUES (0, $1)", &[&big]).await.expect("insert large row");
    let back: String = c.query_one("SELECT v FROM t WHERE id = 0", &[]).await.expect("read large row").get(0);
    assert_eq!(back.len(), big.len());
    let copy: i64 = c.query_one("SELECT sum(length(v)) FROM t", &[]).await.expect("sum").get(0);
    assert!(copy > (8 << 20));

    // Cancel: a long pg_sleep cancelled through the proxy's own key.
    let cancel = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel_query(tokio_postgres::NoTls).await.expect("send cancel");
    let r = tokio::time::timeout(Duration::from_secs(10), sleeper).await.expect("cancel took effect").expect("join");
    let e = r.expect_err("the query must be cancelled");
    assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{e}");

    // pgbench in every query mode.
    let (ok, _, err) = client_program("pgbench", port, &["-i", "-s", "1", "-q", "postgres"], None).await;
    assert!(ok, "pgbench -i failed: {err}");
    for mode in ["simple", "extended", "prepared"] {
        let (ok, out, err) =
            client_program("pgbench", port, &["-M", mode, "-c", "4", "-j", "2", "-t", "100", "postgres"], None).await;
        assert!(ok, "pgbench -M {mode} failed: {err}\n{out}");
        assert!(out.contains("number of failed transactions: 0"), "pgbench -M {mode}: {out}");
    }

    // 100 concurrent connections, each running queries.
    let mut tasks = Vec::new();
    for i in 0..100i32 {
        let ci = proxy.conninfo(proxy.writer);
        tasks.push(tokio::spawn(async move {
            let c = connect(&ci).await.expect("connect");
            for _ in 0..5 {
                let n: i32 = c.query_one("SELECT $1::int + 1", &[&i]).await.expect("query").get(0);
                assert_eq!(n, i + 1);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    // Once the clients are gone, no session or transaction is left behind.
    let mut status = proxy.handle.status();
    for _ in 0..100 {
        if status.clusters[0].active_transactions == 0 && status.clusters[0].sessions == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = proxy.handle.status();
    }
    assert_eq!(status.clusters[0].active_transactions, 0, "{status:?}");
    assert_eq!(status.clusters[0].sessions, 0, "{status:?}");
    let metrics = reqwest_get(proxy.api, "/metrics").await;
    assert!(metrics.contains("pgdr_proxy_transactions_total"), "{metrics}");
    assert!(metrics.contains("pgdr_proxy_connections_opened_total"), "{metrics}");
}

async fn reqwest_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("api connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_passthrough() {
    let servers = Servers::start(false).await;
    let proxy = Proxy::start(servers.routing(), auto_auth(), Settings::default()).await;
    let bad = format!("host=127.0.0.1 port={} user=postgres password=wrong dbname=postgres", proxy.writer.port());
    let e = connect(&bad).await.expect_err("wrong password refused");
    assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD), "{e}");
    let unknown = format!("host=127.0.0.1 port={} user=nobody password=x dbname=postgres", proxy.writer.port());
    let e = connect(&unknown).await.expect_err("unknown user refused");
    assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD), "{e}");
    // Still serving after the failures.
    let c = proxy.connect().await;
    c.simple_query("SELECT 1").await.expect("query");

    let pt = Proxy::start(servers.routing(), AuthConfig::Passthrough, Settings::default()).await;
    let c = pt.connect().await;
    assert_eq!(c.query_one("SELECT 42", &[]).await.expect("query").get::<_, i32>(0), 42);
    let bad = format!("host=127.0.0.1 port={} user=postgres password=wrong dbname=postgres", pt.writer.port());
    let e = connect(&bad).await.expect_err("wrong password refused by the backend");
    assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_configured_clear_refusal_otherwise() {
    let servers = Servers::start(false).await;
    let dir = &servers.dir;
    let (cert, key) = (dir.path().join("proxy.crt"), dir.path().join("proxy.key"));
    let st = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success());
    let proxy =
        Proxy::start_tls(servers.routing(), auto_auth(), Settings::default(), Some((cert.clone(), key.clone()))).await;
    let (ok, out, err) = client_program(
        "psql",
        proxy.writer.port(),
        &["-X", "-A", "-t", "-d", "dbname=postgres sslmode=require", "-c", "SELECT 7"],
        None,
    )
    .await;
    assert!(ok, "psql over TLS failed: {err}");
    assert_eq!(out.trim(), "7");
    let (ok, out, err) = client_program(
        "psql",
        proxy.writer.port(),
        &["-X", "-A", "-t", "-d", "dbname=postgres gssencmode=prefer sslmode=disable", "-c", "SELECT 8"],
        None,
    )
    .await;
    assert!(ok, "psql without TLS failed: {err}");
    assert_eq!(out.trim(), "8");

    let plain = Proxy::start(servers.routing(), auto_auth(), Settings::default()).await;
    let (ok, _, err) = client_program(
        "psql",
        plain.writer.port(),
        &["-X", "-d", "dbname=postgres sslmode=require", "-c", "SELECT 1"],
        None,
    )
    .await;
    assert!(!ok, "sslmode=require must fail without a certificate");
    assert!(err.contains("does not support SSL"), "{err}");
    let (ok, _, err) = client_program(
        "psql",
        plain.writer.port(),
        &["-X", "-d", "dbname=postgres sslmode=prefer", "-c", "SELECT 1"],
        None,
    )
    .await;
    assert!(ok, "sslmode=prefer falls back to plaintext: {err}");

    // require_tls: TLS works, a client that does not start TLS is refused
    // before any password is asked for (28000, as a hostssl-only server).
    let strict = Proxy::start_spec(servers.routing(), auto_auth(), Settings::default(), Some((cert, key)), true).await;
    let (ok, out, err) = client_program(
        "psql",
        strict.writer.port(),
        &["-X", "-A", "-t", "-d", "dbname=postgres sslmode=require", "-c", "SELECT 9"],
        None,
    )
    .await;
    assert!(ok, "psql over TLS to a require_tls proxy failed: {err}");
    assert_eq!(out.trim(), "9");
    let (ok, _, err) = client_program(
        "psql",
        strict.writer.port(),
        &["-X", "-d", "dbname=postgres gssencmode=disable sslmode=disable", "-c", "SELECT 1"],
        None,
    )
    .await;
    assert!(!ok, "a client without TLS must be refused by a require_tls proxy");
    assert!(err.contains("accepts only TLS connections"), "{err}");
    assert!(!err.contains("password authentication"), "refused before authentication: {err}");
}
