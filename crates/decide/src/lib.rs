//! The decision core of pgdr: the choices that keep one writer, as pure
//! state machines. Nothing here does IO or reads a clock: every input is an
//! event with the time it happened (on the deciding process's own monotonic
//! clock, [`At`]), every output is a command the IO loop around it carries
//! out (a renewal to send, a fence to run, a timer to set). The loops in
//! `pgdr-node` (the agent) and `pgdr-controller` feed these machines and do
//! what they say; the model check (`tests` of [`model`], stateright) runs the
//! same machines over agents, a controller, the store, partitions, message
//! loss and delay, restarts and clock drift.
//!
//! What survives a restart is kept apart from what does not:
//! [`support::PeerDurable`] (the agent's epoch file) versus
//! [`lease::AgentLease`] (rebuilt at every agent start, and starting
//! *lapsed*); the controller's durable part is the store's
//! [`renewal::StoreView`] (epoch and primary), its volatile part the grants
//! it remembers ([`fence::FenceGate`]'s `last_grant`).
//!
//! [`leadership`] decides when a leading controller hands leadership to the
//! region of the primaries it keeps alive.
//!
//! [`rules`] holds the safety rules every role change and route is checked
//! against (one writable primary, routes by epoch, RPO lag, freeze).
//!
//! Depends on `pgdr-model` only.

pub mod fence;
pub mod leadership;
pub mod lease;
pub mod renewal;
pub mod rules;
pub mod support;
mod time;

pub use time::At;

#[cfg(test)]
mod model;
