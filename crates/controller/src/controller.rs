//! The controller as one value: shared state, the workflow engine, the watch
//! loops and the HTTP API. [`Controller::run`] serves on a listener until a
//! cancellation token fires, so tests run it in-process and `pgdr run`
//! composes it with the proxies.

use std::collections::HashMap;
use std::sync::Arc;

use pgdr_api::controller::{ClusterView, NodeView, RoleChangeRequest, StepView, WorkflowStarted, WorkflowView};
use pgdr_config::Config;
use pgdr_model::{ClusterName, ReplicationMode, Role};
use pgdr_store::{ClusterStore, EventLog, StateStore, SystemClock};
use pgdr_workflow::{Engine, EngineOptions, WorkflowError, WorkflowId};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::candidate;
use crate::runtime::{LeaseBook, ProxyControl, Shared};
use crate::workflows::{self, Params};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    #[error(transparent)]
    Store(#[from] pgdr_store::StoreError),
    #[error("no cluster {0} in the config")]
    UnknownCluster(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
    /// A token or secret of the config cannot be read, is empty, or is
    /// given to two holders.
    #[error("{0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(#[from] pgdr_tls::TlsError),
}

impl ControllerError {
    /// A stable kind for the API's error body.
    pub fn kind(&self) -> &'static str {
        match self {
            ControllerError::Workflow(WorkflowError::ClusterBusy { .. }) | ControllerError::Conflict(_) => "conflict",
            ControllerError::Workflow(WorkflowError::NotFound(_)) | ControllerError::UnknownCluster(_) => "not_found",
            ControllerError::Workflow(e) if e.is_usage() => "bad_request",
            ControllerError::BadRequest(_) => "bad_request",
            _ => "failed",
        }
    }
}

/// A running controller. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Controller {
    pub sh: Arc<Shared>,
    pub engine: Engine,
}

impl Controller {
    /// Builds a controller over `store`, driving proxies through `proxies`.
    /// `owner` names this controller in workflow claims (a restarted
    /// controller with the same name takes its workflows back at once).
    pub async fn new(
        config: Config,
        store: Arc<dyn StateStore>,
        proxies: Arc<dyn ProxyControl>,
        owner: &str,
        webhooks: crate::webhook::Webhooks,
    ) -> Result<Controller, ControllerError> {
        let clock: Arc<dyn pgdr_store::Clock> = Arc::new(SystemClock);
        let agent_token = config.agent_api_token().map_err(|e| ControllerError::Config(e.to_string()))?;
        let tokens = pgdr_config::auth::TokenSet::new(
            config
                .controller_tokens()
                .map_err(|e| ControllerError::Config(e.to_string()))?
                .into_iter()
                .map(|(t, v)| (pgdr_config::auth::Caller { name: t.name, role: t.role }, v)),
        );
        if let Some(dup) = tokens.duplicates().first() {
            return Err(ControllerError::Config(format!(
                "{}: controller token {dup:?} has the same value as another: each holder needs its own",
                config.file.display()
            )));
        }
        if tokens.is_open() {
            tracing::warn!(
                listen = %config.controller.listen,
                "no controller token configured: the API is open to anyone who reaches this loopback address"
            );
        }
        let (pg_tls, http_tls, https) = match &config.tls {
            Some(t) => {
                let id = t.controller.as_ref().map(|i| pgdr_tls::Identity { cert: i.cert.clone(), key: i.key.clone() });
                let https = match &id {
                    // Browsers read the status page here: the controller asks
                    // for no client certificate (its tokens authenticate).
                    Some(id) => Some(pgdr_tls::server_config(id, None)?),
                    None => None,
                };
                (Some(pgdr_tls::pg::PgTls::new(&t.ca)?), pgdr_api::HttpTls::new(&t.ca, id.as_ref())?, https)
            }
            None => (None, pgdr_api::HttpTls::plain(), None),
        };
        // One pool for every agent call; `Shared::agent` sets the address.
        let agents = pgdr_api::agent::AgentClient::new_with("", agent_token.clone(), &http_tls)
            .map_err(|e| ControllerError::Config(format!("HTTP client for the agents: {e}")))?;
        let sh = Arc::new(Shared {
            clusters: ClusterStore::new(store.clone(), clock.clone()),
            events: EventLog::new(store.clone(), pgdr_store::DEFAULT_EVENT_RETENTION),
            store: store.clone(),
            proxies,
            leases: LeaseBook::new(),
            observed: Default::default(),
            needs_rejoin: Default::default(),
            dns_pending: Default::default(),
            metrics: Default::default(),
            agent_token,
            tokens,
            pg_tls,
            http_tls,
            agents,
            https,
            webhooks,
            readiness: Default::default(),
            stored_logins: Default::default(),
            logins_due: Default::default(),
            config,
        });
        let engine = Engine::new(
            store,
            clock,
            workflows::registry(&sh).register(crate::backups::def(&sh)).register(crate::rotation::def(&sh)),
            EngineOptions { owner: owner.to_owned(), ..EngineOptions::default() },
        )
        .await?;
        Ok(Controller { sh, engine })
    }

