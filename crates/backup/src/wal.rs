//! WAL archiving: `wal-push` (PostgreSQL's `archive_command`) and
//! `wal-fetch` (its `restore_command`).
//!
//! A push is create-if-absent. When the object is already there the stored
//! copy is decrypted and compared: the same contents is a success (a retried
//! call), different contents is a loud error. Any destination trouble is an
//! error, so PostgreSQL keeps the segment and retries.
//!
//! Look-ahead: PostgreSQL archives one segment per call. A push also sends
//! the next few segments marked `.ready` in `archive_status`, in parallel, and
//! remembers each one in `pg_wal/pgdr-pushed/<name>` (its plaintext blake3);
//! the later call for that segment finds the mark, checks the hash and
//! returns at once. `pg_wal` subfolders are not copied by base backups.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;

use crate::dest::{Dest, Put};
use crate::manifest;
use crate::{BackupError, Result, format};

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// The requested file: uploaded now (`true`) or found already pushed.
    pub uploaded: bool,
    /// Segments pushed ahead of PostgreSQL's calls.
    pub ahead: Vec<String>,
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| BackupError::Config(format!("not a WAL file path: {}", path.display())))
}

fn mark_dir(wal_path: &Path) -> PathBuf {
    wal_path.parent().unwrap_or(Path::new(".")).join("pgdr-pushed")
}

/// Pushes one file's bytes; `Ok(true)` when uploaded, `Ok(false)` when the
/// same contents was already there.
async fn push_bytes(dest: &Dest, cluster: &str, name: &str, plain: Vec<u8>, level: i32) -> Result<bool> {
    let key = manifest::wal_key(cluster, name);
    let keys = dest.keys.clone();
    let binding = key.clone();
    let (sealed, hash) = tokio::task::spawn_blocking(move || {
        let hash = blake3::hash(&plain);
        format::seal(&plain, level, &keys, &binding).map(|s| (s, hash))
    })
    .await
    .map_err(|e| BackupError::Other(format!("compression task failed: {e}")))?
    .map_err(|source| BackupError::Format { dest: dest.name.clone(), key: key.clone(), source })?;
    match dest.put_new(&key, Bytes::from(sealed)).await? {
        Put::Created => Ok(true),
        Put::AlreadyThere => {
            let existing = dest.get(&key).await?;
            let keys = dest.keys.clone();
            let binding = key.clone();
            let plain = tokio::task::spawn_blocking(move || format::open(&existing, &keys, &binding, None))
                .await
                .map_err(|e| BackupError::Other(format!("decompression task failed: {e}")))?
                .map_err(|source| BackupError::Format { dest: dest.name.clone(), key: key.clone(), source })?;
            if blake3::hash(&plain) == hash {
                Ok(false)
            } else {
                Err(BackupError::WalConflict { dest: dest.name.clone(), name: name.to_owned() })
            }
        }
    }
}

/// Archives `wal_path` (PostgreSQL's `%p`, relative to the data directory,
/// which is the working directory of archive_command) and up to `lookahead`
/// following ready segments.
pub async fn push(dest: &Dest, cluster: &str, wal_path: &Path, level: i32, lookahead: usize) -> Result<PushReport> {
    let name = file_name(wal_path)?;
    let plain =
        tokio::fs::read(wal_path).await.map_err(BackupError::io(format!("cannot read {}", wal_path.display())))?;
    let marks = mark_dir(wal_path);
    let mark = marks.join(&name);
    if let Ok(h) = tokio::fs::read_to_string(&mark).await {
        let _ = tokio::fs::remove_file(&mark).await;
        if h.trim() == blake3::hash(&plain).to_hex().as_str() {
            return Ok(PushReport { uploaded: false, ahead: Vec::new() });
        }
    }
    let ahead_names =
        if manifest::is_segment(&name) && lookahead > 0 { ready_after(wal_path, &name, lookahead) } else { Vec::new() };
    let main = push_bytes(dest, cluster, &name, plain, level);
    let ahead = futures::stream::iter(ahead_names)
        .map(|n| {
            let path = wal_path.with_file_name(&n);
            let marks = marks.clone();
            async move {
                let plain = tokio::fs::read(&path).await.ok()?;
                let hash = blake3::hash(&plain).to_hex().to_string();
                match push_bytes(dest, cluster, &n, plain, level).await {
                    Ok(_) => {
                        let _ = tokio::fs::create_dir_all(&marks).await;
                        tokio::fs::write(marks.join(&n), hash).await.ok()?;
                        Some(n)
                    }
                    Err(e) => {
                        tracing::debug!(segment = %n, error = %e, "look-ahead push failed; PostgreSQL will ask again");
                        None
                    }
                }
            }
        })
        .buffer_unordered(lookahead.max(1))
        .collect::<Vec<Option<String>>>();
    let (main, ahead) = futures::join!(main, ahead);
    let uploaded = main?;
    let mut ahead: Vec<String> = ahead.into_iter().flatten().collect();
    ahead.sort();
    Ok(PushReport { uploaded, ahead })
}

