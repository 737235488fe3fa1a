//! `pgdr replica add`: a new replica (or, in another region, a standby) of
//! a cluster, built from its current primary by the new node's agent (the
//! agent's `rebuild`: slot, base backup, standby config, start), with the
//! progress read on the primary (bytes copied, throughput, time left) until
//! the new node streams. With `--from-backup` the agent restores the
//! cluster's latest backup instead and replays the WAL archived since, so
//! the primary is not read for the copy; it only streams what comes after.
//!
//! Before anything is written it checks the primary can feed one more node
//! (the same checks as `pgdr adopt`, for the new node's host), applying the
//! reload-level fixes with `--apply-reloadable`. Exit codes: 0 streaming,
//! 1 the build failed or the primary lacks something, 2 bad usage or config.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use pgdr_api::agent::{AgentClient, Endpoint, FromBackup, RebuildRequest};
use pgdr_config::Config;
use pgdr_config::edit::q;
use pgdr_model::{Epoch, NodeName};
use pgdr_node::adopt::{Facts, Level, Needs, gaps};
use serde_json::json;

use super::Global;
use super::adopt::{Target, apply, print_gaps};
use crate::exit::Usage;

#[derive(Debug, Subcommand)]
pub enum ReplicaCmd {
    /// Build a new replica or standby from the current primary (or the latest backup) and wait until it streams.
    Add(AddArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    #[arg(long)]
    pub cluster: String,
    /// The new node's name.
    #[arg(long)]
    pub node: String,
    /// Its region: the primary's gives a replica, another a standby.
    #[arg(long)]
    pub region: String,
    /// Address its agent listens on (host:port).
    #[arg(long, value_name = "ADDR")]
    pub agent: String,
    /// Host and port its PostgreSQL will listen on.
    #[arg(long)]
    pub host: String,
    #[arg(long)]
    pub port: u16,
    /// Its data directory on its host (empty or absent).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// User its PostgreSQL runs as (default: postgres when the agent runs as root).
    #[arg(long)]
    pub os_user: Option<String>,
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// A PostgreSQL setting of the new node (KEY=VALUE); repeatable.
    #[arg(long = "setting", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// Its TLS certificate (of tls.ca) and key; under [tls] it needs them.
    #[arg(long, value_name = "FILE", requires = "ssl_key")]
    pub ssl_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "ssl_cert")]
    pub ssl_key: Option<PathBuf>,
    /// Start its agent here (detached) once the config names the node,
    /// instead of waiting for one started on its host.
    #[arg(long)]
    pub start_agent: bool,
    /// Build it from the cluster's latest backup and the WAL archived since (the primary is not read
    /// for the copy), from DEST or, without a value, the tier's backup destination (where the WAL is
    /// archived); then it streams from the primary through its slot.
    #[arg(long, value_name = "DEST", num_args = 0..=1, default_missing_value = "")]
    pub from_backup: Option<String>,
    /// Apply the reload-level fixes the primary needs (pg_hba.conf for the new host, ...).
    #[arg(long)]
    pub apply_reloadable: bool,
    /// How long the build may take before the command gives up (it goes on in the agent).
    #[arg(long, default_value = "6h", value_parser = humantime_duration)]
    pub timeout: Duration,
    #[arg(long)]
    pub json: bool,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

pub fn run(global: &Global, cmd: ReplicaCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ReplicaCmd::Add(a) => add(global, a),
    }
}

/// The cluster's epoch and primary: from the controller, else from the
/// embedded store when no controller holds it.
pub async fn current(cfg: &Config, cluster: &str) -> anyhow::Result<(Epoch, NodeName)> {
    if let Ok(client) = super::ops::client_for(cfg, pgdr_config::Access::Viewer)
        && let Ok(v) = client.with_timeout(Duration::from_secs(3)).cluster(cluster).await
        && let Some(p) = v.primary
    {
        return Ok((v.epoch, p));
    }
    if matches!(cfg.controller.store, pgdr_config::StoreKind::Embedded) {
        let path = cfg.controller.state_dir.join("pgdr.redb");
        if path.exists()
            && let Ok(store) = pgdr_store::EmbeddedStore::open(&path).await
        {
            let store: std::sync::Arc<dyn pgdr_store::StateStore> = std::sync::Arc::new(store);
            let cs = pgdr_store::ClusterStore::new(store, std::sync::Arc::new(pgdr_store::SystemClock));
            if let Ok(Some(s)) = cs.state(&pgdr_model::ClusterName::new(cluster)).await
                && let Some(p) = s.primary
            {
                return Ok((s.epoch, p));
            }
        }
    }
    anyhow::bail!(
        "cannot tell cluster {cluster}'s primary: neither the controller ({}) nor the store answers with one",
        cfg.controller_addrs().join(", ")
    )
}

