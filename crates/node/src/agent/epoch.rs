//! The highest epoch this agent has seen, kept in a small file beside the
//! data directory (`<data>.epoch`) and replaced atomically (write a
//! temporary file, fsync, rename, fsync the folder), so a restarted agent
//! still refuses commands from a deposed controller.

use std::path::{Path, PathBuf};

use pgdr_model::Epoch;

#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    #[error(
        "epoch {given} is older than epoch {seen} this agent has already seen: the command comes from a deposed leader"
    )]
    Stale { seen: Epoch, given: Epoch },
    #[error("epoch file {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("epoch file {} holds {text:?}, not a number: fix or remove it", path.display())]
    Corrupt { path: PathBuf, text: String },
}

/// The durable highest-seen epoch.
#[derive(Debug)]
pub struct EpochStore {
    path: PathBuf,
    current: tokio::sync::Mutex<Epoch>,
    /// A copy for readers that must not wait behind a write.
    seen: std::sync::atomic::AtomicU64,
}

impl EpochStore {
    /// Reads the file; a missing file means epoch 0.
    pub fn open(path: PathBuf) -> Result<EpochStore, EpochError> {
        let epoch = match crate::files::read_limited(&path, 64) {
            Ok(text) => {
                let t = text.trim();
                Epoch(t.parse().map_err(|_| EpochError::Corrupt { path: path.clone(), text: t.to_owned() })?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Epoch::ZERO,
            Err(source) => return Err(EpochError::Io { path, source }),
        };
        Ok(EpochStore { path, current: tokio::sync::Mutex::new(epoch), seen: epoch.0.into() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The highest epoch seen.
    pub fn current(&self) -> Epoch {
        Epoch(self.seen.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Refuses an epoch older than the highest seen; records a newer one
    /// durably before returning.
    pub async fn check(&self, given: Epoch) -> Result<Epoch, EpochError> {
        let mut cur = self.current.lock().await;
        if given < *cur {
            return Err(EpochError::Stale { seen: *cur, given });
        }
        if given > *cur {
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || write_atomic(&path, given))
                .await
                .map_err(|e| EpochError::Io { path: self.path.clone(), source: std::io::Error::other(e) })??;
            *cur = given;
            self.seen.store(given.0, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(*cur)
    }
}

fn write_atomic(path: &Path, epoch: Epoch) -> Result<(), EpochError> {
    let io = |source| EpochError::Io { path: path.to_owned(), source };
    // A fresh O_EXCL|O_NOFOLLOW temporary file, renamed over the old one:
    // the folder may belong to the server's user, who must not be able to
    // point the write elsewhere with a link.
    crate::files::write_atomic(path, format!("{}\n", epoch.0).as_bytes(), 0o600, &crate::os::RunAs::default())
        .map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_older_and_persists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data.epoch");
        let store = EpochStore::open(path.clone()).expect("open");
        assert_eq!(store.current(), Epoch(0));
        assert_eq!(store.check(Epoch(3)).await.expect("newer"), Epoch(3));
        assert_eq!(store.check(Epoch(3)).await.expect("same"), Epoch(3));
        assert!(matches!(store.check(Epoch(2)).await, Err(EpochError::Stale { seen: Epoch(3), given: Epoch(2) })));
        let again = EpochStore::open(path.clone()).expect("reopen");
        assert_eq!(again.current(), Epoch(3));
        std::fs::write(&path, "garbage").expect("write");
        assert!(matches!(EpochStore::open(path), Err(EpochError::Corrupt { .. })));
    }
}
