//! [`ControllerObserver`]: the [`DrillObserver`] over the controller's HTTP
//! API (`/v1/clusters/{name}`, `/v1/events`, `/v1/workflows/{id}`,
//! `/v1/clusters/{name}/switchover|failback`).
//!
//! Events are JSON objects with `cluster`, `workflow`, `step`, `state`,
//! `epoch`, `at` (RFC 3339); fields this reads are optional so an event it
//! does not understand is skipped, never fatal.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pgdr_api::controller::{ControllerClient, RoleChangeRequest};

use crate::DrillError;
use crate::observer::{DrillObserver, Marker, MarkerKind, NodeView, Observed, StepTiming, Topology};

pub struct ControllerObserver {
    client: ControllerClient,
    cluster: String,
    /// Longest wait for a switchover or failback workflow.
    pub workflow_timeout: Duration,
}

impl ControllerObserver {
    /// The controllers at `addrs` (the one leading answers), over `tls`.
    pub fn new(
        addrs: &[String],
        token: Option<pgdr_config::Redacted>,
        tls: &pgdr_api::HttpTls,
        cluster: &str,
    ) -> Result<ControllerObserver, DrillError> {
        let client = ControllerClient::new_multi(addrs, token, tls)
            .map_err(|e| DrillError::Other(format!("controller at {}: {e}", addrs.join(", "))))?
            .with_timeout(Duration::from_secs(3));
        Ok(ControllerObserver { client, cluster: cluster.to_owned(), workflow_timeout: Duration::from_secs(120) })
    }

    /// Whether the controller answers.
    pub async fn reachable(&self) -> bool {
        self.client.cluster(&self.cluster).await.is_ok()
    }

