//! Choosing the node to promote, without IO.
//!
//! Rules, in order: only healthy replicas (reachable, in recovery); never one
//! lagging past the tier's RPO unless the cluster says availability first or
//! an operator passed `--allow-data-loss` (the choice then says so, and the
//! workflow journals it); among the rest the most advanced WAL position wins,
//! then the cluster's `region_preference`, then the primary's own region over
//! other regions, then the name (so the choice is deterministic).

use std::time::Duration;

use pgdr_model::{Lsn, NodeName, RegionName, Role};
use serde::Serialize;

/// What the controller knows of one possible candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CandidateInfo {
    pub node: NodeName,
    pub region: RegionName,
    /// The agent answered its last status request.
    pub reachable: bool,
    pub role: Role,
    /// The furthest WAL this node has (received or replayed).
    pub lsn: Option<Lsn>,
    /// Replication lag in seconds, last known (from the replicated heartbeat).
    pub lag_seconds: Option<f64>,
}

/// Where an operator asked the new primary to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Target {
    Node(NodeName),
    Region(RegionName),
}

/// The cluster's rules for a choice.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The node being replaced; never a candidate.
    pub old_primary: NodeName,
    pub primary_region: RegionName,
    pub region_preference: Vec<RegionName>,
    pub rpo: Duration,
    pub availability_over_rpo: bool,
    pub allow_data_loss: bool,
    pub target: Option<Target>,
}

/// Why a node was or was not chosen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Considered {
    pub node: NodeName,
    pub eligible: bool,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    pub node: NodeName,
    pub region: RegionName,
    pub lsn: Option<Lsn>,
    pub cross_region: bool,
    /// The node lags past the RPO and was taken anyway (policy or operator).
    pub past_rpo: bool,
    pub considered: Vec<Considered>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChoiceError {
    #[error("no candidate to promote: {}", summary(.considered))]
    NoCandidate { considered: Vec<Considered> },
    #[error(
        "every healthy replica lags past the tier's RPO ({}): {}; fail over anyway with --allow-data-loss, or set availability_over_rpo",
        pgdr_model::format_duration(*.rpo),
        summary(.considered)
    )]
    PastRpo { rpo: Duration, considered: Vec<Considered> },
}

fn summary(c: &[Considered]) -> String {
    if c.is_empty() {
        return "the cluster has no other node".to_owned();
    }
    c.iter().map(|c| format!("{} ({})", c.node, c.reason)).collect::<Vec<_>>().join(", ")
}

