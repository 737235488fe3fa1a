//! The primary's lease and self-fencing, on the agent's side: the IO loop
//! around [`pgdr_decide::lease::AgentLease`], which decides (see its docs
//! and `docs/failover-math.md`). This loop only carries events in (the
//! role PostgreSQL reports, renewal and support answers, timers, the end of
//! a fence) and commands out (ask PostgreSQL, renew through the controller,
//! ask the peers, stop PostgreSQL), and journals every decision with its
//! reason.
//!
//! In short: the agent renews every `timing.lease_renew`
//! (`POST /v1/clusters/{c}/lease`); a refused renewal fences at once; when
//! renewals stop being granted it asks its cluster's other agents for
//! support (`/v1/peer/support`) and keeps PostgreSQL writable only while a
//! majority supports it (a control-plane outage alone never demotes a
//! healthy primary); the fence itself (an immediate stop, then SIGKILL of
//! the postmaster, within `lease_renew`) starts on a timer at the deadline,
//! not after the calls. A freshly started agent is lapsed: a PostgreSQL it
//! finds writable must get a renewal or a majority within `lease_renew / 2`.
//!
//! The same module serves the peer endpoints with the support rule of
//! [`pgdr_decide::support`]: support is refused to a requester with another
//! view of the members, below this agent's durable epoch, or where the
//! controller withdrew it (`/v1/peer/withdraw`, written to the epoch file
//! before it is acknowledged, so a restarted agent still refuses).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pgdr_api::controller::{ControllerClient, LeaseRequest};
use pgdr_api::peer::{PeerClient, SupportReply, SupportRequest, WithdrawRequest};
use pgdr_config::{Access, Config, Redacted};
use pgdr_decide::At;
use pgdr_decide::lease::{AgentLease, Command, Event, LeaseTiming, Renewal, Role};
use pgdr_decide::support::{SupportAsk, members_digest};
use pgdr_model::{ClusterName, NodeName};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::AgentState;
use crate::local::StopMode;

/// What the lease loop needs beyond the agent's own config.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub cluster: ClusterName,
    pub node: NodeName,
    /// Every controller's API address (`host:port`): renewals go to the
    /// one that leads (a standby binds no API, a deposed leader answers
    /// `not_leader`; neither grants).
    pub controllers: Vec<String>,
    /// An `agent`-role controller token: lease renewal is all it allows.
    pub controller_token: Option<Redacted>,
    /// The agents' token, for the peer routes.
    pub agent_token: Option<Redacted>,
    pub ttl: Duration,
    pub renew: Duration,
    /// The other agents of the cluster: (node, address).
    pub peers: Vec<(NodeName, String)>,
    /// This agent's view of the cluster's members ([`members_digest`]).
    pub members: String,
}

impl LeaseSettings {
    /// The settings for node `name` in `cfg`; `None` when the node is not in
    /// the config.
    pub fn from_config(cfg: &Config, name: &str) -> Option<LeaseSettings> {
        let (cluster, node) = cfg.node(name)?;
        Some(LeaseSettings {
            cluster: cluster.name.clone(),
            node: node.name.clone(),
            controllers: cfg.controller_addrs(),
            controller_token: cfg.controller_client_token(Access::Agent).unwrap_or_else(|e| {
                tracing::error!("{e}: the lease cannot be renewed");
                None
            }),
            agent_token: cfg.agent_api_token().unwrap_or_else(|e| {
                tracing::error!("{e}: peers will refuse this agent");
                None
            }),
            ttl: cfg.timing.lease_ttl,
            renew: cfg.timing.lease_renew,
            peers: cluster
                .nodes
                .iter()
                .filter(|n| n.name != node.name)
                .map(|n| (n.name.clone(), n.agent.clone()))
                .collect(),
            members: members_digest(cluster.nodes.iter().map(|n| n.name.as_str())),
        })
    }

    fn timing(&self) -> LeaseTiming {
        LeaseTiming { ttl: self.ttl.as_millis() as u64, renew: self.renew.as_millis() as u64 }
    }
}

/// `POST /v1/peer/support` (a row of [`crate::agent::ROUTES`]).
pub(crate) async fn support(
    State(agent): State<Arc<AgentState>>,
    axum::Json(req): axum::Json<SupportRequest>,
) -> axum::Json<SupportReply> {
    let members = agent.members.get();
    let mine = members.cloned().unwrap_or_default();
    let ask = SupportAsk {
        same_cluster: req.cluster == agent.cfg.cluster && members.is_some(),
        primary: &req.primary,
        epoch: req.epoch,
        members: &req.members,
        my_members: &mine,
    };
    let verdict = agent.epoch.durable().support(&ask);
    if let Err(why) = &verdict {
        tracing::info!(node = %agent.cfg.node, primary = %req.primary, epoch = %req.epoch, "support refused: {why}");
    }
    axum::Json(SupportReply {
        node: agent.cfg.node.clone(),
        support: verdict.is_ok(),
        message: match verdict {
            Ok(()) => "supported".into(),
            Err(why) => why.to_string(),
        },
    })
}

