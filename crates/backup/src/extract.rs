//! Writing a backup's files into a data directory from its file list
//! (manifest format 3), in full or as a delta.
//!
//! The backup is one tar stream cut into parts; the manifest lists every
//! file with where its bytes start in the stream and their blake3. Files
//! are created (or truncated) first, then the parts holding bytes to write
//! are downloaded, checked and decompressed `workers` at a time, in any
//! order, and each part's slices are written at their offsets (`pwrite`);
//! a file is written back (`fdatasync` on a thread of its own, which keeps
//! it in the page cache) as soon as its last bytes are in, and after the
//! last write every file is fsynced (several at once), then every folder. `global/pg_control` is written last, after
//! everything else is durable, so an interrupted restore leaves a directory
//! PostgreSQL refuses to start rather than a mix that looks whole.
//!
//! A **delta** restore first compares the directory with the list, never
//! following a link: a regular file with the backup's size and blake3 is
//! kept as it is (not rewritten; its mode and owner are corrected); anything
//! the backup does not have, or of another kind (a link where the backup has
//! a folder, say), is removed; links are removed as links, so nothing
//! outside the directory is touched (a tablespace's files stay where its
//! link pointed). Only the parts holding files that differ are downloaded.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use pgdr_node::RunAs;

use crate::dest::Dest;
use crate::manifest::{self, FileEntry, FileKind, Manifest};
use crate::{BackupError, FileCounts, Progress, Result};

/// Written last, so a half-restored directory does not start.
pub const PG_CONTROL: &str = "global/pg_control";
/// Files fsynced at once.
const SYNC_THREADS: usize = 8;
/// Bytes per `pwrite`. A part's slice of a file (up to 16 MiB) written in
/// one call made the kernel's copy into the page cache cost 2-4 times the
/// system time on the benchmark machine (a Linux 6.18 VM), and the full
/// restore took 4.2-8.5 s against 1.5-1.7 s with 256 KiB writes in the same
/// runs (bench/RESULTS-backup.md, run 7). Why is not established: the
/// kernel sizes page-cache folios by the write's length, and large folios
/// may come from memory the host must fault back in.
const WRITE_CHUNK: usize = 256 << 10;

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    BackupError::io(format!("{what} {}", path.display()))
}

/// Checks that a file list is one a restore can follow safely: plain
/// relative paths, each once, no entry below a file or a link, file bytes
/// inside the stream.
pub fn check_list(m: &Manifest) -> Result<()> {
    let total: u64 = m.objects.iter().map(|o| o.plain_size).sum();
    let bad = |why: String| BackupError::Other(format!("backup {}: its file list {why}", m.id));
    let mut kinds: HashMap<&str, FileKind> = HashMap::with_capacity(m.files.len());
    for f in &m.files {
        if crate::tarindex::clean_path(&f.path).as_deref() != Some(f.path.as_str()) {
            return Err(bad(format!("names an unsafe path {:?}", f.path)));
        }
        if kinds.insert(&f.path, f.kind).is_some() {
            return Err(bad(format!("names {:?} twice", f.path)));
        }
        if f.kind == FileKind::File && f.offset.checked_add(f.size).is_none_or(|end| end > total) {
            return Err(bad(format!("places {:?} outside the backup's {total} bytes", f.path)));
        }
        if f.kind == FileKind::Link && f.target.as_deref().is_none_or(str::is_empty) {
            return Err(bad(format!("has link {:?} without a target", f.path)));
        }
    }
    for f in &m.files {
        let mut p = f.path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if kinds.get(parent).is_some_and(|k| *k != FileKind::Dir) {
                return Err(bad(format!("puts {:?} below {parent:?}, which is not a folder", f.path)));
            }
            p = parent;
        }
    }
    Ok(())
}

/// Folders the list implies (parents without an entry of their own).
fn implicit_dirs(files: &[FileEntry]) -> HashSet<String> {
    let listed: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let mut out = HashSet::new();
    for f in files {
        let mut p = f.path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if !listed.contains(parent) {
                out.insert(parent.to_owned());
            }
            p = parent;
        }
    }
    out
}

fn owner(run_as: &RunAs) -> Option<(u32, u32)> {
    run_as.user.as_ref().map(|(_, u, g)| (*u, *g))
}

fn open_nofollow(path: &Path, write: bool) -> std::io::Result<File> {
    OpenOptions::new().read(!write).write(write).custom_flags(nix::libc::O_NOFOLLOW).open(path)
}

