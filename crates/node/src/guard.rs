//! The boot guard: a primary that comes back without its agent deciding
//! (a host restarted with PostgreSQL enabled at boot, an operator's
//! `pg_ctl start`) must not take a single write. While PostgreSQL runs as
//! the primary, its agent keeps a `standby.signal` in the data directory,
//! with a marker file saying it is pgdr's guard. A running server never
//! reads the signal; a server started later comes up in standby mode: read
//! only, and fenced until the agent (asked by the controller, at the current
//! epoch) stops it, lifts the guard and starts it as the primary.
//!
//! A real replica's `standby.signal` has no marker: configuring a node as a
//! replica (rebuild, rewind, new upstream) removes the marker, so the agent
//! never lifts a signal it did not write.

use std::path::Path;

use crate::local::{LocalPg, PgError};

/// The marker beside the guard's `standby.signal`.
pub const MARKER: &str = "pgdr.boot-guard";
const SIGNAL: &str = "standby.signal";

/// Whether the guard is in place (both files).
pub fn armed(data_dir: &Path) -> bool {
    data_dir.join(MARKER).is_file() && data_dir.join(SIGNAL).is_file()
}

/// Puts the guard in place: call only while PostgreSQL runs as the primary
/// (it reads the signal at its next start, never while running). The marker
/// is written first, so a signal without a marker is never pgdr's.
pub fn arm(pg: &LocalPg) -> Result<(), PgError> {
    pg.write_file(MARKER, b"pgdr: standby.signal beside this file is the boot guard (see docs/failover-math.md)\n")?;
    pg.write_file(SIGNAL, b"")
}

/// Lifts the guard before the agent starts its primary: removes the signal
/// and the marker when the marker is there; a replica's own signal (no
/// marker) stays. `true` when a guard was lifted.
pub fn lift(data_dir: &Path) -> Result<bool, PgError> {
    let marker = data_dir.join(MARKER);
    if !marker.is_file() {
        return Ok(false);
    }
    let signal = data_dir.join(SIGNAL);
    match std::fs::remove_file(&signal) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PgError::Io { path: signal, source: e }),
    }
    forget(data_dir)?;
    Ok(true)
}

/// Drops the marker (the node becomes a replica: its signal is its own).
pub fn forget(data_dir: &Path) -> Result<(), PgError> {
    let marker = data_dir.join(MARKER);
    match std::fs::remove_file(&marker) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PgError::Io { path: marker, source: e }),
    }
}