/// `POST /v1/peer/withdraw` (a row of [`crate::agent::ROUTES`]).
pub(crate) async fn withdraw(
    State(agent): State<Arc<AgentState>>,
    axum::Json(req): axum::Json<WithdrawRequest>,
) -> Response {
    tracing::warn!(node = %agent.cfg.node, primary = %req.primary, epoch = %req.epoch, "controller withdrew support for the primary");
    if req.cluster != agent.cfg.cluster {
        return (StatusCode::BAD_REQUEST, "another cluster").into_response();
    }
    // Durable before it is acknowledged: the controller counts on it.
    match agent.epoch.withdraw(&req.primary, req.epoch).await {
        Ok(()) => axum::Json(SupportReply {
            node: agent.cfg.node.clone(),
            support: false,
            message: "support withdrawn".into(),
        })
        .into_response(),
        Err(e) => {
            tracing::error!(node = %agent.cfg.node, "cannot record the withdrawal: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
}

/// Whether PostgreSQL here is a writable primary (not in recovery, not
/// fenced read-only: a fenced node takes no writes and needs no lease);
/// [`Role::Unknown`] when it cannot be asked.
async fn check_role(agent: &AgentState, within: Duration) -> Role {
    let ask = agent.with_local(async |client| {
        client
            .query_one(
                "select not pg_is_in_recovery() and current_setting('default_transaction_read_only') = 'off'",
                &[],
            )
            .await
    });
    match tokio::time::timeout(within, ask).await {
        Ok(Ok(row)) => match row.try_get::<_, bool>(0) {
            Ok(true) => Role::Primary,
            Ok(false) => Role::NotPrimary,
            Err(_) => Role::Unknown,
        },
        _ => Role::Unknown,
    }
}

/// Whether PostgreSQL here is in recovery; `None` when it cannot be asked
/// within `within`.
async fn in_recovery(agent: &AgentState, within: Duration) -> Option<bool> {
    let ask = agent.with_local(async |client| client.query_one("select pg_is_in_recovery()", &[]).await);
    match tokio::time::timeout(within, ask).await {
        Ok(Ok(row)) => row.try_get::<_, bool>(0).ok(),
        _ => None,
    }
}

/// Stops PostgreSQL at once, within `within`: the self-fence. `true` once
/// it is down.
async fn fence(agent: &AgentState, why: &str, within: Duration) -> bool {
    // A server in recovery takes no write: nothing to fence. The machine's
    // last known role can be stale by a controller's action (the old
    // primary of a switchover, stopped and rewound to follow the new one
    // while a renewal was in flight): stopping that replica would undo the
    // rejoin. Read-only alone is not enough (a session can lift it).
    if in_recovery(agent, within / 4).await == Some(true) {
        tracing::info!(node = %agent.cfg.node, "not fencing ({why}): PostgreSQL is in recovery, it takes no writes");
        return true;
    }
    tracing::error!(node = %agent.cfg.node, "fencing PostgreSQL: {why}");
    match agent.cfg.pg.stop(StopMode::Immediate, within / 2).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(node = %agent.cfg.node, "immediate stop did not finish ({e}): killing the postmaster");
            match agent.cfg.pg.postmaster_pid() {
                Some(pid) => {
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).is_ok()
                }
                None => true,
            }
        }
    }
}

/// The peer clients' own deadline (connect, TLS handshake); each support
/// round is cut at the machine's `support_timeout` around it.
const PEER_CONNECT: Duration = Duration::from_secs(2);

