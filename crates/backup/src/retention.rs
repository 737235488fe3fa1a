//! Retention: which backups and WAL a destination may drop.
//!
//! A backup may go when it is beyond the newest `retain_count` AND older than
//! `retain_age` (with only one of them set, that one decides). The newest
//! backup is always kept. WAL is removed only below the first segment the
//! oldest kept backup needs; timeline history files are always kept. Nothing
//! is ever removed on an immutable destination: there retention is the
//! storage's own lock policy. Parts of backups that never got a manifest
//! (failed or cancelled) are removed once untouched for [`ORPHAN_AGE`].

use std::time::Duration;

use crate::dest::Dest;
use crate::manifest::{self, Manifest};
use crate::{BackupError, Result};

/// A backup without a manifest whose newest object is older than this is
/// taken as failed and removed by prune.
pub const ORPHAN_AGE: Duration = Duration::from_secs(48 * 3600);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub retain_count: Option<u32>,
    pub retain_age: Option<Duration>,
}

impl From<&pgdr_config::TierBackup> for Policy {
    fn from(b: &pgdr_config::TierBackup) -> Policy {
        Policy { retain_count: b.retain_count, retain_age: b.retain_age }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    pub keep: Vec<String>,
    pub remove: Vec<String>,
    /// WAL positions (log+segment, 16 hex digits) below this may go.
    pub wal_below: Option<String>,
}

/// Decides what to keep. `backups` in any order.
pub fn plan(backups: &[Manifest], policy: &Policy, now: chrono::DateTime<chrono::Utc>) -> Plan {
    let mut sorted: Vec<&Manifest> = backups.iter().collect();
    sorted.sort_by(|a, b| b.id.cmp(&a.id)); // newest first
    let mut p = Plan::default();
    if policy.retain_count.is_none() && policy.retain_age.is_none() {
        p.keep = sorted.iter().map(|m| m.id.clone()).collect();
        return p;
    }
    for (i, m) in sorted.iter().enumerate() {
        let beyond_count = policy.retain_count.is_none_or(|c| i >= c as usize);
        let too_old = match (policy.retain_age, m.created()) {
            (Some(age), Some(created)) => (now - created).to_std().is_ok_and(|d| d > age),
            (Some(_), None) => false,
            (None, _) => true,
        };
        if i > 0 && beyond_count && too_old {
            p.remove.push(m.id.clone());
        } else {
            p.keep.push(m.id.clone());
        }
    }
    p.wal_below = sorted
        .iter()
        .filter(|m| p.keep.contains(&m.id))
        .filter_map(|m| manifest::segment_position(&m.start_wal).map(str::to_owned))
        .min();
    p
}

/// What a prune did (or would do with `dry_run`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PruneReport {
    pub plan: Plan,
    pub wal_removed: Vec<String>,
    /// Backups without a manifest (failed or interrupted) older than [`ORPHAN_AGE`], removed.
    pub orphans_removed: Vec<String>,
    pub dry_run: bool,
}

