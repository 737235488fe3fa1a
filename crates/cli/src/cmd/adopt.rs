//! `pgdr adopt`: takes a running PostgreSQL that pgdr did not create into
//! a new cluster as its primary. It reads the server, reports every gap
//! with its exact fix ([`pgdr_node::adopt`]), applies only what it is asked
//! to (reload-level fixes with `--apply-reloadable`, restart-level ones and
//! the restart itself only with `--restart`), and once nothing blocks,
//! writes the cluster into the config and its first state (epoch 1, this
//! node primary) into the store. `--dry-run` changes nothing.
//!
//! Run on a terminal without `--node`, `--region`, `--conninfo` or
//! `--data-dir`, it asks for the ones missing; with stdin not a terminal
//! it names them and exits 2.
//!
//! Exit codes: 0 adopted (or, with `--dry-run`, adoptable as it stands),
//! 1 gaps remain or the server could not be read or changed, 2 bad usage or
//! config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use pgdr_config::Config;
use pgdr_config::edit::q;
use pgdr_node::adopt::{Facts, Fix, Gap, Level, Needs, gaps};
use serde_json::json;

use super::Global;
use crate::exit::Usage;

#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// The name the node gets in the config (asked for on a terminal when absent).
    #[arg(long)]
    pub node: Option<String>,
    /// Its region, added to the config when it is not there (asked for on a terminal when absent).
    #[arg(long)]
    pub region: Option<String>,
    /// How to reach the server, as libpq URI or key=value string, without a
    /// password (use --password-file): a superuser, over TCP (asked for on a terminal when absent).
    #[arg(long, value_name = "URI")]
    pub conninfo: Option<String>,
    /// Its data directory on this host, where its agent will run (asked for on a terminal when absent).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The new cluster's name.
    #[arg(long, default_value = "main")]
    pub cluster: String,
    /// Address the node's agent will listen on (host:port); needed to write the config.
    #[arg(long, value_name = "ADDR")]
    pub agent: Option<String>,
    /// File holding the login's password; the config refers to it.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// The cluster's tier (default: the config's first).
    #[arg(long)]
    pub tier: Option<String>,
    /// The role replicas stream as (default: the login's user).
    #[arg(long)]
    pub replication_user: Option<String>,
    /// A host replicas will stream from (pg_hba.conf is checked for each); repeatable.
    #[arg(long = "replica-host", value_name = "HOST")]
    pub replica_hosts: Vec<String>,
    /// Nodes the cluster is planned to have (sizes max_wal_senders, max_replication_slots).
    #[arg(long, default_value_t = 3)]
    pub planned_nodes: usize,
    /// Certificate (of the config's tls.ca) and key for the server to serve TLS with.
    #[arg(long, value_name = "FILE", requires = "ssl_key")]
    pub ssl_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "ssl_cert")]
    pub ssl_key: Option<PathBuf>,
    /// PostgreSQL binaries of the server's major version (default: found on this host).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Report the gaps and fixes; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply the fixes a reload is enough for (ALTER SYSTEM, pg_hba.conf, ALTER ROLE).
    #[arg(long)]
    pub apply_reloadable: bool,
    /// Also apply the fixes that need a restart, and restart the server (pg_ctl restart -m fast).
    #[arg(long)]
    pub restart: bool,
    #[arg(long)]
    pub json: bool,
}

/// The server's address and login, from `--conninfo`.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
}

