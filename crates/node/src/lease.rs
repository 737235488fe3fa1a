//! The primary's lease and self-fencing, on the agent's side.
//!
//! While its PostgreSQL is a writable primary, the agent renews a lease
//! through the controller every `timing.lease_renew`
//! (`POST /v1/clusters/{c}/lease`). If the controller refuses the renewal (a
//! newer epoch names another primary, or a failover has begun) the agent
//! fences at once. If the controller cannot be reached for
//! `timing.lease_ttl - 2 × timing.lease_renew` since the last renewal it
//! *sent* that was granted (so that it is fenced within `lease_ttl`), the
//! agent asks its cluster's other agents for support (`/v1/peer/support`):
//! with a majority
//! (itself included) it keeps PostgreSQL writable — a control-plane outage
//! alone never demotes a healthy primary — otherwise it stops PostgreSQL
//! (immediate stop: the fastest way to end every write).
//!
//! The same module serves the peer endpoints: support is given unless the
//! controller withdrew it for that primary and epoch (`/v1/peer/withdraw`).
//! See `docs/failover-math.md` for why this keeps one writer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use pgdr_api::controller::{ControllerClient, LeaseRequest};
use pgdr_api::peer::{PeerClient, SupportReply, SupportRequest, WithdrawRequest};
use pgdr_config::{Access, Config, Redacted};
use pgdr_model::{ClusterName, Epoch, NodeName};
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
    /// The controller's API address (`host:port`).
    pub controller: String,
    /// An `agent`-role controller token: lease renewal is all it allows.
    pub controller_token: Option<Redacted>,
    /// The agents' token, for the peer routes.
    pub agent_token: Option<Redacted>,
    pub ttl: Duration,
    pub renew: Duration,
    /// The other agents of the cluster: (node, address).
    pub peers: Vec<(NodeName, String)>,
}

impl LeaseSettings {
    /// The settings for node `name` in `cfg`; `None` when the node is not in
    /// the config.
    pub fn from_config(cfg: &Config, name: &str) -> Option<LeaseSettings> {
        let (cluster, node) = cfg.node(name)?;
        Some(LeaseSettings {
            cluster: cluster.name.clone(),
            node: node.name.clone(),
            controller: cfg.controller.listen.to_string(),
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
        })
    }
}

/// Support this agent withdrew, and what the lease loop last did.
#[derive(Debug, Default)]
pub struct PeerState {
    /// (primary, epoch): no support for that primary at that epoch or older.
    withdrawn: Mutex<Vec<(NodeName, Epoch)>>,
}

impl PeerState {
    fn supports(&self, primary: &NodeName, epoch: Epoch) -> bool {
        self.withdrawn.lock().map(|w| !w.iter().any(|(p, e)| p == primary && epoch <= *e)).unwrap_or(false)
    }

    fn withdraw(&self, primary: NodeName, epoch: Epoch) {
        if let Ok(mut w) = self.withdrawn.lock() {
            w.retain(|(p, _)| *p != primary);
            w.push((primary, epoch));
        }
    }
}

/// `POST /v1/peer/support` (a row of [`crate::agent::ROUTES`]).
pub(crate) async fn support(
    State(agent): State<Arc<AgentState>>,
    axum::Json(req): axum::Json<SupportRequest>,
) -> axum::Json<SupportReply> {
    let support = req.cluster == agent.cfg.cluster && agent.peers.supports(&req.primary, req.epoch);
    axum::Json(SupportReply {
        node: agent.cfg.node.clone(),
        support,
        message: if support { "supported".into() } else { "support withdrawn by the controller".into() },
    })
}

/// `POST /v1/peer/withdraw` (a row of [`crate::agent::ROUTES`]).
pub(crate) async fn withdraw(
    State(agent): State<Arc<AgentState>>,
    axum::Json(req): axum::Json<WithdrawRequest>,
) -> axum::Json<SupportReply> {
    tracing::warn!(node = %agent.cfg.node, primary = %req.primary, epoch = %req.epoch, "controller withdrew support for the primary");
    agent.peers.withdraw(req.primary, req.epoch);
    axum::Json(SupportReply { node: agent.cfg.node.clone(), support: false, message: "support withdrawn".into() })
}

/// Whether PostgreSQL here is a writable primary (not in recovery, not
/// fenced read-only: a fenced node takes no writes and needs no lease).
async fn is_primary(agent: &AgentState) -> bool {
    let check = agent.with_local(async |client| {
        client
            .query_one(
                "select not pg_is_in_recovery() and current_setting('default_transaction_read_only') = 'off'",
                &[],
            )
            .await
    });
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Ok(row)) => row.try_get::<_, bool>(0).unwrap_or(false),
        _ => false,
    }
}

