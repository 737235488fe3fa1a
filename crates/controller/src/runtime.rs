//! What every part of the controller shares: the config, the store, agent
//! clients, the proxy control, the lease book and the latest observations of
//! each cluster. Everything here is cheap to clone behind an `Arc`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pgdr_api::agent::{AgentClient, Endpoint, Status};
use pgdr_api::{ApiError, HttpTls};
use pgdr_config::{Cluster, Config, Node, Tier};
use pgdr_model::{ClusterName, Epoch, Lsn, NodeName, Role};
use pgdr_store::{ClusterState, ClusterStore, Event, EventLog, HeldLease, StateStore};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::probe::Target;

/// Where the proxy should send one cluster's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub epoch: Epoch,
    /// (node, host, port) of the primary the epoch names.
    pub primary: Option<(NodeName, String, u16)>,
    pub replicas: Vec<(NodeName, String, u16)>,
}

/// What a pause waits for before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Transactions running now may finish, up to the proxy's
    /// `drain_timeout` (a switchover: the old primary is up).
    Running,
    /// Nothing: the old primary is down, frozen or cut off (a failover, a
    /// suspicion), so what runs there cannot finish in a way that counts.
    /// New transactions queue at once all the same.
    Nothing,
}

/// How the controller drives the proxies of a cluster: in-process in
/// `pgdr run`, over their admin API otherwise.
#[async_trait]
pub trait ProxyControl: Send + Sync + std::fmt::Debug {
    /// Pauses the writer endpoint (and the reader's fallback to the
    /// primary); with [`Drain::Running`] waits for running transactions.
    async fn pause(&self, cluster: &ClusterName, drain: Drain) -> Result<(), String>;
    async fn resume(&self, cluster: &ClusterName) -> Result<(), String>;
    /// Publishes the routing (a no-op for proxies that discover it).
    fn publish(&self, cluster: &ClusterName, route: &RouteInfo);
    /// Publishes the routing and resumes only once the proxies have it: a
    /// resume that overtook its route would release the held transactions
    /// onto the old primary (stopped by then: client errors). The default
    /// suits proxies whose `publish` takes effect before it returns.
    async fn publish_and_resume(&self, cluster: &ClusterName, route: &RouteInfo) -> Result<(), String> {
        self.publish(cluster, route);
        self.resume(cluster).await
    }

    /// Makes every proxy of the cluster reload its user verifiers (after a
    /// password change), by proxy; none by default.
    async fn refresh_users(&self, _cluster: &ClusterName) -> Vec<(String, Result<(), String>)> {
        Vec::new()
    }
}

/// Proxies driven through their admin HTTP API (`POST /v1/clusters/{c}/pause`).
#[derive(Debug, Clone)]
pub struct HttpProxies {
    http: reqwest::Client,
    scheme: &'static str,
    /// Admin API addresses per cluster, with each one's token.
    apis: HashMap<ClusterName, Vec<(String, Option<pgdr_config::Redacted>)>>,
}

impl HttpProxies {
    /// Over HTTPS, trusting the cluster's CA, under `[tls]`.
    pub fn from_config(config: &Config) -> Result<HttpProxies, pgdr_tls::TlsError> {
        Self::from_config_where(config, |_| true)
    }

    /// [`HttpProxies::from_config`] for the config's proxies `keep` picks
    /// (`pgdr run` with controllers in several regions: the proxies other
    /// processes serve).
    pub fn from_config_where(
        config: &Config,
        keep: impl Fn(&pgdr_config::Proxy) -> bool,
    ) -> Result<HttpProxies, pgdr_tls::TlsError> {
        let mut apis: HashMap<ClusterName, Vec<(String, Option<pgdr_config::Redacted>)>> = HashMap::new();
        for p in config.proxies.iter().filter(|p| keep(p)) {
            if let Some(a) = p.api {
                let token = config.proxy_api_token(p).unwrap_or_else(|e| {
                    tracing::error!("proxy {}: {e}; its admin API will refuse the controller", p.name);
                    None
                });
                apis.entry(p.cluster.clone()).or_default().push((a.to_string(), token));
            }
        }
        let tls = match &config.tls {
            Some(t) => HttpTls::new(&t.ca, None)?,
            None => HttpTls::plain(),
        };
        let http = tls.client(Duration::from_secs(2)).unwrap_or_default();
        Ok(HttpProxies { http, scheme: tls.scheme(), apis })
    }