impl Target {
    pub fn parse(conninfo: &str) -> anyhow::Result<Target> {
        let c: tokio_postgres::Config =
            conninfo.parse().map_err(|e| Usage(format!("--conninfo: not a libpq connection string or URI: {e}")))?;
        if c.get_password().is_some() {
            return Err(Usage(
                "--conninfo holds a password: every user of this host can read process arguments; put it in --password-file"
                    .into(),
            )
            .into());
        }
        let host = c
            .get_hosts()
            .iter()
            .find_map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => Some(h.clone()),
                #[allow(unreachable_patterns)]
                _ => None,
            })
            .ok_or_else(|| Usage("--conninfo: give a TCP host (host=... or postgresql://HOST)".into()))?;
        let port = c.get_ports().first().copied().unwrap_or(5432);
        let user = c.get_user().unwrap_or("postgres").to_owned();
        let database = c.get_dbname().unwrap_or(&user).to_owned();
        Ok(Target { host, port, user, database })
    }

    pub fn conninfo(&self, password: Option<&str>) -> String {
        let mut s = format!(
            "host={} port={} user={} dbname={} connect_timeout=5",
            pgdr_node::local::conn_quote(&self.host),
            self.port,
            pgdr_node::local::conn_quote(&self.user),
            pgdr_node::local::conn_quote(&self.database)
        );
        if let Some(p) = password {
            s.push_str(&format!(" password={}", pgdr_node::local::conn_quote(p)));
        }
        s
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

pub fn read_password(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    match file {
        Some(f) => {
            let s = std::fs::read_to_string(f).map_err(|e| Usage(format!("--password-file {}: {e}", f.display())))?;
            Ok(Some(s.trim_end_matches(['\n', '\r']).to_owned()))
        }
        None => Ok(std::env::var("PGPASSWORD").ok()),
    }
}

/// A connection to the server: verified TLS under `[tls]` when it serves
/// it, else plain TCP (to read and fix a server that does not serve TLS
/// yet). Returns whether TLS verified.
pub async fn connect(
    cfg: &Config,
    target: &Target,
    password: Option<&str>,
) -> anyhow::Result<(tokio_postgres::Client, bool)> {
    let conninfo = target.conninfo(password);
    if let Some(tls) = crate::tls::pg(cfg)?
        && let Ok(c) = pgdr_node::local::connect(&conninfo, &target.addr(), Some(&tls)).await
    {
        return Ok((c, true));
    }
    let c = pgdr_node::local::connect(&conninfo, &target.addr(), None)
        .await
        .with_context(|| format!("cannot connect to {}", target.addr()))?;
    Ok((c, false))
}

fn level_word(l: Level) -> &'static str {
    match l {
        Level::Reload => "reload",
        Level::Restart => "RESTART",
        Level::Manual => "manual",
        Level::Advice => "advice",
    }
}

pub fn print_gaps(gaps: &[Gap]) {
    if gaps.is_empty() {
        println!("  no gaps");
    }
    for g in gaps {
        println!("  [{}] {}: have {}; want {}", level_word(g.level), g.what, g.have, g.want);
        println!("      fix: {}", g.fix_text());
    }
}

/// Owner of `path`, by name (whom the server runs as).
fn owner(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(path).ok()?.uid();
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
}

/// Applies the fixes of `gaps` at `levels`; returns what it did.
pub async fn apply(
    client: &tokio_postgres::Client,
    gaps: &[Gap],
    levels: &[Level],
) -> anyhow::Result<(Vec<String>, bool)> {
    let mut done = Vec::new();
    let mut reload = false;
    for g in gaps.iter().filter(|g| levels.contains(&g.level)) {
        for f in &g.fixes {
            match f {
                Fix::Set { name, value } => {
                    let sql = format!("ALTER SYSTEM SET {name} = {}", pgdr_node::local::quote(value));
                    client.batch_execute(&sql).await.with_context(|| sql.clone())?;
                    done.push(format!("{sql};"));
                    reload = true;
                }
                Fix::Hba { file, line } => {
                    add_hba_line(Path::new(file), line)?;
                    done.push(format!("{file}: added `{line}` before its other rules"));
                    reload = true;
                }
                Fix::Sql { sql } => {
                    client.batch_execute(sql).await.with_context(|| sql.clone())?;
                    done.push(sql.clone());
                }
                Fix::Manual { .. } => {}
            }
        }
    }
    if reload {
        client.batch_execute("SELECT pg_reload_conf()").await.context("pg_reload_conf()")?;
        done.push("SELECT pg_reload_conf();".into());
        // The reload is asynchronous: give the postmaster a moment.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Ok((done, reload))
}

/// Puts `line` before the first rule of `pg_hba.conf` (rules match first
/// come, first served), keeping the file's owner and mode.
fn add_hba_line(file: &Path, line: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    if text.lines().any(|l| l.trim() == line) {
        return Ok(());
    }
    let meta = std::fs::metadata(file)?;
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).unwrap_or(lines.len());
    let mut out: Vec<String> = lines[..at].iter().map(|s| (*s).to_owned()).collect();
    out.push("# Added by pgdr adopt: replication for the cluster's other nodes.".into());
    out.push(line.to_owned());
    out.extend(lines[at..].iter().map(|s| (*s).to_owned()));
    let tmp = file.with_extension("pgdr-tmp");
    std::fs::write(&tmp, out.join("\n") + "\n").with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    let _ = nix::unistd::chown(
        &tmp,
        Some(nix::unistd::Uid::from_raw(meta.uid())),
        Some(nix::unistd::Gid::from_raw(meta.gid())),
    );
    std::fs::rename(&tmp, file).with_context(|| format!("cannot replace {}", file.display()))?;
    Ok(())
}

