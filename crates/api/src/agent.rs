//! The node agent's HTTP API: what `GET /v1/status` reports, the bodies of
//! the mutating `POST /v1/actions/*` calls, and [`AgentClient`].
//!
//! Every mutating call carries the cluster [`Epoch`]; an agent refuses an
//! epoch older than the highest it has seen with HTTP 409
//! ([`ApiError::StaleEpoch`]).

use std::time::Duration;

use pgdr_model::{ClusterName, Epoch, Lsn, NodeName, Redacted, RegionName, Role, TimelineId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::http;
use crate::tls::HttpTls;

/// `GET /v1/health`: answered without authentication while the agent runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    pub node: NodeName,
    /// pgdr's version.
    pub version: String,
}

/// `GET /v1/status`: what the agent sees on its host right now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: NodeName,
    pub cluster: ClusterName,
    pub region: RegionName,
    pub data_dir: String,
    /// `primary` or `replica` as PostgreSQL reports it, `down` when it does
    /// not answer.
    pub role: Role,
    /// PostgreSQL answered a query.
    pub up: bool,
    /// A postmaster process is alive for the data directory (it may be up
    /// but still starting, or crashed children may be restarting).
    pub running: bool,
    /// The postmaster's PID, when running.
    pub pid: Option<i32>,
    pub timeline: Option<TimelineId>,
    /// `pg_current_wal_lsn()` on a primary.
    pub current_lsn: Option<Lsn>,
    /// `pg_last_wal_receive_lsn()` on a replica.
    pub receive_lsn: Option<Lsn>,
    /// `pg_last_wal_replay_lsn()` on a replica.
    pub replay_lsn: Option<Lsn>,
    /// On a replica: WAL received but not yet replayed. The lag behind the
    /// primary needs the primary's LSN; `pgdr status` computes it.
    pub lag_bytes: Option<u64>,
    /// On a replica: seconds since the last replayed transaction committed
    /// on the primary, 0 when everything received is replayed.
    pub lag_seconds: Option<f64>,
    /// The upstream this replica streams from, from `pg_stat_wal_receiver`.
    pub wal_receiver: Option<WalReceiver>,
    /// Replication connections served by this node (`pg_stat_replication`).
    pub replication: Vec<ReplicationConnection>,
    /// `default_transaction_read_only` is on.
    pub read_only: bool,
    /// Fenced by pgdr: read-only set through `ALTER SYSTEM` by a fence call.
    pub fenced: bool,
    /// A primary that came up without its agent and runs in standby mode
    /// under pgdr's boot guard: read-only until the controller restarts it
    /// as the primary (`start`) or re-establishes it as a replica.
    #[serde(default)]
    pub boot_guard: bool,
    /// The highest epoch this agent has seen.
    pub epoch: Epoch,
    /// `server_version` when up.
    pub server_version: Option<String>,
    /// Why PostgreSQL could not be queried, when it could not.
    pub error: Option<String>,
    /// The nodes of its cluster in the config this agent loaded when it
    /// started (it acts only toward those): a node added later is unknown
    /// to it until it restarts. Empty from an agent older than this field.
    #[serde(default)]
    pub members: Vec<String>,
}

/// One row of `pg_stat_wal_receiver`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalReceiver {
    pub status: String,
    pub sender_host: Option<String>,
    pub sender_port: Option<i32>,
    pub slot_name: Option<String>,
}

/// One row of `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicationConnection {
    /// The replica's node name (pgdr sets `application_name` to it).
    pub application_name: String,
    pub client_addr: Option<String>,
    /// `streaming`, `catchup`, `startup`, ...
    pub state: String,
    /// `async`, `sync`, `quorum`, `potential`.
    pub sync_state: String,
    pub sent_lsn: Option<Lsn>,
    pub write_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    /// `replay_lag` in seconds, when known.
    pub replay_lag_seconds: Option<f64>,
}

