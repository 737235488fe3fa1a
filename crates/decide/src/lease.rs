//! The agent's side of the primary lease: when its PostgreSQL must stop
//! taking writes.
//!
//! While PostgreSQL is a writable primary the agent renews a lease through
//! the controller every `renew`. A renewal sent at `s` and granted holds the
//! lease until `s + ttl` (counted from the *send*, which is before the
//! controller's grant). When renewals stop being granted the agent asks its
//! peers for support every `renew / 2`; a round sent at `t` in which a
//! majority of the agents (itself included) answered yes within
//! `renew / 4` holds until `t + 2 × renew`. The agent is *covered* until the
//! later of the two.
//!
//! The self-fence is driven by a deadline, not by the RPCs: at
//! `covered_until - fence_lead` (`fence_lead = renew`, the bound the agent
//! puts on the fence itself: an immediate stop, then SIGKILL of the
//! postmaster) the machine says [`Command::Fence`], whatever renewal or
//! support call is still pending. So the agent has stopped taking writes by
//! `covered_until` on its own clock, and the controller, which waits
//! `max(last_grant + ttl, withdrawn + 2 × renew) + margin` on its clock, is
//! behind it by the margin (see `docs/failover-math.md`).
//!
//! A refused renewal (a newer epoch names another primary, or a failover
//! raised the epoch) fences at once.
//!
//! The role of PostgreSQL is three-valued: when the agent cannot ask it
//! ([`Role::Unknown`]), the last known role holds: a primary the agent
//! cannot query must still fence.
//!
//! A freshly started agent is *lapsed*: nothing covers it, so a
//! PostgreSQL it finds writable is fenced unless a renewal is granted or a
//! majority supports it within `start_grace` (`renew / 2`) of finding it
//! so; the same holds whenever PostgreSQL becomes a writable primary (a
//! promotion, a restart, a start by someone else).
//!
//! None of this state survives a restart (that is the point of starting
//! lapsed); what does is [`crate::support::PeerDurable`].

use crate::At;
use crate::support::majority;

/// The lease settings, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseTiming {
    pub ttl: u64,
    pub renew: u64,
}

impl LeaseTiming {
    /// The time reserved for the fence: it starts this long before the
    /// cover ends, and the agent bounds it by this.
    pub fn fence_lead(&self) -> u64 {
        self.renew
    }

    /// How long a majority of support covers, from the round's send.
    pub fn support_hold(&self) -> u64 {
        2 * self.renew
    }

    /// Support rounds are this far apart.
    pub fn support_every(&self) -> u64 {
        (self.renew / 2).max(1)
    }

    /// A round not settled by then failed.
    pub fn support_timeout(&self) -> u64 {
        (self.renew / 4).max(1)
    }

    /// A freshly started agent's time to decide.
    pub fn start_grace(&self) -> u64 {
        (self.renew / 2).max(1)
    }

    /// Support is asked for from this long before the fence point.
    pub fn support_window(&self) -> u64 {
        self.renew
    }
}

/// What PostgreSQL answered to "are you a writable primary?".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    NotPrimary,
    /// It could not be asked (down, refusing, timed out): the last known
    /// role holds.
    Unknown,
}

/// How a renewal ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Renewal {
    Granted,
    /// The controller refused: this node is not (or no longer) the primary.
    Refused,
    /// No answer (unreachable, timed out, not ready).
    Failed,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A timer fired (or any wake-up).
    Tick,
    /// The answer to [`Command::CheckRole`].
    Role(Role),
    /// The answer to [`Command::Renew`].
    Renewed { id: u64, outcome: Renewal },
    /// One peer's answer to [`Command::AskSupport`] (a failed call is `yes: false`).
    Support { round: u64, yes: bool },
    /// The fence ended (`ok`: PostgreSQL is stopped).
    Fenced { ok: bool },
}

/// Why the agent fences.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FenceReason {
    /// The controller refused the renewal.
    Refused,
    /// Neither a granted renewal nor a majority of support covers it.
    Lapsed,
    /// A freshly started agent found PostgreSQL writable and got neither
    /// a renewal nor a majority within its grace.
    StartedLapsed,
}

