//! Outage detection, without IO: each vantage point reports probe outcomes,
//! and an outage is declared when `failure_threshold` consecutive failures are
//! agreed by a quorum of vantage points.
//!
//! A refused connection (the host answers, nothing listens) or an error from
//! the server counts the moment it is reported; a probe that hangs counts only
//! once its deadline has passed ([`Detector::probe_started`] +
//! [`Detector::tick`]). One success resets a vantage point's count, so a blip
//! shorter than the detection window never declares an outage.
//!
//! Vantage points in other regions (the agents that probe the primary from
//! there, [`Detector::with_independent`]) are *independent*: while at least
//! one of them can be asked, an outage also needs one of them to agree, so
//! the controller's own readings (its probe and the primary agent's status,
//! which share the controller's network path to the primary's host) never
//! make an outage alone. An independent vantage point that cannot be asked
//! ([`Detector::absent`]) neither agrees nor blocks.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio::time::{Duration, Instant};

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "detail")]
pub enum ProbeOutcome {
    /// The heartbeat write committed.
    Ok,
    /// The connection was refused: the host answers, PostgreSQL does not.
    Refused,
    /// No answer before the probe's deadline.
    TimedOut,
    /// The server answered with an error (read-only, shutting down...), or
    /// the transport failed in another way.
    Failed(String),
}

impl ProbeOutcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, ProbeOutcome::Ok)
    }

    /// A metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeOutcome::Ok => "ok",
            ProbeOutcome::Refused => "refused",
            ProbeOutcome::TimedOut => "timeout",
            ProbeOutcome::Failed(_) => "error",
        }
    }
}

/// What one vantage point has seen lately.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VantageState {
    /// Consecutive failed probes (0 after a success).
    pub consecutive_failures: u32,
    /// When the current run of failures began.
    #[serde(skip)]
    pub failing_since: Option<Instant>,
    #[serde(skip)]
    pub last_ok: Option<Instant>,
    pub last_outcome: Option<ProbeOutcome>,
    /// Its last report was "cannot be asked" (its agent did not answer).
    pub absent: bool,
    /// Deadline of a probe that has started and not reported yet.
    #[serde(skip)]
    pending_deadline: Option<Instant>,
}

/// The detector's judgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fewer than a quorum of vantage points see any failure.
    Healthy,
    /// Some vantage points see failures, not yet enough to act.
    Suspect { agreeing: usize, needed: usize },
    /// A quorum of vantage points agrees, but none of the independent ones
    /// (in other regions) that can be asked: the primary may be cut off
    /// from the controller only. Nothing is declared.
    Unconfirmed { agreeing: Vec<String> },
    /// A quorum agrees: the primary is out. `since` is when the earliest
    /// agreeing vantage point's run of failures began.
    Outage { since: Instant, agreeing: Vec<String> },
}

impl Verdict {
    pub fn is_outage(&self) -> bool {
        matches!(self, Verdict::Outage { .. })
    }
}

/// Consecutive-failure counting per vantage point and quorum agreement.
#[derive(Debug, Clone)]
pub struct Detector {
    threshold: u32,
    quorum: usize,
    vantages: BTreeMap<String, VantageState>,
    independent: std::collections::BTreeSet<String>,
}

/// The quorum for `n` vantage points: `configured`, or a majority when 0.
pub fn quorum_of(configured: u32, n: usize) -> usize {
    if configured == 0 { n / 2 + 1 } else { (configured as usize).min(n.max(1)) }
}

impl Detector {
    /// `threshold` consecutive failures per vantage point; `quorum` as in
    /// `timing.probe_quorum` (0 = majority of `vantages`).
    pub fn new(threshold: u32, quorum: u32, vantages: impl IntoIterator<Item = String>) -> Detector {
        let vantages: BTreeMap<String, VantageState> =
            vantages.into_iter().map(|v| (v, VantageState::default())).collect();
        let quorum = quorum_of(quorum, vantages.len());
        Detector { threshold: threshold.max(1), quorum, vantages, independent: Default::default() }
    }

    /// Adds vantage points in other regions (counted in the quorum, which is
    /// recomputed over every vantage point); while one of them can be asked,
    /// an outage needs one of them among the agreeing.
    pub fn with_independent(mut self, quorum: u32, vantages: impl IntoIterator<Item = String>) -> Detector {
        for v in vantages {
            self.vantages.insert(v.clone(), VantageState { absent: true, ..VantageState::default() });
            self.independent.insert(v);
        }
        self.quorum = quorum_of(quorum, self.vantages.len());
        self
    }

    pub fn quorum(&self) -> usize {
        self.quorum
    }

