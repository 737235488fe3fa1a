//! The controller's fence gate: a new primary may be promoted only once the
//! old one certainly takes no writes.
//!
//! Either its agent confirmed PostgreSQL is stopped or fenced (the fast
//! path), or the old primary is certainly uncovered: enough agents withdrew
//! their support that it cannot count a majority, and
//!
//! `now ≥ max(last_grant + ttl, withdrawn + 2 × renew) + margin`
//!
//! on the controller's clock, where `last_grant` is the last renewal any
//! request of the old primary could have been granted (re-read at every
//! check: a renewal in flight when the fence began moves it), `withdrawn`
//! when the last needed withdrawal was acknowledged (a support round sent
//! before it covers the old primary for `2 × renew`, see
//! [`crate::lease`]) and `margin` covers clock-rate drift between the two
//! machines (the agent already reserved `renew` for the fence itself). A
//! controller that does not know the last grant (it has just started)
//! counts from its own start, which is never earlier.

use crate::At;
use crate::support::majority;

/// The settings the gate needs, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FenceTiming {
    pub ttl: u64,
    pub renew: u64,
    pub margin: u64,
}

impl FenceTiming {
    /// How long after the last withdrawal a support round may still cover
    /// the old primary (the agent's `support_hold`).
    pub fn support_hold(&self) -> u64 {
        2 * self.renew
    }
}

/// What the old primary's agent said.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AgentFence {
    Confirmed(String),
    NotConfirmed(String),
}

/// Why promoting is safe.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Evidence {
    AgentConfirmed(String),
    /// Uncovered since this instant.
    LeaseExpired {
        since: At,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    Fenced(Evidence),
    /// Not yet; decide again at this instant.
    WaitUntil(At),
    /// Too few withdrawals: the old primary may still count a majority.
    NoQuorum,
}

/// Agents besides the old primary's that must withdraw so that it cannot
/// count a majority of `n`.
pub fn withdrawals_needed(n: usize) -> usize {
    (n + 1).saturating_sub(majority(n)).max(1)
}

/// What the gate knows, fed by the fence step at every iteration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FenceGate {
    pub timing: FenceTiming,
    /// Agents of the cluster, the old primary's included.
    pub agents: usize,
    pub agent: Option<AgentFence>,
    /// Withdrawals acknowledged so far.
    pub withdrawals: usize,
    /// When the last needed withdrawal was acknowledged.
    pub withdrawn_at: Option<At>,
    /// The last grant (or the controller's start): re-read every check.
    pub last_grant: At,
}

impl FenceGate {
    pub fn new(timing: FenceTiming, agents: usize, last_grant: At) -> FenceGate {
        FenceGate { timing, agents, agent: None, withdrawals: 0, withdrawn_at: None, last_grant }
    }

    /// One more agent acknowledged its withdrawal at `now`.
    pub fn withdrawn(&mut self, now: At) {
        self.withdrawals += 1;
        if self.withdrawals >= withdrawals_needed(self.agents) && self.withdrawn_at.is_none() {
            self.withdrawn_at = Some(now);
        }
    }

    /// The last grant as the lease book says now (never moves back).
    pub fn grant_seen(&mut self, at: At) {
        self.last_grant = self.last_grant.max(at);
    }

    /// When the old primary is certainly uncovered (once enough withdrew).
    pub fn expiry(&self) -> Option<At> {
        let t = self.timing;
        let w = self.withdrawn_at?;
        Some(self.last_grant.after(t.ttl).max(w.after(t.support_hold())).after(t.margin))
    }

    pub fn decide(&self, now: At) -> Decision {
        if let Some(AgentFence::Confirmed(how)) = &self.agent {
            return Decision::Fenced(Evidence::AgentConfirmed(how.clone()));
        }
        match self.expiry() {
            None => Decision::NoQuorum,
            Some(e) if now >= e => Decision::Fenced(Evidence::LeaseExpired { since: e }),
            Some(e) => Decision::WaitUntil(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: FenceTiming = FenceTiming { ttl: 6000, renew: 1000, margin: 2000 };

    #[test]
    fn agent_confirmation_is_the_fast_path() {
        let mut g = FenceGate::new(T, 3, At(0));
        g.agent = Some(AgentFence::Confirmed("stopped".into()));
        assert_eq!(g.decide(At(0)), Decision::Fenced(Evidence::AgentConfirmed("stopped".into())));
    }

    #[test]
    fn silent_primary_waits_for_the_cover_to_end() {
        let mut g = FenceGate::new(T, 3, At(0));
        assert_eq!(g.decide(At(60_000)), Decision::NoQuorum);
        g.withdrawn(At(100));
        assert_eq!(g.decide(At(100)), Decision::NoQuorum);
        g.withdrawn(At(200));
        assert_eq!(g.decide(At(7000)), Decision::WaitUntil(At(8000)));
        // A renewal granted while the step ran moves the expiry.
        g.grant_seen(At(500));
        assert_eq!(g.decide(At(8000)), Decision::WaitUntil(At(8500)));
        assert!(matches!(g.decide(At(8500)), Decision::Fenced(Evidence::LeaseExpired { .. })));
        // A late withdrawal: its support hold decides.
        let mut g = FenceGate::new(T, 3, At(0));
        g.withdrawn(At(10_000));
        g.withdrawn(At(10_000));
        assert_eq!(g.decide(At(10_000)), Decision::WaitUntil(At(14_000)));
    }

    #[test]
    fn withdrawals() {
        assert_eq!(withdrawals_needed(3), 2);
        assert_eq!(withdrawals_needed(2), 1);
        assert_eq!(withdrawals_needed(4), 2);
        assert_eq!(withdrawals_needed(5), 3);
    }
}
