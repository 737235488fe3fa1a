//! The safety rules every role change and every route is checked against,
//! as pure functions: the controller calls them on what it read from the
//! store, and the store transaction that makes the change repeats what can
//! be repeated there (the freeze keys are checked absent, the state key at
//! the revision the decision read), so a freeze set or an epoch raised
//! between the check and the write refuses the write.
//!
//! A refusal names its [`Rule`]; the workflow journals it, the event and
//! the API error carry it.
//!
//! | rule | what it refuses |
//! | --- | --- |
//! | `one-writable-primary` | naming a new primary while the store still names another one that is not known stopped (a failover's fence epoch names none; a switchover's old primary stopped with its shutdown checkpoint) |
//! | `route-epoch-primary` | publishing a route to a node the current epoch does not name, or of another epoch |
//! | `rpo-lag` | promoting a node lagging past the tier's RPO (or of unknown lag) without the journalled `--allow-data-loss` (or the tier's `availability_over_rpo`) |
//! | `freeze` | starting an automatic role change (a failover the controller decided) while the cluster or every cluster is frozen; an operator's explicit one passes |

use std::fmt;

use pgdr_model::{Epoch, NodeName};
use serde::{Deserialize, Serialize};

use crate::renewal::StoreView;

/// One safety rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    OneWritablePrimary,
    RouteEpochPrimary,
    RpoLag,
    Freeze,
}

impl Rule {
    pub const ALL: [Rule; 4] = [Rule::OneWritablePrimary, Rule::RouteEpochPrimary, Rule::RpoLag, Rule::Freeze];

    pub fn name(self) -> &'static str {
        match self {
            Rule::OneWritablePrimary => "one-writable-primary",
            Rule::RouteEpochPrimary => "route-epoch-primary",
            Rule::RpoLag => "rpo-lag",
            Rule::Freeze => "freeze",
        }
    }

    /// What the rule asserts, in one line.
    pub fn describe(self) -> &'static str {
        match self {
            Rule::OneWritablePrimary => {
                "at most one writable primary per cluster: a new primary is named only once the store names none (a failover's fence) or the old one stopped (a switchover)"
            }
            Rule::RouteEpochPrimary => "proxies route only to the node the current epoch names",
            Rule::RpoLag => {
                "no promotion of a node lagging past the tier's RPO (or of unknown lag) without the journalled --allow-data-loss or availability_over_rpo"
            }
            Rule::Freeze => {
                "a frozen cluster (or a global freeze) gets no automatic role change; an operator's switchover or failover still runs"
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A change or route a rule refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Refusal {
    pub rule: Rule,
    pub why: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused by rule {}: {}", self.rule, self.why)
    }
}

/// Who asked for a role change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The controller decided it (an outage verdict).
    Automatic,
    /// An operator asked through the API or the CLI.
    Operator,
}

/// Which freeze switches are on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Frozen {
    pub global: bool,
    pub cluster: bool,
}

impl Frozen {
    pub fn any(self) -> bool {
        self.global || self.cluster
    }
}

/// The gating rule: may a role change of this origin start?
pub fn admit(origin: Origin, frozen: Frozen) -> Result<(), Refusal> {
    match origin {
        Origin::Operator => Ok(()),
        Origin::Automatic if frozen.any() => Err(Refusal {
            rule: Rule::Freeze,
            why: format!(
                "{} frozen: automatic role changes are off until unfrozen (an operator's switchover or failover still runs)",
                if frozen.cluster { "the cluster is" } else { "every cluster is (global freeze)" }
            ),
        }),
        Origin::Automatic => Ok(()),
    }
}

/// What a promotion is decided on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion<'a> {
    /// The state the promotion replaces, as read.
    pub state: &'a StoreView,
    pub new_primary: &'a NodeName,
    /// The primary the state names was stopped by this change (a
    /// switchover's `stop_old_primary` read its shutdown checkpoint).
    pub old_stopped: bool,
    /// The candidate's lag is past the tier's RPO, or unknown.
    pub past_rpo: bool,
    /// `--allow-data-loss` or the tier's `availability_over_rpo`,
    /// journalled in the workflow's parameters or choice.
    pub data_loss_allowed: bool,
}

