//! Backup, archive, restore, PITR, verify, copies and retention against a
//! real PostgreSQL with local-filesystem destinations.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pgdr_backup::base::{self, BackupOptions};
use pgdr_backup::restore::{self, RestoreOptions, Target};
use pgdr_backup::{Dest, Progress, copy, manifest, retention};
use pgdr_config::Config;
use pgdr_node::RunAs;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

fn restore_opts(config_path: &Path, dest: &str, to: &Path, target: Target) -> RestoreOptions {
    RestoreOptions {
        backup: None,
        target,
        to: to.to_path_buf(),
        restore_command: pgdr_backup::restore_command(&wal_exe(), config_path, "c1", dest),
        workers: 2,
        port: free_port(),
        run_as: RunAs::for_node(None).expect("run as"),
        bin_dir: None,
        delta: false,
    }
}

async fn restore_and_start(config_path: &Path, dest: &Dest, to: &Path, target: Target) -> PgGuard {
    let opts = restore_opts(config_path, &dest.name, to, target);
    restore::restore(dest, "c1", &opts, &Progress::default()).await.expect("restore");
    let pg = restore::start_and_wait(&opts, &login(), Duration::from_secs(120)).await.expect("recovery");
    PgGuard::adopt(pg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_pitr_copy_verify_prune() {
    let dir = tempdir("pgdr-backup-it-");
    let data = dir.path().join("src");
    let port = free_port();
    let config_path = write_config(dir.path(), port, &data, None, "local");
    let settings = pgdr_backup::archive_settings_with(&wal_exe(), &config_path, "c1");
    let src = PgGuard::start_new(&data, port, &settings).await;
    let config = Config::load(&config_path).expect("config");
    let local = Dest::open_named(&config, "local").expect("local");

    // Data, then a backup in small parts (many objects for the copy tests).
    src.sql("create table t (id int primary key, note text); insert into t select g, md5(g::text) from generate_series(1, 20000) g").await;
    let opts = BackupOptions { part_size: 512 * 1024, ..Default::default() };
    let (m1, measured) =
        base::run_backup(&config, "c1", &local, &opts, &Progress::default(), &CancellationToken::new())
            .await
            .expect("backup");
    assert!(m1.objects.len() > 4, "expected several parts, got {}", m1.objects.len());
    assert_eq!(m1.key_id, "local-1");
    assert!(m1.stop_lsn >= m1.start_lsn && m1.timeline == 1 && m1.pg_version >= 130000, "{m1:?}");
    assert!(measured.plain_bytes > 0);
    assert!(base::verify_backup(&local, &m1, true).await.expect("verify").is_empty());

    // Two known transactions with a time between them.
    src.sql("create table marks (name text primary key, at timestamptz default clock_timestamp())").await;
    src.sql("insert into marks (name) values ('first')").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let between = src.one("select clock_timestamp()::text").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    src.sql("insert into marks (name) values ('second'); update t set note = 'changed' where id <= 100").await;
    src.archive_now().await;
    let wal = pgdr_backup::wal::list(&local, "c1").await.expect("wal list");
    assert!(!wal.is_empty(), "archive_command pushed nothing");

    // Restore everything: the same data as the source.
    let full = restore_and_start(&config_path, &local, &dir.path().join("full"), Target::Latest).await;
    assert_same_dump(&src.dump("postgres").await, &full.dump("postgres").await);
    drop(full);

    // PITR between the two transactions.
    let pitr = restore_and_start(&config_path, &local, &dir.path().join("pitr"), Target::Time(between.clone())).await;
    assert_eq!(pitr.one("select string_agg(name, ',' order by name) from marks").await, "first", "PITR to {between}");
    assert_eq!(pitr.one("select count(*) from t where note = 'changed'").await, "0");
    drop(pitr);

    // Verify by restore records its result at the destination.
    let v = restore::verify_by_restore(
        &local,
        "c1",
        Some(&m1.id),
        &login(),
        |_| pgdr_backup::restore_command(&wal_exe(), &config_path, "c1", "local"),
        RunAs::for_node(None).expect("run as"),
        None,
    )
    .await
    .expect("verify by restore");
    assert!(v.ok, "{v:?}");
    let recorded = local.list(&format!("c1/verifications/{}/", m1.id)).await.expect("list");
    assert_eq!(recorded.len(), 1);

    // Copy to `copy` (concurrency 2): interrupted, then resumed.
    let copy_dest = Dest::open_named(&config, "copy").expect("copy");
    let journal = dir.path().join("journal");
    let cancel = CancellationToken::new();
    let stats = copy_dest.stats.clone();
    let watcher = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            while stats.puts.load(Ordering::SeqCst) < 3 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            cancel.cancel();
        })
    };
    let first = copy::copy_backup(&local, &copy_dest, "c1", &m1.id, &journal, &Progress::default(), &cancel).await;
    watcher.await.expect("watcher");
    assert!(first.is_err(), "the copy should have been interrupted");
    assert!(
        copy_dest.size(&manifest::manifest_key("c1", &m1.id)).await.expect("head").is_none(),
        "no manifest before the copy completes"
    );
    let report =
        copy::copy_backup(&local, &copy_dest, "c1", &m1.id, &journal, &Progress::default(), &CancellationToken::new())
            .await
            .expect("resumed copy");
    assert!(report.resumed >= 3, "resume should skip the objects done before: {report:?}");
    assert_eq!(report.resumed + report.copied, m1.objects.len(), "{report:?}");
    assert!(report.wal_copied > 0);
    let max = copy_dest.stats.max_in_flight.load(Ordering::SeqCst);
    assert!((1..=2).contains(&max), "copy destination allows 2 transfers at once, saw {max}");
    let copied = base::find_backup(&copy_dest, "c1", Some(&m1.id)).await.expect("copied manifest");
    assert_eq!(copied.key_id, "copy-1", "copies are sealed with the copy destination's key");
    assert!(base::verify_backup(&copy_dest, &copied, true).await.expect("verify copy").is_empty());

    // Restore from the copy works the same.
    let from_copy = restore_and_start(&config_path, &copy_dest, &dir.path().join("from-copy"), Target::Latest).await;
    assert_same_dump(&src.dump("postgres").await, &from_copy.dump("postgres").await);
    drop(from_copy);

    // Wrong key: a clear error naming the destination and key id.
    let mut wrong_cfg = config.destination("copy").expect("copy").clone();
    wrong_cfg.key = Some(pgdr_config::Secret::Inline(KEY_S3.into()));
    let wrong = Dest::open(&wrong_cfg).expect("open");
    let problems = base::verify_backup(&wrong, &copied, true).await.expect("verify");
    assert!(!problems.is_empty() && problems[0].to_string().contains("key id \"copy-1\""), "{problems:?}");
    let err = restore::restore(
        &wrong,
        "c1",
        &restore_opts(&config_path, "copy", &dir.path().join("wrong"), Target::Latest),
        &Progress::default(),
    )
    .await
    .expect_err("wrong key must fail");
    let msg = err.to_string();
    assert!(msg.contains("\"copy\"") && msg.contains("copy-1"), "{msg}");

    // Key rotation: a new current key, the old one kept under its id, reads the old objects.
    let mut rotated_cfg = config.destination("copy").expect("copy").clone();
    rotated_cfg.old_keys = vec![(rotated_cfg.key_id.clone(), rotated_cfg.key.clone().expect("key"))];
    rotated_cfg.key = Some(pgdr_config::Secret::Inline(KEY_S3.into()));
    rotated_cfg.key_id = "copy-2".into();
    let rotated = Dest::open(&rotated_cfg).expect("open rotated");
    let problems = base::verify_backup(&rotated, &copied, true).await.expect("verify after rotation");
    assert!(problems.is_empty(), "old objects must stay readable after a rotation: {problems:?}");

    // Corruption: one flipped byte in a stored object.
    let victim = dir.path().join("dest-copy").join(manifest::part_key("c1", &m1.id, &copied.objects[1].name));
    let mut bytes = std::fs::read(&victim).expect("read object");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&victim, bytes).expect("corrupt");
    let problems = base::verify_backup(&copy_dest, &copied, false).await.expect("verify");
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = problems[0].to_string();
    assert!(p.contains("is corrupt") && p.contains(&copied.objects[1].name), "{problems:?}");
    let err = restore::restore(
        &copy_dest,
        "c1",
        &restore_opts(&config_path, "copy", &dir.path().join("corrupt"), Target::Latest),
        &Progress::default(),
    )
    .await
    .expect_err("restore of a corrupt backup must fail");
    assert!(err.to_string().contains("is corrupt"), "{err}");

    // Retention: a second backup; count 1 removes the first and the WAL only it needed.
    src.sql("insert into marks (name) values ('third')").await;
    let (m2, _) = base::run_backup(
        &config,
        "c1",
        &local,
        &BackupOptions::default(),
        &Progress::default(),
        &CancellationToken::new(),
    )
    .await
    .expect("second backup");
    src.archive_now().await;
    let policy = retention::Policy { retain_count: Some(1), retain_age: None };
    let before: Vec<String> =
        pgdr_backup::wal::list(&local, "c1").await.expect("wal").into_iter().map(|w| w.0).collect();
    let report = retention::prune(&local, "c1", &policy, false).await.expect("prune");
    assert_eq!(report.plan.remove, vec![m1.id.clone()]);
    assert_eq!(report.plan.keep, vec![m2.id.clone()]);
    let left: Vec<String> = base::list_backups(&local, "c1").await.expect("list").into_iter().map(|m| m.id).collect();
    assert_eq!(left, vec![m2.id.clone()]);
    let after: Vec<String> =
        pgdr_backup::wal::list(&local, "c1").await.expect("wal").into_iter().map(|w| w.0).collect();
    assert!(after.len() < before.len(), "old WAL should go");
    let start = manifest::segment_position(&m2.start_wal).expect("pos").to_owned();
    for w in &before {
        let needed = manifest::segment_position(w).is_some_and(|p| p >= start.as_str()) || w.ends_with(".history");
        assert_eq!(after.contains(w), needed, "WAL {w}: kept iff needed by the kept backup (start {start})");
    }
    // The kept backup still restores.
    let kept = restore_and_start(&config_path, &local, &dir.path().join("kept"), Target::Latest).await;
    assert_eq!(kept.one("select count(*) from marks").await, "3");
    drop(kept);

    // Immutable destination: filled by pull, never pruned.
    let vault = Dest::open_named(&config, "vault").expect("vault");
    let pulled = copy::pull(&local, &vault, "c1", &journal, &Progress::default(), &CancellationToken::new())
        .await
        .expect("pull");
    assert!(pulled.iter().any(|r| r.backup == m2.id), "{pulled:?}");
    let err = retention::prune(&vault, "c1", &retention::Policy { retain_count: Some(1), retain_age: None }, false)
        .await
        .expect_err("prune on immutable");
    assert!(err.to_string().contains("immutable"), "{err}");
    assert!(vault.delete(&manifest::manifest_key("c1", &m2.id)).await.is_err());
    assert_eq!(base::list_backups(&vault, "c1").await.expect("list").len(), 1);
    src.stop().await;
}