/// Whether the regular file at `path` has `f`'s size and blake3.
fn same_file(path: &Path, f: &FileEntry) -> bool {
    let Ok(mut file) = open_nofollow(path, false) else { return false };
    match file.metadata() {
        Ok(meta) if meta.is_file() && meta.len() == f.size => {}
        _ => return false,
    }
    let mut h = blake3::Hasher::new();
    h.update_reader(&mut file).is_ok() && h.finalize().to_hex().as_str() == f.blake3
}

/// Removes what is at `path` without following a link.
fn remove(path: &Path, is_dir: bool) -> Result<()> {
    (if is_dir { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) }).map_err(io("cannot remove", path))
}

/// What a delta scan found: which list entries are already right.
struct Scan {
    keep: Vec<bool>,
    removed: u64,
}

/// Compares `to` with the list (see the module docs): removes what does not
/// belong, and marks the files and links that are already right.
fn scan(to: &Path, files: &[FileEntry], workers: usize, run_as: &RunAs) -> Result<Scan> {
    let index: HashMap<&str, usize> = files.iter().enumerate().map(|(i, f)| (f.path.as_str(), i)).collect();
    let implicit = implicit_dirs(files);
    let mut keep = vec![false; files.len()];
    let mut candidates = Vec::new();
    let mut removed = 0;
    let mut stack = vec![(to.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for ent in std::fs::read_dir(&dir).map_err(io("cannot read", &dir))? {
            let ent = ent.map_err(io("cannot read", &dir))?;
            let path = ent.path();
            // The kind of the entry itself: a link is a link, never its target.
            let ft = ent.file_type().map_err(io("cannot inspect", &path))?;
            let name = ent.file_name();
            let rel_p = name.to_str().map(|n| if rel.is_empty() { n.to_owned() } else { format!("{rel}/{n}") });
            let belongs = match rel_p.as_deref().and_then(|r| index.get(r).map(|i| (r, *i))) {
                Some((_, i)) => match files[i].kind {
                    FileKind::Dir if ft.is_dir() => {
                        stack.push((path.clone(), files[i].path.clone()));
                        true
                    }
                    FileKind::File if ft.is_file() => {
                        if files[i].path != PG_CONTROL {
                            candidates.push(i);
                        }
                        true
                    }
                    FileKind::Link if ft.is_symlink() => {
                        let same =
                            std::fs::read_link(&path).ok().as_deref() == files[i].target.as_deref().map(Path::new);
                        keep[i] = same;
                        same
                    }
                    _ => false,
                },
                None => match rel_p.as_deref() {
                    Some(r) if ft.is_dir() && implicit.contains(r) => {
                        stack.push((path.clone(), r.to_owned()));
                        true
                    }
                    _ => false,
                },
            };
            if !belongs {
                if ft.is_symlink() && rel_p.as_deref().is_some_and(|r| r.starts_with("pg_tblspc/")) {
                    tracing::warn!(
                        link = %path.display(),
                        target = %std::fs::read_link(&path).map(|t| t.display().to_string()).unwrap_or_default(),
                        "removing a tablespace link the backup does not have; the folder it points to is left as it is"
                    );
                }
                remove(&path, ft.is_dir())?;
                removed += 1;
            }
        }
    }
    // Checksum the files whose kind and size match, several at once.
    let same: Vec<AtomicBool> = files.iter().map(|_| AtomicBool::new(false)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(2, 8) {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = candidates.get(k) else { break };
                    if same_file(&to.join(&files[i].path), &files[i]) {
                        same[i].store(true, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let who = owner(run_as);
    for (i, f) in files.iter().enumerate() {
        if !same[i].load(Ordering::Relaxed) {
            continue;
        }
        keep[i] = true;
        // Right bytes, maybe the wrong mode or owner: fix those in place.
        let path = to.join(&f.path);
        let meta = std::fs::symlink_metadata(&path).map_err(io("cannot inspect", &path))?;
        if meta.mode() & 0o7777 != f.mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))
                .map_err(io("cannot set the mode of", &path))?;
        }
        if let Some((uid, gid)) = who
            && (meta.uid(), meta.gid()) != (uid, gid)
        {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(io("cannot hand over", &path))?;
        }
    }
    Ok(Scan { keep, removed })
}

/// Creates the folders and links, and creates or truncates every file to
/// write (except `pg_control`, removed now and written last). Returns the
/// folders (for the final fsync).
fn prepare(to: &Path, files: &[FileEntry], keep: &[bool], run_as: &RunAs) -> Result<Vec<PathBuf>> {
    let who = owner(run_as);
    let mut dirs: Vec<(String, u32)> = implicit_dirs(files).into_iter().map(|d| (d, 0o700)).collect();
    dirs.extend(files.iter().filter(|f| f.kind == FileKind::Dir).map(|f| (f.path.clone(), f.mode)));
    dirs.sort_by_key(|(p, _)| (p.matches('/').count(), p.clone()));
    let mut out = vec![to.to_path_buf()];
    for (rel, mode) in dirs {
        let path = to.join(&rel);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                remove(&path, false)?;
                std::fs::create_dir(&path).map_err(io("cannot create", &path))?;
            }
            Err(_) => std::fs::create_dir(&path).map_err(io("cannot create", &path))?,
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io("cannot set the mode of", &path))?;
        if let Some((uid, gid)) = who {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(io("cannot hand over", &path))?;
        }
        out.push(path);
    }
    for (i, f) in files.iter().enumerate() {
        if keep[i] || f.kind == FileKind::Dir {
            continue;
        }
        let path = to.join(&f.path);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if f.kind == FileKind::File && m.is_file() => {}
            Ok(m) => remove(&path, m.is_dir())?,
            Err(_) => {}
        }
        match f.kind {
            FileKind::Link => {
                let target = f.target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(target, &path).map_err(io("cannot create the link", &path))?;
                if let Some((uid, gid)) = who {
                    std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(io("cannot hand over", &path))?;
                }
            }
            FileKind::File if f.path == PG_CONTROL => {
                if std::fs::symlink_metadata(&path).is_ok() {
                    remove(&path, false)?;
                }
            }
            FileKind::File => {
                create_file(&path, f.mode, who)?;
            }
            FileKind::Dir => {}
        }
    }
    Ok(out)
}