impl FenceReason {
    pub fn describe(self) -> &'static str {
        match self {
            FenceReason::Refused => "the controller refused the lease",
            FenceReason::Lapsed => "lease lapsed and no majority of agents supports this primary",
            FenceReason::StartedLapsed => {
                "the agent started with PostgreSQL writable and got neither a lease nor a majority of support"
            }
        }
    }
}

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// Ask PostgreSQL whether it is a writable primary; answer with [`Event::Role`].
    CheckRole,
    /// Renew the lease at the agent's current epoch; answer with [`Event::Renewed`].
    Renew { id: u64 },
    /// Ask every peer for support at the agent's current epoch; answer each
    /// with [`Event::Support`].
    AskSupport { round: u64 },
    /// Stop PostgreSQL now (bounded by `fence_lead`); answer with [`Event::Fenced`].
    Fence { reason: FenceReason },
    /// Call again with [`Event::Tick`] at this instant (the earliest pending
    /// deadline); replaces any earlier wake-up.
    WakeAt(At),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Round {
    id: u64,
    sent: At,
    yes: usize,
    no: usize,
}

/// The agent's lease machine. Volatile: a restarted agent makes a new one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AgentLease {
    timing: LeaseTiming,
    /// Agents of the cluster, this one included.
    agents: usize,
    /// When PostgreSQL was last found to have become a writable primary
    /// (or the agent started): a node with nothing covering it must decide
    /// within `start_grace` of this.
    became: At,
    /// The last known role (`None` before PostgreSQL first answered).
    primary: Option<bool>,
    lease_until: Option<At>,
    support_until: Option<At>,
    renewal: Option<(u64, At)>,
    round: Option<Round>,
    next_check: At,
    next_renew: At,
    next_round: At,
    fencing: bool,
    ids: u64,
}

impl AgentLease {
    /// A machine for an agent started at `now` with `agents` agents in its
    /// cluster (itself included). Call [`AgentLease::on`] with
    /// [`Event::Tick`] at once.
    pub fn new(timing: LeaseTiming, agents: usize, now: At) -> AgentLease {
        AgentLease {
            timing,
            agents: agents.max(1),
            became: now,
            primary: None,
            lease_until: None,
            support_until: None,
            renewal: None,
            round: None,
            next_check: now,
            next_renew: now,
            next_round: now,
            fencing: false,
            ids: 0,
        }
    }

    /// Whether the last known role is a writable primary.
    pub fn is_primary(&self) -> bool {
        self.primary == Some(true)
    }

    /// Until when the agent may let PostgreSQL take writes (the fence
    /// starts at this instant).
    pub fn fence_at(&self) -> At {
        let lead = self.timing.fence_lead();
        let covered = [self.lease_until, self.support_until].into_iter().flatten().max();
        let grace = self.became.after(self.timing.start_grace());
        match covered {
            Some(c) => c.before(lead).max(grace),
            None => grace,
        }
    }

    /// Whether a granted renewal covers `now`.
    pub fn leased(&self, now: At) -> bool {
        self.lease_until.is_some_and(|u| now < u)
    }

