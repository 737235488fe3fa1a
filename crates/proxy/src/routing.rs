//! Where the proxy sends sessions: published by the controller (or the
//! standalone [`crate::discovery`] task) through a `watch` channel per
//! cluster. The proxy never routes writes to a backend named by an epoch
//! older than one it has seen.

use pgdr_model::{Epoch, NodeName};
use serde::Serialize;

/// One PostgreSQL server the proxy may connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub node: NodeName,
    pub host: String,
    pub port: u16,
}

impl Backend {
    pub fn new(node: impl Into<String>, host: impl Into<String>, port: u16) -> Backend {
        Backend { node: NodeName::new(node.into()), host: host.into(), port }
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The routing of one cluster at one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Routing {
    pub epoch: Epoch,
    /// The writable primary the epoch names; `None` while there is none
    /// (writer sessions wait, bounded by `max_pause`).
    pub primary: Option<Backend>,
    /// Healthy replicas for the reader endpoint.
    pub replicas: Vec<Backend>,
}
