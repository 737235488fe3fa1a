//! Making a node a replica of another: physical replication slots on the
//! upstream, base backups, `pg_rewind`, and the standby configuration
//! (`standby.signal`, `primary_conninfo`, `primary_slot_name`).
//!
//! The agent's `rebuild`, `rewind` and `upstream` actions and the sandbox
//! are built on these functions, so a sandbox replica is made exactly the
//! way a re-established node is.

use std::path::PathBuf;
use std::time::Duration;

use crate::files;
use crate::local::{LocalPg, Login, PgError, PgTls, StopMode, conn_quote, connect, quote, valid_host};

/// The file pgdr keeps the standby settings in, included from
/// `postgresql.conf` after `pgdr.conf`.
pub const UPSTREAM_CONF: &str = "pgdr-upstream.conf";

/// Where a replica streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    /// Physical replication slot on the upstream.
    pub slot: Option<String>,
}

/// Everything a rebuild or rewind needs besides the node itself.
#[derive(Debug, Clone)]
pub struct ReplicaPlan {
    pub upstream: Upstream,
    /// A superuser login, used to create the slot and as `pg_rewind`'s source.
    pub login: Login,
    /// The role replicas stream as (`pg_basebackup`, `primary_conninfo`).
    pub replication_user: String,
    /// Shown on the upstream as `application_name`: the node's name.
    pub application_name: String,
    /// The node's own PostgreSQL settings (`LocalPg::configure`).
    pub settings: Vec<(String, String)>,
    /// How long starting and stopping may take.
    pub wait: Duration,
}

impl ReplicaPlan {
    /// `--no-sync` for pg_basebackup and pg_rewind when the node runs with
    /// `fsync = off` (a sandbox): durability is not asked for anyway.
    fn no_sync(&self) -> bool {
        self.settings.iter().any(|(k, v)| k == "fsync" && matches!(v.as_str(), "off" | "false" | "0"))
    }
}

impl LocalPg {
    /// The libpq password file beside the data directory, readable only by
    /// the server's user. pgdr's programs and the WAL receiver read the
    /// password from it, so it never appears on a command line or in a log.
    pub fn passfile(&self) -> PathBuf {
        sibling(&self.data_dir, ".pgpass")
    }

    /// Writes the password file (mode 600, owned by the server's user),
    /// replacing it atomically without following a link.
    pub fn write_passfile(&self, password: Option<&str>) -> Result<PathBuf, PgError> {
        let path = self.passfile();
        let mut line = String::new();
        if let Some(p) = password {
            line = format!("*:*:*:*:{}\n", passfile_escape(p));
        }
        files::write_atomic(&path, line.as_bytes(), 0o600, &self.run_as).map_err(PgError::io(&path))?;
        Ok(path)
    }

    /// Writes `standby.signal` and the upstream settings, and makes
    /// `postgresql.conf` include them. Takes effect on start, or on reload
    /// for a running replica (PostgreSQL 13+).
    /// With `tls`, the WAL receiver connects with `sslmode=verify-full` and
    /// the cluster's CA.
    pub fn write_standby_config(
        &self,
        upstream: &Upstream,
        user: &str,
        application_name: &str,
        tls: Option<&PgTls>,
    ) -> Result<(), PgError> {
        valid_host(&upstream.host).map_err(PgError::Invalid)?;
        // A replica's standby.signal is its own, never the boot guard's.
        crate::guard::forget(&self.data_dir)?;
        self.write_file("standby.signal", b"")?;
        let mut conninfo = format!(
            "host={} port={} user={} application_name={} passfile={} connect_timeout=2 keepalives=1 keepalives_idle=5 keepalives_interval=1 keepalives_count=3",
            conn_quote(&upstream.host),
            upstream.port,
            conn_quote(user),
            conn_quote(application_name),
            conn_quote(&self.passfile().display().to_string()),
        );
        match tls {
            Some(t) => conninfo.push_str(&t.libpq_params()),
            None => conninfo.push_str(" sslmode=disable"),
        }
        let mut body = String::from("# Written by pgdr: where this replica streams from.\n");
        body.push_str(&format!("primary_conninfo = {}\n", quote(&conninfo)));
        body.push_str(&format!("primary_slot_name = {}\n", quote(upstream.slot.as_deref().unwrap_or(""))));
        body.push_str("recovery_target_timeline = 'latest'\n");
        self.write_file(UPSTREAM_CONF, body.as_bytes())?;
        self.ensure_include(UPSTREAM_CONF)
    }

    /// Appends `include_if_exists = 'FILE'` to `postgresql.conf` once.
    pub fn ensure_include(&self, file: &str) -> Result<(), PgError> {
        let text = self.read_file("postgresql.conf")?;
        let include = format!("include_if_exists = {}", quote(file));
        if !text.lines().any(|l| l.trim() == include) {
            self.write_file("postgresql.conf", format!("{text}\n{include}\n").as_bytes())?;
        }
        Ok(())
    }

