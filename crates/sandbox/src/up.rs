//! Bringing a sandbox up: one `initdb` (the primary), parallel base backups
//! with slots for every other node (the node layer's rebuild), `pgdr.toml`,
//! one detached agent process per node, then a wait until every agent
//! answers and every replica streams.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pgdr_api::HttpTls;
use pgdr_api::agent::{AgentClient, slot_name};
use pgdr_model::Redacted;
use pgdr_node::local::{Login, PgTls};
use pgdr_node::replica::{self, ReplicaPlan, Upstream};
use pgdr_node::{LocalPg, PgBinaries, RunAs};

use crate::SandboxError;
use crate::down::{DownReport, stop_record};
use crate::record::{NodeRecord, Record, RecordState, SandboxRole};
use crate::render::{self, ConfigText, ProxyPorts};

const PG_WAIT: Duration = Duration::from_secs(60);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The most clusters one sandbox makes (`--clusters`).
pub const MAX_CLUSTERS: usize = 200;
/// How many clusters `up` brings up at once (initdb and base backups are
/// CPU- and disk-bound).
const PARALLEL_CLUSTERS: usize = 4;
/// Where TCP logins to a sandbox's servers come from (every part runs on
/// this host), over TLS only when the sandbox has certificates.
const HBA_NETWORKS: [&str; 2] = ["127.0.0.1/32", "::1/128"];

/// How to build a sandbox; see [`Sandbox::builder`].
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    dir: Option<PathBuf>,
    regions: Vec<String>,
    replicas_per_region: usize,
    /// Standbys in each other region (default: `replicas_per_region`).
    standbys_per_region: Option<usize>,
    base_port: u16,
    /// The cluster's `on_crash` (default: the config's default, restart-first).
    on_crash: Option<String>,
    /// One-way delay on every cross-region path (relays; see [`crate::wan`]).
    wan_delay: Option<Duration>,
    /// A CA and certificates, and TLS on every connection (the default).
    tls: bool,
    /// A three-member etcd as the state store instead of the embedded one.
    etcd: bool,
    /// How many clusters, each with the topology above (1: one named
    /// `main`; more: `c01`.. with small PostgreSQL settings).
    clusters: usize,
    /// A controller per region (`[[controller.instances]]`, named after
    /// its region) instead of one; needs `etcd`.
    controller_per_region: bool,
}

/// A running sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub record: Record,
    password: Redacted,
    token: Redacted,
    /// TLS toward PostgreSQL with the sandbox's CA, when it made one.
    tls: Option<PgTls>,
    /// HTTPS toward the APIs with the sandbox's CA and the CLI's certificate.
    http: HttpTls,
}

