//! After a drill: which acknowledged commits the (new) primary has, and what
//! the clients saw.
//!
//! A commit that was acknowledged and is missing is always reported, with its
//! id and acknowledgement time; nothing here filters or rounds it away. Writes
//! whose outcome was unknown (connection lost, timeout) are counted apart:
//! present or not, neither is a loss. A write that failed with a server error
//! and is present anyway is reported too (the client was told it failed).

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::DrillError;
use crate::timeline::{BUCKET_MS, Bucket};
use crate::workload::WorkloadRecord;

/// One acknowledged commit the primary does not have.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LostCommit {
    pub id: i64,
    pub writer: u32,
    /// When it was acknowledged, ms since the workload started.
    pub acknowledged_ms: f64,
}

/// The ledger compared with what the clients were told.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LossCheck {
    pub acknowledged_commits: u64,
    /// Acknowledged and missing, oldest first.
    pub lost: Vec<LostCommit>,
    /// Seconds between the first and last lost acknowledgement.
    pub lost_span_seconds: Option<f64>,
    /// The measured RPO: from the oldest lost acknowledgement to the fault
    /// (or to the newest lost one, if later or without a fault).
    pub rpo_seconds: f64,
    /// Writes whose outcome the client could not know.
    pub unknown_outcome: u64,
    /// Of those, how many did commit.
    pub unknown_committed: u64,
    /// Writes the server answered with an error that are present anyway.
    pub failed_but_present: Vec<i64>,
}

impl LossCheck {
    pub fn lost_commits(&self) -> u64 {
        self.lost.len() as u64
    }
}

/// Reads every id the workload could have written from `client` (the
/// primary after the drill) and compares.
pub async fn check_ledger(
    client: &tokio_postgres::Client,
    record: &WorkloadRecord,
    fault_ms: Option<f64>,
) -> Result<LossCheck, DrillError> {
    let lo = record.first_id;
    let hi = record.first_id + record.ids_used.max(0);
    let rows = client
        .query("SELECT id FROM pgdr_drill.ledger WHERE id >= $1 AND id < $2", &[&lo, &hi])
        .await
        .map_err(|source| DrillError::Query { what: "the ledger on the primary".into(), source })?;
    let present: HashSet<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
    Ok(compare(record, &present, fault_ms))
}

/// The comparison itself, without IO.
pub fn compare(record: &WorkloadRecord, present: &HashSet<i64>, fault_ms: Option<f64>) -> LossCheck {
    let mut lost: Vec<LostCommit> = record
        .acks
        .iter()
        .filter(|a| !present.contains(&a.id))
        .map(|a| LostCommit { id: a.id, writer: a.writer, acknowledged_ms: a.at_ms })
        .collect();
    lost.sort_by(|a, b| a.acknowledged_ms.total_cmp(&b.acknowledged_ms));
    let (span, rpo) = match (lost.first(), lost.last()) {
        (Some(first), Some(last)) => {
            let end = fault_ms.map_or(last.acknowledged_ms, |f| f.max(last.acknowledged_ms));
            (Some((last.acknowledged_ms - first.acknowledged_ms) / 1000.0), (end - first.acknowledged_ms) / 1000.0)
        }
        _ => (None, 0.0),
    };
    let mut unknown = 0;
    let mut unknown_committed = 0;
    let mut failed_but_present = Vec::new();
    for f in record.write_failures() {
        let Some(id) = f.id else { continue };
        if f.kind.outcome_unknown() {
            unknown += 1;
            if present.contains(&id) {
                unknown_committed += 1;
            }
        } else if present.contains(&id) {
            failed_but_present.push(id);
        }
    }
    LossCheck {
        acknowledged_commits: record.acks.len() as u64,
        lost,
        lost_span_seconds: span,
        rpo_seconds: rpo,
        unknown_outcome: unknown,
        unknown_committed,
        failed_but_present,
    }
}

