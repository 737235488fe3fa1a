//! The S3 destination against moto's S3-compatible server on loopback (a
//! stand-in for the cloud API, which cannot be reached here): WAL archiving
//! while the destination goes down and comes back, idempotent pushes, and a
//! backup restored from S3.

use std::process::Command;
use std::time::Duration;

use pgdr_backup::base::{self, BackupOptions};
use pgdr_backup::restore::{self, RestoreOptions, Target};
use pgdr_backup::{Dest, Progress};
use pgdr_config::Config;
use pgdr_node::RunAs;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

fn wal_push(config: &std::path::Path, path: &std::path::Path) -> std::process::Output {
    Command::new(wal_exe())
        .args(["--config"])
        .arg(config)
        .args(["wal-push", "--cluster", "c1", "--to", "s3"])
        .arg(path)
        .output()
        .expect("run pgdr-wal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wal_push_down_and_up_then_backup_restore() {
    let dir = tempdir("pgdr-backup-s3-");
    let s3_port = free_port();
    let mut moto = Moto::start(s3_port);
    moto.create_bucket("pgdr-test");
    let data = dir.path().join("src");
    let port = free_port();
    let config_path = write_config(dir.path(), port, &data, Some(s3_port), "s3");

    // A fake segment in a pg_wal-like folder.
    let wal_dir = dir.path().join("pg_wal");
    std::fs::create_dir_all(wal_dir.join("archive_status")).expect("mkdir");
    let seg = wal_dir.join("000000010000000000000042");
    std::fs::write(&seg, vec![7u8; 1 << 20]).expect("segment");

    // Destination down: a loud failure, non-zero, so PostgreSQL retries.
    moto.kill();
    let out = wal_push(&config_path, &seg);
    assert!(!out.status.success(), "push to a dead destination must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("destination \"s3\""), "{err}");

    // Back up: the retry succeeds; a second push of the same bytes succeeds too.
    let moto = Moto::start(s3_port);
    moto.create_bucket("pgdr-test");
    let out = wal_push(&config_path, &seg);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = wal_push(&config_path, &seg);
    assert!(out.status.success(), "same content again is a success: {}", String::from_utf8_lossy(&out.stderr));
    // Different contents under the same name: refused loudly.
    std::fs::write(&seg, vec![8u8; 1 << 20]).expect("segment");
    let out = wal_push(&config_path, &seg);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DIFFERENT contents"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Look-ahead: ready segments after the requested one go up in the same call.
    for n in ["000000010000000000000043", "000000010000000000000044"] {
        std::fs::write(wal_dir.join(n), vec![1u8; 1 << 16]).expect("segment");
        std::fs::write(wal_dir.join("archive_status").join(format!("{n}.ready")), "").expect("ready");
    }
    std::fs::write(wal_dir.join("000000010000000000000041"), vec![2u8; 1 << 16]).expect("segment");
    let out = wal_push(&config_path, &wal_dir.join("000000010000000000000041"));
    assert!(out.status.success());
    assert!(wal_dir.join("pgdr-pushed/000000010000000000000044").exists(), "look-ahead should have pushed 44");
    let out = wal_push(&config_path, &wal_dir.join("000000010000000000000044"));
    assert!(out.status.success());
    assert!(!wal_dir.join("pgdr-pushed/000000010000000000000044").exists(), "the mark is consumed");

    // A real cluster archiving to S3, backed up there and restored from there.
    let settings = pgdr_backup::archive_settings_with(&wal_exe(), &config_path, "c1");
    let src = PgGuard::start_new(&data, port, &settings).await;
    src.sql("create table t as select g as id, repeat('x', 100) as pad from generate_series(1, 5000) g").await;
    let config = Config::load(&config_path).expect("config");
    let s3 = Dest::open_named(&config, "s3").expect("s3");
    let (m, _) = base::run_backup(
        &config,
        "c1",
        &s3,
        &BackupOptions::default(),
        &Progress::default(),
        &CancellationToken::new(),
    )
    .await
    .expect("backup to s3");
    src.sql("insert into t values (-1, 'after the backup')").await;
    src.archive_now().await;
    assert!(base::verify_backup(&s3, &m, true).await.expect("verify").is_empty());
    let opts = RestoreOptions {
        backup: Some(m.id.clone()),
        target: Target::Latest,
        to: dir.path().join("restored"),
        restore_command: pgdr_backup::restore_command(&wal_exe(), &config_path, "c1", "s3"),
        workers: 2,
        port: free_port(),
        run_as: RunAs::for_node(None).expect("run as"),
        bin_dir: None,
        delta: false,
    };
    restore::restore(&s3, "c1", &opts, &Progress::default()).await.expect("restore from s3");
    let restored =
        PgGuard::adopt(restore::start_and_wait(&opts, &login(), Duration::from_secs(120)).await.expect("recovery"));
    assert_same_dump(&src.dump("postgres").await, &restored.dump("postgres").await);
    drop(restored);

    // Copied from S3 to a file destination (with its own key), restored from there.
    let copy_dest = Dest::open_named(&config, "copy").expect("copy");
    let journal = dir.path().join("journal");
    let report = pgdr_backup::copy::copy_backup(
        &s3,
        &copy_dest,
        "c1",
        &m.id,
        &journal,
        &Progress::default(),
        &CancellationToken::new(),
    )
    .await
    .expect("copy from s3");
    assert_eq!(report.copied, m.objects.len());
    assert!(report.wal_copied > 0);
    let opts2 = RestoreOptions {
        to: dir.path().join("restored-copy"),
        restore_command: pgdr_backup::restore_command(&wal_exe(), &config_path, "c1", "copy"),
        port: free_port(),
        ..opts.clone()
    };
    restore::restore(&copy_dest, "c1", &opts2, &Progress::default()).await.expect("restore from the copy");
    let restored =
        PgGuard::adopt(restore::start_and_wait(&opts2, &login(), Duration::from_secs(120)).await.expect("recovery"));
    assert_same_dump(&src.dump("postgres").await, &restored.dump("postgres").await);
    drop(restored);
    src.stop().await;
    drop(moto);
}
