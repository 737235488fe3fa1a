use std::time::Duration;

use pgdr_drill::checker;
use pgdr_drill::workload::{Workload, WorkloadSpec, prepare};
use pgdr_node::local::{Login, StopMode};
use pgdr_node::{LocalPg, PgBinaries, RunAs};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Stops the server when the test ends, pass or fail.
pub(crate) struct PgGuard(pub(crate) LocalPg);

impl Drop for PgGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.postmaster_pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGQUIT);
        }
    }
}

pub(crate) async fn start_pg(dir: &std::path::Path) -> (PgGuard, Login) {
    let bin = PgBinaries::find(None).expect("PostgreSQL binaries");
    std::process::Command::new("chmod").arg("755").arg(dir).status().expect("chmod");
    let run_as = RunAs::for_node(None).expect("run as");
    let pg = LocalPg::new(bin, dir.join("data"), "127.0.0.1", free_port(), run_as);
    pg.initdb("postgres", "secret").await.expect("initdb");
    pg.configure(&[("fsync".into(), "off".into())]).expect("configure");
    let guard = PgGuard(pg.clone());
    pg.start(Duration::from_secs(30)).await.expect("start");
    (guard, Login { user: "postgres".into(), password: Some("secret".into()), database: "postgres".into(), tls: None })
}

#[tokio::test]
async fn checker_reports_an_acknowledged_commit_deleted_on_purpose() {
    let dir = tempfile::Builder::new().prefix("pgdr-drill-").tempdir_in("/tmp").expect("tempdir");
    let (guard, login) = start_pg(dir.path()).await;
    let pg = &guard.0;
    let client = pg.connect(&login).await.expect("connect");
    prepare(&client).await.expect("ledger");

    let conninfo = pg.conninfo(&login);
    let mut spec = WorkloadSpec::new(conninfo.clone());
    spec.reader = Some(conninfo);
    spec.writers = 3;
    let workload = Workload::start(spec);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let record = workload.stop().await;
    println!(
        "workload: {} acknowledged, {} failures, {} reads",
        record.acks.len(),
        record.failures.len(),
        record.reads.len()
    );
    assert!(record.acks.len() > 10, "the workload committed rows: {}", record.acks.len());
    assert!(record.failures.is_empty(), "no client errors on a healthy server: {:?}", record.failures);
    assert!(!record.reads.is_empty(), "readers read");

    // Everything acknowledged is there.
    let clean = checker::check_ledger(&client, &record, None).await.expect("check");
    assert_eq!(clean.acknowledged_commits, record.acks.len() as u64);
    assert!(clean.lost.is_empty(), "nothing lost yet: {:?}", clean.lost);

    // Lose two acknowledged commits on purpose.
    let victims = [record.acks[3], record.acks[record.acks.len() / 2]];
    for v in victims {
        client.execute("DELETE FROM pgdr_drill.ledger WHERE id = $1", &[&v.id]).await.expect("delete");
    }
    let fault = record.acks.last().map(|a| a.at_ms).unwrap_or(0.0);
    let check = checker::check_ledger(&client, &record, Some(fault)).await.expect("check");
    println!("checker after deleting two rows: lost {:?}, RPO {:.3} s", check.lost, check.rpo_seconds);
    let mut lost: Vec<i64> = check.lost.iter().map(|l| l.id).collect();
    lost.sort();
    let mut want: Vec<i64> = victims.iter().map(|v| v.id).collect();
    want.sort();
    assert_eq!(lost, want, "exactly the deleted acknowledged commits are reported lost");
    assert_eq!(check.lost_commits(), 2);
    let first = victims.iter().map(|v| v.at_ms).fold(f64::INFINITY, f64::min);
    assert!((check.rpo_seconds - (fault - first) / 1000.0).abs() < 1e-9, "RPO spans oldest lost ack to the fault");
    pg.stop(StopMode::Immediate, Duration::from_secs(10)).await.expect("stop");
}

#[tokio::test]
async fn killed_server_shows_as_client_errors_and_rto_after_restart() {
    let dir = tempfile::Builder::new().prefix("pgdr-drill-").tempdir_in("/tmp").expect("tempdir");
    let (guard, login) = start_pg(dir.path()).await;
    let pg = &guard.0;
    let client = pg.connect(&login).await.expect("connect");
    prepare(&client).await.expect("ledger");
    drop(client);
    let mut spec = WorkloadSpec::new(pg.conninfo(&login));
    spec.writers = 2;
    spec.connect_timeout = Duration::from_secs(2);
    let workload = Workload::start(spec);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let fault = workload.now_ms();
    let pid = pg.postmaster_pid().expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && t.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("killed postmaster reaped after {:?}", t.elapsed());
    pg.start(Duration::from_secs(30)).await.expect("restart");
    let t = std::time::Instant::now();
    let probe = pg.connect(&login).await.expect("connect after restart");
    probe
        .execute("INSERT INTO pgdr_drill.ledger (id, writer) VALUES (1, 99)", &[])
        .await
        .expect("insert after restart");
    println!("direct write after restart took {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let record = workload.stop().await;
    let (kinds, _) = checker::errors_by_kind(&record);
    println!("errors by kind: {kinds:?}");
    assert!(!record.failures.is_empty(), "a killed server is seen by clients");
    let rto = checker::writes_unavailable(&record, fault).map(|o| o.seconds());
    println!("RTO (kill → restart → first write): {rto:?}");
    assert!(rto.is_some_and(|r| r * 1000.0 >= 500.0), "writes came back after the restart, not before: {rto:?}");
    let client = pg.connect(&login).await.expect("connect");
    // fsync is off but the server was killed, not the machine: nothing acknowledged is lost.
    let check = checker::check_ledger(&client, &record, Some(fault)).await.expect("check");
    assert!(check.lost.is_empty(), "crash recovery keeps every acknowledged commit: {:?}", check.lost);
}
