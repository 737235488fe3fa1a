//! Backups: destinations, base backups, WAL archiving, copies, retention,
//! schedules, restore and point-in-time recovery.
//!
//! - [`format`]: the stored object format (zstd, then chunked AEAD with a key id,
//!   bound to the object's key path).
//! - [`keys`]: a destination's current and old keys.
//! - [`dest`]: object storage with create-if-absent writes and a concurrency limit.
//! - [`manifest`]: the destination layout and the backup manifest (authenticated, chained).
//! - [`lock`]: store-enforced immutability (S3 Object Lock) and its check.
//! - [`base`]: a streamed base backup of a running cluster (from a replica when one is healthy).
//! - [`wal`]: `wal-push` (archive_command, with parallel look-ahead) and `wal-fetch` (restore_command).
//! - [`extract`]: writing a backup's files into a data directory, in full or as a delta.
//! - [`restore`]: restore, PITR and restore-verification.
//! - [`copy`]: copies to other destinations, resumable, and `pull` from a read-only source.
//! - [`job`]: a tier's backup job (backup, then copies) and `run_due` for the scheduler.
//! - [`retention`]: prune by count and age.
//! - [`schedule`]: which clusters are due for a backup by their tier's cron schedule.
//! - [`tarindex`]: the list of files in a backup's tar stream (for delta restores).
//! - [`status`]: newest backup and WAL per cluster and destination (for metrics).
//!
//! This crate depends on config, model and node; never on the controller or proxy.

pub mod base;
pub mod copy;
pub mod dest;
pub mod extract;
pub mod format;
pub mod job;
pub mod keys;
pub mod lock;
pub mod manifest;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod status;
pub mod tarindex;
pub mod wal;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use dest::{Dest, DestError};
pub use manifest::Manifest;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Dest(#[from] DestError),
    #[error("destination {dest:?}: {key}: {source}")]
    Format { dest: String, key: String, source: format::FormatError },
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// A stored object that is not what its manifest names: damaged
    /// (`corrupt`) or authentic data from elsewhere (`substituted`).
    #[error("destination {dest:?}: object {key} is {trouble}: {detail}")]
    Object { dest: String, key: String, trouble: manifest::Trouble, detail: String },
    #[error(
        "ROLLBACK at destination {dest:?}: cluster {cluster:?}: {detail}. Backups were deleted or hidden by someone with write access to the storage; investigate before restoring. To restore an older backup deliberately, name it with --backup ID"
    )]
    Rollback { dest: String, cluster: String, detail: String },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Pg(#[from] pgdr_node::PgError),
    #[error(transparent)]
    Bin(#[from] pgdr_node::BinError),
    #[error(transparent)]
    Os(#[from] pgdr_node::os::OsError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{program} failed ({status}): {output}")]
    Program { program: String, status: String, output: String },
    #[error(
        "WAL {name} is already archived at destination {dest:?} with DIFFERENT contents: refusing to overwrite. Two clusters may be archiving to the same place, or this cluster was restored without a new timeline; investigate before archiving continues"
    )]
    WalConflict { dest: String, name: String },
    #[error("WAL {name} is not in destination {dest:?}")]
    WalMissing { dest: String, name: String },
    #[error("no backup of cluster {cluster:?} at destination {dest:?}{detail}")]
    NoBackup { cluster: String, dest: String, detail: String },
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Other(String),
}

impl BackupError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
        let what = what.into();
        move |source| BackupError::Io { what, source }
    }

    /// Worth retrying (network or server trouble), as opposed to corrupt data,
    /// bad config or a conflict.
    pub fn is_retryable(&self) -> bool {
        match self {
            BackupError::Dest(DestError::Store { source, .. }) => !matches!(
                **source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::NotImplemented { .. }
            ),
            _ => false,
        }
    }
}

pub type Result<T, E = BackupError> = std::result::Result<T, E>;

/// Counters a long operation updates as it goes; the CLI draws progress bars
/// from them and the controller can export them as metrics.
#[derive(Debug, Default)]
pub struct Progress {
    /// Expected plaintext bytes when known (0 if not).
    pub total: AtomicU64,
    pub plain_bytes: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub objects: AtomicU64,
}

