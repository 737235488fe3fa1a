//! `pgdr proxy`: runs the config's proxies standalone, and `pgdr proxy
//! pause|resume|status --cluster C` drives a running proxy through its
//! admin API (`api` address in `[[proxies]]`).
//!
//! Standalone, the proxy learns the primary from a discovery task that polls
//! every node of the cluster (`SELECT pg_is_in_recovery()`, every 500 ms by
//! default) with the cluster's configured credential. A controller (`pgdr
//! controller`) publishes its routes to the proxy's admin API (`api` in
//! `[[proxies]]`) with the state store's epoch: from then on writes go only
//! to the node the epoch names (see `pgdr_proxy::discovery`). With no
//! controller, discovery raises its own local epoch when the primary
//! changes. `pgdr run` does not use discovery: there the controller
//! publishes the state store's epoch and routing in-process.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use pgdr_config::{Config, ProxyAuth};
use pgdr_proxy::{
    AdminLogin, AuthConfig, Backend, ClusterListeners, ClusterSpec, Listeners, ProxyHandle, ProxySpec, Routing,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cmd::Global;
use crate::exit::Usage;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProxyArgs {
    /// Serve only this cluster's proxies.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Serve only the proxy with this name.
    #[arg(long)]
    pub name: Option<String>,
    /// How often discovery polls the nodes ("500ms", "1s").
    #[arg(long, default_value = "500ms", value_parser = pgdr_model::parse_duration)]
    pub poll: Duration,
    #[command(subcommand)]
    pub action: Option<ProxyAction>,
}

#[derive(Debug, Subcommand)]
pub enum ProxyAction {
    /// Pause the cluster's writer endpoint: new connections and transactions queue; waits for running ones to drain.
    Pause {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        json: bool,
    },
    /// Resume: queued clients run in arrival order.
    Resume {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        json: bool,
    },
    /// Routing, pause state, queue and sessions of running proxies.
    Status {
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(global: &Global, args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let cfg = global.load_config()?;
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    match args.action {
        None => rt.block_on(serve(cfg, args.cluster, args.name, args.poll)),
        Some(ProxyAction::Pause { cluster, json }) => rt.block_on(admin(&cfg, Some(&cluster), "POST", "pause", json)),
        Some(ProxyAction::Resume { cluster, json }) => rt.block_on(admin(&cfg, Some(&cluster), "POST", "resume", json)),
        Some(ProxyAction::Status { cluster, json }) => {
            rt.block_on(admin(&cfg, cluster.as_deref(), "GET", "status", json))
        }
    }
}

/// The auth a proxy uses: a users file, else verifiers read from the
/// backend when the cluster's password is configured (so sessions can
/// move), else passthrough.
pub fn auth_for(cfg: &Config, p: &pgdr_config::Proxy) -> anyhow::Result<AuthConfig> {
    let cluster = cfg.cluster(p.cluster.as_str()).context("proxy of an unknown cluster")?;
    Ok(match &p.auth {
        ProxyAuth::Users { file } => AuthConfig::UsersFile(file.clone()),
        ProxyAuth::Passthrough => match cluster.password.as_ref().map(|s| s.resolve()).transpose()? {
            Some(pw) => AuthConfig::Auto(AdminLogin {
                user: cluster.user.clone(),
                password: Some(pw),
                database: cluster.database.clone(),
                tls: crate::tls::pg(cfg)?,
            }),
            None => AuthConfig::Passthrough,
        },
    })
}

async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))
}

