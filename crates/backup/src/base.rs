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
use crate::keys::Keyring;
use crate::manifest::{self, Manifest, Object, Trouble};
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

/// The cluster's login, with TLS toward its nodes under `[tls]`.
pub fn login(config: &Config, cluster: &Cluster) -> Result<pgdr_node::local::Login> {
    let password = match &cluster.password {
        Some(s) => Some(
            s.resolve()
                .map_err(|e| BackupError::Config(format!("cluster {}: password: {e}", cluster.name.as_str())))?,
        ),
        None => None,
    };
    let tls = match &config.tls {
        Some(t) => Some(pgdr_node::local::PgTls::new(&t.ca).map_err(|e| BackupError::Config(format!("tls.ca: {e}")))?),
        None => None,
    };
    Ok(pgdr_node::local::Login { user: cluster.user.clone(), password, database: cluster.database.clone(), tls })
}

async fn probe(node: &Node, l: &pgdr_node::local::Login) -> Result<(bool, bool, u32, u64)> {
    let mut conninfo =
        format!("host={} port={} user={} dbname={} connect_timeout=3", node.host, node.port, l.user, l.database);
    if let Some(p) = &l.password {
        conninfo.push_str(&format!(" password={}", pgdr_node::local::conn_quote(p)));
    }
    let client = pgdr_node::local::connect(&conninfo, &format!("{}:{}", node.host, node.port), l.tls.as_ref()).await?;
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
pub async fn choose_source(cluster: &Cluster, only: Option<&str>, login: &pgdr_node::local::Login) -> Result<Source> {
    let mut fallback = None;
    let mut errors = Vec::new();
    for node in &cluster.nodes {
        if only.is_some_and(|o| o != node.name.as_str()) {
            continue;
        }
        match probe(node, login).await {
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
    plain: Bytes,
    level: i32,
    cpu: &Semaphore,
) -> Result<Object> {
    let keys = dest.keys.clone();
    let permit = cpu.acquire().await.ok();
    let binding = key.clone();
    let (obj, sealed) = tokio::task::spawn_blocking(move || -> Result<(Object, Vec<u8>), format::FormatError> {
        let plain_blake3 = blake3::hash(&plain).to_hex().to_string();
        let sealed = format::seal(&plain, level, &keys, &binding)?;
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
    let l = login(config, cluster)?;
    let source = choose_source(cluster, opts.node.as_deref(), &l).await?;
    progress.total.store(source.size_estimate, std::sync::atomic::Ordering::Relaxed);
    let bin = pgdr_node::PgBinaries::find(source.node.bin_dir.as_deref())?;
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
    match &l.tls {
        Some(t) => cmd.envs(t.libpq_env()),
        None => cmd.env("PGSSLMODE", "disable"),
    };
    let mut child = cmd.spawn().map_err(BackupError::io("cannot run pg_basebackup"))?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(BackupError::Other("pg_basebackup: no output pipes".into()));
    };
    let err_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });

    // The file list for delta restores, built on its own thread from the
    // same parts in stream order (blake3 of every file: kept off the reader).
    let (index_tx, mut index_rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let indexer = std::thread::spawn(move || {
        let mut ix = crate::tarindex::Indexer::new();
        while let Some(part) = index_rx.blocking_recv() {
            ix.feed(&part);
        }
        ix.finish()
    });
    let cpu = Arc::new(Semaphore::new(opts.workers.max(1)));
    let width = opts.workers.max(1) + dest.concurrency;
    let part_size = opts.part_size.max(64 * 1024);
    let parts =
        futures::stream::try_unfold((stdout, 0usize, false, index_tx), move |(mut stdout, i, done, tx)| async move {
            if done {
                return Ok(None);
            }
            let buf =
                read_part(&mut stdout, part_size).await.map_err(BackupError::io("reading pg_basebackup's output"))?;
            if buf.is_empty() && i > 0 {
                return Ok(None);
            }
            let last = buf.len() < part_size;
            let buf = Bytes::from(buf);
            // A closed channel only loses the file list (the indexer failed).
            let _ = tx.send(buf.clone()).await;
            Ok(Some(((i, buf), (stdout, i + 1, last, tx))))
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
    let files = match indexer.join() {
        Ok(Ok(files)) if serde_json::to_vec(&files).map_or(0, |v| v.len() as u64) < manifest::MAX_MANIFEST / 2 => files,
        Ok(Ok(files)) => {
            tracing::warn!(cluster = cluster_name, %id, files = files.len(), "the file list is too large for the manifest: this backup restores in full only (no delta restore)");
            Vec::new()
        }
        Ok(Err(why)) => {
            tracing::warn!(cluster = cluster_name, %id, "cannot list the files of the backup ({why}): it restores in full only (no delta restore)");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!(cluster = cluster_name, %id, "the file indexer failed: this backup restores in full only (no delta restore)");
            Vec::new()
        }
    };
    // Chain to the newest backup there (and past the newest ever seen here;
    // after a rollback, to the vanished one, so the gap stays visible in the
    // authenticated chain).
    let before = catalog(dest, cluster_name).await?;
    let previous = match &before.rollback {
        Some(r) => Some(r.seen_id.clone()),
        None => before.newest().map(|p| p.id.clone()),
    };
    let mut m = Manifest {
        format: manifest::FORMAT,
        id: id.clone(),
        cluster: cluster_name.to_owned(),
        seq: before.next_seq(),
        previous,
        source_node: source.node.name.as_str().to_owned(),
        from_replica: source.is_replica,
        created_at: created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        pg_version: source.pg_version,
        timeline,
        start_lsn: start,
        stop_lsn: stop,
        start_wal: manifest::segment_name(timeline, start, 16 << 20),
        key_id: String::new(),
        compression: if opts.level == 0 { "none".into() } else { "zstd".into() },
        compression_level: opts.level,
        wal_included: true,
        plain_bytes: objects.iter().map(|o| o.plain_size).sum(),
        stored_bytes: objects.iter().map(|o| o.stored_size).sum(),
        objects,
        copied_from: None,
        mac: String::new(),
        files,
    };
    let body = m.seal(dest.keys.current());
    dest.put_new(&manifest::manifest_key(cluster_name, &id), Bytes::from(body)).await?;
    remember(dest, cluster_name, &m);
    let measured = Measured {
        plain_bytes: m.plain_bytes,
        stored_bytes: m.stored_bytes,
        objects: m.objects.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        files: None,
    };
    tracing::info!(cluster = cluster_name, %id, dest = %dest.name, mib_s = measured.mib_per_s(), "base backup done");
    Ok((m, measured))
}

/// A backup whose manifest could not be used.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Invalid {
    pub id: String,
    pub key: String,
    pub trouble: Trouble,
    pub error: String,
}

/// The newest backup this host has seen at a destination is gone.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rollback {
    pub seen_seq: u64,
    pub seen_id: String,
    pub seen_at: String,
    pub newest_seq: Option<u64>,
    pub newest_id: Option<String>,
    /// The file holding the mark (remove it to accept the current state).
    pub mark: String,
}

impl std::fmt::Display for Rollback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the newest valid backup is {} but backup {} (sequence {}) was seen there on {} (remembered in {})",
            match (&self.newest_id, self.newest_seq) {
                (Some(id), Some(seq)) => format!("{id} (sequence {seq})"),
                _ => "none".to_owned(),
            },
            self.seen_id,
            self.seen_seq,
            self.seen_at,
            self.mark
        )
    }
}

