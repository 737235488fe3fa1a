//! The fencing rule, without IO: a new primary may be promoted only once the
//! old one certainly takes no writes.
//!
//! Either its agent answered and confirmed PostgreSQL is stopped or fenced
//! (the fast path, when only the postmaster died), or its lease has certainly
//! expired: `lease_ttl + lease_margin` since the last renewal this controller
//! granted. A controller that does not know when the last renewal was (it has
//! just started) counts from its own start, which is never earlier than the
//! real last renewal.
//!
//! An agent whose lease lapsed keeps its primary writable only while a
//! majority of its cluster's agents (itself included) still support it, so a
//! control-plane outage alone never demotes a healthy primary. Before relying
//! on the lease, the controller therefore asks every agent it reaches to
//! withdraw its support; the lease path is open only once enough agents
//! withdrew that the old primary cannot assemble a majority, and two renewal
//! intervals (the longest a support round sent before the withdrawal
//! covers it) plus the margin have passed since. The rule itself is
//! [`pgdr_decide::fence`]'s; this module adapts it to tokio's clock.

use serde::Serialize;
use tokio::time::{Duration, Instant};

/// What the old primary's agent said when asked to fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentFence {
    /// PostgreSQL is stopped, or read-only with client backends terminated.
    Confirmed(String),
    /// The agent did not answer, or could not fence.
    NotConfirmed(String),
}

/// Why promoting is safe now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "by", content = "detail")]
pub enum FenceEvidence {
    AgentConfirmed(String),
    LeaseExpired(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceDecision {
    Fenced(FenceEvidence),
    /// Not yet safe; ask again at this instant.
    WaitUntil(Instant),
    /// Not enough agents withdrew their support: the old primary may still
    /// count a majority and keep writing, so the lease proves nothing.
    NoQuorum,
}

/// When the old primary's lease has certainly expired.
pub fn lease_expiry(last_grant: Instant, ttl: Duration, margin: Duration) -> Instant {
    last_grant + ttl + margin
}

/// A majority of `n` agents.
pub fn majority(n: usize) -> usize {
    pgdr_decide::support::majority(n)
}

/// Agents (besides the old primary's) that must withdraw their support so
/// that the old primary cannot count a majority of `n` agents.
pub fn withdrawals_needed(n: usize) -> usize {
    pgdr_decide::fence::withdrawals_needed(n)
}

/// What the controller knows about the old primary's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseView {
    /// The last renewal this controller granted the old primary (or was
    /// granting when the fence began), or the controller's start when it
    /// has granted none since it started. Re-read at every check.
    pub last_grant: Instant,
    /// When the last needed agent acknowledged withdrawing its support, if
    /// enough have (see [`withdrawals_needed`]).
    pub support_withdrawn_at: Option<Instant>,
    pub ttl: Duration,
    pub renew: Duration,
    pub margin: Duration,
}

/// Decides whether the old primary is fenced: the pure gate of
/// [`pgdr_decide::fence::FenceGate`], on this process's clock.
pub fn decide(agent: &AgentFence, lease: &LeaseView, now: Instant) -> FenceDecision {
    use pgdr_decide::At;
    use pgdr_decide::fence::{Decision, Evidence, FenceGate, FenceTiming};
    let origin = lease.support_withdrawn_at.map_or(lease.last_grant, |w| w.min(lease.last_grant)).min(now);
    let at = |i: Instant| At(i.saturating_duration_since(origin).as_millis() as u64);
    let ms = |d: Duration| d.as_millis() as u64;
    let timing = FenceTiming { ttl: ms(lease.ttl), renew: ms(lease.renew), margin: ms(lease.margin) };
    let mut gate = FenceGate::new(timing, 0, at(lease.last_grant));
    gate.withdrawn_at = lease.support_withdrawn_at.map(at);
    if let AgentFence::Confirmed(how) = agent {
        gate.agent = Some(pgdr_decide::fence::AgentFence::Confirmed(how.clone()));
    }
    match gate.decide(at(now)) {
        Decision::Fenced(Evidence::AgentConfirmed(how)) => FenceDecision::Fenced(FenceEvidence::AgentConfirmed(how)),
        Decision::Fenced(Evidence::LeaseExpired { .. }) => FenceDecision::Fenced(FenceEvidence::LeaseExpired(format!(
            "no renewal for {:.1}s (lease {} + margin {}) and support withdrawn {:.1}s ago (hold {} + margin)",
            (now - lease.last_grant).as_secs_f64(),
            pgdr_model::format_duration(lease.ttl),
            pgdr_model::format_duration(lease.margin),
            lease.support_withdrawn_at.map(|w| (now - w).as_secs_f64()).unwrap_or(0.0),
            pgdr_model::format_duration(lease.renew * 2),
        ))),
        Decision::WaitUntil(t) => FenceDecision::WaitUntil(origin + Duration::from_millis(t.0)),
        Decision::NoQuorum => FenceDecision::NoQuorum,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(granted: Instant, withdrawn: Option<Instant>) -> LeaseView {
        LeaseView {
            last_grant: granted,
            support_withdrawn_at: withdrawn,
            ttl: Duration::from_secs(6),
            renew: Duration::from_secs(1),
            margin: Duration::from_secs(2),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn agent_confirmation_is_the_fast_path() {
        let now = Instant::now();
        let d = decide(&AgentFence::Confirmed("stopped".into()), &view(now, None), now);
        assert_eq!(d, FenceDecision::Fenced(FenceEvidence::AgentConfirmed("stopped".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_primary_waits_for_lease_plus_margin() {
        let granted = Instant::now();
        let silent = AgentFence::NotConfirmed("timed out".into());
        let v = view(granted, Some(granted));
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(decide(&silent, &v, Instant::now()), FenceDecision::WaitUntil(granted + Duration::from_secs(8)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(decide(&silent, &v, Instant::now()), FenceDecision::Fenced(FenceEvidence::LeaseExpired(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn late_withdrawal_extends_the_wait_and_none_blocks() {
        let granted = Instant::now();
        let silent = AgentFence::NotConfirmed("timed out".into());
        assert_eq!(decide(&silent, &view(granted, None), granted + Duration::from_secs(60)), FenceDecision::NoQuorum);
        let w = granted + Duration::from_secs(10);
        assert_eq!(decide(&silent, &view(granted, Some(w)), w), FenceDecision::WaitUntil(w + Duration::from_secs(4)));
    }

    #[test]
    fn withdrawals() {
        assert_eq!(withdrawals_needed(3), 2);
        assert_eq!(withdrawals_needed(2), 1);
        assert_eq!(withdrawals_needed(4), 2);
        assert_eq!(withdrawals_needed(5), 3);
    }
}
