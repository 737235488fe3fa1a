//! A base backup of a running cluster, streamed to a destination.
//!
//! `pg_basebackup -D - -F tar -X fetch` writes one tar stream to stdout (the
//! WAL needed for consistency included, stop LSN handled by PostgreSQL also
//! when reading from a replica). The stream is cut into parts of
//! `part_size` bytes; each part is hashed, compressed, encrypted and uploaded
//! while the next ones are read, `workers` at a time for the CPU work and at
//! most the destination's concurrency for uploads. Nothing is staged on disk;
//! memory is bounded by about (workers + concurrency) × part_size. The
//! manifest is written last.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use pgdr_config::{Cluster, Config, Node};
use pgdr_model::Lsn;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::dest::Dest;
use crate::manifest::{self, Manifest, Object};
use crate::{BackupError, Measured, Progress, Result, format};

/// How to take a backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// zstd level (1–19), 0 for none.
    pub level: i32,
    /// Plaintext bytes per stored object.
    pub part_size: usize,
    /// Parts compressed and encrypted at once.
    pub workers: usize,
    /// Read from this node instead of choosing.
    pub node: Option<String>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions { level: 3, part_size: 16 << 20, workers: 2, node: None }
    }
}

/// The node a backup is read from.
#[derive(Debug, Clone)]
pub struct Source {
    pub node: Node,
    pub is_replica: bool,
    pub pg_version: u32,
    /// Sum of database sizes, for progress.
    pub size_estimate: u64,
}

fn login(cluster: &Cluster) -> Result<pgdr_node::local::Login> {
    let password = match &cluster.password {
        Some(s) => Some(
            s.resolve()
                .map_err(|e| BackupError::Config(format!("cluster {}: password: {e}", cluster.name.as_str())))?,
        ),
        None => None,
    };
    Ok(pgdr_node::local::Login { user: cluster.user.clone(), password, database: cluster.database.clone() })
}

async fn probe(cluster: &Cluster, node: &Node) -> Result<(bool, bool, u32, u64)> {
    let l = login(cluster)?;
    let mut conninfo =
        format!("host={} port={} user={} dbname={} connect_timeout=3", node.host, node.port, l.user, l.database);
    if let Some(p) = &l.password {
        conninfo.push_str(&format!(" password={}", pgdr_node::local::conn_quote(p)));
    }
    let client = pgdr_node::local::connect(&conninfo, &format!("{}:{}", node.host, node.port)).await?;
    let q = |source| pgdr_node::PgError::Query { addr: format!("{}:{}", node.host, node.port), source };
    let row = client
        .query_one(
            "select pg_is_in_recovery(), \
                    coalesce((select status = 'streaming' from pg_stat_wal_receiver limit 1), false), \
                    current_setting('server_version_num')::int4, \
                    (select sum(pg_database_size(oid))::int8 from pg_database)",
            &[],
        )
        .await
        .map_err(q)?;
    Ok((row.get(0), row.get(1), row.get::<_, i32>(2) as u32, row.get::<_, i64>(3) as u64))
}

/// Picks the node to read from: a streaming replica when there is one (so
/// the primary is not loaded), else the primary, else any node that answers.
pub async fn choose_source(cluster: &Cluster, only: Option<&str>) -> Result<Source> {
    let mut fallback = None;
    let mut errors = Vec::new();
    for node in &cluster.nodes {
        if only.is_some_and(|o| o != node.name.as_str()) {
            continue;
        }
        match probe(cluster, node).await {
            Ok((in_recovery, streaming, v, size)) => {
                let s = Source { node: node.clone(), is_replica: in_recovery, pg_version: v, size_estimate: size };
                if in_recovery && streaming {
                    return Ok(s);
                }
                if !in_recovery || only.is_some() {
                    fallback = Some(s);
                }
            }
            Err(e) => errors.push(format!("{}: {e}", node.name.as_str())),
        }
    }
    fallback.ok_or_else(|| {
        BackupError::Other(format!(
            "no node of cluster {} can be backed up (need a streaming replica or the primary): {}",
            cluster.name.as_str(),
            if errors.is_empty() { "no such node".to_owned() } else { errors.join("; ") }
        ))
    })
}

