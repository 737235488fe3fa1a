//! Integration tests of the workflow engine, each run on the in-memory and
//! the redb store with paused time.

mod engine;

use std::sync::Arc;
use std::time::Duration;

use pgdr_store::{EmbeddedStore, Event, MemoryStore, StateStore, TokioClock};
use pgdr_workflow::{Engine, EngineOptions, Registry, Stage, WorkflowDef};
use serde_json::Value;
use time::macros::datetime;
use tokio::sync::broadcast;

pub struct Fixture {
    pub store: Arc<dyn StateStore>,
    pub _dir: Option<tempfile::TempDir>,
}

pub async fn memory() -> Fixture {
    Fixture { store: Arc::new(MemoryStore::new()), _dir: None }
}

pub async fn embedded() -> Fixture {
    let dir = tempfile::Builder::new().prefix("pgdr-workflow-").tempdir_in("/tmp").expect("tempdir");
    let store = EmbeddedStore::open(dir.path().join("state.redb")).await.expect("open");
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

type BuildFn = dyn Fn(&Value) -> Vec<Stage> + Send + Sync;

/// A workflow kind whose stages a test provides.
pub struct TestDef {
    pub kind: &'static str,
    pub role_changing: bool,
    pub build: Arc<BuildFn>,
}

impl TestDef {
    pub fn new(kind: &'static str, build: impl Fn(&Value) -> Vec<Stage> + Send + Sync + 'static) -> Self {
        Self { kind, role_changing: true, build: Arc::new(build) }
    }
}

impl WorkflowDef for TestDef {
    fn kind(&self) -> &str {
        self.kind
    }
    fn role_changing(&self) -> bool {
        self.role_changing
    }
    fn build(&self, params: &Value) -> Result<Vec<Stage>, String> {
        Ok((self.build)(params))
    }
}

pub const OWNER_TTL: Duration = Duration::from_secs(15);

pub async fn engine(store: &Arc<dyn StateStore>, owner: &str, registry: Registry) -> Engine {
    let clock = Arc::new(TokioClock::starting_at(datetime!(2026-03-01 12:00 UTC)));
    let options = EngineOptions { owner: owner.into(), owner_ttl: OWNER_TTL, ..EngineOptions::default() };
    Engine::new(store.clone(), clock, registry, options).await.expect("engine")
}

/// Waits for the first event matching `pred`.
pub async fn wait_event(rx: &mut broadcast::Receiver<Event>, pred: impl Fn(&Event) -> bool) -> Event {
    loop {
        let ev = rx.recv().await.expect("event stream");
        if pred(&ev) {
            return ev;
        }
    }
}
