//! Integration tests of the host layer and the agent against real PostgreSQL.

mod agent;
mod auth;
mod common;
mod local;
mod probe;
