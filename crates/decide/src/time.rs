//! Time as the machines see it.

use std::fmt;

/// An instant on one process's monotonic clock: milliseconds since an
/// origin that process chose (its start). Instants of two processes are
/// never compared with each other: the machines only compare their own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct At(pub u64);

impl At {
    /// `ms` milliseconds later.
    pub fn after(self, ms: u64) -> At {
        At(self.0.saturating_add(ms))
    }

    /// `ms` milliseconds earlier (0 at the origin).
    pub fn before(self, ms: u64) -> At {
        At(self.0.saturating_sub(ms))
    }

    /// Milliseconds from `earlier` to `self` (0 when `earlier` is later).
    pub fn since(self, earlier: At) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}
