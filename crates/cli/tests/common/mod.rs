//! What the end-to-end tests of `pgdr` share: waiting for a condition,
//! `pgdr run` as a child process, processes frozen with SIGSTOP. Each test
//! binary uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const PGDR: &str = env!("CARGO_BIN_EXE_pgdr");

/// Polls `f` every 50 ms until it returns `Some`; panics naming `what`
/// after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port, reserved for this test process as the sandboxes
/// reserve theirs: below the kernel's ephemeral range, so neither an
/// outgoing connection nor another test's `bind(0)` takes it before the
/// server it is meant for binds it.
pub fn free_port() -> u16 {
    pgdr_sandbox::reserve_ports(1).expect("a free loopback port")[0]
}

/// Milliseconds since the Unix epoch, as the drills' timelines count.
pub fn unix_ms() -> f64 {
    pgdr_drill::unix_ms(std::time::SystemTime::now())
}

/// The last `n` lines of a log file (empty when it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `pgdr run` (controller and proxies) as a child process with its log in
/// `logs/`, killed (SIGKILL, by PID) and reaped on drop; on a failing test
/// the log's tail is printed.
pub struct Run {
    pub child: Child,
    pub log: PathBuf,
}

impl Run {
    /// `pgdr run --config CONFIG [ARGS]` in `dir`, logging to `dir/logs/LOG`.
    pub fn start(dir: &Path, config: &Path, args: &[&str], log: &str) -> Run {
        let log = dir.join("logs").join(log);
        let out = std::fs::File::create(&log).expect("run log");
        let err = out.try_clone().expect("run log");
        let child = Command::new(PGDR)
            .arg("run")
            .args(args)
            .arg("--config")
            .arg(config)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start pgdr run");
        Run { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether the log has `words` yet.
    pub fn log_has(&self, words: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|t| t.contains(words))
    }

    /// Panics with the log's tail when the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("pgdr run exited ({status}):\n{}", tail(&self.log, 40));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} (last 60 lines)\n{}", self.log.display(), tail(&self.log, 60));
        }
    }
}

/// Processes stopped with SIGSTOP, continued when dropped: a failing test
/// leaves nothing frozen for the teardown to wait on.
pub struct Frozen(pub Vec<i32>);

impl Frozen {
    pub fn stop(pids: Vec<i32>) -> Frozen {
        for p in &pids {
            let _ = kill(Pid::from_raw(*p), Signal::SIGSTOP);
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = kill(Pid::from_raw(*p), Signal::SIGCONT);
        }
    }
}
