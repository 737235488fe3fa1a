//! Integration tests of the host layer and the agent against real PostgreSQL.

mod agent;
mod auth;
mod busy;
mod local;
mod probe;
