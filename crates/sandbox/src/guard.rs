//! [`SandboxGuard`]: a sandbox for a test, torn down when the guard is
//! dropped (test passed or panicked), so nothing keeps running.

use std::ops::Deref;
use std::path::Path;

use crate::SandboxError;
use crate::up::{Sandbox, SandboxBuilder};

/// Owns a running sandbox (and, from [`SandboxGuard::start_temp`], its
/// temporary folder). Dropping it runs `down` synchronously.
#[derive(Debug)]
pub struct SandboxGuard {
    sandbox: Sandbox,
    tmp: Option<tempfile::TempDir>,
}

impl SandboxGuard {
    pub fn new(sandbox: Sandbox) -> SandboxGuard {
        SandboxGuard { sandbox, tmp: None }
    }

    /// Starts `builder` in a fresh folder under /tmp (readable by the
    /// PostgreSQL user), removed on drop.
    pub async fn start_temp(builder: SandboxBuilder, pgdr: &Path) -> Result<SandboxGuard, SandboxError> {
        let tmp = tempfile::Builder::new()
            .prefix("pgdr-sandbox-")
            .tempdir_in("/tmp")
            .map_err(SandboxError::io(Path::new("/tmp")))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(SandboxError::io(tmp.path()))?;
        }
        let dir = tmp.path().join("sb");
        let sandbox = builder.dir(&dir).start(pgdr).await?;
        Ok(SandboxGuard { sandbox, tmp: Some(tmp) })
    }

    /// The temporary folder holding the sandbox, when the guard made it.
    pub fn temp_root(&self) -> Option<&Path> {
        self.tmp.as_ref().map(|t| t.path())
    }
}

impl Deref for SandboxGuard {
    type Target = Sandbox;

    fn deref(&self) -> &Sandbox {
        &self.sandbox
    }
}

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        // A failing test's logs, kept when asked (PGDR_KEEP_LOGS=<dir>).
        if let Some(to) = std::env::var_os("PGDR_KEEP_LOGS").filter(|_| std::thread::panicking()) {
            let to = Path::new(&to).join(format!("sandbox-{}", std::process::id()));
            match keep_logs(&self.sandbox.dir, &to) {
                Ok(()) => eprintln!("sandbox guard: logs kept in {}", to.display()),
                Err(e) => eprintln!("sandbox guard: keeping the logs in {} failed: {e}", to.display()),
            }
        }
        if let Err(e) = crate::down(&self.sandbox.dir, false) {
            eprintln!("sandbox guard: tearing down {} failed: {e}", self.sandbox.dir.display());
        }
    }
}

/// Copies every `*.log` file under `from` (pgdr's and PostgreSQL's) to `to`,
/// keeping the folder layout.
fn keep_logs(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            keep_logs(&path, &target)?;
        } else if path.extension().is_some_and(|e| e == "log") {
            std::fs::create_dir_all(to)?;
            std::fs::copy(&path, &target)?;
        }
    }
    Ok(())
}
