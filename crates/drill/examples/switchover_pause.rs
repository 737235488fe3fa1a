//! One switchover as long-lived applications see it, for
//! `bench/switchover.sh`: N idle sessions through the proxy, each holding a
//! named prepared statement, and one writer committing through the proxy
//! with its own prepared `INSERT`; then `pgdr switchover`, then every idle
//! session runs its prepared statement again.
//!
//! Prints one JSON line: the write pause (the longest time between two of
//! the writer's acknowledged commits from the request until 1.5 s after the
//! switchover returned), the switchover's own duration, the writer's errors,
//! and how many idle sessions and prepared statements survived.
//!
//! Usage: switchover_pause --conninfo 'host=... port=<proxy writer> ...'
//!        [--password-file F] --pgdr PATH --config pgdr.toml --cluster main
//!        --to NODE [--idle 50]
//!
//! The password comes from a file, never the command line (where `ps`
//! shows it).

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Args {
    conninfo: String,
    pgdr: String,
    config: String,
    cluster: String,
    to: String,
    idle: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        conninfo: String::new(),
        pgdr: "pgdr".into(),
        config: "pgdr.toml".into(),
        cluster: "main".into(),
        to: String::new(),
        idle: 50,
    };
    let mut password = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--conninfo" => a.conninfo = value()?,
            "--password-file" => {
                let f = value()?;
                let pw = std::fs::read_to_string(&f).map_err(|e| format!("--password-file {f}: {e}"))?;
                let pw = pw.trim_end_matches(['\n', '\r']).replace('\\', "\\\\").replace('\'', "\\'");
                password = Some(format!(" password='{pw}'"));
            }
            "--pgdr" => a.pgdr = value()?,
            "--config" => a.config = value()?,
            "--cluster" => a.cluster = value()?,
            "--to" => a.to = value()?,
            "--idle" => a.idle = value()?.parse().map_err(|e| format!("--idle: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.conninfo.is_empty() || a.to.is_empty() {
        return Err("--conninfo and --to are required".into());
    }
    if let Some(p) = password {
        a.conninfo.push_str(&p);
    }
    pgdr_tls::pg::split_conninfo(&a.conninfo).map_err(|e| format!("--conninfo: {e}"))?;
    Ok(a)
}

/// Connects over TLS when the conninfo asks for it (`sslmode=verify-full
/// sslrootcert=CA`: the sandbox's proxies take only TLS clients); the
/// conninfo was checked by `args`.
async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (info, tls) = pgdr_tls::pg::split_conninfo(conninfo).unwrap_or_else(|_| (conninfo.to_owned(), None));
    pgdr_tls::pg::connect_str(&info, tls.as_ref()).await
}

#[derive(Default)]
struct Writer {
    acks: Vec<Instant>,
    errors: Vec<(Instant, String)>,
}

async fn writer(conninfo: String, log: Arc<Mutex<Writer>>, stop: Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    let mut session: Option<(tokio_postgres::Client, tokio_postgres::Statement)> = None;
    while !stop.load(Ordering::Relaxed) {
        let (client, insert) = match session.take() {
            Some(s) => s,
            None => {
                let r = async {
                    let c = connect(&conninfo).await?;
                    let s = c.prepare("INSERT INTO pgdr_bench.writes (at) VALUES (now())").await?;
                    Ok::<_, tokio_postgres::Error>((c, s))
                }
                .await;
                match r {
                    Ok(s) => s,
                    Err(e) => {
                        if let Ok(mut l) = log.lock() {
                            l.errors.push((Instant::now(), e.to_string()));
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), client.execute(&insert, &[])).await {
            Ok(Ok(_)) => {
                if let Ok(mut l) = log.lock() {
                    l.acks.push(Instant::now());
                }
                session = Some((client, insert));
            }
            Ok(Err(e)) => {
                if let Ok(mut l) = log.lock() {
                    l.errors.push((Instant::now(), e.to_string()));
                }
            }
            Err(_) => {
                if let Ok(mut l) = log.lock() {
                    l.errors.push((Instant::now(), "no answer within 10 s".into()));
                }
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("switchover_pause: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(a).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchover_pause: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(a: Args) -> Result<(), String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let setup = connect(&a.conninfo).await.map_err(|e| format!("connecting through the proxy: {e}"))?;
    setup
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS pgdr_bench; \
             CREATE TABLE IF NOT EXISTS pgdr_bench.writes (id bigserial PRIMARY KEY, at timestamptz NOT NULL)",
        )
        .await
        .map_err(|e| format!("setup: {e}"))?;
    drop(setup);
    // Idle sessions, each with a named prepared statement, used once.
    let mut idle = Vec::new();
    for _ in 0..a.idle {
        let c = connect(&a.conninfo).await.map_err(|e| format!("idle session: {e}"))?;
        let s = c
            .prepare("SELECT count(*) FROM pgdr_bench.writes WHERE id > $1")
            .await
            .map_err(|e| format!("prepare: {e}"))?;
        c.query_one(&s, &[&0i64]).await.map_err(|e| format!("first use of a prepared statement: {e}"))?;
        idle.push((c, s));
    }
    let log = Arc::new(Mutex::new(Writer::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(writer(a.conninfo.clone(), log.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let requested = Instant::now();
    let (pgdr, config, cluster, to) = (a.pgdr.clone(), a.config.clone(), a.cluster.clone(), a.to.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(pgdr)
            .args(["switchover", "--cluster", &cluster, "--to", &to, "--yes", "--json", "--config", &config])
            .output()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("running pgdr switchover: {e}"))?;
    let done = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = task.await;
    if !out.status.success() {
        return Err(format!(
            "pgdr switchover failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let workflow: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();

    let mut idle_ok = 0;
    let mut idle_errors = Vec::new();
    for (c, s) in &idle {
        match tokio::time::timeout(Duration::from_secs(5), c.query_one(s, &[&0i64])).await {
            Ok(Ok(_)) => idle_ok += 1,
            Ok(Err(e)) => idle_errors.push(e.to_string()),
            Err(_) => idle_errors.push("no answer within 5 s".into()),
        }
    }

    let l = match log.lock() {
        Ok(l) => l,
        Err(p) => p.into_inner(),
    };
    let mut prev = l.acks.iter().copied().filter(|t| *t <= requested).max().unwrap_or(requested);
    let mut pause = Duration::ZERO;
    for t in l.acks.iter().copied().filter(|t| *t > requested) {
        pause = pause.max(t - prev);
        prev = t;
    }
    let errors_during = l.errors.iter().filter(|(t, _)| *t >= requested).map(|(_, e)| e.clone()).collect::<Vec<_>>();
    let steps: Vec<serde_json::Value> = workflow["steps"]
        .as_array()
        .map(|s| s.iter().map(|s| serde_json::json!({"step": s["name"], "ms": s["duration_ms"]})).collect())
        .unwrap_or_default();
    let line = serde_json::json!({
        "to": a.to,
        "write_pause_ms": pause.as_secs_f64() * 1000.0,
        "switchover_ms": (done - requested).as_secs_f64() * 1000.0,
        "writer_commits": l.acks.len(),
        "writer_errors": errors_during.len(),
        "writer_error_sample": errors_during.first(),
        "idle_sessions": a.idle,
        "idle_sessions_ok": idle_ok,
        "idle_error_sample": idle_errors.first(),
        "steps": steps,
    });
    println!("{line}");
    Ok(())
}
