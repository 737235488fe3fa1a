//! Choosing the node to promote, without IO.
//!
//! Rules, in order: only healthy replicas (reachable, in recovery); never one
//! lagging past the tier's RPO, or whose lag is unknown (after a controller
//! restart every lag is), unless the cluster says availability first or an
//! operator passed `--allow-data-loss` (the choice then says so, and the
//! workflow journals it). In synchronous mode (`ANY k` of the stored set of
//! n standbys) the lag does not matter but the set does: only a member, and
//! only once n-k+1 members answered (every acknowledged commit is on k
//! members, so at least one of those that answered has it); the most
//! advanced of them has every acknowledged commit.
//!
//! Among the rest, the most advanced WAL position wins; among the nodes
//! that have it, the cluster's `region_preference`, then the primary's own
//! region, then the name (so the choice is deterministic). A node the
//! preference ranks higher that lacks at most `catch_up_max_bytes` is
//! chosen anyway, with the most advanced node to fetch the missing WAL from
//! before it is promoted (as pg_auto_failover does): the choice says so
//! and why.

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
    /// Synchronous mode: the stored set the primary's commits waited on.
    pub sync: Option<SyncSet>,
    /// How far behind the most advanced node a preferred node may be and
    /// still be chosen, fetching the difference first (0: never).
    pub catch_up_max_bytes: u64,
}

/// The synchronous standby set as stored before it was applied:
/// `ANY quorum (members)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SyncSet {
    pub quorum: u32,
    pub members: Vec<NodeName>,
}