    /// `POST /v1/clusters/{cluster}/{what}` to every proxy of the cluster
    /// at once (one unreachable proxy does not hold up the others).
    async fn call(&self, cluster: &ClusterName, what: &str) -> Result<(), String> {
        let mut calls = tokio::task::JoinSet::new();
        for (api, token) in self.apis.get(cluster).into_iter().flatten() {
            let url = format!("{}://{api}/v1/clusters/{cluster}/{what}", self.scheme);
            let mut req = self.http.post(&url).timeout(Duration::from_secs(60));
            if let Some(t) = token {
                req = req.bearer_auth(t.expose());
            }
            let api = api.clone();
            calls.spawn(async move {
                match req.send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("{api}: HTTP {}", r.status())),
                    Err(e) => Err(format!("{api}: {e}")),
                }
            });
        }
        let mut errors = Vec::new();
        while let Some(r) = calls.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(format!("the call's task failed: {e}")),
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }

    /// [`ProxyControl::pause`] that each proxy ends by itself after `hold`
    /// unless resumed (or paused again) first: for proxies another process
    /// serves, which a lost controller would leave paused, and whose pause
    /// may arrive after its resume across a slow link.
    pub async fn pause_held(&self, cluster: &ClusterName, drain: Drain, hold: Duration) -> Result<(), String> {
        let hold_ms = hold.as_millis();
        match drain {
            Drain::Running => self.call(cluster, &format!("pause?hold_ms={hold_ms}")).await,
            Drain::Nothing => self.call(cluster, &format!("pause?drain_ms=0&hold_ms={hold_ms}")).await,
        }
    }

    /// Whether the cluster has proxies here.
    pub fn serves(&self, cluster: &ClusterName) -> bool {
        self.apis.get(cluster).is_some_and(|a| !a.is_empty())
    }
}

#[async_trait]
impl ProxyControl for HttpProxies {
    async fn pause(&self, cluster: &ClusterName, drain: Drain) -> Result<(), String> {
        match drain {
            Drain::Running => self.call(cluster, "pause").await,
            Drain::Nothing => self.call(cluster, "pause?drain_ms=0").await,
        }
    }
    async fn resume(&self, cluster: &ClusterName) -> Result<(), String> {
        self.call(cluster, "resume").await
    }

    async fn refresh_users(&self, cluster: &ClusterName) -> Vec<(String, Result<(), String>)> {
        let mut out = Vec::new();
        for (api, token) in self.apis.get(cluster).into_iter().flatten() {
            let url = format!("{}://{api}/v1/clusters/{cluster}/users/refresh", self.scheme);
            let mut req = self.http.post(&url).timeout(Duration::from_secs(10));
            if let Some(t) = token {
                req = req.bearer_auth(t.expose());
            }
            let res = match req.send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("{url}: HTTP {}", r.status())),
                Err(e) => Err(format!("{url}: {e}")),
            };
            out.push((api.clone(), res));
        }
        out
    }
    /// Sends the route to every proxy of the cluster (`POST
    /// /v1/clusters/{c}/route`) without waiting: a proxy refuses a route of
    /// an older epoch than its own, and the monitor publishes again.
    fn publish(&self, cluster: &ClusterName, route: &RouteInfo) {
        for (url, req) in self.route_requests(cluster, route) {
            tokio::spawn(async move {
                if let Err(e) = send_route(req).await {
                    tracing::warn!(url, "{e}");
                }
            });
        }
    }

    /// The route first, to every proxy, waited for; then the resume.
    async fn publish_and_resume(&self, cluster: &ClusterName, route: &RouteInfo) -> Result<(), String> {
        let mut sends = tokio::task::JoinSet::new();
        for (url, req) in self.route_requests(cluster, route) {
            sends.spawn(async move { send_route(req).await.map_err(|e| format!("{url}: {e}")) });
        }
        let mut routed: Vec<String> = Vec::new();
        while let Some(r) = sends.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => routed.push(e),
                Err(e) => routed.push(format!("the route's task failed: {e}")),
            }
        }
        // Resumed even when a proxy did not take the route (it may hold a
        // newer one): held clients must not wait out max_pause.
        let resumed = self.resume(cluster).await;
        match (routed.is_empty(), resumed) {
            (true, r) => r,
            (false, Ok(())) => Err(format!("route not taken: {}", routed.join("; "))),
            (false, Err(e)) => Err(format!("route not taken: {}; {e}", routed.join("; "))),
        }
    }
}

