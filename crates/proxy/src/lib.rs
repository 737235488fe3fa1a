//! pgdr's PostgreSQL wire-protocol proxy: applications connect here instead
//! of to PostgreSQL, and role changes are hidden from them.
//!
//! - [`protocol`]: framing and the few decoded messages (pure, no IO).
//! - [`scram`], [`auth`]: SCRAM-SHA-256 both sides, user verifier sources.
//! - [`backend`]: connections to PostgreSQL with dead-peer detection.
//! - [`gate`]: pause, bounded FIFO queue, drain, resume.
//! - `session`: one client session: relay, transaction state from
//!   ReadyForQuery, statement tracking, transparent move to a new primary.
//! - [`server`]: accept loops, TLS, cancel requests; [`api`]: admin HTTP.
//! - [`discovery`]: standalone routing by polling the nodes (the controller
//!   replaces it in `pgdr run`).
//!
//! The proxy learns where to route from a `watch::Receiver<Routing>` per
//! cluster and is paused/resumed through [`ProxyHandle`]. It must not depend
//! on the controller or the state store.
//!
//! - [`pool`]: backend pools per (endpoint, user, database).
//!
//! Sessions pool by default (`pool = "transaction"`): a client holds a
//! backend for a transaction and gives it back idle; what it set (SETs,
//! reported settings, prepared statements) follows it to the next backend,
//! and state that cannot follow (temporary tables, session advisory locks,
//! LISTEN, WITH HOLD cursors) pins it to its backend until it ends. The
//! same tracking moves sessions across role changes. `pool = "session"`
//! gives each client its own backend.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgdr_model::ClusterName;
use serde::Serialize;
use tokio::sync::watch;

pub mod api;
pub mod auth;
pub mod backend;
pub mod discovery;
pub mod gate;
pub mod metrics;
pub(crate) mod pool;
pub mod protocol;
pub mod routing;
pub mod scram;
pub mod server;
mod session;
pub mod sql;

pub use auth::{AdminLogin, AuthConfig};
pub use backend::TcpSettings;
pub use gate::PauseOutcome;
pub use routing::{Backend, Routing};
pub use server::{ClusterListeners, Listeners};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cluster {0} is not served by this proxy")]
    UnknownCluster(String),
    #[error("cannot load TLS certificate or key: {0}")]
    Tls(String),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("admin API failed: {0}")]
    Api(std::io::Error),
    #[error("cluster {0}: this proxy's routing is driven in-process, not published over its API")]
    NotPublishable(String),
    #[error("cluster {0}: the route is of an older epoch than the one this proxy has")]
    OlderEpoch(String),
}

/// Settings of one cluster's endpoints (from `[[proxies]]`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_pause: Duration,
    pub max_queue: usize,
    /// The most client connections held at once (both endpoints); more are
    /// refused with SQLSTATE 53300.
    pub max_clients: usize,
    /// How long a client may take for the TLS handshake, and again for its
    /// startup packet.
    pub handshake_timeout: Duration,
    /// How long a client may take to authenticate (PostgreSQL's
    /// `authentication_timeout` is a minute).
    pub auth_timeout: Duration,
    pub drain_timeout: Duration,
    pub reader_fallback: bool,
    pub tcp: TcpSettings,
    pub pool: pgdr_config::PoolMode,
    pub pool_size: usize,
    pub pool_min_idle: usize,
    pub pool_timeout: Duration,
    /// TLS toward PostgreSQL (the cluster's CA under `[tls]`): every
    /// backend connection starts TLS and verifies the server's certificate
    /// for the backend's host name. `None`: plain TCP.
    pub backend_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Settings {
    pub fn from_config(p: &pgdr_config::Proxy) -> Settings {
        Settings {
            max_pause: p.max_pause,
            max_queue: p.max_queue as usize,
            max_clients: p.max_clients as usize,
            drain_timeout: p.drain_timeout,
            reader_fallback: p.reader_fallback,
            tcp: TcpSettings { connect_timeout: p.connect_timeout, user_timeout: p.tcp_user_timeout },
            pool: p.pool,
            pool_size: p.pool_size as usize,
            pool_min_idle: p.pool_min_idle as usize,
            pool_timeout: p.pool_timeout,
            ..Settings::default()
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_pause: Duration::from_secs(30),
            max_queue: 10_000,
            max_clients: 10_000,
            handshake_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(5),
            reader_fallback: true,
            tcp: TcpSettings { connect_timeout: Duration::from_secs(2), user_timeout: Duration::from_secs(2) },
            pool: pgdr_config::PoolMode::Transaction,
            pool_size: 20,
            pool_min_idle: 0,
            pool_timeout: Duration::from_secs(10),
            backend_tls: None,
        }
    }
}

