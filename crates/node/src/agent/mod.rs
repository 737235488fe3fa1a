//! The node agent: an HTTP server (axum) on each PostgreSQL host that reports
//! the server's status and performs host-level actions for the controller
//! and the CLI. The wire types live in `pgdr_api::agent`.
//!
//! Every mutating call carries the cluster epoch, checked against the
//! durable highest-seen epoch ([`epoch`]) before anything is done; actions
//! run one at a time and are idempotent. [`serve`] takes a listener and a
//! cancellation token so tests run the agent in-process.
//!
//! [`ROUTES`] lists every route (the peer routes of [`crate::lease`]
//! included) with who may call it; the router is built from it and the
//! auth guard reads it, so no route exists without a requirement. All but
//! `/v1/health` need the agents' bearer token (`agents.token`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use pgdr_api::HttpTls;
use pgdr_api::agent::{Action, ActionResponse, Health, Status};
use pgdr_api::error::ErrorBody;
use pgdr_config::auth::{Denied, TokenSet};
use pgdr_config::{Access, Config, Redacted};
use pgdr_model::{ClusterName, Epoch, NodeName, RegionName};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bin::{BinError, PgBinaries};
use crate::local::{LocalPg, Login, PgError, PgTls};
use crate::os::{OsError, RunAs};
use pgdr_tls::pg::KeptClient;

mod actions;
pub mod epoch;
pub(crate) mod status;

pub use epoch::{EpochError, EpochStore};