/// The mutating calls, each at `POST /v1/actions/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Start,
    Stop,
    Promote,
    Fence,
    Unfence,
    Rebuild,
    Rewind,
    Upstream,
}

impl Action {
    pub const ALL: [Action; 8] = [
        Action::Start,
        Action::Stop,
        Action::Promote,
        Action::Fence,
        Action::Unfence,
        Action::Rebuild,
        Action::Rewind,
        Action::Upstream,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Promote => "promote",
            Action::Fence => "fence",
            Action::Unfence => "unfence",
            Action::Rebuild => "rebuild",
            Action::Rewind => "rewind",
            Action::Upstream => "upstream",
        }
    }

    /// The URL path of the action.
    pub fn path(self) -> String {
        format!("/v1/actions/{}", self.as_str())
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How `stop` shuts PostgreSQL down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopMode {
    /// Roll back open transactions, checkpoint, exit.
    #[default]
    Fast,
    /// Exit at once; crash recovery on the next start.
    Immediate,
}

/// How `fence` stops a node from taking writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FenceMode {
    /// `default_transaction_read_only = on` and every client session ended.
    #[default]
    ReadOnly,
    /// A fast stop.
    Stop,
}

/// A PostgreSQL server to copy from or stream from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// The node this is: when given, the agent connects to the address
    /// its own config has for that node (which may differ from the
    /// sender's, e.g. through another region's network), not `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeName>,
}

/// Body of `start` and `unfence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochOnly {
    pub epoch: Epoch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    pub epoch: Epoch,
    #[serde(default)]
    pub mode: StopMode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteRequest {
    pub epoch: Epoch,
    /// How long to wait until the node takes writes; the agent's configured
    /// promote timeout when absent.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceRequest {
    pub epoch: Epoch,
    #[serde(default)]
    pub mode: FenceMode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildRequest {
    pub epoch: Epoch,
    pub from: Endpoint,
    /// Replication slot on the upstream; `pgdr_<node>` when absent.
    #[serde(default)]
    pub slot: Option<String>,
    /// Copy the data from the cluster's latest backup (and its archived
    /// WAL) instead of a base backup of the upstream, which is then only
    /// streamed from; `None`: a base backup of the upstream.
    #[serde(default)]
    pub from_backup: Option<FromBackup>,
}

/// Where a rebuild from a backup takes it from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FromBackup {
    /// A destination of the config; the cluster tier's backup destination
    /// (where its WAL is archived) when absent.
    #[serde(default)]
    pub dest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewindRequest {
    pub epoch: Epoch,
    pub from: Endpoint,
    /// Replication slot on the new upstream; `pgdr_<node>` when absent.
    #[serde(default)]
    pub slot: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamRequest {
    pub epoch: Epoch,
    pub host: String,
    pub port: u16,
    /// The node to follow: when given, the agent streams from the address
    /// its own config has for it (see [`Endpoint::node`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeName>,
    /// Replication slot on the upstream; `pgdr_<node>` when absent.
    #[serde(default)]
    pub slot: Option<String>,
}

/// What an action did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionResponse {
    pub node: NodeName,
    pub action: Action,
    /// False when the node already was in the asked state (idempotent call).
    pub changed: bool,
    /// One line for a person.
    pub message: String,
    /// The steps taken, in order.
    pub steps: Vec<String>,
    pub took_ms: u64,
    /// The epoch the agent holds after the call.
    pub epoch: Epoch,
    /// `stop`: the shutdown checkpoint's location (`pg_controldata`), when
    /// the server stopped cleanly as a primary. Nothing was written after
    /// it: a switchover promotes a replica only once it replayed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_lsn: Option<Lsn>,
}

/// The default slot name for a node: `pgdr_<node>` with `-` turned into `_`.
pub fn slot_name(node: &str) -> String {
    format!("pgdr_{}", node.replace('-', "_"))
}

/// `POST /v1/probe`: a canary write (the `pgdr.heartbeat` row) from the
/// agent's host to `host:port` (a primary directly, or a proxy's writer
/// endpoint), as the agent's cluster login, bounded by `timeout_ms`. The
/// agent is then a vantage point in its own region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRequest {
    pub host: String,
    pub port: u16,
    /// The whole probe's limit (connect and write), 1 ms to 60 s.
    pub timeout_ms: u64,
    /// The heartbeat row to write (one per vantage point, so probes never
    /// contend on a row); the agent's default when absent.
    #[serde(default)]
    pub row: Option<i32>,
    /// Also answer with the agent's own status (see [`ProbeReply::status`]),
    /// so a vantage point's probe and its status are one request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub with_status: bool,
}

