//! [`Snapshot`]: everything the status page shows, gathered in one answer
//! (`GET /v1/snapshot`) so the page needs one request a second. A part that
//! cannot be read (the store, a workflow journal) is named in `errors` and
//! the rest is still served: in an incident, part of the picture beats none.

use std::collections::BTreeMap;

use pgdr_api::controller::{ClusterView, NodeView, WorkflowView};
use pgdr_config::RegionKind;
use pgdr_model::Role;
use pgdr_store::Event;
use serde::Serialize;
use tokio::time::Instant;

use super::probes::ProbeBook;
use crate::controller::Controller;

/// How many events the page lists.
const EVENTS: usize = 40;
/// How many of a cluster's workflows the page lists.
const RECENT_WORKFLOWS: usize = 5;

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// When the controller built this answer (RFC 3339, UTC).
    pub generated_at: String,
    pub controller: ControllerInfo,
    pub clusters: Vec<ClusterPanel>,
    /// The newest events of every cluster, newest first.
    pub events: Vec<Event>,
    /// Readiness findings of the controller's latest scheduled run
    /// ([`crate::readiness`]); `None` until the first run ends.
    pub readiness: Option<Vec<serde_json::Value>>,
    /// Parts of the snapshot that could not be read.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControllerInfo {
    pub listen: String,
    pub region: Option<String>,
    pub probe_interval_ms: u64,
    /// The worst time from a primary's failure to a declared outage.
    pub detection_window_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterPanel {
    pub cluster: ClusterView,
    pub rto_seconds: f64,
    /// The region of the node the store names primary.
    pub primary_region: Option<String>,
    /// The cluster's nodes grouped by region, in config order.
    pub regions: Vec<RegionPanel>,
    pub proxies: Vec<ProxyInfo>,
    /// One row per vantage point and path.
    pub probes: Vec<ProbePanel>,
    /// The role-changing workflow running now, with its steps.
    pub workflow: Option<WorkflowView>,
    /// The newest workflows of the cluster, newest first, with their steps.
    pub recent: Vec<WorkflowView>,
    /// Per managed role and region: whether the stored secret logged in at
    /// the controller's latest check (every 15 s and after each rotation);
    /// empty when the cluster manages no roles or before the first check.
    pub secrets: Vec<crate::rotation::StoredLogin>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionPanel {
    pub name: String,
    /// `region` or `zone`.
    pub kind: &'static str,
    pub parent: Option<String>,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxyInfo {
    pub name: String,
    pub region: String,
    pub writer: String,
    pub reader: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbePanel {
    /// Who probes: `controller` (with its region), `primary's agent`.
    pub vantage: String,
    /// What it probes.
    pub target: String,
    /// `ok`, `refused`, `timeout`, `error`; `None` when not known yet.
    pub latest: Option<String>,
    pub age_ms: Option<u64>,
    /// Probes since the controller started, by outcome.
    pub counts: BTreeMap<String, u64>,
    pub detail: Option<String>,
}

/// Builds the snapshot.
pub async fn build(ctl: &Controller, book: &std::sync::Mutex<ProbeBook>) -> Snapshot {
    let sh = &ctl.sh;
    let cfg = &sh.config;
    let mut errors = Vec::new();
    let now = Instant::now();
    if let Ok(mut b) = book.lock() {
        b.update(&sh.metrics.encode(), now);
    }
    let mut records = match ctl.engine.list().await {
        Ok(r) => r,
        Err(e) => {
            errors.push(format!("workflows: {e}"));
            Vec::new()
        }
    };
    records.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.as_str().cmp(a.id.as_str())));

    let mut clusters = Vec::new();
    for c in &cfg.clusters {
        let view = match ctl.cluster_view(c.name.as_str()).await {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("cluster {}: {e}", c.name));
                continue;
            }
        };
        let mut regions: Vec<RegionPanel> = Vec::new();
        for node in &view.nodes {
            let name = node.region.to_string();
            let idx = match regions.iter().position(|r| r.name == name) {
                Some(i) => i,
                None => {
                    let r = cfg.regions.iter().find(|r| r.name == node.region);
                    regions.push(RegionPanel {
                        kind: match r.map(|r| r.kind) {
                            Some(RegionKind::Zone) => "zone",
                            _ => "region",
                        },
                        parent: r.and_then(|r| r.parent.as_ref()).map(|p| p.to_string()),
                        name,
                        nodes: Vec::new(),
                    });
                    regions.len() - 1
                }
            };
            regions[idx].nodes.push(node.clone());
        }
        let order = |name: &str| cfg.regions.iter().position(|r| r.name.as_str() == name).unwrap_or(usize::MAX);
        regions.sort_by_key(|r| order(&r.name));
        let primary_node = view.primary.as_ref().and_then(|p| view.nodes.iter().find(|n| n.name == *p));
        let primary_region = primary_node.map(|n| n.region.to_string());

        let mut probes = Vec::new();
        let vantage = match &cfg.controller.region {
            Some(r) => format!("controller ({r})"),
            None => "controller".to_owned(),
        };
        if let Ok(b) = book.lock() {
            for path in b.paths(c.name.as_str()) {
                let l = b.latest(c.name.as_str(), &path, now);
                let target = match path.as_str() {
                    "direct" => format!(
                        "primary {} (heartbeat write)",
                        view.primary.as_ref().map(|p| p.as_str()).unwrap_or("?")
                    ),
                    "proxy" => "primary through the proxies' writer endpoints".to_owned(),
                    other => other.to_owned(),
                };
                probes.push(ProbePanel {
                    vantage: vantage.clone(),
                    target,
                    latest: l.outcome,
                    age_ms: l.age_ms,
                    counts: l.counts,
                    detail: None,
                });
            }
        }
        if let Some(p) = primary_node {
            let (latest, detail) = match (p.reachable, p.role) {
                (true, Role::Primary) => (Some("ok".to_owned()), None),
                (true, role) => (Some("error".to_owned()), Some(format!("PostgreSQL is {role}"))),
                (false, _) => {
                    (Some("error".to_owned()), Some(p.error.clone().unwrap_or_else(|| "agent unreachable".into())))
                }
            };
            probes.push(ProbePanel {
                vantage: format!("primary's agent ({})", p.region),
                target: format!("PostgreSQL on {}'s host", p.name),
                latest,
                age_ms: None,
                counts: BTreeMap::new(),
                detail: detail.or_else(|| p.error.clone()),
            });
        }
        // Agents in other regions probing the primary: their exact latest
        // reading, kept by the watch loop.
        let vantages =
            sh.observed.lock().ok().and_then(|o| o.get(&c.name).map(|o| o.vantages.clone())).unwrap_or_default();
        for v in vantages.values() {
            probes.push(ProbePanel {
                vantage: format!("{}'s agent ({})", v.node, v.region),
                target: v.target.clone(),
                latest: Some(v.outcome.clone()),
                age_ms: v.at.map(|at| now.saturating_duration_since(at).as_millis() as u64),
                counts: v.counts.clone(),
                detail: match (&v.detail, v.latency_ms) {
                    (Some(d), _) => Some(d.clone()),
                    (None, Some(ms)) => Some(format!("{ms:.1} ms")),
                    (None, None) => None,
                },
            });
        }

        let mut recent = Vec::new();
        for r in records.iter().filter(|r| r.cluster == c.name).take(RECENT_WORKFLOWS) {
            match ctl.workflow_view(r.id.as_str()).await {
                Ok(v) => recent.push(v),
                Err(e) => errors.push(format!("workflow {}: {e}", r.id.as_str())),
            }
        }
        let running = match sh.store.get(&pgdr_store::keys::cluster_lock(c.name.as_str())).await {
            Ok(lock) => lock.and_then(|v| serde_json::from_slice::<pgdr_workflow::ClusterLock>(&v.value).ok()),
            Err(e) => {
                errors.push(format!("cluster {} lock: {e}", c.name));
                None
            }
        };
        let workflow = match running {
            Some(lock) => match recent.iter().find(|w| w.id == lock.workflow.as_str()) {
                Some(w) => Some(w.clone()),
                None => match ctl.workflow_view(lock.workflow.as_str()).await {
                    Ok(v) => Some(v),
                    Err(e) => {
                        errors.push(format!("workflow {}: {e}", lock.workflow.as_str()));
                        None
                    }
                },
            },
            None => None,
        };

        clusters.push(ClusterPanel {
            rto_seconds: sh.tier(c).map(|t| t.rto.as_secs_f64()).unwrap_or_default(),
            primary_region,
            regions,
            proxies: cfg
                .proxies_of(c.name.as_str())
                .map(|p| ProxyInfo {
                    name: p.name.clone(),
                    region: p.region.to_string(),
                    writer: p.writer.to_string(),
                    reader: p.reader.map(|r| r.to_string()),
                })
                .collect(),
            probes,
            workflow,
            recent,
            secrets: sh.stored_logins.lock().ok().and_then(|m| m.get(&c.name).cloned()).unwrap_or_default(),
            cluster: view,
        });
    }

    let events = match sh.events.tail(EVENTS).await {
        Ok(mut e) => {
            e.reverse();
            e
        }
        Err(e) => {
            errors.push(format!("events: {e}"));
            Vec::new()
        }
    };
    let fmt = &time::format_description::well_known::Rfc3339;
    Snapshot {
        generated_at: time::OffsetDateTime::now_utc().format(fmt).unwrap_or_default(),
        controller: ControllerInfo {
            listen: cfg.controller.listen.to_string(),
            region: cfg.controller.region.as_ref().map(|r| r.to_string()),
            probe_interval_ms: cfg.timing.probe_interval.as_millis() as u64,
            detection_window_ms: cfg.timing.detection_window().as_millis() as u64,
        },
        clusters,
        events,
        readiness: sh
            .readiness
            .lock()
            .ok()
            .and_then(|r| r.as_ref().map(|r| r.findings.iter().filter_map(|f| serde_json::to_value(f).ok()).collect())),
        errors,
    }
}