/// One cluster the proxy serves.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: ClusterName,
    pub routing: watch::Receiver<Routing>,
    pub settings: Settings,
    pub auth: AuthConfig,
}

/// Everything a proxy serves.
#[derive(Debug, Clone, Default)]
pub struct ProxySpec {
    pub clusters: Vec<ClusterSpec>,
    /// PEM certificate chain and key for client TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Refuse clients that do not start TLS, before authentication (so no
    /// password or proof crosses the network in the clear).
    pub require_tls: bool,
    /// Bearer token the admin API requires on every route (`None`: open,
    /// which config validation allows only on a loopback address).
    pub api_token: Option<pgdr_model::Redacted>,
    /// Certificate and key the admin API serves HTTPS with (`[tls.proxy]`);
    /// plain HTTP when `None`.
    pub api_tls: Option<pgdr_tls::Identity>,
}

/// Per-cluster live state shared by its sessions.
#[derive(Debug)]
pub(crate) struct ClusterState {
    pub name: ClusterName,
    pub routing: watch::Receiver<Routing>,
    pub gate: gate::Gate,
    pub settings: Settings,
    pub auth: AuthConfig,
    pub users: auth::UserStore,
    pub metrics: metrics::ClusterMetrics,
    /// Backends (`host:port`) that reported themselves read-only, with the
    /// epoch at which they did: writer sessions avoid them until the epoch
    /// changes.
    pub read_only: Mutex<HashMap<String, pgdr_model::Epoch>>,
    /// Whether `read_only` ever held an entry: the check at every
    /// transaction's start takes no lock until one is marked.
    pub any_read_only: AtomicBool,
    pub sessions: AtomicUsize,
    pub reader_rr: AtomicUsize,
    /// Sessions waiting now for an unreachable primary (writer endpoint):
    /// the first of an episode logs it.
    pub held: AtomicUsize,
    /// Backend pools (`pool = "transaction"`).
    pub pools: pool::Pools,
    /// Client connections held now, counted against `max_clients`.
    pub clients: AtomicUsize,
    /// Where routes a controller publishes over the admin API go (the
    /// standalone discovery task reads them); none in `pgdr run`.
    pub publisher: Mutex<Option<watch::Sender<Option<Routing>>>>,
}

impl ClusterState {
    pub fn mark_read_only(&self, b: &Backend, epoch: pgdr_model::Epoch) {
        if let Ok(mut m) = self.read_only.lock() {
            m.insert(b.addr(), epoch);
            self.any_read_only.store(true, Ordering::Release);
        }
    }

    pub fn is_marked_read_only(&self, b: &Backend, epoch: pgdr_model::Epoch) -> bool {
        // Asked at every transaction's start: no lock is taken and no
        // address formatted while nothing was ever marked (the usual case).
        if !self.any_read_only.load(Ordering::Acquire) {
            return false;
        }
        self.read_only.lock().map(|m| !m.is_empty() && m.get(&b.addr()) == Some(&epoch)).unwrap_or(false)
    }
}

