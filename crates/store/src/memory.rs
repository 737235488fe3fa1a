//! [`MemoryStore`]: the state store in this process's memory, for tests and
//! single-process tools. Same semantics as [`crate::EmbeddedStore`]; nothing
//! survives the process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::kv::{Backend, KvStore, LeaseRec, ReadTables, Record, Tables};
use crate::{
    Clock, KeyValue, LeaseId, Revision, StateStore, StoreError, SystemClock, Txn, TxnOutcome, Versioned, Watch,
};

#[derive(Default)]
struct MemTables {
    kv: BTreeMap<String, Record>,
    leases: BTreeMap<u64, LeaseRec>,
    meta: BTreeMap<String, u64>,
}

impl ReadTables for MemTables {
    fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        Ok(self.kv.get(key).cloned())
    }
    fn range(&self, prefix: &str) -> Result<Vec<(String, Record)>, StoreError> {
        Ok(self
            .kv
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn meta(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self.meta.get(name).copied().unwrap_or(0))
    }
}

impl Tables for MemTables {
    fn insert(&mut self, key: &str, rec: &Record) -> Result<(), StoreError> {
        self.kv.insert(key.to_owned(), rec.clone());
        Ok(())
    }
    fn remove(&mut self, key: &str) -> Result<(), StoreError> {
        self.kv.remove(key);
        Ok(())
    }
    fn lease(&self, id: u64) -> Result<Option<LeaseRec>, StoreError> {
        Ok(self.leases.get(&id).cloned())
    }
    fn leases(&self) -> Result<Vec<(u64, LeaseRec)>, StoreError> {
        Ok(self.leases.iter().map(|(k, v)| (*k, v.clone())).collect())
    }
    fn put_lease(&mut self, id: u64, rec: &LeaseRec) -> Result<(), StoreError> {
        self.leases.insert(id, rec.clone());
        Ok(())
    }
    fn remove_lease(&mut self, id: u64) -> Result<(), StoreError> {
        self.leases.remove(&id);
        Ok(())
    }
    fn set_meta(&mut self, name: &str, value: u64) -> Result<(), StoreError> {
        self.meta.insert(name.to_owned(), value);
        Ok(())
    }
}

#[derive(Default)]
struct MemBackend {
    tables: Mutex<MemTables>,
}

impl Backend for MemBackend {
    const BLOCKING: bool = false;

    fn write<R>(&self, f: impl FnOnce(&mut dyn Tables) -> Result<R, StoreError>) -> Result<R, StoreError> {
        // Operations check every condition before changing anything and the
        // tables cannot fail, so running in place is atomic.
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut *t)
    }

    fn read<R>(&self, f: impl FnOnce(&dyn ReadTables) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        f(&*t)
    }
}

/// The state store in memory. Cheap to clone (clones share the data).
#[derive(Clone)]
pub struct MemoryStore {
    kv: KvStore<MemBackend>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryStore")
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A store whose lease bookkeeping timestamps come from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self { kv: KvStore::new(MemBackend::default(), clock, &[]) }
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.kv.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.kv.list(prefix).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.kv.revision().await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.kv.txn(txn).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.kv.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.kv.keep_alive(lease).await
    }
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.kv.revoke(lease).await
    }
    async fn lease_remaining(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        self.kv.lease_remaining(lease).await
    }
    async fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        self.kv.watch(prefix).await
    }
}
