//! Synchronous mode: the controller keeps `synchronous_standby_names` on the
//! primary as `ANY k (healthy replicas)`, so a commit is acknowledged only
//! once `k` replicas have it. With fewer than `k` healthy replicas it lists
//! every replica (commits wait rather than being acknowledged without one)
//! and reports the cluster degraded.

use pgdr_api::agent::Status;
use pgdr_config::Cluster;
use pgdr_model::{NodeName, Role};

use crate::runtime::Shared;

/// The setting's value and whether the cluster runs degraded.
pub fn standby_names(cluster: &Cluster, primary: &NodeName, healthy: &[NodeName], quorum: u32) -> (String, bool) {
    let mut names: Vec<String> = healthy.iter().filter(|n| *n != primary).map(|n| n.to_string()).collect();
    let degraded = names.len() < quorum as usize;
    if degraded {
        names = cluster.nodes.iter().filter(|n| n.name != *primary).map(|n| n.name.to_string()).collect();
    }
    names.sort();
    let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    (format!("ANY {quorum} ({})", list.join(", ")), degraded)
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

/// Sets `synchronous_standby_names` on the primary when it differs.
/// Returns whether the cluster is degraded.
pub async fn apply(sh: &Shared, cluster: &Cluster, primary: &NodeName, quorum: u32) -> Result<bool, String> {
    let node = cluster.node(primary.as_str()).ok_or("primary not in config")?;
    let healthy = {
        let obs = sh.observed.lock().map_err(|e| e.to_string())?;
        obs.get(&cluster.name).map(|o| healthy(&o.statuses)).unwrap_or_default()
    };
    let (value, degraded) = standby_names(cluster, primary, &healthy, quorum);
    let client = crate::probe::connect(&sh.target(cluster, node), std::time::Duration::from_secs(2), "pgdr-sync")
        .await
        .map_err(|e| format!("{e:?}"))?;
    let current: String = client
        .query_one("select current_setting('synchronous_standby_names')", &[])
        .await
        .map_err(|e| detail(&e))?
        .get(0);
    if current != value {
        // Two statements: ALTER SYSTEM cannot run in the implicit
        // transaction of a multi-statement query.
        let sql = format!("alter system set synchronous_standby_names = '{}'", value.replace('\'', "''"));
        client.batch_execute(&sql).await.map_err(|e| detail(&e))?;
        client.batch_execute("select pg_reload_conf()").await.map_err(|e| detail(&e))?;
        tracing::info!(cluster = %cluster.name, value, degraded, "synchronous_standby_names set");
    }
    Ok(degraded)
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
}