/// The rules a promotion must pass before its epoch is written.
pub fn check_promotion(p: &Promotion<'_>) -> Result<(), Refusal> {
    match &p.state.primary {
        Some(cur) if cur == p.new_primary => {}
        Some(cur) if !p.old_stopped => {
            return Err(Refusal {
                rule: Rule::OneWritablePrimary,
                why: format!(
                    "epoch {} names {cur} as primary and it is not known stopped or fenced: {} would be a second writable primary",
                    p.state.epoch, p.new_primary
                ),
            });
        }
        _ => {}
    }
    if p.past_rpo && !p.data_loss_allowed {
        return Err(Refusal {
            rule: Rule::RpoLag,
            why: format!(
                "{} lags past the tier's RPO (or its lag is unknown); promoting it needs --allow-data-loss",
                p.new_primary
            ),
        });
    }
    Ok(())
}

/// The routing rule: a route names the current epoch and its primary.
pub fn check_route(state: &StoreView, epoch: Epoch, primary: Option<&NodeName>) -> Result<(), Refusal> {
    if epoch != state.epoch {
        return Err(Refusal {
            rule: Rule::RouteEpochPrimary,
            why: format!("the route is of epoch {epoch} but the store is at epoch {}", state.epoch),
        });
    }
    if let Some(p) = primary
        && state.primary.as_ref() != Some(p)
    {
        return Err(Refusal {
            rule: Rule::RouteEpochPrimary,
            why: format!(
                "the route names {p} but epoch {} names {}",
                state.epoch,
                state.primary.as_ref().map(|n| n.as_str()).unwrap_or("no primary")
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        NodeName::new(s)
    }

    #[test]
    fn freeze_gates_automatic_changes_only() {
        let off = Frozen::default();
        assert_eq!(admit(Origin::Automatic, off), Ok(()));
        for frozen in [Frozen { global: true, cluster: false }, Frozen { global: false, cluster: true }] {
            let r = admit(Origin::Automatic, frozen).expect_err("frozen");
            assert_eq!(r.rule, Rule::Freeze);
            assert!(r.to_string().starts_with("refused by rule freeze: "), "{r}");
            assert_eq!(admit(Origin::Operator, frozen), Ok(()));
        }
    }

    #[test]
    fn a_second_writable_primary_is_refused() {
        let a = n("a");
        let b = n("b");
        let named = StoreView { epoch: Epoch(3), primary: Some(a.clone()) };
        let p = |state, old_stopped| Promotion {
            state,
            new_primary: &b,
            old_stopped,
            past_rpo: false,
            data_loss_allowed: false,
        };
        assert_eq!(check_promotion(&p(&named, false)).expect_err("a still named").rule, Rule::OneWritablePrimary);
        assert_eq!(check_promotion(&p(&named, true)), Ok(()));
        let fenced = StoreView { epoch: Epoch(4), primary: None };
        assert_eq!(check_promotion(&p(&fenced, false)), Ok(()));
        // Naming the same node again (a resumed step) is no second primary.
        let again = StoreView { epoch: Epoch(5), primary: Some(b.clone()) };
        assert_eq!(check_promotion(&p(&again, false)), Ok(()));
    }

    #[test]
    fn lag_past_the_rpo_needs_data_loss_allowed() {
        let b = n("b");
        let fenced = StoreView { epoch: Epoch(4), primary: None };
        let mut p =
            Promotion { state: &fenced, new_primary: &b, old_stopped: false, past_rpo: true, data_loss_allowed: false };
        assert_eq!(check_promotion(&p).expect_err("lagging").rule, Rule::RpoLag);
        p.data_loss_allowed = true;
        assert_eq!(check_promotion(&p), Ok(()));
    }

    #[test]
    fn routes_follow_the_epoch() {
        let s = StoreView { epoch: Epoch(4), primary: Some(n("b")) };
        assert_eq!(check_route(&s, Epoch(4), Some(&n("b"))), Ok(()));
        assert_eq!(check_route(&s, Epoch(4), None), Ok(()));
        assert_eq!(check_route(&s, Epoch(3), Some(&n("b"))).expect_err("old epoch").rule, Rule::RouteEpochPrimary);
        assert_eq!(check_route(&s, Epoch(4), Some(&n("a"))).expect_err("not named").rule, Rule::RouteEpochPrimary);
        let none = StoreView { epoch: Epoch(5), primary: None };
        assert!(check_route(&none, Epoch(5), Some(&n("b"))).is_err());
    }

    #[test]
    fn every_rule_has_a_distinct_name() {
        let names: std::collections::BTreeSet<_> = Rule::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Rule::ALL.len());
        for r in Rule::ALL {
            assert_eq!(serde_json::to_value(r).ok(), Some(serde_json::Value::String(r.name().into())));
        }
    }
}