/// Everything known about a cluster's backups at a destination.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Catalog {
    /// Authentic manifests in their place, oldest first (by sequence, then id).
    pub valid: Vec<Manifest>,
    /// Manifests skipped, with why.
    pub invalid: Vec<Invalid>,
    /// Set when an older state is served than this host has seen.
    pub rollback: Option<Rollback>,
    /// Backups named as `previous` by a newer one, absent, and newer than
    /// the oldest kept one (retention removes only the oldest).
    pub missing: Vec<String>,
}

impl Catalog {
    pub fn newest(&self) -> Option<&Manifest> {
        self.valid.last()
    }

    /// The sequence number of the next backup: past the newest there and
    /// the newest ever seen here.
    pub fn next_seq(&self) -> u64 {
        let there = self.newest().map_or(0, |m| m.seq);
        let seen = self.rollback.as_ref().map_or(0, |r| r.seen_seq);
        there.max(seen) + 1
    }

    /// Each problem as one line, for warnings.
    pub fn problems(&self) -> Vec<(Trouble, String)> {
        let mut out: Vec<(Trouble, String)> = self.invalid.iter().map(|i| (i.trouble, i.error.clone())).collect();
        if let Some(r) = &self.rollback {
            out.push((Trouble::Rollback, r.to_string()));
        }
        for id in &self.missing {
            out.push((
                Trouble::Rollback,
                format!("backup {id} is named as the previous one by a newer backup but is absent (deleted?)"),
            ));
        }
        out
    }
}

/// The local mark of the newest backup seen per destination and cluster.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Seen {
    url: String,
    seq: u64,
    id: String,
    at: String,
}

fn seen_path(dest: &Dest, cluster: &str) -> Option<std::path::PathBuf> {
    let clean = |s: &str| {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect::<String>()
    };
    dest.seen_dir.as_ref().map(|d| d.join(format!("{}.{}.json", clean(&dest.name), clean(cluster))))
}

