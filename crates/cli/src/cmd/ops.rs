//! The controller's commands: `pgdr controller` (the controller alone),
//! `pgdr run` (controller and the config's proxies in one process, the
//! embedded default), and the operator's role changes through the
//! controller's API: `pgdr failover|switchover|failback`, `pgdr approve`,
//! `pgdr workflows`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use clap::Args;
use pgdr_api::controller::{ApproveRequest, ControllerClient, RoleChangeRequest, WorkflowView};
use pgdr_config::{Config, ProxyAuth};
use pgdr_controller::runtime::{Drain, HttpProxies, ProxyControl, RouteInfo};
use pgdr_controller::{Controller, webhook::Webhooks};
use pgdr_model::ClusterName;
use pgdr_proxy::{
    AdminLogin, AuthConfig, Backend, ClusterListeners, ClusterSpec, Listeners, ProxyHandle, ProxySpec, Routing,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Global;
use crate::exit::Usage;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address for the controller's API; defaults to `controller.listen`
    /// (or the chosen instance's).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Which of `[[controller.instances]]` this process is (its API address
    /// and region); needed when the config declares several. `pgdr run`
    /// then serves the proxies of that region only.
    #[arg(long, value_name = "NAME", env = "PGDR_CONTROLLER")]
    pub controller: Option<String>,
}

/// The config as the chosen controller instance runs it.
fn load_for(global: &Global, args: &ServeArgs) -> anyhow::Result<Config> {
    Ok(global.load_config()?.for_controller(args.controller.as_deref()).map_err(Usage)?)
}

#[derive(Debug, Args)]
pub struct RoleChangeArgs {
    #[arg(long)]
    pub cluster: String,
    /// Target node or region (switchover; failover/failback may name one too).
    #[arg(long, value_name = "NODE|REGION")]
    pub to: Option<String>,
    /// Print the steps and the checks against the live topology; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (needed when not on a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Promote a replica lagging past the tier's RPO (journalled).
    #[arg(long)]
    pub allow_data_loss: bool,
    /// Stop at an approval gate until `pgdr approve ID`.
    #[arg(long)]
    pub approval: bool,
    /// Return once started instead of waiting for the end.
    #[arg(long)]
    pub no_wait: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The workflow id.
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WorkflowsArgs {
    /// One workflow, with its step journal and timings.
    pub id: Option<String>,
    #[arg(long)]
    pub json: bool,
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// The runtime of a controller (`pgdr controller`, `pgdr run`), with
/// `controller.worker_threads` threads.
fn controller_runtime(cfg: &Config) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.controller.worker_threads)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    if let Ok(mut term) = signal(SignalKind::terminate()) {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    } else {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("signal received; stopping");
    cancel.cancel();
}

async fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn pgdr_store::StateStore>> {
    if let pgdr_config::StoreKind::Etcd(etcd) = &cfg.controller.store {
        return open_etcd(cfg, etcd).await;
    }
    let dir = &cfg.controller.state_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let store = pgdr_store::EmbeddedStore::open(dir.join("pgdr.redb"))
        .await
        .with_context(|| format!("cannot open the state store in {}", dir.display()))?;
    Ok(Arc::new(store))
}

#[cfg(feature = "etcd")]
async fn open_etcd(cfg: &Config, etcd: &pgdr_config::EtcdConfig) -> anyhow::Result<Arc<dyn pgdr_store::StateStore>> {
    let file = cfg.file.display();
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("{file}: controller.{key}: cannot read {}", path.display()))
    };
    let mut options = pgdr_store::EtcdOptions::new(etcd.endpoints.clone());
    options.prefix = etcd.prefix.clone();
    options.timeout = etcd.timeout;
    if let Some(ca) = &etcd.ca {
        let identity = match &etcd.identity {
            Some(id) => Some((read("etcd_cert", &id.cert)?, read("etcd_key", &id.key)?)),
            None => None,
        };
        options.tls = Some(pgdr_store::EtcdTls { ca_pem: read("etcd_ca", ca)?, identity });
    }
    if let (Some(user), Some(password)) = (&etcd.user, &etcd.password) {
        let password = password
            .resolve()
            .with_context(|| format!("{file}: controller.etcd_password: cannot read the password"))?;
        options.user = Some((user.clone(), pgdr_store::EtcdPassword::new(password)));
    }
    let store = pgdr_store::EtcdStore::connect(options)
        .await
        .with_context(|| format!("cannot use the etcd state store at {}", etcd.endpoints.join(", ")))?;
    tracing::info!(endpoints = ?etcd.endpoints, prefix = %etcd.prefix, "state store: etcd");
    Ok(Arc::new(store))
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(_: &Config, _: &pgdr_config::EtcdConfig) -> anyhow::Result<Arc<dyn pgdr_store::StateStore>> {
    Err(Usage("controller.store = \"etcd\": this pgdr was built without the `etcd` feature; rebuild with it (the default) or use \"embedded\"".into()).into())
}