    /// Feeds one event; returns what to do, always ending with a
    /// [`Command::WakeAt`].
    pub fn on(&mut self, event: Event, now: At) -> Vec<Command> {
        let mut out = Vec::new();
        match event {
            Event::Tick => {}
            Event::Role(Role::Primary) => {
                if self.primary != Some(true) {
                    // (Again) a primary (promoted, restarted, started by
                    // someone else): renew and ask at once, decide within
                    // the grace.
                    self.next_renew = now;
                    self.next_round = now;
                    self.became = now;
                }
                self.primary = Some(true);
            }
            Event::Role(Role::NotPrimary) => {
                self.primary = Some(false);
                self.fencing = false;
                self.round = None;
            }
            Event::Role(Role::Unknown) => {}
            Event::Renewed { id, outcome } => {
                if let Some((rid, sent)) = self.renewal
                    && rid == id
                {
                    self.renewal = None;
                    match outcome {
                        Renewal::Granted => {
                            let until = sent.after(self.timing.ttl);
                            self.lease_until = Some(self.lease_until.map_or(until, |u| u.max(until)));
                        }
                        Renewal::Refused => {
                            // Whatever covered it: the controller says another
                            // primary exists or is being made.
                            self.lease_until = None;
                            self.support_until = None;
                            if self.primary != Some(false) && !self.fencing {
                                self.fencing = true;
                                out.push(Command::Fence { reason: FenceReason::Refused });
                            }
                        }
                        Renewal::Failed => {}
                    }
                }
            }
            Event::Support { round, yes } => {
                if let Some(r) = &mut self.round
                    && r.id == round
                {
                    if yes {
                        r.yes += 1;
                    } else {
                        r.no += 1;
                    }
                    let need = majority(self.agents);
                    if 1 + r.yes >= need {
                        // Settled: later answers of this round are not counted.
                        let until = r.sent.after(self.timing.support_hold());
                        self.support_until = Some(self.support_until.map_or(until, |u| u.max(until)));
                        self.round = None;
                    } else if r.no > self.agents - need {
                        self.round = None;
                    }
                }
            }
            Event::Fenced { ok } => {
                self.fencing = false;
                if ok {
                    self.primary = Some(false);
                    self.round = None;
                }
            }
        }
        self.step(now, &mut out);
        out
    }

    fn step(&mut self, now: At, out: &mut Vec<Command>) {
        let t = self.timing;
        if let Some(r) = self.round
            && now >= r.sent.after(t.support_timeout())
        {
            self.round = None;
        }
        if let Some((_, sent)) = self.renewal
            && now >= sent.after(t.renew)
        {
            self.renewal = None;
        }
        if now >= self.next_check {
            out.push(Command::CheckRole);
            self.next_check = now.after(t.renew);
        }
        let mut wake = self.next_check;
        // A primary, or a node whose PostgreSQL the agent could not yet ask
        // but that may be one: the deadline applies to both.
        if self.primary == Some(true) {
            if self.renewal.is_none() && now >= self.next_renew {
                self.ids += 1;
                self.renewal = Some((self.ids, now));
                self.next_renew = now.after(t.renew);
                out.push(Command::Renew { id: self.ids });
            }
            if self.renewal.is_none() {
                wake = wake.min(self.next_renew);
            } else if let Some((_, sent)) = self.renewal {
                wake = wake.min(sent.after(t.renew));
            }
            let fence_at = self.fence_at();
            if now >= fence_at {
                if !self.fencing {
                    self.fencing = true;
                    let reason = if self.lease_until.is_none() && self.support_until.is_none() {
                        FenceReason::StartedLapsed
                    } else {
                        FenceReason::Lapsed
                    };
                    out.push(Command::Fence { reason });
                }
            } else {
                wake = wake.min(fence_at);
                let window = fence_at.before(t.support_window());
                if now >= window && self.round.is_none() && now >= self.next_round {
                    self.ids += 1;
                    self.round = Some(Round { id: self.ids, sent: now, yes: 0, no: 0 });
                    self.next_round = now.after(t.support_every());
                    if self.agents == 1 {
                        // Alone, it is its own majority.
                        let until = now.after(t.support_hold());
                        self.support_until = Some(self.support_until.map_or(until, |u| u.max(until)));
                        self.round = None;
                    } else {
                        out.push(Command::AskSupport { round: self.ids });
                    }
                }
                if let Some(r) = self.round {
                    wake = wake.min(r.sent.after(t.support_timeout()));
                }
                wake = wake.min(if now >= window { self.next_round.max(now) } else { window });
            }
        }
        out.push(Command::WakeAt(wake.max(now)));
    }