/// The real backend behind a proxy-issued cancel key.
#[derive(Debug, Clone)]
pub(crate) struct CancelTarget {
    pub secret: i32,
    /// Shared with the session, which updates it where it lands and
    /// clears it when it gives its backend back, without taking the map's
    /// lock or hashing its key at every transaction.
    pub backend: CancelSlot,
}

/// A session's current backend and that backend's own cancel key (none
/// between pooled transactions).
pub(crate) type CancelSlot = Arc<Mutex<Option<(Arc<Backend>, (i32, i32))>>>;

pub(crate) struct Inner {
    pub clusters: HashMap<String, Arc<ClusterState>>,
    pub cancel: Mutex<HashMap<i32, CancelTarget>>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// See [`ProxySpec::require_tls`].
    pub require_tls: bool,
    pub api_tls: Option<Arc<rustls::ServerConfig>>,
    pub metrics: metrics::Metrics,
    pub tcp: TcpSettings,
    /// Random per proxy: derives the mock SCRAM salt of unknown users.
    pub mock_secret: [u8; 32],
    /// Who may call the admin API.
    pub api_tokens: pgdr_config::auth::TokenSet,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("clusters", &self.clusters.keys()).field("tls", &self.tls.is_some()).finish()
    }
}

/// The proxy as the rest of pgdr sees it: serve, pause, resume, status.
#[derive(Debug, Clone)]
pub struct ProxyHandle {
    pub(crate) inner: Arc<Inner>,
}

/// What `resume` did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ResumeOutcome {
    pub paused_ms: Option<u64>,
    pub released: usize,
}

/// One cluster's state for `status()` and `GET /v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub routing: Routing,
    pub paused: bool,
    pub paused_ms: Option<u64>,
    pub queued: usize,
    pub active_transactions: usize,
    pub sessions: usize,
    pub known_users: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub clusters: Vec<ClusterStatus>,
}

impl ProxyHandle {
    pub fn new(spec: ProxySpec) -> Result<ProxyHandle, ProxyError> {
        let metrics = metrics::Metrics::default();
        let mut clusters = HashMap::new();
        let mut tcp = Settings::default().tcp;
        for c in spec.clusters {
            let users = auth::UserStore::default();
            if let AuthConfig::UsersFile(path) = &c.auth {
                users.replace(auth::load_users_file(path)?);
            }
            tcp = c.settings.tcp;
            let state = ClusterState {
                metrics: metrics.cluster(c.name.as_str()),
                name: c.name.clone(),
                routing: c.routing,
                gate: gate::Gate::default(),
                settings: c.settings,
                auth: c.auth,
                users,
                read_only: Mutex::new(HashMap::new()),
                any_read_only: AtomicBool::new(false),
                sessions: AtomicUsize::new(0),
                reader_rr: AtomicUsize::new(0),
                held: AtomicUsize::new(0),
                pools: pool::Pools::default(),
                clients: AtomicUsize::new(0),
                publisher: Mutex::new(None),
            };
            clusters.insert(c.name.as_str().to_owned(), Arc::new(state));
        }
        let tls = match &spec.tls {
            Some((cert, key)) => Some(server::tls_acceptor(cert, key)?),
            None => None,
        };
        let api_tokens = pgdr_config::auth::TokenSet::single("admin", pgdr_config::Access::Operator, spec.api_token);
        let api_tls = match &spec.api_tls {
            Some(id) => Some(pgdr_tls::server_config(id, None).map_err(|e| ProxyError::Tls(e.to_string()))?),
            None => None,
        };
        Ok(ProxyHandle {
            inner: Arc::new(Inner {
                clusters,
                cancel: Mutex::new(HashMap::new()),
                tls,
                require_tls: spec.require_tls,
                api_tls,
                metrics,
                tcp,
                mock_secret: rand::random(),
                api_tokens,
            }),
        })
    }

