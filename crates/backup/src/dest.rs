//! Destinations: object storage (local filesystem, S3 and S3-compatible,
//! Google Cloud Storage, Azure Blob Storage) with the destination's keys, its
//! write-once flag and its concurrency limit. GCS and Azure are built and
//! configured but not exercised by a test here (no emulator is installable).
//!
//! Every write is create-if-absent: pgdr never overwrites an object anywhere,
//! and never deletes on an immutable destination. Every transfer holds one
//! permit of the destination's semaphore, so `concurrency` bounds the parallel
//! requests to it whatever the caller does; [`DestStats`] counts them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::sync::Semaphore;

use crate::keys::{KeyError, Keyring};

#[derive(Debug, thiserror::Error)]
pub enum DestError {
    #[error("destination {dest:?}: cannot {op} {key}: {source}")]
    Store { dest: String, op: &'static str, key: String, source: Box<object_store::Error> },
    #[error("destination {dest:?}: {detail}")]
    Config { dest: String, detail: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("destination {dest:?} is immutable (write-once): pgdr never deletes or overwrites there; {key} was kept")]
    Immutable { dest: String, key: String },
    #[error("destination {dest:?}: {key} is {size} bytes, more than the {limit} expected there: not read")]
    TooLarge { dest: String, key: String, size: u64, limit: u64 },
}

impl DestError {
    /// Whether the object was simply not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, DestError::Store { source, .. } if matches!(**source, object_store::Error::NotFound { .. }))
    }
}

/// Counters of one destination's transfers.
#[derive(Debug, Default)]
pub struct DestStats {
    pub in_flight: AtomicUsize,
    /// Highest number of transfers seen at once (tests check it against the limit).
    pub max_in_flight: AtomicUsize,
    pub bytes_written: AtomicU64,
    pub bytes_read: AtomicU64,
    pub puts: AtomicU64,
    pub gets: AtomicU64,
}

/// Result of a create-if-absent write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    AlreadyThere,
}

/// An object listed at a destination.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Key relative to the destination's prefix.
    pub key: String,
    pub size: u64,
    pub modified: chrono::DateTime<chrono::Utc>,
}

/// One open destination.
#[derive(Clone)]
pub struct Dest {
    pub name: String,
    pub url: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// The folder of a file:// destination.
    local_root: Option<std::path::PathBuf>,
    pub keys: Keyring,
    pub immutable: bool,
    pub concurrency: usize,
    /// Where the newest backup seen per cluster is remembered (rollback
    /// detection, see [`crate::base::catalog`]); `None`: not remembered.
    pub seen_dir: Option<std::path::PathBuf>,
    limit: Arc<Semaphore>,
    pub stats: Arc<DestStats>,
}

impl std::fmt::Debug for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dest({} {})", self.name, self.url)
    }
}