impl Sandbox {
    /// Default: regions `east` (primary + 1 replica) and `west` (1 standby),
    /// free ports.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder {
            dir: None,
            regions: vec!["east".into(), "west".into()],
            replicas_per_region: 1,
            standbys_per_region: None,
            base_port: 0,
            on_crash: None,
            wan_delay: None,
            tls: true,
            etcd: false,
            clusters: 1,
            controller_per_region: false,
        }
    }

    /// Opens the sandbox recorded in `dir` (for `pgdr` commands run later).
    pub fn open(dir: &Path) -> Result<Option<Sandbox>, SandboxError> {
        let Some(record) = Record::load(dir)? else { return Ok(None) };
        let read = |f: &str| {
            let p = dir.join("secrets").join(f);
            std::fs::read_to_string(&p).map(|s| s.trim().to_owned()).map_err(SandboxError::io(&p))
        };
        let (tls, http) = crate::certs::clients(dir)?;
        Ok(Some(Sandbox {
            tls,
            http,
            dir: record.dir.clone(),
            config: record.config.clone(),
            password: read("postgres.password")?.into(),
            token: read("agent.token")?.into(),
            record,
        }))
    }

    pub fn nodes(&self) -> &[NodeRecord] {
        &self.record.nodes
    }

    pub fn node(&self, name: &str) -> Result<&NodeRecord, SandboxError> {
        self.record.node(name).ok_or_else(|| SandboxError::NoSuchNode(name.to_owned()))
    }

    /// The node `up` made primary.
    pub fn primary(&self) -> &NodeRecord {
        self.record.nodes.iter().find(|n| n.role == SandboxRole::Primary).unwrap_or(&self.record.nodes[0])
    }

    /// The `postgres` superuser's password.
    pub fn password(&self) -> &str {
        self.password.expose()
    }

    /// The agents' bearer token.
    pub fn token(&self) -> &str {
        self.token.expose()
    }

    /// `postgresql://postgres:PASSWORD@127.0.0.1:PORT/postgres`, with
    /// `?sslmode=verify-full&sslrootcert=CA` when the sandbox has TLS (its
    /// servers take TCP logins only over TLS).
    pub fn uri(&self, node: &NodeRecord) -> String {
        let mut uri = format!("postgresql://postgres:{}@{}:{}/postgres", self.password.expose(), node.host, node.port);
        if let Some(t) = &self.tls {
            uri.push_str(&format!("?sslmode=verify-full&sslrootcert={}", uri_encode(&t.ca().display().to_string())));
        }
        uri
    }

    /// The libpq parameters a client of this sandbox's servers and proxies
    /// adds to its connection string: ` sslmode=verify-full sslrootcert='CA'`
    /// with TLS, empty without.
    pub fn tls_params(&self) -> String {
        self.tls.as_ref().map(PgTls::libpq_params).unwrap_or_default()
    }

    pub fn login(&self) -> Login {
        Login {
            user: "postgres".into(),
            password: Some(self.password.expose().to_owned()),
            database: "postgres".into(),
            tls: self.tls.clone(),
        }
    }

    /// TLS toward the sandbox's servers (`None` when made without TLS).
    pub fn pg_tls(&self) -> Option<&PgTls> {
        self.tls.as_ref()
    }

    /// How to call the sandbox's APIs (HTTPS with its CA and the CLI's
    /// certificate, or plain HTTP).
    pub fn http_tls(&self) -> &HttpTls {
        &self.http
    }

    /// A client of a node's agent, with the sandbox's token.
    pub fn agent(&self, node: &str) -> Result<AgentClient, SandboxError> {
        let n = self.node(node)?;
        AgentClient::new_with(&n.agent, Some(self.token.clone()), &self.http)
            .map_err(|e| SandboxError::Agent { node: node.to_owned(), detail: e.to_string() })
    }

    /// Runs SQL on a node (simple protocol) and returns the rows as text.
    pub async fn sql(&self, node: &str, query: &str) -> Result<Vec<Vec<Option<String>>>, SandboxError> {
        let n = self.node(node)?;
        let err = |detail: String| SandboxError::Query { node: node.to_owned(), detail };
        let conninfo = format!(
            "host={} port={} user=postgres dbname=postgres password={} connect_timeout=5",
            n.host,
            n.port,
            pgdr_node::local::conn_quote(self.password.expose())
        );
        let client = pgdr_node::local::connect(&conninfo, &format!("{}:{}", n.host, n.port), self.tls.as_ref())
            .await
            .map_err(|e| err(e.to_string()))?;
        let msgs = client.simple_query(query).await.map_err(|e| err(pgdr_node::local::pg_detail(&e)))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect())
    }

    /// Stops everything (see [`crate::down()`]).
    pub fn down(&self, purge: bool) -> Result<DownReport, SandboxError> {
        crate::down(&self.dir, purge)
    }
}

impl SandboxBuilder {
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    pub fn regions<I, S>(mut self, regions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.regions = regions.into_iter().map(Into::into).collect();
        self
    }

    /// N replicas in the primary's region and N standbys in each other one.
    pub fn replicas_per_region(mut self, n: usize) -> Self {
        self.replicas_per_region = n;
        self
    }

    /// N standbys in each region other than the primary's (default: as many
    /// as [`Self::replicas_per_region`]). More nodes outside the primary's
    /// region than in it let a lost primary region be fenced by lease (a
    /// majority of agents can withdraw their support).
    pub fn standbys_per_region(mut self, n: usize) -> Self {
        self.standbys_per_region = Some(n);
        self
    }

    /// Relays on every cross-region path adding `delay` each way, and
    /// partitions (see [`crate::wan`]).
    pub fn wan_delay(mut self, delay: Duration) -> Self {
        self.wan_delay = Some(delay);
        self
    }

