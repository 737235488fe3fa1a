//! Links between a sandbox's regions.
//!
//! On one machine every link is instant and every dead peer resets its
//! sockets at once, which flatters any HA tool. This crate puts a TCP relay on
//! each cross-region path that
//!
//! - adds a configurable delay to the bytes in each direction (chunks are
//!   timestamped when read and released in order after the delay), and
//! - can be *partitioned* the way a real network partition behaves: bytes
//!   stop flowing both ways, sockets stay open (no FIN, no RST), and new
//!   connections are accepted and then stalled (no refusal) until healed.
//!
//! [`link::Link`] is the shared switch, [`relay::Relay`] one listener → one
//! target, [`control`] a set of routes between named regions driven by a
//! small JSON control file so another process (`pgdr sandbox partition`) can
//! flip it.
//!
//! A userspace relay has one known difference from a real partition: the
//! peers' kernels keep talking to the relay's kernel, so TCP keepalive and
//! `TCP_USER_TIMEOUT` on the peers never fire; only application-level timeouts
//! notice. pgdr's probes and agents use application timeouts, so detection is
//! tested honestly; a kernel-level alternative (`ip netns` + `tc netem` +
//! nftables, as root) can come later.
//!
//! This crate depends on nothing of pgdr's.

pub mod control;
pub mod link;
pub mod relay;

pub use control::{Route, Wan, WanState};
pub use link::Link;
pub use relay::Relay;

/// What can go wrong running the WAN links.
#[derive(Debug, thiserror::Error)]
pub enum WanError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("{}: not a WAN control file: {source}", path.display())]
    Parse { path: std::path::PathBuf, source: serde_json::Error },
}
