//! The controller's renewal rule: a primary's agent renews its lease only
//! while the store names it primary.
//!
//! The rule reads the store, not the controller's memory: a failover raises
//! the epoch with no primary before it fences ([`fence_epoch`]), so every
//! controller, a restarted one included, refuses the old primary's
//! renewals from then on.

use pgdr_model::{Epoch, NodeName};

/// The cluster's state as stored (what survives a controller restart).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoreView {
    pub epoch: Epoch,
    /// `None` between the fence and the promotion of a failover.
    pub primary: Option<NodeName>,
}

/// Why a renewal is refused (the agent fences at once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused(pub String);

/// Grants `node`'s renewal (at the stored epoch) if the store names it
/// primary.
pub fn renew(state: &StoreView, node: &NodeName) -> Result<Epoch, Refused> {
    match &state.primary {
        Some(p) if p == node => Ok(state.epoch),
        Some(p) => Err(Refused(format!("{node} is not the primary at epoch {} (the primary is {p})", state.epoch))),
        None => Err(Refused(format!(
            "epoch {} names no primary: a failover is fencing the old one, {node} must stop",
            state.epoch
        ))),
    }
}

/// The state a failover writes before it fences `old_epoch`'s primary:
/// the next epoch, naming no primary. `None` when the store already moved
/// past `old_epoch` (this workflow wrote it earlier, or another did).
pub fn fence_epoch(state: &StoreView, old_epoch: Epoch) -> FenceEpoch {
    if state.epoch == old_epoch {
        FenceEpoch::Raise(StoreView { epoch: old_epoch.next(), primary: None })
    } else if state.epoch == old_epoch.next() && state.primary.is_none() {
        FenceEpoch::Already
    } else {
        FenceEpoch::Moved
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceEpoch {
    /// Write this (compare-and-set from `old_epoch`).
    Raise(StoreView),
    /// Done before (a resumed workflow).
    Already,
    /// Someone else changed the epoch: stop.
    Moved,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_once_the_fence_epoch_is_written() {
        let a = NodeName::new("a");
        let s = StoreView { epoch: Epoch(3), primary: Some(a.clone()) };
        assert_eq!(renew(&s, &a), Ok(Epoch(3)));
        assert!(renew(&s, &NodeName::new("b")).is_err());
        let FenceEpoch::Raise(f) = fence_epoch(&s, Epoch(3)) else { panic!("raise") };
        assert_eq!(f, StoreView { epoch: Epoch(4), primary: None });
        assert!(renew(&f, &a).is_err());
        assert_eq!(fence_epoch(&f, Epoch(3)), FenceEpoch::Already);
        assert_eq!(fence_epoch(&StoreView { epoch: Epoch(5), primary: Some(a) }, Epoch(3)), FenceEpoch::Moved);
    }
}
