//! The controller's HTTP API: clusters, role changes, workflows, events, the
//! primary lease agents renew, and [`ControllerClient`].
//!
//! | method | path | body → answer |
//! | --- | --- | --- |
//! | GET | `/v1/clusters` | → `Vec<ClusterView>` |
//! | GET | `/v1/clusters/{c}` | → [`ClusterView`] |
//! | POST | `/v1/clusters/{c}/switchover` | [`RoleChangeRequest`] → [`WorkflowStarted`] |
//! | POST | `/v1/clusters/{c}/failover` | [`RoleChangeRequest`] → [`WorkflowStarted`] |
//! | POST | `/v1/clusters/{c}/failback` | [`RoleChangeRequest`] → [`WorkflowStarted`] |
//! | POST | `/v1/clusters/{c}/lease` | [`LeaseRequest`] → [`LeaseReply`] (409 when refused) |
//! | GET | `/v1/workflows` | → `Vec<WorkflowView>` |
//! | GET | `/v1/workflows/{id}` | → [`WorkflowView`] with steps |
//! | POST | `/v1/workflows/{id}/approve` | [`ApproveRequest`] → [`WorkflowView`] |
//! | GET | `/v1/events?after=N` | → `Vec<serde_json::Value>` (the store's events) |
//! | GET | `/v1/rules` | → [`RulesView`]: the safety rules, which clusters are frozen, by whom, when |
//! | POST | `/v1/rules/freeze` | [`FreezeRequest`] → [`RulesView`] (no `cluster`: the global freeze) |
//! | POST | `/v1/rules/unfreeze` | [`FreezeRequest`] → [`RulesView`] |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/v1/snapshot` | the status page's data |
//!
//! Every route but the status page's files (`/`, `/status`,
//! `/status/page.css`, `/status/page.js`) needs `Authorization: Bearer`
//! with a token of the `viewer` role (the GET routes), `operator` (role
//! changes, approvals, freezes, and what a viewer may) or `agent` (the lease). 401:
//! no token or an unknown one; 403: a token whose role does not allow it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pgdr_model::{ClusterName, Epoch, Lsn, NodeName, Redacted, RegionName, Role};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorBody};
use crate::http;
use crate::tls::HttpTls;

/// `POST /v1/clusters/{c}/lease`: the primary's agent renews its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub node: NodeName,
    pub epoch: Epoch,
}

/// The answer to a lease renewal. Refused renewals (HTTP 409) carry
/// `granted: false` and the reason: the agent must fence at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReply {
    pub granted: bool,
    pub node: NodeName,
    pub epoch: Epoch,
    pub ttl_ms: u64,
    pub message: String,
}

/// One node as the controller sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: NodeName,
    pub region: RegionName,
    pub role: Role,
    pub reachable: bool,
    pub fenced: bool,
    pub lsn: Option<Lsn>,
    /// Lag behind the primary from the replicated heartbeat.
    pub lag_seconds: Option<f64>,
    pub error: Option<String>,
}

/// `GET /v1/clusters/{c}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    pub name: ClusterName,
    pub epoch: Epoch,
    pub primary: Option<NodeName>,
    pub tier: String,
    pub rpo_seconds: f64,
    /// `async`, or `sync` with its quorum.
    pub replication: String,
    /// Sync mode without enough healthy replicas for its quorum.
    pub degraded: bool,
    pub nodes: Vec<NodeView>,
    /// The detector's judgement: `healthy`, `suspect`, `outage`.
    pub detection: String,
    /// The role-changing workflow running now, if any.
    pub workflow: Option<String>,
    /// The freeze switch that applies (the cluster's own, else the global
    /// one): no automatic role change while it is on.
    #[serde(default)]
    pub frozen: Option<FreezeView>,
    /// Set while the controller cannot read the state store: the cluster
    /// runs without a control plane (why, since when).
    #[serde(default)]
    pub control_plane: Option<String>,
}

/// A freeze switch: who turned it on (the API token's name), when, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeView {
    pub by: String,
    /// RFC 3339.
    pub at: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// The global switch (every cluster), not the cluster's own.
    #[serde(default)]
    pub global: bool,
}

/// One safety rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    pub name: String,
    pub description: String,
}

/// One cluster's freeze state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRules {
    pub cluster: ClusterName,
    /// The switch that applies (the cluster's own, else the global one).
    pub frozen: Option<FreezeView>,
}

/// `GET /v1/rules`: the rules, the global freeze and each cluster's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesView {
    pub rules: Vec<RuleView>,
    pub global_freeze: Option<FreezeView>,
    pub clusters: Vec<ClusterRules>,
}