impl HttpProxies {
    fn route_requests(&self, cluster: &ClusterName, route: &RouteInfo) -> Vec<(String, reqwest::RequestBuilder)> {
        let backend = |(n, h, p): &(NodeName, String, u16)| serde_json::json!({"node": n, "host": h, "port": p});
        let body = serde_json::json!({
            "epoch": route.epoch,
            "primary": route.primary.as_ref().map(backend),
            "replicas": route.replicas.iter().map(backend).collect::<Vec<_>>(),
        });
        let mut out = Vec::new();
        for (api, token) in self.apis.get(cluster).into_iter().flatten() {
            let url = format!("{}://{api}/v1/clusters/{cluster}/route", self.scheme);
            let mut req = self.http.post(&url).json(&body).timeout(Duration::from_secs(2));
            if let Some(t) = token {
                req = req.bearer_auth(t.expose());
            }
            out.push((url, req));
        }
        out
    }
}

async fn send_route(req: reqwest::RequestBuilder) -> Result<(), String> {
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("proxy refused the route: HTTP {}", r.status())),
        Err(e) => Err(format!("cannot publish the route: {e}")),
    }
}

/// What the controller last saw of a cluster.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub statuses: BTreeMap<NodeName, Result<Status, String>>,
    /// Last known heartbeat lag per replica, seconds.
    pub lag: BTreeMap<NodeName, f64>,
    /// The primary's last known WAL position (before an outage).
    pub primary_lsn: Option<Lsn>,
    /// The last heartbeat the primary committed (seconds since the epoch).
    pub heartbeat_at: Option<f64>,
    pub detection: String,
    /// Sync mode without enough healthy replicas.
    pub degraded: bool,
    /// The latest reading of each vantage point in another region (an
    /// agent there probing the primary), by vantage point name.
    pub vantages: BTreeMap<String, VantageView>,
    /// Set while the state store cannot be read: the cluster runs without
    /// a control plane (why, and since when).
    pub control_plane: Option<String>,
    pub control_plane_since: Option<time::OffsetDateTime>,
    /// The cluster state the monitor last read from the store.
    pub state: Option<pgdr_store::ClusterState>,
}

/// What one remote vantage point (an agent in another region) last saw.
#[derive(Debug, Clone, Default)]
pub struct VantageView {
    /// The node whose agent was asked, and its region.
    pub node: String,
    pub region: String,
    /// What it probed, in words.
    pub target: String,
    /// `ok`, `refused`, `timeout`, `error`, or `unreachable` (the agent
    /// did not answer: no vote).
    pub outcome: String,
    pub latency_ms: Option<f64>,
    pub detail: Option<String>,
    pub at: Option<Instant>,
    /// Readings since the controller started, by outcome.
    pub counts: BTreeMap<String, u64>,
}

/// A lease granted to a primary's agent.
#[derive(Debug, Clone)]
struct Grant {
    node: NodeName,
    epoch: Epoch,
    held: HeldLease,
    at: Instant,
}

/// The controller's side of the primary leases.
#[derive(Debug)]
pub struct LeaseBook {
    started: Instant,
    grants: Mutex<HashMap<ClusterName, Grant>>,
    /// Renewals being decided: (cluster, node, id) → when the request
    /// came. Counted by [`LeaseBook::last_grant`] as if granted, so a fence
    /// step that wrote the fence epoch while a renewal was between reading
    /// the store and answering still waits for it.
    pending: Mutex<HashMap<(ClusterName, NodeName, u64), Instant>>,
    ids: std::sync::atomic::AtomicU64,
    /// Old primaries whose renewals are refused (a failover of their
    /// cluster has begun). Only the old primary: the new one must renew.
    blocked: Mutex<HashSet<(ClusterName, NodeName)>>,
}

