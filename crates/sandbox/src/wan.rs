//! Links between a sandbox's regions (`pgdr sandbox up --wan-delay 40ms`).
//!
//! On one machine every path is instant. With a WAN delay, `up` puts a
//! [`pgdr_wan`] relay on every cross-region path and records each as a
//! [`Route`] in `sandbox.json` (`wan.routes`):
//!
//! - for every region R and every node N outside R: R → N's PostgreSQL and
//!   R → N's agent (replication, probes, agent calls, peer support, proxy
//!   traffic from R);
//! - for every region R other than the controller's: R → the controller's
//!   API (lease renewals).
//!
//! A route is `(from region, target address) → listen address`. The one
//! change to the rest of pgdr is *where a component connects*: a sandbox
//! component in region R reads the config through [`view`], which replaces
//! every address of another region by the listen address of the route from
//! R to it. `pgdr agent` takes the view of its node's region, `pgdr run` and
//! `pgdr controller` the view of the controller's region, and each proxy of
//! `pgdr run` translates the backends it is given to its own region's view
//! ([`Links::backend_from`]). Configs without a sandbox WAN are unchanged, so
//! nothing outside a sandbox is affected.
//!
//! The relays run in one process, `pgdr sandbox relay --dir D` ([`run`]),
//! started by `up` and recorded by PID like the agents, stopped by `down`.
//! `pgdr sandbox partition --region R` / `heal` rewrite the control file
//! `wan.json`, which the relay process polls.
//!
//! Known limit: the controller tells a replica its new upstream by the
//! address *it* sees; a replica in a region other than the controller's then
//! streams through the controller region's relay (same delay; a partition of
//! the replica's own region still cuts it). `up` itself sets every standby's
//! upstream through its own region's relay.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pgdr_config::Config;
use pgdr_wan::{Route, Wan, WanState};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::SandboxError;
use crate::record::{NodeRecord, Record};

/// The control file the relay process polls.
pub const CONTROL_FILE: &str = "wan.json";

/// The WAN part of `sandbox.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WanRecord {
    /// One-way delay added in each direction.
    pub delay_ms: u64,
    /// The control file (`wan.json`).
    pub control: PathBuf,
    pub routes: Vec<Route>,
    /// The `pgdr sandbox relay` process.
    pub relay_pid: Option<i32>,
}

/// How many relay ports a topology needs.
pub fn ports_needed(regions: &[String], nodes: &[NodeRecord], controller_region: &str) -> usize {
    let cross: usize = regions.iter().map(|r| nodes.iter().filter(|n| &n.region != r).count()).sum();
    2 * cross + regions.iter().filter(|r| r.as_str() != controller_region).count()
}

/// Every cross-region route, given free `ports` (at least [`ports_needed`]).
pub fn plan_routes(
    regions: &[String],
    nodes: &[NodeRecord],
    controller: SocketAddr,
    controller_region: &str,
    ports: &[u16],
) -> Vec<Route> {
    let mut ports = ports.iter().copied();
    let mut next = || SocketAddr::from(([127, 0, 0, 1], ports.next().unwrap_or(0)));
    let mut routes = Vec::new();
    for r in regions {
        for n in nodes.iter().filter(|n| &n.region != r) {
            let pg = SocketAddr::new(n.host.parse().unwrap_or([127, 0, 0, 1].into()), n.port);
            routes.push(Route {
                name: format!("{r} → {} postgres", n.name),
                listen: next(),
                target: pg,
                from: r.clone(),
                to: n.region.clone(),
            });
            routes.push(Route {
                name: format!("{r} → {} agent", n.name),
                listen: next(),
                target: SocketAddr::from(([127, 0, 0, 1], n.agent_port)),
                from: r.clone(),
                to: n.region.clone(),
            });
        }
        if r != controller_region {
            routes.push(Route {
                name: format!("{r} → controller"),
                listen: next(),
                target: controller,
                from: r.clone(),
                to: controller_region.to_owned(),
            });
        }
    }
    routes
}

/// The routes of a sandbox WAN, for address translation.
#[derive(Debug, Clone)]
pub struct Links {
    pub routes: Vec<Route>,
}

impl Links {
    /// The links of the sandbox `cfg` describes; `None` without a WAN.
    pub fn of(cfg: &Config) -> Option<Links> {
        let dir = &cfg.sandbox.as_ref()?.dir;
        let rec = Record::load(dir).ok()??;
        let wan = rec.wan?;
        Some(Links { routes: wan.routes })
    }

    /// Where a component in `from` connects to reach `target`.
    pub fn from(&self, from: &str, target: &str) -> Option<SocketAddr> {
        let t: SocketAddr = target.parse().ok()?;
        self.routes.iter().find(|r| r.from == from && r.target == t).map(|r| r.listen)
    }

    /// `host:port` of a PostgreSQL server as seen from `from` (the relay's,
    /// or the server's own when no route applies).
    pub fn backend_from(&self, from: &str, host: &str, port: u16) -> (String, u16) {
        match self.from(from, &format!("{host}:{port}")) {
            Some(a) => (a.ip().to_string(), a.port()),
            None => (host.to_owned(), port),
        }
    }
}

