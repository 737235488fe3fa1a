//! Integration tests of backups against real PostgreSQL and a real
//! S3-compatible server.

mod delta;
mod harness;
mod local;
mod lock;
mod replica;
mod s3;
mod tamper;
