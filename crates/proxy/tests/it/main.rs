//! Integration tests of the proxy against real PostgreSQL, psql and pgbench.

mod harness;
mod malformed;
mod pause;
mod relay;
mod switch;
mod unreachable;
