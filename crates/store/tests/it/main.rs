//! Integration tests of pgdr-store: the same behaviour (the conformance
//! tests) checked on the in-memory, the redb and, with the `etcd` feature,
//! the etcd store (a real three-member etcd on loopback per test, stopped
//! and removed when the test ends, passed or failed), then what only the
//! redb store does (surviving a restart), what only etcd does (prefixes,
//! TLS and authentication, losing its quorum), then the typed cluster layer
//! and the event log.

mod cluster;
#[cfg(feature = "etcd")]
mod etcd;
mod events;
mod kv;
mod leader;
mod reopen;

use std::sync::Arc;
use std::time::Duration;

use pgdr_store::{EmbeddedStore, MemoryStore, StateStore};

/// A store under test and what keeps its file or its etcd alive.
pub struct Fixture {
    pub store: Arc<dyn StateStore>,
    pub _dir: Option<tempfile::TempDir>,
    #[cfg(feature = "etcd")]
    pub _etcd: Option<pgdr_sandbox::etcd::EtcdCluster>,
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("pgdr-store-").tempdir_in("/tmp").expect("tempdir")
}

pub async fn memory() -> Fixture {
    Fixture {
        store: Arc::new(MemoryStore::new()),
        _dir: None,
        #[cfg(feature = "etcd")]
        _etcd: None,
    }
}

pub async fn embedded() -> Fixture {
    let dir = tempdir();
    let store = EmbeddedStore::open(dir.path().join(EmbeddedStore::FILE_NAME)).await.expect("open");
    Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
        #[cfg(feature = "etcd")]
        _etcd: None,
    }
}

/// A three-member etcd of its own, and a store on it under a prefix.
#[cfg(feature = "etcd")]
pub async fn etcd() -> Fixture {
    let cluster = tokio::task::spawn_blocking(|| pgdr_sandbox::etcd::EtcdCluster::start_temp(3))
        .await
        .expect("join")
        .expect("start a three-member etcd");
    let mut opts = pgdr_store::EtcdOptions::new(cluster.endpoints());
    opts.prefix = "/conformance".into();
    let store = pgdr_store::EtcdStore::connect(opts).await.expect("connect to etcd");
    Fixture { store: Arc::new(store), _dir: None, _etcd: Some(cluster) }
}

/// How a test body lets time pass: tokio's paused clock (exact), or the
/// real one (etcd counts lease TTLs in whole seconds and expires leases on
/// its own ticks, so times are compared with a tolerance and expiry gets a
/// moment more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Time {
    Paused,
    Real,
}

impl Time {
    pub async fn pass(self, d: Duration) {
        match self {
            Time::Paused => tokio::time::advance(d).await,
            Time::Real => tokio::time::sleep(d).await,
        }
    }

    /// Lets `ttl` pass and, in real time, the moment a store takes to
    /// notice an expiry.
    pub async fn pass_expiry(self, ttl: Duration) {
        self.pass(ttl).await;
        if self == Time::Real {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }

    /// `got` is `want`: exactly in paused time, within whole-second
    /// rounding and expiry ticks in real time.
    pub fn assert_close(self, got: Duration, want: Duration, what: &str) {
        match self {
            Time::Paused => assert_eq!(got, want, "{what}"),
            Time::Real => assert!(
                got + Duration::from_millis(1100) >= want && got <= want + Duration::from_millis(1600),
                "{what}: {got:?}, expected about {want:?}"
            ),
        }
    }
}

/// Runs one async test body against every store: memory and redb with
/// paused time, etcd (with the feature) in real time.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(start_paused = true)]
            async fn memory() {
                let f = $crate::memory().await;
                super::$body(f.store.clone(), $crate::Time::Paused).await;
            }
            #[tokio::test(start_paused = true)]
            async fn embedded() {
                let f = $crate::embedded().await;
                super::$body(f.store.clone(), $crate::Time::Paused).await;
            }
            #[cfg(feature = "etcd")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                let f = $crate::etcd().await;
                super::$body(f.store.clone(), $crate::Time::Real).await;
            }
        }
    };
}

/// Runs one async test body against every store on a multi-threaded
/// runtime (real time), for races.
#[macro_export]
macro_rules! both_threaded {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn memory() {
                let f = $crate::memory().await;
                super::$body(f.store.clone(), $crate::Time::Real).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn embedded() {
                let f = $crate::embedded().await;
                super::$body(f.store.clone(), $crate::Time::Real).await;
            }
            #[cfg(feature = "etcd")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn etcd() {
                let f = $crate::etcd().await;
                super::$body(f.store.clone(), $crate::Time::Real).await;
            }
        }
    };
}
