//! Drills: rehearsals that inject a real fault into a real topology and
//! measure what clients saw.
//!
//! - [`workload`]: writers through the writer endpoint committing rows with
//!   unique ids (every acknowledgement and every error recorded with its
//!   time), readers through the reader endpoint.
//! - [`timeline`]: the workload's record as 100 ms buckets.
//! - [`checker`]: afterwards, reads the (new) primary: lost acknowledged
//!   commits, RTO, detection and step timings.
//! - [`writable`]: the overlap checker: every node asked directly every
//!   50 ms whether it accepts a `BEGIN READ WRITE` write; two at once fails
//!   the drill.
//! - [`observer`]: [`observer::DrillObserver`], how a drill learns the
//!   primary, the epoch, detection and workflow steps (the controller's API
//!   implements it; [`observer::SqlObserver`] asks the nodes directly).
//! - [`scenario`]: the faults (kill, freeze, region loss, partition...) and
//!   how each is undone.
//! - [`run`]: the drill loop: workload, fault, recovery, check, restore.
//! - [`report`]: JSON, Markdown and a self-contained HTML page with an SVG
//!   timeline.
//! - [`readiness`]: would a failover work right now?
//! - [`runbook`]: the run book generated from config and the latest drill.
//!
//! This crate drives a topology from outside, as a client and an operator
//! would; it must not depend on the controller or the proxy.

pub mod checker;
pub mod controller_observer;
pub mod hosts;
pub mod observer;
pub mod readiness;
pub mod report;
pub mod run;
pub mod runbook;
pub mod scenario;
pub mod timeline;
pub mod workload;
pub mod writable;

/// What can go wrong in a drill.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("cannot connect to {what}: {source}")]
    Connect { what: String, source: tokio_postgres::Error },
    #[error("cannot connect to {what}: {source}")]
    Tls { what: String, source: pgdr_tls::TlsError },
    #[error("query on {what} failed: {source}")]
    Query { what: String, source: tokio_postgres::Error },
    #[error("{0}")]
    Topology(String),
    #[error("{what} is not available: {why}")]
    NotAvailable { what: String, why: String },
    #[error("cannot {action} {target}: {source}")]
    Signal { action: String, target: String, source: nix::Error },
    #[error("{}: {source}", path.display())]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("timed out after {seconds:.1} s waiting for {what}")]
    Timeout { what: String, seconds: f64 },
    #[error(transparent)]
    Secret(#[from] pgdr_config::SecretError),
    #[error(transparent)]
    Wan(#[from] pgdr_wan::WanError),
    #[error("{0}")]
    Other(String),
}

impl DrillError {
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DrillError + '_ {
        move |source| DrillError::Io { path: path.to_owned(), source }
    }
}

/// Milliseconds since the Unix epoch, the time base of reports.
pub fn unix_ms(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

/// RFC 3339 for a Unix-ms time, for people reading reports.
pub fn rfc3339(ms: f64) -> String {
    let nanos = (ms * 1_000_000.0) as i128;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}
