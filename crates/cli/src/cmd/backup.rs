//! `pgdr backup run|list|verify|prune|copy|pull|enable`, `pgdr wal-push`,
//! `pgdr wal-fetch` and `pgdr restore`: flags, progress and output around
//! the `pgdr-backup` library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use pgdr_backup::base::{self, BackupOptions};
use pgdr_backup::manifest::Trouble;
use pgdr_backup::restore::{self, RestoreOptions, Target};
use pgdr_backup::schedule::Selector;
use pgdr_backup::{BackupError, Dest, Progress, copy, retention};
use pgdr_config::Config;
use tokio_util::sync::CancellationToken;

use super::Global;
use crate::exit::Usage;

#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Take base backups (to the tier's destination, then copied to the tier's copies).
    Run {
        /// Clusters to back up (default: all selected).
        #[arg(long)]
        cluster: Vec<String>,
        /// Only clusters whose tier's schedule says a backup is due.
        #[arg(long)]
        due: bool,
        /// Only clusters of this tier.
        #[arg(long)]
        tier: Option<String>,
        /// Only clusters with this tag (repeatable: all must match).
        #[arg(long)]
        tag: Vec<String>,
        /// Destination instead of the tier's.
        #[arg(long)]
        to: Option<String>,
        /// Do not copy to the tier's copy destinations.
        #[arg(long)]
        no_copy: bool,
        /// Read from this node instead of choosing a healthy replica.
        #[arg(long)]
        node: Option<String>,
        /// Parts compressed and encrypted at once.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Plaintext MiB per stored object.
        #[arg(long, default_value_t = 16)]
        part_mib: usize,
        /// Show what would run.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Newest backup and WAL per cluster and destination, with ages.
    Status {
        #[arg(long)]
        tier: Option<String>,
        #[arg(long)]
        tag: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// List a cluster's backups at a destination.
    List {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Check a backup: its manifest (authentic, in its place, no rollback at the
    /// destination) and its objects' stored checksums; reports corruption,
    /// substitution and rollback apart.
    Verify {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        from: Option<String>,
        /// Backup id or `latest`.
        #[arg(long, default_value = "latest")]
        backup: String,
        /// Also decrypt and check plaintext checksums (needs the key).
        #[arg(long)]
        decrypt: bool,
        /// Also restore into a temporary folder, start it, run pg_amcheck and a query.
        #[arg(long)]
        restore: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove backups and WAL beyond the tier's retention (never on immutable destinations).
    Prune {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Copy a backup (and the WAL the target lacks) to another destination; resumes.
    Copy {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        backup: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: String,
        #[arg(long)]
        json: bool,
    },
    /// Copy new backups and WAL from a source this account may only read.
    Pull {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        json: bool,
    },
    /// Make an immutable S3 destination's bucket enforce it: S3 Object Lock in
    /// COMPLIANCE mode, default retention from the tiers using it (run once at
    /// setup, on a bucket created with Object Lock enabled).
    Lock {
        /// The destination (must be marked `immutable = true`).
        #[arg(long)]
        dest: String,
        /// Retention in days (default: the longest retain_age of the tiers using it, else 30).
        #[arg(long)]
        days: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Turn on WAL archiving through `pgdr wal-push` (ALTER SYSTEM + reload;
    /// archive_mode needs a restart if it was off).
    Enable {
        #[arg(long)]
        cluster: String,
        /// Only this node (default: every node that answers).
        #[arg(long)]
        node: Option<String>,
        /// Print the settings instead of applying them.
        #[arg(long)]
        print: bool,
    },
}

#[derive(Debug, Args)]
pub struct WalPushArgs {
    #[arg(long)]
    pub cluster: String,
    /// Destination instead of the tier's.
    #[arg(long)]
    pub to: Option<String>,
    /// PostgreSQL's %p.
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct WalFetchArgs {
    #[arg(long)]
    pub cluster: String,
    #[arg(long)]
    pub from: Option<String>,
    /// PostgreSQL's %f.
    pub name: String,
    /// PostgreSQL's %p.
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[arg(long)]
    pub cluster: String,
    /// Destination to restore from.
    #[arg(long)]
    pub from: String,
    /// Backup id or `latest` (default: the newest that finished before the target).
    #[arg(long)]
    pub backup: Option<String>,
    /// Recover up to this time (e.g. "2026-11-23 16:31:00+00").
    #[arg(long, conflicts_with = "target_lsn")]
    pub target_time: Option<String>,
    /// Recover up to this LSN.
    #[arg(long)]
    pub target_lsn: Option<String>,
    /// Data directory to restore into: new or empty, or with --delta a stopped server's.
    #[arg(long, required_unless_present = "verify")]
    pub to: Option<PathBuf>,
    /// Restore into the existing data directory of a stopped server: keep the files whose size and
    /// checksum match the backup, fetch and write only the rest, remove what the backup does not have.
    #[arg(long, conflicts_with = "verify")]
    pub delta: bool,
    /// Start the restored server and wait for recovery to finish.
    #[arg(long)]
    pub start: bool,
    /// Port for the started server (default: a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Restore into a temporary folder, check it with pg_amcheck and a query, record the result, clean up.
    #[arg(long)]
    pub verify: bool,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[arg(long)]
    pub json: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

fn exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("pgdr"))
}

fn journal_dir(config: &Config) -> PathBuf {
    config.controller.state_dir.join("backup-journal")
}

/// Draws a progress bar from the counters while `fut` runs (plain lines
/// every few seconds when stderr is not a terminal).
async fn with_progress<T>(label: &str, progress: Arc<Progress>, fut: impl std::future::Future<Output = T>) -> T {
    let tty = std::io::stderr().is_terminal();
    let label = label.to_owned();
    let p = progress.clone();
    let drawer = tokio::spawn(async move {
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_message(label.clone());
            b
        });
        let mut tick = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            tick += 1;
            let done = p.plain_bytes.load(Ordering::Relaxed);
            let total = p.total.load(Ordering::Relaxed).max(done);
            match &bar {
                Some(b) => {
                    b.set_length(total);
                    b.set_position(done);
                }
                None if tick.is_multiple_of(25) => {
                    eprintln!("{label}: {} MiB of about {} MiB", done >> 20, total >> 20);
                }
                None => {}
            }
        }
    });
    let out = fut.await;
    drawer.abort();
    if tty {
        eprint!("\r\x1b[2K");
    }
    out
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn run(global: &Global, cmd: BackupCmd) -> anyhow::Result<ExitCode> {
    let config = global.load_config()?;
    let config_path = global.config_path();
    runtime()?.block_on(async move {
        match cmd {
            BackupCmd::Run { cluster, due, tier, tag, to, no_copy, node, workers, part_mib, dry_run, json } => {
                let sel = Selector { tier, tags: tag, clusters: cluster };
                backup_run(&config, &sel, due, to, no_copy, node, workers, part_mib, dry_run, json).await
            }
            BackupCmd::Status { tier, tag, json } => {
                let sel = Selector { tier, tags: tag, clusters: Vec::new() };
                let list = pgdr_backup::status::status(&config, &sel).await?;
                if json {
                    print_json(&list);
                } else {
                    println!("{:<16} {:<10} {:<14} {:>7} {:<24} {:>9} {:<24}", "cluster", "tier", "destination", "backups", "newest", "age", "newest WAL");
                    for s in &list {
                        println!(
                            "{:<16} {:<10} {:<14} {:>7} {:<24} {:>9} {:<24}{}",
                            s.cluster,
                            s.tier,
                            format!("{}{}", s.destination, if s.copy { " (copy)" } else { "" }),
                            s.backups,
                            s.newest.as_deref().unwrap_or("-"),
                            s.newest_age_seconds.map(|a| pgdr_model::format_duration(Duration::from_secs(a.max(0) as u64))).unwrap_or_else(|| "-".into()),
                            s.newest_wal.as_deref().unwrap_or("-"),
                            s.error.as_deref().map(|e| format!("  error: {e}")).unwrap_or_default()
                        );
                    }
                }
                Ok(if list.iter().any(|s| s.error.is_some()) { ExitCode::from(1) } else { ExitCode::SUCCESS })
            }
            BackupCmd::List { cluster, from, json } => {
                let dest = pgdr_backup::dest_for(&config, &cluster, from.as_deref())?;
                let cat = base::catalog(&dest, &cluster).await?;
                if json {
                    print_json(&cat);
                } else {
                    println!("{:<24} {:<20} {:>10} {:>10} {:<8} {:<6} source", "id", "created", "data MiB", "stored MiB", "key", "tl");
                    for m in &cat.valid {
                        println!(
                            "{:<24} {:<20} {:>10} {:>10} {:<8} {:<6} {}{}",
                            m.id,
                            m.created_at.get(..19).unwrap_or(&m.created_at),
                            m.plain_bytes >> 20,
                            m.stored_bytes >> 20,
                            m.key_id,
                            m.timeline,
                            m.source_node,
                            if m.from_replica { " (replica)" } else { "" }
                        );
                    }
                    for i in &cat.invalid {
                        println!("{:<24} INVALID ({}): {}", i.id, i.trouble, i.error);
                    }
                    if let Some(r) = &cat.rollback {
                        println!("ROLLBACK: {r}");
                    }
                    for id in &cat.missing {
                        println!("{id:<24} MISSING: named as the previous backup by a newer one");
                    }
                }
                Ok(if cat.problems().is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
            }
            BackupCmd::Verify { cluster, from, backup, decrypt, restore: by_restore, json } => {
                let dest = pgdr_backup::dest_for(&config, &cluster, from.as_deref())?;
                // The destination's catalog first: substituted or altered
                // manifests and a rollback are findings of their own.
                let cat = base::catalog(&dest, &cluster).await?;
                let mut findings: Vec<base::Problem> = cat
                    .invalid
                    .iter()
                    .map(|i| base::Problem { trouble: i.trouble, key: i.key.clone(), detail: i.error.clone() })
                    .collect();
                let at = pgdr_backup::manifest::backups_prefix(&cluster);
                if let Some(r) = &cat.rollback {
                    findings.push(base::Problem { trouble: Trouble::Rollback, key: at.clone(), detail: r.to_string() });
                }
                for id in &cat.missing {
                    findings.push(base::Problem {
                        trouble: Trouble::Rollback,
                        key: pgdr_backup::manifest::backup_prefix(&cluster, id),
                        detail: "named as the previous backup by a newer one, but absent (deleted?)".into(),
                    });
                }
                let m = if backup == "latest" {
                    cat.newest().cloned()
                } else {
                    match base::find_backup(&dest, &cluster, Some(&backup)).await {
                        Ok(m) => Some(m),
                        Err(BackupError::Manifest(e)) => {
                            // Listed once already when the catalog saw it.
                            if !findings.iter().any(|f| f.detail == e.to_string()) {
                                findings.push(base::Problem {
                                    trouble: e.trouble(),
                                    key: pgdr_backup::manifest::manifest_key(&cluster, &backup),
                                    detail: e.to_string(),
                                });
                            }
                            None
                        }
                        Err(e) => return Err(e.into()),
                    }
                };
                if let Some(m) = &m {
                    findings.extend(base::verify_backup(&dest, m, decrypt).await?);
                }
                let mut restored = None;
                if let Some(m) = m.as_ref().filter(|_| by_restore && findings.is_empty()) {
                    let login = cluster_login(&config, &cluster)?;
                    let dname = dest.name.clone();
                    let cp = config_path.clone();
                    let c2 = cluster.clone();
                    let v = restore::verify_by_restore(
                        &dest,
                        &cluster,
                        Some(&m.id),
                        &login,
                        move |_| pgdr_backup::restore_command(&exe(), &cp, &c2, &dname),
                        pgdr_node::RunAs::for_node(None)?,
                        None,
                    )
                    .await?;
                    restored = Some(v);
                }
                let ok = m.is_some() && findings.is_empty() && restored.as_ref().is_none_or(|v| v.ok);
                let id = m.as_ref().map(|m| m.id.clone()).unwrap_or_else(|| backup.clone());
                if json {
                    print_json(&serde_json::json!({"backup": id, "dest": dest.name, "ok": ok, "problems": findings, "invalid": cat.invalid, "rollback": cat.rollback, "restore": restored}));
                } else {
                    for p in &findings {
                        eprintln!("{}: {p}", p.trouble);
                    }
                    if let Some(v) = &restored {
                        println!("restore check: {} (amcheck: {}; {})", if v.ok { "ok" } else { "FAILED" }, v.amcheck, v.sanity);
                    }
                    match &m {
                        Some(m) => println!(
                            "backup {} at {}: {} ({} objects checked{})",
                            m.id,
                            dest.name,
                            if ok { "ok" } else { "FAILED" },
                            m.objects.len(),
                            if decrypt { ", decrypted" } else { "" }
                        ),
                        None => println!("backup {id} at {}: FAILED (no usable manifest)", dest.name),
                    }
                }
                Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
            }
            BackupCmd::Prune { cluster, from, dry_run, json } => {
                let dest = pgdr_backup::dest_for(&config, &cluster, from.as_deref())?;
                let policy = retention::Policy::from(pgdr_backup::policy(&config, &cluster)?);
                let r = retention::prune(&dest, &cluster, &policy, dry_run).await?;
                if json {
                    print_json(&r);
                } else {
                    let verb = if dry_run { "would remove" } else { "removed" };
                    println!(
                        "{}: kept {} backups, {verb} {} backups ({}), {} WAL files and {} failed backups' parts",
                        dest.name,
                        r.plan.keep.len(),
                        r.plan.remove.len(),
                        r.plan.remove.join(", "),
                        r.wal_removed.len(),
                        r.orphans_removed.len()
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            BackupCmd::Copy { cluster, backup, from, to, json } => {
                let src = pgdr_backup::dest_for(&config, &cluster, from.as_deref())?;
                let dst = Dest::open_named(&config, &to)?;
                let m = base::find_backup(&src, &cluster, Some(&backup)).await?;
                let progress = Arc::new(Progress::default());
                let cancel = cancel_on_ctrl_c();
                let r = with_progress(
                    &format!("copy {} → {}", m.id, dst.name),
                    progress.clone(),
                    copy::copy_backup(&src, &dst, &cluster, &m.id, &journal_dir(&config), &progress, &cancel),
                )
                .await?;
                if json {
                    print_json(&r);
                } else {
                    println!(
                        "copied {} to {}: {} objects now, {} from an earlier run, {} WAL files",
                        r.backup, r.target, r.copied, r.resumed, r.wal_copied
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            BackupCmd::Pull { cluster, from, to, json } => {
                let src = Dest::open_named(&config, &from)?;
                let dst = Dest::open_named(&config, &to)?;
                let progress = Arc::new(Progress::default());
                let cancel = cancel_on_ctrl_c();
                let r = with_progress(
                    &format!("pull {} → {}", src.name, dst.name),
                    progress.clone(),
                    copy::pull(&src, &dst, &cluster, &journal_dir(&config), &progress, &cancel),
                )
                .await?;
                if json {
                    print_json(&r);
                } else {
                    let backups = r.iter().filter(|c| !c.backup.is_empty()).count();
                    let wal: usize = r.iter().map(|c| c.wal_copied).sum();
                    println!("pulled {backups} backups and {wal} WAL files from {} to {}", src.name, dst.name);
                }
                Ok(ExitCode::SUCCESS)
            }
            BackupCmd::Lock { dest, days, json } => lock(&config, &dest, days, json).await,
            BackupCmd::Enable { cluster, node, print } => enable(&config, &config_path, &cluster, node.as_deref(), print).await,
        }
    })
}

fn cancel_on_ctrl_c() -> CancellationToken {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            c.cancel();
        }
    });
    cancel
}

fn cluster_login(config: &Config, cluster: &str) -> anyhow::Result<pgdr_node::local::Login> {
    let c = pgdr_backup::cluster(config, cluster)?;
    let password = match &c.password {
        Some(s) => Some(s.resolve().with_context(|| format!("cluster {cluster}: password"))?),
        None => None,
    };
    let tls = match &config.tls {
        Some(t) => Some(pgdr_node::local::PgTls::new(&t.ca).context("tls.ca")?),
        None => None,
    };
    Ok(pgdr_node::local::Login { user: c.user.clone(), password, database: c.database.clone(), tls })
}

#[allow(clippy::too_many_arguments)]
async fn backup_run(
    config: &Config,
    sel: &Selector,
    due: bool,
    to: Option<String>,
    no_copy: bool,
    node: Option<String>,
    workers: usize,
    part_mib: usize,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let clusters: Vec<String> = if due {
        let last = pgdr_backup::schedule::last_backups(config, sel).await?;
        pgdr_backup::schedule::due(config, &last, chrono_now(), sel)
            .map_err(|e| Usage(e.to_string()))?
            .into_iter()
            .map(|d| d.cluster)
            .collect()
    } else {
        config.clusters.iter().filter(|c| sel.matches(c)).map(|c| c.name.as_str().to_owned()).collect()
    };
    for name in &sel.clusters {
        pgdr_backup::cluster(config, name).map_err(|e| Usage(e.to_string()))?;
    }
    if dry_run {
        if json {
            print_json(&clusters);
        } else if clusters.is_empty() {
            println!("nothing to back up");
        } else {
            println!("would back up: {}", clusters.join(", "));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut results = Vec::new();
    let mut failed = 0;
    for cluster in &clusters {
        let outcome = backup_one(config, cluster, to.as_deref(), no_copy, node.clone(), workers, part_mib).await;
        match outcome {
            Ok(v) => {
                if !json {
                    println!("{}", v["summary"].as_str().unwrap_or_default());
                }
                results.push(v);
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: cluster {cluster}: {e:#}");
                results.push(serde_json::json!({"cluster": cluster, "ok": false, "error": format!("{e:#}")}));
            }
        }
    }
    if json {
        print_json(&results);
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

async fn backup_one(
    config: &Config,
    cluster: &str,
    to: Option<&str>,
    no_copy: bool,
    node: Option<String>,
    workers: usize,
    part_mib: usize,
) -> anyhow::Result<serde_json::Value> {
    let dest = pgdr_backup::dest_for(config, cluster, to)?;
    let opts = BackupOptions { level: 3, part_size: part_mib.max(1) << 20, workers, node };
    let progress = Arc::new(Progress::default());
    let cancel = cancel_on_ctrl_c();
    let journal = journal_dir(config);
    let job = pgdr_backup::job::backup_and_copy(config, cluster, to, !no_copy, opts, &journal, &progress, &cancel);
    let r = with_progress(&format!("backup {cluster} → {}", dest.name), progress.clone(), job).await?;
    let (m, measured) = (&r.backup, &r.measured);
    let summary = format!(
        "backup {} of {cluster} to {}: {} MiB in {:.1}s ({:.0} MiB/s), stored {} MiB, from {}{}{}",
        m.id,
        r.destination,
        measured.plain_bytes >> 20,
        measured.seconds,
        measured.mib_per_s(),
        measured.stored_bytes >> 20,
        m.source_node,
        if m.from_replica { " (replica)" } else { "" },
        if r.copies.is_empty() {
            String::new()
        } else {
            format!("; copied to {}", r.copies.iter().map(|c| c.target.as_str()).collect::<Vec<_>>().join(", "))
        }
    );
    Ok(serde_json::json!({"cluster": cluster, "ok": true, "report": r, "summary": summary}))
}

async fn enable(
    config: &Config,
    config_path: &Path,
    cluster: &str,
    node: Option<&str>,
    print: bool,
) -> anyhow::Result<ExitCode> {
    let c = pgdr_backup::cluster(config, cluster).map_err(|e| Usage(e.to_string()))?;
    pgdr_backup::policy(config, cluster).map_err(|e| Usage(e.to_string()))?;
    let settings = pgdr_backup::archive_settings(config_path, cluster);
    if print {
        for (k, v) in &settings {
            println!("{k} = {v}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let login = cluster_login(config, cluster)?;
    // archive_command runs as the server's user: let it write the WAL folder.
    let dest = pgdr_backup::dest_for(config, cluster, None)?;
    for n in c.nodes.iter().filter(|n| node.is_none_or(|o| o == n.name.as_str())) {
        dest.prepare_wal_dir(cluster, &pgdr_node::RunAs::for_node(n.os_user.as_deref())?)?;
    }
    let mut restart_needed = Vec::new();
    for n in c.nodes.iter().filter(|n| node.is_none_or(|o| o == n.name.as_str())) {
        let mut conninfo =
            format!("host={} port={} user={} dbname={} connect_timeout=5", n.host, n.port, login.user, login.database);
        if let Some(p) = &login.password {
            conninfo.push_str(&format!(" password={}", pgdr_node::local::conn_quote(p)));
        }
        let client =
            pgdr_node::local::connect(&conninfo, &format!("{}:{}", n.host, n.port), login.tls.as_ref()).await?;
        for (k, v) in &settings {
            client
                .batch_execute(&format!("ALTER SYSTEM SET {k} = {v}"))
                .await
                .with_context(|| format!("{}: ALTER SYSTEM SET {k}", n.name.as_str()))?;
        }
        client.batch_execute("SELECT pg_reload_conf()").await?;
        let row = client.query_one("select setting from pg_settings where name = 'archive_mode'", &[]).await?;
        let mode: String = row.get(0);
        if mode == "off" {
            restart_needed.push(n.name.as_str().to_owned());
        }
        println!("{}: archiving through pgdr wal-push configured", n.name.as_str());
    }
    if !restart_needed.is_empty() {
        println!(
            "archive_mode only takes effect after a restart: restart {} (e.g. pg_ctl restart) to start archiving",
            restart_needed.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn lock(config: &Config, name: &str, days: Option<u32>, json: bool) -> anyhow::Result<ExitCode> {
    let d =
        config.destination(name).ok_or_else(|| Usage(format!("no destination {name} in {}", config.file.display())))?;
    if !d.immutable {
        return Err(Usage(format!(
            "destination {name} is not marked immutable: set `immutable = true` on it first (pgdr then never deletes there)"
        ))
        .into());
    }
    let Some(s3) = pgdr_backup::lock::S3Admin::for_destination(d)? else {
        return Err(Usage(format!("destination {name} ({}): only s3:// buckets can be locked by pgdr", d.url)).into());
    };
    let days = days.unwrap_or_else(|| pgdr_backup::lock::lock_days(config, name));
    if days == 0 {
        return Err(Usage("--days must be at least 1".into()).into());
    }
    s3.set_default_retention(days).await?;
    let state = s3.lock_state().await?;
    let shortfall = state.shortfall(days);
    if json {
        print_json(
            &serde_json::json!({"dest": name, "days": days, "state": state, "enforced": shortfall.is_none(), "problem": shortfall}),
        );
    } else {
        match &shortfall {
            None => println!(
                "{name}: S3 Object Lock in COMPLIANCE mode, every new object locked for {} days (no credential can delete or overwrite a locked version before then)",
                state.retention_days()
            ),
            Some(why) => eprintln!("{name}: the bucket does not enforce write-once: {why}"),
        }
    }
    Ok(if shortfall.is_none() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn wal_push(global: &Global, a: WalPushArgs) -> anyhow::Result<ExitCode> {
    let config = global.load_config()?;
    runtime()?.block_on(async move {
        pgdr_backup::wal::push_cmd(&config, &a.cluster, a.to.as_deref(), &a.path).await?;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn wal_fetch(global: &Global, a: WalFetchArgs) -> anyhow::Result<ExitCode> {
    let config = global.load_config()?;
    runtime()?.block_on(async move {
        match pgdr_backup::wal::fetch_cmd(&config, &a.cluster, a.from.as_deref(), &a.name, &a.path).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            // Absent: PostgreSQL expects a plain non-zero exit, no noise.
            Err(BackupError::WalMissing { .. }) => Ok(ExitCode::from(1)),
            Err(e) => Err(e.into()),
        }
    })
}

pub fn restore(global: &Global, a: RestoreArgs) -> anyhow::Result<ExitCode> {
    let config = global.load_config()?;
    let config_path = global.config_path();
    let target = match (&a.target_time, &a.target_lsn) {
        (Some(t), _) => Target::Time(t.clone()),
        (None, Some(l)) => Target::Lsn(l.parse().map_err(|e: pgdr_model::LsnParseError| Usage(e.to_string()))?),
        (None, None) => Target::Latest,
    };
    pgdr_backup::cluster(&config, &a.cluster).map_err(|e| Usage(e.to_string()))?;
    runtime()?.block_on(async move {
        let dest = Dest::open_named(&config, &a.from)?;
        let login = cluster_login(&config, &a.cluster)?;
        let restore_command = pgdr_backup::restore_command(&exe(), &config_path, &a.cluster, &dest.name);
        if a.verify {
            let rc = restore_command.clone();
            let v = restore::verify_by_restore(
                &dest,
                &a.cluster,
                a.backup.as_deref(),
                &login,
                move |_| rc.clone(),
                pgdr_node::RunAs::for_node(None)?,
                None,
            )
            .await?;
            if a.json {
                print_json(&v);
            } else {
                println!(
                    "verify-restore of {} from {}: {} (restore {:.1}s, recovery {:.1}s; amcheck: {}; {})",
                    v.backup,
                    v.dest,
                    if v.ok { "ok" } else { "FAILED" },
                    v.restore_seconds,
                    v.recovery_seconds,
                    v.amcheck,
                    v.sanity
                );
            }
            return Ok(if v.ok { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
        let Some(to) = a.to.clone() else {
            return Err(Usage("--to DIR is required (or use --verify)".into()).into());
        };
        let to = if to.is_absolute() { to } else { std::env::current_dir()?.join(to) };
        let port = match a.port {
            Some(p) => p,
            None => restore::free_port()?,
        };
        let opts = RestoreOptions {
            backup: a.backup.clone(),
            target,
            to: to.clone(),
            restore_command,
            workers: a.workers,
            port,
            run_as: pgdr_node::RunAs::for_node(None)?,
            bin_dir: None,
            delta: a.delta,
        };
        let progress = Arc::new(Progress::default());
        let (m, measured) = with_progress(
            &format!("restore from {}", dest.name),
            progress.clone(),
            restore::restore(&dest, &a.cluster, &opts, &progress),
        )
        .await?;
        let mut started = false;
        if a.start {
            restore::start_and_wait(&opts, &login, Duration::from_secs(3600)).await?;
            started = true;
        }
        if a.json {
            print_json(
                &serde_json::json!({"backup": m.id, "to": to, "port": port, "started": started, "measured": measured}),
            );
        } else {
            let files = match &measured.files {
                Some(f) if a.delta => format!(
                    " ({} files kept as they were ({} MiB), {} written ({} MiB), {} removed)",
                    f.kept,
                    f.kept_bytes >> 20,
                    f.written,
                    f.written_bytes >> 20,
                    f.removed
                ),
                _ => String::new(),
            };
            println!(
                "restored backup {} from {} into {}: {} MiB fetched in {:.1}s ({:.0} MiB/s){files}{}",
                m.id,
                dest.name,
                to.display(),
                measured.plain_bytes >> 20,
                measured.seconds,
                measured.mib_per_s(),
                if started {
                    format!("; recovered and running on 127.0.0.1:{port}")
                } else {
                    format!("; start it to replay WAL (port {port} is configured)")
                }
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