    /// Renames the data directory to `<data>.old-<timestamp>` and removes
    /// older ones, so at most one aside is kept. Returns the new name, or
    /// `None` when there was no data directory.
    pub fn move_aside(&self) -> Result<Option<PathBuf>, PgError> {
        if !self.data_dir.exists() {
            return Ok(None);
        }
        let stamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let aside = sibling(&self.data_dir, &format!(".old-{stamp}"));
        std::fs::rename(&self.data_dir, &aside).map_err(PgError::io(&self.data_dir))?;
        let prefix = format!("{}.old-", file_name(&self.data_dir));
        if let Some(parent) = self.data_dir.parent() {
            for entry in std::fs::read_dir(parent).map_err(PgError::io(parent))?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) && entry.path() != aside {
                    let p = entry.path();
                    std::fs::remove_dir_all(&p).map_err(PgError::io(&p))?;
                }
            }
        }
        Ok(Some(aside))
    }

    /// Copies the upstream into an empty data directory with
    /// `pg_basebackup -X stream -S slot`, as the replication user.
    pub async fn base_backup(&self, plan: &ReplicaPlan) -> Result<(), PgError> {
        self.prepare_dirs()?;
        let data = self.data_dir.display().to_string();
        let port = plan.upstream.port.to_string();
        let passfile = self.passfile().display().to_string();
        let mut args = vec![
            "-D",
            &data,
            "-h",
            &plan.upstream.host,
            "-p",
            &port,
            "-U",
            &plan.replication_user,
            "-X",
            "stream",
            "-c",
            "fast",
            "-w",
        ];
        if let Some(slot) = &plan.upstream.slot {
            args.extend(["-S", slot.as_str()]);
        }
        if plan.no_sync() {
            args.push("--no-sync");
        }
        let ssl = plan.login.tls.as_ref().map(PgTls::libpq_env);
        let mut env = vec![("PGPASSFILE", passfile.as_str()), ("PGAPPNAME", plan.application_name.as_str())];
        match &ssl {
            Some(vars) => env.extend(vars.iter().map(|(k, v)| (*k, v.as_str()))),
            None => env.push(("PGSSLMODE", "disable")),
        }
        self.run("pg_basebackup", &args, &env).await.map(|_| ())
    }

    /// `pg_rewind` from the upstream. The server must be stopped; PostgreSQL
    /// 13+'s pg_rewind itself runs a crashed target in single-user mode
    /// first so it is cleanly shut down.
    pub async fn pg_rewind(&self, plan: &ReplicaPlan) -> Result<(), PgError> {
        let data = format!("--target-pgdata={}", self.data_dir.display());
        let ssl = match &plan.login.tls {
            Some(t) => t.libpq_params(),
            None => " sslmode=disable".to_owned(),
        };
        let source = format!(
            "--source-server=host={} port={} user={} dbname={} passfile={} connect_timeout=5{ssl}",
            conn_quote(&plan.upstream.host),
            plan.upstream.port,
            conn_quote(&plan.login.user),
            conn_quote(&plan.login.database),
            conn_quote(&self.passfile().display().to_string())
        );
        let mut args = vec![data.as_str(), source.as_str()];
        if plan.no_sync() {
            args.push("--no-sync");
        }
        match self.run("pg_rewind", &args, &[]).await {
            Ok(_) => Ok(()),
            Err(PgError::Failed { output, .. }) if is_transient_rewind_failure(&output) => {
                Err(PgError::Invalid(format!("pg_rewind could not reach the source: {output}")))
            }
            Err(PgError::Failed { output, .. }) => Err(PgError::RewindImpossible(output)),
            Err(e) => Err(e),
        }
    }
}

fn is_transient_rewind_failure(output: &str) -> bool {
    output.contains("could not connect") || output.contains("connection to server")
}

fn upstream_conninfo(upstream: &Upstream, login: &Login) -> String {
    let mut conninfo = format!(
        "host={} port={} user={} dbname={} connect_timeout=5",
        conn_quote(&upstream.host),
        upstream.port,
        conn_quote(&login.user),
        conn_quote(&login.database)
    );
    if let Some(p) = &login.password {
        conninfo.push_str(&format!(" password={}", conn_quote(p)));
    }
    conninfo
}

/// Runs `CHECKPOINT` on the upstream.
pub async fn checkpoint(upstream: &Upstream, login: &Login) -> Result<(), PgError> {
    let addr = format!("{}:{}", upstream.host, upstream.port);
    let client = connect(&upstream_conninfo(upstream, login), &addr, login.tls.as_ref()).await?;
    client.batch_execute("checkpoint").await.map_err(|source| PgError::Query { addr, source })
}

