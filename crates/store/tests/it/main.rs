//! Integration tests of pgdr-store: the same behaviour checked on the
//! in-memory and the redb store, then what only the redb store does
//! (surviving a restart), then the typed cluster layer and the event log.

mod cluster;
mod events;
mod kv;
mod reopen;

use std::sync::Arc;

use pgdr_store::{EmbeddedStore, MemoryStore, StateStore};

/// A store under test and what keeps its file alive.
pub struct Fixture {
    pub store: Arc<dyn StateStore>,
    pub _dir: Option<tempfile::TempDir>,
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("pgdr-store-").tempdir_in("/tmp").expect("tempdir")
}

pub async fn memory() -> Fixture {
    Fixture { store: Arc::new(MemoryStore::new()), _dir: None }
}

pub async fn embedded() -> Fixture {
    let dir = tempdir();
    let store = EmbeddedStore::open(dir.path().join(EmbeddedStore::FILE_NAME)).await.expect("open");
    Fixture { store: Arc::new(store), _dir: Some(dir) }
}

/// Runs one async test body against both stores, with paused time.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(start_paused = true)]
            async fn memory() {
                let f = $crate::memory().await;
                super::$body(f.store.clone()).await;
            }
            #[tokio::test(start_paused = true)]
            async fn embedded() {
                let f = $crate::embedded().await;
                super::$body(f.store.clone()).await;
            }
        }
    };
}

/// Runs one async test body against both stores on a multi-threaded runtime
/// (real time), for races.
#[macro_export]
macro_rules! both_threaded {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn memory() {
                let f = $crate::memory().await;
                super::$body(f.store.clone()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn embedded() {
                let f = $crate::embedded().await;
                super::$body(f.store.clone()).await;
            }
        }
    };
}