/// Adds `other` (a second workload started `offset_ms` after the first) to
/// `base`, in `base`'s time base; span and RPO are computed again.
pub fn merge(mut base: LossCheck, other: LossCheck, offset_ms: f64, fault_ms: f64) -> LossCheck {
    base.acknowledged_commits += other.acknowledged_commits;
    base.lost
        .extend(other.lost.into_iter().map(|l| LostCommit { acknowledged_ms: l.acknowledged_ms + offset_ms, ..l }));
    base.lost.sort_by(|a, b| a.acknowledged_ms.total_cmp(&b.acknowledged_ms));
    base.unknown_outcome += other.unknown_outcome;
    base.unknown_committed += other.unknown_committed;
    base.failed_but_present.extend(other.failed_but_present);
    match (base.lost.first(), base.lost.last()) {
        (Some(first), Some(last)) => {
            base.lost_span_seconds = Some((last.acknowledged_ms - first.acknowledged_ms) / 1000.0);
            base.rpo_seconds = (fault_ms.max(last.acknowledged_ms) - first.acknowledged_ms) / 1000.0;
        }
        _ => {
            base.lost_span_seconds = None;
            base.rpo_seconds = 0.0;
        }
    }
    base
}

/// Client-visible errors by kind label (writes and reads apart).
pub fn errors_by_kind(record: &WorkloadRecord) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let mut writes = BTreeMap::new();
    let mut reads = BTreeMap::new();
    for f in &record.failures {
        let map = if f.read { &mut reads } else { &mut writes };
        *map.entry(f.kind.label()).or_insert(0) += 1;
    }
    (writes, reads)
}

/// Seconds from the fault until writes work again: the acknowledgement of
/// the first write sent after the outage became visible to clients (the first
/// write error after the fault), or, when clients saw no error (a paused
/// switchover), the first write sent after the fault. Writes on connections
/// that outlive the fault for a moment (a killed postmaster's backends run on
/// until they notice) do not count as recovery. `None` when writes never came
/// back.
pub fn rto_first_write(record: &WorkloadRecord, fault_ms: f64) -> Option<f64> {
    let outage_seen = record
        .write_failures()
        .filter(|f| f.at_ms >= fault_ms)
        .map(|f| f.at_ms)
        .min_by(f64::total_cmp)
        .unwrap_or(fault_ms);
    record
        .acks
        .iter()
        .filter(|a| a.sent_ms >= outage_seen)
        .map(|a| a.at_ms)
        .min_by(f64::total_cmp)
        .map(|at| (at - fault_ms) / 1000.0)
}

/// For a planned role change, which clients should not notice: the longest
/// time no write was acknowledged (every writer merged) between `from_ms`
/// (the request) and `until_ms` (the workflow's end), the pause clients saw.
/// `None` when no write was acknowledged after `from_ms`.
pub fn rto_pause(record: &WorkloadRecord, from_ms: f64, until_ms: f64) -> Option<f64> {
    let mut acks: Vec<f64> = record.acks.iter().map(|a| a.at_ms).collect();
    acks.sort_by(f64::total_cmp);
    let mut prev = acks.iter().copied().rfind(|t| *t <= from_ms).unwrap_or(from_ms);
    let mut longest: Option<f64> = None;
    for t in acks.into_iter().filter(|t| *t > from_ms) {
        let gap = t - prev;
        longest = Some(longest.map_or(gap, |l: f64| l.max(gap)));
        if t > until_ms {
            break;
        }
        prev = t;
    }
    longest.map(|ms| ms / 1000.0)
}

