//! The PostgreSQL host layer and the agent.
//!
//! [`bin`] finds the server binaries, [`os`] runs them as an unprivileged user
//! when pgdr runs as root, [`local`] drives one local server (initdb, start,
//! stop, queries), [`leftover`] stops what a killed postmaster left
//! running, [`replica`] makes a node a replica (slots, base backup,
//! `pg_rewind`, standby config), [`agent`] is the HTTP agent on top and
//! [`probe`] its canary-write endpoint (the agent as a vantage point). This
//! crate must not depend on the controller or the proxy.

pub mod adopt;
pub mod agent;
pub mod bin;
pub mod files;
pub mod guard;
pub mod lease;
pub mod leftover;
pub mod local;
pub mod os;
pub mod probe;
pub mod replica;

pub use bin::{BinError, PgBinaries};
pub use local::{LocalPg, PgError};
pub use os::RunAs;
