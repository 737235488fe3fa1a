//! Restore and point-in-time recovery.
//!
//! A backup with a file list (manifest format 3) is written by
//! [`crate::extract`]: parts downloaded and decompressed several at a time,
//! their slices written in place, files fsynced as they complete,
//! `pg_control` last; with `delta`, into an existing data directory of a
//! stopped server, rewriting only the files that differ from the backup. An
//! older backup (format 2) is written in order into `tar` (run as the
//! server's user, so the files are owned right). Either way each object is
//! checked against its stored checksum before decryption and its plaintext
//! checksum after. The restored server gets `restore_command = pgdr wal-fetch …`,
//! the recovery target, `recovery.signal` and no archiving (it must not write
//! into the archive it restores from), and can be started and waited for.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pgdr_model::Lsn;
use pgdr_node::local::{Login, StopMode};
use pgdr_node::{LocalPg, PgBinaries, RunAs};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::dest::Dest;
use crate::manifest::{self, Manifest};
use crate::{BackupError, Measured, Progress, Result};

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Replay all archived WAL.
    Latest,
    /// A timestamp PostgreSQL understands (`2026-11-23 16:31:00+00`).
    Time(String),
    Lsn(Lsn),
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Backup id, or `None`/`latest` for the newest suitable one.
    pub backup: Option<String>,
    pub target: Target,
    pub to: PathBuf,
    /// The full `restore_command` (see [`crate::restore_command`]).
    pub restore_command: String,
    /// Downloads and decompressions at once.
    pub workers: usize,
    /// Port for the restored server (when started).
    pub port: u16,
    pub run_as: RunAs,
    pub bin_dir: Option<PathBuf>,
    /// Restore into an existing data directory (of a stopped server):
    /// keep the files that match the backup, write the rest, remove what
    /// the backup does not have. An empty or absent `to` restores in full.
    pub delta: bool,
}

/// Picks the backup to restore: the named one, else the newest one that
/// finished before the target.
pub async fn pick_backup(dest: &Dest, cluster: &str, id: Option<&str>, target: &Target) -> Result<Manifest> {
    if let Some(id) = id.filter(|i| *i != "latest") {
        return crate::base::find_backup(dest, cluster, Some(id)).await;
    }
    let cat = crate::base::catalog(dest, cluster).await?;
    for i in &cat.invalid {
        tracing::warn!(dest = %dest.name, cluster, trouble = %i.trouble, "skipping backup {}: {}", i.id, i.error);
    }
    if let Some(r) = &cat.rollback {
        return Err(BackupError::Rollback {
            dest: dest.name.clone(),
            cluster: cluster.to_owned(),
            detail: r.to_string(),
        });
    }
    let all = &cat.valid;
    let suitable: Vec<&Manifest> = match target {
        Target::Latest => all.iter().collect(),
        Target::Lsn(l) => all.iter().filter(|m| m.stop_lsn <= *l).collect(),
        Target::Time(t) => {
            let parsed = parse_time(t);
            all.iter()
                .filter(|m| match (parsed, m.finished()) {
                    (Some(t), Some(f)) => f <= t,
                    _ => true,
                })
                .collect()
        }
    };
    suitable.last().map(|m| (*m).clone()).ok_or_else(|| BackupError::NoBackup {
        cluster: cluster.to_owned(),
        dest: dest.name.clone(),
        detail: format!(
            "{}{}",
            match target {
                Target::Latest => String::new(),
                _ => format!(" that finished before the target {target:?}"),
            },
            if cat.invalid.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} skipped: {})",
                    cat.invalid.len(),
                    cat.invalid.iter().map(|i| i.error.as_str()).collect::<Vec<_>>().join("; ")
                )
            }
        ),
    })
}