/// Creates (or truncates) a file with `mode`, owned by `who`.
fn create_file(path: &Path, mode: u32, who: Option<(u32, u32)>) -> Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode & 0o7777)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(io("cannot create", path))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777)).map_err(io("cannot set the mode of", path))?;
    if let Some((uid, gid)) = who {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io("cannot hand over", path))?;
    }
    Ok(file)
}

/// A slice of one part that belongs to one file.
#[derive(Debug, Clone, Copy)]
struct Seg {
    file: usize,
    file_pos: u64,
    part_pos: usize,
    len: usize,
}

/// Shared by the part writers.
struct Writers {
    to: PathBuf,
    files: Vec<FileEntry>,
    /// Bytes still to write per file; the writer that brings it to 0 hands
    /// the file to the writeback thread.
    left: Vec<AtomicU64>,
    control: Mutex<Vec<u8>>,
    sync: Mutex<std::sync::mpsc::Sender<PathBuf>>,
}

impl Writers {
    fn write(&self, plain: &[u8], segs: &[Seg]) -> Result<()> {
        for s in segs {
            let f = &self.files[s.file];
            let bytes = &plain[s.part_pos..s.part_pos + s.len];
            if f.path == PG_CONTROL {
                let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
                c.resize(f.size as usize, 0);
                c[s.file_pos as usize..s.file_pos as usize + s.len].copy_from_slice(bytes);
                continue;
            }
            let path = self.to.join(&f.path);
            let file = open_nofollow(&path, true).map_err(io("cannot open", &path))?;
            for (k, chunk) in bytes.chunks(WRITE_CHUNK).enumerate() {
                let at = s.file_pos + (k * WRITE_CHUNK) as u64;
                file.write_all_at(chunk, at).map_err(io("cannot write", &path))?;
            }
            if self.left[s.file].fetch_sub(s.len as u64, Ordering::AcqRel) == s.len as u64 {
                let _ = self.sync.lock().unwrap_or_else(|e| e.into_inner()).send(path);
            }
        }
        Ok(())
    }
}

