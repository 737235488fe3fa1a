//! Where the leading controller should run: in the region of the primaries
//! it keeps alive.
//!
//! A primary's agent keeps its lease through the leading controller (or a
//! majority of peer agents, which a two-region deployment may not give the
//! primary's region). If the leader runs in another region and that region
//! is lost, the primary gets no renewal until a controller elsewhere has
//! taken over, and may fence itself: a role change for a fault that never
//! touched it. So a leader outside the region that holds most primaries
//! hands leadership to a controller standing by in that region, once things
//! are quiet: no role change under way, every primary holding its lease,
//! the other controller seen standing by for a while, and this one leading
//! for a while (so two controllers never pass leadership back and forth).
//!
//! Safety does not depend on this: a handover is a resignation, after which
//! the next leader starts from the store like any other (every write
//! fenced, renewals granted from the stored epoch and primary).

use std::collections::BTreeMap;

use crate::At;

/// One cluster as the leader sees it in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSeen {
    /// The region of the node the store names primary (`None`: no primary).
    pub primary_region: Option<String>,
    /// A role change holds the cluster's lock.
    pub locked: bool,
    /// The primary's agent holds a current lease.
    pub leased: bool,
}

/// A controller standing by (its presence key is alive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandbySeen {
    pub instance: String,
    pub region: String,
    /// When this leader first saw it standing by (its own clock).
    pub since: At,
}

/// What the leader knows when it decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub now: At,
    /// This controller's region.
    pub region: String,
    /// When this controller started leading.
    pub leading_since: At,
    pub clusters: Vec<ClusterSeen>,
    pub standbys: Vec<StandbySeen>,
}

/// The decision, with its reason (journalled when it hands over).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Stay(String),
    HandTo { instance: String, reason: String },
}

/// Whether the leader should hand leadership over now. `settle_ms`: how
/// long the leader must have led and the other controller must have stood
/// by first.
pub fn follow_primaries(view: &View, settle_ms: u64) -> Decision {
    if view.clusters.is_empty() {
        return Decision::Stay("no cluster".into());
    }
    if let Some(i) = view.clusters.iter().position(|c| c.locked) {
        return Decision::Stay(format!("cluster {} has a role change under way", i + 1));
    }
    if view.clusters.iter().any(|c| c.primary_region.is_none() || !c.leased) {
        return Decision::Stay("a cluster has no primary holding its lease".into());
    }
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &view.clusters {
        *count.entry(c.primary_region.as_deref().unwrap_or_default()).or_default() += 1;
    }
    let most = count.values().copied().max().unwrap_or(0);
    let mine = count.get(view.region.as_str()).copied().unwrap_or(0);
    if mine == most {
        return Decision::Stay(format!("this controller's region {} holds the most primaries ({mine})", view.region));
    }
    // Only a region that holds strictly the most primaries: a tie stays put.
    let leaders: Vec<&str> = count.iter().filter(|(_, n)| **n == most).map(|(r, _)| *r).collect();
    let [target] = leaders[..] else {
        return Decision::Stay(format!("regions {} hold as many primaries", leaders.join(", ")));
    };
    if view.now.since(view.leading_since) < settle_ms {
        return Decision::Stay("leading for less than the settle time".into());
    }
    let ready = view
        .standbys
        .iter()
        .filter(|s| s.region == target && view.now.since(s.since) >= settle_ms)
        .min_by(|a, b| (a.since, &a.instance).cmp(&(b.since, &b.instance)));
    match ready {
        Some(s) => Decision::HandTo {
            instance: s.instance.clone(),
            reason: format!(
                "region {target} holds {most} of {} primaries and this controller runs in {} ({mine}): a controller there keeps them alive if {} is lost",
                view.clusters.len(),
                view.region,
                view.region
            ),
        },
        None => Decision::Stay(format!("no controller has stood by in region {target} for the settle time")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(region: &str) -> ClusterSeen {
        ClusterSeen { primary_region: Some(region.into()), locked: false, leased: true }
    }

    fn view(clusters: Vec<ClusterSeen>, standbys: Vec<StandbySeen>) -> View {
        View { now: At(20_000), region: "west".into(), leading_since: At(0), clusters, standbys }
    }

    fn standby(name: &str, region: &str, since: u64) -> StandbySeen {
        StandbySeen { instance: name.into(), region: region.into(), since: At(since) }
    }

    #[test]
    fn hands_over_to_the_primarys_region_once_settled() {
        let v = view(vec![cluster("east")], vec![standby("east", "east", 1_000)]);
        assert!(matches!(follow_primaries(&v, 6_000), Decision::HandTo { ref instance, .. } if instance == "east"));
    }

    #[test]
    fn stays_while_anything_is_unsettled() {
        let s = vec![standby("east", "east", 1_000)];
        // Leading in the primary's region already.
        let mut v = view(vec![cluster("west")], s.clone());
        assert!(matches!(follow_primaries(&v, 6_000), Decision::Stay(_)));
        // A role change under way, no primary, or a primary without its lease.
        for c in [
            ClusterSeen { locked: true, ..cluster("east") },
            ClusterSeen { primary_region: None, ..cluster("east") },
            ClusterSeen { leased: false, ..cluster("east") },
        ] {
            v = view(vec![c], s.clone());
            assert!(matches!(follow_primaries(&v, 6_000), Decision::Stay(_)), "{v:?}");
        }
        // Leading for less than the settle time.
        v = view(vec![cluster("east")], s.clone());
        v.leading_since = At(15_000);
        assert!(matches!(follow_primaries(&v, 6_000), Decision::Stay(_)));
        // The standby there appeared too recently, or none stands by there.
        v = view(vec![cluster("east")], vec![standby("east", "east", 16_000)]);
        assert!(matches!(follow_primaries(&v, 6_000), Decision::Stay(_)));
        v = view(vec![cluster("east")], vec![standby("south", "south", 0)]);
        assert!(matches!(follow_primaries(&v, 6_000), Decision::Stay(_)));
        // A tie between regions.
        v = view(vec![cluster("east"), cluster("south")], vec![standby("east", "east", 0)]);
        assert!(matches!(follow_primaries(&v, 6_000), Decision::Stay(_)));
        // No cluster at all.
        v = view(vec![], s);
        assert!(matches!(follow_primaries(&v, 6_000), Decision::Stay(_)));
    }

    #[test]
    fn the_region_with_most_primaries_wins_and_the_longest_standing_standby_takes_it() {
        let v = view(
            vec![cluster("east"), cluster("east"), cluster("west")],
            vec![standby("east-b", "east", 2_000), standby("east-a", "east", 1_000)],
        );
        assert!(matches!(follow_primaries(&v, 6_000), Decision::HandTo { ref instance, .. } if instance == "east-a"));
    }

    /// Two controllers following the rule never pass leadership back and
    /// forth while the primaries stay where they are: once it is in the
    /// region with the most primaries, the leader stays.
    #[test]
    fn no_ping_pong() {
        let clusters = vec![cluster("east"), cluster("west"), cluster("east")];
        let mut v = View {
            now: At(100_000),
            region: "east".into(),
            leading_since: At(0),
            clusters,
            standbys: vec![standby("west", "west", 0)],
        };
        assert!(matches!(follow_primaries(&v, 6_000), Decision::Stay(_)));
        v.region = "west".into();
        v.standbys = vec![standby("east", "east", 0)];
        assert!(matches!(follow_primaries(&v, 6_000), Decision::HandTo { .. }));
    }
}