/// Runs the lease machine until `cancel` fires.
pub async fn run(agent: Arc<AgentState>, settings: LeaseSettings, cancel: CancellationToken) {
    let timing = settings.timing();
    let tls = agent.cfg.http_tls.clone();
    let client = match ControllerClient::new_multi(&settings.controllers, settings.controller_token.clone(), &tls) {
        Ok(c) => c.with_timeout(settings.renew.max(Duration::from_millis(200))),
        Err(e) => {
            tracing::error!(node = %settings.node, "lease loop cannot start: {e}");
            return;
        }
    };
    // One client per peer for the loop's life: connections are kept, so a
    // support round does not pay a connect (and a client build) per call.
    let support_timeout = Duration::from_millis(timing.support_timeout());
    let peers: Vec<PeerClient> = settings
        .peers
        .iter()
        .filter_map(|(node, addr)| match PeerClient::new_with(addr, settings.agent_token.clone(), PEER_CONNECT, &tls) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(node = %settings.node, peer = %node, "cannot ask this peer for support: {e}");
                None
            }
        })
        .collect();
    // A fresh agent has one support round before its deadline: open the
    // connections meanwhile (alongside the first role check, delaying
    // nothing), so the round's short timeout is not spent on handshakes.
    for peer in &peers {
        let peer = peer.clone();
        tokio::spawn(async move { peer.warm(PEER_CONNECT).await });
    }
    let origin = Instant::now();
    let at = move || At(origin.elapsed().as_millis() as u64);
    let mut machine = AgentLease::new(timing, settings.peers.len() + 1, at());
    let mut calls: tokio::task::JoinSet<Event> = tokio::task::JoinSet::new();
    let mut wake = origin;
    let mut role_in_flight = false;
    let mut lapsed_logged = false;
    let mut cmds = machine.on(Event::Tick, at());
    tracing::info!(node = %settings.node, "lease: started lapsed; a writable PostgreSQL needs a renewal or a majority of support");
    loop {
        for c in cmds.drain(..) {
            match c {
                Command::CheckRole => {
                    if role_in_flight {
                        continue;
                    }
                    role_in_flight = true;
                    let (agent, within) = (agent.clone(), settings.renew / 2);
                    calls.spawn(async move { Event::Role(check_role(&agent, within).await) });
                }
                Command::Renew { id } => {
                    let req = LeaseRequest { node: settings.node.clone(), epoch: agent.epoch.current() };
                    let (client, cluster, node) = (client.clone(), settings.cluster.clone(), settings.node.clone());
                    calls.spawn(async move {
                        let outcome = match client.renew_lease(cluster.as_str(), &req).await {
                            Ok(r) if r.granted => Renewal::Granted,
                            Ok(r) => {
                                tracing::warn!(%node, "lease refused: {}", r.message);
                                Renewal::Refused
                            }
                            Err(pgdr_api::ApiError::Failed { status: 409, message, .. }) => {
                                tracing::warn!(%node, "lease refused: {message}");
                                Renewal::Refused
                            }
                            Err(e) => {
                                tracing::debug!(%node, "lease renewal failed: {e}");
                                Renewal::Failed
                            }
                        };
                        Event::Renewed { id, outcome }
                    });
                }
                Command::AskSupport { round } => {
                    let req = SupportRequest {
                        cluster: settings.cluster.clone(),
                        primary: settings.node.clone(),
                        epoch: agent.epoch.current(),
                        members: settings.members.clone(),
                    };
                    for peer in &peers {
                        let (req, peer) = (req.clone(), peer.clone());
                        calls.spawn(async move {
                            let yes = matches!(
                                tokio::time::timeout(support_timeout, peer.support(&req)).await,
                                Ok(Ok(r)) if r.support
                            );
                            Event::Support { round, yes }
                        });
                    }
                }
                Command::Fence { reason } => {
                    let (agent, lead) = (agent.clone(), Duration::from_millis(timing.fence_lead()));
                    calls.spawn(async move { Event::Fenced { ok: fence(&agent, reason.describe(), lead).await } });
                }
                Command::WakeAt(t) => wake = origin + Duration::from_millis(t.0),
            }
        }
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => Event::Tick,
            Some(done) = calls.join_next(), if !calls.is_empty() => match done {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::error!(node = %settings.node, "a lease call failed: {e}");
                    Event::Tick
                }
            },
        };
        if let Event::Role(role) = event {
            role_in_flight = false;
            if role == Role::Primary && !crate::guard::armed(&agent.cfg.pg.data_dir) {
                match crate::guard::arm(&agent.cfg.pg) {
                    Ok(()) => {
                        tracing::info!(node = %settings.node, "boot guard written: a start without this agent comes up read-only (standby mode)")
                    }
                    Err(e) => tracing::warn!(node = %settings.node, "cannot write the boot guard: {e}"),
                }
            }
            if role == Role::Unknown && machine.is_primary() {
                tracing::warn!(node = %settings.node, "cannot ask PostgreSQL its role: it is still treated as the primary it was");
            }
        }
        let now = at();
        cmds = machine.on(event, now);
        // Journal the lapse once, not at every support round.
        let covered = machine.leased(now);
        if machine.is_primary() && !covered && !lapsed_logged {
            tracing::warn!(node = %settings.node, fence_at_ms = machine.fence_at().0, "lease not renewed: asking the other agents for support");
            lapsed_logged = true;
        } else if covered {
            lapsed_logged = false;
        }
    }
}

/// Serves the agent with the peer endpoints and runs the lease loop: what
/// `pgdr agent` runs when the config names a controller.
pub async fn serve(
    listener: TcpListener,
    agent: Arc<AgentState>,
    settings: Option<LeaseSettings>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    if let Some(s) = &settings {
        // Only an agent run with a lease supports anyone (set once).
        let _ = agent.members.set(s.members.clone());
    }
    let app = crate::agent::router(agent.clone());
    let tracker = tokio_util::task::TaskTracker::new();
    if let Some(s) = settings {
        tracker.spawn(run(agent.clone(), s, cancel.clone()));
    }
    tracing::info!(node = %agent.cfg.node, addr = %listener.local_addr()?, "agent listening (with lease and peer support)");
    let listener = pgdr_tls::ApiListener::new(listener, agent.cfg.https.clone());
    let res = axum::serve(listener, app).with_graceful_shutdown(cancel.clone().cancelled_owned()).await;
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    res
}
