//! A region's secret store, behind one trait.
//!
//! Callers only `get` and `put` a [`SecretValue`] under a [`SecretKey`];
//! how a kind names, versions and authenticates is its own business. A
//! HashiCorp Vault KV v2 store would map a key to
//! `<mount>/data/<prefix><cluster>/<role>` and its versions to KV's own,
//! with no change to the callers.

use async_trait::async_trait;
use pgdr_config::{Config, SecretStoreConfig, SecretStoreKind};

use crate::{SecretKey, SecretValue};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer, or answered with a server error: worth a
    /// retry, and the rotation reports the region as not written.
    #[error("{store}: unreachable: {detail}")]
    Unreachable { store: String, detail: String },
    /// The store refused (credentials, permissions, a malformed request).
    #[error("{store}: refused: {detail}")]
    Refused { store: String, detail: String },
    /// What the store holds is not a secret pgdr wrote.
    #[error("{store}: {key} does not hold a pgdr secret: {detail}")]
    Corrupt { store: String, key: String, detail: String },
    /// The store's config cannot be used (an unreadable credential).
    #[error("{store}: {detail}")]
    Config { store: String, detail: String },
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unreachable { .. })
    }

    /// A stable label for JSON output and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Unreachable { .. } => "unreachable",
            StoreError::Refused { .. } => "refused",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Config { .. } => "config",
        }
    }
}

/// One region's secret store.
#[async_trait]
pub trait SecretStore: Send + Sync + std::fmt::Debug {
    /// Names the store in messages: kind and where (never a credential).
    fn describe(&self) -> String;

    /// The current secret, `None` when the store has none for `key`.
    async fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>, StoreError>;

    /// Makes `value` the current secret; the previous one stays readable in
    /// the store's history where the kind keeps one.
    async fn put(&self, key: &SecretKey, value: &SecretValue) -> Result<(), StoreError>;
}

/// Opens the store a config names. Credentials are read now, so a missing
/// one is reported before anything changes.
pub fn open_store(cfg: &Config, store: &SecretStoreConfig) -> Result<Box<dyn SecretStore>, StoreError> {
    match &store.kind {
        SecretStoreKind::File { dir, keep } => Ok(Box::new(crate::file::FileStore::new(dir.clone(), *keep))),
        SecretStoreKind::AwsSecretsManager { .. } => Ok(Box::new(crate::aws::SecretsManager::from_config(cfg, store)?)),
    }
}
