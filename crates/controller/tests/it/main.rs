//! In-process tests of the controller's runtime: the workflow engine on a
//! memory store, the watch loop, and agents that accept connections and
//! never answer (a host that hangs), so workflow steps block where a real
//! long step (a base backup) would.

mod auth;
mod readiness;
mod reestablish;
mod rotation;
mod shutdown;

use std::sync::Arc;

use async_trait::async_trait;
use pgdr_config::Config;
use pgdr_controller::Controller;
use pgdr_controller::runtime::{Drain, ProxyControl, RouteInfo};
use pgdr_model::ClusterName;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// No proxies in these tests: pause and resume succeed at once.
#[derive(Debug, Default)]
pub struct NoProxies;

#[async_trait]
impl ProxyControl for NoProxies {
    async fn pause(&self, _cluster: &ClusterName, _drain: Drain) -> Result<(), String> {
        Ok(())
    }
    async fn resume(&self, _cluster: &ClusterName) -> Result<(), String> {
        Ok(())
    }
    fn publish(&self, _cluster: &ClusterName, _route: &RouteInfo) {}
}

/// A TCP listener that accepts connections and never writes: an agent whose
/// host hangs. Stops (dropping its connections) when the guard drops.
pub struct Silent {
    pub addr: std::net::SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Silent {
    pub async fn start() -> Silent {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let c = cancel.clone();
        tracker.spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    _ = c.cancelled() => return,
                    r = l.accept() => if let Ok((s, _)) = r { held.push(s) },
                }
            }
        });
        Silent { addr, cancel, tracker }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.tracker.close();
    }
}

/// A port on 127.0.0.1 where nothing listens (connections are refused).
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

/// A one-cluster config: `a` (primary) in east, `b` in east, `d` in west;
/// agents at the given addresses, PostgreSQL of `a` at `a_port`.
pub fn config(agents: [std::net::SocketAddr; 3], a_port: u16, extra: &str) -> Config {
    Config::parse(std::path::Path::new("t.toml"), &config_text(agents, a_port, extra)).expect("config")
}

/// The text of [`config`], to add to.
pub fn config_text(agents: [std::net::SocketAddr; 3], a_port: u16, extra: &str) -> String {
    format!(
        r#"
[[regions]]
name = "east"
[[regions]]
name = "west"
[[tiers]]
name = "t"
rpo = "10s"
rto = "60s"
[timing]
probe_interval = "200ms"
probe_timeout = "150ms"
failure_threshold = 2
{extra}
[[clusters]]
name = "c"
tier = "t"
[[clusters.nodes]]
name = "a"
region = "east"
agent = "{}"
host = "127.0.0.1"
port = {a_port}
[[clusters.nodes]]
name = "b"
region = "east"
agent = "{}"
host = "127.0.0.1"
port = 1
[[clusters.nodes]]
name = "d"
region = "west"
agent = "{}"
host = "127.0.0.1"
port = 2
"#,
        agents[0], agents[1], agents[2]
    )
}

pub async fn controller(cfg: Config) -> Controller {
    let store: Arc<dyn pgdr_store::StateStore> = Arc::new(pgdr_store::MemoryStore::new());
    Controller::new(cfg, store, Arc::new(NoProxies), "test", pgdr_controller::webhook::Webhooks::none())
        .await
        .expect("controller")
}