struct Permit<'a> {
    _p: Option<tokio::sync::SemaphorePermit<'a>>,
    stats: &'a DestStats,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Dest {
    /// Opens a configured destination: builds the store client and resolves
    /// the keys (a missing or malformed key is an error here, before any work).
    pub fn open(d: &pgdr_config::Destination) -> Result<Dest, DestError> {
        let keys = Keyring::from_config(d)?;
        let cfg = |detail: String| DestError::Config { dest: d.name.clone(), detail };
        let local_root = d.url.strip_prefix("file://").map(std::path::PathBuf::from);
        let (store, prefix): (Arc<dyn ObjectStore>, String) = if let Some(path) = d.url.strip_prefix("file://") {
            std::fs::create_dir_all(path).map_err(|e| cfg(format!("cannot create folder {path}: {e}")))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(path)
                .map_err(|e| cfg(format!("cannot open folder {path}: {e}")))?;
            (Arc::new(fs), String::new())
        } else if let Some(rest) = d.url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(cfg(format!("expected s3://BUCKET[/PREFIX], got {:?}", d.url)));
            }
            let mut b = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region(d.region.clone().unwrap_or_else(|| "us-east-1".to_owned()))
                .with_allow_http(d.allow_http)
                .with_client_options(client_options(d.allow_http))
                .with_retry(retry_config());
            if let Some(e) = &d.endpoint {
                b = b.with_endpoint(e);
            }
            if d.immutable {
                // Object Lock buckets require an integrity checksum on every
                // write, and the header naming its algorithm.
                let mut h = reqwest::header::HeaderMap::new();
                h.insert("x-amz-sdk-checksum-algorithm", reqwest::header::HeaderValue::from_static("SHA256"));
                b = b
                    .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
                    .with_client_options(client_options(d.allow_http).with_default_headers(h));
            }
            if let Some(s) = &d.access_key_id {
                b = b.with_access_key_id(s.resolve().map_err(|e| cfg(format!("access_key_id: {e}")))?);
            }
            if let Some(s) = &d.secret_access_key {
                b = b.with_secret_access_key(s.resolve().map_err(|e| cfg(format!("secret_access_key: {e}")))?);
            }
            let s3 = b.build().map_err(|e| cfg(format!("cannot configure S3 client: {e}")))?;
            (Arc::new(s3), prefix.trim_matches('/').to_owned())
        } else if let Some(rest) = d.url.strip_prefix("gs://") {
            // Credentials: `secret_access_key` holds a service account key (JSON);
            // without it, the usual Google environment variables apply.
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_client_options(client_options(d.allow_http))
                .with_retry(retry_config());
            if let Some(s) = &d.secret_access_key {
                b = b.with_service_account_key(s.resolve().map_err(|e| cfg(format!("secret_access_key: {e}")))?);
            }
            let gcs = b.build().map_err(|e| cfg(format!("cannot configure Google Cloud Storage client: {e}")))?;
            (Arc::new(gcs), prefix.trim_matches('/').to_owned())
        } else if let Some(rest) = d.url.strip_prefix("az://").or_else(|| d.url.strip_prefix("azure://")) {
            // Credentials: `access_key_id` is the storage account, `secret_access_key` its key.
            let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(container)
                .with_allow_http(d.allow_http)
                .with_client_options(client_options(d.allow_http))
                .with_retry(retry_config());
            if let Some(e) = &d.endpoint {
                b = b.with_endpoint(e.clone());
            }
            if let Some(s) = &d.access_key_id {
                b = b.with_account(s.resolve().map_err(|e| cfg(format!("access_key_id: {e}")))?);
            }
            if let Some(s) = &d.secret_access_key {
                b = b.with_access_key(s.resolve().map_err(|e| cfg(format!("secret_access_key: {e}")))?);
            }
            let az = b.build().map_err(|e| cfg(format!("cannot configure Azure Blob Storage client: {e}")))?;
            (Arc::new(az), prefix.trim_matches('/').to_owned())
        } else {
            return Err(cfg(format!("{:?}: expected a file://, s3://, gs:// or az:// URL", d.url)));
        };
        let concurrency = d.concurrency.max(1) as usize;
        Ok(Dest {
            name: d.name.clone(),
            url: d.url.clone(),
            store,
            prefix,
            local_root,
            keys,
            immutable: d.immutable,
            concurrency,
            seen_dir: None,
            limit: Arc::new(Semaphore::new(concurrency)),
            stats: Arc::new(DestStats::default()),
        })
    }

    /// Opens the destination named `name` in `config`.
    pub fn open_named(config: &pgdr_config::Config, name: &str) -> Result<Dest, DestError> {
        let d = config.destination(name).ok_or_else(|| DestError::Config {
            dest: name.to_owned(),
            detail: format!(
                "not declared under [[destinations]] in {} (declared: {})",
                config.file.display(),
                config.destinations.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        })?;
        let mut dest = Dest::open(d)?;
        dest.seen_dir = Some(config.controller.state_dir.join("backup-seen"));
        Ok(dest)
    }

    fn path(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() { ObjPath::from(key) } else { ObjPath::from(format!("{}/{key}", self.prefix)) }
    }

    fn err(&self, op: &'static str, key: &str) -> impl FnOnce(object_store::Error) -> DestError + '_ {
        let key = key.to_owned();
        move |source| DestError::Store { dest: self.name.clone(), op, key, source: Box::new(source) }
    }

    async fn permit(&self) -> Permit<'_> {
        // The semaphore is never closed, so `acquire` cannot fail.
        let p = self.limit.acquire().await.ok();
        let now = self.stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Permit { _p: p, stats: &self.stats }
    }

    /// Writes `data` at `key` unless an object is already there.
    pub async fn put_new(&self, key: &str, data: Bytes) -> Result<Put, DestError> {
        let _p = self.permit().await;
        let len = data.len() as u64;
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&self.path(key), PutPayload::from_bytes(data), opts).await {
            Ok(_) => {
                self.stats.bytes_written.fetch_add(len, Ordering::Relaxed);
                self.stats.puts.fetch_add(1, Ordering::Relaxed);
                Ok(Put::Created)
            }
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                Ok(Put::AlreadyThere)
            }
            Err(e) => Err(self.err("write", key)(e)),
        }
    }

    /// Reads a whole object (at most [`crate::format::MAX_STORED`] bytes).
    pub async fn get(&self, key: &str) -> Result<Bytes, DestError> {
        self.get_max(key, crate::format::MAX_STORED).await
    }

    /// Reads a whole object, refusing (before reading its body) one larger
    /// than `limit`: a stored size never makes pgdr allocate more than it expects.
    pub async fn get_max(&self, key: &str, limit: u64) -> Result<Bytes, DestError> {
        let _p = self.permit().await;
        let res = self.store.get(&self.path(key)).await.map_err(self.err("read", key))?;
        if res.meta.size > limit {
            return Err(DestError::TooLarge {
                dest: self.name.clone(),
                key: key.to_owned(),
                size: res.meta.size,
                limit,
            });
        }
        let bytes = res.bytes().await.map_err(self.err("read", key))?;
        self.stats.bytes_read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        Ok(bytes)
    }

    /// Reads an object, `None` when it is absent.
    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>, DestError> {
        match self.get(key).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`Dest::get_max`], `None` when absent.
    pub async fn get_opt_max(&self, key: &str, limit: u64) -> Result<Option<Bytes>, DestError> {
        match self.get_max(key, limit).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Size of an object, `None` when absent.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, DestError> {
        let _p = self.permit().await;
        match self.store.head(&self.path(key)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("inspect", key)(e)),
        }
    }

    /// Lists objects under `prefix` (relative keys).
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, DestError> {
        let _p = self.permit().await;
        let p = self.path(prefix.trim_end_matches('/'));
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let metas: Vec<object_store::ObjectMeta> =
            self.store.list(Some(&p)).try_collect().await.map_err(self.err("list", prefix))?;
        let mut out: Vec<Listed> = metas
            .into_iter()
            .map(|m| {
                let full = m.location.to_string();
                let key = full.strip_prefix(&strip).unwrap_or(&full).to_owned();
                Listed { key, size: m.size, modified: m.last_modified }
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// On a file:// destination, creates the cluster's WAL folder and hands
    /// it to the user PostgreSQL runs as: `archive_command` runs as that
    /// user, while backups may run as root and create the cluster's folder.
    pub fn prepare_wal_dir(&self, cluster: &str, run_as: &pgdr_node::RunAs) -> Result<(), DestError> {
        let Some(root) = &self.local_root else { return Ok(()) };
        let cfg = |detail: String| DestError::Config { dest: self.name.clone(), detail };
        let cluster_dir = root.join(cluster);
        let wal = root.join(crate::manifest::wal_prefix(cluster).trim_end_matches('/'));
        std::fs::create_dir_all(&wal).map_err(|e| cfg(format!("cannot create {}: {e}", wal.display())))?;
        for d in [&cluster_dir, &wal] {
            run_as.give(d).map_err(|e| cfg(e.to_string()))?;
        }
        Ok(())
    }

    /// Deletes an object; refused on an immutable destination.
    pub async fn delete(&self, key: &str) -> Result<(), DestError> {
        if self.immutable {
            return Err(DestError::Immutable { dest: self.name.clone(), key: key.to_owned() });
        }
        let _p = self.permit().await;
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", key)(e)),
        }
    }
}

/// HTTP client settings of cloud destinations: a dead endpoint is noticed in
/// seconds (wal-push must fail fast so PostgreSQL retries).
fn client_options(allow_http: bool) -> object_store::ClientOptions {
    object_store::ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(120))
        .with_allow_http(allow_http)
}

/// A few retries within 30 s; longer outages are the caller's to retry.
fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig::default(),
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(url: &str) -> pgdr_config::Destination {
        pgdr_config::Destination {
            name: "d".into(),
            url: url.into(),
            region: None,
            endpoint: None,
            allow_http: false,
            access_key_id: Some(pgdr_config::Secret::Inline("account".into())),
            secret_access_key: Some(pgdr_config::Secret::Inline("a2V5".into())),
            key: Some(pgdr_config::Secret::Inline("11".repeat(32))),
            key_id: "k1".into(),
            old_keys: vec![],
            immutable: false,
            concurrency: 2,
        }
    }

    #[test]
    fn opens_every_scheme_and_names_bad_ones() {
        assert!(Dest::open(&dest("s3://bucket/prefix")).is_ok());
        assert!(Dest::open(&dest("az://container/prefix")).is_ok());
        let err = Dest::open(&dest("ftp://x")).expect_err("bad scheme").to_string();
        assert!(err.contains("\"d\"") && err.contains("ftp://x"), "{err}");
        let mut no_key = dest("s3://bucket");
        no_key.key = None;
        assert!(Dest::open(&no_key).expect_err("no key").to_string().contains("no encryption key"));
    }
}
