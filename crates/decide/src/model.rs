//! The model check: the real machines of this crate ([`AgentLease`], the
//! support rule of [`PeerDurable`], [`FenceGate`] and the renewal rule)
//! run by three agents (`a`, the primary, `b` and `c`), one controller and
//! the store, explored by stateright over every interleaving of:
//!
//! * time, advanced from one pending deadline to the next;
//! * a failover the controller may start at any instant (its detection is
//!   not modelled: any instant is possible, false positives included);
//! * faults, up to a budget per run: a one-way cut of any link
//!   (asymmetric partitions, message loss), one message held back and
//!   delivered later (delay, reordering), an agent restart, a controller
//!   restart (the workflow resumes from its journal), a PostgreSQL the agent
//!   cannot query, and an agent clock running slow (bounded drift).
//!
//! * the freeze switch turned on and off at any instant (up to twice a
//!   run), and failovers of both origins: the controller's own (an outage
//!   verdict) and an operator's.
//!
//! The invariants: at most one PostgreSQL accepts writes at any instant;
//! while the cluster is frozen no automatic role change starts (the
//! [`rules::admit`] gate, checked in the transaction that writes the fence
//! epoch), and an operator's failover still promotes.
//! A fence takes as long as the agent allows it (`fence_lead`), the worst
//! case. Each finding of issue 14 is the same model with the old rule
//! ([`Rules`]); its test asserts the checker finds the violation with the
//! old rule and none with the new.
//!
//! Units are abstract: `renew` = 2, `ttl` = 6, `margin` = 2 (the smallest
//! `pgdr config check` accepts: `margin ≥ renew`), drift up to `renew / 2`.

use std::collections::VecDeque;
use std::fmt::Write as _;

use pgdr_model::{Epoch, NodeName};
use stateright::{Checker, HasDiscoveries, Model, Property};

use crate::At;
use crate::fence::{AgentFence, Decision, FenceGate, FenceTiming};
use crate::lease::{AgentLease, Command, Event, LeaseTiming, Renewal, Role};
use crate::renewal::{self, FenceEpoch, StoreView};
use crate::rules::{self, Frozen, Origin};
use crate::support::{PeerDurable, SupportAsk};

const N: usize = 3;
const CTL: u8 = 3;
const NAMES: [&str; 4] = ["a", "b", "c", "ctl"];
const RENEW: u64 = 2;
const TTL: u64 = 6;
const MARGIN: u64 = 2;
const MAX_LAG: u8 = 1;

/// Which rules the model runs: `new()` is today's code, each `false` an old
/// rule a finding of issue 14 named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// 1: withdrawals are written with the epoch file (old: memory only).
    pub persist_withdrawals: bool,
    /// 1: support is refused below the durable epoch (old: ignored).
    pub support_checks_epoch: bool,
    /// 1: a fresh agent starts lapsed (old: covered for `ttl` from its start).
    pub start_lapsed: bool,
    /// 2: the fence starts at its deadline (old: at the end of a loop
    /// iteration, up to `2 × renew` later).
    pub deadline_fence: bool,
    /// 2: an unknown role keeps the last known one (old: not a primary, and
    /// the lease clock restarts).
    pub three_valued_role: bool,
    /// 3: the fence raises the epoch in the store with no primary (old: a
    /// block in the controller's memory) and re-reads the last grant at
    /// every check (old: once, when the step starts).
    pub store_block: bool,
    /// 17: the freeze gate is checked where the fence epoch is written
    /// (old: no gate).
    pub freeze_gate: bool,
}

impl Rules {
    pub fn new() -> Rules {
        Rules {
            persist_withdrawals: true,
            support_checks_epoch: true,
            start_lapsed: true,
            deadline_fence: true,
            three_valued_role: true,
            store_block: true,
            freeze_gate: true,
        }
    }
}

/// Which faults a run may inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faults {
    pub cuts: bool,
    pub hold: bool,
    pub agent_restarts: bool,
    pub controller_restarts: bool,
    pub query_failures: bool,
    /// The controller's fence requests to `a` are lost (its agent never
    /// confirms; its renewals still get through).
    pub fence_lost: bool,
    pub drift: bool,
    /// The cluster may be frozen and unfrozen (not a fault: not counted
    /// against the budget), and an operator may start a failover.
    pub freeze: bool,
    /// Faults per run (drift steps not counted: they have their own bound).
    pub budget: u8,
}

