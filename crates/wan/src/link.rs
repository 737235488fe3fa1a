//! [`Link`]: the delay and partition switch shared by the relays of one path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// The state of one network path: its one-way delay and whether it is
/// partitioned. Cheap to clone; every clone controls the same path.
#[derive(Clone, Debug)]
pub struct Link {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    delay_us: AtomicU64,
    partitioned: watch::Sender<bool>,
}

impl Link {
    /// A healed link with this one-way delay.
    pub fn new(delay: Duration) -> Link {
        let (tx, _) = watch::channel(false);
        Link {
            inner: Arc::new(Inner {
                delay_us: AtomicU64::new(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX)),
                partitioned: tx,
            }),
        }
    }

    /// The one-way delay added to bytes in each direction.
    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.inner.delay_us.load(Ordering::Relaxed))
    }

    pub fn set_delay(&self, delay: Duration) {
        self.inner.delay_us.store(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Cuts the path: bytes are held, sockets stay open, new connections stall.
    pub fn partition(&self) {
        self.inner.partitioned.send_if_modified(|p| !std::mem::replace(p, true));
    }

    /// Restores the path; held bytes flow again, in order.
    pub fn heal(&self) {
        self.inner.partitioned.send_if_modified(|p| std::mem::replace(p, false));
    }

    pub fn set_partitioned(&self, partitioned: bool) {
        if partitioned { self.partition() } else { self.heal() }
    }

    pub fn is_partitioned(&self) -> bool {
        *self.inner.partitioned.borrow()
    }

    /// Returns once the link is not partitioned.
    pub async fn wait_healed(&self) {
        let mut rx = self.inner.partitioned.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|p| !*p).await;
    }
}
