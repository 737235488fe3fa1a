//! Integration tests of the proxy against real PostgreSQL, psql and pgbench.

mod backend_tls;
mod clientside;
mod drivers;
mod harness;
mod malformed;
mod moves;
mod pause;
mod pool;
mod props;
mod relay;
mod switch;
mod unreachable;