fn read_seen(dest: &Dest, cluster: &str) -> Option<(Seen, std::path::PathBuf)> {
    let path = seen_path(dest, cluster)?;
    let bytes = std::fs::read(&path).ok()?;
    let seen: Seen = serde_json::from_slice(&bytes).ok()?;
    (seen.url == dest.url).then_some((seen, path))
}

/// Remembers `m` as the newest backup seen at `dest` unless a newer one is
/// remembered. Best effort: a host that cannot write its state directory
/// only loses rollback detection (logged).
pub fn remember(dest: &Dest, cluster: &str, m: &Manifest) {
    let Some(path) = seen_path(dest, cluster) else { return };
    if read_seen(dest, cluster).is_some_and(|(s, _)| s.seq >= m.seq) {
        return;
    }
    let seen = Seen {
        url: dest.url.clone(),
        seq: m.seq,
        id: m.id.clone(),
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&seen).unwrap_or_default())?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        tracing::warn!(path = %path.display(), error = %e, "cannot remember the newest backup seen: rollback detection is off for this host");
    }
}

/// Reads and checks every manifest of a cluster at a destination: the
/// authentic ones in place are `valid`; the others are `invalid` with the
/// reason (skipped, never fatal); a newest backup older than the newest this
/// host has seen is a `rollback`. Only trouble reaching the destination is
/// an error.
pub async fn catalog(dest: &Dest, cluster: &str) -> Result<Catalog> {
    let listed = dest.list(&manifest::backups_prefix(cluster)).await?;
    let keys: Vec<String> = listed.into_iter().map(|l| l.key).filter(|k| k.ends_with("/manifest.json")).collect();
    let read: Vec<(String, Option<Checked>)> = futures::stream::iter(keys)
        .map(|k| async move {
            let got = match dest.get_opt_max(&k, manifest::MAX_MANIFEST).await {
                Ok(None) => None,
                Ok(Some(bytes)) => Some(parse_manifest(&k, &bytes, &dest.keys)),
                Err(e @ crate::DestError::TooLarge { .. }) => Some(Err((Trouble::Corrupt, e.to_string()))),
                Err(e) => return Err(BackupError::from(e)),
            };
            Ok((k, got))
        })
        .buffer_unordered(dest.concurrency)
        .try_collect()
        .await?;
    let mut cat = Catalog::default();
    for (key, got) in read {
        match got {
            None => {}
            Some(Ok(m)) => cat.valid.push(m),
            Some(Err((trouble, error))) => {
                let id = manifest::parse_manifest_key(&key).map(|(_, id)| id.to_owned()).unwrap_or_default();
                cat.invalid.push(Invalid { id, key, trouble, error });
            }
        }
    }
    cat.valid.sort_by(|a, b| (a.seq, &a.id).cmp(&(b.seq, &b.id)));
    cat.invalid.sort_by(|a, b| a.id.cmp(&b.id));
    // A backup's predecessor has the sequence number before its own; one
    // older than the oldest kept backup was pruned, not lost. (Ids sort by
    // time only to the second: two backups in one second may sort either way.)
    if let Some(oldest) = cat.valid.iter().filter(|m| m.copied_from.is_none()).map(|m| m.seq).min() {
        let known: std::collections::BTreeSet<&str> =
            cat.valid.iter().map(|m| m.id.as_str()).chain(cat.invalid.iter().map(|i| i.id.as_str())).collect();
        let mut missing: Vec<String> = cat
            .valid
            .iter()
            .filter(|m| m.copied_from.is_none() && m.seq > oldest)
            .filter_map(|m| m.previous.as_deref())
            .filter(|p| !known.contains(p))
            .map(str::to_owned)
            .collect();
        missing.sort();
        missing.dedup();
        cat.missing = missing;
    }
    let newest = cat.newest().map(|m| (m.seq, m.id.clone()));
    match read_seen(dest, cluster) {
        Some((seen, path)) if newest.as_ref().is_none_or(|(seq, _)| *seq < seen.seq) => {
            cat.rollback = Some(Rollback {
                seen_seq: seen.seq,
                seen_id: seen.id,
                seen_at: seen.at,
                newest_seq: newest.as_ref().map(|n| n.0),
                newest_id: newest.map(|n| n.1),
                mark: path.display().to_string(),
            });
        }
        _ => {
            if let Some(m) = cat.newest() {
                remember(dest, cluster, m);
            }
        }
    }
    Ok(cat)
}

/// A manifest read and checked, or why it cannot be used.
type Checked = std::result::Result<Manifest, (Trouble, String)>;

fn parse_manifest(key: &str, bytes: &[u8], keys: &Keyring) -> Checked {
    Manifest::parse(key, bytes, keys).map_err(|e| (e.trouble(), e.to_string()))
}