/// Creates the physical replication slot on the upstream unless it exists.
/// Returns whether it was created.
pub async fn ensure_slot(upstream: &Upstream, login: &Login) -> Result<bool, PgError> {
    let Some(slot) = &upstream.slot else { return Ok(false) };
    let addr = format!("{}:{}", upstream.host, upstream.port);
    let client = connect(&upstream_conninfo(upstream, login), &addr, login.tls.as_ref()).await?;
    let rows = client
        .query(
            "select pg_create_physical_replication_slot($1::text::name, true) \
             where not exists (select 1 from pg_replication_slots where slot_name = $1::text::name)",
            &[slot],
        )
        .await
        .map_err(|source| PgError::Query { addr, source })?;
    Ok(!rows.is_empty())
}

/// What every rebuild does first: stop PostgreSQL and what a dead
/// postmaster left running there, check that no other server holds its
/// address, move the old data aside, make sure the
/// upstream keeps a slot for this node, write the passfile.
async fn prepare(pg: &LocalPg, plan: &ReplicaPlan, steps: &mut Vec<String>) -> Result<(), PgError> {
    if pg.is_running().await {
        pg.stop(StopMode::Fast, plan.wait).await?;
        steps.push("stopped PostgreSQL (fast)".to_owned());
    }
    stop_leftovers(pg, steps).await;
    // Refused before the old data is moved aside: the rebuilt server could
    // not listen on its address.
    pg.check_port_free(&plan.login).await?;
    if let Some(aside) = pg.move_aside()? {
        steps.push(format!("moved the old data directory to {}", aside.display()));
    }
    if ensure_slot(&plan.upstream, &plan.login).await? {
        steps.push(format!(
            "created replication slot {} on {}:{}",
            plan.upstream.slot.as_deref().unwrap_or_default(),
            plan.upstream.host,
            plan.upstream.port
        ));
    }
    pg.write_passfile(plan.login.password.as_deref())?;
    Ok(())
}

/// Rebuilds `pg` as a replica of `plan.upstream`: stop, move the old data
/// aside, make sure the slot exists, base backup, standby config, node
/// settings, start. Returns the steps taken, for the caller to report.
pub async fn rebuild(pg: &LocalPg, plan: &ReplicaPlan) -> Result<Vec<String>, PgError> {
    let mut steps = Vec::new();
    prepare(pg, plan, &mut steps).await?;
    pg.base_backup(plan).await?;
    steps.push(format!("base backup from {}:{}", plan.upstream.host, plan.upstream.port));
    finish_as_replica(pg, plan, &mut steps).await?;
    Ok(steps)
}

/// What restoring a backup into a data directory did (the caller's
/// restorer; this crate does not know the backup engine).
#[derive(Debug, Clone)]
pub struct Restored {
    /// One line for the steps: which backup, from where, how much, how fast.
    pub summary: String,
    /// The `restore_command` fetching the cluster's archived WAL from where
    /// the backup came from.
    pub restore_command: String,
}