/// Picks the node to promote, or says why none can be.
pub fn choose(nodes: &[CandidateInfo], policy: &Policy) -> Result<Choice, ChoiceError> {
    let mut considered = Vec::new();
    let mut eligible: Vec<(&CandidateInfo, bool)> = Vec::new();
    let mut past_rpo_only: Vec<&CandidateInfo> = Vec::new();
    for n in nodes {
        if n.node == policy.old_primary {
            continue;
        }
        let reject = |reason: &str| Considered { node: n.node.clone(), eligible: false, reason: reason.to_owned() };
        match &policy.target {
            Some(Target::Node(t)) if *t != n.node => {
                considered.push(reject("not the requested target"));
                continue;
            }
            Some(Target::Region(r)) if *r != n.region => {
                considered.push(reject("not in the requested region"));
                continue;
            }
            _ => {}
        }
        if !n.reachable {
            considered.push(reject("agent unreachable"));
            continue;
        }
        if n.role != Role::Replica {
            considered.push(reject(&format!("role is {}", n.role)));
            continue;
        }
        let past = n.lag_seconds.is_some_and(|l| l > policy.rpo.as_secs_f64());
        if past && !(policy.availability_over_rpo || policy.allow_data_loss) {
            considered.push(reject(&format!(
                "lags {:.1}s, past the RPO of {}",
                n.lag_seconds.unwrap_or_default(),
                pgdr_model::format_duration(policy.rpo)
            )));
            past_rpo_only.push(n);
            continue;
        }
        considered.push(Considered {
            node: n.node.clone(),
            eligible: true,
            reason: match n.lsn {
                Some(l) => format!("healthy replica at {l}"),
                None => "healthy replica, position unknown".to_owned(),
            },
        });
        eligible.push((n, past));
    }
    let rank = |n: &CandidateInfo| {
        let pref = policy.region_preference.iter().position(|r| *r == n.region).unwrap_or(usize::MAX);
        let home = usize::from(n.region != policy.primary_region);
        (std::cmp::Reverse(n.lsn.unwrap_or(Lsn::ZERO)), pref, home, n.node.clone())
    };
    eligible.sort_by_key(|(n, _)| rank(n));
    match eligible.first() {
        Some((n, past)) => Ok(Choice {
            node: n.node.clone(),
            region: n.region.clone(),
            lsn: n.lsn,
            cross_region: n.region != policy.primary_region,
            past_rpo: *past,
            considered,
        }),
        None if !past_rpo_only.is_empty() => Err(ChoiceError::PastRpo { rpo: policy.rpo, considered }),
        None => Err(ChoiceError::NoCandidate { considered }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, region: &str, lsn: u64, lag: f64) -> CandidateInfo {
        CandidateInfo {
            node: name.into(),
            region: region.into(),
            reachable: true,
            role: Role::Replica,
            lsn: Some(Lsn(lsn)),
            lag_seconds: Some(lag),
        }
    }

    fn policy() -> Policy {
        Policy {
            old_primary: "p".into(),
            primary_region: "east".into(),
            region_preference: vec![],
            rpo: Duration::from_secs(5),
            availability_over_rpo: false,
            allow_data_loss: false,
            target: None,
        }
    }

    #[test]
    fn most_advanced_wins_then_home_region() {
        let nodes = vec![node("p", "east", 900, 0.0), node("r", "east", 100, 0.1), node("s", "west", 200, 0.3)];
        let c = choose(&nodes, &policy()).expect("choice");
        assert_eq!(c.node.as_str(), "s");
        assert!(c.cross_region);
        let nodes = vec![node("r", "east", 200, 0.1), node("s", "west", 200, 0.3)];
        assert_eq!(choose(&nodes, &policy()).expect("choice").node.as_str(), "r");
        let mut p = policy();
        p.region_preference = vec!["west".into()];
        assert_eq!(choose(&nodes, &p).expect("choice").node.as_str(), "s");
    }

    #[test]
    fn never_past_rpo_unless_allowed() {
        let nodes = vec![node("r", "east", 100, 9.0), node("s", "west", 50, 2.0)];
        assert_eq!(choose(&nodes, &policy()).expect("choice").node.as_str(), "s");
        let nodes = vec![node("r", "east", 100, 9.0)];
        let err = choose(&nodes, &policy()).expect_err("past RPO");
        assert!(matches!(err, ChoiceError::PastRpo { .. }), "{err}");
        assert!(err.to_string().contains("--allow-data-loss"));
        let mut p = policy();
        p.allow_data_loss = true;
        let c = choose(&nodes, &p).expect("allowed");
        assert!(c.past_rpo);
        let mut p = policy();
        p.availability_over_rpo = true;
        assert!(choose(&nodes, &p).expect("availability first").past_rpo);
    }

    #[test]
    fn unhealthy_and_targets() {
        let mut down = node("r", "east", 300, 0.0);
        down.reachable = false;
        let mut primary = node("q", "east", 300, 0.0);
        primary.role = Role::Primary;
        let nodes = vec![down, primary, node("s", "west", 10, 0.0), node("t", "west", 20, 0.0)];
        assert_eq!(choose(&nodes, &policy()).expect("choice").node.as_str(), "t");
        let mut p = policy();
        p.target = Some(Target::Node("s".into()));
        assert_eq!(choose(&nodes, &p).expect("choice").node.as_str(), "s");
        p.target = Some(Target::Region("east".into()));
        let err = choose(&nodes, &p).expect_err("none healthy in east");
        assert!(err.to_string().contains("agent unreachable"), "{err}");
        assert!(matches!(choose(&[], &policy()), Err(ChoiceError::NoCandidate { .. })));
    }
}