/// Writes `m`'s files into `to` (which exists, owned by the server's user);
/// with `delta`, keeps what is already right and removes what the backup
/// does not have (see the module docs). The caller has checked that no
/// server runs there.
pub async fn extract(
    dest: &Dest,
    m: &Manifest,
    to: &Path,
    workers: usize,
    run_as: &RunAs,
    delta: bool,
    progress: &Progress,
) -> Result<FileCounts> {
    check_list(m)?;
    let files = m.files.clone();
    let to = to.to_path_buf();
    let who = owner(run_as);
    let (files, keep, removed, dirs) = {
        let to = to.clone();
        let run = run_as.clone();
        tokio::task::spawn_blocking(move || -> Result<_> {
            let (keep, removed) = if delta {
                let s = scan(&to, &files, workers, &run)?;
                (s.keep, s.removed)
            } else {
                (vec![false; files.len()], 0)
            };
            let dirs = prepare(&to, &files, &keep, &run)?;
            Ok((files, keep, removed, dirs))
        })
        .await
        .map_err(|e| BackupError::Other(format!("restore task failed: {e}")))??
    };

    let mut counts = FileCounts { removed, ..FileCounts::default() };
    let write: Vec<usize> = (0..files.len()).filter(|i| files[*i].kind == FileKind::File && !keep[*i]).collect();
    for (i, f) in files.iter().enumerate() {
        if f.kind == FileKind::File {
            if keep[i] {
                counts.kept += 1;
                counts.kept_bytes += f.size;
            } else {
                counts.written += 1;
                counts.written_bytes += f.size;
            }
        }
    }

    // Which slices of which parts go where.
    let mut starts = Vec::with_capacity(m.objects.len());
    let mut at = 0u64;
    for o in &m.objects {
        starts.push(at);
        at += o.plain_size;
    }
    let mut per_part: Vec<Vec<Seg>> = vec![Vec::new(); m.objects.len()];
    for &i in &write {
        let f = &files[i];
        let (mut off, end) = (f.offset, f.offset + f.size);
        let mut p = starts.partition_point(|s| *s <= off).saturating_sub(1);
        while off < end && p < m.objects.len() {
            let (pstart, pend) = (starts[p], starts[p] + m.objects[p].plain_size);
            if pend > off {
                let len = end.min(pend) - off;
                per_part[p].push(Seg {
                    file: i,
                    file_pos: off - f.offset,
                    part_pos: (off - pstart) as usize,
                    len: len as usize,
                });
                off += len;
            }
            p += 1;
        }
    }
    let needed: Vec<(usize, Vec<Seg>)> = per_part.into_iter().enumerate().filter(|(_, s)| !s.is_empty()).collect();
    progress.total.store(needed.iter().map(|(p, _)| m.objects[*p].plain_size).sum(), Ordering::Relaxed);

    // Files as they complete: written back on a thread of its own
    // (fdatasync, one file at a time), so the disk works while later parts
    // are decompressed and the writers never wait for it; the fsyncs of
    // every file come after the last write and find little left to do.
    // (Fsyncing each file in the writer that completed it made writes wait
    // on journal commits: three times as long. Starting writeback with
    // posix_fadvise(DONTNEED) instead also dropped the restored files from
    // the page cache, so a delta restore after it read them all back from
    // the disk: 146 of 786 MiB still cached after a full restore, against
    // all of it with fdatasync; see bench/RESULTS-backup.md.)
    let (sync_tx, sync_rx) = std::sync::mpsc::channel::<PathBuf>();
    let writers = Arc::new(Writers {
        to: to.clone(),
        left: files.iter().map(|f| AtomicU64::new(f.size)).collect(),
        files,
        control: Mutex::new(Vec::new()),
        sync: Mutex::new(sync_tx),
    });
    let kicker = std::thread::spawn(move || {
        while let Ok(path) = sync_rx.recv() {
            // Best effort: the fsync after the last write reports failures.
            if let Ok(f) = open_nofollow(&path, false) {
                let _ = f.sync_data();
            }
        }
    });

    let stream = futures::stream::iter(needed)
        .map(|(p, segs)| {
            let o = m.objects[p].clone();
            let key = manifest::part_key(&m.cluster, &m.id, &o.name);
            let w = writers.clone();
            async move {
                let data = dest.get(&key).await?;
                let keys = dest.keys.clone();
                let dname = dest.name.clone();
                tokio::task::spawn_blocking(move || {
                    let plain = match crate::base::check_object(&key, &o, &data, &keys, true) {
                        Ok(Some(plain)) => plain,
                        Ok(None) => return Err(BackupError::Other(format!("{key}: not decrypted"))),
                        Err((trouble, detail)) => {
                            return Err(BackupError::Object { dest: dname, key, trouble, detail });
                        }
                    };
                    w.write(&plain, &segs)?;
                    Ok((plain.len() as u64, data.len() as u64))
                })
                .await
                .map_err(|e| BackupError::Other(format!("restore task failed: {e}")))?
            }
        })
        .buffer_unordered(workers.max(1) + 1);
    let mut stream = Box::pin(stream);
    while let Some(item) = stream.next().await {
        // On an error the pool ends by itself once the writers still
        // running are done (the last one closes the channel).
        let (plain, stored) = item?;
        progress.add(plain, stored);
    }
    drop(stream);
    let Ok(writers) = Arc::try_unwrap(writers) else {
        return Err(BackupError::Other("restore: part writers still running".into()));
    };
    let control = writers.control.into_inner().unwrap_or_else(|e| e.into_inner());
    let files = writers.files;
    drop(writers.sync);
    let _ = kicker.join();

    tokio::task::spawn_blocking(move || -> Result<()> {
        // Every written file, several at once (concurrent fsyncs share
        // journal commits).
        let next = AtomicUsize::new(0);
        let failed: Mutex<Option<BackupError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..SYNC_THREADS {
                s.spawn(|| {
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = write.get(k) else { break };
                        if files[i].path == PG_CONTROL {
                            continue;
                        }
                        let path = to.join(&files[i].path);
                        if let Err(e) = open_nofollow(&path, false).and_then(|f| f.sync_all()) {
                            failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(BackupError::Io {
                                what: format!("cannot fsync {}", path.display()),
                                source: e,
                            });
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        // Everything else is durable: now pg_control, then every folder.
        if let Some(i) = files.iter().position(|f| f.path == PG_CONTROL && f.kind == FileKind::File)
            && !keep[i]
        {
            let f = &files[i];
            if control.len() as u64 != f.size {
                return Err(BackupError::Other(format!(
                    "{PG_CONTROL}: {} bytes restored, the backup lists {}",
                    control.len(),
                    f.size
                )));
            }
            let path = to.join(PG_CONTROL);
            let file = create_file(&path, f.mode, who)?;
            file.write_all_at(&control, 0).map_err(io("cannot write", &path))?;
            file.sync_all().map_err(io("cannot fsync", &path))?;
        }
        for d in &dirs {
            File::open(d).and_then(|f| f.sync_all()).map_err(io("cannot fsync", d))?;
        }
        // The entry of the data directory itself (best effort: the parent may not be readable).
        if let Some(parent) = to.parent() {
            let _ = File::open(parent).and_then(|f| f.sync_all());
        }
        Ok(())
    })
    .await
    .map_err(|e| BackupError::Other(format!("restore task failed: {e}")))??;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Object;

    fn entry(path: &str, kind: FileKind, size: u64, offset: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind,
            mode: 0o600,
            size,
            offset,
            blake3: String::new(),
            target: (kind == FileKind::Link).then(|| "/elsewhere".into()),
        }
    }

    fn manifest(files: Vec<FileEntry>) -> Manifest {
        let mut m = crate::manifest::tests::sample("c", "x");
        m.objects = vec![Object {
            name: "data/000000".into(),
            plain_size: 4096,
            plain_blake3: String::new(),
            stored_size: 0,
            stored_blake3: String::new(),
        }];
        m.files = files;
        m
    }

    #[test]
    fn unsafe_lists_are_refused() {
        let ok = vec![
            entry("base", FileKind::Dir, 0, 0),
            entry("base/1", FileKind::File, 100, 512),
            entry("pg_tblspc/1", FileKind::Link, 0, 0),
        ];
        assert!(check_list(&manifest(ok.clone())).is_ok());
        for bad in [
            vec![entry("../x", FileKind::File, 1, 512)],
            vec![entry("/etc/x", FileKind::File, 1, 512)],
            vec![entry("a/./b", FileKind::File, 1, 512)],
            vec![entry("a", FileKind::File, 1, 512), entry("a", FileKind::File, 1, 512)],
            vec![entry("a", FileKind::File, 1, 4096)],
            vec![entry("a", FileKind::File, u64::MAX, 2)],
            vec![entry("pg_tblspc/1", FileKind::Link, 0, 0), entry("pg_tblspc/1/PG_15/f", FileKind::File, 1, 512)],
            vec![entry("f", FileKind::File, 1, 512), entry("f/g", FileKind::File, 1, 600)],
        ] {
            assert!(check_list(&manifest(bad.clone())).is_err(), "{bad:?}");
        }
    }
}