    /// Resumes interrupted workflows, watches every cluster and serves the
    /// API on `listener` until `cancel` fires.
    pub async fn run(&self, listener: TcpListener, cancel: CancellationToken) -> Result<(), ControllerError> {
        let tracker = TaskTracker::new();
        match self.engine.resume_all().await {
            Ok(h) if !h.is_empty() => tracing::warn!("resumed {} interrupted workflows", h.len()),
            Ok(_) => {}
            Err(e) => tracing::error!("cannot resume workflows: {e}"),
        }
        for cluster in self.sh.config.clusters.clone() {
            tracker.spawn(crate::monitor::run(self.clone(), cluster, cancel.clone()));
        }
        tracker.spawn(crate::backups::run(self.clone(), cancel.clone()));
        if self.sh.config.clusters.iter().any(|c| c.dns.is_some()) {
            tracker.spawn(crate::dns::run(self.clone(), cancel.clone()));
        }
        tracker.spawn(crate::rotation::run(self.clone(), cancel.clone()));
        tracker.spawn(crate::rotation::watch_logins(self.clone(), cancel.clone()));
        let every = self.sh.config.controller.readiness_interval;
        tracker.spawn(crate::readiness::run(self.clone(), every, cancel.clone()));
        // Engine events (every step) go to the webhooks too.
        let mut rx = self.engine.subscribe();
        let hooks = self.sh.webhooks.clone();
        let sh = self.sh.clone();
        let c2 = cancel.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = c2.cancelled() => return,
                    ev = rx.recv() => match ev {
                        Ok(ev) => {
                            if ev.state == "started" && ev.step.is_none() && let Some(kind) = &ev.kind {
                                sh.metrics.workflows.get_or_create(&crate::metrics::KindLabel { cluster: ev.cluster.to_string(), kind: kind.clone() }).inc();
                            }
                            hooks.send(&ev)
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    }
                }
            }
        });
        let addr = listener.local_addr().map_err(ControllerError::Serve)?;
        tracing::info!(%addr, "controller listening");
        let listener = pgdr_tls::ApiListener::new(listener, self.sh.https.clone());
        let res = axum::serve(listener, crate::api::router(self.clone()))
            .with_graceful_shutdown(cancel.clone().cancelled_owned())
            .await;
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        self.engine.shutdown().await;
        res.map_err(ControllerError::Serve)
    }

    /// Whether a role-changing workflow holds the cluster's lock. A secret
    /// rotation holds it too but does not count: detection goes on while it
    /// runs, and a failover preempts it ([`crate::rotation::preempt`]).
    pub async fn busy(&self, cluster: &ClusterName) -> bool {
        // One read of the lock (the monitor asks at every probe).
        match self.sh.store.get(&pgdr_store::keys::cluster_lock(cluster.as_str())).await {
            Ok(Some(v)) => !crate::rotation::is_rotation_lock_value(&v.value),
            _ => false,
        }
    }

    /// Whether any workflow holds the cluster's lock (a rotation included).
    pub async fn locked(&self, cluster: &ClusterName) -> bool {
        matches!(self.sh.store.get(&pgdr_store::keys::cluster_lock(cluster.as_str())).await, Ok(Some(_)))
    }

    /// Starts a workflow with fixed params; returns its id.
    ///
    /// A re-establish holds no cluster lock (it may rebuild a replica for
    /// minutes and must not block detection): it is refused while a role
    /// change runs or another re-establish of the cluster runs. A role
    /// change (failover, switchover, failback) takes the cluster's lock and
    /// then cancels any re-establish of the cluster, so a primary that fails
    /// during a rebuild is failed over at once.
    pub async fn start_params(&self, kind: &str, params: Params) -> Result<WorkflowId, ControllerError> {
        let cluster = params.cluster.clone();
        let value = serde_json::to_value(&params).map_err(|e| ControllerError::BadRequest(e.to_string()))?;
        if kind == workflows::REESTABLISH {
            if self.locked(&cluster).await {
                return Err(ControllerError::Conflict(format!("a role change is running on cluster {cluster}")));
            }
            if let Some(id) = self.reestablishing(&cluster).await?.first() {
                return Err(ControllerError::Conflict(format!(
                    "re-establish workflow {} is running on cluster {cluster}",
                    id.as_str()
                )));
            }
        }
        if kind == workflows::FAILOVER {
            crate::rotation::preempt(self, &cluster, &format!("failover: {}", params.reason)).await;
        }
        let handle = self.engine.start(kind, &cluster, value).await?;
        if kind != workflows::REESTABLISH {
            for id in self.reestablishing(&cluster).await? {
                let by = format!("{kind} {}", handle.id.as_str());
                match self.engine.cancel(&id, &by).await {
                    Ok(()) => {
                        tracing::warn!(cluster = %cluster, workflow = %id, "re-establish cancelled: {by} started")
                    }
                    Err(e) => tracing::warn!(cluster = %cluster, workflow = %id, "cannot cancel the re-establish: {e}"),
                }
            }
        }
        Ok(handle.id)
    }

    /// The re-establish workflows of `cluster` that have not ended.
    pub async fn reestablishing(&self, cluster: &ClusterName) -> Result<Vec<WorkflowId>, ControllerError> {
        Ok(self
            .engine
            .list()
            .await?
            .into_iter()
            .filter(|r| r.kind == workflows::REESTABLISH && r.cluster == *cluster && !r.state.is_terminal())
            .map(|r| r.id)
            .collect())
    }

    /// Builds the params of an operator's role change from the live state.
    async fn params(&self, cluster: &str, kind: &str, req: &RoleChangeRequest) -> Result<Params, ControllerError> {
        let c = self.sh.cluster(cluster).ok_or_else(|| ControllerError::UnknownCluster(cluster.to_owned()))?;
        let state = self
            .sh
            .clusters
            .state(&c.name)
            .await?
            .ok_or_else(|| ControllerError::Conflict(format!("cluster {cluster} has no recorded state yet")))?;
        let old = state
            .primary
            .clone()
            .ok_or_else(|| ControllerError::Conflict(format!("cluster {cluster} has no primary now")))?;
        let to = match kind {
            workflows::FAILBACK => {
                let home = c.region_preference.first().cloned().or_else(|| c.nodes.first().map(|n| n.region.clone()));
                let home = home.ok_or_else(|| ControllerError::BadRequest("the cluster has no nodes".into()))?;
                if c.node(old.as_str()).is_some_and(|n| n.region == home) {
                    return Err(ControllerError::Conflict(format!(
                        "the primary {old} is already in the original primary region {home}"
                    )));
                }
                Some(req.to.clone().unwrap_or_else(|| home.to_string()))
            }
            workflows::MIGRATE => {
                let to =
                    req.to.clone().ok_or_else(|| ControllerError::BadRequest("a migrate needs --to NODE".into()))?;
                if c.node(&to).is_none() {
                    return Err(ControllerError::BadRequest(format!(
                        "{to:?} is not a node of cluster {cluster}: a migrate moves the primary to one node (add it with pgdr replica add)"
                    )));
                }
                Some(to)
            }
            workflows::SWITCHOVER => Some(
                req.to
                    .clone()
                    .ok_or_else(|| ControllerError::BadRequest("a switchover needs --to NODE|REGION".into()))?,
            ),
            _ => req.to.clone(),
        };
        if let Some(t) = &to {
            if c.node(t).is_none() && !c.nodes.iter().any(|n| n.region.as_str() == t) {
                return Err(ControllerError::BadRequest(format!(
                    "{t:?} is neither a node nor a region of cluster {cluster}"
                )));
            }
            if t == old.as_str() {
                return Err(ControllerError::BadRequest(format!("{t} is already the primary")));
            }
        }
        let old_lsn = self.sh.observed.lock().ok().and_then(|o| o.get(&c.name).and_then(|o| o.primary_lsn));
        Ok(Params {
            cluster: c.name.clone(),
            reason: format!("{kind} requested by {}", req.requested_by.as_deref().unwrap_or("an operator")),
            to,
            allow_data_loss: req.allow_data_loss,
            // A migrate always waits at its approval gate.
            require_approval: req.require_approval || kind == workflows::MIGRATE,
            requested_by: req.requested_by.clone(),
            old_primary: Some(old),
            old_epoch: state.epoch,
            old_lsn,
            crash: false,
            node: None,
            keep_tail: true,
            automatic: false,
        })
    }

    /// An operator's switchover, failover or failback (or its plan).
    pub async fn role_change(
        &self,
        cluster: &str,
        kind: &str,
        req: RoleChangeRequest,
    ) -> Result<WorkflowStarted, ControllerError> {
        if ![workflows::FAILOVER, workflows::SWITCHOVER, workflows::FAILBACK, workflows::MIGRATE].contains(&kind) {
            return Err(ControllerError::BadRequest(format!("no role change {kind:?}")));
        }
        let params = self.params(cluster, kind, &req).await?;
        let value = serde_json::to_value(&params).map_err(|e| ControllerError::BadRequest(e.to_string()))?;
        let plan = self.engine.plan(kind, &params.cluster, value).await?;
        let mut lines: Vec<String> = Vec::new();
        for stage in &plan.stages {
            for s in stage {
                lines.push(format!("{}: {}", s.name, s.description));
                for c in &s.checks {
                    lines.push(format!("    check: {c}"));
                }
            }
        }
        lines.push(self.would_choose(&params).await);
        if kind == workflows::MIGRATE {
            lines.extend(crate::migrate::dry_run(&self.sh, &params).await);
        }
        if let Some(b) = &plan.blocked_by {
            lines.push(format!("blocked: {} workflow {} is running on the cluster", b.kind, b.workflow.as_str()));
        }
        if req.dry_run {
            return Ok(WorkflowStarted {
                id: None,
                kind: kind.to_owned(),
                cluster: params.cluster,
                plan: lines,
                dry_run: true,
            });
        }
        let id = self.start_params(kind, params.clone()).await?;
        Ok(WorkflowStarted {
            id: Some(id.as_str().to_owned()),
            kind: kind.to_owned(),
            cluster: params.cluster,
            plan: lines,
            dry_run: false,
        })
    }

    /// The candidate the live topology would give now, in words.
    async fn would_choose(&self, p: &Params) -> String {
        let Some(c) = self.sh.cluster(p.cluster.as_str()) else { return String::new() };
        let Some(old) = p.old_primary.clone() else { return "no primary".into() };
        let statuses: std::collections::BTreeMap<_, _> =
            self.sh.observe(c).await.into_iter().filter_map(|(n, s)| s.ok().map(|s| (n, s))).collect();
        let lag = self.sh.observed.lock().ok().and_then(|o| o.get(&c.name).map(|o| o.lag.clone())).unwrap_or_default();
        let infos = crate::workflows::candidate_infos(c, &statuses, &lag, p.old_lsn);
        let target = p.to.as_deref().map(|t| {
            if c.node(t).is_some() { candidate::Target::Node(t.into()) } else { candidate::Target::Region(t.into()) }
        });
        let region = c.node(old.as_str()).map(|n| n.region.clone()).unwrap_or_else(|| "unknown".into());
        let policy = match crate::workflows::policy_for(&self.sh, c, &old, region, target, p.allow_data_loss).await {
            Ok(p) => p,
            Err(e) => return format!("live check: {e}"),
        };
        match candidate::choose(&infos, &policy) {
            Ok(ch) => format!(
                "live check: would promote {} in {} at {} ({})",
                ch.node,
                ch.region,
                ch.lsn.map(|l| l.to_string()).unwrap_or_else(|| "unknown LSN".into()),
                if ch.cross_region { "cross-region" } else { "same region" }
            ),
            Err(e) => format!("live check: {e}"),
        }
    }

    /// The API view of a cluster.
    pub async fn cluster_view(&self, name: &str) -> Result<ClusterView, ControllerError> {
        let c = self.sh.cluster(name).ok_or_else(|| ControllerError::UnknownCluster(name.to_owned()))?;
        let obs = self.sh.observed.lock().ok().and_then(|o| o.get(&c.name).cloned()).unwrap_or_default();
        // Without a control plane the view is what the monitor last read,
        // and says so.
        let state = match self.sh.clusters.state(&c.name).await {
            Ok(s) => s,
            Err(_) if obs.control_plane.is_some() && obs.state.is_some() => obs.state.clone(),
            Err(e) => return Err(e.into()),
        };
        let frozen = match self.sh.clusters.freezes(&c.name).await {
            Ok(f) => crate::rules::applies(&f),
            Err(_) => None,
        };
        let control_plane = obs.control_plane.as_ref().map(|why| match obs.control_plane_since {
            Some(at) => format!(
                "running without a control plane since {}: {why}",
                at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
            ),
            None => format!("running without a control plane: {why}"),
        });
        let lock = self.sh.store.get(&pgdr_store::keys::cluster_lock(name)).await.ok().flatten();
        let workflow = lock
            .and_then(|v| serde_json::from_slice::<pgdr_workflow::ClusterLock>(&v.value).ok())
            .map(|l| format!("{} {}", l.kind, l.workflow.as_str()));
        let tier = self.sh.tier(c);
        let nodes = c
            .nodes
            .iter()
            .map(|n| {
                let st = obs.statuses.get(&n.name);
                let ok = st.and_then(|s| s.as_ref().ok());
                NodeView {
                    name: n.name.clone(),
                    region: n.region.clone(),
                    role: ok.map(|s| s.role).unwrap_or(Role::Unknown),
                    reachable: ok.is_some(),
                    fenced: ok.is_some_and(|s| s.fenced),
                    lsn: ok.and_then(|s| s.current_lsn.or(s.replay_lsn)),
                    lag_seconds: obs.lag.get(&n.name).copied(),
                    error: match st {
                        Some(Err(e)) => Some(e.clone()),
                        Some(Ok(s)) => s.error.clone(),
                        None => None,
                    },
                }
            })
            .collect();
        Ok(ClusterView {
            name: c.name.clone(),
            epoch: state.as_ref().map(|s| s.epoch).unwrap_or_default(),
            primary: state.and_then(|s| s.primary),
            tier: c.tier.to_string(),
            rpo_seconds: tier.map(|t| t.rpo.as_secs_f64()).unwrap_or_default(),
            replication: match c.replication {
                ReplicationMode::Async => "async".into(),
                ReplicationMode::Sync { quorum } => format!("sync (ANY {quorum})"),
            },
            degraded: obs.degraded,
            nodes,
            detection: obs.detection,
            workflow,
            frozen,
            control_plane,
        })
    }

    /// The API view of a workflow with its journal.
    pub async fn workflow_view(&self, id: &str) -> Result<WorkflowView, ControllerError> {
        let wid = WorkflowId::parse(id).map_err(ControllerError::BadRequest)?;
        let rec = self
            .engine
            .get(&wid)
            .await?
            .ok_or_else(|| ControllerError::Workflow(WorkflowError::NotFound(wid.clone())))?;
        let journal = self.engine.journal(&wid).await?;
        let mut steps: Vec<StepView> = Vec::new();
        let by_name: HashMap<String, pgdr_workflow::StepRecord> =
            journal.into_iter().map(|s| (s.name.clone(), s)).collect();
        for stage in &rec.plan {
            for ps in stage {
                let s = by_name.get(&ps.name);
                steps.push(StepView {
                    name: ps.name.clone(),
                    state: s.map(|s| s.state.as_str().to_owned()).unwrap_or_else(|| "pending".into()),
                    attempts: s.map(|s| s.attempts.len() as u32).unwrap_or(0),
                    duration_ms: s.and_then(|s| s.attempts.last().and_then(|a| a.duration_ms)),
                    output: s.and_then(|s| s.output.clone()),
                    error: s.and_then(|s| s.error.clone()),
                });
            }
        }
        Ok(view(&rec, steps))
    }

    pub async fn workflows(&self) -> Result<Vec<WorkflowView>, ControllerError> {
        Ok(self.engine.list().await?.iter().map(|r| view(r, Vec::new())).collect())
    }
}

fn view(rec: &pgdr_workflow::WorkflowRecord, steps: Vec<StepView>) -> WorkflowView {
    let fmt = &time::format_description::well_known::Rfc3339;
    WorkflowView {
        id: rec.id.as_str().to_owned(),
        kind: rec.kind.clone(),
        cluster: rec.cluster.clone(),
        state: rec.state.as_str().to_owned(),
        created_at: rec.created_at.format(fmt).ok(),
        duration_ms: rec.ended_at.map(|e| (e - rec.created_at).whole_milliseconds().max(0) as u64),
        params: rec.params.clone(),
        steps,
        error: rec.error.clone(),
    }
}
