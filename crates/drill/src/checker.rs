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

/// How the headline RTO is measured, printed in every report.
pub const RTO_DEFINITION: &str = "RTO is the time writes were unavailable to the drill's clients: from the fault \
(or, when commits were still acknowledged after it, the last of those) to the first commit acknowledged by a \
server instance other than the one that failed (another node, or the same node restarted). A write in flight at \
the fault and acknowledged just after it by the failing server is not recovery. For a planned switchover or \
failback: the longest time no write was acknowledged between the request and the end of the workflow. \
'Throughput back' is when commits reach 90% of the rate of the 5 s before the fault.";

/// When writes were unavailable, ms since the workload started.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Outage {
    /// The fault, or the last acknowledgement by the failing instance after it.
    pub from_ms: f64,
    /// The first acknowledgement by another instance.
    pub until_ms: f64,
}

impl Outage {
    pub fn seconds(&self) -> f64 {
        (self.until_ms - self.from_ms).max(0.0) / 1000.0
    }
}

/// The outage a fault at `fault_ms` caused, by the rule of
/// [`RTO_DEFINITION`]; `None` while writes have not come back.
///
/// The failing instance is the one that acknowledged the last commit at or
/// before the fault. When no acknowledgement names its instance (an old
/// record), a write counts as recovery when it was sent after the first
/// write error that followed the fault.
pub fn writes_unavailable(record: &WorkloadRecord, fault_ms: f64) -> Option<Outage> {
    let failing = record.acks.iter().filter(|a| a.at_ms <= fault_ms).max_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    let known = |i: u32| record.instances.get(i as usize).is_some_and(|s| s != "?");
    let recovery = match failing {
        Some(f) if known(f.instance) => record
            .acks
            .iter()
            .filter(|a| a.at_ms > fault_ms && a.instance != f.instance && known(a.instance))
            .min_by(|a, b| a.at_ms.total_cmp(&b.at_ms)),
        _ => {
            let outage_seen = record
                .write_failures()
                .filter(|f| f.at_ms >= fault_ms)
                .map(|f| f.at_ms)
                .min_by(f64::total_cmp)
                .unwrap_or(fault_ms);
            record.acks.iter().filter(|a| a.sent_ms >= outage_seen).min_by(|a, b| a.at_ms.total_cmp(&b.at_ms))
        }
    }?;
    // Commits the failing instance still acknowledged after the fault
    // (in flight, or on backends that had not noticed yet).
    let from = match failing {
        Some(f) if known(f.instance) => record
            .acks
            .iter()
            .filter(|a| a.instance == f.instance && a.at_ms > fault_ms && a.at_ms < recovery.at_ms)
            .map(|a| a.at_ms)
            .fold(fault_ms, f64::max),
        _ => fault_ms,
    };
    Some(Outage { from_ms: from, until_ms: recovery.at_ms })
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
            r.acks.push(Ack {
                id: 100 + i,
                writer: 0,
                instance: 0,
                sent_ms: i as f64 * 100.0,
                at_ms: i as f64 * 100.0 + 5.0,
            });
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
        r2.acks.push(Ack { id: 110, writer: 0, instance: 0, sent_ms: 720.0, at_ms: 1705.0 });
        assert_eq!(rto_pause(&r2, 250.0, 800.0), Some(1.0));
        assert_eq!(rto_pause(&r2, 2000.0, 3000.0), None);
    }

    #[test]
    fn without_instances_only_writes_sent_after_the_outage_was_visible_count() {
        let mut r = record();
        // No error after the fault: the first write sent after it.
        let mut r2 = r.clone();
        r2.failures.clear();
        assert_eq!(writes_unavailable(&r2, 250.0).map(|o| o.seconds()), Some((305.0 - 250.0) / 1000.0));
        // Errors at 810 ms: the acks before do not count as recovery.
        assert_eq!(writes_unavailable(&r, 250.0), None);
        r.acks.push(Ack { id: 110, writer: 0, instance: 0, sent_ms: 950.0, at_ms: 960.0 });
        assert_eq!(writes_unavailable(&r, 250.0).map(|o| o.seconds()), Some((960.0 - 250.0) / 1000.0));
        assert_eq!(writes_unavailable(&r, 5000.0), None);
    }

    /// Issue 14 item 7: a write in flight at the SIGKILL, acknowledged 3 ms
    /// later by the killed server, made the RTO read 0.00 s.
    #[test]
    fn an_acknowledgement_by_the_failing_instance_is_not_recovery() {
        let mut r = WorkloadRecord {
            duration_ms: 5000.0,
            instances: vec!["5432@a".into(), "5433@b".into()],
            ..Default::default()
        };
        for i in 0..10 {
            r.acks.push(Ack {
                id: i,
                writer: 0,
                instance: 0,
                sent_ms: i as f64 * 100.0,
                at_ms: i as f64 * 100.0 + 2.0,
            });
        }
        // Fault at 1000 ms; in flight, acknowledged 3 ms later by the same server.
        r.acks.push(Ack { id: 10, writer: 1, instance: 0, sent_ms: 1000.5, at_ms: 1003.0 });
        assert_eq!(writes_unavailable(&r, 1000.0), None, "not recovered yet");
        // The new primary takes writes 2.5 s after the fault.
        r.acks.push(Ack { id: 11, writer: 0, instance: 1, sent_ms: 1200.0, at_ms: 3500.0 });
        let o = writes_unavailable(&r, 1000.0).expect("recovered");
        assert_eq!((o.from_ms, o.until_ms), (1003.0, 3500.0));
        assert!((o.seconds() - 2.497).abs() < 1e-9, "{}", o.seconds());
        // Acknowledgements before the fault only: the outage starts at the fault.
        r.acks.retain(|a| a.id != 10);
        assert_eq!(writes_unavailable(&r, 1000.0).map(|o| o.from_ms), Some(1000.0));
    }
}