/// Why the agent cannot start, or why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Bin(#[from] BinError),
    #[error(transparent)]
    Os(#[from] OsError),
    #[error("{0}")]
    Denied(Denied),
    #[error(transparent)]
    Epoch(#[from] EpochError),
    /// An epoch more than one above the highest seen that the controller's
    /// store did not confirm (see [`actions`]).
    #[error("epoch {given} jumps past {seen}, the highest this agent has seen, and {why}: refused")]
    EpochUnconfirmed { given: Epoch, seen: Epoch, why: String },
    #[error("bad request: {0}")]
    BadRequest(String),
    /// PostgreSQL must be up for this action and is not.
    #[error("PostgreSQL on node {node} is not up ({detail}); start it first")]
    Down { node: String, detail: String },
    #[error(transparent)]
    Pg(#[from] PgError),
}

impl AgentError {
    /// The stable `kind` of the error body.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::Denied(d) => d.kind(),
            AgentError::Epoch(EpochError::Stale { .. }) => "stale_epoch",
            AgentError::BadRequest(_) => "bad_request",
            AgentError::EpochUnconfirmed { .. } => "epoch_unconfirmed",
            AgentError::Down { .. } => "postgres_down",
            AgentError::Pg(PgError::RewindImpossible(_)) => "rewind_impossible",
            AgentError::Pg(PgError::Timeout { .. }) => "timeout",
            AgentError::Pg(PgError::NotOurs { .. } | PgError::PortTaken { .. }) => "port_taken",
            _ => "failed",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            AgentError::Denied(d) => StatusCode::from_u16(d.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            AgentError::Epoch(EpochError::Stale { .. }) => StatusCode::CONFLICT,
            AgentError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AgentError::Down { .. }
            | AgentError::EpochUnconfirmed { .. }
            | AgentError::Pg(
                PgError::RewindImpossible(_)
                | PgError::Invalid(_)
                | PgError::NotOurs { .. }
                | PgError::PortTaken { .. },
            ) => StatusCode::UNPROCESSABLE_ENTITY,
            AgentError::Pg(PgError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let seen_epoch = match &self {
            AgentError::Epoch(EpochError::Stale { seen, .. }) => Some(*seen),
            _ => None,
        };
        let body = ErrorBody { error: self.to_string(), kind: self.kind().to_owned(), seen_epoch };
        (self.status(), axum::Json(body)).into_response()
    }
}

/// What one agent manages, resolved from the config.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: NodeName,
    pub cluster: ClusterName,
    pub region: RegionName,
    pub pg: LocalPg,
    /// The superuser login the agent queries and administers with.
    pub login: Login,
    pub replication_user: String,
    /// The node's PostgreSQL settings, written on every rebuild and rewind.
    pub settings: Vec<(String, String)>,
    /// Bearer token required on everything but `/v1/health`.
    pub token: Option<Redacted>,
    pub promote_timeout: Duration,
    /// How long start and stop may take.
    pub pg_wait: Duration,
    /// HTTPS for the agent's API (`[tls]`), asking clients for a certificate
    /// when `tls.client_certs` is on; plain HTTP when `None`.
    pub https: Option<Arc<rustls::ServerConfig>>,
    /// How the agent calls the controller and its peers.
    pub http_tls: HttpTls,
    /// The only servers this agent connects to when a request names one
    /// (`rebuild`, `rewind`, `upstream`, `probe`): the cluster's nodes and
    /// its proxies, from the config. A request naming anything else is
    /// refused, so the agent's credentials cannot be sent to a host of the
    /// caller's choosing.
    pub targets: Vec<Target>,
    /// The controller to confirm an epoch jump with, and its token.
    pub controller: Option<ControllerRef>,
}

/// A server of the config an agent may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The node's name, or the proxy's.
    pub name: String,
    pub host: String,
    pub port: u16,
    /// A proxy endpoint (probes only), not a PostgreSQL node.
    pub proxy: bool,
}

/// Where the controller's API is, to read the cluster's stored epoch.
#[derive(Clone)]
pub struct ControllerRef {
    /// Every controller's API address (one per region, one leading).
    pub addrs: Vec<String>,
    pub token: Option<Redacted>,
}

impl std::fmt::Debug for ControllerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerRef")
            .field("addrs", &self.addrs)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl AgentConfig {
    /// The configured target at `host:port`, if any. A proxy endpoint
    /// counts only when `proxies` is set; a proxy listening on an
    /// unspecified address (`0.0.0.0`) is reached on loopback.
    pub fn target(&self, host: &str, port: u16, proxies: bool) -> Option<&Target> {
        let loopback = |h: &str| matches!(h, "127.0.0.1" | "::1" | "localhost");
        self.targets.iter().find(|t| {
            t.port == port
                && (!t.proxy || proxies)
                && (t.host.eq_ignore_ascii_case(host)
                    || (t.proxy && matches!(t.host.as_str(), "0.0.0.0" | "::") && loopback(host)))
        })
    }
}

impl AgentConfig {
    /// The agent of node `name` in `cfg`.
    pub fn from_config(cfg: &Config, name: &str) -> Result<AgentConfig, AgentError> {
        let (cluster, node) = cfg.node(name).ok_or_else(|| {
            let known: Vec<String> =
                cfg.clusters.iter().flat_map(|c| c.nodes.iter().map(|n| n.name.to_string())).collect();
            AgentError::Setup(format!("{}: no node named {name:?} (nodes: {})", cfg.file.display(), known.join(", ")))
        })?;
        let data_dir = node.data_dir.clone().ok_or_else(|| {
            AgentError::Setup(format!("{}: node {name:?} has no data_dir; its agent needs one", cfg.file.display()))
        })?;
        let bin = PgBinaries::find(node.bin_dir.as_deref())?;
        let run_as = RunAs::for_node(node.os_user.as_deref())?;
        let password = match &cluster.password {
            Some(s) => {
                Some(s.resolve().map_err(|e| AgentError::Setup(format!("cluster {} password: {e}", cluster.name)))?)
            }
            None => None,
        };
        let token = cfg.agent_api_token().map_err(|e| AgentError::Setup(e.to_string()))?;
        let mut targets = Vec::new();
        for n in &cluster.nodes {
            crate::local::valid_host(&n.host)
                .map_err(|e| AgentError::Setup(format!("{}: node {}: {e}", cfg.file.display(), n.name)))?;
            targets.push(Target { name: n.name.to_string(), host: n.host.clone(), port: n.port, proxy: false });
        }
        for p in cfg.proxies.iter().filter(|p| p.cluster == cluster.name) {
            for addr in std::iter::once(p.writer).chain(p.reader) {
                targets.push(Target {
                    name: p.name.clone(),
                    host: addr.ip().to_string(),
                    port: addr.port(),
                    proxy: true,
                });
            }
        }
        // Confirming an epoch jump reads the cluster: a viewer's token.
        let controller_token =
            cfg.controller_client_token(Access::Viewer).map_err(|e| AgentError::Setup(e.to_string()))?;
        let tls = match &cfg.tls {
            Some(t) => Some(PgTls::new(&t.ca).map_err(|e| AgentError::Setup(format!("tls.ca: {e}")))?),
            None => None,
        };
        let (https, http_tls) = match &cfg.tls {
            Some(t) => {
                let setup = |e: pgdr_tls::TlsError| AgentError::Setup(format!("[tls]: {e}"));
                let id = t.agent.as_ref().ok_or_else(|| AgentError::Setup("[tls] has no [tls.agent]".into()))?;
                let id = pgdr_tls::Identity { cert: id.cert.clone(), key: id.key.clone() };
                let client_ca = t.client_certs.then_some(t.ca.as_path());
                (
                    Some(pgdr_tls::server_config(&id, client_ca).map_err(setup)?),
                    HttpTls::new(&t.ca, Some(&id)).map_err(setup)?,
                )
            }
            None => (None, HttpTls::plain()),
        };
        Ok(AgentConfig {
            targets,
            controller: Some(ControllerRef { addrs: cfg.controller_addrs(), token: controller_token }),
            node: node.name.clone(),
            cluster: cluster.name.clone(),
            region: node.region.clone(),
            pg: LocalPg::new(bin, data_dir, node.host.clone(), node.port, run_as),
            login: Login { user: cluster.user.clone(), password, database: cluster.database.clone(), tls },
            replication_user: cluster.replication_user.clone(),
            settings: node.settings.clone(),
            token,
            promote_timeout: cfg.timing.promote_timeout,
            pg_wait: Duration::from_secs(60),
            https,
            http_tls,
        })
    }
}

/// The agent's shared state.
#[derive(Debug)]
pub struct AgentState {
    pub cfg: AgentConfig,
    pub epoch: EpochStore,
    /// Mutating actions run one at a time.
    actions: tokio::sync::Mutex<()>,
    /// This agent's view of its cluster's members (a digest), set when it
    /// runs with a lease; until then the peer routes support nobody.
    pub(crate) members: std::sync::OnceLock<String>,
    tokens: TokenSet,
    /// The agent's own connection to its PostgreSQL for status reads and
    /// the lease loop's role check, kept between them: these run every
    /// probe interval, and a fresh connection each time (TCP, a TLS
    /// handshake under `[tls]`, SCRAM) outlasted the controller's status
    /// deadline on a loaded host.
    local: tokio::sync::Mutex<KeptClient<String>>,
    /// `POST /v1/probe`'s connections, one per target (see `crate::probe`).
    pub(crate) probes: tokio::sync::Mutex<HashMap<(String, u16), crate::probe::Kept>>,
    /// How a rebuild from a backup restores one (set by `pgdr agent`);
    /// without it such a rebuild is refused.
    restorer: std::sync::OnceLock<Arc<dyn BackupRestorer>>,
}

/// Restores the cluster's latest backup for a rebuild from a backup. The
/// backup engine sits above this crate, so the binary that runs the agent
/// plugs it in with [`AgentState::set_restorer`].
pub trait BackupRestorer: Send + Sync + std::fmt::Debug {
    /// Writes the newest backup of the agent's cluster from destination
    /// `dest` (the tier's backup destination when `None`) into `pg`'s data
    /// directory, which is absent or empty: the files only, no recovery
    /// settings (the rebuild writes the standby's).
    fn restore<'a>(
        &'a self,
        dest: Option<&'a str>,
        pg: &'a LocalPg,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<crate::replica::Restored, String>> + Send + 'a>>;
}

impl AgentState {
    pub fn new(cfg: AgentConfig) -> Result<Arc<AgentState>, AgentError> {
        let epoch = EpochStore::open(crate::replica::sibling(&cfg.pg.data_dir, ".epoch"))?;
        let tokens = TokenSet::single("agents", Access::Operator, cfg.token.clone());
        if tokens.is_open() {
            tracing::warn!(node = %cfg.node, "no agents.token configured: the agent's API is open to anyone who reaches it");
        }
        Ok(Arc::new(AgentState {
            cfg,
            epoch,
            actions: tokio::sync::Mutex::new(()),
            members: std::sync::OnceLock::new(),
            tokens,
            local: Default::default(),
            probes: Default::default(),
            restorer: std::sync::OnceLock::new(),
        }))
    }

    /// Lets rebuilds restore backups (see [`BackupRestorer`]); once.
    pub fn set_restorer(&self, restorer: Arc<dyn BackupRestorer>) {
        let _ = self.restorer.set(restorer);
    }

    /// Runs `query` over the agent's kept connection to its own
    /// PostgreSQL, opening one when there is none (and refusing a server
    /// that does not serve the node's data directory:
    /// [`LocalPg::connect_own`]); an error closes it so
    /// the next call starts afresh. Settings changed by a reload are seen
    /// as on a new connection: a backend applies a reload before its next
    /// command.
    pub(crate) async fn with_local<T>(
        &self,
        query: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, String> {
        let mut kept = self.local.lock().await;
        let (pg, login) = (self.cfg.pg.clone(), self.cfg.login.clone());
        let open = move || async move { pg.connect_own(&login).await.map_err(|e| e.to_string()) };
        let client = kept.get(open, |e| format!("connecting: {e}")).await?;
        let res = query(client).await.map_err(|e| crate::local::pg_detail(&e));
        match res {
            Ok(_) => kept.release(),
            Err(_) => kept.close(),
        }
        res
    }
}

/// Who may call an agent route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone: `/v1/health` (liveness, nothing else).
    Public,
    /// The agents' bearer token.
    Token,
}

/// One route: method, path (axum syntax), who may call it, its handler.
#[derive(Clone)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub need: Need,
    handler: fn() -> MethodRouter<Arc<AgentState>>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({:?})", self.method, self.path, self.need)
    }
}