/// What a probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// The heartbeat write committed.
    Ok,
    /// The connection was refused: the host answers, nothing listens.
    Refused,
    /// Nothing answered before the deadline.
    Timeout,
    /// The server answered with an error (read-only, shutting down...) or
    /// the transport failed in another way.
    Error,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Ok => "ok",
            ProbeKind::Refused => "refused",
            ProbeKind::Timeout => "timeout",
            ProbeKind::Error => "error",
        }
    }
}

/// The answer to `POST /v1/probe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReply {
    pub node: NodeName,
    pub region: RegionName,
    pub outcome: ProbeKind,
    /// From the start of the probe to its outcome.
    pub latency_ms: f64,
    /// The server's or transport's message when it did not commit.
    #[serde(default)]
    pub error: Option<String>,
    /// The committed heartbeat time (seconds since the Unix epoch, the
    /// target's clock).
    #[serde(default)]
    pub heartbeat_at: Option<f64>,
    /// The agent's own status, read while the probe ran, when the request
    /// asked for it (`with_status`); absent from agents that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Status>>,
}

/// A typed client of one agent. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    scheme: &'static str,
    addr: String,
    token: Option<Redacted>,
    /// Whole-call limit for `status` and `health`.
    timeout: Duration,
    /// Whole-call limit for actions (a rebuild copies a whole data directory).
    action_timeout: Duration,
}

impl AgentClient {
    /// Default limit for `status` and `health`.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default limit for actions.
    pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(300);

    /// A client of the agent at `addr` (`host:port`); `token` is the bearer
    /// token, if the agents require one.
    pub fn new(addr: &str, token: Option<Redacted>) -> Result<AgentClient, ApiError> {
        Self::new_with(addr, token, &HttpTls::plain())
    }

    /// [`AgentClient::new`] over `tls` (HTTPS when the agents serve it).
    pub fn new_with(addr: &str, token: Option<Redacted>, tls: &HttpTls) -> Result<AgentClient, ApiError> {
        Ok(AgentClient {
            http: tls.client(Duration::from_secs(2))?,
            scheme: tls.scheme(),
            addr: addr.to_owned(),
            token,
            timeout: Self::DEFAULT_TIMEOUT,
            action_timeout: Self::DEFAULT_ACTION_TIMEOUT,
        })
    }

    /// The same client for the agent at `addr`, sharing this one's
    /// connection pool: a caller that talks to many agents over and over
    /// (the controller's monitor, every probe interval) keeps its HTTPS
    /// connections open instead of paying a TLS handshake per call.
    pub fn at(&self, addr: &str) -> AgentClient {
        AgentClient { addr: addr.to_owned(), ..self.clone() }
    }

    /// The same client with another limit for `status` and `health`.
    pub fn with_timeout(mut self, timeout: Duration) -> AgentClient {
        self.timeout = timeout;
        self
    }