fn webhooks(cfg: &Config, tracker: &TaskTracker, cancel: &CancellationToken) -> Webhooks {
    let targets =
        cfg.notify.iter().map(|n| (n.webhook.clone(), n.token.as_ref().and_then(|t| t.resolve().ok()))).collect();
    Webhooks::start(targets, tracker, cancel.clone())
}

/// A controller without a token serves only on loopback.
fn refuse_open_listen(cfg: &Config, listen: &str) -> anyhow::Result<()> {
    if cfg.controller.tokens.is_empty() && !crate::cmd::agent::is_loopback(listen) {
        return Err(Usage(format!(
            "--listen {listen} is not a loopback address and {} sets no [[controller.tokens]]: refusing to serve without one",
            cfg.file.display()
        ))
        .into());
    }
    Ok(())
}

fn owner(cfg: &Config) -> String {
    format!("controller@{}", cfg.controller.listen)
}

/// With the etcd store, several controllers may share the state: wait to
/// be elected leader (standing by meanwhile), then write only through the
/// fenced store, so every write checks in its own transaction that this
/// controller still leads. Losing leadership cancels `ctl` (the controller
/// part only: proxies keep serving) and the returned token says so; a stop
/// of `root` gives leadership up. The embedded store is one controller's by
/// construction (its file is locked).
async fn lead(
    cfg: &Config,
    store: Arc<dyn pgdr_store::StateStore>,
    root: &CancellationToken,
    ctl: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<(Arc<dyn pgdr_store::StateStore>, Option<CancellationToken>)> {
    if !matches!(cfg.controller.store, pgdr_config::StoreKind::Etcd(_)) {
        return Ok((store, None));
    }
    let region = cfg.controller.region.as_ref().map(|r| r.to_string()).unwrap_or_else(|| "-".into());
    let name = format!("{} region {region} pid {}", owner(cfg), std::process::id());
    let instance = cfg.controller.instances.iter().find(|i| i.listen == cfg.controller.listen).cloned();
    let mut election = pgdr_store::Election::new(store.clone(), name.clone(), cfg.timing.lease_ttl);
    if let Some(i) = &instance {
        election = election.with_instance(i.name.clone(), i.region.to_string());
    }
    let mut waited = None::<String>;
    let leadership = election
        .campaign(root, |holder| {
            if waited.as_deref() != Some(holder.holder.as_str()) {
                tracing::info!(leader = %holder.holder, term = holder.term, "standing by: another controller leads");
                waited = Some(holder.holder.clone());
            }
        })
        .await
        .context("campaigning for controller leadership")?;
    tracing::info!(term = leadership.info.term, "this controller leads ({name})");
    let fenced = leadership.fenced();
    let lost = leadership.lost();
    // Cancelled when this controller stops leading without stopping: lost,
    // or handed over to the primaries' region.
    let ended = CancellationToken::new();
    let follow = (cfg.controller.instances.len() > 1).then(|| Follow::new(cfg, store));
    let (r, c, l, e) = (root.clone(), ctl.clone(), lost.clone(), ended.clone());
    let events = pgdr_store::EventLog::new(fenced.clone(), pgdr_store::DEFAULT_EVENT_RETENTION);
    tracker.spawn(async move {
        let mut follow = follow;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = r.cancelled() => {
                    // Stopping: give leadership up so a standby takes over at once.
                    if let Err(e) = leadership.resign().await {
                        tracing::warn!(error = %e, "cannot resign controller leadership; it expires by itself");
                    }
                    return;
                }
                _ = l.cancelled() => {
                    tracing::error!("this controller no longer leads: stopping its controller part, standing by again");
                    c.cancel();
                    e.cancel();
                    return;
                }
                _ = tick.tick(), if follow.is_some() => {
                    let Some(f) = follow.as_mut() else { continue };
                    let Some((to, reason, clusters)) = f.decide().await else { continue };
                    tracing::info!(to = %to, "handing controller leadership over: {reason}");
                    let now = time::OffsetDateTime::now_utc();
                    for cluster in clusters {
                        let mut ev = pgdr_store::Event::new(cluster, "leadership_handed_over", now);
                        ev.message = Some(format!("controller leadership handed to {to}: {reason}"));
                        if let Err(err) = events.append(&ev).await {
                            tracing::warn!(error = %err, "cannot record the leadership handover event");
                        }
                    }
                    c.cancel();
                    e.cancel();
                    if let Err(err) = leadership.hand_to(&to, &reason).await {
                        tracing::warn!(error = %err, "cannot hand controller leadership over; it expires by itself");
                    }
                    return;
                }
            }
        }
    });
    Ok((fenced, Some(ended)))
}

