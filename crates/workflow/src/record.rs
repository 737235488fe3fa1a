//! What the engine keeps in the store: the workflow record, each step's
//! journal, the per-cluster lock, the owner claim, approvals and cancel
//! requests (keys in `pgdr_store::keys`). All JSON.

use std::fmt;

use pgdr_model::{ClusterName, Epoch};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

/// A workflow's id: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkflowId(String);

impl WorkflowId {
    /// A new id for a workflow created at `at`.
    pub fn new(at: OffsetDateTime) -> Self {
        let nanos = at.unix_timestamp_nanos().max(0);
        let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(0);
        let subsec = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, secs, subsec);
        Self(uuid::Uuid::new_v7(ts).to_string())
    }

    /// An id given by a person or the API: checked to be usable in a key.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(format!("{s:?} is not a workflow id"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkflowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a workflow is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowState {
    Planned,
    Running,
    WaitingApproval,
    Succeeded,
    Failed,
    Cancelled,
}

impl WorkflowState {
    pub fn is_terminal(self) -> bool {
        matches!(self, WorkflowState::Succeeded | WorkflowState::Failed | WorkflowState::Cancelled)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowState::Planned => "planned",
            WorkflowState::Running => "running",
            WorkflowState::WaitingApproval => "waiting_approval",
            WorkflowState::Succeeded => "succeeded",
            WorkflowState::Failed => "failed",
            WorkflowState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for WorkflowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step as a plan shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub stage: usize,
    pub name: String,
    pub description: String,
    pub checks: Vec<String>,
    pub approval: bool,
    pub max_attempts: u32,
}

/// What a workflow would do, from [`crate::Engine::plan`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub kind: String,
    pub cluster: ClusterName,
    pub params: Value,
    /// The stages in order; the steps of one stage run in parallel.
    pub stages: Vec<Vec<PlannedStep>>,
    /// The running workflow that would make starting this one fail, if any.
    pub blocked_by: Option<ClusterLock>,
}

/// A workflow as the store keeps it (`/pgdr/workflows/<id>/record`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    pub id: WorkflowId,
    pub kind: String,
    pub cluster: ClusterName,
    pub state: WorkflowState,
    pub params: Value,
    /// The static plan (steps, descriptions, checks) when it started.
    pub plan: Vec<Vec<PlannedStep>>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub ended_at: Option<OffsetDateTime>,
    /// The stage being run (index into `plan`).
    pub current_stage: usize,
    /// The latest epoch a step reported.
    #[serde(default)]
    pub epoch: Option<Epoch>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Who cancelled it.
    #[serde(default)]
    pub cancelled_by: Option<String>,
    /// How many times an engine resumed it.
    #[serde(default)]
    pub resumed: u32,
    #[serde(default)]
    pub role_changing: bool,
}

/// Where a step is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// An attempt started and has not ended (after a crash: it will run again).
    Started,
    /// An attempt failed; the next one waits for its backoff.
    Retrying,
    WaitingApproval,
    Succeeded,
    Failed,
    Cancelled,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Started => "started",
            StepState::Retrying => "retrying",
            StepState::WaitingApproval => "waiting_approval",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Cancelled => "cancelled",
        }
    }
}

/// One attempt of a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub n: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub ended_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// Set when this attempt failed.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub retryable: Option<bool>,
}

impl Attempt {
    /// Ended with an error (an attempt cut short by a crash has no end).
    pub fn failed(&self) -> bool {
        self.ended_at.is_some() && self.error.is_some()
    }
}

/// One step's journal (`/pgdr/workflows/<id>/steps/<stage>/<name>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub stage: usize,
    pub name: String,
    pub state: StepState,
    pub attempts: Vec<Attempt>,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub epoch: Option<Epoch>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub approved_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub approved_at: Option<OffsetDateTime>,
}

/// The per-cluster lock (`/pgdr/clusters/<c>/lock`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLock {
    pub workflow: WorkflowId,
    pub kind: String,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// Which engine runs a workflow (`/pgdr/workflows/<id>/owner`, attached to
/// that engine's lease).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerClaim {
    pub owner: String,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// An approval or a cancel request: who, when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signoff {
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}
