//! `pgdr secrets rotate|status|verify`: managed database credentials
//! (docs/secrets.md). The rotation runs here, in the CLI, against the
//! controller's view of the cluster: it reads the epoch, the primary and the
//! replica set from the controller's API (a viewer token), refuses to start
//! while a role change holds the cluster's lock, and re-reads the epoch
//! inside the database transaction that changes the password, so a
//! failover that starts meanwhile sends the change to the new primary.
//!
//! Exit codes: 0 every store written and logging in; 1 a store, a standby
//! or the database failed (the report says which; a rerun repairs); 2 bad
//! usage or config. No password is ever printed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use pgdr_api::controller::ControllerClient;
use pgdr_config::Config;
use pgdr_model::Role;
use pgdr_secrets::rotate::{Report, Topology, TopologySource};

use super::Global;
use crate::exit::Usage;

#[derive(Debug, Subcommand)]
pub enum SecretsCmd {
    /// Rotate the managed roles' passwords on the primary and write every region's store.
    Rotate(SecretsArgs),
    /// What every region's store holds (version, login, age; never the password).
    Status(SecretsArgs),
    /// Log in with every region's stored secret through the endpoint it names; exit 1 if one fails.
    Verify(SecretsArgs),
}

#[derive(Debug, Args)]
pub struct SecretsArgs {
    #[arg(long)]
    pub cluster: String,
    /// One managed role (default: all of the cluster's).
    #[arg(long)]
    pub role: Option<String>,
    #[arg(long)]
    pub json: bool,
}

fn topology(v: pgdr_api::controller::ClusterView) -> Result<Topology, String> {
    let primary = v.primary.ok_or_else(|| format!("the controller names no primary for cluster {}", v.name))?;
    let mut replicas = Vec::new();
    let mut excluded = Vec::new();
    let mut unknown = Vec::new();
    for n in &v.nodes {
        if n.name == primary {
            continue;
        }
        if n.fenced {
            excluded.push((n.name.to_string(), "fenced".to_owned()));
        } else if n.role == Role::Replica && n.reachable {
            replicas.push(n.name.to_string());
        } else if !n.reachable || matches!(n.role, Role::Down | Role::Unknown) {
            // The controller's last probe may predate a restart (a node
            // rejoined a moment ago reads "down" until the next probe):
            // its server is asked directly.
            unknown.push(n.name.to_string());
        } else {
            excluded.push((n.name.to_string(), format!("role {}", n.role)));
        }
    }
    Ok(Topology { epoch: v.epoch.0, primary: primary.to_string(), replicas, excluded, unknown, busy: v.workflow })
}