/// Lists the complete backups (those with an authentic manifest) of a
/// cluster at a destination, oldest first. Manifests that cannot be used
/// and a detected rollback are logged as warnings and skipped: one bad
/// manifest does not stop restores from the others.
pub async fn list_backups(dest: &Dest, cluster: &str) -> Result<Vec<Manifest>> {
    let cat = catalog(dest, cluster).await?;
    for (trouble, p) in cat.problems() {
        tracing::warn!(dest = %dest.name, cluster, %trouble, "{p}");
    }
    Ok(cat.valid)
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
            match dest.get_opt_max(&key, manifest::MAX_MANIFEST).await? {
                Some(b) => Ok(Manifest::parse(&key, &b, &dest.keys)?),
                None => Err(BackupError::NoBackup {
                    cluster: cluster.to_owned(),
                    dest: dest.name.clone(),
                    detail: format!(" with id {id}"),
                }),
            }
        }
    }
}

/// Checks one stored object against its (authentic) manifest entry: size
/// and stored checksum always; with `decrypt`, authentication under its
/// binding and the plaintext checksum too, returning the plaintext. A
/// mismatch is classified: authentic data sealed for another place (or
/// another write of this one) is `Substituted`, anything else `Corrupt`.
pub fn check_object(
    key: &str,
    o: &Object,
    data: &[u8],
    keys: &Keyring,
    decrypt: bool,
) -> std::result::Result<Option<Vec<u8>>, (Trouble, String)> {
    let actual = blake3::hash(data).to_hex().to_string();
    if data.len() as u64 != o.stored_size || actual != o.stored_blake3 {
        let detail = format!(
            "stored checksum {actual} ({} bytes) does not match the manifest's {} ({} bytes)",
            data.len(),
            o.stored_blake3,
            o.stored_size
        );
        return Err(match format::decrypt(data, keys, key) {
            Err(e @ format::FormatError::Substituted { .. }) => (Trouble::Substituted, format!("{detail}; {e}")),
            Ok(_) => (
                Trouble::Substituted,
                format!("{detail}; it is an authentic object for this path, but not the one the manifest names"),
            ),
            Err(_) => (Trouble::Corrupt, detail),
        });
    }
    if !decrypt {
        return Ok(None);
    }
    let size = usize::try_from(o.plain_size).unwrap_or(usize::MAX);
    match format::open(data, keys, key, Some(size)) {
        Ok(plain) if blake3::hash(&plain).to_hex().as_str() == o.plain_blake3 => Ok(Some(plain)),
        Ok(_) => Err((Trouble::Corrupt, "decrypted but its plaintext checksum does not match the manifest".into())),
        Err(e) if e.is_substitution() => Err((Trouble::Substituted, e.to_string())),
        Err(e @ format::FormatError::UnknownKey { .. }) => Err((Trouble::Key, e.to_string())),
        Err(e) => Err((Trouble::Corrupt, e.to_string())),
    }
}

/// One problem `verify` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    pub trouble: Trouble,
    pub key: String,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.trouble {
            Trouble::Rollback => write!(f, "{}: {}", self.key, self.detail),
            t => write!(f, "{} is {t}: {}", self.key, self.detail),
        }
    }
}

/// Checks every object of a backup: sizes and stored checksums always, and
/// with `decrypt` also authentication and the plaintext checksum. Returns the
/// problems found (empty when the backup is sound).
pub async fn verify_backup(dest: &Dest, m: &Manifest, decrypt: bool) -> Result<Vec<Problem>> {
    let problems: Vec<Option<Problem>> = futures::stream::iter(m.objects.iter())
        .map(|o| async move {
            let key = manifest::part_key(&m.cluster, &m.id, &o.name);
            let data = match dest.get_opt(&key).await {
                Ok(Some(d)) => d,
                Ok(None) => {
                    return Ok::<_, BackupError>(Some(Problem {
                        trouble: Trouble::Missing,
                        key,
                        detail: "not at the destination".into(),
                    }));
                }
                Err(e @ crate::DestError::TooLarge { .. }) => {
                    return Ok(Some(Problem { trouble: Trouble::Corrupt, key, detail: e.to_string() }));
                }
                Err(e) => return Err(e.into()),
            };
            let keys = dest.keys.clone();
            let o = o.clone();
            tokio::task::spawn_blocking(move || match check_object(&key, &o, &data, &keys, decrypt) {
                Ok(_) => None,
                Err((trouble, detail)) => Some(Problem { trouble, key, detail }),
            })
            .await
            .map_err(|e| BackupError::Other(format!("verify task failed: {e}")))
        })
        .buffer_unordered(dest.concurrency)
        .try_collect()
        .await?;
    let mut out: Vec<Problem> = problems.into_iter().flatten().collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
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