/// Why a renewal was refused.
#[derive(Debug, thiserror::Error)]
pub enum LeaseRefused {
    /// The node must fence: it is not (or no longer) the primary.
    #[error("{0}")]
    Refused(String),
    /// The controller cannot answer now; the agent treats it as unreachable.
    #[error("{0}")]
    NotReady(String),
    /// This controller no longer leads (the store fenced its write or
    /// renewal): the agent asks another controller.
    #[error("{0}")]
    NotLeader(String),
}

/// A store failure as a renewal's answer: fenced means another controller
/// leads.
fn not_ready(e: pgdr_store::ClusterError) -> LeaseRefused {
    match e {
        pgdr_store::ClusterError::Store(pgdr_store::StoreError::Fenced(m)) => LeaseRefused::NotLeader(m),
        e => LeaseRefused::NotReady(e.to_string()),
    }
}

impl LeaseBook {
    pub fn new() -> LeaseBook {
        LeaseBook {
            started: Instant::now(),
            grants: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            ids: std::sync::atomic::AtomicU64::new(0),
            blocked: Mutex::new(HashSet::new()),
        }
    }

    /// The last renewal granted to `node` of `cluster`, or the controller's
    /// start when there was none since.
    pub fn last_grant(&self, cluster: &ClusterName, node: &NodeName) -> Instant {
        let granted = self
            .grants
            .lock()
            .ok()
            .and_then(|g| g.get(cluster).filter(|g| g.node == *node).map(|g| g.at))
            .unwrap_or(self.started);
        let pending = self
            .pending
            .lock()
            .ok()
            .and_then(|p| p.iter().filter(|((c, n, _), _)| c == cluster && n == node).map(|(_, at)| *at).max());
        pending.map_or(granted, |p| p.max(granted))
    }

    /// Refuses `old_primary`'s renewals from now on (a failover began).
    pub fn block(&self, cluster: &ClusterName, old_primary: &NodeName) {
        if let Ok(mut b) = self.blocked.lock() {
            b.insert((cluster.clone(), old_primary.clone()));
        }
    }

    /// Lifts every block of `cluster` (the failover ended).
    pub fn unblock(&self, cluster: &ClusterName) {
        if let Ok(mut b) = self.blocked.lock() {
            b.retain(|(c, _)| c != cluster);
        }
    }

    fn is_blocked(&self, cluster: &ClusterName, node: &NodeName) -> bool {
        self.blocked.lock().map(|b| b.contains(&(cluster.clone(), node.clone()))).unwrap_or(true)
    }

    /// Grants or renews `node`'s lease if the store names it primary.
    pub async fn renew(
        &self,
        store: &ClusterStore,
        cluster: &ClusterName,
        node: &NodeName,
        ttl: Duration,
    ) -> Result<Epoch, LeaseRefused> {
        let id = self.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = (cluster.clone(), node.clone(), id);
        if let Ok(mut p) = self.pending.lock() {
            p.insert(key.clone(), Instant::now());
        }
        let out = self.decide_renewal(store, cluster, node, ttl).await;
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&key);
        }
        out
    }

    async fn decide_renewal(
        &self,
        store: &ClusterStore,
        cluster: &ClusterName,
        node: &NodeName,
        ttl: Duration,
    ) -> Result<Epoch, LeaseRefused> {
        if self.is_blocked(cluster, node) {
            return Err(LeaseRefused::Refused(format!("a failover of cluster {cluster} is under way")));
        }
        let state = store
            .state(cluster)
            .await
            .map_err(|e| LeaseRefused::NotReady(format!("state store: {e}")))?
            .ok_or_else(|| LeaseRefused::NotReady(format!("cluster {cluster} has no state yet")))?;
        // The rule reads the store (pgdr_decide::renewal): a failover's
        // fence epoch names no primary, so this refuses the old primary in
        // any controller, a restarted one included.
        let now = Instant::now();
        let view = pgdr_decide::renewal::StoreView { epoch: state.epoch, primary: state.primary.clone() };
        if let Err(pgdr_decide::renewal::Refused(why)) = pgdr_decide::renewal::renew(&view, node) {
            return Err(LeaseRefused::Refused(format!("cluster {cluster}: {why}")));
        }
        let existing = self.grants.lock().ok().and_then(|g| g.get(cluster).cloned());
        if let Some(g) = existing.filter(|g| g.node == *node && g.epoch == state.epoch)
            && store.renew(&g.held).await.is_ok()
        {
            if let Ok(mut m) = self.grants.lock() {
                m.insert(cluster.clone(), Grant { at: now, ..g });
            }
            return Ok(state.epoch);
        }
        let held = match store.acquire_primary_lease(cluster, node, state.epoch, ttl).await {
            Ok(h) => h,
            Err(pgdr_store::ClusterError::LeaseHeld { .. }) => {
                // A lease from before a controller restart: take it over.
                let _ = store.break_primary_lease(cluster).await;
                store.acquire_primary_lease(cluster, node, state.epoch, ttl).await.map_err(not_ready)?
            }
            Err(e @ pgdr_store::ClusterError::NotPrimary { .. }) => return Err(LeaseRefused::Refused(e.to_string())),
            Err(e) => return Err(not_ready(e)),
        };
        if let Ok(mut m) = self.grants.lock() {
            m.insert(cluster.clone(), Grant { node: node.clone(), epoch: state.epoch, held, at: now });
        }
        Ok(state.epoch)
    }
}