/// Reads up to `size` bytes (fewer only at the end of the stream).
async fn read_part<R: tokio::io::AsyncRead + Unpin>(r: &mut R, size: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; size];
    let mut filled = 0;
    while filled < size {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Hashes, compresses, encrypts and stores one part; returns its manifest entry.
pub(crate) async fn store_part(
    dest: &Dest,
    key: String,
    name: String,
    plain: Vec<u8>,
    level: i32,
    cpu: &Semaphore,
) -> Result<Object> {
    let keys = dest.keys.clone();
    let permit = cpu.acquire().await.ok();
    let (obj, sealed) = tokio::task::spawn_blocking(move || -> Result<(Object, Vec<u8>), format::FormatError> {
        let plain_blake3 = blake3::hash(&plain).to_hex().to_string();
        let sealed = format::seal(&plain, level, &keys)?;
        let stored_blake3 = blake3::hash(&sealed).to_hex().to_string();
        Ok((
            Object {
                name,
                plain_size: plain.len() as u64,
                plain_blake3,
                stored_size: sealed.len() as u64,
                stored_blake3,
            },
            sealed,
        ))
    })
    .await
    .map_err(|e| BackupError::Other(format!("compression task failed: {e}")))?
    .map_err(|source| BackupError::Format { dest: dest.name.clone(), key: key.clone(), source })?;
    drop(permit);
    dest.put_new(&key, Bytes::from(sealed)).await?;
    Ok(obj)
}

/// What pg_basebackup reported on stderr.
#[derive(Debug, Default, PartialEq, Eq)]
struct Reported {
    start: Option<Lsn>,
    timeline: Option<u32>,
    stop: Option<Lsn>,
}

fn parse_report(text: &str) -> Reported {
    let mut r = Reported::default();
    for line in text.lines() {
        if let Some(rest) = line.split("write-ahead log start point: ").nth(1) {
            let mut w = rest.split_whitespace();
            r.start = w.next().and_then(|s| s.parse().ok());
            r.timeline = rest.split("on timeline ").nth(1).and_then(|t| t.trim().trim_end_matches('.').parse().ok());
        } else if let Some(rest) = line.split("write-ahead log end point: ").nth(1) {
            r.stop = rest.split_whitespace().next().and_then(|s| s.parse().ok());
        }
    }
    r
}

/// Takes a base backup of `cluster` to `dest`.
pub async fn run_backup(
    config: &Config,
    cluster_name: &str,
    dest: &Dest,
    opts: &BackupOptions,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<(Manifest, Measured)> {
    let cluster = crate::cluster(config, cluster_name)?;
    let source = choose_source(cluster, opts.node.as_deref()).await?;
    progress.total.store(source.size_estimate, std::sync::atomic::Ordering::Relaxed);
    let bin = pgdr_node::PgBinaries::find(source.node.bin_dir.as_deref())?;
    let l = login(cluster)?;
    // The primary's archive_command (run as the server's user) writes here too.
    if let Ok(run_as) = pgdr_node::RunAs::for_node(source.node.os_user.as_deref()) {
        dest.prepare_wal_dir(cluster_name, &run_as)?;
    }
    let started = Instant::now();
    let created = chrono::Utc::now();
    let id = manifest::new_id(created);
    tracing::info!(cluster = cluster_name, node = source.node.name.as_str(), replica = source.is_replica, %id, dest = %dest.name, "base backup starting");

    let mut cmd = Command::new(bin.path("pg_basebackup"));
    cmd.args(["-h", &source.node.host, "-p", &source.node.port.to_string(), "-U", &cluster.replication_user])
        .args(["-D", "-", "-F", "tar", "-X", "fetch", "-c", "fast", "-v", "-w"])
        .env("PGAPPNAME", "pgdr-backup")
        .env("PGDATABASE", "postgres")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(p) = &l.password {
        cmd.env("PGPASSWORD", p);
    }
    let mut child = cmd.spawn().map_err(BackupError::io("cannot run pg_basebackup"))?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(BackupError::Other("pg_basebackup: no output pipes".into()));
    };
    let err_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });

    let cpu = Arc::new(Semaphore::new(opts.workers.max(1)));
    let width = opts.workers.max(1) + dest.concurrency;
    let part_size = opts.part_size.max(64 * 1024);
    let parts = futures::stream::try_unfold((stdout, 0usize, false), move |(mut stdout, i, done)| async move {
        if done {
            return Ok(None);
        }
        let buf = read_part(&mut stdout, part_size).await.map_err(BackupError::io("reading pg_basebackup's output"))?;
        if buf.is_empty() && i > 0 {
            return Ok(None);
        }
        let last = buf.len() < part_size;
        Ok(Some(((i, buf), (stdout, i + 1, last))))
    });
    let upload = parts
        .map_ok(|(i, buf)| {
            let name = format!("data/{i:06}");
            let key = manifest::part_key(cluster_name, &id, &name);
            let cpu = cpu.clone();
            async move {
                if cancel.is_cancelled() {
                    return Err(BackupError::Cancelled);
                }
                let o = store_part(dest, key, name, buf, opts.level, &cpu).await?;
                progress.add(o.plain_size, o.stored_size);
                Ok(o)
            }
        })
        .try_buffer_unordered(width)
        .try_collect::<Vec<Object>>();
    let uploaded = tokio::select! {
        r = upload => r,
        _ = cancel.cancelled() => Err(BackupError::Cancelled),
    };
    let mut objects = match uploaded {
        Ok(o) => o,
        Err(e) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(e);
        }
    };
    let status = child.wait().await.map_err(BackupError::io("waiting for pg_basebackup"))?;
    let report = err_task.await.unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = report.lines().rev().take(5).collect();
        return Err(BackupError::Program {
            program: "pg_basebackup".into(),
            status: status.to_string(),
            output: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
        });
    }
    let r = parse_report(&report);
    let (Some(start), Some(stop), Some(timeline)) = (r.start, r.stop, r.timeline) else {
        return Err(BackupError::Other(format!("cannot read start/stop LSN from pg_basebackup's report: {report}")));
    };
    objects.sort_by(|a, b| a.name.cmp(&b.name));
    let mut m = Manifest {
        format: 1,
        id: id.clone(),
        cluster: cluster_name.to_owned(),
        source_node: source.node.name.as_str().to_owned(),
        from_replica: source.is_replica,
        created_at: created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        pg_version: source.pg_version,
        timeline,
        start_lsn: start,
        stop_lsn: stop,
        start_wal: manifest::segment_name(timeline, start, 16 << 20),
        key_id: dest.keys.current().0.to_owned(),
        compression: if opts.level == 0 { "none".into() } else { "zstd".into() },
        compression_level: opts.level,
        wal_included: true,
        plain_bytes: objects.iter().map(|o| o.plain_size).sum(),
        stored_bytes: objects.iter().map(|o| o.stored_size).sum(),
        objects,
        copied_from: None,
        checksum: String::new(),
    };
    let body = m.seal();
    dest.put_new(&manifest::manifest_key(cluster_name, &id), Bytes::from(body)).await?;
    let measured = Measured {
        plain_bytes: m.plain_bytes,
        stored_bytes: m.stored_bytes,
        objects: m.objects.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!(cluster = cluster_name, %id, dest = %dest.name, mib_s = measured.mib_per_s(), "base backup done");
    Ok((m, measured))
}

