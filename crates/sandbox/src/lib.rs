//! A local sandbox of real PostgreSQL: a primary, its replicas and standbys in
//! other regions, all streaming through replication slots, each with its own
//! `pgdr agent` process, described by a `pgdr.toml` in the sandbox folder.
//!
//! Used by `pgdr sandbox up/down` and by end-to-end tests (through
//! [`SandboxGuard`], which tears everything down when dropped). Every process
//! started is recorded by PID in `sandbox.json` ([`record`]) so [`down`] stops
//! exactly those. With a WAN delay, relays sit on every cross-region path
//! ([`wan`]). This crate depends on the node layer and the API types,
//! never on the controller or the proxy.

use std::path::PathBuf;

pub mod certs;
pub mod down;
pub mod etcd;
mod guard;
mod ports;
pub mod record;
mod render;
mod up;
pub mod wan;

pub use down::{DownReport, down};
pub use guard::SandboxGuard;
pub use ports::reserve as reserve_ports;
pub use record::{MAIN_CLUSTER, NodeRecord, Record, SandboxRole, cluster_names};
pub use up::{Sandbox, SandboxBuilder, uri_encode};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("a sandbox is already up in {} (sandbox.json is there): run `pgdr sandbox down --dir {}` first", .0.display(), .0.display())]
    AlreadyUp(PathBuf),
    #[error("{} holds a stopped sandbox: remove it with `pgdr sandbox down --dir {} --purge`, or pick another folder", .0.display(), .0.display())]
    Stopped(PathBuf),
    #[error("{} is not empty and holds no sandbox: pick an empty or new folder", .0.display())]
    NotEmpty(PathBuf),
    #[error("port {0} is in use: pick another --base-port, or 0 for free ports")]
    PortInUse(u16),
    #[error("bad sandbox topology: {0}")]
    Topology(String),
    #[error(transparent)]
    Bin(#[from] pgdr_node::BinError),
    #[error(transparent)]
    Os(#[from] pgdr_node::os::OsError),
    #[error(transparent)]
    Pg(#[from] pgdr_node::PgError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {detail}", path.display())]
    Record { path: PathBuf, detail: String },
    #[error("the sandbox's pgdr.toml does not validate (a pgdr bug): {0}")]
    Config(String),
    #[error("agent of {node}: {detail}")]
    Agent { node: String, detail: String },
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("after stopping, still alive or listening: {0}")]
    Leftover(String),
    #[error("no node {0:?} in this sandbox")]
    NoSuchNode(String),
    #[error("WAN links: {0}")]
    Wan(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("query on {node} failed: {detail}")]
    Query { node: String, detail: String },
}

impl SandboxError {
    /// Bad usage (exit code 2) rather than a failed operation.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            SandboxError::AlreadyUp(_)
                | SandboxError::Stopped(_)
                | SandboxError::NotEmpty(_)
                | SandboxError::PortInUse(_)
                | SandboxError::Topology(_)
                | SandboxError::Os(pgdr_node::os::OsError::Unreachable { .. })
        )
    }

    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
        move |source| SandboxError::Io { path: path.to_owned(), source }
    }
}