    pub fn vantages(&self) -> &BTreeMap<String, VantageState> {
        &self.vantages
    }

    /// A probe from `vantage` has started and must report by `deadline`.
    pub fn probe_started(&mut self, vantage: &str, deadline: Instant) {
        if let Some(v) = self.vantages.get_mut(vantage) {
            v.pending_deadline = Some(deadline);
        }
    }

    /// Counts every started probe whose deadline has passed as a timeout.
    pub fn tick(&mut self, now: Instant) {
        let overdue: Vec<String> = self
            .vantages
            .iter()
            .filter(|(_, v)| v.pending_deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in overdue {
            let deadline = self.vantages.get(&k).and_then(|v| v.pending_deadline).unwrap_or(now);
            self.record(&k, ProbeOutcome::TimedOut, deadline);
        }
    }

    /// Records what a probe from `vantage` saw at `at`. A `TimedOut` is
    /// expected to be reported at (or after) the probe's deadline.
    pub fn record(&mut self, vantage: &str, outcome: ProbeOutcome, at: Instant) {
        let Some(v) = self.vantages.get_mut(vantage) else { return };
        v.pending_deadline = None;
        v.absent = false;
        if outcome.is_ok() {
            v.consecutive_failures = 0;
            v.failing_since = None;
            v.last_ok = Some(at);
        } else {
            if v.consecutive_failures == 0 {
                v.failing_since = Some(at);
            }
            v.consecutive_failures = v.consecutive_failures.saturating_add(1);
        }
        v.last_outcome = Some(outcome);
    }

    /// `vantage` could not be asked (its agent did not answer): it is no
    /// evidence either way, so its count restarts and it neither agrees nor
    /// blocks an outage.
    pub fn absent(&mut self, vantage: &str) {
        if let Some(v) = self.vantages.get_mut(vantage) {
            *v = VantageState { absent: true, ..VantageState::default() };
        }
    }

    /// Forgets every count (after a role change the new primary starts clean).
    pub fn reset(&mut self) {
        for (k, v) in self.vantages.iter_mut() {
            *v = VantageState { absent: self.independent.contains(k), ..VantageState::default() };
        }
    }

    pub fn verdict(&self) -> Verdict {
        let failing: Vec<(&String, &VantageState)> =
            self.vantages.iter().filter(|(_, v)| v.consecutive_failures >= self.threshold).collect();
        if failing.len() >= self.quorum && !failing.is_empty() {
            let askable = self.independent.iter().any(|k| self.vantages.get(k).is_some_and(|v| !v.absent));
            let confirmed = failing.iter().any(|(k, _)| self.independent.contains(*k));
            if askable && !confirmed {
                return Verdict::Unconfirmed { agreeing: failing.iter().map(|(k, _)| (*k).clone()).collect() };
            }
            let since = failing.iter().filter_map(|(_, v)| v.failing_since).min();
            if let Some(since) = since {
                return Verdict::Outage { since, agreeing: failing.iter().map(|(k, _)| (*k).clone()).collect() };
            }
        }
        let any = self.vantages.values().filter(|v| v.consecutive_failures > 0).count();
        if any == 0 { Verdict::Healthy } else { Verdict::Suspect { agreeing: failing.len(), needed: self.quorum } }
    }
}

/// Time from the first failed probe to a declared outage, at worst, for a
/// failure that makes every probe hang: `threshold` probes, each started one
/// interval after the previous, the last one counting at its deadline.
pub fn worst_detection(interval: Duration, timeout: Duration, threshold: u32) -> Duration {
    interval * threshold.saturating_sub(1) + timeout + interval
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(threshold: u32, quorum: u32, n: usize) -> Detector {
        Detector::new(threshold, quorum, (0..n).map(|i| format!("v{i}")))
    }

    #[tokio::test(start_paused = true)]
    async fn refused_counts_at_once_and_outage_needs_threshold() {
        let mut d = det(3, 1, 1);
        let t0 = Instant::now();
        d.record("v0", ProbeOutcome::Refused, t0);
        assert_eq!(d.verdict(), Verdict::Suspect { agreeing: 0, needed: 1 });
        tokio::time::advance(Duration::from_secs(1)).await;
        d.record("v0", ProbeOutcome::Refused, Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        d.record("v0", ProbeOutcome::Refused, Instant::now());
        assert_eq!(d.verdict(), Verdict::Outage { since: t0, agreeing: vec!["v0".into()] });
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_counts_only_after_deadline() {
        let mut d = det(1, 1, 1);
        let deadline = Instant::now() + Duration::from_millis(800);
        d.probe_started("v0", deadline);
        tokio::time::advance(Duration::from_millis(799)).await;
        d.tick(Instant::now());
        assert_eq!(d.verdict(), Verdict::Healthy, "a hanging probe is not a failure before its deadline");
        tokio::time::advance(Duration::from_millis(1)).await;
        d.tick(Instant::now());
        assert!(d.verdict().is_outage());
        assert_eq!(d.vantages()["v0"].last_outcome, Some(ProbeOutcome::TimedOut));
    }

    #[tokio::test(start_paused = true)]
    async fn a_blip_shorter_than_the_window_never_triggers() {
        let mut d = det(3, 0, 1);
        for round in 0..50 {
            // Two failures, then a success: never three in a row.
            for i in 0..3 {
                tokio::time::advance(Duration::from_secs(1)).await;
                let o = if i < 2 { ProbeOutcome::TimedOut } else { ProbeOutcome::Ok };
                d.record("v0", o, Instant::now());
                assert!(!d.verdict().is_outage(), "round {round} probe {i}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_observer_alone_does_not_make_a_quorum() {
        let mut d = det(2, 0, 3);
        assert_eq!(d.quorum(), 2);
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(1)).await;
            d.record("v0", ProbeOutcome::TimedOut, Instant::now());
            d.record("v1", ProbeOutcome::Ok, Instant::now());
            d.record("v2", ProbeOutcome::Ok, Instant::now());
        }
        assert_eq!(d.verdict(), Verdict::Suspect { agreeing: 1, needed: 2 });
        tokio::time::advance(Duration::from_secs(1)).await;
        d.record("v1", ProbeOutcome::Refused, Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        d.record("v1", ProbeOutcome::Refused, Instant::now());
        match d.verdict() {
            Verdict::Outage { agreeing, .. } => assert_eq!(agreeing, vec!["v0".to_owned(), "v1".to_owned()]),
            other => panic!("expected an outage, got {other:?}"),
        }
        d.reset();
        assert_eq!(d.verdict(), Verdict::Healthy);
    }

    fn regional() -> Detector {
        Detector::new(2, 0, ["controller".to_owned(), "primary-agent".to_owned()])
            .with_independent(0, ["agent:west".to_owned()])
    }

    #[tokio::test(start_paused = true)]
    async fn the_controller_alone_cannot_declare_while_another_region_sees_the_primary() {
        let mut d = regional();
        assert_eq!(d.quorum(), 2);
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(1)).await;
            let now = Instant::now();
            d.record("controller", ProbeOutcome::TimedOut, now);
            d.record("primary-agent", ProbeOutcome::TimedOut, now);
            d.record("agent:west", ProbeOutcome::Ok, now);
            assert!(matches!(d.verdict(), Verdict::Unconfirmed { .. } | Verdict::Suspect { .. }), "{:?}", d.verdict());
        }
        // The other region sees it too: an outage.
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(1)).await;
            let now = Instant::now();
            d.record("controller", ProbeOutcome::TimedOut, now);
            d.record("primary-agent", ProbeOutcome::TimedOut, now);
            d.record("agent:west", ProbeOutcome::Refused, now);
        }
        match d.verdict() {
            Verdict::Outage { agreeing, .. } => assert!(agreeing.contains(&"agent:west".to_owned())),
            other => panic!("expected an outage, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_remote_blip_never_triggers_and_an_absent_observer_neither_agrees_nor_blocks() {
        let mut d = regional();
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(1)).await;
            let now = Instant::now();
            d.record("controller", ProbeOutcome::Ok, now);
            d.record("primary-agent", ProbeOutcome::Ok, now);
            d.record("agent:west", ProbeOutcome::TimedOut, now);
            assert!(!d.verdict().is_outage());
        }
        // The west agent cannot be asked: the controller's readings decide.
        d.absent("agent:west");
        assert_eq!(d.vantages()["agent:west"].consecutive_failures, 0);
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(1)).await;
            let now = Instant::now();
            d.record("controller", ProbeOutcome::Refused, now);
            d.record("primary-agent", ProbeOutcome::Failed("down".into()), now);
            d.absent("agent:west");
        }
        assert!(d.verdict().is_outage(), "{:?}", d.verdict());
        d.reset();
        assert!(d.vantages()["agent:west"].absent);
    }

    #[test]
    fn quorums() {
        assert_eq!(quorum_of(0, 1), 1);
        assert_eq!(quorum_of(0, 2), 2);
        assert_eq!(quorum_of(0, 3), 2);
        assert_eq!(quorum_of(5, 3), 3);
        assert_eq!(quorum_of(1, 3), 1);
    }
}
