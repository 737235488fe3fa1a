//! The controller: it watches every cluster, decides, and runs the workflows
//! that change roles.
//!
//! The decision core is pure and generic over time ([`detect`], [`candidate`],
//! [`fence`], [`math`]): no IO, unit-tested with paused tokio time. Probes,
//! leases, workflows, the HTTP API and metrics build on it. This crate may
//! depend on the store, the workflow engine, the API types, the proxy's
//! routing types, the backup crate (scheduled backups) and the drill crate
//! (the readiness checks, run on a schedule by [`readiness`]); nothing
//! depends on it except the binary.

pub mod api;
pub mod backups;
pub mod candidate;
pub mod controller;
pub mod detect;
pub mod dns;
pub mod fence;
pub mod handover;
pub mod math;
pub mod metrics;
pub mod migrate;
pub mod monitor;
pub mod page;
pub mod probe;
pub mod readiness;
pub mod rotation;
pub mod rules;
pub mod runtime;
pub mod sync;
pub mod webhook;
pub mod workflows;

pub use controller::{Controller, ControllerError};