    async fn role_change(&self, kind: &str, to: Option<&str>) -> Result<(), DrillError> {
        let req = RoleChangeRequest {
            to: to.map(str::to_owned),
            requested_by: Some("pgdr drill".into()),
            ..Default::default()
        };
        let started = self
            .client
            .role_change(&self.cluster, kind, &req)
            .await
            .map_err(|e| DrillError::Other(format!("{kind} request refused: {e}")))?;
        let Some(id) = started.id else { return Ok(()) };
        let t0 = Instant::now();
        loop {
            if let Ok(w) = self.client.workflow(&id).await {
                match w.state.as_str() {
                    "succeeded" | "done" | "completed" | "finished" => return Ok(()),
                    "failed" | "aborted" | "cancelled" => {
                        return Err(DrillError::Other(format!(
                            "{kind} workflow {id} {}: {}",
                            w.state,
                            w.error.unwrap_or_default()
                        )));
                    }
                    _ => {}
                }
            }
            if t0.elapsed() > self.workflow_timeout {
                return Err(DrillError::Timeout {
                    what: format!("{kind} workflow {id}"),
                    seconds: t0.elapsed().as_secs_f64(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn parse_at(v: &serde_json::Value) -> Option<f64> {
    let s = v.get("at")?.as_str()?;
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1_000_000.0)
}

fn text<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(|x| x.as_str())
}

/// A step's workflow kind, start, end and outcome, as events tell them.
type StepSeen = (String, f64, Option<f64>, String);

/// What the controller's events since `since_unix_ms` say happened to
/// `cluster`.
///
/// The controller's events (`pgdr_store::Event` as JSON) carry `cluster`,
/// `workflow` (the id), `kind` (`failover`, `switchover`, ...), `step`,
/// `state` (`started`, `succeeded`, `failed`, `retrying`... for steps and
/// workflows; an alert name like `outage_declared`, `restarted_in_place`,
/// `failover_report` otherwise), `epoch`, `at` (RFC 3339) and `message`.
fn state_is_background(state: &str) -> bool {
    matches!(state, "backup_succeeded" | "backup_failed" | "readiness_regressed")
}

pub fn observed_from_events(events: &[serde_json::Value], cluster: &str, since_unix_ms: f64) -> Observed {
    let mut out = Observed::default();
    // (workflow id, step) → kind, start, end, outcome
    let mut steps: BTreeMap<(String, String), StepSeen> = BTreeMap::new();
    for e in events {
        if text(e, "cluster").is_some_and(|c| c != cluster) {
            continue;
        }
        let Some(at) = parse_at(e) else { continue };
        if at < since_unix_ms {
            continue;
        }
        let id = text(e, "workflow").unwrap_or("");
        let kind = text(e, "kind").unwrap_or("");
        // Scheduled backups and readiness checks run beside a drill; they are
        // not part of the recovery being measured.
        if matches!(kind, "backup") || state_is_background(text(e, "state").unwrap_or("")) {
            continue;
        }
        let step = text(e, "step").unwrap_or("");
        let state = text(e, "state").unwrap_or("");
        let message = text(e, "message").unwrap_or("");
        match state {
            "outage_declared" => {
                out.markers.push(Marker {
                    kind: MarkerKind::Detection,
                    at_unix_ms: at,
                    label: "outage declared".into(),
                });
                continue;
            }
            "restarted_in_place" => {
                out.path.get_or_insert_with(|| format!("restart in place ({message})"));
                continue;
            }
            "failover_report" => {
                let promoted = message
                    .strip_prefix("failover done: ")
                    .and_then(|m| m.split_whitespace().next())
                    .unwrap_or("another node");
                out.path = Some(format!("failover to {promoted}"));
                continue;
            }
            _ => {}
        }
        if step.is_empty() {
            if state == "succeeded" && !kind.is_empty() && kind != "failover" && out.path.is_none() {
                out.path = Some(kind.to_owned());
            }
            continue;
        }
        let entry = steps.entry((id.to_owned(), step.to_owned())).or_insert((kind.to_owned(), at, None, String::new()));
        match state {
            "started" | "retrying" | "waiting_approval" | "approved" => entry.1 = entry.1.min(at),
            s => {
                entry.2 = Some(at);
                entry.3 = s.to_owned();
            }
        }
    }
    out.steps = steps
        .into_iter()
        .map(|((id, step), (kind, start, end, outcome))| StepTiming {
            workflow: if kind.is_empty() { id } else { kind },
            step,
            started_unix_ms: start,
            ended_unix_ms: end,
            outcome: if outcome.is_empty() { "running".into() } else { outcome },
        })
        .collect();
    out.steps.sort_by(|a, b| a.started_unix_ms.total_cmp(&b.started_unix_ms));
    // Without an explicit detection event, a failover's first step is when
    // the outage was acted on.
    if out.markers.iter().all(|m| m.kind != MarkerKind::Detection)
        && let Some(first) = out.steps.iter().find(|s| s.workflow == "failover")
    {
        out.markers.push(Marker {
            kind: MarkerKind::Detection,
            at_unix_ms: first.started_unix_ms,
            label: format!("failover started (first step {})", first.step),
        });
    }
    out
}

#[async_trait]
impl DrillObserver for ControllerObserver {
    fn describe(&self) -> String {
        format!("the controller's API at {}", self.client.addr())
    }

    fn sees_workflows(&self) -> bool {
        true
    }

    async fn topology(&self) -> Result<Topology, DrillError> {
        let c = self.client.cluster(&self.cluster).await.map_err(|e| DrillError::Other(format!("controller: {e}")))?;
        Ok(Topology {
            epoch: Some(c.epoch.0),
            primary: c.primary.map(|p| p.to_string()),
            nodes: c
                .nodes
                .iter()
                .map(|n| NodeView {
                    name: n.name.to_string(),
                    region: n.region.to_string(),
                    // A fenced primary takes no writes; a replica's `fenced`
                    // flag (left from its demotion) changes nothing for it.
                    role: match (n.reachable, n.role, n.fenced) {
                        (false, _, _) | (true, pgdr_model::Role::Primary, true) => pgdr_model::Role::Down,
                        (true, role, _) => role,
                    },
                })
                .collect(),
        })
    }

    async fn observed_since(&self, since_unix_ms: f64) -> Result<Observed, DrillError> {
        let events =
            self.client.events(None).await.map_err(|e| DrillError::Other(format!("controller events: {e}")))?;
        Ok(observed_from_events(&events, &self.cluster, since_unix_ms))
    }

    async fn switchover(&self, to: Option<&str>) -> Result<(), DrillError> {
        self.role_change("switchover", to).await
    }

    async fn failback(&self) -> Result<(), DrillError> {
        self.role_change("failback", None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn controller_events_become_detection_steps_and_path() {
        // Shaped as the controller emits them (pgdr_store::Event as JSON).
        let ev = |state: &str, step: Option<&str>, at: &str, msg: Option<&str>| {
            json!({"seq": 1, "cluster": "main", "workflow": step.map(|_| "wf-1"), "kind": step.map(|_| "failover"),
                   "step": step, "state": state, "epoch": 3, "at": at, "message": msg})
        };
        let events = vec![
            ev("rpo_breached", None, "2026-01-01T00:00:00Z", Some("old")),
            ev("outage_declared", None, "2026-01-01T00:00:11Z", Some("primary n1 is out")),
            ev("started", Some("fence_old_primary"), "2026-01-01T00:00:11.100Z", None),
            ev("succeeded", Some("fence_old_primary"), "2026-01-01T00:00:11.300Z", None),
            ev("started", Some("promote"), "2026-01-01T00:00:11.400Z", None),
            ev("succeeded", Some("promote"), "2026-01-01T00:00:11.600Z", None),
            ev("failover_report", None, "2026-01-01T00:00:11.700Z", Some("failover done: n2 promoted; old primary n1")),
            json!({"cluster": "other", "state": "outage_declared", "at": "2026-01-01T00:00:10Z"}),
        ];
        let since = 1_767_225_610_000.0; // 2026-01-01T00:00:10Z
        let o = observed_from_events(&events, "main", since);
        assert_eq!(o.detection_after(since), Some(since + 1000.0));
        assert_eq!(o.path.as_deref(), Some("failover to n2"));
        assert_eq!(o.steps.len(), 2);
        assert_eq!(o.steps[0].workflow, "failover");
        assert_eq!(o.steps[0].step, "fence_old_primary");
        assert_eq!(o.steps[0].duration_seconds().map(|d| (d * 1000.0).round()), Some(200.0));
        assert_eq!(o.steps[1].outcome, "succeeded");
    }
}