#[derive(Clone, Debug)]
pub struct Sys {
    pub rules: Rules,
    pub faults: Faults,
    /// Time bound of a run.
    pub horizon: u64,
    /// The controller's `lease_margin`.
    pub margin: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pg {
    Down,
    Replica,
    Writable,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Msg {
    Renew { from: u8, id: u64 },
    RenewReply { to: u8, id: u64, granted: bool },
    SupportReq { from: u8, to: u8, round: u64, epoch: Epoch },
    SupportRep { from: u8, to: u8, round: u64, yes: bool },
    Withdraw { to: u8, epoch: Epoch },
    WithdrawAck { from: u8 },
    FenceReq { to: u8 },
    FenceAck { from: u8 },
    Promote { to: u8, epoch: Epoch },
    Repoint { to: u8, epoch: Epoch },
}

impl Msg {
    fn ends(&self) -> (u8, u8) {
        match *self {
            Msg::Renew { from, .. } => (from, CTL),
            Msg::RenewReply { to, .. } => (CTL, to),
            Msg::SupportReq { from, to, .. } | Msg::SupportRep { from, to, .. } => (from, to),
            Msg::Withdraw { to, .. } | Msg::FenceReq { to } | Msg::Promote { to, .. } | Msg::Repoint { to, .. } => {
                (CTL, to)
            }
            Msg::WithdrawAck { from } | Msg::FenceAck { from } => (from, CTL),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    pub pg: Pg,
    /// Volatile: rebuilt when the agent restarts.
    pub lease: AgentLease,
    pub wake: At,
    /// Durable: the epoch file.
    pub durable: PeerDurable,
    /// How far this agent's clock is behind (drift).
    pub lag: u8,
    pub query_fails: bool,
    /// A fence under way: PostgreSQL stops at this (global) instant.
    pub stop_at: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Idle,
    /// The failover's fence step (journalled: survives a restart).
    Fencing {
        old_epoch: Epoch,
    },
    Promoted,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ctl {
    /// Durable: the store and the workflow journal.
    pub store: StoreView,
    pub phase: Phase,
    /// Volatile.
    pub blocked: bool,
    pub last_grant: At,
    pub gate: Option<FenceGate>,
    pub wake: Option<At>,
    /// Who started the running failover (journalled: survives a restart).
    pub origin: Option<Origin>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct St {
    pub now: u64,
    pub nodes: [Node; N],
    pub ctl: Ctl,
    /// One-way cuts, as a bit per (from, to).
    pub cut: u16,
    /// The next message on this link is held back.
    pub hold_next: Option<(u8, u8)>,
    pub held: Option<Msg>,
    pub fence_lost: bool,
    pub faults: u8,
    /// The freeze switch (in the store).
    pub frozen: bool,
    /// Times the switch was turned (bounded).
    pub switched: u8,
    /// History: an automatic failover wrote its fence epoch while frozen.
    pub auto_while_frozen: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    /// Time passes to the next pending deadline.
    Advance,
    /// The controller declares the primary `a` out and starts a failover.
    Failover,
    /// An operator asks for a failover of `a`.
    OperatorFailover,
    Freeze,
    Unfreeze,
    Cut(u8, u8),
    Hold(u8, u8),
    Release,
    RestartAgent(u8),
    RestartController,
    QueryFails(u8),
    FenceLost,
    Drift(u8),
}

/// The links faults act on: every one-way link but those between `b` and
/// `c` (two replicas talk to each other only to support a primary, and
/// neither is one until the controller promotes `b`).
const LINKS: [(u8, u8); 10] =
    [(0, 1), (1, 0), (0, 2), (2, 0), (0, CTL), (CTL, 0), (1, CTL), (CTL, 1), (2, CTL), (CTL, 2)];

fn bit(from: u8, to: u8) -> u16 {
    1 << (from * 4 + to)
}

fn timing() -> LeaseTiming {
    LeaseTiming { ttl: TTL, renew: RENEW }
}

fn fence_timing(margin: u64) -> FenceTiming {
    FenceTiming { ttl: TTL, renew: RENEW, margin }
}

fn name(i: u8) -> NodeName {
    NodeName::new(NAMES[i as usize])
}

impl Sys {
    fn local(&self, st: &St, i: usize) -> At {
        At(st.now.saturating_sub(u64::from(st.nodes[i].lag)))
    }

    fn send(&self, st: &mut St, q: &mut VecDeque<Msg>, m: Msg) {
        let (from, to) = m.ends();
        if st.cut & bit(from, to) != 0 || (st.fence_lost && matches!(m, Msg::FenceReq { .. })) {
            return;
        }
        if st.hold_next == Some((from, to)) && st.held.is_none() {
            st.hold_next = None;
            st.held = Some(m);
            return;
        }
        q.push_back(m);
    }

    /// Delivers every queued message (and what they cause) at this instant.
    fn drain(&self, st: &mut St, q: &mut VecDeque<Msg>) {
        while let Some(m) = q.pop_front() {
            self.deliver(st, q, m);
        }
    }

    fn agent(&self, st: &mut St, q: &mut VecDeque<Msg>, i: usize, ev: Event) {
        let now = self.local(st, i);
        let mut pending = VecDeque::from([ev]);
        while let Some(ev) = pending.pop_front() {
            let cmds = st.nodes[i].lease.on(ev, now);
            for c in cmds {
                match c {
                    Command::CheckRole => {
                        let n = &st.nodes[i];
                        let role = match n.pg {
                            _ if n.query_fails => Role::Unknown,
                            Pg::Writable => Role::Primary,
                            Pg::Replica => Role::NotPrimary,
                            Pg::Down => Role::Unknown,
                        };
                        if role == Role::Unknown && !self.rules.three_valued_role {
                            // Old: not a primary, and the lease counted afresh.
                            st.nodes[i].lease.assume_granted(now);
                            pending.push_back(Event::Role(Role::NotPrimary));
                        } else {
                            pending.push_back(Event::Role(role));
                        }
                    }
                    Command::Renew { id } => self.send(st, q, Msg::Renew { from: i as u8, id }),
                    Command::AskSupport { round } => {
                        let epoch = st.nodes[i].durable.epoch;
                        for j in 0..N as u8 {
                            if j != i as u8 {
                                self.send(st, q, Msg::SupportReq { from: i as u8, to: j, round, epoch });
                            }
                        }
                    }
                    Command::Fence { .. } => {
                        let n = &mut st.nodes[i];
                        if n.pg == Pg::Down {
                            pending.push_back(Event::Fenced { ok: true });
                        } else if n.stop_at.is_none() {
                            let late = if self.rules.deadline_fence { 0 } else { 2 * RENEW };
                            n.stop_at = Some(st.now + RENEW + late);
                        }
                    }
                    Command::WakeAt(t) => st.nodes[i].wake = t,
                }
            }
        }
    }

    fn deliver(&self, st: &mut St, q: &mut VecDeque<Msg>, m: Msg) {
        match m {
            Msg::Renew { from, id } => {
                let mut granted = renewal::renew(&st.ctl.store, &name(from)).is_ok();
                if !self.rules.store_block && st.ctl.blocked && from == 0 {
                    granted = false;
                }
                if granted {
                    st.ctl.last_grant = At(st.now);
                }
                self.send(st, q, Msg::RenewReply { to: from, id, granted });
                self.ctl_tick(st, q);
            }
            Msg::RenewReply { to, id, granted } => {
                let outcome = if granted { Renewal::Granted } else { Renewal::Refused };
                self.agent(st, q, to as usize, Event::Renewed { id, outcome });
            }
            Msg::SupportReq { from, to, round, epoch } => {
                let d = &st.nodes[to as usize].durable;
                let epoch = if self.rules.support_checks_epoch { epoch } else { epoch.max(d.epoch) };
                let primary = name(from);
                let ask = SupportAsk { same_cluster: true, primary: &primary, epoch, members: "m", my_members: "m" };
                let yes = d.support(&ask).is_ok();
                self.send(st, q, Msg::SupportRep { from: to, to: from, round, yes });
            }
            Msg::SupportRep { to, round, yes, .. } => {
                self.agent(st, q, to as usize, Event::Support { round, yes });
            }
            Msg::Withdraw { to, epoch } => {
                st.nodes[to as usize].durable.withdraw(&name(0), epoch);
                self.send(st, q, Msg::WithdrawAck { from: to });
            }
            Msg::WithdrawAck { .. } => {
                if let Some(g) = &mut st.ctl.gate {
                    g.withdrawn(At(st.now));
                }
                self.ctl_tick(st, q);
            }
            Msg::FenceReq { to } => {
                let n = &mut st.nodes[to as usize];
                if n.pg == Pg::Writable {
                    n.pg = Pg::Down;
                }
                self.send(st, q, Msg::FenceAck { from: to });
            }
            Msg::FenceAck { .. } => {
                if let Some(g) = &mut st.ctl.gate {
                    g.agent = Some(AgentFence::Confirmed("stopped".into()));
                }
                self.ctl_tick(st, q);
            }
            Msg::Promote { to, epoch } => {
                let n = &mut st.nodes[to as usize];
                n.durable.see_epoch(epoch);
                n.pg = Pg::Writable;
            }
            Msg::Repoint { to, epoch } => {
                st.nodes[to as usize].durable.see_epoch(epoch);
            }
        }
    }

    /// The fence step starts (or resumes after a restart).
    fn fence_step(&self, st: &mut St, q: &mut VecDeque<Msg>, resumed: bool) {
        let Phase::Fencing { old_epoch } = st.ctl.phase else { return };
        if self.rules.store_block {
            match renewal::fence_epoch(&st.ctl.store, old_epoch) {
                FenceEpoch::Raise(v) => {
                    // The freeze keys are checked in the same transaction.
                    let origin = st.ctl.origin.unwrap_or(Origin::Automatic);
                    let frozen = Frozen { global: false, cluster: st.frozen };
                    if self.rules.freeze_gate && rules::admit(origin, frozen).is_err() {
                        // Refused: the workflow fails having changed nothing.
                        st.ctl.phase = Phase::Idle;
                        st.ctl.origin = None;
                        return;
                    }
                    if origin == Origin::Automatic && st.frozen {
                        st.auto_while_frozen = true;
                    }
                    st.ctl.store = v;
                }
                FenceEpoch::Already => {}
                FenceEpoch::Moved => return,
            }
        } else if !resumed {
            // Old: the block was set by the step before (pause_proxy), which
            // a resumed workflow does not run again.
            st.ctl.blocked = true;
        }
        st.ctl.gate = Some(FenceGate::new(fence_timing(self.margin), N, st.ctl.last_grant));
        self.send(st, q, Msg::FenceReq { to: 0 });
        for j in 1..N as u8 {
            self.send(st, q, Msg::Withdraw { to: j, epoch: old_epoch });
        }
        self.ctl_tick(st, q);
    }

    fn ctl_tick(&self, st: &mut St, q: &mut VecDeque<Msg>) {
        if !matches!(st.ctl.phase, Phase::Fencing { .. }) {
            return;
        }
        let last_grant = st.ctl.last_grant;
        let Some(g) = &mut st.ctl.gate else { return };
        if self.rules.store_block {
            g.grant_seen(last_grant);
        }
        match g.decide(At(st.now)) {
            Decision::Fenced(_) => {
                let epoch = st.ctl.store.epoch.next();
                st.ctl.store = StoreView { epoch, primary: Some(name(1)) };
                st.ctl.phase = Phase::Promoted;
                st.ctl.gate = None;
                st.ctl.wake = None;
                self.send(st, q, Msg::Promote { to: 1, epoch });
                self.send(st, q, Msg::Repoint { to: 2, epoch });
            }
            Decision::WaitUntil(t) => st.ctl.wake = Some(t),
            Decision::NoQuorum => st.ctl.wake = None,
        }
    }

    fn next_instant(&self, st: &St) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |t: u64| {
            let t = t.max(st.now + 1);
            next = Some(next.map_or(t, |n: u64| n.min(t)));
        };
        for n in &st.nodes {
            consider(n.wake.0 + u64::from(n.lag));
            if let Some(s) = n.stop_at {
                consider(s);
            }
        }
        if let Some(w) = st.ctl.wake {
            consider(w.0);
        }
        next.filter(|t| *t <= self.horizon)
    }

    fn advance(&self, st: &mut St) {
        let Some(t) = self.next_instant(st) else { return };
        st.now = t;
        let mut q = VecDeque::new();
        for i in 0..N {
            if st.nodes[i].stop_at.is_some_and(|s| s <= t) {
                st.nodes[i].stop_at = None;
                st.nodes[i].pg = Pg::Down;
                self.agent(st, &mut q, i, Event::Fenced { ok: true });
            }
        }
        self.drain(st, &mut q);
        for i in 0..N {
            if u64::from(st.nodes[i].lag) + st.nodes[i].wake.0 <= t {
                self.agent(st, &mut q, i, Event::Tick);
                self.drain(st, &mut q);
            }
        }
        if st.ctl.wake.is_some_and(|w| w.0 <= t) {
            self.ctl_tick(st, &mut q);
            self.drain(st, &mut q);
        }
    }

    fn writable(st: &St) -> usize {
        st.nodes.iter().filter(|n| n.pg == Pg::Writable).count()
    }

    /// A counterexample, step by step.
    pub fn trace(&self, actions: &[Act]) -> String {
        let mut st = self.init_states().remove(0);
        let mut out = String::new();
        let _ = writeln!(out, "  t={:>2}  start: {}", st.now, Self::summary(&st));
        for a in actions {
            let Some(next) = self.next_state(&st, a.clone()) else { break };
            st = next;
            let what = match a {
                Act::Advance => "time passes".to_owned(),
                Act::Failover => "the controller starts a failover of a".to_owned(),
                Act::OperatorFailover => "an operator starts a failover of a".to_owned(),
                Act::Freeze => "the cluster is frozen".to_owned(),
                Act::Unfreeze => "the cluster is unfrozen".to_owned(),
                Act::Cut(f, t) => format!("cut {} -> {}", NAMES[*f as usize], NAMES[*t as usize]),
                Act::Hold(f, t) => {
                    format!("the next message {} -> {} is delayed", NAMES[*f as usize], NAMES[*t as usize])
                }
                Act::Release => "the delayed message arrives".to_owned(),
                Act::RestartAgent(i) => format!("agent {} restarts", NAMES[*i as usize]),
                Act::RestartController => "the controller restarts (the workflow resumes)".to_owned(),
                Act::QueryFails(i) => format!("agent {} can no longer query its PostgreSQL", NAMES[*i as usize]),
                Act::Drift(i) => format!("agent {}'s clock falls one unit behind", NAMES[*i as usize]),
                Act::FenceLost => "the controller's fence requests to a are lost from now on".to_owned(),
            };
            let _ = writeln!(out, "  t={:>2}  {what}: {}", st.now, Self::summary(&st));
        }
        out
    }

    fn summary(st: &St) -> String {
        let pg: Vec<String> = st
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "{}={}{}",
                    NAMES[i],
                    match n.pg {
                        Pg::Down => "down",
                        Pg::Replica => "replica",
                        Pg::Writable => "WRITABLE",
                    },
                    if n.stop_at.is_some() {
                        "(fencing)".to_owned()
                    } else if n.pg == Pg::Writable && n.lease.is_primary() {
                        format!("(fences at {})", n.lease.fence_at().0 + u64::from(n.lag))
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        format!(
            "{} | store epoch {} primary {}{} | {:?}",
            pg.join(" "),
            st.ctl.store.epoch,
            st.ctl.store.primary.as_ref().map(|p| p.as_str()).unwrap_or("none"),
            if st.frozen { " FROZEN" } else { "" },
            st.ctl.phase
        )
    }
}

impl Model for Sys {
    type State = St;
    type Action = Act;

    fn init_states(&self) -> Vec<St> {
        let node = |pg| Node {
            pg,
            lease: AgentLease::new(timing(), N, At(0)),
            wake: At(0),
            durable: PeerDurable { epoch: Epoch(1), ..PeerDurable::default() },
            lag: 0,
            query_fails: false,
            stop_at: None,
        };
        let mut st = St {
            now: 0,
            nodes: [node(Pg::Writable), node(Pg::Replica), node(Pg::Replica)],
            ctl: Ctl {
                store: StoreView { epoch: Epoch(1), primary: Some(name(0)) },
                phase: Phase::Idle,
                blocked: false,
                last_grant: At(0),
                gate: None,
                wake: None,
                origin: None,
            },
            cut: 0,
            hold_next: None,
            held: None,
            fence_lost: false,
            faults: 0,
            frozen: false,
            switched: 0,
            auto_while_frozen: false,
        };
        let mut q = VecDeque::new();
        for i in 0..N {
            self.agent(&mut st, &mut q, i, Event::Tick);
            self.drain(&mut st, &mut q);
        }
        vec![st]
    }

    fn actions(&self, st: &St, actions: &mut Vec<Act>) {
        if self.next_instant(st).is_some() {
            actions.push(Act::Advance);
        }
        // A failover that cannot promote before the horizon shows nothing.
        if st.ctl.phase == Phase::Idle && st.now + TTL + self.margin + 2 <= self.horizon {
            actions.push(Act::Failover);
            if self.faults.freeze {
                actions.push(Act::OperatorFailover);
            }
        }
        if self.faults.freeze && st.switched < 2 {
            actions.push(if st.frozen { Act::Unfreeze } else { Act::Freeze });
        }
        if st.held.is_some() {
            actions.push(Act::Release);
        }
        let f = self.faults;
        if f.drift {
            for i in 0..N as u8 {
                if st.nodes[i as usize].lag < MAX_LAG {
                    actions.push(Act::Drift(i));
                }
            }
        }
        if st.faults >= f.budget {
            return;
        }
        if f.cuts {
            for (a, b) in LINKS {
                if st.cut & bit(a, b) == 0 {
                    actions.push(Act::Cut(a, b));
                }
            }
        }
        if f.hold && st.hold_next.is_none() && st.held.is_none() {
            for (a, b) in LINKS {
                actions.push(Act::Hold(a, b));
            }
        }
        if f.agent_restarts {
            for i in 0..N as u8 {
                actions.push(Act::RestartAgent(i));
            }
        }
        if f.controller_restarts {
            actions.push(Act::RestartController);
        }
        if f.fence_lost && !st.fence_lost {
            actions.push(Act::FenceLost);
        }
        if f.query_failures {
            for i in 0..N as u8 {
                if !st.nodes[i as usize].query_fails {
                    actions.push(Act::QueryFails(i));
                }
            }
        }
    }

    fn next_state(&self, last: &St, action: Act) -> Option<St> {
        let mut st = last.clone();
        let mut q = VecDeque::new();
        match action {
            Act::Advance => self.advance(&mut st),
            Act::Failover | Act::OperatorFailover => {
                let origin = if action == Act::Failover { Origin::Automatic } else { Origin::Operator };
                st.ctl.phase = Phase::Fencing { old_epoch: st.ctl.store.epoch };
                st.ctl.origin = Some(origin);
                self.fence_step(&mut st, &mut q, false);
            }
            Act::Freeze | Act::Unfreeze => {
                st.frozen = action == Act::Freeze;
                st.switched += 1;
            }
            Act::Cut(a, b) => {
                st.faults += 1;
                st.cut |= bit(a, b);
            }
            Act::Hold(a, b) => {
                st.faults += 1;
                st.hold_next = Some((a, b));
            }
            Act::Release => {
                if let Some(m) = st.held.take() {
                    let (a, b) = m.ends();
                    if st.cut & bit(a, b) == 0 {
                        q.push_back(m);
                    }
                }
            }
            Act::RestartAgent(i) => {
                st.faults += 1;
                let i = i as usize;
                let now = self.local(&st, i);
                let n = &mut st.nodes[i];
                n.lease = AgentLease::new(timing(), N, now);
                if !self.rules.start_lapsed {
                    n.lease.assume_granted(now);
                }
                if !self.rules.persist_withdrawals {
                    n.durable.withdrawn.clear();
                }
                // Calls in flight to or from the old process are gone.
                if st.held.as_ref().is_some_and(|m| {
                    let (a, b) = m.ends();
                    a as usize == i || b as usize == i
                }) {
                    st.held = None;
                }
                self.agent(&mut st, &mut q, i, Event::Tick);
            }
            Act::RestartController => {
                st.faults += 1;
                st.ctl.blocked = false;
                st.ctl.last_grant = At(st.now);
                st.ctl.gate = None;
                st.ctl.wake = None;
                if st.held.as_ref().is_some_and(|m| m.ends().1 == CTL || m.ends().0 == CTL) {
                    st.held = None;
                }
                self.fence_step(&mut st, &mut q, true);
            }
            Act::QueryFails(i) => {
                st.faults += 1;
                st.nodes[i as usize].query_fails = true;
            }
            Act::Drift(i) => st.nodes[i as usize].lag += 1,
            Act::FenceLost => {
                st.faults += 1;
                st.fence_lost = true;
            }
        }
        self.drain(&mut st, &mut q);
        Some(st)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::<Self>::always("at most one writable PostgreSQL", |_, st| Sys::writable(st) <= 1),
            Property::<Self>::sometimes("a failover promotes b", |_, st| st.ctl.phase == Phase::Promoted),
            Property::<Self>::always(FROZEN_NO_AUTO, |_, st| !st.auto_while_frozen),
            Property::<Self>::sometimes(OPERATOR_WHILE_FROZEN, |_, st| {
                st.frozen && st.ctl.phase == Phase::Promoted && st.ctl.origin == Some(Origin::Operator)
            }),
        ]
    }

    fn within_boundary(&self, st: &St) -> bool {
        st.now <= self.horizon
    }
}

const FROZEN_NO_AUTO: &str = "frozen: no automatic role change starts";
const OPERATOR_WHILE_FROZEN: &str = "frozen: an operator's failover promotes b";

/// Runs the freeze check: the counterexample of either invariant, whether
/// an operator's failover promoted while frozen, the states explored.
fn check_freeze(sys: Sys, depth: usize) -> (Option<String>, bool, usize) {
    let started = std::time::Instant::now();
    let checker = sys
        .clone()
        .checker()
        .threads(2)
        .target_max_depth(depth)
        .finish_when(HasDiscoveries::AnyOf(["at most one writable PostgreSQL", FROZEN_NO_AUTO].into()))
        .spawn_bfs()
        .join();
    let states = checker.unique_state_count();
    let found = ["at most one writable PostgreSQL", FROZEN_NO_AUTO]
        .into_iter()
        .find_map(|p| checker.discovery(p).map(|d| format!("{p} violated:\n{}", sys.trace(&d.into_actions()))));
    let operator = checker.discovery(OPERATOR_WHILE_FROZEN).is_some();
    println!(
        "model check freeze (gate {}): {states} states, depth {depth}, {:.1}s: {}",
        sys.rules.freeze_gate,
        started.elapsed().as_secs_f64(),
        if found.is_some() { "VIOLATION" } else { "no violation" }
    );
    if let Some(t) = &found {
        println!("counterexample:\n{t}");
    }
    (found, operator, states)
}

/// Runs the check; returns the counterexample as a readable trace, if any.
fn check(sys: Sys, depth: usize) -> (Option<String>, bool, usize, std::time::Duration) {
    let started = std::time::Instant::now();
    let checker = sys
        .clone()
        .checker()
        .threads(2)
        .target_max_depth(depth)
        .finish_when(HasDiscoveries::AnyOf(["at most one writable PostgreSQL"].into()))
        .spawn_bfs()
        .join();
    let states = checker.unique_state_count();
    let found = checker.discovery("at most one writable PostgreSQL").map(|p| sys.trace(&p.into_actions()));
    let promoted = checker.discovery("a failover promotes b").is_some();
    (found, promoted, states, started.elapsed())
}

/// Time bound of a run: a failover and what follows it.
const HORIZON: u64 = 20;
const DEPTH: usize = 40;

const ALL: Faults = Faults {
    cuts: true,
    hold: true,
    agent_restarts: true,
    controller_restarts: true,
    query_failures: true,
    fence_lost: true,
    drift: true,
    freeze: false,
    budget: 1,
};

fn run(name: &str, rules: Rules, faults: Faults, horizon: u64, depth: usize) -> Option<String> {
    run_with(name, Sys { rules, faults, horizon, margin: MARGIN }, depth)
}

fn run_with(name: &str, sys: Sys, depth: usize) -> Option<String> {
    let horizon = sys.horizon;
    let (found, promoted, states, took) = check(sys, depth);
    // Not vacuous: some run of every check gets as far as a promotion.
    assert!(promoted || found.is_some(), "{name}: no run promoted b");
    println!(
        "model check {name}: {states} states, depth {depth}, horizon {horizon}, {:.1}s: {}",
        took.as_secs_f64(),
        if found.is_some() { "VIOLATION" } else { "no violation" }
    );
    if let Some(t) = &found {
        println!("counterexample ({name}):\n{t}");
    }
    found
}

#[test]
fn new_rules_keep_one_writer() {
    // Every kind of fault, one per run, with drift.
    let found = run("new rules, any one fault, drift", Rules::new(), ALL, HORIZON, DEPTH);
    assert!(found.is_none(), "two writable servers:\n{}", found.unwrap_or_default());
    // Two faults among partitions, delay and restarts.
    let two = Faults { query_failures: false, fence_lost: false, drift: false, budget: 2, ..ALL };
    let found = run("new rules, two faults", Rules::new(), two, HORIZON, DEPTH);
    assert!(found.is_none(), "two writable servers:\n{}", found.unwrap_or_default());
}

#[test]
fn a_margin_that_does_not_cover_drift_is_caught() {
    // The margin is what covers the agent's clock running slow (and, in
    // continuous time, a restarted agent's grace: `pgdr config check`
    // requires lease_margin ≥ lease_renew, see docs/failover-math.md).
    let faults = Faults { cuts: true, drift: true, budget: 1, ..NONE };
    let sys = Sys { rules: Rules::new(), faults, horizon: HORIZON, margin: 0 };
    assert!(run_with("margin 0 with drift", sys, DEPTH).is_some());
}

#[test]
fn finding_1_withdrawals_in_memory_are_caught() {
    let faults = Faults { agent_restarts: true, cuts: true, budget: 2, ..NONE };
    let old = Rules { persist_withdrawals: false, support_checks_epoch: false, ..Rules::new() };
    assert!(run("1: withdrawals in memory, support ignores the epoch", old, faults, HORIZON, DEPTH).is_some());
    assert!(run("1: new rules", Rules::new(), faults, HORIZON, DEPTH).is_none());
}

#[test]
fn finding_1_fresh_agent_counting_from_its_start_is_caught() {
    let faults = Faults { agent_restarts: true, cuts: true, budget: 2, ..NONE };
    let old = Rules { start_lapsed: false, ..Rules::new() };
    assert!(run("1: fresh agent covered from its start", old, faults, HORIZON, DEPTH).is_some());
}

#[test]
fn finding_2_late_fence_and_two_valued_role_are_caught() {
    let faults = Faults { cuts: true, budget: 1, ..NONE };
    let old = Rules { deadline_fence: false, ..Rules::new() };
    assert!(run("2: fence at the end of a loop iteration", old, faults, HORIZON, DEPTH).is_some());
    let faults = Faults { cuts: true, query_failures: true, budget: 2, ..NONE };
    let old = Rules { three_valued_role: false, ..Rules::new() };
    assert!(run("2: unknown role counts as not primary", old, faults, HORIZON, DEPTH).is_some());
    assert!(run("2: new rules", Rules::new(), faults, HORIZON, DEPTH).is_none());
}

#[test]
fn finding_3_block_in_memory_is_caught() {
    let faults = Faults { controller_restarts: true, fence_lost: true, cuts: true, budget: 3, ..NONE };
    let old = Rules { store_block: false, ..Rules::new() };
    assert!(run("3: renewal block in the controller's memory", old, faults, HORIZON, DEPTH).is_some());
    assert!(run("3: new rules", Rules::new(), faults, HORIZON, DEPTH).is_none());
}

#[test]
fn frozen_means_no_automatic_role_change_but_an_operator_failover_runs() {
    // Freeze and unfreeze at any instant, failovers of both origins, one
    // cut or delayed message or controller restart per run.
    let faults = Faults { freeze: true, cuts: true, hold: true, controller_restarts: true, budget: 1, ..NONE };
    let sys = Sys { rules: Rules::new(), faults, horizon: HORIZON, margin: MARGIN };
    let (found, operator, _) = check_freeze(sys, DEPTH);
    assert!(found.is_none(), "{}", found.unwrap_or_default());
    assert!(operator, "no run had an operator's failover promote b while frozen");
    // Without the gate, the checker finds an automatic failover while frozen.
    let old = Rules { freeze_gate: false, ..Rules::new() };
    let sys = Sys { rules: old, faults: Faults { budget: 0, ..faults }, horizon: HORIZON, margin: MARGIN };
    let (found, _, _) = check_freeze(sys, DEPTH);
    assert!(found.is_some_and(|t| t.starts_with(FROZEN_NO_AUTO)), "no gate: the violation is not found");
}

const NONE: Faults = Faults {
    cuts: false,
    hold: false,
    agent_restarts: false,
    controller_restarts: false,
    query_failures: false,
    fence_lost: false,
    drift: false,
    freeze: false,
    budget: 0,
};