/// Where each node's PostgreSQL is as seen from any region: what a proxy of
/// `pgdr run` in region R connects to (the controller hands it backends as
/// the controller's region sees them).
#[derive(Debug, Clone)]
pub struct Backends {
    links: Links,
    /// (node, region, host, port) as the config has them.
    nodes: Vec<(String, String, String, u16)>,
}

impl Backends {
    /// From the config as written (before any [`view`]); `None` without a WAN.
    pub fn of(cfg: &Config) -> Option<Backends> {
        let links = Links::of(cfg)?;
        let nodes = cfg
            .clusters
            .iter()
            .flat_map(|c| c.nodes.iter())
            .map(|n| (n.name.to_string(), n.region.to_string(), n.host.clone(), n.port))
            .collect();
        Some(Backends { links, nodes })
    }

    /// `host:port` of node `node` from region `from`.
    pub fn addr(&self, from: &str, node: &str) -> Option<(String, u16)> {
        let (_, region, host, port) = self.nodes.iter().find(|n| n.0 == node)?;
        if region == from {
            return Some((host.clone(), *port));
        }
        Some(self.links.backend_from(from, host, *port))
    }
}

/// The config as a component in `region` sees it: every address in another
/// region replaced by the relay from `region` to it. Unchanged when the
/// sandbox has no WAN (or `cfg` is no sandbox).
pub fn view(mut cfg: Config, region: &str) -> Config {
    let Some(links) = Links::of(&cfg) else { return cfg };
    for c in &mut cfg.clusters {
        for n in &mut c.nodes {
            if n.region.as_str() == region {
                continue;
            }
            if let Some(a) = links.from(region, &format!("{}:{}", n.host, n.port)) {
                n.host = a.ip().to_string();
                n.port = a.port();
            }
            if let Some(a) = links.from(region, &n.agent) {
                n.agent = a.to_string();
            }
        }
    }
    if cfg.controller.region.as_ref().is_some_and(|r| r.as_str() != region)
        && let Some(a) = links.from(region, &cfg.controller.listen.to_string())
    {
        cfg.controller.listen = a;
    }
    cfg
}

/// The view of node `name`'s region (for `pgdr agent`).
pub fn view_for_node(cfg: Config, name: &str) -> Config {
    match cfg.node(name).map(|(_, n)| n.region.to_string()) {
        Some(r) => view(cfg, &r),
        None => cfg,
    }
}

/// The view of the controller's region (for `pgdr run` and `pgdr controller`).
pub fn view_for_controller(cfg: Config) -> Config {
    match cfg.controller.region.as_ref().map(|r| r.to_string()) {
        Some(r) => view(cfg, &r),
        None => cfg,
    }
}

/// Runs the relays of the sandbox in `dir` until `cancel` (`pgdr sandbox relay`).
pub async fn run(dir: &Path, cancel: CancellationToken) -> Result<(), SandboxError> {
    let rec = Record::load(dir)?.ok_or_else(|| SandboxError::Topology(format!("no sandbox in {}", dir.display())))?;
    let wan = rec.wan.ok_or_else(|| SandboxError::Topology("this sandbox has no WAN (up --wan-delay)".into()))?;
    let state = WanState::load(&wan.control).map_err(wan_err)?;
    let relays = Wan::bind(wan.routes, &state).await.map_err(wan_err)?;
    relays.run(Some(wan.control), cancel).await;
    Ok(())
}

/// The control file of the sandbox in `dir`.
pub fn control_file(dir: &Path) -> Result<PathBuf, SandboxError> {
    let rec = Record::load(dir)?.ok_or_else(|| SandboxError::Topology(format!("no sandbox in {}", dir.display())))?;
    rec.wan.map(|w| w.control).ok_or_else(|| {
        SandboxError::Topology(format!(
            "the sandbox in {} has no links between regions: start it with `pgdr sandbox up --wan-delay 40ms`",
            dir.display()
        ))
    })
}

/// Cuts `region` off from every other region.
pub fn partition(dir: &Path, region: &str) -> Result<WanState, SandboxError> {
    let rec = Record::load(dir)?.ok_or_else(|| SandboxError::Topology(format!("no sandbox in {}", dir.display())))?;
    if !rec.nodes.iter().any(|n| n.region == region) {
        return Err(SandboxError::Topology(format!("no region {region:?} in this sandbox")));
    }
    pgdr_wan::control::partition_region(&control_file(dir)?, region).map_err(wan_err)
}

/// Heals one region, or every partition.
pub fn heal(dir: &Path, region: Option<&str>) -> Result<WanState, SandboxError> {
    pgdr_wan::control::heal(&control_file(dir)?, region).map_err(wan_err)
}

fn wan_err(e: pgdr_wan::WanError) -> SandboxError {
    SandboxError::Wan(e.to_string())
}