fn mib(b: i64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn add(global: &Global, a: AddArgs) -> anyhow::Result<ExitCode> {
    let cfg = global.load_config()?;
    let path = cfg.file.clone();
    pgdr_model::check_name(&a.node).map_err(|e| Usage(format!("--node {:?}: expected {e}", a.node)))?;
    let cluster = cfg
        .cluster(&a.cluster)
        .ok_or_else(|| Usage(format!("no cluster {} in {}", a.cluster, path.display())))?
        .clone();
    if cfg.region(&a.region).is_none() {
        return Err(Usage(format!("no region {} in {}: add a [[regions]] entry", a.region, path.display())).into());
    }
    let existing = match cluster.node(&a.node) {
        Some(n) if n.host == a.host && n.port == a.port => true,
        Some(_) => return Err(Usage(format!("node {} is already in cluster {}", a.node, a.cluster)).into()),
        None if cfg.node(&a.node).is_some() => {
            return Err(Usage(format!("node {} is already in another cluster", a.node)).into());
        }
        None => false,
    };
    let mut settings: Vec<(String, String)> = Vec::new();
    for s in &a.settings {
        let (k, v) = s.split_once('=').ok_or_else(|| Usage(format!("--setting {s:?}: expected KEY=VALUE")))?;
        settings.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    // Under the boot guard a crash reinitialisation would bring a node
    // promoted later back read-only (pgdr config check warns without it).
    if !settings.iter().any(|(k, _)| k == "restart_after_crash") {
        settings.push(("restart_after_crash".into(), "off".into()));
    }
    if let (Some(c), Some(k)) = (&a.ssl_cert, &a.ssl_key) {
        let abs = |p: &Path| p.canonicalize().map_err(|e| Usage(format!("{}: {e}", p.display())));
        settings.push(("ssl".into(), "on".into()));
        settings.push(("ssl_cert_file".into(), abs(c)?.display().to_string()));
        settings.push(("ssl_key_file".into(), abs(k)?.display().to_string()));
    } else if cfg.tls.is_some() && !existing {
        return Err(Usage(
            "[tls] is on: the new node needs a certificate of tls.ca (--ssl-cert FILE --ssl-key FILE)".into(),
        )
        .into());
    }
    let agent_token = cfg.agent_api_token().map_err(|e| Usage(e.to_string()))?;
    let http = crate::tls::http(&cfg)?;
    super::ops::runtime()?.block_on(async move {
        let t0 = Instant::now();
        let (epoch, primary_name) = current(&cfg, &a.cluster).await?;
        let primary = cluster
            .node(primary_name.as_str())
            .ok_or_else(|| anyhow::anyhow!("the primary {primary_name} is not in the config"))?
            .clone();
        let say = |s: String| {
            if !a.json {
                println!("{s}");
            }
        };
        say(format!("cluster {} (epoch {epoch}): primary {} at {}:{}", a.cluster, primary.name, primary.host, primary.port));
        // 1. The primary can feed one more node.
        let password = match &cluster.password {
            Some(s) => Some(s.resolve().map_err(|e| Usage(format!("clusters.{}.password: {e}", a.cluster)))?),
            None => None,
        };
        let target = Target {
            host: primary.host.clone(),
            port: primary.port,
            user: cluster.user.clone(),
            database: cluster.database.clone(),
        };
        let (client, verified) = super::adopt::connect(&cfg, &target, password.as_deref()).await?;
        let facts = Facts::read(&client).await.context("cannot read the primary's settings")?;
        let needs = Needs {
            peer_hosts: vec![a.host.clone()],
            replication_user: cluster.replication_user.clone(),
            nodes: cluster.nodes.len() + usize::from(!existing),
            tls: cfg.tls.is_some(),
            tls_verified: verified,
            ssl_files: None,
            replica_major: None,
        };
        let found: Vec<_> = gaps(&facts, &needs).into_iter().filter(|g| g.level.blocks()).collect();
        if !found.is_empty() {
            if a.apply_reloadable {
                let (done, _) = apply(&client, &found, &[Level::Reload]).await?;
                for d in &done {
                    say(format!("applied on the primary: {d}"));
                }
            }
            let left: Vec<_> = gaps(&Facts::read(&client).await?, &needs).into_iter().filter(|g| g.level.blocks()).collect();
            if !left.is_empty() {
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&json!({"ok": false, "primary_gaps": left}))?);
                } else {
                    println!("the primary {} cannot feed {} yet:", primary.name, a.node);
                    print_gaps(&left);
                    if !a.apply_reloadable && left.iter().all(|g| g.level == Level::Reload) {
                        println!("run again with --apply-reloadable to apply them (a reload, no restart)");
                    }
                }
                return Ok(ExitCode::from(1));
            }
        }
        // 2. The config names the node.
        if !existing {
            let mut block = super::adopt::node_block(
                &a.node,
                &a.region,
                &a.agent,
                &a.host,
                a.port,
                &a.data_dir,
                a.bin_dir.as_deref(),
                &settings,
            );
            // node_block writes the data directory's owner; a new one has none yet.
            if !block.contains("os_user") && let Some(u) = &a.os_user {
                block.push_str(&format!("os_user = {}\n", q(u)));
            }
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let text = pgdr_config::edit::insert_node(&text, &a.cluster, &block).ok_or_else(|| {
                Usage(format!("cannot find `[[clusters]]` with `name = {}` in {} to add the node under", q(&a.cluster), path.display()))
            })?;
            let (c, n) = (a.cluster.clone(), a.node.clone());
            pgdr_config::edit::write_checked(&path, &text, |cfg| match cfg.cluster(&c).and_then(|c| c.node(&n)) {
                Some(_) => Ok(()),
                None => Err(format!("node {n} did not land in cluster {c}")),
            })?;
            say(format!("config: node {} ({}) added to cluster {} in {}", a.node, a.region, a.cluster, path.display()));
        }
        // 3. Its agent.
        let agent_pid = if a.start_agent { Some(start_agent(&cfg, &path, &a.node)?) } else { None };
        if let Some(pid) = agent_pid {
            say(format!("started its agent (pid {pid}, log {})", agent_log(&cfg, &a.node).display()));
        } else {
            say(format!("waiting for its agent at {}: on its host run `pgdr agent --config {} --node {}`", a.agent, path.display(), a.node));
        }
        let agent = AgentClient::new_with(&a.agent, agent_token.clone(), &http)?.with_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + a.timeout;
        while agent.health().await.is_err() {
            if Instant::now() > deadline {
                anyhow::bail!("the agent of {} at {} did not answer", a.node, a.agent);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // 4. The build, with progress read on the primary.
        let from_backup = a.from_backup.as_ref().map(|d| FromBackup { dest: Some(d.clone()).filter(|d| !d.is_empty()) });
        if let Some(b) = &from_backup {
            say(format!(
                "{} restores the latest backup from {} and the WAL archived since (the primary is not read for the copy)",
                a.node,
                b.dest.as_deref().unwrap_or("the tier's backup destination")
            ));
        }
        let by_backup = from_backup.is_some();
        let req = RebuildRequest { epoch, from: Endpoint { host: primary.host.clone(), port: primary.port, node: Some(primary.name.clone()) }, slot: None, from_backup };
        let builder = agent.clone().with_action_timeout(a.timeout);
        let mut build = tokio::spawn(async move { builder.rebuild(&req).await });
        let started = Instant::now();
        let mut last: Option<(i64, i64)> = None;
        let mut printed = Instant::now() - Duration::from_secs(5);
        // Sampled often (a small database is copied in a second), printed
        // at most once a second.
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let outcome = loop {
            tokio::select! {
                r = &mut build => break r,
                _ = tick.tick() => {}
            }
            if by_backup {
                continue;
            }
            let rows = client
                .query(
                    "select coalesce(p.backup_streamed, 0), coalesce(p.backup_total, 0), p.phase \
                     from pg_stat_progress_basebackup p join pg_stat_activity a on a.pid = p.pid \
                     where a.application_name = $1",
                    &[&a.node],
                )
                .await
                .unwrap_or_default();
            if let Some(r) = rows.first() {
                let (done, total, phase): (i64, i64, String) = (r.get(0), r.get(1), r.get(2));
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let rate = mib(done) / secs;
                let left = if total > done && rate > 0.0 {
                    format!("{:.0}s left", mib(total - done) / rate)
                } else {
                    "-".into()
                };
                if last != Some((done, total)) && printed.elapsed() >= Duration::from_secs(1) {
                    if a.json {
                        eprintln!(
                            "{}",
                            json!({"progress": {"copied_bytes": done, "total_bytes": total, "mib_per_s": rate, "phase": phase}})
                        );
                    } else {
                        println!("  {phase}: {:.1} of {:.1} MiB, {rate:.1} MiB/s, {left}", mib(done), mib(total));
                    }
                    printed = Instant::now();
                }
                last = Some((done, total));
            }
        };
        let steps = match outcome {
            Ok(Ok(r)) => r.steps,
            Ok(Err(e)) => anyhow::bail!("the agent of {} could not build it: {e}", a.node),
            Err(e) => anyhow::bail!("the build task failed: {e}"),
        };
        for s in &steps {
            say(format!("  {s}"));
        }
        let built = started.elapsed();
        // From the progress view; when the copy was over between two
        // samples, the primary's databases are what was copied.
        let mut source = if by_backup { "the restore (see the steps)" } else { "pg_stat_progress_basebackup" };
        let mut copied = last.map(|(done, total)| done.max(total)).filter(|b| *b > 0);
        if copied.is_none() && !by_backup {
            source = "the primary's database sizes";
            copied = client
                .query_one("select sum(pg_database_size(oid))::bigint from pg_database", &[])
                .await
                .ok()
                .and_then(|r| r.get::<_, Option<i64>>(0));
        }
        if let Some(b) = copied {
            say(format!(
                "copied {:.1} MiB in {:.1}s ({:.1} MiB/s; by {source})",
                mib(b),
                built.as_secs_f64(),
                mib(b) / built.as_secs_f64().max(0.001)
            ));
        }

        // 5. Until it streams.
        let lag = loop {
            let rows = client
                .query(
                    "select state, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint from pg_stat_replication where application_name = $1",
                    &[&a.node],
                )
                .await?;
            if let Some(r) = rows.first() {
                let (state, lag): (String, i64) = (r.get(0), r.get(1));
                if state == "streaming" {
                    break lag;
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("{} was built but does not stream from {}", a.node, primary.name);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // The copy carries the primary's postgresql.auto.conf: a certificate
        // set there by ALTER SYSTEM (as `pgdr adopt` does) would override
        // the node's own; the node's settings win.
        if a.ssl_cert.is_some() {
            reset_copied(&cfg, &a, password.as_deref()).await;
        }
        if a.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"ok": true, "node": a.node, "streaming_from": primary.name,
                    "replay_lag_bytes": lag, "build_seconds": built.as_secs_f64(), "copied_bytes": copied, "copied_bytes_by": source, "total_seconds": t0.elapsed().as_secs_f64(),
                    "steps": steps, "agent_pid": agent_pid, "from_backup": a.from_backup.as_ref().map(|d| if d.is_empty() { "(the tier's destination)" } else { d.as_str() })}))?
            );
        } else {
            println!(
                "{} streams from {} (replay lag {} bytes); built in {:.1}s, {:.1}s in all",
                a.node,
                primary.name,
                lag,
                built.as_secs_f64(),
                t0.elapsed().as_secs_f64()
            );
            println!("next: restart the controller, then the cluster's other agents (the primary's last), so they count {} as a member", a.node);
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn reset_copied(cfg: &Config, a: &AddArgs, password: Option<&str>) {
    let Some(cluster) = cfg.cluster(&a.cluster) else { return };
    let target =
        Target { host: a.host.clone(), port: a.port, user: cluster.user.clone(), database: cluster.database.clone() };
    let client = match super::adopt::connect(cfg, &target, password).await {
        Ok((c, _)) => c,
        Err(e) => {
            eprintln!("warning: cannot reach {} to drop the primary's certificate settings it copied: {e}", a.node);
            return;
        }
    };
    // One statement each: ALTER SYSTEM cannot run in a transaction block.
    for sql in ["ALTER SYSTEM RESET ssl_cert_file", "ALTER SYSTEM RESET ssl_key_file", "SELECT pg_reload_conf()"] {
        if let Err(e) = client.batch_execute(sql).await {
            eprintln!("warning: {}: {sql}: {}", a.node, pgdr_node::local::pg_detail(&e));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn agent_log(cfg: &Config, node: &str) -> PathBuf {
    cfg.controller.state_dir.join(format!("agent-{node}.log"))
}

/// `pgdr agent --config F --node N`, detached (its own process group).
fn start_agent(cfg: &Config, path: &Path, node: &str) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(&cfg.controller.state_dir).ok();
    let log_path = agent_log(cfg, node);
    let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let err = log.try_clone()?;
    let me = std::env::current_exe().context("cannot find the pgdr binary")?;
    let child = Command::new(me)
        .arg("agent")
        .arg("--config")
        .arg(path)
        .arg("--node")
        .arg(node)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .context("cannot start the agent")?;
    Ok(child.id())
}