/// What the leader reads to decide whether to hand leadership to the
/// primaries' region (`pgdr_decide::leadership`).
struct Follow {
    store: Arc<dyn pgdr_store::StateStore>,
    clusters: pgdr_store::ClusterStore,
    /// Each cluster with its nodes' regions.
    topology: Vec<(ClusterName, HashMap<String, String>)>,
    region: String,
    origin: tokio::time::Instant,
    leading_since: pgdr_decide::At,
    /// When each standby instance was first seen standing by.
    seen: HashMap<String, pgdr_decide::At>,
    settle_ms: u64,
    /// The last reason for staying, logged when it changes.
    last: String,
}

impl Follow {
    fn new(cfg: &Config, store: Arc<dyn pgdr_store::StateStore>) -> Self {
        let topology = cfg
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.nodes.iter().map(|n| (n.name.to_string(), n.region.to_string())).collect()))
            .collect();
        let clock: Arc<dyn pgdr_store::Clock> = Arc::new(pgdr_store::SystemClock);
        Follow {
            clusters: pgdr_store::ClusterStore::new(store.clone(), clock),
            store,
            topology,
            region: cfg.controller.region.as_ref().map(|r| r.to_string()).unwrap_or_default(),
            origin: tokio::time::Instant::now(),
            leading_since: pgdr_decide::At(0),
            seen: HashMap::new(),
            // Two lease TTLs: the standby has renewed its presence several
            // times, and a handover cannot follow a role change at once.
            settle_ms: (cfg.timing.lease_ttl * 2).as_millis() as u64,
            last: String::new(),
        }
    }

    fn now(&self) -> pgdr_decide::At {
        pgdr_decide::At(self.origin.elapsed().as_millis() as u64)
    }

    /// `Some((instance, reason, clusters))` when leadership should go to
    /// `instance` now. A store error decides nothing.
    async fn decide(&mut self) -> Option<(String, String, Vec<ClusterName>)> {
        use pgdr_decide::leadership::{ClusterSeen, Decision, StandbySeen, View, follow_primaries};
        let mut clusters = Vec::new();
        for (name, regions) in &self.topology {
            let state = self.clusters.state(name).await.ok()?;
            let primary = state.and_then(|s| s.primary);
            let leased = match (&primary, self.clusters.primary_lease(name).await.ok()?) {
                (Some(p), Some((l, _))) => &l.holder == p,
                _ => false,
            };
            let locked = self.store.get(&pgdr_store::keys::cluster_lock(name.as_str())).await.ok()?.is_some();
            let primary_region = primary.and_then(|p| regions.get(p.as_str()).cloned());
            clusters.push(ClusterSeen { primary_region, locked, leased });
        }
        let standbys = pgdr_store::Election::standbys(self.store.as_ref()).await.ok()?;
        let now = self.now();
        self.seen.retain(|i, _| standbys.iter().any(|s| &s.instance == i));
        let standbys = standbys
            .into_iter()
            .map(|s| {
                let since = *self.seen.entry(s.instance.clone()).or_insert(now);
                StandbySeen { instance: s.instance, region: s.region, since }
            })
            .collect();
        let view = View { now, region: self.region.clone(), leading_since: self.leading_since, clusters, standbys };
        match follow_primaries(&view, self.settle_ms) {
            Decision::HandTo { instance, reason } => {
                Some((instance, reason, self.topology.iter().map(|(c, _)| c.clone()).collect()))
            }
            Decision::Stay(why) => {
                if why != self.last {
                    tracing::debug!("controller leadership stays here: {why}");
                    self.last = why;
                }
                None
            }
        }
    }
}

/// Whether the controller part stopped because leadership was lost (then
/// it campaigns again) rather than because the process stops.
fn lost_leadership(root: &CancellationToken, lost: &Option<CancellationToken>) -> bool {
    !root.is_cancelled() && lost.as_ref().is_some_and(|l| l.is_cancelled())
}

