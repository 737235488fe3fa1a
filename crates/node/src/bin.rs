//! Finding PostgreSQL's server binaries: an explicit folder, `pg_config
//! --bindir`, `PATH`, or `/usr/lib/postgresql/*/bin`, newest version first.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum BinError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb and pg_ctl in {searched}); install PostgreSQL 13 or newer (Debian: apt-get install postgresql) or set bin_dir for the node"
    )]
    NotFound { searched: String },
    #[error("{}: {what} not found in this folder", dir.display())]
    Missing { dir: PathBuf, what: &'static str },
    #[error("cannot tell the version of {}: {detail}", path.display())]
    Version { path: PathBuf, detail: String },
}

/// A folder holding `initdb`, `pg_ctl`, `postgres`, `pg_basebackup`, `pg_rewind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    pub dir: PathBuf,
    /// Major version, like 15.
    pub major: u32,
}

impl PgBinaries {
    /// Uses `dir` when given, else searches the usual places.
    pub fn find(dir: Option<&Path>) -> Result<PgBinaries, BinError> {
        if let Some(dir) = dir {
            return Self::at(dir);
        }
        let mut searched = Vec::new();
        for candidate in candidates() {
            searched.push(candidate.display().to_string());
            if candidate.join("initdb").is_file()
                && candidate.join("pg_ctl").is_file()
                && let Ok(b) = Self::at(&candidate)
            {
                return Ok(b);
            }
        }
        Err(BinError::NotFound { searched: searched.join(", ") })
    }

    /// Uses the binaries in `dir`, checking they are there.
    pub fn at(dir: &Path) -> Result<PgBinaries, BinError> {
        for what in ["initdb", "pg_ctl", "postgres"] {
            if !dir.join(what).is_file() {
                return Err(BinError::Missing { dir: dir.to_owned(), what });
            }
        }
        let path = dir.join("postgres");
        let out = Command::new(&path)
            .arg("--version")
            .output()
            .map_err(|e| BinError::Version { path: path.clone(), detail: e.to_string() })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let major = parse_major(&text)
            .ok_or_else(|| BinError::Version { path: path.clone(), detail: text.trim().to_owned() })?;
        Ok(PgBinaries { dir: dir.to_owned(), major })
    }

    pub fn path(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }
}

/// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" → 15.
fn parse_major(text: &str) -> Option<u32> {
    let v = text.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    v.split(['.', ' ']).next()?.parse().ok()
}

fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(o) = Command::new("pg_config").arg("--bindir").output()
        && o.status.success()
    {
        let dir = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        if !dir.is_empty() {
            out.push(PathBuf::from(dir));
        }
    }
    // Debian's layout, newest major first.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    let debian: Vec<PathBuf> = versions.into_iter().map(|(_, p)| p).collect();
    // Debian's pg_config --bindir names /usr/bin, whose initdb is missing:
    // prefer the versioned folders over it.
    out.retain(|p| p.join("initdb").is_file());
    out.extend(debian);
    if let Some(path) = std::env::var_os("PATH") {
        out.extend(std::env::split_paths(&path));
    }
    out.extend(["/usr/local/pgsql/bin", "/opt/homebrew/bin"].map(PathBuf::from));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major() {
        assert_eq!(parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"), Some(15));
        assert_eq!(parse_major("postgres (PostgreSQL) 17.0"), Some(17));
        assert_eq!(parse_major("nothing"), None);
    }

    #[test]
    fn missing_dir_is_clear() {
        let err = PgBinaries::at(Path::new("/nonexistent")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("/nonexistent"), "{err}");
    }
}