pub fn run(global: &Global, cmd: SecretsCmd) -> anyhow::Result<ExitCode> {
    let cfg = global.load_config()?;
    let (args, what) = match &cmd {
        SecretsCmd::Rotate(a) => (a, "rotate"),
        SecretsCmd::Status(a) => (a, "status"),
        SecretsCmd::Verify(a) => (a, "verify"),
    };
    pgdr_secrets::rotate::managed(&cfg, &args.cluster, args.role.as_deref()).map_err(|e| Usage(e.to_string()))?;
    init_logs();
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    let report = rt.block_on(async {
        match what {
            "rotate" => {
                let client =
                    super::ops::client_for(&cfg, pgdr_config::Access::Viewer)?.with_timeout(Duration::from_secs(5));
                let mut proxies = Vec::new();
                for p in cfg.proxies_of(&args.cluster) {
                    if let Some(a) = p.api {
                        proxies.push((
                            p.name.clone(),
                            a.to_string(),
                            cfg.proxy_api_token(p).map_err(|e| Usage(e.to_string()))?,
                        ));
                    }
                }
                // The proxies' admin APIs serve HTTPS under [tls].
                let tls = crate::tls::http(&cfg)?;
                let http = tls.client(Duration::from_secs(10))?;
                let source = Source { client, cluster: args.cluster.clone(), proxies, http, scheme: tls.scheme() };
                Ok::<Report, anyhow::Error>(
                    pgdr_secrets::rotate::rotate(&cfg, &args.cluster, args.role.as_deref(), &source).await?,
                )
            }
            _ => Ok(pgdr_secrets::rotate::status(&cfg, &args.cluster, args.role.as_deref(), what == "verify").await?),
        }
    })?;
    print(&cfg, &report, what, args.json)?;
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

struct Source {
    client: ControllerClient,
    cluster: String,
    /// Each proxy of the cluster with an admin API: name, address, token.
    proxies: Vec<(String, String, Option<pgdr_config::Redacted>)>,
    http: reqwest::Client,
    /// `https` under `[tls]`.
    scheme: &'static str,
}

#[async_trait]
impl TopologySource for Source {
    async fn current(&self) -> Result<Topology, String> {
        let v = self
            .client
            .cluster(&self.cluster)
            .await
            .map_err(|e| format!("the controller at {} did not answer: {e}", self.client.addr()))?;
        topology(v)
    }

    async fn refresh_proxies(&self) -> Vec<(String, Result<(), String>)> {
        let mut out = Vec::new();
        for (name, addr, token) in &self.proxies {
            let url = format!("{}://{addr}/v1/clusters/{}/users/refresh", self.scheme, self.cluster);
            let mut req = self.http.post(&url).timeout(Duration::from_secs(10));
            if let Some(t) = token {
                req = req.bearer_auth(t.expose());
            }
            let res = match req.send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("{url}: HTTP {}: {}", r.status(), r.text().await.unwrap_or_default().trim())),
                Err(e) => Err(format!("{url}: {e}")),
            };
            out.push((name.clone(), res));
        }
        out
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn print(_cfg: &Config, report: &Report, what: &str, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    for r in &report.roles {
        let mut head = format!("cluster {}  role {} ({})", report.cluster, r.role, r.strategy);
        if what == "rotate" {
            if let (Some(l), Some(v)) = (&r.login, r.version) {
                head.push_str(&format!("  changed {l} to version {v}"));
            }
            if let (Some(p), Some(e)) = (&r.primary, r.epoch) {
                head.push_str(&format!(" on {p} at epoch {e}"));
            }
        }
        let _ = writeln!(out, "{head}");
        for x in r.proxies.iter().filter(|x| !x.refreshed) {
            let _ = writeln!(
                out,
                "  proxy {}: did not reload its user verifiers: {}",
                x.proxy,
                x.error.clone().unwrap_or_default()
            );
        }
        for x in &r.replicas {
            let _ = writeln!(
                out,
                "  standby {}: {}",
                x.node,
                if x.replayed { "replayed".to_owned() } else { x.error.clone().unwrap_or_default() }
            );
        }
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(["region", "store", "version", "login", "endpoint", "age", "state"]);
        for s in &r.stores {
            let state = if let Some(e) = &s.error {
                format!("FAILED: {e}")
            } else if let Some(k) = &s.skipped {
                format!("skipped: {k}")
            } else if s.verified == Some(true) {
                if s.written { "written, logs in".into() } else { "logs in".into() }
            } else if s.too_old {
                "older than max_age".into()
            } else if s.written {
                "written".into()
            } else {
                "ok".into()
            };
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            t.add_row([
                s.region.clone(),
                s.store.clone(),
                opt(s.version.map(|v| v.to_string())),
                opt(s.login.clone()),
                opt(s.via.clone()),
                opt(s.age_seconds.map(|a| pgdr_model::format_duration(Duration::from_secs(a)))),
                state,
            ]);
        }
        let _ = writeln!(out, "{t}");
        if let Some(e) = &r.error {
            let _ = writeln!(out, "  error: {e}");
        }
    }
    if !report.ok {
        eprintln!(
            "error: {what} did not complete for every role and region (see above); a rerun of `pgdr secrets rotate` repairs stores left behind"
        );
    }
    Ok(())
}