    /// The model's old rule "a fresh agent counts its lease from its own
    /// start": covers it for `ttl` from `now`.
    #[cfg(test)]
    pub(crate) fn assume_granted(&mut self, now: At) {
        self.lease_until = Some(now.after(self.timing.ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: LeaseTiming = LeaseTiming { ttl: 3000, renew: 500 };

    fn renew_id(cmds: &[Command]) -> Option<u64> {
        cmds.iter().find_map(|c| if let Command::Renew { id } = c { Some(*id) } else { None })
    }

    fn round_id(cmds: &[Command]) -> Option<u64> {
        cmds.iter().find_map(|c| if let Command::AskSupport { round } = c { Some(*round) } else { None })
    }

    fn fences(cmds: &[Command]) -> bool {
        cmds.iter().any(|c| matches!(c, Command::Fence { .. }))
    }

    #[test]
    fn a_fresh_agent_is_lapsed_and_fences_without_a_decision() {
        let mut m = AgentLease::new(T, 3, At(0));
        assert!(m.on(Event::Tick, At(0)).contains(&Command::CheckRole));
        let c = m.on(Event::Role(Role::Primary), At(1));
        assert!(renew_id(&c).is_some() && round_id(&c).is_some(), "{c:?}");
        assert!(!fences(&c));
        // Nothing answers within the grace: fence.
        let c = m.on(Event::Tick, At(1 + T.start_grace()));
        assert!(c.contains(&Command::Fence { reason: FenceReason::StartedLapsed }), "{c:?}");
    }

    #[test]
    fn a_grant_covers_until_send_plus_ttl_minus_the_lead() {
        let mut m = AgentLease::new(T, 3, At(0));
        m.on(Event::Tick, At(0));
        let c = m.on(Event::Role(Role::Primary), At(10));
        let id = renew_id(&c).expect("renew");
        m.on(Event::Renewed { id, outcome: Renewal::Granted }, At(20));
        assert_eq!(m.fence_at(), At(10 + 3000 - 500));
        // No more grants (the controller is gone), peers silent: the fence
        // comes at the deadline, from the timer alone.
        let mut t = 20;
        let mut fenced_at = None;
        while t < 4000 {
            let c = m.on(Event::Tick, At(t));
            if fences(&c) {
                fenced_at = Some(t);
                break;
            }
            t += 25;
        }
        assert!(fenced_at.is_some_and(|f| (2510..2535).contains(&f)), "{fenced_at:?}");
    }

    #[test]
    fn a_majority_settles_the_round_and_covers() {
        let mut m = AgentLease::new(T, 5, At(0));
        m.on(Event::Tick, At(0));
        let c = m.on(Event::Role(Role::Primary), At(0));
        let r = round_id(&c).expect("round at start");
        m.on(Event::Support { round: r, yes: true }, At(5));
        assert!(m.support_until.is_none());
        m.on(Event::Support { round: r, yes: true }, At(6));
        assert_eq!(m.support_until, Some(At(1000)));
        // Late answers of a settled round are not counted.
        m.on(Event::Support { round: r, yes: false }, At(7));
        assert_eq!(m.support_until, Some(At(1000)));
        assert_eq!(m.fence_at(), At(500));
    }

    #[test]
    fn refused_fences_at_once_and_unknown_keeps_the_role() {
        let mut m = AgentLease::new(T, 3, At(0));
        m.on(Event::Tick, At(0));
        let c = m.on(Event::Role(Role::Primary), At(0));
        let id = renew_id(&c).expect("renew");
        m.on(Event::Renewed { id, outcome: Renewal::Granted }, At(1));
        let c = m.on(Event::Role(Role::Unknown), At(600));
        assert!(m.is_primary(), "unknown keeps the last known role");
        let id = renew_id(&c).expect("renews while unknown");
        let c = m.on(Event::Renewed { id, outcome: Renewal::Refused }, At(601));
        assert!(c.contains(&Command::Fence { reason: FenceReason::Refused }), "{c:?}");
        let c = m.on(Event::Fenced { ok: true }, At(700));
        assert!(!fences(&c));
        assert!(!m.is_primary());
    }
}
