//! A base backup taken from a streaming replica (the primary is not read),
//! restored and rolled forward with the primary's archived WAL.

use std::time::{Duration, Instant};

use pgdr_backup::base::{self, BackupOptions};
use pgdr_backup::restore::{self, RestoreOptions, Target};
use pgdr_backup::{Dest, Progress};
use pgdr_config::Config;
use pgdr_node::{LocalPg, PgBinaries, RunAs};
use tokio_util::sync::CancellationToken;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_from_replica_restores_to_primary_state() {
    let dir = tempdir("pgdr-backup-replica-");
    let (p1, p2) = (free_port(), free_port());
    let (d1, d2) = (dir.path().join("n1"), dir.path().join("n2"));
    let config_path = write_config_nodes(dir.path(), &[(p1, &d1), (p2, &d2)], None, "local");
    let settings = pgdr_backup::archive_settings_with(&wal_exe(), &config_path, "c1");
    let primary = PgGuard::start_new(&d1, p1, &settings).await;
    primary.sql("create table t as select g as id from generate_series(1, 10000) g").await;

    // The replica: pg_basebackup -R from the primary, then started.
    let run_as = RunAs::for_node(None).expect("run as");
    let bin = PgBinaries::find(None).expect("binaries");
    let replica = LocalPg::new(bin, d2.clone(), "127.0.0.1", p2, run_as);
    replica.prepare_dirs().expect("dirs");
    let d2s = d2.display().to_string();
    let p1s = p1.to_string();
    replica
        .run(
            "pg_basebackup",
            &["-h", "127.0.0.1", "-p", &p1s, "-U", "postgres", "-D", &d2s, "-R", "-X", "stream", "-c", "fast"],
            &[("PGPASSWORD", PASSWORD)],
        )
        .await
        .expect("pg_basebackup");
    replica.configure(&[("fsync".into(), "off".into()), ("archive_mode".into(), "off".into())]).expect("configure");
    let replica = PgGuard::adopt(replica);
    replica.pg.start(Duration::from_secs(30)).await.expect("start replica");
    primary.sql("insert into t select g from generate_series(10001, 20000) g").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while replica.one("select count(*) from t").await != "20000" {
        assert!(Instant::now() < deadline, "replica did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let config = Config::load(&config_path).expect("config");
    let local = Dest::open_named(&config, "local").expect("local");
    let (m, _) = base::run_backup(
        &config,
        "c1",
        &local,
        &BackupOptions::default(),
        &Progress::default(),
        &CancellationToken::new(),
    )
    .await
    .expect("backup");
    assert!(
        m.from_replica && m.source_node == "n2",
        "expected a backup from the replica n2, got {} (replica: {})",
        m.source_node,
        m.from_replica
    );
    assert!(m.stop_lsn >= m.start_lsn);

    primary.sql("insert into t values (-1)").await;
    primary.archive_now().await;
    let opts = RestoreOptions {
        backup: Some(m.id.clone()),
        target: Target::Latest,
        to: dir.path().join("restored"),
        restore_command: pgdr_backup::restore_command(&wal_exe(), &config_path, "c1", "local"),
        workers: 2,
        port: free_port(),
        run_as: RunAs::for_node(None).expect("run as"),
        bin_dir: None,
        delta: false,
    };
    restore::restore(&local, "c1", &opts, &Progress::default()).await.expect("restore");
    let restored =
        PgGuard::adopt(restore::start_and_wait(&opts, &login(), Duration::from_secs(120)).await.expect("recovery"));
    assert_same_dump(&primary.dump("postgres").await, &restored.dump("postgres").await);
}
