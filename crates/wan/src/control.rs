//! A set of relayed routes between named regions, driven by a control file.
//!
//! [`Route`] says which regions a path joins (`from` is the connecting side,
//! `to` the listening side). [`WanState`] is what the control file holds: the
//! one-way delay and the set of partitioned regions. A route is partitioned
//! when either of its regions is. [`Wan::run`] polls the file, so
//! `pgdr sandbox partition --region R` in another process only rewrites it
//! ([`partition_region`], [`heal`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::WanError;
use crate::link::Link;
use crate::relay::Relay;

/// How often [`Wan::run`] re-reads the control file.
pub const POLL: Duration = Duration::from_millis(100);

/// One relayed path between two regions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// What the path carries, like `replication east→west` or `agent n3`.
    pub name: String,
    /// Where clients of the path connect (the relay listens here).
    pub listen: SocketAddr,
    /// Where the relay forwards to.
    pub target: SocketAddr,
    /// Region of the connecting side.
    pub from: String,
    /// Region of the listening side.
    pub to: String,
}

/// The control file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WanState {
    /// One-way delay added in each direction, in milliseconds.
    pub delay_ms: u64,
    /// Regions cut off from every other region.
    #[serde(default)]
    pub partitioned: BTreeSet<String>,
}

impl WanState {
    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms)
    }

    /// Whether a route is cut in this state.
    pub fn cuts(&self, route: &Route) -> bool {
        route.from != route.to && (self.partitioned.contains(&route.from) || self.partitioned.contains(&route.to))
    }

    /// Reads the control file; a missing file is the default (no delay, no
    /// partition).
    pub fn load(path: &Path) -> Result<WanState, WanError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| WanError::Parse { path: path.to_owned(), source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(WanState::default()),
            Err(source) => Err(WanError::Io { path: path.to_owned(), source }),
        }
    }

    /// Writes the control file atomically (temp file, then rename), so a
    /// reader never sees half of it.
    pub fn store(&self, path: &Path) -> Result<(), WanError> {
        let tmp = path.with_extension("tmp");
        let io = |source| WanError::Io { path: path.to_owned(), source };
        let text =
            serde_json::to_vec_pretty(self).map_err(|source| WanError::Parse { path: path.to_owned(), source })?;
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// Cuts `region` off from every other region (adds it to the control file).
pub fn partition_region(path: &Path, region: &str) -> Result<WanState, WanError> {
    let mut state = WanState::load(path)?;
    state.partitioned.insert(region.to_owned());
    state.store(path)?;
    Ok(state)
}

/// Heals one region, or every partition when `region` is `None`.
pub fn heal(path: &Path, region: Option<&str>) -> Result<WanState, WanError> {
    let mut state = WanState::load(path)?;
    match region {
        Some(r) => {
            state.partitioned.remove(r);
        }
        None => state.partitioned.clear(),
    }
    state.store(path)?;
    Ok(state)
}

/// Relays for a set of routes, bound and ready to run.
pub struct Wan {
    relays: Vec<(Route, Relay)>,
}

impl Wan {
    /// Binds every route's listener and applies `state`.
    pub async fn bind(routes: Vec<Route>, state: &WanState) -> Result<Wan, WanError> {
        let mut relays = Vec::with_capacity(routes.len());
        for route in routes {
            let listener = TcpListener::bind(route.listen)
                .await
                .map_err(|source| WanError::Bind { addr: route.listen, source })?;
            let link = Link::new(state.delay());
            link.set_partitioned(state.cuts(&route));
            relays.push((route.clone(), Relay::new(listener, route.target, link)));
        }
        Ok(Wan { relays })
    }

    /// Applies a state to every route's link.
    pub fn apply(&self, state: &WanState) {
        for (route, relay) in &self.relays {
            relay.link().set_delay(state.delay());
            relay.link().set_partitioned(state.cuts(route));
        }
    }

    /// Each route's link, to control them in-process.
    pub fn links(&self) -> Vec<(Route, Link)> {
        self.relays.iter().map(|(r, relay)| (r.clone(), relay.link().clone())).collect()
    }

    /// Runs every relay until `cancel`; with a control file, re-reads it every
    /// [`POLL`] and applies changes. A control file that cannot be read keeps
    /// the last good state (and logs why).
    pub async fn run(self, control: Option<PathBuf>, cancel: CancellationToken) {
        let tracker = TaskTracker::new();
        let links = self.links();
        for (_, relay) in self.relays {
            tracker.spawn(relay.run(cancel.child_token()));
        }
        if let Some(path) = control {
            let mut last: Option<WanState> = None;
            loop {
                match WanState::load(&path) {
                    Ok(state) if last.as_ref() != Some(&state) => {
                        for (route, link) in &links {
                            link.set_delay(state.delay());
                            link.set_partitioned(state.cuts(route));
                        }
                        tracing::info!(delay_ms = state.delay_ms, partitioned = ?state.partitioned, "WAN state applied");
                        last = Some(state);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("{e}"),
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
        tracker.close();
        tracker.wait().await;
    }
}
