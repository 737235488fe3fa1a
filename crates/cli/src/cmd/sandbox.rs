//! `pgdr sandbox up/down`: a local topology of real PostgreSQL with agents,
//! for trying pgdr and for drills (see the `pgdr-sandbox` crate).

/// `println!` that ends quietly when stdout is closed (`| head`).
macro_rules! outln {
    () => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;
use pgdr_sandbox::{Sandbox, SandboxError};

use super::Global;
use crate::exit::Usage;

#[derive(Debug, Subcommand)]
pub enum SandboxCmd {
    /// Start a primary, replicas and standbys with their agents in DIR and write DIR/pgdr.toml.
    Up {
        /// Folder for the sandbox (created; must be empty).
        #[arg(long)]
        dir: PathBuf,
        /// Regions, the first holding the primary.
        #[arg(long, value_delimiter = ',', default_value = "east,west")]
        regions: Vec<String>,
        /// Replicas in the primary's region, and standbys in each other region.
        #[arg(long, default_value_t = 1)]
        replicas_per_region: usize,
        /// Standbys in each region other than the primary's (default: --replicas-per-region).
        #[arg(long)]
        standbys_per_region: Option<usize>,
        /// How many clusters of this topology: 1 is `main`; more are c01, c02.. (nodes named
        /// c01-east-1..., small PostgreSQL settings, one proxy per cluster and region), all
        /// watched by one controller.
        #[arg(long, default_value_t = 1)]
        clusters: usize,
        /// Put a relay on every cross-region path adding this delay each way (e.g. 40ms);
        /// enables `pgdr sandbox partition`.
        #[arg(long, value_parser = pgdr_model::parse_duration)]
        wan_delay: Option<std::time::Duration>,
        /// The cluster's on_crash: restart-first (the default) or failover.
        #[arg(long, value_parser = ["restart-first", "failover"])]
        on_crash: Option<String>,
        /// First port to use; 0 picks free ports.
        #[arg(long, default_value_t = 0)]
        base_port: u16,
        /// The state store: `embedded` (one redb file, the default) or `etcd` (a three-member
        /// etcd on loopback, started here and stopped by `down`).
        #[arg(long, default_value = "embedded", value_parser = ["embedded", "etcd"])]
        store: String,
        /// A controller in every region (needs `--store etcd`): the config declares one
        /// [[controller.instances]] per region; run each with `pgdr run --controller REGION`.
        /// The etcd members stand one in each of the first regions and the rest in a third
        /// place (`witness`), so the loss of one region keeps etcd's quorum.
        #[arg(long)]
        controller_per_region: bool,
        /// Print the nodes as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the relays between the regions of the sandbox in DIR (started by `up --wan-delay`).
    Relay {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Cut a region off from every other region: packets vanish (no reset, no refusal).
    Partition {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        region: String,
    },
    /// Heal a partitioned region, or every partition.
    Heal {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        region: Option<String>,
    },
    /// Stop every process the sandbox in DIR started; a folder without a running sandbox is a no-op.
    Down {
        #[arg(long)]
        dir: PathBuf,
        /// Also remove the folder (default: keep it, so logs and data can be looked at).
        #[arg(long, conflicts_with = "keep_data")]
        purge: bool,
        /// Keep the folder (the default).
        #[arg(long)]
        keep_data: bool,
        /// Print what was done as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(_global: &Global, cmd: SandboxCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SandboxCmd::Relay { dir } => relay(dir),
        SandboxCmd::Partition { dir, region } => {
            let st = pgdr_sandbox::wan::partition(&dir, &region).map_err(classify)?;
            outln!("region {region} partitioned (partitioned now: {:?})", st.partitioned);
            Ok(ExitCode::SUCCESS)
        }
        SandboxCmd::Heal { dir, region } => {
            let st = pgdr_sandbox::wan::heal(&dir, region.as_deref()).map_err(classify)?;
            outln!("healed (partitioned now: {:?})", st.partitioned);
            Ok(ExitCode::SUCCESS)
        }
        SandboxCmd::Up {
            dir,
            regions,
            replicas_per_region,
            standbys_per_region,
            clusters,
            wan_delay,
            on_crash,
            base_port,
            store,
            controller_per_region,
            json,
        } => {
            let mut b = Sandbox::builder()
                .dir(&dir)
                .regions(regions)
                .replicas_per_region(replicas_per_region)
                .clusters(clusters);
            if let Some(n) = standbys_per_region {
                b = b.standbys_per_region(n);
            }
            if let Some(o) = on_crash {
                b = b.on_crash(o);
            }
            if let Some(d) = wan_delay {
                b = b.wan_delay(d);
            }
            up(b.base_port(base_port).etcd(store == "etcd").controller_per_region(controller_per_region), json)
        }
        SandboxCmd::Down { dir, purge, keep_data: _, json } => down(dir, purge, json),
    }
}

/// `pgdr sandbox relay`: runs until SIGTERM or SIGINT.
fn relay(dir: PathBuf) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let cancel = tokio_util::sync::CancellationToken::new();
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            } else {
                let _ = tokio::signal::ctrl_c().await;
            }
            on_signal.cancel();
        });
        pgdr_sandbox::wan::run(&dir, cancel).await.map_err(classify)
    })?;
    Ok(ExitCode::SUCCESS)
}