impl Default for LeaseBook {
    fn default() -> Self {
        Self::new()
    }
}

/// The shared state of one controller.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub store: Arc<dyn StateStore>,
    pub clusters: ClusterStore,
    pub events: EventLog,
    pub proxies: Arc<dyn ProxyControl>,
    pub leases: LeaseBook,
    pub observed: Mutex<HashMap<ClusterName, Observed>>,
    /// Nodes to bring back as replicas once their host answers: old
    /// primaries (`true`: straight to a base backup that keeps the old
    /// data directory aside, whose tail may hold lost commits), and nodes a
    /// role change could not repoint (`false`: pg_rewind first).
    pub needs_rejoin: Mutex<HashMap<(ClusterName, NodeName), bool>>,
    /// Clusters whose writer name in DNS may be stale ([`crate::dns`]).
    pub dns_pending: crate::dns::Pending,
    pub metrics: Metrics,
    pub agent_token: Option<pgdr_config::Redacted>,
    /// The tokens the API accepts.
    pub tokens: pgdr_config::auth::TokenSet,
    /// TLS toward PostgreSQL (`[tls]`), for probes and queries.
    pub pg_tls: Option<pgdr_tls::pg::PgTls>,
    /// How the controller calls agents: HTTPS with its own certificate
    /// (shown when agents ask for one) under `[tls]`.
    pub http_tls: HttpTls,
    /// The one HTTP client (and connection pool) every agent call goes
    /// through, built from `agent_token` and `http_tls`; [`Shared::agent`]
    /// points it at a node. A client per call would open a connection, and
    /// under `[tls]` do a full mTLS handshake, for every status and probe
    /// request: on a loaded host that alone outlasted the probe deadline.
    pub agents: AgentClient,
    /// HTTPS for the controller's API under `[tls]`.
    pub https: Option<Arc<rustls::ServerConfig>>,
    pub webhooks: crate::webhook::Webhooks,
    /// The latest readiness findings (`None` until the first run ends).
    pub readiness: Mutex<Option<crate::readiness::ReadinessView>>,
    /// Per cluster, whether each region's stored secret logged in at the
    /// latest check ([`crate::rotation::watch_logins`]), for the status page.
    pub stored_logins: Mutex<HashMap<ClusterName, Vec<crate::rotation::StoredLogin>>>,
    /// Wakes [`crate::rotation::watch_logins`] (a rotation ended).
    pub logins_due: tokio::sync::Notify,
}

