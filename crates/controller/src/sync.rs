//! Synchronous mode: the controller keeps `synchronous_standby_names` on the
//! primary as `ANY k (healthy replicas)`, so a commit is acknowledged only
//! once `k` replicas have it. With fewer than `k` healthy replicas it lists
//! every replica (commits wait rather than being acknowledged without one)
//! and reports the cluster degraded.
//!
//! The set is stored durably (`/pgdr/clusters/<c>/sync_standbys`) before it
//! is applied, as a superset of what the primary waits on at every instant:
//! a growing set is stored, then applied; a shrinking one applied, then
//! stored. A failover reads it back (a restarted controller too) and
//! promotes only a member once n-k+1 members answered
//! ([`crate::candidate::SyncSet`]). A new primary's set is stored and set
//! on it before it is promoted, so it never acknowledges a commit that no
//! standby has.

use pgdr_api::agent::Status;
use pgdr_config::Cluster;
use pgdr_model::{NodeName, Role};
use serde::{Deserialize, Serialize};

use crate::candidate::SyncSet;
use crate::runtime::Shared;

/// What the store holds: the primary the set is for, and the set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSync {
    pub primary: NodeName,
    pub set: SyncSet,
}

/// The set for `primary`, and whether the cluster runs degraded (fewer
/// healthy replicas than the quorum: every replica is listed and commits
/// wait).
pub fn standby_set(cluster: &Cluster, primary: &NodeName, healthy: &[NodeName], quorum: u32) -> (SyncSet, bool) {
    let mut members: Vec<NodeName> = healthy.iter().filter(|n| *n != primary).cloned().collect();
    let degraded = members.len() < quorum as usize;
    if degraded {
        members = cluster.nodes.iter().filter(|n| n.name != *primary).map(|n| n.name.clone()).collect();
    }
    members.sort();
    members.dedup();
    (SyncSet { quorum, members }, degraded)
}

/// The `synchronous_standby_names` value of a set.
pub fn setting(set: &SyncSet) -> String {
    let list: Vec<String> = set.members.iter().map(|n| format!("\"{n}\"")).collect();
    format!("ANY {} ({})", set.quorum, list.join(", "))
}

/// What to store before applying `next` while `stored` is in the store: a
/// set every commit acknowledged under either one satisfies (the union,
/// the smaller quorum). A set stored for another primary does not count.
pub fn before_apply(stored: Option<&StoredSync>, primary: &NodeName, next: &SyncSet) -> SyncSet {
    match stored {
        Some(s) if s.primary == *primary => {
            let mut members = s.set.members.clone();
            members.extend(next.members.iter().cloned());
            members.sort();
            members.dedup();
            SyncSet { quorum: s.set.quorum.min(next.quorum), members }
        }
        _ => next.clone(),
    }
}

/// The setting's value and whether the cluster runs degraded.
pub fn standby_names(cluster: &Cluster, primary: &NodeName, healthy: &[NodeName], quorum: u32) -> (String, bool) {
    let (set, degraded) = standby_set(cluster, primary, healthy, quorum);
    (setting(&set), degraded)
}

/// Healthy replicas: up, in recovery, streaming.
pub fn healthy(statuses: &std::collections::BTreeMap<NodeName, Result<Status, String>>) -> Vec<NodeName> {
    statuses
        .iter()
        .filter_map(|(n, s)| match s {
            Ok(s)
                if s.up
                    && s.role == Role::Replica
                    && s.wal_receiver.as_ref().is_some_and(|w| w.status == "streaming") =>
            {
                Some(n.clone())
            }
            _ => None,
        })
        .collect()
}

/// The stored set of a cluster, if any.
pub async fn stored(sh: &Shared, cluster: &Cluster) -> Result<Option<StoredSync>, String> {
    let key = pgdr_store::keys::sync_standbys(cluster.name.as_str());
    match sh.store.get(&key).await.map_err(|e| e.to_string())? {
        Some(v) => serde_json::from_slice(&v.value).map(Some).map_err(|e| format!("{key}: {e}")),
        None => Ok(None),
    }
}

async fn store(sh: &Shared, cluster: &Cluster, s: &StoredSync) -> Result<(), String> {
    let key = pgdr_store::keys::sync_standbys(cluster.name.as_str());
    let value = serde_json::to_vec(s).map_err(|e| e.to_string())?;
    sh.store.put(&key, value, None).await.map(|_| ()).map_err(|e| e.to_string())
}