/// Seconds from the fault until throughput is back to 90% of what it was in
/// the 5 s before the fault: the start of the first 500 ms window, at or
/// after the first post-fault acknowledgement, whose commits reach 90% of
/// the baseline rate. Returns the baseline (commits/s) too.
pub fn rto_throughput(buckets: &[Bucket], fault_ms: f64, first_ack_ms: Option<f64>) -> (f64, Option<f64>) {
    let before: Vec<&Bucket> =
        buckets.iter().filter(|b| b.t_ms + BUCKET_MS <= fault_ms && b.t_ms >= fault_ms - 5000.0).collect();
    if before.is_empty() {
        return (0.0, None);
    }
    let baseline = before.iter().map(|b| f64::from(b.commits)).sum::<f64>() / before.len() as f64;
    let rate = baseline * 1000.0 / BUCKET_MS;
    if baseline <= 0.0 {
        return (rate, None);
    }
    let start = first_ack_ms.unwrap_or(fault_ms).max(fault_ms);
    const WINDOW: usize = 5;
    for (i, b) in buckets.iter().enumerate() {
        if b.t_ms + BUCKET_MS <= start || i + WINDOW > buckets.len() {
            continue;
        }
        let mean = buckets[i..i + WINDOW].iter().map(|b| f64::from(b.commits)).sum::<f64>() / WINDOW as f64;
        if mean >= 0.9 * baseline {
            return (rate, Some(((b.t_ms.max(start)) - fault_ms) / 1000.0));
        }
    }
    (rate, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Ack, ErrorKind, Failure};

    fn record() -> WorkloadRecord {
        let mut r = WorkloadRecord { duration_ms: 3000.0, first_id: 100, ids_used: 10, ..Default::default() };
        for i in 0..8 {
            r.acks.push(Ack { id: 100 + i, writer: 0, sent_ms: i as f64 * 100.0, at_ms: i as f64 * 100.0 + 5.0 });
        }
        r.failures.push(Failure {
            id: Some(108),
            writer: Some(0),
            read: false,
            kind: ErrorKind::ConnectionLost,
            sent_ms: 800.0,
            at_ms: 810.0,
            message: "gone".into(),
        });
        r.failures.push(Failure {
            id: Some(109),
            writer: Some(0),
            read: false,
            kind: ErrorKind::Sqlstate("57".into()),
            sent_ms: 900.0,
            at_ms: 910.0,
            message: "terminating".into(),
        });
        r
    }

    #[test]
    fn every_missing_ack_is_lost() {
        let r = record();
        let present: HashSet<i64> = [100, 101, 102, 103, 104, 105, 108, 109].into_iter().collect();
        let c = compare(&r, &present, Some(750.0));
        assert_eq!(c.acknowledged_commits, 8);
        assert_eq!(c.lost.iter().map(|l| l.id).collect::<Vec<_>>(), vec![106, 107]);
        assert_eq!(c.lost_span_seconds, Some(0.1));
        assert!((c.rpo_seconds - 0.145).abs() < 1e-9, "{}", c.rpo_seconds);
        assert_eq!((c.unknown_outcome, c.unknown_committed), (1, 1));
        assert_eq!(c.failed_but_present, vec![109]);
    }

    #[test]
    fn nothing_missing_nothing_lost() {
        let r = record();
        let present: HashSet<i64> = (100..110).collect();
        let c = compare(&r, &present, None);
        assert!(c.lost.is_empty());
        assert_eq!(c.rpo_seconds, 0.0);
    }

    #[test]
    fn pause_is_the_longest_gap_between_acks() {
        let r = record();
        // Acks at 5, 105, ..., 705 ms: every gap 100 ms.
        assert_eq!(rto_pause(&r, 250.0, 800.0), Some(0.1));
        let mut r2 = r.clone();
        r2.acks.push(Ack { id: 110, writer: 0, sent_ms: 720.0, at_ms: 1705.0 });
        assert_eq!(rto_pause(&r2, 250.0, 800.0), Some(1.0));
        assert_eq!(rto_pause(&r2, 2000.0, 3000.0), None);
    }

    #[test]
    fn rto_counts_only_writes_sent_after_the_outage_was_visible() {
        let mut r = record();
        // No error after the fault: the first write sent after it.
        let mut r2 = r.clone();
        r2.failures.clear();
        assert_eq!(rto_first_write(&r2, 250.0), Some((305.0 - 250.0) / 1000.0));
        // Errors at 810 ms: the acks before do not count as recovery.
        assert_eq!(rto_first_write(&r, 250.0), None);
        r.acks.push(Ack { id: 110, writer: 0, sent_ms: 950.0, at_ms: 960.0 });
        assert_eq!(rto_first_write(&r, 250.0), Some((960.0 - 250.0) / 1000.0));
        assert_eq!(rto_first_write(&r, 5000.0), None);
    }
}