impl Progress {
    pub fn add(&self, plain: u64, stored: u64) {
        self.plain_bytes.fetch_add(plain, Ordering::Relaxed);
        self.stored_bytes.fetch_add(stored, Ordering::Relaxed);
        self.objects.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a finished operation measured: the metrics the controller exports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Measured {
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    pub objects: u64,
    pub seconds: f64,
    /// Set by a restore that wrote files itself (from the backup's file
    /// list): what it kept, wrote and removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<FileCounts>,
}

/// What a restore did to the files of a data directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FileCounts {
    /// Files already there with the backup's size and blake3: not rewritten.
    pub kept: u64,
    pub kept_bytes: u64,
    /// Files written (new or different).
    pub written: u64,
    pub written_bytes: u64,
    /// Files, links and folders removed (not in the backup, or of another kind).
    pub removed: u64,
}

impl Measured {
    /// Plaintext MiB per second.
    pub fn mib_per_s(&self) -> f64 {
        if self.seconds > 0.0 { self.plain_bytes as f64 / 1048576.0 / self.seconds } else { 0.0 }
    }
}

/// The `archive_command` and related settings that make PostgreSQL archive a
/// cluster's WAL through `pgdr wal-push`. `archive_mode` only takes effect
/// after a restart. Values are quoted for postgresql.conf and ALTER SYSTEM.
pub fn archive_settings(config_path: &Path, cluster: &str) -> Vec<(String, String)> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("pgdr"));
    archive_settings_with(&exe, config_path, cluster)
}

/// [`archive_settings`] with an explicit program (`pgdr` or `pgdr-wal`).
pub fn archive_settings_with(exe: &Path, config_path: &Path, cluster: &str) -> Vec<(String, String)> {
    let config_path = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_owned());
    let cmd = format!(
        "{} --config {} wal-push --cluster {} %p",
        shell_quote(&exe.display().to_string()),
        shell_quote(&config_path.display().to_string()),
        shell_quote(cluster)
    );
    vec![
        ("wal_level".to_owned(), "'replica'".to_owned()),
        ("archive_mode".to_owned(), "'on'".to_owned()),
        ("archive_command".to_owned(), pgdr_node::local::quote(&cmd)),
        // Bound how long a quiet cluster's last writes stay unarchived.
        ("archive_timeout".to_owned(), "'60s'".to_owned()),
    ]
}

/// The `restore_command` fetching WAL through `pgdr wal-fetch`.
pub fn restore_command(exe: &Path, config_path: &Path, cluster: &str, from: &str) -> String {
    let config_path = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_owned());
    format!(
        "{} --config {} wal-fetch --cluster {} --from {} %f %p",
        shell_quote(&exe.display().to_string()),
        shell_quote(&config_path.display().to_string()),
        shell_quote(cluster),
        shell_quote(from)
    )
}

/// Quotes a word for `/bin/sh` (PostgreSQL runs archive and restore commands through it).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@".contains(&b)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Finds a cluster in the config, as a clear error when absent.
pub fn cluster<'a>(config: &'a pgdr_config::Config, name: &str) -> Result<&'a pgdr_config::Cluster> {
    config.cluster(name).ok_or_else(|| {
        BackupError::Config(format!(
            "cluster {name:?} is not declared in {} (declared: {})",
            config.file.display(),
            config.clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
        ))
    })
}

/// The backup policy of a cluster's tier.
pub fn policy<'a>(config: &'a pgdr_config::Config, cluster: &str) -> Result<&'a pgdr_config::TierBackup> {
    let c = self::cluster(config, cluster)?;
    config.tier(c.tier.as_str()).and_then(|t| t.backup.as_ref()).ok_or_else(|| {
        BackupError::Config(format!(
            "tier {:?} of cluster {cluster:?} has no [tiers.backup] section: no destination to use",
            c.tier.as_str()
        ))
    })
}

/// The destination to use: the named one, else the tier's primary destination.
pub fn dest_for(config: &pgdr_config::Config, cluster: &str, name: Option<&str>) -> Result<Dest> {
    let name = match name {
        Some(n) => n.to_owned(),
        None => policy(config, cluster)?.destination.clone(),
    };
    Ok(Dest::open_named(config, &name)?)
}
