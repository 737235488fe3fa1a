//! A tier's backup job for one cluster: a base backup to the tier's
//! destination, then a copy to each of the tier's copy destinations; and
//! the scheduler's entry point, [`run_due`], which the controller (and
//! `pgdr backup run --due`) calls.

use std::path::Path;

use pgdr_config::Config;
use tokio_util::sync::CancellationToken;

use crate::base::{self, BackupOptions};
use crate::copy::{self, CopyReport};
use crate::schedule::Selector;
use crate::{Dest, Manifest, Measured, Progress, Result};

#[derive(Debug, Clone, serde::Serialize)]
pub struct JobReport {
    pub cluster: String,
    pub destination: String,
    pub backup: Manifest,
    pub measured: Measured,
    pub copies: Vec<CopyReport>,
}

/// Backs `cluster` up to `to` (else its tier's destination) at the tier's
/// compression level, then copies the backup to the tier's copies unless
/// `with_copies` is false. `journal_dir` keeps copy journals for resuming.
#[allow(clippy::too_many_arguments)]
pub async fn backup_and_copy(
    config: &Config,
    cluster: &str,
    to: Option<&str>,
    with_copies: bool,
    mut opts: BackupOptions,
    journal_dir: &Path,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<JobReport> {
    let policy = crate::policy(config, cluster)?;
    let dest = crate::dest_for(config, cluster, to)?;
    opts.level = policy.compression_level;
    let (m, measured) = base::run_backup(config, cluster, &dest, &opts, progress, cancel).await?;
    let mut copies = Vec::new();
    if with_copies {
        for name in policy.copies.iter().filter(|n| **n != dest.name) {
            let dst = Dest::open_named(config, name)?;
            copies
                .push(copy::copy_backup(&dest, &dst, cluster, &m.id, journal_dir, &Progress::default(), cancel).await?);
        }
    }
    Ok(JobReport { cluster: cluster.to_owned(), destination: dest.name.clone(), backup: m, measured, copies })
}

/// Runs the backup jobs of every selected cluster whose schedule says one is
/// due now; one cluster's failure does not stop the others.
pub async fn run_due(
    config: &Config,
    sel: &Selector,
    opts: &BackupOptions,
    journal_dir: &Path,
    cancel: &CancellationToken,
) -> Result<Vec<(String, Result<JobReport>)>> {
    let last = crate::schedule::last_backups(config, sel).await?;
    let due = crate::schedule::due(config, &last, chrono::Utc::now(), sel)
        .map_err(|e| crate::BackupError::Config(e.to_string()))?;
    let mut out = Vec::new();
    for d in due {
        let r =
            backup_and_copy(config, &d.cluster, None, true, opts.clone(), journal_dir, &Progress::default(), cancel)
                .await;
        if let Err(e) = &r {
            tracing::error!(cluster = %d.cluster, error = %e, "scheduled backup failed");
        }
        out.push((d.cluster, r));
    }
    Ok(out)
}