/// Applies the policy at a destination. Refuses on an immutable destination.
pub async fn prune(dest: &Dest, cluster: &str, policy: &Policy, dry_run: bool) -> Result<PruneReport> {
    if dest.immutable {
        return Err(BackupError::Config(format!(
            "destination {:?} is immutable (write-once): pgdr never deletes there; its retention is the storage's own object-lock policy",
            dest.name
        )));
    }
    let backups = crate::base::list_backups(dest, cluster).await?;
    let p = plan(&backups, policy, chrono::Utc::now());
    let mut report = PruneReport { plan: p.clone(), dry_run, ..Default::default() };
    // Parts of backups that never got a manifest (failed, cancelled) and
    // have not been written to for a long time.
    let listed = dest.list(&manifest::backups_prefix(cluster)).await?;
    let mut by_id: std::collections::BTreeMap<String, (bool, chrono::DateTime<chrono::Utc>, Vec<String>)> =
        Default::default();
    let prefix = manifest::backups_prefix(cluster);
    for l in listed {
        let Some((id, rest)) = l.key.strip_prefix(&prefix).and_then(|r| r.split_once('/')) else { continue };
        let e = by_id.entry(id.to_owned()).or_insert((false, l.modified, Vec::new()));
        e.0 |= rest == "manifest.json";
        e.1 = e.1.max(l.modified);
        e.2.push(l.key.clone());
    }
    let now = chrono::Utc::now();
    for (id, (has_manifest, newest, keys)) in by_id {
        if !has_manifest && (now - newest).to_std().is_ok_and(|d| d > ORPHAN_AGE) {
            if !dry_run {
                for k in &keys {
                    dest.delete(k).await?;
                }
            }
            report.orphans_removed.push(id);
        }
    }
    let Some(wal_below) = p.wal_below.clone() else {
        return Ok(report);
    };
    let wal_candidates: Vec<String> = crate::wal::list(dest, cluster)
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| {
            !n.ends_with(".history") && manifest::segment_position(n).is_some_and(|pos| pos < wal_below.as_str())
        })
        .collect();
    report.wal_removed = wal_candidates.clone();
    if dry_run {
        return Ok(report);
    }
    for id in &p.remove {
        // The manifest first: a half-removed backup is then simply incomplete.
        dest.delete(&manifest::manifest_key(cluster, id)).await?;
        for obj in dest.list(&manifest::backup_prefix(cluster, id)).await? {
            dest.delete(&obj.key).await?;
        }
        tracing::info!(cluster, backup = %id, dest = %dest.name, "pruned backup");
    }
    for name in &wal_candidates {
        dest.delete(&manifest::wal_key(cluster, name)).await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, created: &str, wal: &str) -> Manifest {
        Manifest {
            format: 2,
            id: id.into(),
            cluster: "c".into(),
            seq: 1,
            previous: None,
            source_node: "n".into(),
            from_replica: false,
            created_at: created.into(),
            finished_at: created.into(),
            pg_version: 150000,
            timeline: 1,
            start_lsn: pgdr_model::Lsn(0),
            stop_lsn: pgdr_model::Lsn(0),
            start_wal: wal.into(),
            key_id: "k".into(),
            compression: "zstd".into(),
            compression_level: 3,
            wal_included: true,
            plain_bytes: 0,
            stored_bytes: 0,
            objects: vec![],
            copied_from: None,
            mac: String::new(),
            files: vec![],
        }
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-01-10T00:00:00Z").expect("time").with_timezone(&chrono::Utc)
    }

    #[test]
    fn count_and_age() {
        let all = vec![
            m("20260101", "2026-01-01T00:00:00Z", "000000010000000000000002"),
            m("20260105", "2026-01-05T00:00:00Z", "000000010000000000000005"),
            m("20260109", "2026-01-09T00:00:00Z", "000000010000000000000009"),
        ];
        let by_count = plan(&all, &Policy { retain_count: Some(2), retain_age: None }, now());
        assert_eq!(by_count.remove, vec!["20260101"]);
        assert_eq!(by_count.wal_below.as_deref(), Some("0000000000000005"));
        // Both rules: must be beyond the count and too old.
        let both =
            plan(&all, &Policy { retain_count: Some(1), retain_age: Some(Duration::from_secs(6 * 86400)) }, now());
        assert_eq!(both.remove, vec!["20260101"]);
        let by_age = plan(&all, &Policy { retain_count: None, retain_age: Some(Duration::from_secs(86400)) }, now());
        // Everything is older than a day, but the newest always stays.
        assert_eq!(by_age.keep, vec!["20260109"]);
        assert_eq!(by_age.remove, vec!["20260105", "20260101"]);
        let none = plan(&all, &Policy::default(), now());
        assert!(none.remove.is_empty());
        let zero = plan(&all, &Policy { retain_count: Some(0), retain_age: None }, now());
        assert_eq!(zero.keep, vec!["20260109"], "the newest backup is never removed");
    }
}
