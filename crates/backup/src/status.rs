//! What the controller exports as backup metrics: per cluster and
//! destination, the newest backup, its age, and the newest archived WAL.
//! A plain struct; the controller turns it into `pgdr_backup_*` gauges.

use pgdr_config::Config;

use crate::schedule::Selector;
use crate::{Dest, Result};

#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupStatus {
    pub cluster: String,
    pub tier: String,
    pub destination: String,
    /// Whether this is a copy destination of the tier (not its primary one).
    pub copy: bool,
    pub backups: usize,
    pub newest: Option<String>,
    pub newest_at: Option<String>,
    /// Seconds since the newest backup started.
    pub newest_age_seconds: Option<i64>,
    pub newest_stored_bytes: Option<u64>,
    /// The tier's RPO, to compare the archive's freshness with.
    pub rpo_seconds: u64,
    pub newest_wal: Option<String>,
    pub wal_files: usize,
    /// Set when the destination could not be read.
    pub error: Option<String>,
}

/// Reads every selected cluster's destinations (the tier's and its copies).
pub async fn status(config: &Config, sel: &Selector) -> Result<Vec<BackupStatus>> {
    let mut out = Vec::new();
    let now = chrono::Utc::now();
    for c in config.clusters.iter().filter(|c| sel.matches(c)) {
        let Some(tier) = config.tier(c.tier.as_str()) else { continue };
        let Some(policy) = tier.backup.as_ref() else { continue };
        let dests =
            std::iter::once((policy.destination.clone(), false)).chain(policy.copies.iter().map(|d| (d.clone(), true)));
        for (name, copy) in dests {
            let mut s = BackupStatus {
                cluster: c.name.as_str().to_owned(),
                tier: tier.name.as_str().to_owned(),
                destination: name.clone(),
                copy,
                backups: 0,
                newest: None,
                newest_at: None,
                newest_age_seconds: None,
                newest_stored_bytes: None,
                rpo_seconds: tier.rpo.as_secs(),
                newest_wal: None,
                wal_files: 0,
                error: None,
            };
            let read = async {
                let dest = Dest::open_named(config, &name)?;
                let list = crate::base::list_backups(&dest, c.name.as_str()).await?;
                let wal = crate::wal::list(&dest, c.name.as_str()).await?;
                Ok::<_, crate::BackupError>((list, wal))
            };
            match read.await {
                Ok((list, wal)) => {
                    s.backups = list.len();
                    if let Some(m) = list.last() {
                        s.newest = Some(m.id.clone());
                        s.newest_at = Some(m.created_at.clone());
                        s.newest_age_seconds = m.created().map(|t| (now - t).num_seconds());
                        s.newest_stored_bytes = Some(m.stored_bytes);
                    }
                    s.wal_files = wal.len();
                    s.newest_wal = wal.iter().map(|w| w.0.clone()).filter(|n| crate::manifest::is_segment(n)).max();
                }
                Err(e) => s.error = Some(e.to_string()),
            }
            out.push(s);
        }
    }
    Ok(out)
}