/// Sets `synchronous_standby_names` on the primary when it differs, storing
/// the set first (see the module's doc). Returns whether the cluster is
/// degraded.
pub async fn apply(sh: &Shared, cluster: &Cluster, primary: &NodeName, quorum: u32) -> Result<bool, String> {
    let healthy = {
        let obs = sh.observed.lock().map_err(|e| e.to_string())?;
        obs.get(&cluster.name).map(|o| healthy(&o.statuses)).unwrap_or_default()
    };
    let (set, degraded) = standby_set(cluster, primary, &healthy, quorum);
    set_on(sh, cluster, primary, &set).await?;
    Ok(degraded)
}

/// Stores `set` for `primary` and sets it on that node (a primary, or a
/// replica about to be promoted: `ALTER SYSTEM` works in recovery).
pub async fn set_on(sh: &Shared, cluster: &Cluster, primary: &NodeName, set: &SyncSet) -> Result<(), String> {
    let node = cluster.node(primary.as_str()).ok_or("primary not in config")?;
    let value = setting(set);
    let client = crate::probe::connect(&sh.target(cluster, node), std::time::Duration::from_secs(2), "pgdr-sync")
        .await
        .map_err(|e| format!("{e:?}"))?;
    let current: String = client
        .query_one("select current_setting('synchronous_standby_names')", &[])
        .await
        .map_err(|e| detail(&e))?
        .get(0);
    let was = stored(sh, cluster).await?;
    let wanted = StoredSync { primary: primary.clone(), set: set.clone() };
    if current != value {
        let superset = StoredSync { primary: primary.clone(), set: before_apply(was.as_ref(), primary, set) };
        if was.as_ref() != Some(&superset) {
            store(sh, cluster, &superset).await?;
        }
        // Two statements: ALTER SYSTEM cannot run in the implicit
        // transaction of a multi-statement query.
        let sql = format!("alter system set synchronous_standby_names = '{}'", value.replace('\'', "''"));
        client.batch_execute(&sql).await.map_err(|e| detail(&e))?;
        client.batch_execute("select pg_reload_conf()").await.map_err(|e| detail(&e))?;
        // The reload is asynchronous: wait until a new session sees it.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let now: String = client
                .query_one("select current_setting('synchronous_standby_names')", &[])
                .await
                .map_err(|e| detail(&e))?
                .get(0);
            if now == value || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tracing::info!(cluster = %cluster.name, %primary, value, "synchronous_standby_names set");
    }
    if stored(sh, cluster).await?.as_ref() != Some(&wanted) {
        store(sh, cluster, &wanted).await?;
    }
    Ok(())
}

/// The server's message, not just "db error".
fn detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_list() {
        let cfg = pgdr_config::Config::parse(
            std::path::Path::new("t.toml"),
            r#"
[[regions]]
name = "east"
[[tiers]]
name = "t"
rpo = "0s"
rto = "10s"
[[clusters]]
name = "c"
tier = "t"
replication = "sync"
sync_quorum = 1
[[clusters.nodes]]
name = "a"
region = "east"
agent = "127.0.0.1:1"
host = "127.0.0.1"
port = 5001
[[clusters.nodes]]
name = "b"
region = "east"
agent = "127.0.0.1:2"
host = "127.0.0.1"
port = 5002
[[clusters.nodes]]
name = "d"
region = "east"
agent = "127.0.0.1:3"
host = "127.0.0.1"
port = 5003
"#,
        )
        .expect("config");
        let c = &cfg.clusters[0];
        let a = NodeName::new("a");
        assert_eq!(standby_names(c, &a, &[NodeName::new("b")], 1), ("ANY 1 (\"b\")".to_owned(), false));
        assert_eq!(standby_names(c, &a, &[], 1), ("ANY 1 (\"b\", \"d\")".to_owned(), true));
    }

    #[test]
    fn the_stored_set_covers_the_applied_one() {
        let (a, b, d) = (NodeName::new("a"), NodeName::new("b"), NodeName::new("d"));
        let set = |q: u32, m: &[&NodeName]| SyncSet { quorum: q, members: m.iter().map(|n| (*n).clone()).collect() };
        let stored = StoredSync { primary: a.clone(), set: set(1, &[&b]) };
        // Growing or changing: the union is stored first.
        assert_eq!(before_apply(Some(&stored), &a, &set(1, &[&d])), set(1, &[&b, &d]));
        assert_eq!(before_apply(Some(&stored), &a, &set(2, &[&b, &d])), set(1, &[&b, &d]));
        // A set stored for another primary does not count.
        assert_eq!(before_apply(Some(&stored), &b, &set(1, &[&a, &d])), set(1, &[&a, &d]));
        assert_eq!(before_apply(None, &a, &set(1, &[&d])), set(1, &[&d]));
        assert_eq!(set(1, &[&b, &d]).needed(), 2);
        assert_eq!(set(2, &[&b, &d]).needed(), 1);
    }
}