    /// TLS on every connection, with a CA and certificates made for the
    /// sandbox (on by default); `false` leaves everything plaintext.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// The state store: a three-member etcd on loopback (`true`, recorded
    /// in `sandbox.json` and stopped by `down`) or the embedded one (the
    /// default).
    pub fn etcd(mut self, on: bool) -> Self {
        self.etcd = on;
        self
    }

    /// A controller per region: the config declares one
    /// `[[controller.instances]]` per region (named after it, each with its
    /// own API address), run each with `pgdr run --controller REGION`; one
    /// leads (etcd election), the others stand by. Needs [`Self::etcd`].
    pub fn controller_per_region(mut self, on: bool) -> Self {
        self.controller_per_region = on;
        self
    }

    /// `n` clusters of the same topology, watched by one controller: `main`
    /// when `n` is 1 (the default), else `c01`..`cNN`, whose nodes are named
    /// after their cluster (`c01-east-1`) and run small PostgreSQL settings
    /// (see [`render::small_settings`]) so that many fit on one machine.
    pub fn clusters(mut self, n: usize) -> Self {
        self.clusters = n;
        self
    }

    /// The cluster's `on_crash`: `restart-first` (the default) or `failover`.
    pub fn on_crash(mut self, on_crash: impl Into<String>) -> Self {
        self.on_crash = Some(on_crash.into());
        self
    }

    /// First port to use (nodes, then agents, controller, proxies); 0 picks
    /// free ports.
    pub fn base_port(mut self, port: u16) -> Self {
        self.base_port = port;
        self
    }