    fn cluster(&self, name: &str) -> Result<&Arc<ClusterState>, ProxyError> {
        self.inner.clusters.get(name).ok_or_else(|| ProxyError::UnknownCluster(name.to_owned()))
    }

    /// Pauses the cluster's writer endpoint (and the reader endpoint's
    /// fallback to the primary): new connections and new transactions
    /// queue; returns once running transactions finished or the drain
    /// timeout passed.
    pub async fn pause(&self, cluster: &str) -> Result<PauseOutcome, ProxyError> {
        self.pause_with(cluster, None).await
    }

    /// [`ProxyHandle::pause`] waiting at most `drain` (the configured
    /// drain timeout when `None`) for running transactions; zero when what
    /// runs on the primary cannot finish (a failover).
    pub async fn pause_with(&self, cluster: &str, drain: Option<Duration>) -> Result<PauseOutcome, ProxyError> {
        self.pause_held(cluster, drain, None).await
    }

    /// [`ProxyHandle::pause_with`] that ends by itself after `hold` unless
    /// it was resumed or paused again first: for a controller that may not
    /// be there to resume (one in another region, across a link that can
    /// fail), and whose pause may arrive late, after its resume.
    pub async fn pause_held(
        &self,
        cluster: &str,
        drain: Option<Duration>,
        hold: Option<Duration>,
    ) -> Result<PauseOutcome, ProxyError> {
        let c = self.cluster(cluster)?;
        let out = c.gate.pause(drain.unwrap_or(c.settings.drain_timeout).min(c.settings.drain_timeout)).await;
        tracing::info!(
            cluster,
            drained = out.drained,
            active = out.active,
            waited_ms = out.waited_ms,
            hold_ms = hold.map(|h| h.as_millis() as u64),
            "writer endpoint paused"
        );
        if let Some(hold) = hold {
            let (c, cluster, generation) = (Arc::clone(c), cluster.to_owned(), out.generation);
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                if let Some((paused_for, released)) = c.gate.resume_if(generation) {
                    if let Some(d) = paused_for {
                        c.metrics.pause_duration.observe(d.as_secs_f64());
                    }
                    tracing::warn!(
                        cluster,
                        released,
                        hold_ms = hold.as_millis() as u64,
                        "writer endpoint resumed by itself: its pause was not resumed within the hold"
                    );
                }
            });
        }
        Ok(out)
    }

    /// Routes published for `cluster` over the admin API go to `tx` (the
    /// standalone discovery task's input).
    pub fn set_publisher(&self, cluster: &str, tx: watch::Sender<Option<Routing>>) -> Result<(), ProxyError> {
        let c = self.cluster(cluster)?;
        if let Ok(mut p) = c.publisher.lock() {
            *p = Some(tx);
        }
        Ok(())
    }

    /// A route published by a controller. Never goes back to an older
    /// epoch ([`Routing::accept`]): returns whether it was taken.
    pub fn publish(&self, cluster: &str, route: Routing) -> Result<bool, ProxyError> {
        let c = self.cluster(cluster)?;
        let Ok(guard) = c.publisher.lock() else { return Ok(false) };
        let Some(tx) = guard.as_ref() else { return Err(ProxyError::NotPublishable(cluster.to_owned())) };
        let mut older = false;
        tx.send_if_modified(|cur| match cur {
            Some(c) => {
                older = route.epoch < c.epoch;
                c.accept(route.clone())
            }
            None => {
                *cur = Some(route.clone());
                true
            }
        });
        if older {
            return Err(ProxyError::OlderEpoch(cluster.to_owned()));
        }
        tracing::info!(cluster, epoch = %route.epoch, primary = ?route.primary.as_ref().map(|p| p.node.to_string()), "route published");
        Ok(true)
    }

    /// Resumes: queued clients run (against the routing now published).
    pub fn resume(&self, cluster: &str) -> Result<ResumeOutcome, ProxyError> {
        let c = self.cluster(cluster)?;
        let (paused_for, released) = c.gate.resume();
        if let Some(d) = paused_for {
            c.metrics.pause_duration.observe(d.as_secs_f64());
        }
        tracing::info!(
            cluster,
            released,
            paused_ms = paused_for.map(|d| d.as_millis() as u64),
            "writer endpoint resumed"
        );
        Ok(ResumeOutcome { paused_ms: paused_for.map(|d| d.as_millis() as u64), released })
    }

    /// Reloads the cluster's user verifiers now (`auth = auto`: from the
    /// current primary; a users file: from the file), so a login whose
    /// password was just changed (`pgdr secrets rotate`) is known before its
    /// new secret is handed out. Sessions already open are untouched.
    /// Returns how many users are known (`None` in passthrough).
    pub async fn refresh_users(&self, cluster: &str) -> Result<Option<usize>, ProxyError> {
        let c = self.cluster(cluster)?;
        let users = match &c.auth {
            AuthConfig::Passthrough => return Ok(None),
            AuthConfig::UsersFile(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ProxyError::Auth(auth::AuthError::Read { path: path.clone(), source: e }))?;
                auth::parse_users_file(path, &text).map_err(ProxyError::Auth)?
            }
            AuthConfig::Auto(login) => {
                let primary = c.routing.borrow().primary.clone();
                let Some(p) = primary else {
                    return Err(ProxyError::Auth(auth::AuthError::Backend {
                        addr: "-".into(),
                        message: "no primary is routed: nothing to read verifiers from".into(),
                    }));
                };
                auth::fetch_from_backend(&p, login, c.settings.tcp.connect_timeout.max(Duration::from_secs(2)))
                    .await
                    .map_err(ProxyError::Auth)?
            }
        };
        let n = users.len();
        c.users.replace(users);
        tracing::info!(cluster, users = n, "user verifiers reloaded on request");
        Ok(Some(n))
    }

    pub fn status(&self) -> ProxyStatus {
        let mut clusters: Vec<ClusterStatus> = self
            .inner
            .clusters
            .values()
            .map(|c| ClusterStatus {
                cluster: c.name.to_string(),
                routing: c.routing.borrow().clone(),
                paused: c.gate.is_paused(),
                paused_ms: c.gate.paused_for().map(|d| d.as_millis() as u64),
                queued: c.gate.queued(),
                active_transactions: c.gate.active(),
                sessions: c.sessions.load(Ordering::Relaxed),
                known_users: c.users.len(),
            })
            .collect();
        clusters.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        ProxyStatus { clusters }
    }

    /// Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        let m = &self.inner.metrics;
        for c in self.inner.clusters.values() {
            let l = metrics::ClusterLabel { cluster: c.name.to_string() };
            m.queue_depth.get_or_create(&l).set(c.gate.queued() as i64);
            m.paused.get_or_create(&l).set(c.gate.is_paused() as i64);
            m.active_transactions.get_or_create(&l).set(c.gate.active() as i64);
            for p in c.pools.all() {
                let l = metrics::PoolLabel {
                    cluster: c.name.to_string(),
                    endpoint: p.key.endpoint.to_owned(),
                    user: p.key.user.clone(),
                    database: p.key.database.clone(),
                };
                m.pool_waiting.get_or_create(&l).set(p.waiting.load(Ordering::Relaxed) as i64);
                m.pool_in_use.get_or_create(&l).set(p.in_use() as i64);
                m.pool_idle.get_or_create(&l).set(p.idle_count() as i64);
                m.pool_size.get_or_create(&l).set(p.size as i64);
            }
        }
        m.encode()
    }

    /// Serves the endpoints and the admin API until `token` is cancelled.
    pub async fn serve(
        &self,
        listeners: Listeners,
        token: tokio_util::sync::CancellationToken,
    ) -> Result<(), ProxyError> {
        server::serve(self.clone(), listeners, token).await
    }
}
