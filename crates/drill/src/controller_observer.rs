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
    pub fn new(addr: &str, token: Option<String>, cluster: &str) -> Result<ControllerObserver, DrillError> {
        let client = ControllerClient::new(addr, token)
            .map_err(|e| DrillError::Other(format!("controller at {addr}: {e}")))?
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
                    role: if n.reachable && !n.fenced { n.role } else { pgdr_model::Role::Down },
                })
                .collect(),
        })
    }

    async fn observed_since(&self, since_unix_ms: f64) -> Result<Observed, DrillError> {
        let events =
            self.client.events(None).await.map_err(|e| DrillError::Other(format!("controller events: {e}")))?;
        let mut out = Observed::default();
        // (workflow, step) → start, end, outcome
        let mut steps: BTreeMap<(String, String), (f64, Option<f64>, String)> = BTreeMap::new();
        for e in &events {
            if text(e, "cluster").is_some_and(|c| c != self.cluster) {
                continue;
            }
            let Some(at) = parse_at(e) else { continue };
            if at < since_unix_ms {
                continue;
            }
            let workflow = text(e, "workflow").unwrap_or("").to_owned();
            let step = text(e, "step").unwrap_or("").to_owned();
            let state = text(e, "state").unwrap_or("").to_owned();
            let kind = text(e, "kind").unwrap_or("");
            let label = [kind, workflow.as_str(), step.as_str(), state.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join(" ");
            let mk = MarkerKind::of_step(&format!("{kind} {step} {state}"));
            if mk == MarkerKind::Detection {
                out.markers.push(Marker { kind: mk, at_unix_ms: at, label: label.clone() });
            }
            if step.is_empty() {
                if out.path.is_none() && (workflow.contains("failover") || kind.contains("failover")) {
                    out.path = Some(label.clone());
                }
                continue;
            }
            let entry = steps.entry((workflow.clone(), step.clone())).or_insert((at, None, String::new()));
            match state.as_str() {
                "started" | "running" => entry.0 = entry.0.min(at),
                s => {
                    entry.1 = Some(at);
                    entry.2 = s.to_owned();
                }
            }
        }
        out.steps = steps
            .into_iter()
            .map(|((workflow, step), (start, end, outcome))| StepTiming {
                workflow,
                step,
                started_unix_ms: start,
                ended_unix_ms: end,
                outcome: if outcome.is_empty() { "running".into() } else { outcome },
            })
            .collect();
        out.steps.sort_by(|a, b| a.started_unix_ms.total_cmp(&b.started_unix_ms));
        // A failover workflow's first step is when the outage was acted on,
        // if no explicit detection event came.
        if out.markers.iter().all(|m| m.kind != MarkerKind::Detection)
            && let Some(first) = out.steps.iter().find(|s| s.workflow.contains("failover") || s.step.contains("fence"))
        {
            out.markers.push(Marker {
                kind: MarkerKind::Detection,
                at_unix_ms: first.started_unix_ms,
                label: format!("{} started (first step {})", first.workflow, first.step),
            });
        }
        Ok(out)
    }

    async fn switchover(&self, to: Option<&str>) -> Result<(), DrillError> {
        self.role_change("switchover", to).await
    }

    async fn failback(&self) -> Result<(), DrillError> {
        self.role_change("failback", None).await
    }
}