/// `pgdr controller`: the controller alone; proxies are driven over their admin API.
pub fn controller(global: &Global, args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logs();
    // In a sandbox with links between regions, other regions are reached through relays.
    let cfg = pgdr_sandbox::wan::view_for_controller(load_for(global, &args)?);
    let listen = args.listen.unwrap_or_else(|| cfg.controller.listen.to_string());
    refuse_open_listen(&cfg, &listen)?;
    controller_runtime(&cfg)?.block_on(async move {
        let cancel = CancellationToken::new();
        tokio::spawn(signal(cancel.clone()));
        let tracker = TaskTracker::new();
        let shared = open_store(&cfg).await?;
        let proxies = Arc::new(HttpProxies::from_config(&cfg).context("[tls]")?);
        let name = owner(&cfg);
        loop {
            let part = cancel.child_token();
            let (store, lost) = match lead(&cfg, shared.clone(), &cancel, &part, &tracker).await {
                Err(_) if cancel.is_cancelled() => break,
                r => r?,
            };
            let hooks = webhooks(&cfg, &tracker, &part);
            let ctl = Controller::new(cfg.clone(), store, proxies.clone(), &name, hooks).await?;
            let listener =
                tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
            ctl.run(listener, part.clone()).await?;
            part.cancel();
            if !lost_leadership(&cancel, &lost) {
                break;
            }
        }
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// The proxies of `pgdr run`, driven in-process.
#[derive(Debug)]
struct InProcess {
    /// One routing channel per proxy, with the proxy's region.
    routes: HashMap<ClusterName, Vec<(String, watch::Sender<Routing>)>>,
    /// In a sandbox with links between regions: each node as seen from each
    /// region, so a proxy reaches backends the way its region does.
    backends: Option<pgdr_sandbox::wan::Backends>,
    handles: HashMap<ClusterName, Vec<(String, ProxyHandle)>>,
    /// With controllers in several regions: the proxies the other regions'
    /// `pgdr run` serve, reached through their admin API (they also follow
    /// the store's routes by themselves).
    others: Option<Others>,
}

/// The other regions' proxies, as the leader drives them through a role
/// change: paused and resumed with its own, so their clients wait instead
/// of failing too, but never held up by a region that does not answer.
#[derive(Debug)]
struct Others {
    http: HttpProxies,
    /// Each of their pauses ends by itself after this (their longest
    /// `max_pause`: by then every queued client gave up anyway) unless
    /// resumed first: a leader lost mid-change, or a pause that crossed a
    /// slow link and arrived after its resume, does not leave them paused.
    hold: Duration,
    /// How long a pause that lets running transactions finish waits for
    /// their answer: their longest `drain_timeout`, and a second.
    drain_wait: Duration,
    /// A pause on its way, per cluster: a resume stops it first.
    in_flight: std::sync::Mutex<HashMap<ClusterName, tokio::task::AbortHandle>>,
}

/// How long a resume waits for the other regions' proxies to answer.
const OTHERS_WAIT: Duration = Duration::from_millis(1500);

impl Others {
    fn new(cfg: &pgdr_config::Config, keep: impl Fn(&pgdr_config::Proxy) -> bool) -> anyhow::Result<Others> {
        let theirs = || cfg.proxies.iter().filter(|p| keep(p));
        Ok(Others {
            http: HttpProxies::from_config_where(cfg, &keep).context("[tls]")?,
            hold: theirs().map(|p| p.max_pause).max().unwrap_or(Duration::from_secs(30)),
            drain_wait: theirs().map(|p| p.drain_timeout).max().unwrap_or_default() + Duration::from_secs(1),
            in_flight: std::sync::Mutex::new(HashMap::new()),
        })
    }

    async fn pause(&self, cluster: &ClusterName, drain: Drain) -> Result<(), String> {
        if !self.http.serves(cluster) {
            return Ok(());
        }
        let (http, c, hold) = (self.http.clone(), cluster.clone(), self.hold);
        let task = tokio::spawn(async move {
            let r = http.pause_held(&c, drain, hold).await;
            if let Err(e) = &r {
                tracing::warn!(cluster = %c, "cannot pause other regions' proxies: {e}");
            }
            r
        });
        if let Ok(mut m) = self.in_flight.lock() {
            m.insert(cluster.clone(), task.abort_handle());
        }
        // Nothing to drain (a failover, a suspicion): what runs on the old
        // primary cannot finish in a way that counts, so the change does
        // not wait on a region that may not answer; the answer is logged.
        if drain == Drain::Nothing {
            return Ok(());
        }
        let wait = self.drain_wait;
        match tokio::time::timeout(wait, task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("other regions' proxies: {e}")),
            Ok(Err(e)) => Err(format!("other regions' proxies: the pause's task failed: {e}")),
            Err(_) => Err(format!(
                "other regions' proxies did not answer the pause within {} ms (each ends it by itself after {} s)",
                wait.as_millis(),
                self.hold.as_secs()
            )),
        }
    }

    /// Resumes them. They take routes from the store, not over their API
    /// (which refuses them), and a role change stores the new epoch steps
    /// before it resumes: what they held goes to the new primary.
    async fn resume(&self, cluster: &ClusterName) -> Result<(), String> {
        if !self.http.serves(cluster) {
            return Ok(());
        }
        if let Some(p) = self.in_flight.lock().ok().and_then(|mut m| m.remove(cluster)) {
            p.abort();
        }
        match tokio::time::timeout(OTHERS_WAIT, self.http.resume(cluster)).await {
            Ok(r) => r.map_err(|e| format!("other regions' proxies: {e}")),
            Err(_) => Err(format!(
                "other regions' proxies did not answer the resume within {} ms (a pause ends by itself after {} s)",
                OTHERS_WAIT.as_millis(),
                self.hold.as_secs()
            )),
        }
    }
}

impl InProcess {
    fn resume_own(&self, cluster: &ClusterName) -> Result<(), String> {
        for (_, h) in self.handles.get(cluster).into_iter().flatten() {
            h.resume(cluster.as_str()).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Both results: the first error, with the other's.
fn both(a: Result<(), String>, b: Result<(), String>) -> Result<(), String> {
    match (a, b) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => Err(format!("{a}; {b}")),
    }
}

#[async_trait]
impl ProxyControl for InProcess {
    async fn pause(&self, cluster: &ClusterName, drain: Drain) -> Result<(), String> {
        let own = async {
            for (_, h) in self.handles.get(cluster).into_iter().flatten() {
                let drain = match drain {
                    Drain::Running => None,
                    Drain::Nothing => Some(Duration::ZERO),
                };
                h.pause_with(cluster.as_str(), drain).await.map_err(|e| e.to_string())?;
            }
            Ok(())
        };
        let others = async {
            match &self.others {
                Some(o) => o.pause(cluster, drain).await,
                None => Ok(()),
            }
        };
        let (own, others) = tokio::join!(own, others);
        both(own, others)
    }

    async fn resume(&self, cluster: &ClusterName) -> Result<(), String> {
        let own = self.resume_own(cluster);
        let others = match &self.others {
            Some(o) => o.resume(cluster).await,
            None => Ok(()),
        };
        both(own, others)
    }

    async fn refresh_users(&self, cluster: &ClusterName) -> Vec<(String, Result<(), String>)> {
        let mut out = Vec::new();
        for (name, h) in self.handles.get(cluster).into_iter().flatten() {
            out.push((name.clone(), h.refresh_users(cluster.as_str()).await.map(|_| ()).map_err(|e| e.to_string())));
        }
        // Another region's proxy that kept the old verifier would refuse the
        // new secret (until its own reload, every minute) once the stores
        // hand it out.
        if let Some(o) = &self.others {
            out.extend(o.http.refresh_users(cluster).await);
        }
        out
    }

    fn publish(&self, cluster: &ClusterName, route: &RouteInfo) {
        for (region, tx) in self.routes.get(cluster).into_iter().flatten() {
            let backend = |n: &pgdr_model::NodeName, h: &String, p: &u16| {
                let (h, p) =
                    self.backends.as_ref().and_then(|b| b.addr(region, n.as_str())).unwrap_or_else(|| (h.clone(), *p));
                Backend::new(n.as_str(), h, p)
            };
            let routing = Routing {
                epoch: route.epoch,
                primary: route.primary.as_ref().map(|(n, h, p)| backend(n, h, p)),
                replicas: route.replicas.iter().map(|(n, h, p)| backend(n, h, p)).collect(),
            };
            // Never back to an older epoch.
            tx.send_if_modified(|cur| cur.accept(routing));
        }
    }
}

async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))
}

/// `pgdr run`: the controller and every proxy of the config in one process.
pub fn run(global: &Global, args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logs();
    let written = load_for(global, &args)?;
    let backends = pgdr_sandbox::wan::Backends::of(&written);
    // In a sandbox with links between regions, other regions are reached through relays.
    let cfg = pgdr_sandbox::wan::view_for_controller(written);
    let listen = args.listen.unwrap_or_else(|| cfg.controller.listen.to_string());
    refuse_open_listen(&cfg, &listen)?;
    controller_runtime(&cfg)?.block_on(async move {
        let cancel = CancellationToken::new();
        tokio::spawn(signal(cancel.clone()));
        let tracker = TaskTracker::new();
        let shared = open_store(&cfg).await?;
        // With one controller instance, a standby `pgdr run` binds nothing
        // (its proxies' and API's ports may be the leader's, on the same host)
        // until it first leads. With controllers per region each serves its
        // own region's proxies from the start, on the routes the store names
        // while it stands by. Losing leadership stops only the controller
        // part: the proxies keep serving.
        let per_region = cfg.controller.instances.len() > 1;
        let mut part = cancel.child_token();
        let mut leading = if per_region {
            None
        } else {
            Some(match lead(&cfg, shared.clone(), &cancel, &part, &tracker).await {
                Err(_) if cancel.is_cancelled() => return Ok(ExitCode::SUCCESS),
                r => r?,
            })
        };
        let mut routes: HashMap<ClusterName, Vec<(String, watch::Sender<Routing>)>> = HashMap::new();
        let mut handles: HashMap<ClusterName, Vec<(String, ProxyHandle)>> = HashMap::new();
        // With controllers in several regions each serves its own region's
        // proxies (another region's addresses are another host's).
        let serves = |p: &&pgdr_config::Proxy| !per_region || cfg.controller.region.as_ref() == Some(&p.region);
        for p in cfg.proxies.iter().filter(serves) {
            let cluster = cfg.cluster(p.cluster.as_str()).context("proxy of an unknown cluster")?;
            let (tx, routing) = watch::channel(Routing::default());
            routes.entry(p.cluster.clone()).or_default().push((p.region.to_string(), tx));
            let auth = match &p.auth {
                ProxyAuth::Users { file } => AuthConfig::UsersFile(file.clone()),
                ProxyAuth::Passthrough => match cluster.password.as_ref().and_then(|s| s.resolve().ok()) {
                    // Verifiers read from the backend let sessions move to a new primary.
                    Some(pw) => AuthConfig::Auto(AdminLogin {
                        user: cluster.user.clone(),
                        password: Some(pw),
                        database: cluster.database.clone(),
                        tls: crate::tls::pg(&cfg)?,
                    }),
                    None => AuthConfig::Passthrough,
                },
            };
            let spec = ProxySpec {
                clusters: vec![ClusterSpec {
                    name: p.cluster.clone(),
                    routing,
                    settings: crate::tls::proxy_settings(&cfg, p)?,
                    auth,
                }],
                tls: p.tls.clone(),
                require_tls: p.require_tls,
                api_token: cfg.proxy_api_token(p).map_err(|e| Usage(e.to_string()))?,
                api_tls: crate::tls::proxy_api(&cfg),
            };
            let handle = ProxyHandle::new(spec).with_context(|| format!("proxy {}", p.name))?;
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
            let (h, c, name) = (handle.clone(), cancel.clone(), p.name.clone());
            tracker.spawn(async move {
                if let Err(e) = h.serve(listeners, c).await {
                    tracing::error!(proxy = name, "proxy stopped: {e}");
                }
            });
            tracing::info!(proxy = p.name, writer = %p.writer, "proxy started");
            handles.entry(p.cluster.clone()).or_default().push((p.name.clone(), handle));
        }
        let others = if !per_region { None } else { Some(Others::new(&cfg, |p| !serves(&p))?) };
        let control = Arc::new(InProcess { routes, backends, handles, others });
        let name = owner(&cfg);
        let res = loop {
            let (store, lost) = match leading.take() {
                Some(l) => l,
                None => {
                    part = cancel.child_token();
                    // Standing by (not yet leading, or leadership lost or
                    // handed over): this process's proxies serve the routes
                    // the store names until it leads.
                    let standing = cancel.child_token();
                    tracker.spawn(follow_routes(cfg.clone(), shared.clone(), control.clone(), standing.clone()));
                    let won = lead(&cfg, shared.clone(), &cancel, &part, &tracker).await;
                    standing.cancel();
                    match won {
                        Err(_) if cancel.is_cancelled() => break Ok(()),
                        r => r?,
                    }
                }
            };
            let hooks = webhooks(&cfg, &tracker, &part);
            let ctl = Controller::new(cfg.clone(), store, control.clone(), &name, hooks).await?;
            let listener =
                tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
            let res = ctl.run(listener, part.clone()).await;
            part.cancel();
            if res.is_err() || !lost_leadership(&cancel, &lost) {
                break res;
            }
        };
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        res?;
        Ok(ExitCode::SUCCESS)
    })
}

/// While a `pgdr run` stands by (with controllers per region, from its
/// start; with one instance, after it led), its proxies follow the store:
/// each cluster's epoch and primary as stored, and as replicas the nodes
/// the leader's latest observation record (`/pgdr/clusters/{c}/observed`,
/// written about once a second while it sees the primary) measured
/// replaying from that primary, as long as the record is about the stored
/// primary and under a minute old. It follows a watch on the clusters' keys,
/// so it works per change, not per tick: the watch starts first, then
/// everything is read once, then each change is applied from the event
/// itself; a broken watch starts over. Routes never go back an epoch, so a
/// late publication cannot undo a newer one. The leader pauses and resumes
/// these with its own (through their admin API); they see a failover as
/// the store shows it (the fence epoch names no primary: clients are held)
/// and a switchover's new primary once it is stored.
async fn follow_routes(
    cfg: Config,
    store: Arc<dyn pgdr_store::StateStore>,
    control: Arc<InProcess>,
    stop: CancellationToken,
) {
    use pgdr_controller::handover::{Handover, seed};
    use pgdr_store::{WatchEvent, keys};
    #[derive(Default)]
    struct Known {
        state: Option<pgdr_store::ClusterState>,
        observed: Option<Handover>,
    }
    let followed: Vec<&pgdr_config::Cluster> =
        cfg.clusters.iter().filter(|c| control.routes.contains_key(&c.name)).collect();
    let publish = |cluster: &pgdr_config::Cluster, k: &Known| {
        let Some(state) = &k.state else { return };
        let addr = |n: &pgdr_config::Node| (n.name.clone(), n.host.clone(), n.port);
        let primary = state.primary.as_ref().and_then(|p| cluster.node(p.as_str())).map(addr);
        let measured = match (&k.observed, &state.primary) {
            (Some(o), Some(p)) => seed(o, p, unix_ms_now()).map(|s| s.lag).unwrap_or_default(),
            _ => Default::default(),
        };
        let replicas = cluster
            .nodes
            .iter()
            .filter(|n| Some(&n.name) != state.primary.as_ref() && measured.contains_key(&n.name))
            .map(addr)
            .collect();
        control.publish(&cluster.name, &RouteInfo { epoch: state.epoch, primary, replicas });
    };
    let decode = |key: &str, bytes: &[u8]| -> (Option<pgdr_store::ClusterState>, Option<Handover>) {
        if key.ends_with("/state") {
            (serde_json::from_slice(bytes).ok(), None)
        } else {
            (None, serde_json::from_slice(bytes).ok())
        }
    };
    let retry = cfg.timing.lease_renew.max(Duration::from_millis(100));
    let mut known: HashMap<ClusterName, Known> = HashMap::new();
    loop {
        let watch = store.watch(keys::CLUSTERS).await;
        for cluster in &followed {
            let k = known.entry(cluster.name.clone()).or_default();
            for key in [keys::cluster_state(cluster.name.as_str()), keys::cluster_observed(cluster.name.as_str())] {
                if let Ok(v) = store.get(&key).await {
                    let (state, observed) = v.map(|v| decode(&key, &v.value)).unwrap_or_default();
                    if key.ends_with("/state") {
                        k.state = state.or(k.state.take());
                    } else {
                        k.observed = observed;
                    }
                }
            }
            publish(cluster, k);
        }
        match watch {
            Ok(mut w) => loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => return,
                    ev = w.next() => ev,
                };
                let Ok(Some(ev)) = ev else { break };
                let Some((name, what)) = ev.key().strip_prefix(keys::CLUSTERS).and_then(|r| r.split_once('/')) else {
                    continue;
                };
                if what != "state" && what != "observed" {
                    continue;
                }
                let Some(cluster) = followed.iter().find(|c| c.name.as_str() == name) else { continue };
                let k = known.entry(cluster.name.clone()).or_default();
                match &ev {
                    WatchEvent::Put { key, value } => {
                        let (state, observed) = decode(key, &value.value);
                        if what == "state" {
                            k.state = state.or(k.state.take());
                        } else {
                            k.observed = observed;
                        }
                    }
                    WatchEvent::Delete { .. } if what == "observed" => k.observed = None,
                    WatchEvent::Delete { .. } => {}
                }
                publish(cluster, k);
            },
            Err(e) => tracing::debug!(error = %e, "cannot watch the clusters' keys; reading them again in {retry:?}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A client of the controller with the token `need` calls for (see
/// [`Config::controller_client_token`]); `PGDR_TOKEN` overrides the config.
pub fn client_for(cfg: &Config, need: pgdr_config::Access) -> anyhow::Result<ControllerClient> {
    let token = match std::env::var("PGDR_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Some(pgdr_config::Redacted::from(t.trim())),
        _ => cfg.controller_client_token(need).map_err(|e| Usage(e.to_string()))?,
    };
    Ok(ControllerClient::new_multi(&cfg.controller_addrs(), token, &crate::tls::http(cfg)?)?)
}

fn client(cfg: &Config) -> anyhow::Result<ControllerClient> {
    client_for(cfg, pgdr_config::Access::Operator)
}

fn confirm(what: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Usage(format!("{what} changes the cluster: pass --yes to confirm when not on a terminal")).into());
    }
    eprint!("{what}: proceed? [y/N] ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if matches!(line.trim(), "y" | "Y" | "yes") { Ok(()) } else { Err(Usage("not confirmed".into()).into()) }
}

pub(crate) fn api_err(e: pgdr_api::ApiError) -> anyhow::Error {
    match &e {
        pgdr_api::ApiError::Failed { kind, .. }
            if kind == "bad_request" || kind == "not_found" || kind == "conflict" =>
        {
            Usage(e.to_string()).into()
        }
        _ => e.into(),
    }
}

/// `pgdr failover|switchover|failback`.
pub fn role_change(global: &Global, kind: &str, args: RoleChangeArgs) -> anyhow::Result<ExitCode> {
    let cfg = global.load_config()?;
    if cfg.cluster(&args.cluster).is_none() {
        return Err(Usage(format!("no cluster {:?} in {}", args.cluster, cfg.file.display())).into());
    }
    if !args.dry_run {
        let target = args.to.as_deref().map(|t| format!(" to {t}")).unwrap_or_default();
        confirm(&format!("{kind} of cluster {}{target}", args.cluster), args.yes)?;
    }
    let client = client(&cfg)?;
    runtime()?.block_on(async move {
        let req = RoleChangeRequest {
            to: args.to.clone(),
            dry_run: args.dry_run,
            allow_data_loss: args.allow_data_loss,
            require_approval: args.approval,
            requested_by: Some(std::env::var("USER").unwrap_or_else(|_| "cli".into())),
        };
        let started = client.role_change(&args.cluster, kind, &req).await.map_err(api_err)?;
        if args.dry_run || args.no_wait {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&started)?);
            } else {
                if args.dry_run {
                    println!("{kind} of {} (dry run: nothing changes):", started.cluster);
                } else {
                    println!("{kind} of {} started: {}", started.cluster, started.id.as_deref().unwrap_or(""));
                }
                for l in &started.plan {
                    println!("  {l}");
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        let id = started.id.clone().unwrap_or_default();
        if !args.json {
            eprintln!("{kind} {id} started; waiting for it to end (Ctrl-C leaves it running)");
        }
        let view = wait(&client, &id, args.json).await?;
        print_workflow(&view, args.json)?;
        Ok(if view.state == "succeeded" { ExitCode::SUCCESS } else { ExitCode::from(1) })
    })
}

async fn wait(client: &ControllerClient, id: &str, quiet: bool) -> anyhow::Result<WorkflowView> {
    let mut announced = false;
    loop {
        let v = client.workflow(id).await?;
        if matches!(v.state.as_str(), "succeeded" | "failed" | "cancelled") {
            return Ok(v);
        }
        if v.state == "waiting_approval" && !announced && !quiet {
            eprintln!("waiting for approval: pgdr approve {id}");
            announced = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_workflow(v: &WorkflowView, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!(
        "{} {} on {}: {}{}",
        v.kind,
        v.id,
        v.cluster,
        v.state,
        v.duration_ms.map(|d| format!(" in {:.2}s", d as f64 / 1000.0)).unwrap_or_default()
    );
    for s in &v.steps {
        println!(
            "  {:<20} {:<17} {:>8} attempts={}{}",
            s.name,
            s.state,
            s.duration_ms.map(|d| format!("{d}ms")).unwrap_or_default(),
            s.attempts,
            s.error.as_deref().map(|e| format!("  error: {e}")).unwrap_or_default()
        );
    }
    if let Some(e) = &v.error {
        println!("  error: {e}");
    }
    Ok(())
}

/// `pgdr approve ID`.
pub fn approve(global: &Global, args: ApproveArgs) -> anyhow::Result<ExitCode> {
    let cfg = global.load_config()?;
    let client = client(&cfg)?;
    runtime()?.block_on(async move {
        // The controller records the token's name as the approver.
        let v = client.approve(&args.id, &ApproveRequest::default()).await.map_err(api_err)?;
        print_workflow(&v, args.json)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `pgdr workflows [ID]`.
pub fn workflows(global: &Global, args: WorkflowsArgs) -> anyhow::Result<ExitCode> {
    let cfg = global.load_config()?;
    let client = client_for(&cfg, pgdr_config::Access::Viewer)?;
    runtime()?.block_on(async move {
        if let Some(id) = &args.id {
            let v = client.workflow(id).await.map_err(api_err)?;
            print_workflow(&v, args.json)?;
            return Ok(ExitCode::SUCCESS);
        }
        let list = client.workflows().await.map_err(api_err)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&list)?);
        } else {
            for v in &list {
                println!(
                    "{}  {:<12} {:<10} {:<18} {}",
                    v.id,
                    v.kind,
                    v.cluster,
                    v.state,
                    v.created_at.as_deref().unwrap_or("")
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
