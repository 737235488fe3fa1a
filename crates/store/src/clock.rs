//! Wall-clock time for timestamps in records and events.
//!
//! Durations and deadlines use `tokio::time::Instant` everywhere (so tests
//! pause and advance time); only timestamps that people read, and lease
//! deadlines persisted across a restart, use a [`Clock`].

use std::fmt;

use time::OffsetDateTime;

/// Where wall-clock time comes from.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> OffsetDateTime;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A wall clock that moves with tokio's clock: a fixed start plus the tokio
/// time elapsed since. Under `#[tokio::test(start_paused = true)]` it is
/// deterministic, and [`TokioClock::starting_at`] makes timestamps
/// reproducible.
#[derive(Clone, Debug)]
pub struct TokioClock {
    start_wall: OffsetDateTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// Starts at the system's current time.
    pub fn new() -> Self {
        Self::starting_at(OffsetDateTime::now_utc())
    }

    pub fn starting_at(start_wall: OffsetDateTime) -> Self {
        Self { start_wall, start: tokio::time::Instant::now() }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> OffsetDateTime {
        self.start_wall + self.start.elapsed()
    }
}