impl SyncSet {
    /// How many members a failover must reach to be sure one of them has
    /// every acknowledged commit: n - k + 1.
    pub fn needed(&self) -> usize {
        (self.members.len() + 1).saturating_sub(self.quorum as usize)
    }
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
    /// Fetch WAL from this node (the most advanced) up to `catch_up_to`
    /// before promoting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up_from: Option<NodeName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up_to: Option<Lsn>,
    /// Why this node, in one sentence for the journal.
    pub why: String,
    pub considered: Vec<Considered>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChoiceError {
    #[error("no candidate to promote: {}", summary(.considered))]
    NoCandidate { considered: Vec<Considered> },
    #[error(
        "refused by rule rpo-lag: every healthy replica lags past the tier's RPO ({}): {}; fail over anyway with --allow-data-loss, or set availability_over_rpo",
        pgdr_model::format_duration(*.rpo),
        summary(.considered)
    )]
    PastRpo { rpo: Duration, considered: Vec<Considered> },
    #[error(
        "only {reached} of the {members} synchronous standbys answered, {needed} are needed to be sure one has every acknowledged commit: {}; fail over anyway with --allow-data-loss",
        summary(.considered)
    )]
    SyncQuorumNotReached { reached: usize, needed: usize, members: usize, considered: Vec<Considered> },
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
    let overridden = policy.availability_over_rpo || policy.allow_data_loss;
    // Synchronous mode: members that answered with a position.
    let mut reached = 0usize;
    for n in nodes {
        if n.node == policy.old_primary {
            continue;
        }
        let member = policy.sync.as_ref().map(|s| s.members.contains(&n.node));
        if member == Some(true) && n.reachable && n.role == Role::Replica && n.lsn.is_some() {
            reached += 1;
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
        let past = match member {
            // A member of the synchronous set: RPO 0 by the quorum rule.
            Some(true) => false,
            Some(false) => true,
            // Unknown lag is past the RPO: nothing shows it is within.
            None => n.lag_seconds.is_none_or(|l| l > policy.rpo.as_secs_f64()),
        };
        if past && !overridden {
            let reason = match (member, n.lag_seconds) {
                (Some(false), _) => "not in the stored synchronous standby set".to_owned(),
                (_, Some(l)) => {
                    format!("lags {l:.1}s, past the RPO of {}", pgdr_model::format_duration(policy.rpo))
                }
                (_, None) => "lag unknown: counted as past the RPO".to_owned(),
            };
            considered.push(reject(&reason));
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
    if let Some(sync) = &policy.sync
        && reached < sync.needed()
        && !overridden
    {
        return Err(ChoiceError::SyncQuorumNotReached {
            reached,
            needed: sync.needed(),
            members: sync.members.len(),
            considered,
        });
    }
    let Some(max) = eligible.iter().map(|(n, _)| n.lsn.unwrap_or(Lsn::ZERO)).max() else {
        return Err(if past_rpo_only.is_empty() {
            ChoiceError::NoCandidate { considered }
        } else {
            ChoiceError::PastRpo { rpo: policy.rpo, considered }
        });
    };
    // The preference among nodes, position aside.
    let preference = |n: &CandidateInfo| {
        let pref = policy.region_preference.iter().position(|r| *r == n.region).unwrap_or(usize::MAX);
        let home = usize::from(n.region != policy.primary_region);
        (pref, home, n.node.clone())
    };
    let lacks = |n: &CandidateInfo| max.bytes_since(n.lsn.unwrap_or(Lsn::ZERO));
    let complete = eligible.iter().filter(|(n, _)| lacks(n) == 0).min_by_key(|(n, _)| preference(n));
    let near = eligible
        .iter()
        .filter(|(n, _)| n.lsn.is_some() && lacks(n) <= policy.catch_up_max_bytes)
        .min_by_key(|(n, _)| preference(n));
    let Some(&(best, best_past)) = complete else {
        return Err(ChoiceError::NoCandidate { considered });
    };
    let choice = |n: &CandidateInfo, past: bool, from: Option<&CandidateInfo>, why: String| Choice {
        node: n.node.clone(),
        region: n.region.clone(),
        lsn: n.lsn,
        cross_region: n.region != policy.primary_region,
        past_rpo: past,
        catch_up_from: from.map(|f| f.node.clone()),
        catch_up_to: from.and_then(|f| f.lsn),
        why,
        considered: considered.clone(),
    };
    match near {
        // Preferred over every complete node, so it lacks something.
        Some(&(n, past)) if preference(n) < preference(best) => Ok(choice(
            n,
            past || best_past,
            Some(best),
            format!(
                "{} is preferred ({}) and lacks {} bytes of {} (at {max}), within catch_up_max_bytes ({}): it fetches them from {} first",
                n.node,
                if n.region == policy.primary_region { "the primary's region" } else { "region_preference" },
                lacks(n),
                best.node,
                policy.catch_up_max_bytes,
                best.node
            ),
        )),
        _ => Ok(choice(
            best,
            best_past,
            None,
            format!("{} has the most advanced position ({max}) and is the preferred of those that do", best.node),
        )),
    }
}

/// Whether a replica at replay position `replayed` has replayed the WAL
/// record that starts at `record` (a shutdown checkpoint): replaying a
/// record moves the position to its end, past its start.
pub fn has_replayed(replayed: Option<Lsn>, record: Lsn) -> bool {
    replayed.is_some_and(|r| r > record)
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
            sync: None,
            catch_up_max_bytes: 0,
        }
    }

    #[test]
    fn replayed_means_past_the_record_start() {
        assert!(!has_replayed(None, Lsn(100)));
        assert!(!has_replayed(Some(Lsn(100)), Lsn(100)));
        assert!(has_replayed(Some(Lsn(140)), Lsn(100)));
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
        assert!(err.to_string().starts_with("refused by rule rpo-lag: "), "{err}");
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
    #[test]
    fn unknown_lag_is_past_the_rpo() {
        let mut r = node("r", "east", 100, 0.0);
        r.lag_seconds = None;
        let err = choose(std::slice::from_ref(&r), &policy()).expect_err("unknown lag");
        assert!(matches!(err, ChoiceError::PastRpo { .. }), "{err}");
        assert!(err.to_string().contains("lag unknown"), "{err}");
        let mut p = policy();
        p.allow_data_loss = true;
        assert!(choose(&[r], &p).expect("allowed").past_rpo);
    }

    #[test]
    fn home_region_catches_up_within_the_bound() {
        let nodes = vec![node("r", "east", 100, 0.1), node("s", "west", 200, 0.3)];
        let mut p = policy();
        p.catch_up_max_bytes = 100;
        let c = choose(&nodes, &p).expect("choice");
        assert_eq!(c.node.as_str(), "r");
        assert!(!c.cross_region);
        assert_eq!(c.catch_up_from, Some(NodeName::new("s")));
        assert_eq!(c.catch_up_to, Some(Lsn(200)));
        assert!(c.why.contains("fetches them from s"), "{}", c.why);
        // Past the bound: the most advanced wins, across regions.
        p.catch_up_max_bytes = 99;
        let c = choose(&nodes, &p).expect("choice");
        assert_eq!(c.node.as_str(), "s");
        assert_eq!(c.catch_up_from, None);
        // Complete in the home region: no catch-up.
        let nodes = vec![node("r", "east", 200, 0.1), node("s", "west", 200, 0.3)];
        let c = choose(&nodes, &p).expect("choice");
        assert_eq!((c.node.as_str(), c.catch_up_from.clone()), ("r", None));
    }

    #[test]
    fn sync_mode_promotes_a_member_once_the_quorum_answered() {
        let mut p = policy();
        p.sync = Some(SyncSet { quorum: 1, members: vec!["r".into(), "s".into()] });
        // t is more advanced but not in the set; lags are unknown (a
        // restarted controller) and do not matter for members.
        let mut r = node("r", "east", 100, 0.0);
        r.lag_seconds = None;
        let mut s = node("s", "west", 150, 0.0);
        s.lag_seconds = None;
        let t = node("t", "east", 300, 0.0);
        let c = choose(&[r.clone(), s.clone(), t.clone()], &p).expect("choice");
        assert_eq!(c.node.as_str(), "s");
        assert!(!c.past_rpo);
        // ANY 1 of 2: both members must answer.
        let mut gone = s.clone();
        gone.reachable = false;
        let err = choose(&[r.clone(), gone, t.clone()], &p).expect_err("one of two members");
        assert!(matches!(err, ChoiceError::SyncQuorumNotReached { reached: 1, needed: 2, .. }), "{err}");
        // ANY 2 of 2: one member is enough.
        p.sync = Some(SyncSet { quorum: 2, members: vec!["r".into(), "s".into()] });
        let mut gone = s;
        gone.reachable = false;
        assert_eq!(choose(&[r, gone, t], &p).expect("choice").node.as_str(), "r");
    }
}
