//! Someone with write access to the storage but not the destination's key
//! (leaked bucket credentials, a hostile storage admin): objects swapped
//! between backups and WAL names, a manifest altered, replaced by an older
//! one or deleted. A real PostgreSQL; the file:// destination stands in for
//! the bucket, edited directly as such an attacker would.

use std::path::Path;

use pgdr_backup::base::{self, BackupOptions};
use pgdr_backup::manifest::{self, Trouble};
use pgdr_backup::restore::{self, RestoreOptions, Target};
use pgdr_backup::{BackupError, Dest, Progress};
use pgdr_config::Config;
use pgdr_node::RunAs;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

fn opts(config_path: &Path, to: &Path, backup: Option<&str>) -> RestoreOptions {
    RestoreOptions {
        backup: backup.map(str::to_owned),
        target: Target::Latest,
        to: to.to_path_buf(),
        restore_command: pgdr_backup::restore_command(&wal_exe(), config_path, "c1", "local"),
        workers: 2,
        port: free_port(),
        run_as: RunAs::for_node(None).expect("run as"),
        bin_dir: None,
        delta: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn substitution_tampering_and_rollback_are_detected() {
    let dir = tempdir("pgdr-backup-tamper-");
    let data = dir.path().join("src");
    let port = free_port();
    let config_path = write_config(dir.path(), port, &data, None, "local");
    let settings = pgdr_backup::archive_settings_with(&wal_exe(), &config_path, "c1");
    let src = PgGuard::start_new(&data, port, &settings).await;
    let config = Config::load(&config_path).expect("config");
    // This host remembers the newest backup it has seen (in the config's state_dir).
    let local = Dest::open_named(&config, "local").expect("local");
    // Another host (say the DR site) that has never seen this destination.
    let fresh = Dest::open(config.destination("local").expect("local")).expect("fresh");
    assert!(fresh.seen_dir.is_none());

    src.sql("create table t as select g as id from generate_series(1, 1000) g").await;
    let small = BackupOptions { part_size: 4 << 20, ..Default::default() };
    let (progress, cancel) = (Progress::default(), CancellationToken::new());
    let backup = || base::run_backup(&config, "c1", &local, &small, &progress, &cancel);
    let (a, _) = backup().await.expect("backup a");
    src.sql("insert into t values (-1)").await;
    let (b, _) = backup().await.expect("backup b");
    assert_eq!((b.seq, b.previous.as_deref()), (a.seq + 1, Some(a.id.as_str())), "manifests are chained");
    let root = dir.path().join("dest-local");

    // 1. An object of backup a put in place of the same part of backup b:
    //    named as a substitution (not corruption) by verify and by restore.
    let name = b.objects[0].name.clone();
    let victim = root.join(manifest::part_key("c1", &b.id, &name));
    let original = std::fs::read(&victim).expect("read");
    std::fs::copy(root.join(manifest::part_key("c1", &a.id, &a.objects[0].name)), &victim).expect("swap");
    let problems = base::verify_backup(&local, &b, false).await.expect("verify");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].trouble, Trouble::Substituted, "{}", problems[0]);
    assert!(problems[0].key.ends_with(&name) && problems[0].detail.contains(&a.id), "{}", problems[0]);
    let err =
        restore::restore(&local, "c1", &opts(&config_path, &dir.path().join("r1"), Some(&b.id)), &Progress::default())
            .await
            .expect_err("a swapped object must not restore");
    assert!(matches!(err, BackupError::Object { trouble: Trouble::Substituted, .. }), "{err}");
    assert!(err.to_string().contains(&name), "{err}");
    std::fs::write(&victim, original).expect("put back");
    assert!(base::verify_backup(&local, &b, true).await.expect("verify").is_empty());

    // 2. WAL swapped between segment names: wal-fetch refuses it as a substitution.
    src.archive_now().await;
    let segs: Vec<String> = pgdr_backup::wal::list(&local, "c1")
        .await
        .expect("wal")
        .into_iter()
        .map(|w| w.0)
        .filter(|n| manifest::is_segment(n))
        .collect();
    assert!(segs.len() >= 2, "{segs:?}");
    let wal_victim = root.join(manifest::wal_key("c1", &segs[1]));
    let original = std::fs::read(&wal_victim).expect("read");
    std::fs::copy(root.join(manifest::wal_key("c1", &segs[0])), &wal_victim).expect("swap");
    let err = pgdr_backup::wal::fetch(&local, "c1", &segs[1], &dir.path().join("fetched"))
        .await
        .expect_err("a swapped segment must not be served");
    assert!(err.to_string().contains("SUBSTITUTED") && err.to_string().contains(&segs[0]), "{err}");
    std::fs::write(&wal_victim, original).expect("put back");

    // 3. b's manifest altered: skipped with a warning, never fatal; a host
    //    that never saw b restores the previous valid backup, a.
    let b_manifest = root.join(manifest::manifest_key("c1", &b.id));
    let good = std::fs::read(&b_manifest).expect("read");
    let text = String::from_utf8(good.clone()).expect("utf8");
    std::fs::write(&b_manifest, text.replace("\"from_replica\": false", "\"from_replica\": true")).expect("tamper");
    assert_ne!(std::fs::read(&b_manifest).expect("read"), good, "the tampering changed nothing");
    let cat = base::catalog(&fresh, "c1").await.expect("catalog");
    assert_eq!(cat.valid.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), vec![a.id.as_str()]);
    assert_eq!((cat.invalid[0].id.as_str(), cat.invalid[0].trouble), (b.id.as_str(), Trouble::Corrupt));
    assert!(cat.invalid[0].error.contains("does not authenticate"), "{}", cat.invalid[0].error);
    assert!(cat.rollback.is_none());
    let (m, _) =
        restore::restore(&fresh, "c1", &opts(&config_path, &dir.path().join("r3"), None), &Progress::default())
            .await
            .expect("restore skips the bad manifest");
    assert_eq!(m.id, a.id);
    //    The host that took b knows b was the newest: that is a rollback, and
    //    restoring "latest" refuses until a backup is named.
    let cat = base::catalog(&local, "c1").await.expect("catalog");
    let r = cat.rollback.as_ref().expect("rollback detected");
    assert_eq!((r.seen_id.as_str(), r.newest_id.as_deref()), (b.id.as_str(), Some(a.id.as_str())));
    let err = restore::restore(&local, "c1", &opts(&config_path, &dir.path().join("r4"), None), &Progress::default())
        .await
        .expect_err("rollback");
    assert!(matches!(err, BackupError::Rollback { .. }) && err.to_string().contains(&b.id), "{err}");

    // 4. b's manifest replaced by a's (an older, valid manifest): a misplaced
    //    manifest (substitution) and, for this host, a rollback.
    std::fs::copy(root.join(manifest::manifest_key("c1", &a.id)), &b_manifest).expect("replace");
    let cat = base::catalog(&local, "c1").await.expect("catalog");
    assert_eq!(cat.invalid[0].trouble, Trouble::Substituted, "{}", cat.invalid[0].error);
    assert!(cat.rollback.is_some());

    // 5. b deleted outright: only memory of it can tell; this host has it.
    std::fs::remove_dir_all(root.join(manifest::backup_prefix("c1", &b.id))).expect("delete b");
    assert!(base::catalog(&local, "c1").await.expect("catalog").rollback.is_some());
    assert!(base::catalog(&fresh, "c1").await.expect("catalog").rollback.is_none());

    // 6. The next backup chains to the vanished one, so the gap stays on
    //    record in the destination (signed), visible to every host.
    let (c, _) = backup().await.expect("backup c");
    assert_eq!((c.seq, c.previous.as_deref()), (b.seq + 1, Some(b.id.as_str())));
    let cat = base::catalog(&fresh, "c1").await.expect("catalog");
    assert_eq!(cat.missing, vec![b.id.clone()]);
    assert!(cat.problems().iter().any(|(t, p)| *t == Trouble::Rollback && p.contains(&b.id)));
    src.stop().await;
}