/// `pg_ctl restart -m fast` as the data directory's owner.
async fn restart(data_dir: &Path, bin: &pgdr_node::PgBinaries) -> anyhow::Result<()> {
    let run_as = pgdr_node::RunAs::for_node(owner(data_dir).as_deref())?;
    let pg = pgdr_node::LocalPg::new(bin.clone(), data_dir.to_owned(), "127.0.0.1", 0, run_as);
    let data = data_dir.display().to_string();
    // A log file is needed: without one the server would keep our pipe open.
    let log = data_dir.join("pgdr-restart.log").display().to_string();
    pg.run("pg_ctl", &["-D", &data, "-l", &log, "-m", "fast", "-w", "-t", "120", "restart"], &[]).await?;
    Ok(())
}

/// What adopt cannot go without, and how to ask for it.
const ASKED: [(&str, &str); 4] = [
    ("--node", "node name (as it will appear in the config, e.g. db1)"),
    ("--region", "region (e.g. east)"),
    (
        "--conninfo",
        "how to reach the server as a superuser over TCP, without a password (e.g. postgresql://postgres@10.0.0.5:5432/postgres)",
    ),
    ("--data-dir", "its data directory on this host (e.g. /var/lib/postgresql/15/main)"),
];

/// Fills the flags of [`ASKED`] that are missing: asks for each on
/// `output`, reading one line of `input` per answer (an empty answer asks
/// again), when `interactive`; otherwise names them (exit code 2).
fn ask_missing(
    args: &mut AdoptArgs,
    interactive: bool,
    input: &mut impl std::io::BufRead,
    output: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let have = [args.node.is_some(), args.region.is_some(), args.conninfo.is_some(), args.data_dir.is_some()];
    let missing: Vec<usize> = (0..ASKED.len()).filter(|i| !have[*i]).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !interactive {
        let names: Vec<&str> = missing.iter().map(|i| ASKED[*i].0).collect();
        return Err(Usage(format!(
            "missing {}: pass them as flags (stdin is not a terminal, so adopt cannot ask); see pgdr adopt --help",
            names.join(", ")
        ))
        .into());
    }
    for i in missing {
        let (flag, what) = ASKED[i];
        let answer = loop {
            write!(output, "{what}: ")?;
            output.flush()?;
            let mut line = String::new();
            if input.read_line(&mut line)? == 0 {
                return Err(Usage(format!("no answer for {flag}: input ended")).into());
            }
            let line = line.trim();
            if !line.is_empty() {
                break line.to_owned();
            }
        };
        match flag {
            "--node" => args.node = Some(answer),
            "--region" => args.region = Some(answer),
            "--conninfo" => args.conninfo = Some(answer),
            _ => args.data_dir = Some(PathBuf::from(answer)),
        }
    }
    Ok(())
}

