//! `pgdr status`: asks every agent in parallel (short timeout) and prints a
//! table per cluster, or the stable JSON of `docs/status-json.md`.
//!
//! Exit codes: 0 when at least one agent answered (unreachable agents and
//! stopped servers are reported in the output), 1 when the config is fine but
//! no agent could be reached, 2 for a bad config.

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

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use pgdr_api::agent::{AgentClient, Status};
use pgdr_api::controller::ClusterView;
use pgdr_api::status::{ClusterStatus, ControllerSeen, EndpointStatus, NodeStatus, StatusReport};
use pgdr_config::{Cluster, Config, Node};
use pgdr_model::Role;

use super::Global;
use crate::exit::Usage;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the stable JSON schema (docs/status-json.md).
    #[arg(long)]
    pub json: bool,
    /// How long to wait for each agent.
    #[arg(long, default_value = "2s")]
    pub timeout: String,
}

pub fn run(global: &Global, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let cfg = global.load_config()?;
    let timeout = pgdr_model::parse_duration(&args.timeout).map_err(|e| Usage(format!("--timeout: {e}")))?;
    let token = cfg.agent_api_token().map_err(|e| Usage(e.to_string()))?;
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    let report = rt.block_on(collect(&cfg, token, timeout))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_tables(&report);
    }
    let nodes = report.clusters.iter().flat_map(|c| &c.nodes).count();
    let reached = report.clusters.iter().flat_map(|c| &c.nodes).filter(|n| n.reachable).count();
    if nodes > 0 && reached == 0 {
        eprintln!("error: no agent could be reached");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Queries every agent of every cluster at once.
pub async fn collect(
    cfg: &Config,
    token: Option<pgdr_config::Redacted>,
    timeout: Duration,
) -> anyhow::Result<StatusReport> {
    let mut futures = Vec::new();
    let tls = crate::tls::http(cfg)?;
    for c in &cfg.clusters {
        for n in &c.nodes {
            let client = AgentClient::new_with(&n.agent, token.clone(), &tls)?.with_timeout(timeout);
            futures.push(async move { client.status().await.map_err(|e| e.to_string()) });
        }
    }
    let (answers, seen) = tokio::join!(futures::future::join_all(futures), controller_view(cfg, timeout));
    let mut answers = answers.into_iter();
    let (mut seen, controller_error) = match seen {
        Ok(v) => (v, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let mut clusters = Vec::new();
    for c in &cfg.clusters {
        let got: Vec<(&Node, Result<Status, String>)> =
            c.nodes.iter().map(|n| (n, answers.next().unwrap_or_else(|| Err("no answer".into())))).collect();
        let mut status = cluster_status(cfg, c, got);
        status.controller = seen.iter().position(|v| v.name == c.name).map(|i| controller_seen(seen.swap_remove(i)));
        clusters.push(status);
    }
    Ok(StatusReport { clusters, controller_error })
}

/// Every cluster as the controller holds it (the viewer token's read), or
/// why it could not be asked.
async fn controller_view(cfg: &Config, timeout: Duration) -> Result<Vec<ClusterView>, String> {
    let client = super::ops::client_for(cfg, pgdr_config::Access::Viewer).map_err(|e| format!("{e:#}"))?;
    client.with_timeout(timeout).clusters().await.map_err(|e| e.to_string())
}

fn controller_seen(v: ClusterView) -> ControllerSeen {
    ControllerSeen {
        epoch: v.epoch.0,
        primary: v.primary.map(|p| p.to_string()),
        detection: v.detection,
        workflow: v.workflow,
        frozen: v.frozen.map(|f| {
            let scope = if f.global { "every cluster, " } else { "" };
            let why = f.reason.map(|r| format!(": {r}")).unwrap_or_default();
            format!("{scope}by {} at {}{why}", f.by, f.at)
        }),
        control_plane: v.control_plane,
    }
}

fn cluster_status(cfg: &Config, c: &Cluster, got: Vec<(&Node, Result<Status, String>)>) -> ClusterStatus {
    let epoch = got.iter().filter_map(|(_, r)| r.as_ref().ok()).map(|s| s.epoch.0).max().unwrap_or(0);
    // The primary: the reachable primary on the newest timeline.
    let primary = got
        .iter()
        .filter_map(|(n, r)| r.as_ref().ok().filter(|s| s.role == Role::Primary).map(|s| (*n, s)))
        .max_by_key(|(_, s)| s.timeline.map(|t| t.0).unwrap_or(0));
    let primaries = got.iter().filter(|(_, r)| r.as_ref().is_ok_and(|s| s.role == Role::Primary)).count();
    // A proxy serving TLS: the URI says how to check it (the [tls] CA).
    let endpoint = |p: &pgdr_config::Proxy, a: std::net::SocketAddr| {
        let tls = match (&p.tls, &cfg.tls) {
            (Some(_), Some(t)) => {
                format!("?sslmode=verify-full&sslrootcert={}", pgdr_sandbox::uri_encode(&t.ca.display().to_string()))
            }
            (Some(_), None) => "?sslmode=require".to_owned(),
            (None, _) => String::new(),
        };
        format!("postgresql://{}:{}/{}{tls}", a.ip(), a.port(), c.database)
    };
    let endpoints: Vec<EndpointStatus> = cfg
        .proxies_of(c.name.as_str())
        .map(|p| EndpointStatus {
            proxy: p.name.clone(),
            region: p.region.to_string(),
            writer: endpoint(p, p.writer),
            reader: p.reader.map(|a| endpoint(p, a)),
        })
        .collect();
    let nodes = got
        .iter()
        .map(|(n, r)| {
            let mut ns = NodeStatus {
                name: n.name.to_string(),
                region: n.region.to_string(),
                role: Role::Unknown.to_string(),
                host: n.host.clone(),
                port: n.port,
                data_dir: n.data_dir.as_ref().map(|d| d.display().to_string()),
                agent: n.agent.clone(),
                reachable: false,
                up: false,
                timeline: None,
                lsn: None,
                lag_bytes: None,
                lag_seconds: None,
                sync_state: None,
                health: "unreachable".into(),
                error: None,
            };
            match r {
                Err(e) => ns.error = Some(e.clone()),
                Ok(s) => {
                    ns.reachable = true;
                    ns.up = s.up;
                    ns.role = s.role.to_string();
                    ns.timeline = s.timeline.map(|t| t.0);
                    ns.error = s.error.clone();
                    match s.role {
                        Role::Primary => {
                            ns.lsn = s.current_lsn.map(|l| l.to_string());
                            ns.lag_bytes = Some(0);
                            ns.lag_seconds = Some(0.0);
                            ns.health = if s.fenced {
                                "fenced".into()
                            } else if primaries > 1 {
                                "conflict".into()
                            } else {
                                "ok".into()
                            };
                        }
                        Role::Replica => {
                            ns.lsn = s.replay_lsn.map(|l| l.to_string());
                            ns.lag_seconds = s.lag_seconds;
                            let on_primary = primary.and_then(|(_, p)| {
                                p.replication.iter().find(|r| r.application_name == n.name.as_str())
                            });
                            ns.sync_state = on_primary.map(|r| r.sync_state.clone());
                            ns.lag_bytes = match (primary.and_then(|(_, p)| p.current_lsn), s.replay_lsn) {
                                (Some(p), Some(r)) => Some(p.bytes_since(r)),
                                _ => s.lag_bytes,
                            };
                            let streaming = on_primary.is_some_and(|r| r.state == "streaming")
                                || s.wal_receiver.as_ref().is_some_and(|w| w.status == "streaming");
                            ns.health = if streaming { "streaming".into() } else { "not-streaming".into() };
                        }
                        _ => ns.health = "down".into(),
                    }
                }
            }
            ns
        })
        .collect();
    ClusterStatus {
        name: c.name.to_string(),
        tier: c.tier.to_string(),
        epoch,
        primary: primary.map(|(n, _)| n.name.to_string()),
        writer: endpoints.first().map(|e| e.writer.clone()),
        reader: endpoints.first().and_then(|e| e.reader.clone()),
        endpoints,
        nodes,
        controller: None,
    }
}

fn print_tables(report: &StatusReport) {
    for (i, c) in report.clusters.iter().enumerate() {
        if i > 0 {
            outln!();
        }
        // The store's epoch when the controller answered, else the agents'.
        let epoch = match &c.controller {
            Some(v) => v.epoch.to_string(),
            None => format!("{} (agents)", c.epoch),
        };
        outln!(
            "cluster {} (tier {})  epoch {epoch}  primary {}{}",
            c.name,
            c.tier,
            c.primary.as_deref().unwrap_or("none"),
            c.writer.as_deref().map(|w| format!("  writer {w}")).unwrap_or_default()
        );
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(["node", "region", "role", "timeline", "LSN", "lag bytes", "lag s", "health"]);
        for n in &c.nodes {
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            t.add_row([
                n.name.clone(),
                n.region.clone(),
                n.role.clone(),
                opt(n.timeline.map(|v| v.to_string())),
                opt(n.lsn.clone()),
                opt(n.lag_bytes.map(|v| v.to_string())),
                opt(n.lag_seconds.map(|v| format!("{v:.1}"))),
                n.health.clone(),
            ]);
        }
        match &c.controller {
            Some(v) => {
                let mut line = format!("  controller: {}", v.detection);
                if v.primary != c.primary {
                    line.push_str(&format!("  names {} primary", v.primary.as_deref().unwrap_or("no node")));
                }
                if let Some(w) = &v.workflow {
                    line.push_str(&format!("  workflow {w}"));
                }
                outln!("{line}");
                if let Some(f) = &v.frozen {
                    outln!("  FROZEN (no automatic failover): {f}");
                }
                if let Some(cp) = &v.control_plane {
                    outln!("  NO CONTROL PLANE: {cp}");
                }
            }
            None => outln!(
                "  controller: not asked ({})",
                report.controller_error.as_deref().unwrap_or("it does not know this cluster")
            ),
        }
        outln!("{t}");
        for n in c.nodes.iter().filter(|n| n.error.is_some()) {
            outln!("  {}: {}", n.name, n.error.as_deref().unwrap_or_default());
        }
    }
}
