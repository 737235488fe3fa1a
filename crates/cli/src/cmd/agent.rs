//! `pgdr agent --node NAME`: runs one node's agent until SIGTERM or SIGINT,
//! with the backup engine plugged in for rebuilds from a backup.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use pgdr_backup::Progress;
use pgdr_backup::restore::{RestoreOptions, Target};
use pgdr_node::LocalPg;
use pgdr_node::agent::{AgentConfig, AgentError, AgentState, BackupRestorer};
use pgdr_node::replica::Restored;
use tokio_util::sync::CancellationToken;

use super::Global;
use crate::exit::Usage;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The node (by name in the config) this agent manages.
    #[arg(long)]
    pub node: String,
    /// Address to listen on; defaults to the node's `agent` address.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

pub fn run(global: &Global, args: AgentArgs) -> anyhow::Result<ExitCode> {
    init_logs();
    // In a sandbox with links between regions, other regions are reached through relays.
    let cfg = pgdr_sandbox::wan::view_for_node(global.load_config()?, &args.node);
    let acfg = AgentConfig::from_config(&cfg, &args.node).map_err(|e| match e {
        AgentError::Setup(_) | AgentError::Bin(_) | AgentError::Os(_) => anyhow::Error::new(Usage(e.to_string())),
        other => anyhow::Error::new(other),
    })?;
    let listen = match args.listen {
        Some(l) => l,
        None => cfg.node(&args.node).map(|(_, n)| n.agent.clone()).unwrap_or_default(),
    };
    if acfg.token.is_none() && !is_loopback(&listen) {
        return Err(Usage(format!(
            "--listen {listen} is not a loopback address and {} sets no agents.token: refusing to serve without one",
            cfg.file.display()
        ))
        .into());
    }
    let cluster = acfg.cluster.to_string();
    let state = AgentState::new(acfg)?;
    state.set_restorer(Arc::new(Restorer { config: cfg.clone(), config_path: global.config_path(), cluster }));
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let cancel = CancellationToken::new();
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; stopping the agent");
            on_signal.cancel();
        });
        // With the lease loop and the peer endpoints (self-fencing).
        let lease = pgdr_node::lease::LeaseSettings::from_config(&cfg, &args.node);
        pgdr_node::lease::serve(listener, state, lease, cancel).await.context("agent server failed")?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The agent's way to the backup engine, for a rebuild from a backup
/// (`pgdr replica add --from-backup`): the cluster's newest backup, written
/// into the node's data directory, and a `restore_command` for the WAL
/// archived since, both from the same destination.
#[derive(Debug)]
struct Restorer {
    config: pgdr_config::Config,
    config_path: std::path::PathBuf,
    cluster: String,
}

impl BackupRestorer for Restorer {
    fn restore<'a>(
        &'a self,
        dest: Option<&'a str>,
        pg: &'a LocalPg,
    ) -> Pin<Box<dyn Future<Output = Result<Restored, String>> + Send + 'a>> {
        Box::pin(async move {
            let d = pgdr_backup::dest_for(&self.config, &self.cluster, dest).map_err(|e| e.to_string())?;
            let exe = std::env::current_exe().unwrap_or_else(|_| "pgdr".into());
            let opts = RestoreOptions {
                backup: None,
                target: Target::Latest,
                to: pg.data_dir.clone(),
                restore_command: pgdr_backup::restore_command(&exe, &self.config_path, &self.cluster, &d.name),
                workers: 2,
                port: pg.port,
                run_as: pg.run_as.clone(),
                bin_dir: Some(pg.bin.dir.clone()),
                delta: false,
            };
            let (m, measured) = pgdr_backup::restore::write(&d, &self.cluster, &opts, &Progress::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(Restored {
                summary: format!(
                    "restored backup {} from {} (the primary was not read): {} MiB in {:.1}s ({:.0} MiB/s)",
                    m.id,
                    d.name,
                    measured.plain_bytes >> 20,
                    measured.seconds,
                    measured.mib_per_s()
                ),
                restore_command: opts.restore_command,
            })
        })
    }
}

/// Whether `host:port` is on this machine's loopback interface.
pub(crate) fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