const fn route(
    method: Method,
    path: &'static str,
    need: Need,
    handler: fn() -> MethodRouter<Arc<AgentState>>,
) -> Route {
    Route { method, path, need, handler }
}

/// Every route an agent serves.
pub const ROUTES: &[Route] = &[
    route(Method::GET, "/v1/health", Need::Public, || get(health)),
    route(Method::GET, "/v1/status", Need::Token, || get(get_status)),
    route(Method::POST, "/v1/actions/{action}", Need::Token, || post(run_action)),
    route(Method::POST, "/v1/probe", Need::Token, || post(crate::probe::handle)),
    route(Method::POST, "/v1/peer/support", Need::Token, || post(crate::lease::support)),
    route(Method::POST, "/v1/peer/withdraw", Need::Token, || post(crate::lease::withdraw)),
];

/// The agent's router, built from [`ROUTES`] behind the auth guard.
pub fn router(state: Arc<AgentState>) -> Router {
    let mut r: Router<Arc<AgentState>> = Router::new();
    for route in ROUTES {
        r = r.route(route.path, (route.handler)());
    }
    r.route_layer(axum::middleware::from_fn_with_state(state.clone(), guard)).with_state(state)
}

/// Lets a request through only with the token its route needs; a matched
/// path without a row in [`ROUTES`] for its method is refused.
async fn guard(
    State(state): State<Arc<AgentState>>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let need = matched
        .as_ref()
        .and_then(|m| ROUTES.iter().find(|r| r.method == req.method() && r.path == m.as_str()))
        .map(|r| r.need);
    match need {
        Some(Need::Public) => next.run(req).await,
        Some(Need::Token) => {
            let given = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
            match state.tokens.authorize(given, None) {
                Ok(_) => next.run(req).await,
                Err(d) => AgentError::Denied(d).into_response(),
            }
        }
        None => AgentError::BadRequest(format!("{} is not allowed here", req.method())).into_response(),
    }
}