/// Segments with a `.ready` mark that come after `name`, oldest first.
fn ready_after(wal_path: &Path, name: &str, n: usize) -> Vec<String> {
    let status = wal_path.parent().unwrap_or(Path::new(".")).join("archive_status");
    let mut out: Vec<String> = std::fs::read_dir(status)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let f = e.file_name().to_str()?.to_owned();
            let seg = f.strip_suffix(".ready")?;
            (manifest::is_segment(seg) && seg > name).then(|| seg.to_owned())
        })
        .collect();
    out.sort();
    out.truncate(n);
    out
}

/// Fetches `name` into `target` (PostgreSQL's `%f` and `%p`). A missing
/// object is [`BackupError::WalMissing`] (exit 1, as PostgreSQL expects).
pub async fn fetch(dest: &Dest, cluster: &str, name: &str, target: &Path) -> Result<()> {
    let key = manifest::wal_key(cluster, name);
    let Some(data) = dest.get_opt(&key).await? else {
        return Err(BackupError::WalMissing { dest: dest.name.clone(), name: name.to_owned() });
    };
    let keys = dest.keys.clone();
    let binding = key.clone();
    let plain = tokio::task::spawn_blocking(move || format::open(&data, &keys, &binding, None))
        .await
        .map_err(|e| BackupError::Other(format!("decompression task failed: {e}")))?
        .map_err(|source| BackupError::Format { dest: dest.name.clone(), key, source })?;
    let tmp = target.with_extension("pgdr-tmp");
    tokio::fs::write(&tmp, &plain).await.map_err(BackupError::io(format!("cannot write {}", tmp.display())))?;
    tokio::fs::rename(&tmp, target).await.map_err(BackupError::io(format!("cannot write {}", target.display())))?;
    Ok(())
}

/// The archived WAL names of a cluster at a destination, sorted.
pub async fn list(dest: &Dest, cluster: &str) -> Result<Vec<(String, u64)>> {
    let prefix = manifest::wal_prefix(cluster);
    Ok(dest
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|l| l.key.strip_prefix(&prefix).map(|n| (n.to_owned(), l.size)))
        .collect())
}

/// `wal-push` as a command: archives `path` for `cluster` to `to` (else the
/// tier's destination) at the tier's compression level, looking ahead by
/// the destination's concurrency.
pub async fn push_cmd(
    config: &pgdr_config::Config,
    cluster: &str,
    to: Option<&str>,
    path: &Path,
) -> Result<PushReport> {
    let dest = crate::dest_for(config, cluster, to)?;
    let level = crate::policy(config, cluster).map(|p| p.compression_level).unwrap_or(3);
    let lookahead = dest.concurrency.saturating_sub(1).clamp(1, 8);
    push(&dest, cluster, path, level, lookahead).await
}

/// `wal-fetch` as a command.
pub async fn fetch_cmd(
    config: &pgdr_config::Config,
    cluster: &str,
    from: Option<&str>,
    name: &str,
    target: &Path,
) -> Result<()> {
    let dest = crate::dest_for(config, cluster, from)?;
    fetch(&dest, cluster, name, target).await
}