async fn serve(cfg: Config, cluster: Option<String>, name: Option<String>, poll: Duration) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let proxies: Vec<&pgdr_config::Proxy> = cfg
        .proxies
        .iter()
        .filter(|p| cluster.as_deref().is_none_or(|c| p.cluster.as_str() == c))
        .filter(|p| name.as_deref().is_none_or(|n| p.name == n))
        .collect();
    if proxies.is_empty() {
        return Err(Usage(format!("{}: no [[proxies]] entry matches", cfg.file.display())).into());
    }
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut routes: HashMap<String, watch::Sender<Routing>> = HashMap::new();
    let mut published: HashMap<String, watch::Sender<Option<Routing>>> = HashMap::new();
    for p in &proxies {
        let c = cfg.cluster(p.cluster.as_str()).context("proxy of an unknown cluster")?;
        if routes.contains_key(c.name.as_str()) {
            continue;
        }
        let (tx, _) = watch::channel(Routing::default());
        let nodes = c.nodes.iter().map(|n| Backend::new(n.name.as_str(), n.host.clone(), n.port)).collect();
        let password = c.password.as_ref().map(|s| s.resolve()).transpose()?;
        let login =
            AdminLogin { user: c.user.clone(), password, database: c.database.clone(), tls: crate::tls::pg(&cfg)? };
        let (ptx, prx) = watch::channel(None);
        tracker.spawn(pgdr_proxy::discovery::run(nodes, login, tx.clone(), prx, poll, cancel.clone()));
        routes.insert(c.name.to_string(), tx);
        published.insert(c.name.to_string(), ptx);
    }
    for p in proxies {
        let Some(tx) = routes.get(p.cluster.as_str()) else { continue };
        let spec = ProxySpec {
            clusters: vec![ClusterSpec {
                name: p.cluster.clone(),
                routing: tx.subscribe(),
                settings: crate::tls::proxy_settings(&cfg, p)?,
                auth: auth_for(&cfg, p)?,
            }],
            tls: p.tls.clone(),
            require_tls: p.require_tls,
            api_token: cfg.proxy_api_token(p).map_err(|e| Usage(e.to_string()))?,
            api_tls: crate::tls::proxy_api(&cfg),
        };
        let handle = ProxyHandle::new(spec).with_context(|| format!("proxy {}", p.name))?;
        if let Some(ptx) = published.get(p.cluster.as_str()) {
            handle.set_publisher(p.cluster.as_str(), ptx.clone())?;
        }
        let listeners = Listeners {
            clusters: vec![ClusterListeners {
                cluster: p.cluster.to_string(),
                writer: bind(p.writer).await?,
                reader: match p.reader {
                    Some(r) => Some(bind(r).await?),
                    None => None,
                },
            }],
            api: match p.api {
                Some(a) => Some(bind(a).await?),
                None => None,
            },
        };
        tracing::info!(proxy = p.name, writer = %p.writer, reader = ?p.reader, api = ?p.api, "proxy listening");
        let (c, name) = (cancel.clone(), p.name.clone());
        tracker.spawn(async move {
            if let Err(e) = handle.serve(listeners, c).await {
                tracing::error!(proxy = name, "proxy stopped: {e}");
            }
        });
    }
    wait_for_signal().await;
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(ExitCode::SUCCESS)
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
    tracing::info!("signal received; stopping the proxy");
}

/// Calls every matching proxy's admin API.
async fn admin(cfg: &Config, cluster: Option<&str>, method: &str, what: &str, json: bool) -> anyhow::Result<ExitCode> {
    if let Some(c) = cluster
        && cfg.cluster(c).is_none()
    {
        return Err(Usage(format!("cluster {c:?} is not in {}", cfg.file.display())).into());
    }
    let targets: Vec<_> = cfg
        .proxies
        .iter()
        .filter(|p| cluster.is_none_or(|c| p.cluster.as_str() == c))
        .filter_map(|p| p.api.map(|a| (p, a)))
        .collect();
    if targets.is_empty() {
        return Err(Usage("no matching [[proxies]] entry has an `api` address".into()).into());
    }
    let tls = crate::tls::http(cfg)?;
    let http = tls.client(Duration::from_secs(5))?;
    let scheme = tls.scheme();
    let mut failed = false;
    let mut results = Vec::new();
    for (p, api) in targets {
        let url = match what {
            "status" => format!("{scheme}://{api}/v1/status"),
            w => format!("{scheme}://{api}/v1/clusters/{}/{w}", p.cluster),
        };
        let mut req = if method == "POST" { http.post(&url) } else { http.get(&url) };
        if let Some(t) = cfg.proxy_api_token(p).map_err(|e| Usage(e.to_string()))? {
            req = req.bearer_auth(t.expose());
        }
        match req.timeout(Duration::from_secs(120)).send().await {
            Ok(r) if r.status().is_success() => {
                let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
                if !json {
                    println!("{} ({}): {what}: {body}", p.name, api);
                }
                results.push(serde_json::json!({ "proxy": p.name, "api": api.to_string(), "result": body }));
            }
            Ok(r) => {
                failed = true;
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                eprintln!("error: {} ({api}): HTTP {status}: {text}", p.name);
                results.push(serde_json::json!({ "proxy": p.name, "api": api.to_string(), "error": format!("HTTP {status}: {text}") }));
            }
            Err(e) => {
                failed = true;
                eprintln!("error: {} ({api}): {e}", p.name);
                results.push(serde_json::json!({ "proxy": p.name, "api": api.to_string(), "error": e.to_string() }));
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