/// Body of `freeze` and `unfreeze`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeRequest {
    /// The cluster; none: the global switch.
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Body of `switchover`, `failover` and `failback`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleChangeRequest {
    /// A node or a region name.
    #[serde(default)]
    pub to: Option<String>,
    /// Plan only: the steps and checks, nothing changes.
    #[serde(default)]
    pub dry_run: bool,
    /// Allow promoting a replica lagging past the tier's RPO (journalled).
    #[serde(default)]
    pub allow_data_loss: bool,
    /// Stop at an approval gate before acting.
    #[serde(default)]
    pub require_approval: bool,
    /// Who asked (journalled).
    #[serde(default)]
    pub requested_by: Option<String>,
}

/// Body of `POST /v1/clusters/{name}/secrets/rotate`: a rotation of the
/// cluster's managed roles as a controller workflow (`rotate-secrets`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateRequest {
    /// One managed role (default: every role of the cluster).
    #[serde(default)]
    pub role: Option<String>,
    /// Plan only: the steps, the logins that would change, nothing changes.
    #[serde(default)]
    pub dry_run: bool,
    /// Who asked (journalled; the API writes the token's holder).
    #[serde(default)]
    pub requested_by: Option<String>,
}

/// `GET /v1/clusters/{name}/secrets`: the rotation state the controller
/// keeps (never a secret): the last rotation workflow, the next scheduled
/// one, and a rotation waiting to run again after a failover preempted it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretsView {
    pub cluster: ClusterName,
    /// The config's schedule, in words (`cron "0 3 * * *"`, `every 12h`).
    pub schedule: Option<String>,
    /// RFC 3339: when the controller starts the next scheduled rotation.
    pub next_due: Option<String>,
    /// The latest rotation workflow: id, state, created (RFC 3339), error.
    pub last: Option<WorkflowView>,
    /// A rotation preempted by a failover, run again once the cluster is free.
    pub rerun: Option<String>,
}

/// What a role-change request did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowStarted {
    /// `None` for a dry run.
    pub id: Option<String>,
    pub kind: String,
    pub cluster: ClusterName,
    /// The steps it takes (or would take) and the checks made.
    pub plan: Vec<String>,
    pub dry_run: bool,
}

/// One step of a workflow's journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    pub name: String,
    pub state: String,
    pub attempts: u32,
    pub duration_ms: Option<u64>,
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
}

/// `GET /v1/workflows/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowView {
    pub id: String,
    pub kind: String,
    pub cluster: ClusterName,
    pub state: String,
    pub created_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub params: serde_json::Value,
    pub steps: Vec<StepView>,
    pub error: Option<String>,
}

/// `POST /v1/workflows/{id}/approve`. The approver recorded is the name of
/// the token the request carries; `by` is accepted from older clients and
/// ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproveRequest {
    #[serde(default)]
    pub by: Option<String>,
}

/// A typed client of the controller. Cheap to clone.
///
/// With several controllers ([`ControllerClient::new_multi`]: one per
/// region, one leading), a call goes to the controller that answered last
/// and, when that one cannot be reached or answers that it does not lead
/// (a standby binds no API; a deposed one answers `not_leader`), to each
/// other in turn. Clones share what they learnt about the leader.
#[derive(Debug, Clone)]
pub struct ControllerClient {
    http: reqwest::Client,
    scheme: &'static str,
    addrs: Arc<[String]>,
    /// Index in `addrs` of the controller that answered last.
    leader: Arc<AtomicUsize>,
    token: Option<Redacted>,
    timeout: Duration,
}

impl ControllerClient {
    pub fn new(addr: &str, token: Option<Redacted>) -> Result<ControllerClient, ApiError> {
        Self::new_with(addr, token, &HttpTls::plain())
    }

    /// [`ControllerClient::new`] over `tls` (HTTPS when the controller serves it).
    pub fn new_with(addr: &str, token: Option<Redacted>, tls: &HttpTls) -> Result<ControllerClient, ApiError> {
        Self::new_multi(&[addr.to_owned()], token, tls)
    }

    /// A client of every controller at `addrs` (one per region, one of
    /// them leading), in the order to try them first.
    pub fn new_multi(addrs: &[String], token: Option<Redacted>, tls: &HttpTls) -> Result<ControllerClient, ApiError> {
        if addrs.is_empty() {
            return Err(ApiError::Client("no controller address".into()));
        }
        Ok(ControllerClient {
            http: tls.client(Duration::from_secs(2))?,
            scheme: tls.scheme(),
            addrs: addrs.iter().cloned().collect(),
            leader: Arc::new(AtomicUsize::new(0)),
            token,
            timeout: Duration::from_secs(30),
        })
    }

