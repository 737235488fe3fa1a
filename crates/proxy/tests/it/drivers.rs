//! Python drivers through the pooled proxy (issue 19): psycopg 3 with
//! `prepare_threshold=0` (every parameterised query a server-side
//! prepared statement) and asyncpg (every parameterised query a named
//! statement), 200 clients on a pool of 20 backends, with a switchover in
//! the middle of the run: no client error, and every committed
//! transaction is on the new primary. `scripts/setup` installs both.

use std::time::Duration;

use pgdr_node::local::StopMode;
use pgdr_proxy::Settings;

use crate::harness::{PASSWORD, Proxy, Servers, auto_auth};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/drivers/clients.py");
const CLIENTS: usize = 200;
const SECONDS: u64 = 14;

async fn two_hundred_clients_across_a_switchover(driver: &str) {
    let module = if driver == "psycopg" { "psycopg" } else { "asyncpg" };
    let have = std::process::Command::new("python3").args(["-c", &format!("import {module}")]).status();
    assert!(have.is_ok_and(|s| s.success()), "python3 cannot import {module}: run scripts/setup");

    let servers = Servers::start(true).await;
    let settings = Settings {
        pool_size: 20,
        pool_timeout: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(2),
        ..Settings::default()
    };
    let proxy = Proxy::start(servers.routing(), auto_auth(), settings).await;
    Servers::admin(&servers.primary)
        .await
        .batch_execute("CREATE TABLE drv (client int, n int)")
        .await
        .expect("create table");

    let port = proxy.writer.port().to_string();
    let run = tokio::process::Command::new("python3")
        .args([SCRIPT, driver, &port, PASSWORD, &CLIENTS.to_string(), &SECONDS.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    tokio::time::sleep(Duration::from_secs(SECONDS / 2)).await;

    // The switchover, as the controller does it, mid-run.
    let paused = proxy.handle.pause("main").await.expect("pause");
    servers.wait_caught_up().await;
    let new = servers.promote_and_route(&proxy.routing).await;
    servers.primary.stop(StopMode::Fast, Duration::from_secs(30)).await.expect("stop old primary");
    let resumed = proxy.handle.resume("main").expect("resume");
    eprintln!("{driver}: pause {paused:?}, resume {resumed:?}");

    let out = run.wait_with_output().await.expect("python3 output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{driver}: {stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    eprintln!("{driver}: {report}");
    assert_eq!(report["errors"], 0, "{driver}: client errors: {report}");
    let done = report["transactions"].as_i64().expect("transactions");
    assert!(done > CLIENTS as i64, "{driver}: too little ran: {report}");
    let rows: i64 = new.query_one("SELECT count(*) FROM drv", &[]).await.expect("count").get(0);
    assert_eq!(rows, done, "{driver}: committed transactions lost or doubled");
    let m = proxy.handle.metrics_text();
    let opened = m
        .lines()
        .find_map(|l| l.strip_prefix("pgdr_proxy_pool_backends_opened_total{cluster=\"main\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_default();
    assert!(opened <= 40.0, "{driver}: at most 20 backends on each primary, opened {opened}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_200_clients_on_20_backends_across_a_switchover() {
    two_hundred_clients_across_a_switchover("psycopg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_200_clients_on_20_backends_across_a_switchover() {
    two_hundred_clients_across_a_switchover("asyncpg").await;
}