    /// Builds and starts the sandbox; `pgdr` is the binary the agents run as.
    /// On failure everything started is stopped again.
    pub async fn start(self, pgdr: &Path) -> Result<Sandbox, SandboxError> {
        let dir = self.dir.clone().ok_or_else(|| SandboxError::Topology("no folder given".into()))?;
        let regions = self.check_topology()?;
        let run_as = RunAs::for_node(None)?;
        let dir =
            if dir.is_absolute() { dir } else { std::env::current_dir().map_err(SandboxError::io(&dir))?.join(dir) };
        // The server's user must reach the folder (we open the folder itself).
        run_as.check_reachable(&dir)?;
        std::fs::create_dir_all(&dir).map_err(SandboxError::io(&dir))?;
        let dir = dir.canonicalize().map_err(SandboxError::io(&dir))?;
        match Record::load(&dir)? {
            Some(r) if r.state == RecordState::Up => return Err(SandboxError::AlreadyUp(dir)),
            Some(_) => return Err(SandboxError::Stopped(dir)),
            None => {}
        }
        if std::fs::read_dir(&dir).map_err(SandboxError::io(&dir))?.next().is_some() {
            return Err(SandboxError::NotEmpty(dir));
        }
        if run_as.name().is_some() {
            set_mode(&dir, 0o755)?;
        }
        let bin = PgBinaries::find(None)?;
        let pgdr = pgdr.canonicalize().map_err(SandboxError::io(pgdr))?;

        // Topology and ports: every cluster the same shape.
        let clusters = crate::record::cluster_names(self.clusters);
        let mut layout: Vec<(String, String, String, SandboxRole)> = Vec::new();
        let primary_region = &regions[0];
        for c in &clusters {
            let prefix = if clusters.len() > 1 { format!("{c}-") } else { String::new() };
            let mut add = |name: String, region: &String, role| layout.push((name, c.clone(), region.clone(), role));
            add(format!("{prefix}{primary_region}-1"), primary_region, SandboxRole::Primary);
            for i in 0..self.replicas_per_region {
                add(format!("{prefix}{primary_region}-{}", i + 2), primary_region, SandboxRole::Replica);
            }
            for r in &regions[1..] {
                for i in 0..self.standbys_per_region.unwrap_or(self.replicas_per_region) {
                    add(format!("{prefix}{r}-{}", i + 1), r, SandboxRole::Standby);
                }
            }
        }
        let n = layout.len();
        let controller_region = regions.get(1).unwrap_or(&regions[0]).clone();
        // A proxy per cluster and region (a proxy serves one cluster).
        let fixed = 2 * n + 1 + 3 * regions.len() * clusters.len();
        // Relay ports, when there are links between regions.
        let wan_ports = match self.wan_delay {
            Some(_) => {
                let probe: Vec<NodeRecord> = layout
                    .iter()
                    .map(|(name, cluster, region, role)| NodeRecord {
                        name: name.clone(),
                        cluster: cluster.clone(),
                        region: region.clone(),
                        role: *role,
                        host: String::new(),
                        port: 0,
                        data_dir: PathBuf::new(),
                        agent: String::new(),
                        agent_port: 0,
                        agent_pid: None,
                        postmaster_pid: None,
                    })
                    .collect();
                crate::wan::ports_needed(&regions, &probe, &controller_region)
            }
            None => 0,
        };
        // One more API port per region past the first with a controller each.
        let more_controllers = if self.controller_per_region { regions.len() - 1 } else { 0 };
        let ports = allocate_ports(self.base_port, fixed + wan_ports + more_controllers)?;
        let nodes: Vec<NodeRecord> = layout
            .iter()
            .enumerate()
            .map(|(i, (name, cluster, region, role))| NodeRecord {
                name: name.clone(),
                cluster: cluster.clone(),
                region: region.clone(),
                role: *role,
                host: "127.0.0.1".into(),
                port: ports[i],
                data_dir: dir.join(name).join("data"),
                agent: format!("127.0.0.1:{}", ports[n + i]),
                agent_port: ports[n + i],
                agent_pid: None,
                postmaster_pid: None,
            })
            .collect();
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let controller = addr(ports[2 * n]);
        // (region, API address) of every controller: one in the second
        // region (or the only one), or one per region.
        let controllers: Vec<(String, SocketAddr)> = if self.controller_per_region {
            regions
                .iter()
                .enumerate()
                .map(|(i, r)| (r.clone(), if i == 0 { controller } else { addr(ports[fixed + wan_ports + i - 1]) }))
                .collect()
        } else {
            vec![(controller_region.clone(), controller)]
        };
        let proxies: Vec<ProxyPorts> = clusters
            .iter()
            .flat_map(|c| regions.iter().map(move |r| (c, r)))
            .enumerate()
            .map(|(i, (c, r))| {
                let b = 2 * n + 1 + 3 * i;
                ProxyPorts {
                    cluster: c.clone(),
                    region: r.clone(),
                    writer: addr(ports[b]),
                    reader: addr(ports[b + 1]),
                    api: addr(ports[b + 2]),
                }
            })
            .collect();
        let mut record = Record {
            version: 1,
            state: RecordState::Up,
            dir: dir.clone(),
            config: dir.join("pgdr.toml"),
            bin_dir: bin.dir.clone(),
            os_user: run_as.name().map(str::to_owned),
            reserved_ports: ports[2 * n..fixed].iter().chain(&ports[fixed + wan_ports..]).copied().collect(),
            wan: self.wan_delay.map(|d| crate::wan::WanRecord {
                delay_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                control: dir.join(crate::wan::CONTROL_FILE),
                routes: crate::wan::plan_routes(&regions, &nodes, controller, &controller_region, &ports[fixed..]),
                relay_pid: None,
            }),
            nodes,
            etcd: None,
        };
        record.save()?;
        if let Some(w) = &record.wan {
            pgdr_wan::WanState { delay_ms: w.delay_ms, partitioned: Default::default() }
                .store(&w.control)
                .map_err(|e| SandboxError::Wan(e.to_string()))?;
        }

        // Secrets.
        let secrets = dir.join("secrets");
        std::fs::create_dir_all(&secrets).map_err(SandboxError::io(&secrets))?;
        set_mode(&secrets, 0o700)?;
        let password = random_alnum(24);
        let token = random_hex(32);
        write_secret(&secrets.join("postgres.password"), &password)?;
        write_secret(&secrets.join("agent.token"), &token)?;
        // The controller's tokens, one per role, and the proxies' admin token.
        for (file, _) in render::CONTROLLER_TOKENS {
            write_secret(&secrets.join(file), &random_hex(32))?;
        }
        write_secret(&secrets.join(render::PROXY_API_TOKEN), &random_hex(32))?;
        write_secret(&secrets.join("backup-local.key"), &random_hex(32))?;
        // One file secret store per region for the managed role (`pgdr secrets`).
        for r in &regions {
            let p = dir.join(render::SECRET_STORES).join(r);
            std::fs::create_dir_all(&p).map_err(SandboxError::io(&p))?;
            set_mode(&p, 0o700)?;
        }
        set_mode(&dir.join(render::SECRET_STORES), 0o700)?;
        for d in ["logs", "state", "backups"] {
            let p = dir.join(d);
            std::fs::create_dir_all(&p).map_err(SandboxError::io(&p))?;
        }
        // The processes' logs and the controller's state are their owner's alone.
        for d in ["logs", "state"] {
            set_mode(&dir.join(d), 0o700)?;
        }
        let tls_dir = if self.tls { Some(crate::certs::make(&dir, &record.nodes, &run_as)?) } else { None };
        if self.etcd {
            // Members serve clients over TLS with the sandbox's CA and require
            // a client certificate when the sandbox has TLS.
            let tls = tls_dir.as_ref().map(|t| crate::etcd::EtcdTlsFiles {
                ca: t.join("ca.crt"),
                cert: t.join(crate::certs::ETCD_CERT),
                key: t.join(crate::certs::ETCD_KEY),
                client_cert_auth: true,
            });
            let etcd_dir = dir.join("etcd");
            let mut started = tokio::task::spawn_blocking(move || crate::etcd::EtcdRecord::start(&etcd_dir, 3, tls))
                .await
                .map_err(|e| SandboxError::Etcd(format!("start task failed: {e}")))??;
            // One member per region, the rest in a third place: losing one
            // region leaves a quorum (with two regions: east, west, witness).
            for (i, m) in started.members.iter_mut().enumerate() {
                m.region = Some(regions.get(i).cloned().unwrap_or_else(|| "witness".into()));
            }
            record.etcd = Some(started);
            record.save()?;
        }
        let (tls, http) = crate::certs::clients(&dir)?;
        // Every node archives through `pgdr wal-push` from its first start
        // (archive_mode needs no restart then); archive_command runs as the
        // server's user, who must read the config and the destination's key.
        let archive_of = |c: &str| pgdr_backup::archive_settings_with(&pgdr, &record.config, c);
        let config_text = render::render(&ConfigText {
            clusters: &clusters,
            regions: &regions,
            controllers: &controllers,
            nodes: &record.nodes,
            os_user: run_as.name(),
            proxies: &proxies,
            on_crash: self.on_crash.as_deref(),
            wan_delay: self.wan_delay,
            archive: &archive_of,
            tls_dir: tls_dir.as_ref().map(|_| dir.as_path()),
            etcd: record.etcd.as_ref().map(|e| e.endpoints()),
        });
        std::fs::write(&record.config, config_text).map_err(SandboxError::io(&record.config))?;
        let config = pgdr_config::Config::load(&record.config).map_err(|e| SandboxError::Config(e.to_string()))?;
        set_mode(&record.config, 0o644)?;
        share_backup_key(&secrets, &run_as)?;
        let dest = pgdr_backup::Dest::open_named(&config, "local")
            .map_err(|e| SandboxError::Config(format!("backup destination: {e}")))?;
        for c in &clusters {
            dest.prepare_wal_dir(c, &run_as).map_err(|e| SandboxError::Config(format!("backup destination: {e}")))?;
        }

        let sandbox = Sandbox {
            dir: dir.clone(),
            config: record.config.clone(),
            record: record.clone(),
            password: password.into(),
            token: token.into(),
            tls,
            http,
        };
        match bring_up(&sandbox, &mut record, &bin, &run_as, &pgdr).await {
            Ok(()) => Ok(Sandbox { record, ..sandbox }),
            Err(e) => {
                tracing::warn!("sandbox up failed, stopping what it started: {e}");
                let mut r = record.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let mut report = DownReport::default();
                    let res = stop_record(&r, &mut report);
                    r.state = RecordState::Down;
                    let _ = r.save();
                    res
                })
                .await;
                Err(e)
            }
        }
    }

    fn check_topology(&self) -> Result<Vec<String>, SandboxError> {
        if self.regions.is_empty() {
            return Err(SandboxError::Topology("at least one region is needed".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.regions {
            pgdr_model::check_name(r).map_err(|e| SandboxError::Topology(format!("region {r:?}: expected {e}")))?;
            if !seen.insert(r.as_str()) {
                return Err(SandboxError::Topology(format!("region {r:?} given twice")));
            }
        }
        if self.base_port != 0 && self.base_port < 1024 {
            return Err(SandboxError::Topology(format!(
                "--base-port {}: PostgreSQL runs unprivileged and cannot listen below 1024",
                self.base_port
            )));
        }
        if self.replicas_per_region > 20 || self.standbys_per_region.is_some_and(|n| n > 20) {
            return Err(SandboxError::Topology("at most 20 replicas per region".into()));
        }
        if !(1..=MAX_CLUSTERS).contains(&self.clusters) {
            return Err(SandboxError::Topology(format!("--clusters {}: expected 1 to {MAX_CLUSTERS}", self.clusters)));
        }
        if self.controller_per_region && !self.etcd {
            return Err(SandboxError::Topology(
                "--controller-per-region needs --store etcd (controllers share their state there)".into(),
            ));
        }
        if self.controller_per_region && self.wan_delay.is_some() {
            return Err(SandboxError::Topology(
                "--controller-per-region with --wan-delay is not supported yet (the relays know one controller)".into(),
            ));
        }
        if self.clusters > 1 && self.wan_delay.is_some() {
            return Err(SandboxError::Topology("--wan-delay needs --clusters 1 (relays serve one cluster)".into()));
        }
        Ok(self.regions.clone())
    }
}

async fn bring_up(
    sb: &Sandbox,
    record: &mut Record,
    bin: &PgBinaries,
    run_as: &RunAs,
    pgdr: &Path,
) -> Result<(), SandboxError> {
    for n in &record.nodes {
        let d = sb.dir.join(&n.name);
        std::fs::create_dir_all(&d).map_err(SandboxError::io(&d))?;
        set_mode(&d, 0o755)?;
    }
    let clusters = record.clusters();
    let small = clusters.len() > 1;
    let plans: Vec<Vec<NodeRecord>> =
        clusters.iter().map(|c| record.nodes.iter().filter(|n| &n.cluster == c).cloned().collect()).collect();
    // Every started process is recorded (and saved) as soon as it runs, so a
    // failure anywhere leaves `down` a complete list.
    let shared = std::sync::Mutex::new(record);
    let shared = &shared;
    let results: Vec<Result<(), SandboxError>> = futures::stream::iter(
        plans.into_iter().map(|nodes| bring_up_cluster(sb, shared, nodes, bin, run_as, pgdr, small)),
    )
    .buffer_unordered(PARALLEL_CLUSTERS)
    .collect()
    .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    with_record(shared, |_| {})
}

/// Runs `f` on the record and saves it.
fn with_record(shared: &std::sync::Mutex<&mut Record>, f: impl FnOnce(&mut Record)) -> Result<(), SandboxError> {
    let mut r = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut r);
    r.save()
}

/// One cluster: the primary's initdb, parallel base backups with slots for
/// its other nodes, their agents, then a wait until every agent answers and
/// every replica streams.
async fn bring_up_cluster(
    sb: &Sandbox,
    shared: &std::sync::Mutex<&mut Record>,
    mut nodes: Vec<NodeRecord>,
    bin: &PgBinaries,
    run_as: &RunAs,
    pgdr: &Path,
    small: bool,
) -> Result<(), SandboxError> {
    let cluster = nodes.first().map(|n| n.cluster.clone()).unwrap_or_default();
    let archive = pgdr_backup::archive_settings_with(pgdr, &sb.config, &cluster);
    let settings = render::node_settings(nodes.len().saturating_sub(1), &archive, small);
    let settings_of = |n: &NodeRecord| {
        let mut s = settings.clone();
        if sb.tls.is_some() {
            s.extend(crate::certs::node_settings(&sb.dir, &n.name));
        }
        s
    };
    let local = |n: &NodeRecord| LocalPg::new(bin.clone(), n.data_dir.clone(), n.host.clone(), n.port, run_as.clone());

    // The primary: the only initdb.
    let primary = nodes
        .iter()
        .find(|n| n.role == SandboxRole::Primary)
        .cloned()
        .ok_or_else(|| SandboxError::Topology("no primary".into()))?;
    let ppg = local(&primary);
    ppg.initdb("postgres", sb.password.expose()).await?;
    if sb.tls.is_some() {
        // TCP logins only over TLS; the replicas' base backups copy it.
        ppg.write_file("pg_hba.conf", pgdr_node::local::tls_only_hba(&HBA_NETWORKS).as_bytes())?;
    }
    ppg.configure(&settings_of(&primary))?;
    ppg.start(PG_WAIT).await?;
    with_record(shared, |r| set_postmaster(r, &primary.name, ppg.postmaster_pid()))?;
    if sb.record.wan.is_some() {
        start_relay(sb, shared, pgdr).await?;
    }

    // Every other node: a base backup with its slot, in parallel.
    let wan = sb.record.wan.clone();
    let plans: Vec<(NodeRecord, LocalPg, ReplicaPlan)> = nodes
        .iter()
        .filter(|n| n.role != SandboxRole::Primary)
        .map(|n| {
            // A standby in another region streams through its region's relay.
            let (host, port) = match &wan {
                Some(w) if n.region != primary.region => {
                    crate::wan::Links { routes: w.routes.clone() }.backend_from(&n.region, &primary.host, primary.port)
                }
                _ => (primary.host.clone(), primary.port),
            };
            let plan = ReplicaPlan {
                upstream: Upstream { host, port, slot: Some(slot_name(&n.name)) },
                login: sb.login(),
                replication_user: "postgres".into(),
                application_name: n.name.clone(),
                settings: settings_of(n),
                wait: PG_WAIT,
            };
            (n.clone(), local(n), plan)
        })
        .collect();
    let results: Vec<_> = futures::stream::iter(
        plans.iter().map(|(n, pg, plan)| async move { (n, pg, replica::rebuild(pg, plan).await) }),
    )
    .buffer_unordered(render::PARALLEL_BACKUPS)
    .collect()
    .await;
    // Record what started even when a sibling failed.
    with_record(shared, |r| {
        for (n, pg, _) in &results {
            set_postmaster(r, &n.name, pg.postmaster_pid());
        }
    })?;
    for (n, _, res) in results {
        res.map_err(|e| SandboxError::Agent { node: n.name.clone(), detail: format!("base backup: {e}") })?;
    }

    // Agents: the replicas' first, then the primary's once they answer. An
    // agent starts lapsed: it keeps a writable primary only with a renewal
    // (no controller runs yet) or a majority of support, so its peers must be
    // up to answer.
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|&i| nodes[i].role == SandboxRole::Primary);
    for i in order {
        if nodes[i].role == SandboxRole::Primary {
            for n in nodes.iter().filter(|n| n.role != SandboxRole::Primary) {
                wait_agent(sb, n, deadline).await?;
            }
        }
        let name = nodes[i].name.clone();
        let log_path = sb.dir.join("logs").join(format!("agent-{name}.log"));
        let log = std::fs::File::create(&log_path).map_err(SandboxError::io(&log_path))?;
        let err_log = log.try_clone().map_err(SandboxError::io(&log_path))?;
        let child = Command::new(pgdr)
            .arg("agent")
            .arg("--config")
            .arg(&sb.config)
            .arg("--node")
            .arg(&name)
            .current_dir(&sb.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .process_group(0)
            .spawn()
            .map_err(|e| SandboxError::Agent {
                node: name.clone(),
                detail: format!("cannot run {}: {e}", pgdr.display()),
            })?;
        let pid = Some(child.id() as i32);
        nodes[i].agent_pid = pid;
        with_record(shared, |r| {
            if let Some(n) = r.nodes.iter_mut().find(|n| n.name == name) {
                n.agent_pid = pid;
            }
        })?;
    }

    // Ready: every agent answers, every replica streams.
    for n in &nodes {
        wait_agent(sb, n, deadline).await?;
    }
    let want: Vec<&str> = nodes.iter().filter(|n| n.role != SandboxRole::Primary).map(|n| n.name.as_str()).collect();
    loop {
        let rows =
            sb.sql(&primary.name, "select application_name from pg_stat_replication where state = 'streaming'").await?;
        let streaming: Vec<String> = rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
        if want.iter().all(|w| streaming.iter().any(|s| s == w)) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(SandboxError::Timeout(format!(
                "replicas to stream (streaming: {streaming:?}, expected: {want:?})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Starts `pgdr sandbox relay` (detached, recorded) and waits until its
/// listeners accept.
async fn start_relay(sb: &Sandbox, shared: &std::sync::Mutex<&mut Record>, pgdr: &Path) -> Result<(), SandboxError> {
    let log_path = sb.dir.join("logs").join("relay.log");
    let log = std::fs::File::create(&log_path).map_err(SandboxError::io(&log_path))?;
    let err_log = log.try_clone().map_err(SandboxError::io(&log_path))?;
    let child = Command::new(pgdr)
        .arg("sandbox")
        .arg("relay")
        .arg("--dir")
        .arg(&sb.dir)
        .current_dir(&sb.dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .process_group(0)
        .spawn()
        .map_err(|e| SandboxError::Wan(format!("cannot run {} sandbox relay: {e}", pgdr.display())))?;
    let pid = child.id() as i32;
    with_record(shared, |r| {
        if let Some(w) = r.wan.as_mut() {
            w.relay_pid = Some(pid);
        }
    })?;
    let listens: Vec<SocketAddr> = sb.record.wan.iter().flat_map(|w| w.routes.iter().map(|r| r.listen)).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    for a in listens {
        while tokio::net::TcpStream::connect(a).await.is_err() {
            if !crate::down::alive(pid) {
                return Err(SandboxError::Wan(format!("the relay exited; see {}", log_path.display())));
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::Timeout(format!("the relay to listen on {a}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

fn set_postmaster(record: &mut Record, name: &str, pid: Option<i32>) {
    if let Some(n) = record.nodes.iter_mut().find(|n| n.name == name) {
        n.postmaster_pid = pid;
    }
}

/// `count` ports: free ones reserved for this process (see
/// [`crate::ports`]) when `base` is 0, else `base..base+count`, each
/// checked free.
pub(crate) fn allocate_ports(base: u16, count: usize) -> Result<Vec<u16>, SandboxError> {
    if base == 0 {
        return crate::ports::reserve(count);
    }
    let mut out = Vec::new();
    for i in 0..count {
        let port = u16::try_from(usize::from(base) + i)
            .map_err(|_| SandboxError::Topology(format!("--base-port {base} leaves no room for {count} ports")))?;
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            return Err(SandboxError::PortInUse(port));
        }
        out.push(port);
    }
    Ok(out)
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(SandboxError::io(path))
}

/// Lets the server's user read the local destination's key (its
/// archive_command encrypts with it): the secrets folder becomes searchable,
/// not listable, by the user's group, and the key file the user's own (0600).
/// The other secrets stay root's.
fn share_backup_key(secrets: &Path, run_as: &RunAs) -> Result<(), SandboxError> {
    let Some((_, _, gid)) = &run_as.user else { return Ok(()) };
    nix::unistd::chown(secrets, None, Some(nix::unistd::Gid::from_raw(*gid)))
        .map_err(|e| SandboxError::io(secrets)(std::io::Error::from(e)))?;
    set_mode(secrets, 0o710)?;
    let key = secrets.join("backup-local.key");
    run_as.give(&key)?;
    set_mode(&key, 0o600)
}

fn write_secret(path: &Path, value: &str) -> Result<(), SandboxError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(SandboxError::io(path))?;
    f.write_all(format!("{value}\n").as_bytes()).map_err(SandboxError::io(path))
}

fn random_alnum(n: usize) -> String {
    use rand::Rng;
    rand::rng().sample_iter(rand::distr::Alphanumeric).take(n).map(char::from).collect()
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Waits until `n`'s agent answers `/v1/health`; an agent that exited or
/// stays silent past `deadline` is an error naming its log.
async fn wait_agent(sb: &Sandbox, n: &NodeRecord, deadline: Instant) -> Result<(), SandboxError> {
    let client = sb.agent(&n.name)?.with_timeout(Duration::from_millis(500));
    loop {
        match client.health().await {
            Ok(_) => break,
            Err(e) => {
                if let Some(pid) = n.agent_pid
                    && !crate::down::alive(pid)
                {
                    return Err(SandboxError::Agent {
                        node: n.name.clone(),
                        detail: format!(
                            "the agent exited; see {}",
                            sb.dir.join("logs").join(format!("agent-{}.log", n.name)).display()
                        ),
                    });
                }
                if Instant::now() >= deadline {
                    return Err(SandboxError::Agent {
                        node: n.name.clone(),
                        detail: format!("no answer on /v1/health: {e}"),
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Percent-encodes a URI query value (everything but unreserved characters
/// and `/`).
/// Percent-encodes `v` for a postgresql:// URI (a path or a query value).
pub fn uri_encode(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
