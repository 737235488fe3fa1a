//! The HTTP contracts between pgdr's parts: request and response types and a
//! typed client for each server, shared by the servers and their callers so
//! the wire format and `--json` output cannot drift.
//!
//! [`agent`] is the node agent's API, [`status`] the schema of
//! `pgdr status --json`. The controller's API goes in its own module beside
//! it. This crate does no IO besides the HTTP client and must
//! not depend on any server crate.

pub mod agent;
pub mod controller;
pub mod error;
mod http;
pub mod peer;
pub mod status;
pub mod tls;

pub use error::{ApiError, Unreachable};
pub use tls::HttpTls;