/// Rebuilds `pg` as a replica of `plan.upstream` from a backup instead of
/// a base backup of the upstream, which then only streams to it: stop, move
/// the old data aside, make sure the slot exists, `restore` (writes the
/// backup's files into the data directory, nothing else), standby config
/// with a `restore_command` for the WAL between the backup and the slot,
/// node settings, start.
///
/// The slot is made before the restore: from then on the upstream keeps
/// the WAL this node will stream, and what came before is in the archive
/// (a primary keeps a segment until it is archived), so there is no gap.
pub async fn rebuild_from_backup(
    pg: &LocalPg,
    plan: &ReplicaPlan,
    restore: impl AsyncFnOnce(&LocalPg) -> Result<Restored, PgError>,
) -> Result<Vec<String>, PgError> {
    let mut steps = Vec::new();
    prepare(pg, plan, &mut steps).await?;
    let restored = restore(pg).await?;
    steps.push(restored.summary);
    // A restore may leave its own recovery settings: this node is a standby.
    for f in ["recovery.signal", "postmaster.pid"] {
        let _ = std::fs::remove_file(pg.data_dir.join(f));
    }
    // A backup taken from a replica carries the upstream that replica had
    // in postgresql.auto.conf, whose values override pgdr's files.
    if let Ok(text) = pg.read_file("postgresql.auto.conf") {
        let kept: String = text
            .lines()
            .filter(|l| {
                let k = l.split('=').next().unwrap_or("").trim();
                !["primary_conninfo", "primary_slot_name", "restore_command"].contains(&k)
                    && !k.starts_with("recovery_target")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        if kept != text {
            pg.write_file("postgresql.auto.conf", kept.as_bytes())?;
        }
    }
    let mut plan = plan.clone();
    plan.settings.retain(|(k, _)| k != "restore_command");
    plan.settings.push(("restore_command".into(), quote(&restored.restore_command)));
    finish_as_replica(pg, &plan, &mut steps).await?;
    Ok(steps)
}

/// Rewinds `pg` to follow `plan.upstream` (a new primary): stop, `pg_rewind`,
/// slot, standby config, node settings, start.
pub async fn rewind(pg: &LocalPg, plan: &ReplicaPlan) -> Result<Vec<String>, PgError> {
    let mut steps = Vec::new();
    if !std::fs::symlink_metadata(pg.data_dir.join("PG_VERSION")).is_ok_and(|m| m.file_type().is_file()) {
        return Err(PgError::RewindImpossible(format!("{} holds no data directory", pg.data_dir.display())));
    }
    if pg.is_running().await {
        pg.stop(StopMode::Fast, plan.wait).await?;
        steps.push("stopped PostgreSQL (fast)".to_owned());
    }
    // Recovering a crashed target (below, or pg_rewind's single-user run)
    // is refused while a leftover backend holds the old shared memory.
    stop_leftovers(pg, &mut steps).await;
    pg.check_port_free(&plan.login).await?;
    // After a crash pg_rewind runs the target's crash recovery in
    // single-user mode, which refuses standby mode: the boot guard's
    // standby.signal. Lifting the guard would let a start meanwhile (a
    // host reboot mid-rewind) take writes on the old timeline, so recover
    // under it instead: a start comes up read-only in standby mode, and a
    // fast stop leaves the data directory "shut down in recovery", which
    // pg_rewind takes as clean.
    if crate::guard::armed(&pg.data_dir)
        && let Ok(c) = pg.control_data().await
        && !c.shut_down_cleanly()
    {
        pg.start(plan.wait).await?;
        pg.stop(StopMode::Fast, plan.wait).await?;
        steps.push(format!("crash recovery under the boot guard (read-only start, fast stop; was {})", c.state));
    }
    pg.write_passfile(plan.login.password.as_deref())?;
    // A just-promoted source records its new timeline in pg_control only at
    // its next checkpoint; before that pg_rewind sees no divergence.
    checkpoint(&plan.upstream, &plan.login).await?;
    steps.push("CHECKPOINT on the source".to_owned());
    pg.pg_rewind(plan).await?;
    steps.push(format!("pg_rewind from {}:{}", plan.upstream.host, plan.upstream.port));
    if ensure_slot(&plan.upstream, &plan.login).await? {
        steps.push(format!(
            "created replication slot {} on the upstream",
            plan.upstream.slot.as_deref().unwrap_or_default()
        ));
    }
    // pg_rewind copied the source's files; a stale pid file would stop start.
    let _ = std::fs::remove_file(pg.data_dir.join("postmaster.pid"));
    finish_as_replica(pg, plan, &mut steps).await?;
    Ok(steps)
}

/// Stops the processes a dead postmaster left in the data directory (see
/// [`LocalPg::stop_leftovers`]), with a step when there were any.
async fn stop_leftovers(pg: &LocalPg, steps: &mut Vec<String>) {
    let stopped = pg.stop_leftovers().await;
    if !stopped.is_empty() {
        steps.push(format!(
            "killed {} PostgreSQL process(es) a dead postmaster left in the data directory (pids {stopped:?})",
            stopped.len()
        ));
    }
}

async fn finish_as_replica(pg: &LocalPg, plan: &ReplicaPlan, steps: &mut Vec<String>) -> Result<(), PgError> {
    // The socket folder `configure` names may not exist yet: a server pgdr
    // adopted kept its own until its first rewind or rebuild.
    pg.prepare_dirs()?;
    // The copy carries the source's pgdr.conf (its port): write ours.
    pg.configure(&plan.settings)?;
    pg.write_standby_config(&plan.upstream, &plan.replication_user, &plan.application_name, plan.login.tls.as_ref())?;
    steps.push(format!(
        "standby config: primary {}:{} slot {}",
        plan.upstream.host,
        plan.upstream.port,
        plan.upstream.slot.as_deref().unwrap_or("(none)")
    ));
    pg.start(plan.wait).await?;
    steps.push("started PostgreSQL as a replica".to_owned());
    Ok(())
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// `/a/data` + `.x` → `/a/data.x`.
pub(crate) fn sibling(p: &std::path::Path, suffix: &str) -> PathBuf {
    p.with_file_name(format!("{}{suffix}", file_name(p)))
}

/// Escapes `:` and `\` for a libpq password file.
fn passfile_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(passfile_escape(r"a:b\c"), r"a\:b\\c");
        assert_eq!(sibling(std::path::Path::new("/x/data"), ".pgpass"), PathBuf::from("/x/data.pgpass"));
    }
}
