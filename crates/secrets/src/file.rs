//! `kind = "file"`: one JSON file per cluster and role in a folder
//! (`<cluster>.<role>.json`, mode 0600), written atomically (a private
//! temporary file, fsync, rename, fsync of the folder); the previous
//! versions are kept beside it as `<cluster>.<role>.v<version>.json`, the
//! newest `keep` of them.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::store::{SecretStore, StoreError};
use crate::{SecretKey, SecretValue};

#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    keep: u32,
}

impl FileStore {
    pub fn new(dir: PathBuf, keep: u32) -> FileStore {
        FileStore { dir, keep }
    }

    /// The file holding the current secret of `key`.
    pub fn path(&self, key: &SecretKey) -> PathBuf {
        self.dir.join(format!("{}.{}.json", key.cluster, key.role))
    }

    fn err(&self, what: &str, e: std::io::Error) -> StoreError {
        let store = self.describe();
        let detail = format!("{what}: {e}");
        match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidInput => {
                StoreError::Refused { store, detail }
            }
            _ => StoreError::Unreachable { store, detail },
        }
    }

    fn read(&self, key: &SecretKey) -> Result<Option<SecretValue>, StoreError> {
        let path = self.path(key);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.dir.is_dir() => return Ok(None),
            Err(e) => return Err(self.err(&format!("cannot read {}", path.display()), e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| StoreError::Corrupt {
            store: self.describe(),
            key: key.to_string(),
            detail: e.to_string(),
        })
    }

    fn write(&self, key: &SecretKey, value: &SecretValue) -> Result<(), StoreError> {
        if !self.dir.is_dir() {
            return Err(StoreError::Unreachable {
                store: self.describe(),
                detail: format!("folder {} does not exist", self.dir.display()),
            });
        }
        let path = self.path(key);
        let body = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Corrupt {
            store: self.describe(),
            key: key.to_string(),
            detail: e.to_string(),
        })?;
        // The current file becomes a kept version (a hard link, so the
        // current name is never missing).
        if let Ok(Some(old)) = self.read(key) {
            let kept = self.dir.join(format!("{}.{}.v{}.json", key.cluster, key.role, old.version));
            let _ = std::fs::remove_file(&kept);
            std::fs::hard_link(&path, &kept).map_err(|e| self.err(&format!("cannot keep {}", kept.display()), e))?;
        }
        let tmp = self.dir.join(format!(".{}.{}.{}.tmp", key.cluster, key.role, uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(&body)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.err(&format!("cannot write {}", path.display()), e));
        }
        self.prune(key);
        Ok(())
    }

    /// Drops kept versions past the newest `keep`.
    fn prune(&self, key: &SecretKey) {
        let prefix = format!("{}.{}.v", key.cluster, key.role);
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let mut versions: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let v = name.strip_prefix(&prefix)?.strip_suffix(".json")?.parse().ok()?;
                Some((v, e.path()))
            })
            .collect();
        versions.sort();
        let excess = versions.len().saturating_sub(self.keep as usize);
        for (_, p) in versions.into_iter().take(excess) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// The versions kept beside the current one, oldest first.
    pub fn kept_versions(&self, key: &SecretKey) -> Vec<u64> {
        let prefix = format!("{}.{}.v", key.cluster, key.role);
        let mut v: Vec<u64> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix(&prefix)?.strip_suffix(".json")?.parse().ok())
            .collect();
        v.sort();
        v
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[async_trait]
impl SecretStore for FileStore {
    fn describe(&self) -> String {
        format!("file store {}", self.dir.display())
    }

    async fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>, StoreError> {
        let (me, key) = (self.clone(), key.clone());
        tokio::task::spawn_blocking(move || me.read(&key))
            .await
            .map_err(|e| StoreError::Unreachable { store: self.describe(), detail: e.to_string() })?
    }

    async fn put(&self, key: &SecretKey, value: &SecretValue) -> Result<(), StoreError> {
        let (me, key, value) = (self.clone(), key.clone(), value.clone());
        tokio::task::spawn_blocking(move || me.write(&key, &value))
            .await
            .map_err(|e| StoreError::Unreachable { store: self.describe(), detail: e.to_string() })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(version: u64) -> SecretValue {
        SecretValue {
            username: "app".into(),
            password: format!("pw-{version}"),
            host: "127.0.0.1".into(),
            port: 6432,
            dbname: "postgres".into(),
            engine: "postgres".into(),
            version,
            epoch: 1,
            rotated_at: String::new(),
        }
    }

    #[tokio::test]
    async fn put_get_keeps_versions_private_and_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path().to_owned(), 2);
        let key = SecretKey::new("main", "app");
        assert_eq!(store.get(&key).await.expect("get"), None);
        for v in 1..=4 {
            store.put(&key, &value(v)).await.expect("put");
        }
        assert_eq!(store.get(&key).await.expect("get"), Some(value(4)));
        assert_eq!(store.kept_versions(&key), vec![2, 3]);
        let mode = std::fs::metadata(store.path(&key)).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn a_missing_folder_is_unreachable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path().join("gone"), 2);
        let key = SecretKey::new("main", "app");
        let e = store.put(&key, &value(1)).await.expect_err("no folder");
        assert!(e.is_retryable(), "{e}");
        assert!(store.get(&key).await.expect_err("no folder").is_retryable());
    }
}
