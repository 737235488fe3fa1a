//! PostgreSQL processes a dead postmaster left behind, found through
//! `/proc` and stopped.
//!
//! A postmaster killed with SIGKILL (a drill, the OOM killer) leaves its
//! backends running: each exits at its next wait for a client or a lock,
//! but one busy in a loop, or waiting on a lightweight lock whose holder
//! died with the postmaster, runs on with nobody to stop it. It keeps the
//! old shared memory attached, so a new postmaster in the same data
//! directory refuses to start ("pre-existing shared memory block ... is
//! still in use"), and a rebuild that moves the data directory aside leaves
//! it running in `data.old-*`. [`crate::LocalPg::stop_leftovers`] stops
//! those of one data directory, the sandbox's `down` those of its folder.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Sends SIGCONT (a drill may have frozen it) and SIGKILL to every process
/// running `postgres` (the server program's path with links resolved, as
/// `/proc/<pid>/exe` shows it) whose working folder `cwd_matches` accepts
/// (a removed folder reads as `<path> (deleted)`), and returns their PIDs.
///
/// A live postmaster and its children are never among them: a process the
/// `postmaster.pid` of its working folder names is a postmaster, and one
/// whose parent runs `postgres` too is a live postmaster's child (an
/// orphan's parent is init or a subreaper). Each is logged at WARN with its
/// PID and working folder.
pub fn stop(postgres: &Path, cwd_matches: impl Fn(&Path) -> bool) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut stopped = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if !runs(pid, postgres) {
            continue;
        }
        let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else { continue };
        if !cwd_matches(&cwd) || names_itself(&cwd, pid) || parent(pid).is_some_and(|p| runs(p, postgres)) {
            continue;
        }
        tracing::warn!(pid, cwd = %cwd.display(), "a PostgreSQL process outlived its postmaster; sending SIGKILL");
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            stopped.push(pid);
        }
    }
    stopped
}

/// `path` with its links resolved, as `/proc` shows a program or a working
/// folder; a path that does not exist (yet) is resolved as far as its
/// parent.
pub fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    match (path.parent().and_then(|p| std::fs::canonicalize(p).ok()), path.file_name()) {
        (Some(parent), Some(name)) => parent.join(name),
        _ => path.to_owned(),
    }
}

fn runs(pid: i32, program: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == program)
}

/// The `postmaster.pid` in `dir` names `pid`: it is that folder's postmaster.
fn names_itself(dir: &Path, pid: i32) -> bool {
    crate::local::postmaster_pid(dir) == Some(pid)
}

/// The parent's PID of a process, from `/proc/<pid>/stat`.
pub fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command: the state, then the parent's PID.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}