/// Serves the agent on `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, state: Arc<AgentState>, cancel: CancellationToken) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(node = %state.cfg.node, %addr, epoch = %state.epoch.current(), "agent listening");
    let listener = pgdr_tls::ApiListener::new(listener, state.cfg.https.clone());
    axum::serve(listener, router(state)).with_graceful_shutdown(cancel.cancelled_owned()).await
}

async fn health(State(state): State<Arc<AgentState>>) -> axum::Json<Health> {
    axum::Json(Health { ok: true, node: state.cfg.node.clone(), version: env!("CARGO_PKG_VERSION").to_owned() })
}

async fn get_status(State(state): State<Arc<AgentState>>) -> Result<axum::Json<Status>, AgentError> {
    Ok(axum::Json(status::collect(&state).await))
}

async fn run_action(
    State(state): State<Arc<AgentState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<axum::Json<ActionResponse>, AgentError> {
    let action = Action::ALL
        .into_iter()
        .find(|a| a.as_str() == name)
        .ok_or_else(|| AgentError::BadRequest(format!("no action {name:?}")))?;
    let started = std::time::Instant::now();
    let result = actions::run(&state, action, &body).await;
    let took_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(done) => {
            tracing::info!(node = %state.cfg.node, %action, changed = done.changed, took_ms, "{}", done.message);
            Ok(axum::Json(ActionResponse {
                node: state.cfg.node.clone(),
                action,
                changed: done.changed,
                message: done.message,
                steps: done.steps,
                took_ms,
                epoch: state.epoch.current(),
                checkpoint_lsn: done.checkpoint_lsn,
            }))
        }
        Err(e) => {
            tracing::warn!(node = %state.cfg.node, %action, took_ms, kind = e.kind(), "action failed: {e}");
            Err(e)
        }
    }
}

/// Every configured target, for an error message.
pub(crate) fn known_targets(cfg: &AgentConfig) -> String {
    actions::known(cfg, true)
}

/// Parses an action body, a 400 with the reason when it does not fit.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AgentError> {
    serde_json::from_slice(body).map_err(|e| AgentError::BadRequest(format!("invalid JSON body: {e}")))
}
