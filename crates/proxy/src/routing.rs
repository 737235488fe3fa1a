//! Where the proxy sends sessions: published by the controller (or the
//! standalone [`crate::discovery`] task) through a `watch` channel per
//! cluster. The proxy never routes writes to a backend named by an epoch
//! older than one it has seen: [`Routing::accept`] refuses a route of an
//! older epoch than the current one.

use pgdr_model::{Epoch, NodeName};
use serde::{Deserialize, Serialize};

/// One PostgreSQL server the proxy may connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Routing {
    pub epoch: Epoch,
    /// The writable primary the epoch names; `None` while there is none
    /// (writer sessions wait, bounded by `max_pause`).
    pub primary: Option<Backend>,
    /// Healthy replicas for the reader endpoint.
    pub replicas: Vec<Backend>,
}

impl Routing {
    /// Takes `next` in place of this routing unless it is of an older
    /// epoch: publishing a route never goes back to an older epoch (a
    /// delayed or repeated publication from before a promotion). Returns
    /// whether anything changed.
    pub fn accept(&mut self, next: Routing) -> bool {
        if next.epoch < self.epoch || *self == next {
            return false;
        }
        *self = next;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_back_to_an_older_epoch() {
        let a = Backend::new("a", "127.0.0.1", 1);
        let b = Backend::new("b", "127.0.0.1", 2);
        let mut r = Routing { epoch: Epoch(3), primary: Some(b.clone()), replicas: vec![] };
        // A route of epoch 2 naming the old primary arrives late.
        assert!(!r.accept(Routing { epoch: Epoch(2), primary: Some(a.clone()), replicas: vec![] }));
        assert_eq!(r.primary, Some(b.clone()));
        // Same epoch, the primary unrouted (a failover starting): taken.
        assert!(r.accept(Routing { epoch: Epoch(3), primary: None, replicas: vec![a.clone()] }));
        assert!(!r.accept(Routing { epoch: Epoch(3), primary: None, replicas: vec![a.clone()] }));
        assert!(r.accept(Routing { epoch: Epoch(4), primary: Some(a), replicas: vec![b] }));
        assert_eq!(r.epoch, Epoch(4));
    }
}
