//! Delta restore against a real PostgreSQL: a restored server diverges
//! (rows changed, a table added, one dropped, stray files and links), is
//! stopped, and is brought back to the backup in place. The data must equal
//! the backup's, the files that already matched must not be rewritten
//! (same inode and mtime), and nothing outside the data directory is
//! touched.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use pgdr_backup::base::{self, BackupOptions};
use pgdr_backup::manifest::FileKind;
use pgdr_backup::restore::{self, RestoreOptions, Target};
use pgdr_backup::{Dest, Progress};
use pgdr_config::Config;
use pgdr_node::RunAs;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

fn opts(config_path: &Path, to: &Path, backup: &str, delta: bool) -> RestoreOptions {
    RestoreOptions {
        backup: Some(backup.to_owned()),
        target: Target::Latest,
        to: to.to_path_buf(),
        restore_command: pgdr_backup::restore_command(&wal_exe(), config_path, "c1", "local"),
        workers: 2,
        port: free_port(),
        run_as: RunAs::for_node(None).expect("run as"),
        bin_dir: None,
        delta,
    }
}

/// (inode, mtime in ns) of every regular file under `dir`, by relative path.
fn stamps(dir: &Path) -> BTreeMap<String, (u64, i128)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let ft = e.file_type().expect("type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let m = e.metadata().expect("meta");
                let rel = e.path().strip_prefix(dir).expect("prefix").to_string_lossy().into_owned();
                out.insert(rel, (m.ino(), m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128));
            }
        }
    }
    out
}