/// Lists the complete backups (those with a valid manifest) of a cluster at
/// a destination, oldest first. Unreadable manifests are reported as errors.
pub async fn list_backups(dest: &Dest, cluster: &str) -> Result<Vec<Manifest>> {
    let listed = dest.list(&manifest::backups_prefix(cluster)).await?;
    let keys: Vec<String> = listed.into_iter().map(|l| l.key).filter(|k| k.ends_with("/manifest.json")).collect();
    let mut out: Vec<Manifest> = futures::stream::iter(keys)
        .map(|k| async move {
            let bytes = dest.get(&k).await?;
            Ok::<_, BackupError>(Manifest::parse(&k, &bytes)?)
        })
        .buffer_unordered(dest.concurrency)
        .try_collect()
        .await?;
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Reads one backup's manifest; `latest` (or `None`) picks the newest.
pub async fn find_backup(dest: &Dest, cluster: &str, id: Option<&str>) -> Result<Manifest> {
    match id {
        None | Some("latest") => list_backups(dest, cluster).await?.pop().ok_or_else(|| BackupError::NoBackup {
            cluster: cluster.to_owned(),
            dest: dest.name.clone(),
            detail: String::new(),
        }),
        Some(id) => {
            let key = manifest::manifest_key(cluster, id);
            match dest.get_opt(&key).await? {
                Some(b) => Ok(Manifest::parse(&key, &b)?),
                None => Err(BackupError::NoBackup {
                    cluster: cluster.to_owned(),
                    dest: dest.name.clone(),
                    detail: format!(" with id {id}"),
                }),
            }
        }
    }
}

/// Checks every object of a backup: stored checksums always, and with
/// `decrypt` also authentication and the plaintext checksum. Returns the
/// problems found (empty when the backup is sound).
pub async fn verify_backup(dest: &Dest, m: &Manifest, decrypt: bool) -> Result<Vec<String>> {
    let problems: Vec<Option<String>> = futures::stream::iter(m.objects.iter())
        .map(|o| async move {
            let key = manifest::part_key(&m.cluster, &m.id, &o.name);
            let data = match dest.get_opt(&key).await? {
                Some(d) => d,
                None => return Ok::<_, BackupError>(Some(format!("{key}: missing"))),
            };
            let keys = dest.keys.clone();
            let o = o.clone();
            let dname = dest.name.clone();
            tokio::task::spawn_blocking(move || {
                let actual = blake3::hash(&data).to_hex().to_string();
                if actual != o.stored_blake3 || data.len() as u64 != o.stored_size {
                    return Some(
                        BackupError::Corrupt { dest: dname, key, expected: o.stored_blake3.clone(), actual }
                            .to_string(),
                    );
                }
                if decrypt {
                    match format::open(&data, &keys, Some(o.plain_size as usize)) {
                        Ok(plain) if blake3::hash(&plain).to_hex().as_str() == o.plain_blake3 => None,
                        Ok(_) => Some(format!("{key}: plaintext checksum does not match the manifest")),
                        Err(e) => Some(format!("{key}: {e}")),
                    }
                } else {
                    None
                }
            })
            .await
            .map_err(|e| BackupError::Other(format!("verify task failed: {e}")))
        })
        .buffer_unordered(dest.concurrency)
        .try_collect()
        .await?;
    Ok(problems.into_iter().flatten().collect())
}

/// Waits for `d`, or returns early when cancelled.
pub(crate) async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> Result<()> {
    tokio::select! {
        _ = tokio::time::sleep(d) => Ok(()),
        _ = cancel.cancelled() => Err(BackupError::Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report() {
        let text = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
                    pg_basebackup: checkpoint completed\n\
                    pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1\n\
                    pg_basebackup: write-ahead log end point: 0/2000100\n\
                    pg_basebackup: base backup completed\n";
        assert_eq!(
            parse_report(text),
            Reported { start: Some(Lsn(0x2000028)), timeline: Some(1), stop: Some(Lsn(0x2000100)) }
        );
    }
}
