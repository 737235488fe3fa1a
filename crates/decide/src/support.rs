//! Whether an agent supports a primary whose lease lapsed, and the part of
//! an agent's state that survives its restart.
//!
//! A primary's agent that cannot renew its lease keeps PostgreSQL writable
//! only while a majority of its cluster's agents (itself included) support
//! it. A peer refuses when the request comes from another cluster, when the
//! requester's view of the members differs from its own (a majority of a
//! different member list is not a majority), when the requester's epoch is
//! older than the highest epoch this peer has recorded durably (a newer
//! primary exists), or when the controller withdrew its support for that
//! primary at that epoch or a newer one. Withdrawals and the epoch are
//! [`PeerDurable`]: written to the agent's epoch file before the
//! withdrawal is acknowledged, so a restarted agent still refuses.

use std::collections::BTreeMap;
use std::fmt;

use pgdr_model::{Epoch, NodeName};
use serde::{Deserialize, Serialize};

/// What an agent keeps across restarts (its epoch file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerDurable {
    /// The highest epoch this agent has seen: commands and support requests
    /// carrying an older one come from a deposed leader.
    pub epoch: Epoch,
    /// Support withdrawn by the controller: no support for that primary at
    /// that epoch or older.
    #[serde(default)]
    pub withdrawn: BTreeMap<NodeName, Epoch>,
}

impl PeerDurable {
    /// Records a withdrawal; `true` when it changed anything (then it must
    /// be written durably before it is acknowledged).
    pub fn withdraw(&mut self, primary: &NodeName, epoch: Epoch) -> bool {
        match self.withdrawn.get(primary) {
            Some(e) if *e >= epoch => false,
            _ => {
                self.withdrawn.insert(primary.clone(), epoch);
                true
            }
        }
    }

    /// Records a newer epoch; `true` when it was newer.
    pub fn see_epoch(&mut self, epoch: Epoch) -> bool {
        if epoch > self.epoch {
            self.epoch = epoch;
            true
        } else {
            false
        }
    }

    /// The support rule.
    pub fn support(&self, ask: &SupportAsk<'_>) -> Result<(), Refusal> {
        if !ask.same_cluster {
            return Err(Refusal::OtherCluster);
        }
        if ask.members != ask.my_members {
            return Err(Refusal::Members { theirs: ask.members.to_owned(), mine: ask.my_members.to_owned() });
        }
        if ask.epoch < self.epoch {
            return Err(Refusal::StaleEpoch { given: ask.epoch, seen: self.epoch });
        }
        if let Some(e) = self.withdrawn.get(ask.primary)
            && ask.epoch <= *e
        {
            return Err(Refusal::Withdrawn { at: *e });
        }
        Ok(())
    }
}

/// A support request as the rule sees it.
#[derive(Clone, Debug)]
pub struct SupportAsk<'a> {
    pub same_cluster: bool,
    pub primary: &'a NodeName,
    pub epoch: Epoch,
    /// The requester's membership digest ([`members_digest`]).
    pub members: &'a str,
    /// This agent's own.
    pub my_members: &'a str,
}

/// Why support was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    OtherCluster,
    Members { theirs: String, mine: String },
    StaleEpoch { given: Epoch, seen: Epoch },
    Withdrawn { at: Epoch },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::OtherCluster => f.write_str("the request names another cluster"),
            Refusal::Members { theirs, mine } => write!(
                f,
                "the requester's cluster members (digest {theirs}) differ from this agent's ({mine}): a majority of another member list is not a majority"
            ),
            Refusal::StaleEpoch { given, seen } => {
                write!(f, "epoch {given} is older than epoch {seen} this agent has recorded: a newer primary exists")
            }
            Refusal::Withdrawn { at } => write!(f, "support withdrawn by the controller (at epoch {at})"),
        }
    }
}

/// A digest of a cluster's member list (node names, order ignored): two
/// agents agree on the members when their digests are equal. FNV-1a, 64 bit,
/// hex: a consistency check, not a secret.
pub fn members_digest<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let mut names: Vec<&str> = names.into_iter().collect();
    names.sort_unstable();
    names.dedup();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for n in names {
        for b in n.bytes().chain(std::iter::once(0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// A majority of `n` agents.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask<'a>(primary: &'a NodeName, epoch: u64, members: &'a str) -> SupportAsk<'a> {
        SupportAsk { same_cluster: true, primary, epoch: Epoch(epoch), members, my_members: "m" }
    }

    #[test]
    fn the_rule() {
        let a = NodeName::new("a");
        let mut d = PeerDurable { epoch: Epoch(3), ..PeerDurable::default() };
        assert_eq!(d.support(&ask(&a, 3, "m")), Ok(()));
        assert_eq!(d.support(&ask(&a, 2, "m")), Err(Refusal::StaleEpoch { given: Epoch(2), seen: Epoch(3) }));
        assert!(matches!(d.support(&ask(&a, 3, "x")), Err(Refusal::Members { .. })));
        assert!(d.withdraw(&a, Epoch(3)));
        assert!(!d.withdraw(&a, Epoch(2)));
        assert_eq!(d.support(&ask(&a, 3, "m")), Err(Refusal::Withdrawn { at: Epoch(3) }));
        assert_eq!(d.support(&ask(&a, 4, "m")), Ok(()));
        assert_eq!(d.support(&ask(&NodeName::new("b"), 3, "m")), Ok(()));
        let mut other = ask(&a, 4, "m");
        other.same_cluster = false;
        assert_eq!(d.support(&other), Err(Refusal::OtherCluster));
    }

    #[test]
    fn digest_ignores_order() {
        assert_eq!(members_digest(["a", "b", "c"]), members_digest(["c", "a", "b"]));
        assert_ne!(members_digest(["a", "b", "c"]), members_digest(["a", "b"]));
        assert_ne!(members_digest(["ab", "c"]), members_digest(["a", "bc"]));
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
    }
}