    /// The same client with another whole-call limit.
    pub fn with_timeout(mut self, timeout: Duration) -> ControllerClient {
        self.timeout = timeout;
        self
    }

    /// The controller that answered last (the first before any answer).
    pub fn addr(&self) -> &str {
        &self.addrs[self.leader.load(Ordering::Relaxed) % self.addrs.len()]
    }

    /// Every controller this client tries.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    fn url(&self, addr: &str, path: &str) -> String {
        format!("{}://{}{}", self.scheme, addr, path)
    }

    pub async fn renew_lease(&self, cluster: &str, req: &LeaseRequest) -> Result<LeaseReply, ApiError> {
        self.post(&format!("/v1/clusters/{cluster}/lease"), req).await
    }

    pub async fn clusters(&self) -> Result<Vec<ClusterView>, ApiError> {
        self.get("/v1/clusters").await
    }

    pub async fn cluster(&self, name: &str) -> Result<ClusterView, ApiError> {
        self.get(&format!("/v1/clusters/{name}")).await
    }

    /// `kind` is `switchover`, `failover` or `failback`.
    pub async fn role_change(
        &self,
        cluster: &str,
        kind: &str,
        req: &RoleChangeRequest,
    ) -> Result<WorkflowStarted, ApiError> {
        self.post(&format!("/v1/clusters/{cluster}/{kind}"), req).await
    }

    pub async fn rules(&self) -> Result<RulesView, ApiError> {
        self.get("/v1/rules").await
    }

    pub async fn freeze(&self, req: &FreezeRequest) -> Result<RulesView, ApiError> {
        self.post("/v1/rules/freeze", req).await
    }

    pub async fn unfreeze(&self, req: &FreezeRequest) -> Result<RulesView, ApiError> {
        self.post("/v1/rules/unfreeze", req).await
    }

    /// Starts (or plans, with `dry_run`) a rotation of the cluster's
    /// managed roles as a controller workflow.
    pub async fn rotate_secrets(&self, cluster: &str, req: &RotateRequest) -> Result<WorkflowStarted, ApiError> {
        self.post(&format!("/v1/clusters/{cluster}/secrets/rotate"), req).await
    }

    pub async fn secrets(&self, cluster: &str) -> Result<SecretsView, ApiError> {
        self.get(&format!("/v1/clusters/{cluster}/secrets")).await
    }

    pub async fn workflows(&self) -> Result<Vec<WorkflowView>, ApiError> {
        self.get("/v1/workflows").await
    }

    pub async fn workflow(&self, id: &str) -> Result<WorkflowView, ApiError> {
        self.get(&format!("/v1/workflows/{id}")).await
    }

    pub async fn approve(&self, id: &str, req: &ApproveRequest) -> Result<WorkflowView, ApiError> {
        self.post(&format!("/v1/workflows/{id}/approve"), req).await
    }

    pub async fn events(&self, after: Option<u64>) -> Result<Vec<serde_json::Value>, ApiError> {
        match after {
            Some(a) => self.get(&format!("/v1/events?after={a}")).await,
            None => self.get("/v1/events").await,
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.send(|addr| self.auth(self.http.get(self.url(addr, path))).timeout(self.timeout)).await
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ApiError> {
        self.send(|addr| self.auth(self.http.post(self.url(addr, path))).json(body).timeout(self.timeout)).await
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        http::with_token(req, self.token.as_ref())
    }

    /// Sends to the controller that answered last, then to each other while
    /// the one asked is unreachable or does not lead; the first answer of a
    /// leading controller (a success or its refusal) is the call's.
    async fn send<T: DeserializeOwned>(&self, req: impl Fn(&str) -> reqwest::RequestBuilder) -> Result<T, ApiError> {
        let n = self.addrs.len();
        let first = self.leader.load(Ordering::Relaxed) % n;
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            let addr = &self.addrs[i];
            match http::send(addr, req(addr), http::On409::Failed).await {
                Err(e) if n > 1 && (e.is_unreachable() || e.kind() == NOT_LEADER) => last = Some(e),
                answer => {
                    if i != first {
                        self.leader.store(i, Ordering::Relaxed);
                    }
                    return answer;
                }
            }
        }
        Err(last.unwrap_or_else(|| ApiError::Client("no controller address".into())))
    }
}

/// The error kind of a controller that does not lead (HTTP 503): ask
/// another.
pub const NOT_LEADER: &str = "not_leader";

/// The error body the controller sends, as [`ErrorBody`] with its kinds:
/// `not_found`, `bad_request`, `conflict` (another workflow runs, a refused
/// lease), `failed`.
pub fn error_body(kind: &str, error: impl Into<String>) -> ErrorBody {
    ErrorBody { error: error.into(), kind: kind.to_owned(), seen_epoch: None }
}
