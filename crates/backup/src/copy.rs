//! Copies of backups and WAL to further destinations, and `pull` from a
//! source that may only be read.
//!
//! Each destination has its own key, so an object is decrypted with the
//! source's keys and sealed again with the target's (the compressed payload
//! is reused, not recompressed). Every object read from the source is checked
//! against the manifest's stored checksum first; every object written is read
//! back from the target and checked against its new stored checksum. The
//! target's manifest is written last, so a backup there is complete or absent.
//!
//! Resume: a journal file per (cluster, backup, target) in a local folder
//! records each object done with its stored checksum at the target; an
//! interrupted copy skips them. An object found at the target that the
//! journal does not know (written just before an interruption) is accepted
//! when it decrypts with the target's key to the expected plaintext.
//!
//! Retries: each object is tried up to [`RETRIES`] times with backoff on
//! network and server errors. (The durable workflow engine is not ready yet;
//! when it is, a copy becomes a step there and keeps this journal.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use crate::dest::{Dest, Put};
use crate::manifest::{self, Object};
use crate::{BackupError, Progress, Result, format};

pub const RETRIES: u32 = 4;

/// What a copy did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CopyReport {
    pub backup: String,
    pub target: String,
    /// Objects transferred by this run.
    pub copied: usize,
    /// Objects found done by an earlier, interrupted run.
    pub resumed: usize,
    pub wal_copied: usize,
    pub already_complete: bool,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Journal {
    /// Object name → stored blake3 at the target.
    done: BTreeMap<String, String>,
}

fn journal_path(dir: &Path, cluster: &str, id: &str, target: &str) -> PathBuf {
    dir.join(format!("copy-{cluster}-{id}-{target}.json"))
}