pub fn run(global: &Global, mut args: AdoptArgs) -> anyhow::Result<ExitCode> {
    let cfg = global.load_config()?;
    let path = cfg.file.clone();
    {
        use std::io::IsTerminal;
        let interactive = std::io::stdin().is_terminal();
        ask_missing(&mut args, interactive, &mut std::io::stdin().lock(), &mut std::io::stderr())?;
    }
    let (Some(node), Some(region), Some(conninfo), Some(data_dir_arg)) =
        (args.node.clone(), args.region.clone(), args.conninfo.clone(), args.data_dir.clone())
    else {
        return Err(Usage("--node, --region, --conninfo and --data-dir are needed".into()).into());
    };
    pgdr_model::check_name(&node).map_err(|e| Usage(format!("--node {:?}: expected {e}", node)))?;
    pgdr_model::check_name(&region).map_err(|e| Usage(format!("--region {:?}: expected {e}", region)))?;
    pgdr_model::check_name(&args.cluster).map_err(|e| Usage(format!("--cluster {:?}: expected {e}", args.cluster)))?;
    let target = Target::parse(&conninfo)?;
    let already = match cfg.cluster(&args.cluster) {
        Some(c) => match c.node(&node) {
            Some(n) if n.host == target.host && n.port == target.port => true,
            _ => {
                return Err(Usage(format!(
                    "cluster {} is already in {}: adopt makes a new cluster (add nodes with `pgdr replica add`)",
                    args.cluster,
                    path.display()
                ))
                .into());
            }
        },
        None => {
            if cfg.node(&node).is_some() {
                return Err(Usage(format!("node {} is already in {}", node, path.display())).into());
            }
            false
        }
    };
    let tier = match &args.tier {
        Some(t) if cfg.tier(t).is_some() => t.clone(),
        Some(t) => return Err(Usage(format!("--tier {t}: no such tier in {}", path.display())).into()),
        None => cfg
            .tiers
            .first()
            .map(|t| t.name.to_string())
            .ok_or_else(|| Usage(format!("{} defines no [[tiers]]: add one or pass --tier", path.display())))?,
    };
    if !args.dry_run && !already && args.agent.is_none() {
        return Err(
            Usage("--agent ADDR (where the node's agent will listen) is needed to write the config".into()).into()
        );
    }
    let password = read_password(args.password_file.as_deref())?;
    let data_dir =
        data_dir_arg.canonicalize().map_err(|e| Usage(format!("--data-dir {}: {e}", data_dir_arg.display())))?;
    let bin = pgdr_node::PgBinaries::find(args.bin_dir.as_deref()).ok();
    let replication_user = args.replication_user.clone().unwrap_or_else(|| target.user.clone());
    super::ops::runtime()?.block_on(async move {
        let (client, verified) = connect(&cfg, &target, password.as_deref()).await?;
        let facts = Facts::read(&client).await.context("cannot read the server's settings (a superuser is needed)")?;
        let served = Path::new(&facts.data_directory).canonicalize().unwrap_or_else(|_| facts.data_directory.clone().into());
        if served != data_dir {
            return Err(Usage(format!(
                "{} serves the data directory {}, not --data-dir {}",
                target.addr(),
                facts.data_directory,
                data_dir.display()
            ))
            .into());
        }
        let mut needs = Needs {
            peer_hosts: args.replica_hosts.clone(),
            replication_user: replication_user.clone(),
            nodes: args.planned_nodes.max(2),
            tls: cfg.tls.is_some(),
            tls_verified: verified,
            ssl_files: match (&args.ssl_cert, &args.ssl_key) {
                (Some(c), Some(k)) => Some((abs(c)?, abs(k)?)),
                _ => None,
            },
            replica_major: bin.as_ref().map(|b| b.major),
        };
        let found = gaps(&facts, &needs);
        let mut report = json!({"node": node, "cluster": args.cluster, "server": target.addr(),
            "version": facts.version_num, "data_directory": facts.data_directory, "gaps": found});
        if !args.json {
            println!(
                "{} (PostgreSQL {}.{}, data directory {}): {} gap(s)",
                target.addr(),
                facts.major(),
                facts.version_num % 10000,
                facts.data_directory,
                found.len()
            );
            print_gaps(&found);
            if args.replica_hosts.is_empty() {
                println!("  note: no --replica-host given: pg_hba.conf is checked for each new node by `pgdr replica add`");
            }
        }
        if args.dry_run {
            let blocking = found.iter().filter(|g| g.level.blocks()).count();
            if args.json {
                report["dry_run"] = json!(true);
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("dry run: nothing changed{}", if blocking == 0 { "; it can be adopted as it is" } else { "" });
                let restart: Vec<&str> =
                    found.iter().filter(|g| g.level == Level::Restart).map(|g| g.what.as_str()).collect();
                if !restart.is_empty() {
                    println!("need a restart: {}", restart.join(", "));
                }
            }
            return Ok(if blocking == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
        // Apply what was asked for.
        let mut levels = Vec::new();
        if args.apply_reloadable || args.restart {
            levels.push(Level::Reload);
        }
        if args.restart {
            levels.push(Level::Restart);
        }
        let (done, _) = apply(&client, &found, &levels).await?;
        let needs_restart = args.restart && found.iter().any(|g| g.level == Level::Restart);
        let mut restarted = false;
        let client = if needs_restart {
            let b = bin.as_ref().ok_or_else(|| anyhow::anyhow!("no PostgreSQL binaries found here to restart with"))?;
            drop(client);
            restart(&data_dir, b).await.context("restart")?;
            restarted = true;
            connect(&cfg, &target, password.as_deref()).await?.0
        } else {
            client
        };
        // Read again: what is left.
        let (_c2, verified) = connect(&cfg, &target, password.as_deref()).await?;
        needs.tls_verified = verified;
        let facts = Facts::read(&client).await?;
        let left = gaps(&facts, &needs);
        let blocking: Vec<&Gap> = left.iter().filter(|g| g.level.blocks()).collect();
        if !args.json {
            for d in &done {
                println!("applied: {d}");
            }
            if restarted {
                println!("restarted the server (pg_ctl restart -m fast)");
            }
        }
        report["applied"] = json!(done);
        report["restarted"] = json!(restarted);
        report["left"] = json!(left);
        if !blocking.is_empty() {
            if args.json {
                report["adopted"] = json!(false);
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("not adopted: {} gap(s) left:", blocking.len());
                print_gaps(&left);
                let restart: Vec<&str> =
                    blocking.iter().filter(|g| g.level == Level::Restart).map(|g| g.what.as_str()).collect();
                if !restart.is_empty() {
                    println!(
                        "need a restart (pgdr never restarts unless asked: run again with --restart, or restart it yourself): {}",
                        restart.join(", ")
                    );
                }
            }
            return Ok(ExitCode::from(1));
        }
        let mut notes = Vec::new();
        if !already {
            let agent = args.agent.clone().unwrap_or_default();
            let mut text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            if cfg.region(&region).is_none() {
                text = pgdr_config::edit::append(&text, &format!("[[regions]]\nname = {}", q(&region)));
            }
            let mut block = format!(
                "# Adopted by `pgdr adopt` ({}): {} as the primary of a new cluster.\n[[clusters]]\nname = {}\ntier = {}\nuser = {}\ndatabase = {}\nreplication_user = {}\n",
                chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
                target.addr(),
                q(&args.cluster),
                q(&tier),
                q(&target.user),
                q(&target.database),
                q(&replication_user)
            );
            if let Some(f) = &args.password_file {
                block.push_str(&format!("password = {{ file = {} }}\n", q(&abs(f)?)));
            }
block.push_str(&node_block(
                &node,
                &region,
                &agent,
                &target.host,
                target.port,
                &data_dir,
                args.bin_dir.as_deref(),
                &kept_settings(&facts),
            ));
            text = pgdr_config::edit::append(&text, &block);
            let (cluster, node) = (args.cluster.clone(), node.clone());
            pgdr_config::edit::write_checked(&path, &text, |c| match c.cluster(&cluster).and_then(|c| c.node(&node)) {
                Some(_) => Ok(()),
                None => Err(format!("cluster {cluster} with node {node} is not in the result")),
            })?;
            notes.push(format!("wrote cluster {} with node {} (primary) into {}", args.cluster, node, path.display()));
        }
        let cfg = Config::load(&path)?;
        notes.push(record_state(&cfg, &args.cluster, &node).await);
        if args.json {
            report["adopted"] = json!(true);
            report["notes"] = json!(notes);
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            for n in &notes {
                println!("{n}");
            }
            println!("adopted: {} is the primary of cluster {}", node, args.cluster);
            println!("next:");
            println!("  1. restart the controller (pgdr run / pgdr controller) so it watches cluster {}", args.cluster);
            println!("  2. on this host: pgdr agent --config {} --node {}", path.display(), node);
            println!("     (while it runs, its agent keeps a boot-guard standby.signal in the data directory: a start without the agent comes up read-only)");
            println!(
                "  3. pgdr replica add --cluster {} --node NAME --region REGION --agent ADDR --host HOST --port PORT --data-dir DIR",
                args.cluster
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn abs(p: &Path) -> anyhow::Result<String> {
    Ok(p.canonicalize().map_err(|e| Usage(format!("{}: {e}", p.display())))?.display().to_string())
}

/// A `[[clusters.nodes]]` table.
#[allow(clippy::too_many_arguments)]
pub fn node_block(
    name: &str,
    region: &str,
    agent: &str,
    host: &str,
    port: u16,
    data_dir: &Path,
    bin_dir: Option<&Path>,
    settings: &[(String, String)],
) -> String {
    let mut b = format!(
        "\n[[clusters.nodes]]\nname = {}\nregion = {}\nagent = {}\nhost = {}\nport = {port}\ndata_dir = {}\n",
        q(name),
        q(region),
        q(agent),
        q(host),
        q(&data_dir.display().to_string())
    );
    if let Some(o) = owner(data_dir).or_else(|| data_dir.parent().and_then(owner)).filter(|o| o != "root") {
        b.push_str(&format!("os_user = {}\n", q(&o)));
    }
    if let Some(d) = bin_dir {
        b.push_str(&format!("bin_dir = {}\n", q(&d.display().to_string())));
    }
    if !settings.is_empty() {
        let s: Vec<String> = settings.iter().map(|(k, v)| format!("{k} = {}", q(v))).collect();
        b.push_str(&format!("settings = {{ {} }}\n", s.join(", ")));
    }
    b
}

/// The node's own settings pgdr must keep, as the server has them now:
/// `restart_after_crash = off` (which `pgdr config check` looks for) and its
/// TLS certificate (paths made absolute). They go into the node's
/// `settings`, so a rewind or rebuild (which writes `pgdr.conf` and copies
/// the new primary's files) keeps them.
fn kept_settings(f: &Facts) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if f.setting("restart_after_crash") == "off" {
        out.push(("restart_after_crash".to_owned(), "off".to_owned()));
    }
    if f.setting("ssl") != "on" {
        return out;
    }
    let abs = |v: &str| {
        let p = Path::new(v);
        if p.is_absolute() { v.to_owned() } else { Path::new(&f.data_directory).join(p).display().to_string() }
    };
    out.extend([
        ("ssl".to_owned(), "on".to_owned()),
        ("ssl_cert_file".to_owned(), abs(f.setting("ssl_cert_file"))),
        ("ssl_key_file".to_owned(), abs(f.setting("ssl_key_file"))),
    ]);
    out
}

/// Records the cluster's first state (epoch 1, `node` primary) in the
/// embedded store, unless a running controller holds it (then the
/// controller records it from the agents when it starts watching).
pub async fn record_state(cfg: &Config, cluster: &str, node: &str) -> String {
    if !matches!(cfg.controller.store, pgdr_config::StoreKind::Embedded) {
        return "the store is not the embedded one: the controller records the cluster's first state when it starts watching it".into();
    }
    let dir = &cfg.controller.state_dir;
    if std::fs::create_dir_all(dir).is_err() {
        return format!("cannot create {}: the controller records the first state when it starts", dir.display());
    }
    match pgdr_store::EmbeddedStore::open(dir.join("pgdr.redb")).await {
        Ok(store) => {
            let store: std::sync::Arc<dyn pgdr_store::StateStore> = std::sync::Arc::new(store);
            let cs = pgdr_store::ClusterStore::new(store, std::sync::Arc::new(pgdr_store::SystemClock));
            match cs
                .init(
                    &pgdr_model::ClusterName::new(cluster),
                    pgdr_model::Epoch(1),
                    Some(pgdr_model::NodeName::new(node)),
                    "adopted by pgdr adopt",
                )
                .await
            {
                Ok(s) => format!(
                    "store: cluster {cluster} at epoch {}, primary {}",
                    s.epoch,
                    s.primary.as_ref().map(|p| p.as_str()).unwrap_or("none")
                ),
                Err(e) => format!("store: {e}"),
            }
        }
        Err(e) => format!(
            "store not written ({e}; a running controller holds it): the controller records the cluster's first state when it starts watching it"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        adopt: AdoptArgs,
    }

    fn args(flags: &[&str]) -> AdoptArgs {
        let mut argv = vec!["pgdr-adopt"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).expect("flags parse").adopt
    }

    #[test]
    fn asks_only_for_what_is_missing_on_a_terminal() {
        let mut a = args(&["--node", "db1", "--data-dir", "/srv/pg"]);
        let mut input = std::io::Cursor::new("\n east \npostgresql://postgres@10.0.0.5:5432/postgres\n");
        let mut output = Vec::new();
        ask_missing(&mut a, true, &mut input, &mut output).expect("answers");
        assert_eq!(a.node.as_deref(), Some("db1"));
        assert_eq!(a.region.as_deref(), Some("east"), "an empty answer asks again; spaces are trimmed");
        assert_eq!(a.conninfo.as_deref(), Some("postgresql://postgres@10.0.0.5:5432/postgres"));
        assert_eq!(a.data_dir.as_deref(), Some(Path::new("/srv/pg")));
        let asked = String::from_utf8(output).expect("utf-8");
        assert_eq!(asked.matches("region").count(), 2, "{asked}");
        assert!(asked.contains("superuser") && !asked.contains("node name"), "{asked}");
    }

    #[test]
    fn off_a_terminal_names_the_missing_flags() {
        let mut a = args(&["--region", "east"]);
        let err = ask_missing(&mut a, false, &mut std::io::Cursor::new(""), &mut Vec::new()).expect_err("refused");
        let usage = err.downcast_ref::<Usage>().expect("a usage error (exit 2)");
        assert!(usage.0.contains("--node, --conninfo, --data-dir"), "{}", usage.0);
        assert!(usage.0.contains("not a terminal"), "{}", usage.0);
        // Input that ends before every answer: a usage error too, not a loop.
        let mut a = args(&[]);
        let err = ask_missing(&mut a, true, &mut std::io::Cursor::new("db1\n"), &mut Vec::new()).expect_err("ended");
        assert!(err.downcast_ref::<Usage>().is_some_and(|u| u.0.contains("--region")), "{err}");
        // Nothing missing: nothing asked.
        let mut a = args(&["--node", "n", "--region", "r", "--conninfo", "c", "--data-dir", "d"]);
        let mut out = Vec::new();
        ask_missing(&mut a, false, &mut std::io::Cursor::new(""), &mut out).expect("complete");
        assert!(out.is_empty());
    }
}