/// Stops PostgreSQL at once: the self-fence.
async fn fence(agent: &AgentState, why: &str) {
    tracing::error!(node = %agent.cfg.node, "fencing PostgreSQL: {why}");
    if let Err(e) = agent.cfg.pg.stop(StopMode::Immediate, Duration::from_secs(10)).await {
        tracing::error!(node = %agent.cfg.node, "self-fence failed: {e}");
        // Last resort: kill the postmaster.
        if let Some(pid) = agent.cfg.pg.postmaster_pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Counts the agents (itself included) that support this primary.
async fn count_support(settings: &LeaseSettings, tls: &pgdr_api::HttpTls, epoch: Epoch) -> usize {
    let req = SupportRequest { cluster: settings.cluster.clone(), primary: settings.node.clone(), epoch };
    let timeout = settings.renew.max(Duration::from_millis(200));
    let mut calls = tokio::task::JoinSet::new();
    for (_, addr) in &settings.peers {
        let (req, addr, token, tls) = (req.clone(), addr.clone(), settings.agent_token.clone(), tls.clone());
        calls.spawn(async move {
            match PeerClient::new_with(&addr, token, timeout, &tls) {
                Ok(c) => c.support(&req).await.map(|r| r.support).unwrap_or(false),
                Err(_) => false,
            }
        });
    }
    let mut n = 1;
    while let Some(r) = calls.join_next().await {
        if r.unwrap_or(false) {
            n += 1;
        }
    }
    n
}

/// A majority of `n` agents.
fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// Renews the lease while PostgreSQL is primary; fences as described in the
/// module docs. Runs until `cancel` fires.
pub async fn run(agent: Arc<AgentState>, settings: LeaseSettings, cancel: CancellationToken) {
    let tls = agent.cfg.http_tls.clone();
    let client = match ControllerClient::new_with(&settings.controller, settings.controller_token.clone(), &tls) {
        Ok(c) => c.with_timeout(settings.renew.max(Duration::from_millis(200))),
        Err(e) => {
            tracing::error!(node = %settings.node, "lease loop cannot start: {e}");
            return;
        }
    };
    let total = settings.peers.len() + 1;
    // Counting starts when the loop does: a fresh agent has `ttl` to renew.
    let mut last_ok = Instant::now();
    let mut tick = tokio::time::interval(settings.renew);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !is_primary(&agent).await {
            last_ok = Instant::now();
            continue;
        }
        let epoch = agent.epoch.current();
        let sent = Instant::now();
        let req = LeaseRequest { node: settings.node.clone(), epoch };
        match client.renew_lease(settings.cluster.as_str(), &req).await {
            Ok(reply) if reply.granted => {
                last_ok = sent;
                continue;
            }
            Ok(reply) => {
                fence(&agent, &format!("the controller refused the lease: {}", reply.message)).await;
                continue;
            }
            Err(pgdr_api::ApiError::Failed { status: 409, message, .. }) => {
                fence(&agent, &format!("the controller refused the lease: {message}")).await;
                continue;
            }
            Err(e) => {
                // Once per lapse, not every renewal.
                if sent.duration_since(last_ok) < settings.renew * 2 {
                    tracing::warn!(node = %settings.node, "lease renewal failed: {e}");
                }
            }
        }
        // Act early enough to be fenced by `ttl` after the last granted
        // renewal: the next check may come one `renew` later and asking the
        // peers takes up to one `renew`. The controller presumes this node
        // fenced only `ttl + lease_margin` after it granted that renewal,
        // so the margin is left for the stop itself.
        if sent.duration_since(last_ok) + settings.renew * 2 < settings.ttl {
            continue;
        }
        let support = count_support(&settings, &tls, epoch).await;
        if support >= majority(total) {
            tracing::warn!(node = %settings.node, support, total, "lease lapsed but a majority of agents support this primary: keep taking writes");
        } else {
            fence(&agent, &format!("lease lapsed and only {support} of {total} agents support this primary")).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withdrawal_covers_older_epochs() {
        let p = PeerState::default();
        let a = NodeName::new("a");
        assert!(p.supports(&a, Epoch(3)));
        p.withdraw(a.clone(), Epoch(3));
        assert!(!p.supports(&a, Epoch(3)));
        assert!(!p.supports(&a, Epoch(2)));
        assert!(p.supports(&a, Epoch(4)));
        assert!(p.supports(&NodeName::new("b"), Epoch(3)));
        assert_eq!(majority(3), 2);
    }
}
