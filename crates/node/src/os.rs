//! Running PostgreSQL's programs as the right operating-system user.
//!
//! PostgreSQL refuses to run as root. When pgdr runs as root (as CI and many
//! operators do) every server program is started as an unprivileged user
//! (`postgres` by default) and the files it needs are handed to that user.

use std::path::Path;

use nix::unistd::{Gid, Uid, User, chown};

#[derive(Debug, thiserror::Error)]
pub enum OsError {
    #[error(
        "pgdr runs as root and PostgreSQL refuses to: the user {0:?} to run it as does not exist (create it, or set os_user for the node)"
    )]
    NoSuchUser(String),
    #[error("cannot look up user {user:?}: {source}")]
    Lookup { user: String, source: nix::Error },
    #[error("cannot hand {} to user {user}: {source}", path.display())]
    Chown { path: std::path::PathBuf, user: String, source: nix::Error },
    #[error(
        "user {user} cannot reach {}: a parent folder is not searchable by that user (use a folder such as /tmp/pgdr-sandbox, or open the parents with chmod o+x)",
        path.display()
    )]
    Unreachable { path: std::path::PathBuf, user: String },
}

/// Who PostgreSQL's programs run as. `None` fields mean "as ourselves".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunAs {
    pub user: Option<(String, u32, u32)>,
}

impl RunAs {
    /// As ourselves when not root; as `os_user` (default `postgres`) when root.
    pub fn for_node(os_user: Option<&str>) -> Result<RunAs, OsError> {
        if !Uid::effective().is_root() {
            return Ok(RunAs::default());
        }
        let name = os_user.unwrap_or("postgres");
        let user = User::from_name(name)
            .map_err(|source| OsError::Lookup { user: name.to_owned(), source })?
            .ok_or_else(|| OsError::NoSuchUser(name.to_owned()))?;
        Ok(RunAs { user: Some((name.to_owned(), user.uid.as_raw(), user.gid.as_raw())) })
    }

    pub fn name(&self) -> Option<&str> {
        self.user.as_ref().map(|(n, _, _)| n.as_str())
    }

    /// Applies the user to a command about to be spawned, with the user's
    /// own `HOME`: libpq looks for a client certificate under
    /// `~/.postgresql/`, and root's is unreadable to the server's user.
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        if let Some((_, uid, gid)) = &self.user {
            cmd.uid(*uid).gid(*gid);
            if let Some(home) = home_of(*uid) {
                cmd.env("HOME", home);
            }
        }
    }

    /// Same for a std command.
    pub fn apply_std(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        if let Some((_, uid, gid)) = &self.user {
            cmd.uid(*uid).gid(*gid);
            if let Some(home) = home_of(*uid) {
                cmd.env("HOME", home);
            }
        }
    }

    /// Hands a path we created to the user (no-op when running as ourselves).
    pub fn give(&self, path: &Path) -> Result<(), OsError> {
        if let Some((name, uid, gid)) = &self.user {
            chown(path, Some(Uid::from_raw(*uid)), Some(Gid::from_raw(*gid))).map_err(|source| OsError::Chown {
                path: path.to_owned(),
                user: name.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Checks that the user can reach `path`: every existing parent must be
    /// searchable (x) by it. Catches a sandbox under /root before initdb fails
    /// with a confusing message.
    pub fn check_reachable(&self, path: &Path) -> Result<(), OsError> {
        use std::os::unix::fs::MetadataExt;
        let Some((name, uid, gid)) = &self.user else {
            return Ok(());
        };
        let mut p = path.to_path_buf();
        let mut ancestors = Vec::new();
        while let Some(parent) = p.parent() {
            ancestors.push(parent.to_path_buf());
            p = parent.to_path_buf();
        }
        for a in ancestors {
            let Ok(meta) = std::fs::metadata(&a) else { continue };
            let mode = meta.mode();
            let ok = if meta.uid() == *uid {
                mode & 0o100 != 0
            } else if meta.gid() == *gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !ok {
                return Err(OsError::Unreachable { path: path.to_owned(), user: name.clone() });
            }
        }
        Ok(())
    }
}

fn home_of(uid: u32) -> Option<std::path::PathBuf> {
    User::from_uid(Uid::from_raw(uid)).ok().flatten().map(|u| u.dir)
}
