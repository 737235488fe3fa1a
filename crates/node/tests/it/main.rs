//! Integration tests of the host layer against real PostgreSQL.

mod local;
