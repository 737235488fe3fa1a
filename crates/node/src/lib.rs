//! The PostgreSQL host layer and the agent.
//!
//! [`bin`] finds the server binaries, [`os`] runs them as an unprivileged user
//! when pgdr runs as root, [`local`] drives one local server (initdb, start,
//! stop, queries). This crate must not depend on the controller or the proxy.

pub mod bin;
pub mod local;
pub mod os;

pub use bin::{BinError, PgBinaries};
pub use local::{LocalPg, PgError};
pub use os::RunAs;
