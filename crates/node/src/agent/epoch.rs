//! What this agent keeps across restarts ([`PeerDurable`]): the highest
//! epoch it has seen and the support the controller withdrew, in a small
//! file beside the data directory (`<data>.epoch`) replaced atomically
//! (write a temporary file, fsync, rename, fsync the folder), so a
//! restarted agent still refuses commands from a deposed controller and
//! support to a deposed primary.
//!
//! The file's first line is the epoch (the format before withdrawals were
//! kept, still read as is); each further line is `withdrawn <node> <epoch>`.

use std::path::{Path, PathBuf};

use pgdr_decide::support::PeerDurable;
use pgdr_model::{Epoch, NodeName};

#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    #[error(
        "epoch {given} is older than epoch {seen} this agent has already seen: the command comes from a deposed leader"
    )]
    Stale { seen: Epoch, given: Epoch },
    #[error("epoch file {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("epoch file {} holds {text:?}, not an epoch and withdrawals: fix or remove it", path.display())]
    Corrupt { path: PathBuf, text: String },
}

/// The durable highest-seen epoch and withdrawals.
#[derive(Debug)]
pub struct EpochStore {
    path: PathBuf,
    current: tokio::sync::Mutex<PeerDurable>,
    /// A copy of the epoch for readers that must not wait behind a write.
    seen: std::sync::atomic::AtomicU64,
    /// A copy of the whole for the support rule (never behind the file:
    /// updated after each write).
    snapshot: std::sync::Mutex<PeerDurable>,
}

fn parse(path: &Path, text: &str) -> Result<PeerDurable, EpochError> {
    let corrupt = || EpochError::Corrupt { path: path.to_owned(), text: text.trim().to_owned() };
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let epoch = match lines.next() {
        Some(first) => Epoch(first.parse().map_err(|_| corrupt())?),
        None => Epoch::ZERO,
    };
    let mut d = PeerDurable { epoch, ..PeerDurable::default() };
    for line in lines {
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next().map(str::parse::<u64>), w.next()) {
            (Some("withdrawn"), Some(node), Some(Ok(e)), None) => {
                d.withdraw(&NodeName::new(node), Epoch(e));
            }
            _ => return Err(corrupt()),
        }
    }
    Ok(d)
}

fn render(d: &PeerDurable) -> String {
    let mut s = format!("{}\n", d.epoch.0);
    for (node, e) in &d.withdrawn {
        s.push_str(&format!("withdrawn {node} {}\n", e.0));
    }
    s
}

impl EpochStore {
    /// Reads the file; a missing file means epoch 0 and no withdrawals.
    pub fn open(path: PathBuf) -> Result<EpochStore, EpochError> {
        let durable = match crate::files::read_limited(&path, 1 << 20) {
            Ok(text) => parse(&path, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PeerDurable::default(),
            Err(source) => return Err(EpochError::Io { path, source }),
        };
        Ok(EpochStore {
            path,
            seen: durable.epoch.0.into(),
            snapshot: std::sync::Mutex::new(durable.clone()),
            current: tokio::sync::Mutex::new(durable),
        })
    }

    /// What is on disk now (the support rule reads this).
    pub fn durable(&self) -> PeerDurable {
        self.snapshot.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Records the controller's withdrawal of support for `primary` at
    /// `epoch` and older, durably, before returning.
    pub async fn withdraw(&self, primary: &NodeName, epoch: Epoch) -> Result<(), EpochError> {
        let mut cur = self.current.lock().await;
        let mut next = cur.clone();
        if next.withdraw(primary, epoch) {
            self.write(&next).await?;
            *cur = next;
        }
        Ok(())
    }

    async fn write(&self, d: &PeerDurable) -> Result<(), EpochError> {
        let (path, text) = (self.path.clone(), render(d));
        tokio::task::spawn_blocking(move || write_atomic(&path, &text))
            .await
            .map_err(|e| EpochError::Io { path: self.path.clone(), source: std::io::Error::other(e) })??;
        if let Ok(mut s) = self.snapshot.lock() {
            *s = d.clone();
        }
        self.seen.store(d.epoch.0, std::sync::atomic::Ordering::SeqCst);
        Ok(())
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
        if given < cur.epoch {
            return Err(EpochError::Stale { seen: cur.epoch, given });
        }
        if given > cur.epoch {
            let mut next = cur.clone();
            next.see_epoch(given);
            self.write(&next).await?;
            *cur = next;
        }
        Ok(cur.epoch)
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<(), EpochError> {
    let io = |source| EpochError::Io { path: path.to_owned(), source };
    // A fresh O_EXCL|O_NOFOLLOW temporary file, renamed over the old one:
    // the folder may belong to the server's user, who must not be able to
    // point the write elsewhere with a link.
    crate::files::write_atomic(path, text.as_bytes(), 0o600, &crate::os::RunAs::default()).map_err(io)?;
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
        // Withdrawals survive a restart too.
        let a = NodeName::new("east-1");
        again.withdraw(&a, Epoch(3)).await.expect("withdraw");
        let third = EpochStore::open(path.clone()).expect("reopen");
        assert_eq!(third.durable().withdrawn.get(&a), Some(&Epoch(3)));
        assert_eq!(third.current(), Epoch(3));
        std::fs::write(&path, "4\nwithdrawn a 3\nwithdrawn b\n").expect("write");
        assert!(matches!(EpochStore::open(path.clone()), Err(EpochError::Corrupt { .. })));
        std::fs::write(&path, "garbage").expect("write");
        assert!(matches!(EpochStore::open(path), Err(EpochError::Corrupt { .. })));
    }
}