fn hash(p: &Path) -> Option<String> {
    std::fs::read(p).ok().map(|b| blake3::hash(&b).to_hex().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_restore_rewrites_only_what_differs() {
    let dir = tempdir("pgdr-backup-delta-");
    let data = dir.path().join("src");
    let port = free_port();
    let config_path = write_config(dir.path(), port, &data, None, "local");
    let settings = pgdr_backup::archive_settings_with(&wal_exe(), &config_path, "c1");
    let src = PgGuard::start_new(&data, port, &settings).await;
    let config = Config::load(&config_path).expect("config");
    let local = Dest::open_named(&config, "local").expect("local");

    src.sql("create table t (id int primary key, note text); insert into t select g, md5(g::text) from generate_series(1, 50000) g").await;
    src.sql("create table gone (id int); insert into gone select generate_series(1, 1000)").await;
    // Small parts: a delta restore must fetch only some of them.
    let bopts = BackupOptions { part_size: 256 * 1024, ..Default::default() };
    let (m, _) = base::run_backup(&config, "c1", &local, &bopts, &Progress::default(), &CancellationToken::new())
        .await
        .expect("backup");
    assert!(m.files.iter().any(|f| f.path == "PG_VERSION"), "the manifest lists the files");
    assert!(m.files.iter().any(|f| f.path == "global/pg_control" && f.kind == FileKind::File));
    src.archive_now().await;
    let want = src.dump("postgres").await;
    // The source stays as the backup left it: recovery replays to the same data.
    src.stop().await;

    // A full restore (from the file list), started: the server that will diverge.
    let to = dir.path().join("old-primary");
    let o = opts(&config_path, &to, &m.id, false);
    let full = restore::restore(&local, "c1", &o, &Progress::default()).await.expect("full restore");
    assert_eq!(full.1.files.as_ref().map(|f| (f.kept, f.removed)), Some((0, 0)), "{:?}", full.1.files);
    let old = PgGuard::adopt(restore::start_and_wait(&o, &login(), Duration::from_secs(120)).await.expect("recovery"));
    assert_same_dump(&want, &old.dump("postgres").await);

    // Diverge: changed rows, a new table, a dropped one.
    old.sql("update t set note = 'diverged' where id <= 500").await;
    old.sql("create table added (id int); insert into added select generate_series(1, 5000)").await;
    let added = old.one("select pg_relation_filepath('added')").await;
    let gone = old.one("select pg_relation_filepath('gone')").await;
    old.sql("drop table gone").await;
    old.sql("checkpoint").await;
    // A dropped table's file is emptied at once and unlinked at a later checkpoint.
    let gone_len = std::fs::metadata(to.join(&gone)).map_or(0, |m| m.len());
    assert!(to.join(&added).exists() && gone_len == 0, "added {added}, gone {gone} ({gone_len} bytes)");

    // A delta restore refuses while the server runs.
    let err = restore::restore(&local, "c1", &opts(&config_path, &to, &m.id, true), &Progress::default())
        .await
        .expect_err("delta into a running server");
    assert!(err.to_string().contains("is alive"), "{err}");
    old.stop().await;
    drop(old);

    // Without --delta a non-empty directory is refused, naming the flag.
    let err = restore::restore(&local, "c1", &opts(&config_path, &to, &m.id, false), &Progress::default())
        .await
        .expect_err("non-empty");
    assert!(err.to_string().contains("--delta"), "{err}");
    // A non-empty folder that is not a data directory is never emptied.
    let other = dir.path().join("not-pgdata");
    std::fs::create_dir_all(&other).expect("mkdir");
    std::fs::write(other.join("precious"), "x").expect("write");
    let err = restore::restore(&local, "c1", &opts(&config_path, &other, &m.id, true), &Progress::default())
        .await
        .expect_err("not a data directory");
    assert!(err.to_string().contains("PG_VERSION") && other.join("precious").exists(), "{err}");

    // Strays: a file, a folder, a tablespace-like link to a folder outside,
    // and a backup file replaced by a link to a file outside.
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("keep-me"), "outside").expect("write");
    std::fs::write(to.join("stray.txt"), "stray").expect("write");
    std::fs::create_dir_all(to.join("base/stray-dir/sub")).expect("mkdir");
    std::fs::write(to.join("base/stray-dir/sub/f"), "f").expect("write");
    std::os::unix::fs::symlink(&outside, to.join("pg_tblspc/99999")).expect("link");
    std::fs::remove_file(to.join("pg_ident.conf")).expect("rm");
    std::fs::write(outside.join("pg_ident.conf"), "outside\n").expect("write");
    std::os::unix::fs::symlink(outside.join("pg_ident.conf"), to.join("pg_ident.conf")).expect("link");

    // What already matches the backup, checked independently of the restore.
    let before = stamps(&to);
    let matching: Vec<&str> = m
        .files
        .iter()
        .filter(|f| f.kind == FileKind::File && f.path != "global/pg_control")
        .filter(|f| {
            std::fs::symlink_metadata(to.join(&f.path)).is_ok_and(|md| md.is_file())
                && hash(&to.join(&f.path)).as_deref() == Some(f.blake3.as_str())
        })
        .map(|f| f.path.as_str())
        .collect();
    let differing: Vec<&str> = m
        .files
        .iter()
        .filter(|f| f.kind == FileKind::File && !matching.contains(&f.path.as_str()))
        .map(|f| f.path.as_str())
        .collect();
    assert!(matching.len() > 100, "most files are unchanged: {} match", matching.len());
    assert!(!differing.is_empty(), "the divergence changed some files");

    let o = opts(&config_path, &to, &m.id, true);
    let (_, measured) = restore::restore(&local, "c1", &o, &Progress::default()).await.expect("delta restore");
    let counts = measured.files.clone().expect("file counts");
    eprintln!("delta restore: {counts:?}, {} of {} parts fetched", measured.objects, m.objects.len());
    assert_eq!(counts.kept as usize, matching.len(), "{counts:?}");
    assert_eq!(counts.written as usize, differing.len(), "{counts:?}");
    assert!(counts.removed >= 4, "stray file, folder, link, added table: {counts:?}");
    assert!(
        measured.objects < m.objects.len() as u64,
        "fetched {} of {} parts: a delta restore fetches only parts with differing files",
        measured.objects,
        m.objects.len()
    );

    // Unchanged files were not rewritten; every listed file now has the backup's bytes.
    let after = stamps(&to);
    for p in &matching {
        assert_eq!(before.get(*p), after.get(*p), "{p} matched the backup but was rewritten");
    }
    for f in m.files.iter().filter(|f| f.kind == FileKind::File) {
        // The restore rewrites these afterwards (recovery settings, loopback logins).
        if !["pgdr.conf", "postgresql.conf", "postgresql.auto.conf", "pg_hba.conf"].contains(&f.path.as_str()) {
            assert_eq!(hash(&to.join(&f.path)).as_deref(), Some(f.blake3.as_str()), "{}", f.path);
        }
    }
    // Strays are gone, the links removed as links, nothing outside touched.
    assert!(!to.join("stray.txt").exists() && !to.join("base/stray-dir").exists());
    assert!(std::fs::symlink_metadata(to.join("pg_tblspc/99999")).is_err());
    assert!(std::fs::symlink_metadata(to.join("pg_ident.conf")).expect("pg_ident.conf").is_file());
    assert_eq!(std::fs::read_to_string(outside.join("keep-me")).expect("outside"), "outside");
    assert_eq!(std::fs::read_to_string(outside.join("pg_ident.conf")).expect("outside"), "outside\n");
    assert!(!to.join(&added).exists(), "the table added after the backup is gone");
    assert!(std::fs::metadata(to.join(&gone)).is_ok_and(|m| m.len() > 0), "the dropped table's file is back");

    // Started, it has the backup's data.
    let back = PgGuard::adopt(restore::start_and_wait(&o, &login(), Duration::from_secs(120)).await.expect("recovery"));
    assert_same_dump(&want, &back.dump("postgres").await);
    assert_eq!(back.one("select count(*) from gone").await, "1000");
    assert_eq!(back.one("select count(*) from t where note = 'diverged'").await, "0");
    back.stop().await;
}