impl Shared {
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.config.cluster(name)
    }

    pub fn tier(&self, cluster: &Cluster) -> Option<&Tier> {
        self.config.tier(cluster.tier.as_str())
    }

    /// A client of `node`'s agent. Every client shares one connection
    /// pool ([`Shared::agents`]), so the monitor's calls each probe
    /// interval reuse open HTTPS connections.
    pub fn agent(&self, node: &Node) -> Result<AgentClient, ApiError> {
        Ok(self.agents.at(&node.agent).with_timeout(self.config.timing.probe_timeout.max(Duration::from_millis(500))))
    }

    /// A login to `node` as the cluster's pgdr user.
    pub fn target(&self, cluster: &Cluster, node: &Node) -> Target {
        Target {
            host: node.host.clone(),
            port: node.port,
            user: cluster.user.clone(),
            // Read at each (re)connection, not at each probe.
            password: None,
            secret: cluster.password.clone(),
            database: cluster.database.clone(),
            tls: self.pg_tls.clone(),
        }
    }

    pub fn endpoint(node: &Node) -> Endpoint {
        Endpoint { host: node.host.clone(), port: node.port, node: Some(node.name.clone()) }
    }

    /// Every node's agent status, asked concurrently, each within the
    /// probe timeout (the watch loop's pace).
    pub async fn observe(&self, cluster: &Cluster) -> BTreeMap<NodeName, Result<Status, ApiError>> {
        self.observe_nodes(cluster, None, |_| true).await
    }

    /// [`Shared::observe`] with a longer timeout per agent: for workflow
    /// steps, where a slow answer must not read as "down".
    pub async fn observe_within(
        &self,
        cluster: &Cluster,
        timeout: Option<Duration>,
    ) -> BTreeMap<NodeName, Result<Status, ApiError>> {
        self.observe_nodes(cluster, timeout, |_| true).await
    }

    /// Asks the agents of the cluster's nodes that `ask` picks for their
    /// status, all at once, in the calling task (no task spawned per agent).
    pub async fn observe_nodes(
        &self,
        cluster: &Cluster,
        timeout: Option<Duration>,
        ask: impl Fn(&NodeName) -> bool,
    ) -> BTreeMap<NodeName, Result<Status, ApiError>> {
        let asks = cluster.nodes.iter().filter(|n| ask(&n.name)).map(|node| {
            let client = match timeout {
                Some(t) => self.agent(node).map(|c| c.with_timeout(t)),
                None => self.agent(node),
            };
            async move {
                let r = match client {
                    Ok(c) => c.status().await,
                    Err(e) => Err(e),
                };
                (node.name.clone(), r)
            }
        });
        futures::future::join_all(asks).await.into_iter().collect()
    }

    /// The routing for a cluster state: the named primary, and replicas
    /// whose agents report them up and in recovery.
    pub fn route(&self, cluster: &Cluster, state: &ClusterState) -> RouteInfo {
        // Which nodes are up replicas, read in place (no copy of the view).
        let up_replicas: Vec<NodeName> = self
            .observed
            .lock()
            .ok()
            .and_then(|o| {
                o.get(&cluster.name).map(|o| {
                    o.statuses
                        .iter()
                        .filter(|(_, s)| matches!(s, Ok(s) if s.up && s.role == Role::Replica))
                        .map(|(n, _)| n.clone())
                        .collect()
                })
            })
            .unwrap_or_default();
        let primary = state
            .primary
            .as_ref()
            .and_then(|p| cluster.node(p.as_str()))
            .map(|n| (n.name.clone(), n.host.clone(), n.port));
        let replicas = cluster
            .nodes
            .iter()
            .filter(|n| Some(&n.name) != state.primary.as_ref())
            .filter(|n| up_replicas.contains(&n.name))
            .map(|n| (n.name.clone(), n.host.clone(), n.port))
            .collect();
        RouteInfo { epoch: state.epoch, primary, replicas }
    }

    /// Appends an event to the store's log, logs it, and queues it for
    /// webhooks.
    pub async fn emit(&self, mut event: Event) {
        match self.events.append(&event).await {
            Ok(seq) => event.seq = Some(seq),
            Err(e) => tracing::warn!("cannot record event {}: {e}", event.state),
        }
        tracing::info!(
            cluster = %event.cluster,
            workflow = event.workflow.as_deref().unwrap_or(""),
            step = event.step.as_deref().unwrap_or(""),
            epoch = event.epoch.map(|e| e.0),
            "event {}: {}",
            event.state,
            event.message.as_deref().unwrap_or("")
        );
        self.webhooks.send(&event);
    }

    /// A new event for `cluster` at the current time.
    pub fn event(&self, cluster: &ClusterName, state: &str, message: impl Into<String>) -> Event {
        let mut e = Event::new(cluster.clone(), state, time::OffsetDateTime::now_utc());
        e.message = Some(message.into());
        e
    }
}
