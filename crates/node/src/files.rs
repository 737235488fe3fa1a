//! Reading and writing files in folders the server's user controls, without
//! being turned against the host.
//!
//! The agent often runs as root while the data directory (and often its
//! parent) belongs to `postgres`. Whoever holds that account can plant a
//! symbolic link, a FIFO or a huge file where pgdr is about to write or read
//! (`postgresql.conf` → `/etc/shadow`). So here:
//!
//! - writes never go through an existing name: a fresh temporary file is
//!   created beside the target with `O_CREAT|O_EXCL|O_NOFOLLOW`, handed to
//!   the server's user through its open descriptor (`fchown`, never a path
//!   that could be swapped), synced, then renamed over the target (a rename
//!   replaces a planted link itself, never what it points to);
//! - reads open with `O_NOFOLLOW|O_NONBLOCK` (a FIFO cannot hang us), accept
//!   only regular files and read at most a bounded number of bytes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::OFlag;

use crate::os::RunAs;

/// The most a configuration or status file pgdr reads may hold.
pub const MAX_READ: u64 = 4 << 20;

fn nofollow() -> i32 {
    (OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits()
}

/// Opens `path` for reading without following a symbolic link in its last
/// component; anything but a regular file is refused.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    let f =
        OpenOptions::new().read(true).custom_flags(nofollow() | OFlag::O_NONBLOCK.bits()).open(path).map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "is a symbolic link; pgdr does not follow links in folders the server's user controls",
                )
            } else {
                e
            }
        })?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "is not a regular file"));
    }
    Ok(f)
}

/// Reads a whole text file of at most `max` bytes, without following a
/// link; `NotFound` when it is not there.
pub fn read_limited(path: &Path, max: u64) -> std::io::Result<String> {
    let f = open_regular(path)?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("is larger than {max} bytes; pgdr does not read it"),
        ));
    }
    String::from_utf8(buf).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "is not UTF-8"))
}

/// [`read_limited`] with [`MAX_READ`].
pub fn read(path: &Path) -> std::io::Result<String> {
    read_limited(path, MAX_READ)
}

/// The last `max` bytes of a regular file (not following a link), lossily
/// decoded; empty when it cannot be read.
pub fn read_tail(path: &Path, max: u64) -> String {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = open_regular(path) else { return String::new() };
    let len = f.metadata().map(|m| m.size()).unwrap_or(0);
    if len > max && f.seek(SeekFrom::Start(len - max)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.take(max).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a new file (never an existing name, never through a link) with
/// `mode`, owned by `owner`'s user. Fails with `AlreadyExists` when the name
/// is taken.
pub fn create_new(path: &Path, mode: u32, owner: &RunAs) -> std::io::Result<File> {
    let f = OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(nofollow()).open(path)?;
    if let Some((_, uid, gid)) = &owner.user {
        std::os::unix::fs::fchown(&f, Some(*uid), Some(*gid))?;
    }
    Ok(f)
}

/// Replaces `path` with `contents` atomically: a fresh temporary file beside
/// it (`O_EXCL|O_NOFOLLOW`, mode `mode`, owned by `owner`'s user through its
/// descriptor), synced, renamed over `path`. A link planted at `path` is
/// replaced, its target untouched.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32, owner: &RunAs) -> std::io::Result<()> {
    let tmp = temp_name(path);
    let res = (|| {
        let mut f = create_new(&tmp, mode, owner)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nonce: u32 = rand_u32();
    path.with_file_name(format!(".{name}.pgdr-{}-{n}-{nonce:08x}.tmp", std::process::id()))
}

/// Not for secrets: only makes a temporary name hard to guess ahead (the
/// `O_EXCL` open is what makes it safe).
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish() as u32
}

/// Makes sure `dir` is a real directory (not a link) and hands it to
/// `owner`'s user without following a link.
pub fn give_dir(dir: &Path, owner: &RunAs) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "is not a directory (or is a link)"));
    }
    if let Some((_, uid, gid)) = &owner.user {
        std::os::unix::fs::lchown(dir, Some(*uid), Some(*gid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_link_is_replaced_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").expect("write");
        let conf = dir.path().join("pgdr.conf");
        std::os::unix::fs::symlink(&victim, &conf).expect("symlink");
        assert!(read(&conf).is_err(), "a link is not read through");
        write_atomic(&conf, b"port = 5432\n", 0o600, &RunAs::default()).expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious");
        assert!(std::fs::symlink_metadata(&conf).expect("meta").file_type().is_file());
        assert_eq!(read(&conf).expect("read"), "port = 5432\n");
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 2);
    }

    #[test]
    fn create_new_refuses_a_link_and_an_existing_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").expect("write");
        let link = dir.path().join("log");
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
        assert!(create_new(&link, 0o600, &RunAs::default()).is_err());
        assert!(create_new(&victim, 0o600, &RunAs::default()).is_err());
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious");
    }

    #[test]
    fn reads_are_bounded_and_refuse_fifos() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 100]).expect("write");
        assert!(read_limited(&big, 99).is_err());
        assert_eq!(read_limited(&big, 100).expect("read").len(), 100);
        assert_eq!(read_tail(&big, 10).len(), 10);
        let fifo = dir.path().join("postmaster.pid");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        assert!(read(&fifo).is_err(), "a FIFO is refused without blocking");
        assert!(read(&dir.path().join("absent")).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound));
    }
}