fn parse_time(t: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let t = t.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Some(d.with_timezone(&chrono::Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(d) = chrono::DateTime::parse_from_str(t, f) {
            return Some(d.with_timezone(&chrono::Utc));
        }
    }
    None
}

/// Downloads and writes a backup into `opts.to` and configures recovery.
/// Returns the backup restored and what was measured.
pub async fn restore(
    dest: &Dest,
    cluster: &str,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<(Manifest, Measured)> {
    let (m, measured) = write(dest, cluster, opts, progress).await?;
    let bin = PgBinaries::find(opts.bin_dir.as_deref())?;
    let pg = LocalPg::new(bin, opts.to.clone(), "127.0.0.1", opts.port, opts.run_as.clone());
    configure_recovery(&pg, opts)?;
    Ok((m, measured))
}

/// Downloads and writes a backup's files into `opts.to`, nothing else: no
/// recovery settings (`opts.restore_command` and `opts.port` are not used;
/// `opts.target` only picks the backup). For a caller that configures the
/// server its own way, as a standby built from a backup is.
pub async fn write(
    dest: &Dest,
    cluster: &str,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<(Manifest, Measured)> {
    let m = pick_backup(dest, cluster, opts.backup.as_deref(), &opts.target).await?;
    progress.total.store(m.plain_bytes, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let non_empty = match std::fs::symlink_metadata(&opts.to) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(BackupError::Config(format!(
                "{} is a link: name the folder it points to (a restore does not follow links)",
                opts.to.display()
            )));
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(BackupError::Config(format!("{} exists and is not a folder", opts.to.display())));
        }
        Ok(_) => std::fs::read_dir(&opts.to).map(|mut d| d.next().is_some()).unwrap_or(true),
        Err(_) => false,
    };
    if non_empty && !opts.delta {
        return Err(BackupError::Config(format!(
            "{} exists and is not empty: restore into a new or empty folder, or pass --delta to bring a stopped \
             server's data directory to the backup (rewriting only the files that differ)",
            opts.to.display()
        )));
    }
    if non_empty {
        check_delta_target(&opts.to)?;
        if m.files.is_empty() {
            return Err(BackupError::Config(format!(
                "backup {} has no file list (it was taken by a pgdr before delta restores): a delta restore \
                 needs one; restore it into a new or empty folder, or take a new backup",
                m.id
            )));
        }
    }
    let bin = PgBinaries::find(opts.bin_dir.as_deref())?;
    let pg = LocalPg::new(bin, opts.to.clone(), "127.0.0.1", opts.port, opts.run_as.clone());
    pg.prepare_dirs()?;
    if !m.files.is_empty() {
        let counts =
            crate::extract::extract(dest, &m, &opts.to, opts.workers, &opts.run_as, non_empty, progress).await?;
        let measured = Measured {
            plain_bytes: progress.plain_bytes.load(std::sync::atomic::Ordering::Relaxed),
            stored_bytes: progress.stored_bytes.load(std::sync::atomic::Ordering::Relaxed),
            objects: progress.objects.load(std::sync::atomic::Ordering::Relaxed),
            seconds: started.elapsed().as_secs_f64(),
            files: Some(counts),
        };
        return Ok((m, measured));
    }

    let mut tar = Command::new("tar");
    tar.args(["-x", "-f", "-", "-C"]).arg(&opts.to).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    opts.run_as.apply(&mut tar);
    tar.kill_on_drop(true);
    let mut child = tar.spawn().map_err(BackupError::io("cannot run tar"))?;
    let Some(mut stdin) = child.stdin.take() else {
        return Err(BackupError::Other("tar: no input pipe".into()));
    };
    let result = {
        let stream = futures::stream::iter(m.objects.clone())
            .map(|o| {
                let m = &m;
                async move {
                    let key = manifest::part_key(&m.cluster, &m.id, &o.name);
                    let data = dest.get(&key).await?;
                    let keys = dest.keys.clone();
                    let dname = dest.name.clone();
                    tokio::task::spawn_blocking(move || match crate::base::check_object(&key, &o, &data, &keys, true) {
                        Ok(Some(plain)) => Ok((plain, data.len() as u64)),
                        Ok(None) => Err(BackupError::Other(format!("{key}: not decrypted"))),
                        Err((trouble, detail)) => Err(BackupError::Object { dest: dname, key, trouble, detail }),
                    })
                    .await
                    .map_err(|e| BackupError::Other(format!("restore task failed: {e}")))?
                }
            })
            .buffered(opts.workers.max(1) + 1);
        futures::pin_mut!(stream);
        let mut result = Ok(());
        while let Some(item) = stream.next().await {
            match item {
                Ok((plain, stored)) => {
                    if let Err(e) = stdin.write_all(&plain).await {
                        result = Err(BackupError::Io { what: "writing to tar".into(), source: e });
                        break;
                    }
                    progress.add(plain.len() as u64, stored);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        result
    };
    drop(stdin);
    if let Err(e) = result {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(e);
    }
    let out = child.wait_with_output().await.map_err(BackupError::io("waiting for tar"))?;
    if !out.status.success() {
        return Err(BackupError::Program {
            program: "tar".into(),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let measured = Measured {
        plain_bytes: m.plain_bytes,
        stored_bytes: m.stored_bytes,
        objects: m.objects.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        files: None,
    };
    Ok((m, measured))
}

/// Refuses a delta restore into something that is not a PostgreSQL data
/// directory (its contents would be deleted) or where a server runs.
fn check_delta_target(to: &Path) -> Result<()> {
    if !std::fs::symlink_metadata(to.join("PG_VERSION")).is_ok_and(|m| m.is_file()) {
        return Err(BackupError::Config(format!(
            "{} is not empty and has no PG_VERSION: it does not look like a PostgreSQL data directory, and a \
             delta restore would delete what it holds; name the data directory, or an empty folder",
            to.display()
        )));
    }
    let pidfile = to.join("postmaster.pid");
    if let Ok(text) = std::fs::read_to_string(&pidfile)
        && let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok()).filter(|p| *p > 0)
    {
        use nix::sys::signal::kill;
        use nix::unistd::Pid;
        // Alive, or alive under another user (EPERM): either way in use.
        if matches!(kill(Pid::from_raw(pid), None), Ok(()) | Err(nix::errno::Errno::EPERM)) {
            return Err(BackupError::Config(format!(
                "a server is running in {}: postmaster.pid names process {pid}, which is alive; stop it \
                 (pg_ctl stop -D {}) before a delta restore (if that process is not PostgreSQL, remove the \
                 stale postmaster.pid)",
                to.display(),
                to.display()
            )));
        }
    }
    Ok(())
}

/// The settings recovery refuses to run below the source's values ("recovery
/// aborted because of insufficient parameter settings"), as the restored
/// `pgdr.conf` (the source's, which `configure` replaces) had them.
fn recovery_minimums(conf: &Path) -> Vec<(String, String)> {
    const KEYS: [&str; 5] = [
        "max_connections",
        "max_worker_processes",
        "max_wal_senders",
        "max_prepared_transactions",
        "max_locks_per_transaction",
    ];
    let text = std::fs::read_to_string(conf).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, v)| KEYS.contains(&k.as_str()) && !v.is_empty())
        .collect()
}

fn configure_recovery(pg: &LocalPg, opts: &RestoreOptions) -> Result<()> {
    let q = pgdr_node::local::quote;
    let mut settings: Vec<(String, String)> = vec![
        ("restore_command".into(), q(&opts.restore_command)),
        ("archive_mode".into(), "off".into()),
        ("recovery_target_action".into(), "'promote'".into()),
        ("recovery_target_timeline".into(), "'latest'".into()),
        // Settings a replica's config may carry that a restore must not use.
        ("primary_conninfo".into(), "''".into()),
        ("primary_slot_name".into(), "''".into()),
    ];
    match &opts.target {
        Target::Latest => {}
        Target::Time(t) => {
            settings.push(("recovery_target_time".into(), q(t)));
            settings.push(("recovery_target_inclusive".into(), "on".into()));
        }
        Target::Lsn(l) => settings.push(("recovery_target_lsn".into(), q(&l.to_string()))),
    }
    settings.extend(recovery_minimums(&opts.to.join("pgdr.conf")));
    pg.configure(&settings)?;
    // The source's pg_hba.conf may take TCP logins only over TLS (a
    // sandbox's does), which this copy, on loopback without a certificate,
    // cannot serve: SCRAM from this host only.
    pg.write_file("pg_hba.conf", pgdr_node::local::loopback_hba().as_bytes())?;
    // A replica's auto.conf may name a primary and slot; ALTER SYSTEM values there override pgdr.conf.
    let auto = opts.to.join("postgresql.auto.conf");
    if let Ok(text) = std::fs::read_to_string(&auto) {
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                let k = l.split('=').next().unwrap_or("").trim();
                !["primary_conninfo", "primary_slot_name", "restore_command", "archive_mode", "archive_command"]
                    .contains(&k)
                    && !k.starts_with("recovery_target")
            })
            .collect();
        let new = kept.join("\n") + "\n";
        // Rewritten only when something was dropped (a delta restore keeps it as it is otherwise).
        if new != text {
            std::fs::write(&auto, new).map_err(BackupError::io(format!("cannot write {}", auto.display())))?;
        }
    }
    for f in ["standby.signal", "postmaster.pid", pgdr_node::guard::MARKER] {
        let _ = std::fs::remove_file(opts.to.join(f));
    }
    let signal = opts.to.join("recovery.signal");
    std::fs::write(&signal, "").map_err(BackupError::io(format!("cannot write {}", signal.display())))?;
    opts.run_as.give(&signal)?;
    Ok(())
}

/// Starts the restored server and waits until recovery has finished (the
/// server was promoted), up to `wait`.
pub async fn start_and_wait(opts: &RestoreOptions, login: &Login, wait: Duration) -> Result<LocalPg> {
    // The restored server runs with pgdr's recovery settings only (no TLS),
    // on loopback: pgdr made it and is its only client.
    let login = &Login { tls: None, ..login.clone() };
    let bin = PgBinaries::find(opts.bin_dir.as_deref())?;
    let pg = LocalPg::new(bin, opts.to.clone(), "127.0.0.1", opts.port, opts.run_as.clone());
    pg.start(wait).await.map_err(|e| {
        let log = std::fs::read_to_string(pg.log_file()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        BackupError::Other(format!(
            "{}{e}; server log ends with: {}",
            recovery_hint(&log),
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ))
    })?;
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(c) = pg.connect(login).await
            && let Ok(row) = c.query_one("select pg_is_in_recovery()", &[]).await
            && !row.get::<_, bool>(0)
        {
            return Ok(pg);
        }
        if !pg.is_running().await {
            let log = std::fs::read_to_string(pg.log_file()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            return Err(BackupError::Other(format!(
                "{}the restored server stopped during recovery; its log ends with: {}",
                recovery_hint(&log),
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )));
        }
        if Instant::now() > deadline {
            return Err(BackupError::Other(format!("recovery did not finish within {}s", wait.as_secs())));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A plain explanation of the recovery failures people meet most, to put
/// before the server's own log lines.
fn recovery_hint(log: &str) -> &'static str {
    if log.contains("recovery ended before configured recovery target was reached") {
        "the recovery target is later than the newest archived WAL (the archive has nothing past it yet: \
         pick an earlier --target-time/--target-lsn, or wait for the segment to be archived; archive_timeout \
         bounds that wait): "
    } else {
        ""
    }
}

/// The outcome of a restore verification.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Verification {
    pub backup: String,
    pub cluster: String,
    pub dest: String,
    pub at: String,
    pub ok: bool,
    pub restore_seconds: f64,
    pub recovery_seconds: f64,
    pub amcheck: String,
    pub sanity: String,
}

/// Restores into a temporary folder, starts the server on a free port, runs
/// `pg_amcheck` and a sanity query, records the result at the destination
/// (create-if-absent, so also on immutable destinations) and cleans up.
pub async fn verify_by_restore(
    dest: &Dest,
    cluster: &str,
    backup: Option<&str>,
    login: &Login,
    restore_command_for: impl Fn(&Path) -> String,
    run_as: RunAs,
    bin_dir: Option<PathBuf>,
) -> Result<Verification> {
    let tmp = tempdir()?;
    let to = tmp.join("data");
    let port = free_port()?;
    let opts = RestoreOptions {
        backup: backup.map(str::to_owned),
        target: Target::Latest,
        to: to.clone(),
        restore_command: restore_command_for(&to),
        workers: 2,
        port,
        run_as,
        bin_dir,
        delta: false,
    };
    let login = &Login { tls: None, ..login.clone() };
    let outcome = async {
        let (m, measured) = restore(dest, cluster, &opts, &Progress::default()).await?;
        let t = Instant::now();
        let pg = start_and_wait(&opts, login, Duration::from_secs(300)).await?;
        let recovery_seconds = t.elapsed().as_secs_f64();
        let mut args = vec![
            "--all".to_owned(),
            "--install-missing".to_owned(),
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-U".into(),
            login.user.clone(),
        ];
        args.push("--no-password".into());
        let env: Vec<(&str, &str)> = login.password.as_deref().map(|p| vec![("PGPASSWORD", p)]).unwrap_or_default();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let amcheck = pg.run("pg_amcheck", &argv, &env).await;
        let c = pg.connect(login).await?;
        let sanity = c
            .query_one("select count(*) from pg_class", &[])
            .await
            .map(|r| format!("{} relations in pg_class", r.get::<_, i64>(0)))
            .map_err(|e| e.to_string());
        drop(c);
        pg.stop(StopMode::Fast, Duration::from_secs(60)).await?;
        let ok = amcheck.is_ok() && sanity.is_ok();
        Ok::<_, BackupError>(Verification {
            backup: m.id.clone(),
            cluster: cluster.to_owned(),
            dest: dest.name.clone(),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ok,
            restore_seconds: measured.seconds,
            recovery_seconds,
            amcheck: match amcheck {
                Ok(_) => "no corruption found".into(),
                Err(e) => e.to_string(),
            },
            sanity: sanity.unwrap_or_else(|e| e),
        })
    }
    .await;
    // Clean up whatever happened.
    if let Ok(bin) = PgBinaries::find(opts.bin_dir.as_deref()) {
        let pg = LocalPg::new(bin, to.clone(), "127.0.0.1", port, opts.run_as.clone());
        let _ = pg.stop(StopMode::Immediate, Duration::from_secs(30)).await;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let v = outcome?;
    let body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    dest.put_new(&manifest::verification_key(cluster, &v.backup, &v.at.replace(':', "")), body.into()).await?;
    Ok(v)
}

fn tempdir() -> Result<PathBuf> {
    use rand::Rng;
    let dir = std::env::temp_dir().join(format!("pgdr-verify-{:08x}", rand::rng().random::<u32>()));
    std::fs::create_dir_all(&dir).map_err(BackupError::io(format!("cannot create {}", dir.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(BackupError::io(format!("cannot open {}", dir.display())))?;
    Ok(dir)
}

/// A free TCP port on loopback.
pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(BackupError::io("cannot find a free port"))
}