    /// The same client with another limit for actions.
    pub fn with_action_timeout(mut self, timeout: Duration) -> AgentClient {
        self.action_timeout = timeout;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    pub async fn health(&self) -> Result<Health, ApiError> {
        let req = self.http.get(self.url("/v1/health")).timeout(self.timeout);
        self.send(req).await
    }

    pub async fn status(&self) -> Result<Status, ApiError> {
        let req = self.auth(self.http.get(self.url("/v1/status"))).timeout(self.timeout);
        self.send(req).await
    }

    /// Asks the agent to probe a target from its host (`POST /v1/probe`),
    /// bounded by the client's `status` limit.
    pub async fn probe(&self, req: &ProbeRequest) -> Result<ProbeReply, ApiError> {
        let req = self.auth(self.http.post(self.url("/v1/probe"))).json(req).timeout(self.timeout);
        self.send(req).await
    }

    pub async fn start(&self, epoch: Epoch) -> Result<ActionResponse, ApiError> {
        self.action(Action::Start, &EpochOnly { epoch }).await
    }

    pub async fn stop(&self, req: &StopRequest) -> Result<ActionResponse, ApiError> {
        self.action(Action::Stop, req).await
    }

    pub async fn promote(&self, req: &PromoteRequest) -> Result<ActionResponse, ApiError> {
        self.action(Action::Promote, req).await
    }

    pub async fn fence(&self, req: &FenceRequest) -> Result<ActionResponse, ApiError> {
        self.action(Action::Fence, req).await
    }

    pub async fn unfence(&self, epoch: Epoch) -> Result<ActionResponse, ApiError> {
        self.action(Action::Unfence, &EpochOnly { epoch }).await
    }

    pub async fn rebuild(&self, req: &RebuildRequest) -> Result<ActionResponse, ApiError> {
        self.action(Action::Rebuild, req).await
    }

    pub async fn rewind(&self, req: &RewindRequest) -> Result<ActionResponse, ApiError> {
        self.action(Action::Rewind, req).await
    }

    pub async fn upstream(&self, req: &UpstreamRequest) -> Result<ActionResponse, ApiError> {
        self.action(Action::Upstream, req).await
    }

    /// Any action with any body (the typed methods above call this).
    pub async fn action<B: Serialize + ?Sized>(&self, action: Action, body: &B) -> Result<ActionResponse, ApiError> {
        let req = self.auth(self.http.post(self.url(&action.path()))).json(body).timeout(self.action_timeout);
        self.send(req).await
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        http::with_token(req, self.token.as_ref())
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, ApiError> {
        http::send(&self.addr, req, http::On409::StaleEpoch).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names() {
        let req = StopRequest { epoch: Epoch(3), mode: StopMode::Immediate };
        assert_eq!(serde_json::to_string(&req).ok().as_deref(), Some(r#"{"epoch":3,"mode":"immediate"}"#));
        let f: Result<FenceRequest, _> = serde_json::from_str(r#"{"epoch":1,"mode":"read_only"}"#);
        assert_eq!(f.ok().map(|f| f.mode), Some(FenceMode::ReadOnly));
        let s: Result<StopRequest, _> = serde_json::from_str(r#"{"epoch":1}"#);
        assert_eq!(s.ok().map(|s| s.mode), Some(StopMode::Fast));
        assert_eq!(Action::Rebuild.path(), "/v1/actions/rebuild");
        assert_eq!(slot_name("east-2"), "pgdr_east_2");
    }

    #[tokio::test]
    async fn refused_is_told_apart() {
        // Bind then drop: nothing listens on the port any more.
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(1);
        let client = AgentClient::new(&format!("127.0.0.1:{port}"), None).expect("client");
        let err = client.health().await.expect_err("nothing listens");
        assert!(err.is_refused(), "{err:?}");
        assert!(!err.is_timeout());
    }

    #[tokio::test]
    async fn silence_is_a_timeout() {
        // A listener that accepts (the kernel does) but never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client =
            AgentClient::new(&addr.to_string(), None).expect("client").with_timeout(Duration::from_millis(300));
        let err = client.status().await.expect_err("no answer");
        assert!(err.is_timeout(), "{err:?}");
        drop(listener);
    }
}
