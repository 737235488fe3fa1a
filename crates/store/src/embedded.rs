//! [`EmbeddedStore`]: the default state store, one redb file in the
//! controller's `state_dir`.
//!
//! Every operation is one redb transaction (a compare-and-set checks and
//! writes inside one write transaction), committed with redb's default
//! durability (fsync) before the call returns, so what a caller was told
//! survives a crash. redb calls block, so they run on `spawn_blocking`.
//!
//! Tables: `kv` (key → revision, lease, value), `leases` (id → TTL, wall-clock
//! deadline, attached keys, as JSON) and `meta` (the revision and the last
//! lease id).
//!
//! **Leases across a restart.** While the store is open, lease deadlines are
//! `tokio::time::Instant`s (monotonic). The file also holds each lease's
//! deadline as wall-clock time, written one TTL ahead of the in-memory one
//! (so most keep-alives need no transaction; see [`crate::kv`]); when the
//! file is reopened, a lease keeps what was left of its TTL by the wall
//! clock, and at most one TTL more, and a lease whose stored deadline passed
//! while nobody had the file open expires at once. We chose this over
//! etcd's "refresh every lease to its full TTL on leader change" because an
//! agent that lost contact fences itself after its TTL by its own clock: the
//! store must not believe a lease is still held long after its holder gave
//! up. A wall clock stepped backwards while the store was closed makes leases
//! live longer (at most by the step); stepped forwards, shorter.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::kv::{Backend, KvStore, LeaseRec, ReadTables, Record, Tables};
use crate::{
    Clock, KeyValue, LeaseId, Revision, StateStore, StoreError, SystemClock, Txn, TxnOutcome, Versioned, Watch,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LEASES: TableDefinition<u64, &[u8]> = TableDefinition::new("leases");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Stored value layout: revision (8 bytes LE), lease id (8 bytes LE, 0 for
/// none), then the value.
fn encode(rec: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + rec.value.len());
    out.extend_from_slice(&rec.revision.to_le_bytes());
    out.extend_from_slice(&rec.lease.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&rec.value);
    out
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record, StoreError> {
    let corrupt = || StoreError::Corrupt { key: key.to_owned(), message: "record shorter than its header".into() };
    let rev: [u8; 8] = bytes.get(0..8).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?;
    let lease: [u8; 8] = bytes.get(8..16).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?;
    let lease = u64::from_le_bytes(lease);
    Ok(Record { value: bytes[16..].to_vec(), revision: u64::from_le_bytes(rev), lease: (lease != 0).then_some(lease) })
}

fn get_in(t: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Option<Record>, StoreError> {
    match t.get(key)? {
        Some(v) => Ok(Some(decode(key, v.value())?)),
        None => Ok(None),
    }
}

fn range_in(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<(String, Record)>, StoreError> {
    let mut out = Vec::new();
    for item in t.range(prefix..)? {
        let (k, v) = item?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        out.push((key.to_owned(), decode(key, v.value())?));
    }
    Ok(out)
}

fn meta_in(t: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64, StoreError> {
    Ok(t.get(name)?.map(|v| v.value()).unwrap_or(0))
}

fn lease_decode(id: u64, bytes: &[u8]) -> Result<LeaseRec, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt { key: format!("lease {id:x}"), message: e.to_string() })
}

struct WriteTables<'txn> {
    kv: redb::Table<'txn, &'static str, &'static [u8]>,
    leases: redb::Table<'txn, u64, &'static [u8]>,
    meta: redb::Table<'txn, &'static str, u64>,
}

impl ReadTables for WriteTables<'_> {
    fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        get_in(&self.kv, key)
    }
    fn range(&self, prefix: &str) -> Result<Vec<(String, Record)>, StoreError> {
        range_in(&self.kv, prefix)
    }
    fn meta(&self, name: &str) -> Result<u64, StoreError> {
        meta_in(&self.meta, name)
    }
}