fn load_journal(path: &Path) -> Journal {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn save_journal(path: &Path, j: &Journal) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(j).unwrap_or_default())
        .map_err(BackupError::io(format!("cannot write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(BackupError::io(format!("cannot write {}", path.display())))
}

/// Runs `op` with retries and exponential backoff on retryable errors.
pub async fn with_retries<T, F, Fut>(what: &str, cancel: &CancellationToken, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        if cancel.is_cancelled() {
            return Err(BackupError::Cancelled);
        }
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < RETRIES => {
                tracing::warn!(what, attempt, error = %e, "retrying");
                crate::base::sleep_or_cancel(delay, cancel).await?;
                delay = (delay * 2).min(Duration::from_secs(10));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Copies one stored object from `src` to `dst` under `key`, checking it
/// against its manifest entry when given (size and stored checksum, so a
/// substituted or corrupt object is not spread); returns the target's stored
/// size and checksum. The object keeps its binding (the key path).
async fn copy_object(src: &Dest, dst: &Dest, key: &str, expected: Option<&Object>) -> Result<(u64, String)> {
    let data = match expected {
        Some(o) => src.get_max(key, o.stored_size.min(format::MAX_STORED)).await,
        None => src.get(key).await,
    };
    let data = match data {
        Err(e @ crate::DestError::TooLarge { .. }) => {
            return Err(BackupError::Object {
                dest: src.name.clone(),
                key: key.to_owned(),
                trouble: manifest::Trouble::Corrupt,
                detail: e.to_string(),
            });
        }
        other => other?,
    };
    let src_keys = src.keys.clone();
    let dst_keys = dst.keys.clone();
    let exp = expected.cloned();
    let (sname, k) = (src.name.clone(), key.to_owned());
    let sealed = tokio::task::spawn_blocking(move || {
        if let Some(o) = &exp
            && let Err((trouble, detail)) = crate::base::check_object(&k, o, &data, &src_keys, false)
        {
            return Err(BackupError::Object { dest: sname, key: k, trouble, detail });
        }
        format::reseal(&data, &src_keys, &dst_keys, &k).map_err(|source| BackupError::Format {
            dest: sname,
            key: k.clone(),
            source,
        })
    })
    .await
    .map_err(|e| BackupError::Other(format!("copy task failed: {e}")))??;
    let hash = blake3::hash(&sealed).to_hex().to_string();
    let size = sealed.len() as u64;
    match dst.put_new(key, Bytes::from(sealed)).await? {
        Put::Created => {
            // Read back and check what the target stored.
            let back = dst.get(key).await?;
            let actual = blake3::hash(&back).to_hex().to_string();
            if actual != hash {
                return Err(BackupError::Object {
                    dest: dst.name.clone(),
                    key: key.to_owned(),
                    trouble: manifest::Trouble::Corrupt,
                    detail: format!("read back with checksum {actual}, written with {hash}"),
                });
            }
            Ok((size, hash))
        }
        Put::AlreadyThere => {
            // Written by an earlier run: accept it if it opens with the
            // target's key, for this path, to the same plaintext as the source.
            let there = dst.get(key).await?;
            let src_data = src.get(key).await?;
            let (src_keys, dst_keys) = (src.keys.clone(), dst.keys.clone());
            let (dname, k) = (dst.name.clone(), key.to_owned());
            tokio::task::spawn_blocking(move || {
                let a = format::decrypt(&there, &dst_keys, &k).map_err(|source| BackupError::Format { dest: dname.clone(), key: k.clone(), source })?;
                let b = format::decrypt(&src_data, &src_keys, &k).map_err(|source| BackupError::Format { dest: dname.clone(), key: k.clone(), source })?;
                if a.1 != b.1 {
                    return Err(BackupError::Other(format!(
                        "destination {dname:?}: {k} already exists with different contents and pgdr never overwrites; remove it by hand if the destination allows"
                    )));
                }
                Ok((there.len() as u64, blake3::hash(&there).to_hex().to_string()))
            })
            .await
            .map_err(|e| BackupError::Other(format!("copy task failed: {e}")))?
        }
    }
}

/// Copies backup `id` of `cluster` from `src` to `dst`, then the WAL `dst`
/// lacks. `journal_dir` holds resume journals.
pub async fn copy_backup(
    src: &Dest,
    dst: &Dest,
    cluster: &str,
    id: &str,
    journal_dir: &Path,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<CopyReport> {
    let mut report = CopyReport { backup: id.to_owned(), target: dst.name.clone(), ..Default::default() };
    let m = crate::base::find_backup(src, cluster, Some(id)).await?;
    let mkey = manifest::manifest_key(cluster, id);
    if dst.size(&mkey).await?.is_some() {
        report.already_complete = true;
        report.wal_copied = copy_wal(src, dst, cluster, cancel).await?;
        return Ok(report);
    }
    std::fs::create_dir_all(journal_dir)
        .map_err(BackupError::io(format!("cannot create {}", journal_dir.display())))?;
    let jpath = journal_path(journal_dir, cluster, id, &dst.name);
    let journal = Mutex::new(load_journal(&jpath));
    progress.total.store(m.plain_bytes, std::sync::atomic::Ordering::Relaxed);
    let todo: Vec<Object> = {
        let j = journal.lock().map_err(|_| BackupError::Other("journal lock poisoned".into()))?;
        report.resumed = m.objects.iter().filter(|o| j.done.contains_key(&o.name)).count();
        m.objects.iter().filter(|o| !j.done.contains_key(&o.name)).cloned().collect()
    };
    let copied: Vec<()> = futures::stream::iter(todo)
        .map(|o| {
            let journal = &journal;
            let jpath = &jpath;
            async move {
                let key = manifest::part_key(cluster, id, &o.name);
                let (_, hash) = with_retries(&key, cancel, || copy_object(src, dst, &key, Some(&o))).await?;
                let mut j = journal.lock().map_err(|_| BackupError::Other("journal lock poisoned".into()))?;
                j.done.insert(o.name.clone(), hash);
                save_journal(jpath, &j)?;
                progress.add(o.plain_size, o.stored_size);
                Ok::<_, BackupError>(())
            }
        })
        .buffer_unordered(dst.concurrency)
        .try_collect()
        .await?;
    report.copied = copied.len();
    // The target's manifest: same data, the target's stored checksums and key.
    let j = journal.into_inner().map_err(|_| BackupError::Other("journal lock poisoned".into()))?;
    let mut out = m.clone();
    out.copied_from = Some(src.name.clone());
    for o in &mut out.objects {
        let key = manifest::part_key(cluster, id, &o.name);
        let hash = j.done.get(&o.name).cloned().ok_or_else(|| BackupError::Other(format!("{key}: not copied")))?;
        o.stored_size =
            dst.size(&key).await?.ok_or_else(|| BackupError::Other(format!("{key}: missing at {}", dst.name)))?;
        o.stored_blake3 = hash;
    }
    out.stored_bytes = out.objects.iter().map(|o| o.stored_size).sum();
    let body = out.seal(dst.keys.current());
    dst.put_new(&mkey, Bytes::from(body)).await?;
    crate::base::remember(dst, cluster, &out);
    let _ = std::fs::remove_file(&jpath);
    report.wal_copied = copy_wal(src, dst, cluster, cancel).await?;
    Ok(report)
}

/// Copies every archived WAL file of `cluster` that `dst` lacks.
pub async fn copy_wal(src: &Dest, dst: &Dest, cluster: &str, cancel: &CancellationToken) -> Result<usize> {
    let have: std::collections::BTreeSet<String> =
        crate::wal::list(dst, cluster).await?.into_iter().map(|(n, _)| n).collect();
    let missing: Vec<String> =
        crate::wal::list(src, cluster).await?.into_iter().map(|(n, _)| n).filter(|n| !have.contains(n)).collect();
    let n = missing.len();
    futures::stream::iter(missing)
        .map(|name| async move {
            let key = manifest::wal_key(cluster, &name);
            with_retries(&key, cancel, || copy_object(src, dst, &key, None)).await.map(|_| ())
        })
        .buffer_unordered(dst.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(n)
}

/// Copies every backup (and the WAL) of `cluster` that `dst` lacks from
/// `src`, reading only from `src`.
pub async fn pull(
    src: &Dest,
    dst: &Dest,
    cluster: &str,
    journal_dir: &Path,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Vec<CopyReport>> {
    let theirs = crate::base::list_backups(src, cluster).await?;
    let ours: std::collections::BTreeSet<String> =
        crate::base::list_backups(dst, cluster).await?.into_iter().map(|m| m.id).collect();
    let mut reports = Vec::new();
    for m in theirs.iter().filter(|m| !ours.contains(&m.id)) {
        reports.push(copy_backup(src, dst, cluster, &m.id, journal_dir, progress, cancel).await?);
    }
    let wal = copy_wal(src, dst, cluster, cancel).await?;
    if wal > 0 {
        reports.push(CopyReport { target: dst.name.clone(), wal_copied: wal, ..Default::default() });
    }
    Ok(reports)
}
