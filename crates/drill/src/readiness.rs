//! Readiness checks: would a failover work right now?
//!
//! From SQL on every node and the config: every standby streaming and within
//! the tier's RPO, replication slots healthy, settings that must match do
//! (`max_connections`, `wal_level`, `wal_log_hints` or checksums for
//! `pg_rewind`, extensions available), each region of the cluster has a
//! proxy, backups fresh. Every finding says what to fix.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use pgdr_config::{Cluster, Config, Node};
use serde::{Deserialize, Serialize};

use crate::observer::connect_node;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Ok,
    Warning,
    Error,
}

/// One result of one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    pub cluster: String,
    pub check: String,
    pub node: Option<String>,
    pub message: String,
    /// What to do about it (empty when fine).
    pub fix: String,
}

/// Everything found for the clusters checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    pub findings: Vec<Finding>,
}

impl Readiness {
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

struct NodeFacts {
    in_recovery: bool,
    settings: BTreeMap<String, String>,
    extensions: BTreeSet<String>,
    available: BTreeSet<String>,
    /// On the primary: application_name → (state, replay lag seconds).
    replication: BTreeMap<String, (String, Option<f64>)>,
    /// On the primary: slot → (active, wal_status).
    slots: Vec<(String, bool, Option<String>)>,
    /// On a replica: wal receiver status.
    receiver: Option<String>,
}

async fn facts(cluster: &Cluster, node: &Node, tls: Option<&pgdr_config::Tls>) -> Result<NodeFacts, String> {
    let c = connect_node(cluster, node, Duration::from_secs(3), tls).await.map_err(|e| e.to_string())?;
    let q = |e: tokio_postgres::Error| e.to_string();
    let in_recovery: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(q)?.get(0);
    let mut settings = BTreeMap::new();
    for row in c
        .query(
            "SELECT name, setting FROM pg_settings WHERE name IN ('max_connections','wal_level','wal_log_hints','data_checksums','max_wal_senders','max_replication_slots','hot_standby','wal_keep_size','max_slot_wal_keep_size')",
            &[],
        )
        .await
        .map_err(q)?
    {
        settings.insert(row.get::<_, String>(0), row.get::<_, String>(1));
    }
    let extensions = c
        .query("SELECT extname::text FROM pg_extension", &[])
        .await
        .map_err(q)?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let available = c
        .query("SELECT name::text FROM pg_available_extensions", &[])
        .await
        .map_err(q)?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let mut replication = BTreeMap::new();
    let mut slots = Vec::new();
    let mut receiver = None;
    if in_recovery {
        receiver = c
            .query_opt("SELECT status FROM pg_stat_wal_receiver", &[])
            .await
            .map_err(q)?
            .map(|r| r.get::<_, String>(0));
    } else {
        for row in c
            .query(
                "SELECT application_name, state, extract(epoch from replay_lag)::float8 FROM pg_stat_replication",
                &[],
            )
            .await
            .map_err(q)?
        {
            replication.insert(row.get::<_, String>(0), (row.get::<_, String>(1), row.get::<_, Option<f64>>(2)));
        }
        for row in c
            .query(
                "SELECT slot_name::text, active, wal_status FROM pg_replication_slots WHERE slot_type = 'physical'",
                &[],
            )
            .await
            .map_err(q)?
        {
            slots.push((row.get(0), row.get(1), row.get(2)));
        }
    }
    Ok(NodeFacts { in_recovery, settings, extensions, available, replication, slots, receiver })
}

/// Runs every check for `clusters` (all when empty).
pub async fn check(config: &Config, only: Option<&str>) -> Readiness {
    let mut out = Readiness::default();
    for cluster in config.clusters.iter().filter(|c| only.is_none_or(|o| c.name.as_str() == o)) {
        check_cluster(config, cluster, &mut out.findings).await;
    }
    out
}

async fn check_cluster(config: &Config, cluster: &Cluster, out: &mut Vec<Finding>) {
    let cname = cluster.name.to_string();
    let mut push = |severity, check: &str, node: Option<&str>, message: String, fix: &str| {
        out.push(Finding {
            severity,
            cluster: cname.clone(),
            check: check.to_owned(),
            node: node.map(str::to_owned),
            message,
            fix: fix.to_owned(),
        })
    };
    let tier = config.tier(cluster.tier.as_str());
    let mut all = Vec::new();
    for n in &cluster.nodes {
        match facts(cluster, n, config.tls.as_ref()).await {
            Ok(f) => all.push((n, f)),
            Err(e) => push(
                Severity::Error,
                "reachable",
                Some(n.name.as_str()),
                format!("cannot query PostgreSQL at {}:{}: {e}", n.host, n.port),
                "start the node or its agent (`pgdr status` shows which), or fix the address in the config",
            ),
        }
    }
    let primaries: Vec<&(&Node, NodeFacts)> = all.iter().filter(|(_, f)| !f.in_recovery).collect();
    if primaries.len() != 1 {
        push(
            Severity::Error,
            "one primary",
            None,
            format!(
                "{} nodes answer as primary ({})",
                primaries.len(),
                primaries.iter().map(|(n, _)| n.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
            "exactly one node must be primary; run `pgdr status` and let the controller fence the extra one",
        );
    }
    let Some((pnode, pf)) = primaries.first().map(|x| (x.0, &x.1)) else { return };
    push(Severity::Ok, "one primary", Some(pnode.name.as_str()), format!("{} is the primary", pnode.name), "");

    // Standbys streaming, within the RPO.
    for (n, f) in all.iter().filter(|(_, f)| f.in_recovery) {
        let name = n.name.as_str();
        match pf.replication.get(name) {
            Some((state, lag)) if state == "streaming" => {
                let lag_s = lag.unwrap_or(0.0);
                match tier {
                    Some(t) if lag_s > t.rpo.as_secs_f64() => push(
                        Severity::Error,
                        "within RPO",
                        Some(name),
                        format!(
                            "replay lag {lag_s:.2} s is past tier {}'s RPO of {:.2} s",
                            t.name,
                            t.rpo.as_secs_f64()
                        ),
                        "find why the standby falls behind (network, I/O, long queries on it); a failover to it now would lose more than the RPO",
                    ),
                    _ => push(Severity::Ok, "streaming", Some(name), format!("streaming, replay lag {lag_s:.2} s"), ""),
                }
            }
            Some((state, _)) => push(
                Severity::Error,
                "streaming",
                Some(name),
                format!("replication connection is in state {state}, not streaming"),
                "wait for catch-up; if it stays, check the standby's log",
            ),
            None => push(
                Severity::Error,
                "streaming",
                Some(name),
                format!(
                    "not streaming from the primary {} (its WAL receiver says {})",
                    pnode.name,
                    f.receiver.as_deref().unwrap_or("nothing")
                ),
                "check primary_conninfo and the replication user; rebuild it with the agent if its timeline diverged",
            ),
        }
    }
    // Slots.
    for (slot, active, wal_status) in &pf.slots {
        let bad_wal = matches!(wal_status.as_deref(), Some("lost") | Some("unreserved"));
        if bad_wal {
            push(
                Severity::Error,
                "replication slot",
                Some(pnode.name.as_str()),
                format!("slot {slot}: WAL status {}", wal_status.as_deref().unwrap_or("?")),
                "the standby using it needs a rebuild; drop the slot if nothing uses it",
            );
        } else if !active {
            push(
                Severity::Warning,
                "replication slot",
                Some(pnode.name.as_str()),
                format!("slot {slot} is inactive: it retains WAL on the primary"),
                "start the standby that uses it, or drop the slot if the node is gone",
            );
        } else {
            push(Severity::Ok, "replication slot", Some(pnode.name.as_str()), format!("slot {slot} active"), "");
        }
    }
    // Settings that must match.
    for (n, f) in &all {
        let name = n.name.as_str();
        let get = |k: &str| f.settings.get(k).cloned().unwrap_or_default();
        if get("wal_level") == "minimal" {
            push(
                Severity::Error,
                "wal_level",
                Some(name),
                "wal_level is minimal".into(),
                "set wal_level = replica (or logical) and restart",
            );
        }
        if get("wal_log_hints") != "on" && get("data_checksums") != "on" {
            push(
                Severity::Error,
                "rewind possible",
                Some(name),
                "neither wal_log_hints nor data checksums are on: pg_rewind cannot rejoin this node after a failover"
                    .into(),
                "set wal_log_hints = on and restart (checksums need initdb --data-checksums or pg_checksums offline)",
            );
        }
        let pmc: i64 = pf.settings.get("max_connections").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mc: i64 = get("max_connections").parse().unwrap_or(0);
        if mc < pmc {
            push(
                Severity::Error,
                "max_connections",
                Some(name),
                format!("max_connections {mc} is below the primary's {pmc}: a standby refuses to start with less"),
                "set max_connections on this node to at least the primary's and restart",
            );
        } else if mc != pmc {
            push(
                Severity::Warning,
                "max_connections",
                Some(name),
                format!("max_connections {mc} differs from the primary's {pmc}"),
                "use the same value on every node so a promoted node serves the same load",
            );
        }
        let missing: Vec<&String> = pf.extensions.iter().filter(|e| !f.available.contains(*e)).collect();
        if !missing.is_empty() {
            push(
                Severity::Error,
                "extensions",
                Some(name),
                format!(
                    "extensions installed on the primary are not available here: {}",
                    missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
                "install the extension packages on this host",
            );
        }
    }
    if all.len() == cluster.nodes.len() {
        push(
            Severity::Ok,
            "settings",
            None,
            "wal_level, rewind prerequisites, max_connections and extensions checked on every node".into(),
            "",
        );
    }
    // A proxy in every region with nodes.
    let regions: BTreeSet<&str> = cluster.nodes.iter().map(|n| n.region.as_str()).collect();
    for r in regions {
        if config.proxies_of(cluster.name.as_str()).any(|p| p.region.as_str() == r) {
            push(Severity::Ok, "proxy", None, format!("region {r} has a proxy"), "");
        } else {
            push(
                Severity::Warning,
                "proxy",
                None,
                format!(
                    "region {r} has no proxy for this cluster: after a failover into it, clients there have no writer endpoint"
                ),
                "add a [[proxies]] entry for this cluster in that region",
            );
        }
    }
    // Backups.
    if let Some(b) = tier.and_then(|t| t.backup.as_ref()) {
        match config.destination(&b.destination) {
            Some(d) if d.url.starts_with("file://") => {
                let path = std::path::PathBuf::from(d.url.trim_start_matches("file://"));
                match newest_file(&path) {
                    Some(t) => {
                        let age = SystemTime::now().duration_since(t).unwrap_or_default();
                        push(
                            Severity::Ok,
                            "backups",
                            None,
                            format!(
                                "newest object on destination {} is {:.0} min old (from file times on the file:// destination; the backup engine's own catalog is not read yet)",
                                d.name,
                                age.as_secs_f64() / 60.0
                            ),
                            "",
                        );
                    }
                    None => push(
                        Severity::Error,
                        "backups",
                        None,
                        format!("destination {} ({}) holds no backup", d.name, d.url),
                        "take a backup (`pgdr backup`) and check the schedule runs",
                    ),
                }
            }
            Some(d) => push(
                Severity::Warning,
                "backups",
                None,
                format!(
                    "destination {} ({}) is not checked here: only file:// destinations are read so far",
                    d.name, d.url
                ),
                "check the newest backup with the backup commands",
            ),
            None => {}
        }
    }
}

fn newest_file(dir: &std::path::Path) -> Option<SystemTime> {
    let mut newest: Option<SystemTime> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if let Ok(t) = m.modified() {
                newest = Some(newest.map_or(t, |n| n.max(t)));
            }
        }
    }
    newest
}
