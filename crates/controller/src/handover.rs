//! What a leading controller hands over to the next one, without IO: the
//! monitor's last observations of a cluster (the primary's WAL position,
//! each replica's heartbeat lag), written to the store by the leader, read
//! by a controller when it starts leading.
//!
//! A controller that starts leading after the primary's region went dark
//! (its controller with it) has never seen the primary answer: without
//! these, every replica's lag is unknown and counted as past the tier's RPO,
//! so the failover would wait for a person's `--allow-data-loss`. The
//! handed-over lags are aged: a lag measured `age` ago may have grown by
//! `age` since (the primary may have written until it was lost), so the
//! next leader counts `lag + age`. A record older than
//! [`MAX_AGE`] is not used, and neither is one about another primary.

use std::collections::BTreeMap;

use pgdr_model::{Lsn, NodeName};
use serde::{Deserialize, Serialize};

/// How often the leader writes the record of each cluster, at most.
pub const EVERY_MS: u64 = 1_000;
/// Records older than this hand nothing over (a lag aged this much is past
/// any RPO worth checking).
pub const MAX_AGE_MS: u64 = 60_000;

/// The record, as stored (`/pgdr/clusters/{c}/observed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handover {
    /// When it was observed, ms since the Unix epoch (the writer's clock).
    pub at_unix_ms: u64,
    /// The primary it is about.
    pub primary: NodeName,
    pub primary_lsn: Option<Lsn>,
    /// Heartbeat lag per replica, seconds, as measured at `at_unix_ms`.
    pub lag: BTreeMap<NodeName, f64>,
}

/// What the next leader starts from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Seed {
    pub primary_lsn: Option<Lsn>,
    pub lag: BTreeMap<NodeName, f64>,
}

/// The seed a controller taking over at `now_unix_ms` takes from `record`,
/// when the store names `primary` primary; `None` when the record is about
/// another primary, from the future by more than a clock skew allows, or too old.
pub fn seed(record: &Handover, primary: &NodeName, now_unix_ms: u64) -> Option<Seed> {
    if &record.primary != primary {
        return None;
    }
    // A writer's clock ahead of ours: count no age rather than a negative one.
    let age_ms = now_unix_ms.saturating_sub(record.at_unix_ms);
    if age_ms > MAX_AGE_MS {
        return None;
    }
    let age = age_ms as f64 / 1000.0;
    Some(Seed { primary_lsn: record.primary_lsn, lag: record.lag.iter().map(|(n, l)| (n.clone(), l + age)).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Handover {
        Handover {
            at_unix_ms: 10_000,
            primary: NodeName::from("east-1"),
            primary_lsn: Some(Lsn(42)),
            lag: [(NodeName::from("west-1"), 0.2), (NodeName::from("west-2"), 1.0)].into_iter().collect(),
        }
    }

    #[test]
    fn lags_are_aged_by_the_time_since_they_were_seen() {
        let s = seed(&record(), &NodeName::from("east-1"), 13_500).expect("seed");
        assert_eq!(s.primary_lsn, Some(Lsn(42)));
        assert!((s.lag[&NodeName::from("west-1")] - 3.7).abs() < 1e-9, "{s:?}");
        assert!((s.lag[&NodeName::from("west-2")] - 4.5).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn another_primary_or_an_old_record_hands_nothing_over() {
        assert_eq!(seed(&record(), &NodeName::from("west-1"), 11_000), None);
        assert_eq!(seed(&record(), &NodeName::from("east-1"), 10_000 + MAX_AGE_MS + 1), None);
        // A writer clock ahead of ours ages nothing.
        let s = seed(&record(), &NodeName::from("east-1"), 9_000).expect("seed");
        assert!((s.lag[&NodeName::from("west-1")] - 0.2).abs() < 1e-9);
    }
}