fn classify(e: SandboxError) -> anyhow::Error {
    if e.is_usage() { anyhow::Error::new(Usage(e.to_string())) } else { anyhow::Error::new(e) }
}

fn up(builder: pgdr_sandbox::SandboxBuilder, json: bool) -> anyhow::Result<ExitCode> {
    let pgdr = std::env::current_exe().context("cannot find the pgdr binary itself")?;
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    let started = Instant::now();
    let sb = rt.block_on(builder.start(&pgdr)).map_err(classify)?;
    let took = started.elapsed();
    let config = sb.config.display().to_string();
    if json {
        let nodes: Vec<_> = sb
            .nodes()
            .iter()
            .map(|n| {
                serde_json::json!({
                    "name": n.name,
                    "cluster": n.cluster,
                    "region": n.region,
                    "role": n.role.to_string(),
                    "host": n.host,
                    "port": n.port,
                    "uri": sb.uri(n),
                    "data_dir": n.data_dir.display().to_string(),
                    "agent": n.agent,
                })
            })
            .collect();
        let out = serde_json::json!({
            "dir": sb.dir.display().to_string(),
            "config": config,
            "status_command": format!("pgdr status --config {config}"),
            "down_command": format!("pgdr sandbox down --dir {}", sb.dir.display()),
            "took_seconds": took.as_secs_f64(),
            "clusters": sb.record.clusters(),
            "nodes": nodes,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let clusters = sb.record.clusters();
        let of = if clusters.len() > 1 { format!(", {} clusters", clusters.len()) } else { String::new() };
        outln!("sandbox up in {} ({} nodes{of}, {:.1}s)\n", sb.dir.display(), sb.nodes().len(), took.as_secs_f64());
        let w = sb.nodes().iter().map(|n| n.name.len()).max().unwrap_or(0).max(10);
        for n in sb.nodes() {
            outln!("  {:<w$} {:<8} {:<8} psql \"{}\"", n.name, n.role.to_string(), n.region, sb.uri(n));
        }
        outln!("\nconfig:  {config}");
        if let Ok(cfg) = pgdr_config::Config::load(&sb.config)
            && cfg.controller.instances.len() > 1
        {
            for i in &cfg.controller.instances {
                outln!(
                    "run:     pgdr run --config {config} --controller {}   # region {}, API {}",
                    i.name,
                    i.region,
                    i.listen
                );
            }
        }
        outln!("status:  pgdr status --config {config}");
        outln!("stop:    pgdr sandbox down --dir {}", sb.dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn down(dir: PathBuf, purge: bool, json: bool) -> anyhow::Result<ExitCode> {
    let report = pgdr_sandbox::down(&dir, purge).map_err(classify)?;
    if json {
        let out = serde_json::json!({
            "dir": dir.display().to_string(),
            "was_up": report.was_up,
            "agents_stopped": report.agents_stopped,
            "servers_stopped": report.servers_stopped,
            "etcd_stopped": report.etcd_stopped,
            "orphans_stopped": report.orphans_stopped,
            "purged": report.purged,
        });
        outln!("{out}");
    } else if report.was_up {
        outln!(
            "sandbox in {} stopped ({} agents, {} PostgreSQL servers{}{}){}",
            dir.display(),
            report.agents_stopped,
            report.servers_stopped,
            if report.orphans_stopped > 0 {
                format!(", {} server processes left behind by a killed postmaster", report.orphans_stopped)
            } else {
                String::new()
            },
            if report.etcd_stopped > 0 { format!(", {} etcd members", report.etcd_stopped) } else { String::new() },
            if report.purged { "; folder removed" } else { "; folder kept (remove it with --purge)" }
        );
    } else if report.purged {
        outln!("no running sandbox in {}; folder removed", dir.display());
    } else {
        outln!("no running sandbox in {}: nothing to do", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}