impl Tables for WriteTables<'_> {
    fn insert(&mut self, key: &str, rec: &Record) -> Result<(), StoreError> {
        self.kv.insert(key, encode(rec).as_slice())?;
        Ok(())
    }
    fn remove(&mut self, key: &str) -> Result<(), StoreError> {
        self.kv.remove(key)?;
        Ok(())
    }
    fn lease(&self, id: u64) -> Result<Option<LeaseRec>, StoreError> {
        match self.leases.get(id)? {
            Some(v) => Ok(Some(lease_decode(id, v.value())?)),
            None => Ok(None),
        }
    }
    fn leases(&self) -> Result<Vec<(u64, LeaseRec)>, StoreError> {
        let mut out = Vec::new();
        for item in self.leases.iter()? {
            let (k, v) = item?;
            out.push((k.value(), lease_decode(k.value(), v.value())?));
        }
        Ok(out)
    }
    fn put_lease(&mut self, id: u64, rec: &LeaseRec) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.leases.insert(id, bytes.as_slice())?;
        Ok(())
    }
    fn remove_lease(&mut self, id: u64) -> Result<(), StoreError> {
        self.leases.remove(id)?;
        Ok(())
    }
    fn set_meta(&mut self, name: &str, value: u64) -> Result<(), StoreError> {
        self.meta.insert(name, value)?;
        Ok(())
    }
}

struct ReadOnly {
    kv: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    meta: redb::ReadOnlyTable<&'static str, u64>,
}

impl ReadTables for ReadOnly {
    fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        get_in(&self.kv, key)
    }
    fn range(&self, prefix: &str) -> Result<Vec<(String, Record)>, StoreError> {
        range_in(&self.kv, prefix)
    }
    fn meta(&self, name: &str) -> Result<u64, StoreError> {
        meta_in(&self.meta, name)
    }
}

struct RedbBackend {
    db: Database,
}

impl Backend for RedbBackend {
    const BLOCKING: bool = true;

    fn write<R>(&self, f: impl FnOnce(&mut dyn Tables) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let txn = self.db.begin_write()?;
        let r = {
            let mut tables =
                WriteTables { kv: txn.open_table(KV)?, leases: txn.open_table(LEASES)?, meta: txn.open_table(META)? };
            f(&mut tables)?
        };
        // Dropping an uncommitted transaction (on error above) aborts it.
        txn.commit()?;
        Ok(r)
    }

    fn read<R>(&self, f: impl FnOnce(&dyn ReadTables) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let txn = self.db.begin_read()?;
        let tables = ReadOnly { kv: txn.open_table(KV)?, meta: txn.open_table(META)? };
        f(&tables)
    }
}

/// The state store in one redb file. Cheap to clone (clones share the file).
/// Only one `EmbeddedStore` may have a file open at a time.
#[derive(Clone)]
pub struct EmbeddedStore {
    kv: KvStore<RedbBackend>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("path", &self.path).finish()
    }
}

impl EmbeddedStore {
    /// The file name the controller uses inside its `state_dir`.
    pub const FILE_NAME: &'static str = "pgdr-state.redb";

    /// Opens (or creates) the store in `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_clock(path, Arc::new(SystemClock)).await
    }

    /// Opens (or creates) the store in `path`, reading wall-clock time (for
    /// lease deadlines across restarts) from `clock`.
    pub async fn open_with_clock(path: impl AsRef<Path>, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let (db, leases) = tokio::task::spawn_blocking(move || {
            let open_err = |message: String| StoreError::Open { path: p.display().to_string(), message };
            let db = Database::create(&p).map_err(|e| open_err(e.to_string()))?;
            let backend = RedbBackend { db };
            // Creates the tables on first open and reads the leases.
            let leases = backend.write(|t| t.leases())?;
            Ok::<_, StoreError>((backend, leases))
        })
        .await
        .map_err(|e| StoreError::Internal(format!("store task failed: {e}")))??;
        let kv = KvStore::new(db, clock, &leases);
        if kv.has_leases() {
            kv.ensure_reaper();
        }
        tracing::debug!(path = %path.display(), leases = leases.len(), "state store opened");
        Ok(Self { kv, path: Arc::new(path) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl StateStore for EmbeddedStore {
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
