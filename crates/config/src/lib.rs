//! `pgdr.toml`: where every pgdr command learns the topology it works on.
//!
//! Loading is two passes: [`raw`] is what serde reads (unknown keys rejected),
//! [`validate`] checks everything at once and builds the types below. A failed
//! load returns a [`ConfigError`] listing every problem with the file, the key
//! (`clusters[0].nodes[1].region`), its line, and what was expected.
//!
//! Config describes what should exist; what is true now (primary, epoch,
//! health) lives in the state store, never here. This crate depends only on
//! `pgdr-model`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use pgdr_model::Redacted;
pub use pgdr_model::{ClusterName, NodeName, RegionName, ReplicationMode, TierName};

pub mod auth;
pub mod edit;
pub mod raw;
mod spans;
mod validate;

/// The environment variable that names the config when `--config` is absent.
pub const CONFIG_ENV: &str = "PGDR_CONFIG";
/// The file used when neither `--config` nor `PGDR_CONFIG` is given.
pub const DEFAULT_FILE: &str = "pgdr.toml";

/// Where a command finds its config: `--config F`, else `PGDR_CONFIG`, else
/// `./pgdr.toml`. The caller passes the environment value in, so this stays
/// free of process-global state.
pub fn locate(flag: Option<&Path>, env: Option<&str>) -> PathBuf {
    match (flag, env) {
        (Some(p), _) => p.to_owned(),
        (None, Some(e)) if !e.is_empty() => PathBuf::from(e),
        _ => PathBuf::from(DEFAULT_FILE),
    }
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key, like `clusters[0].nodes[1].region`; empty for
    /// the whole file.
    pub key: String,
    /// 1-based line of the key in the file, when known.
    pub line: Option<usize>,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Everything wrong with a config file, or why it could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config file: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_problems(file, problems))]
    Invalid { file: PathBuf, problems: Vec<Problem> },
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

fn render_problems(file: &Path, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&file.display().to_string());
        if let Some(line) = p.line {
            out.push_str(&format!(":{line}"));
        }
        if !p.key.is_empty() {
            out.push_str(&format!(": key `{}`", p.key));
        }
        out.push_str(": ");
        out.push_str(&p.message);
    }
    out
}

/// A secret: inline in the file (discouraged outside sandboxes), from an
/// environment variable, or from a file (relative paths are relative to the
/// config file).
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Inline(String),
    Env(String),
    File(PathBuf),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("Secret::Inline(<redacted>)"),
            Secret::Env(v) => write!(f, "Secret::Env({v})"),
            Secret::File(p) => write!(f, "Secret::File({})", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("cannot read secret file {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An empty secret would let an empty password or `Authorization:
    /// Bearer ` through: refused wherever a secret is read.
    #[error("{0} is empty")]
    Empty(String),
}

impl Secret {
    /// Reads the secret now; file contents lose one trailing newline. An
    /// empty value (empty file, empty variable) is an error.
    pub fn resolve(&self) -> Result<String, SecretError> {
        let (value, what) = match self {
            Secret::Inline(v) => (v.clone(), "the inline value".to_owned()),
            Secret::Env(name) => (
                std::env::var(name).map_err(|_| SecretError::MissingEnv(name.clone()))?,
                format!("environment variable {name}"),
            ),
            Secret::File(path) => (
                std::fs::read_to_string(path)
                    .map(|s| s.strip_suffix('\n').unwrap_or(&s).to_owned())
                    .map_err(|source| SecretError::File { path: path.clone(), source })?,
                format!("secret file {}", path.display()),
            ),
        };
        if value.trim().is_empty() {
            return Err(SecretError::Empty(what));
        }
        Ok(value)
    }

    /// [`Secret::resolve`], kept from `Debug` and `Display`.
    pub fn redacted(&self) -> Result<Redacted, SecretError> {
        self.resolve().map(Redacted::from)
    }
}

/// A secret that could not be read, with the config file and key it is
/// configured at: `pgdr.toml: key `agents.token`: secret file … is empty`.
#[derive(Debug, thiserror::Error)]
#[error("{}: key `{key}`: {source}", file.display())]
pub struct KeyedSecretError {
    pub file: PathBuf,
    pub key: String,
    #[source]
    pub source: SecretError,
}

/// What a controller token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Read routes, the status page's data, `/metrics`.
    Viewer,
    /// Role changes and approvals, and everything a viewer can.
    Operator,
    /// Lease renewal only: what a primary's agent sends.
    Agent,
}

impl Access {
    pub const ALL: [Access; 3] = [Access::Viewer, Access::Operator, Access::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            Access::Viewer => "viewer",
            Access::Operator => "operator",
            Access::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Access> {
        Access::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Whether a token of this role may do what `need` requires.
    pub fn grants(self, need: Access) -> bool {
        self == need || (self == Access::Operator && need == Access::Viewer)
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named controller token (`[[controller.tokens]]`, or `controller.token`
/// as an operator token named `operator`).
#[derive(Debug, Clone)]
pub struct ApiToken {
    /// Who holds it: recorded as the approver of a workflow, in logs.
    pub name: String,
    pub role: Access,
    pub secret: Secret,
    /// The config key it is set at, for errors.
    pub key: String,
}

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from.
    pub file: PathBuf,
    /// The folder relative paths in the file are resolved against.
    pub base_dir: PathBuf,
    pub controller: Controller,
    pub agents: Agents,
    pub timing: Timing,
    pub regions: Vec<Region>,
    pub tiers: Vec<Tier>,
    pub clusters: Vec<Cluster>,
    pub proxies: Vec<Proxy>,
    pub destinations: Vec<Destination>,
    pub notify: Vec<Notify>,
    /// Set when this config describes a sandbox made by `pgdr sandbox up`:
    /// drills may inject faults without `--live`.
    pub sandbox: Option<SandboxInfo>,
    /// `[tls]` with `mode = "verify-full"`; `None` when TLS is off.
    pub tls: Option<Tls>,
}

/// TLS for every connection: HTTPS on the agent, controller and proxy admin
/// APIs, TLS toward PostgreSQL and for streaming replication, each client
/// verifying the server's certificate against `ca` and the name it dialled
/// (libpq's `verify-full`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The cluster's CA (PEM): every client trusts exactly this.
    pub ca: PathBuf,
    /// Agents ask every client for a certificate signed by `ca` (mTLS
    /// between controller and agents): the controller and other agents show
    /// their own, the CLI `client`. The controller's API (and its status
    /// page, read by browsers) asks for none.
    pub client_certs: bool,
    /// Certificate the controller's API serves (and shows agents as a client).
    pub controller: Option<TlsIdentity>,
    /// Certificate every agent's API serves (and shows as a client).
    pub agent: Option<TlsIdentity>,
    /// Certificate the proxies' admin APIs serve.
    pub proxy: Option<TlsIdentity>,
    /// Certificate the CLI shows when `client_certs` is on.
    pub client: Option<TlsIdentity>,
}

/// A certificate and its private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    /// The identity a command-line client shows: `client`, else the
    /// controller's.
    pub fn cli_identity(&self) -> Option<&TlsIdentity> {
        self.client.as_ref().or(self.controller.as_ref())
    }
}

#[derive(Debug, Clone)]
pub struct Controller {
    /// HTTP API, `/metrics` and the status page: this controller's. With
    /// [`Controller::instances`], the first instance's until
    /// [`Config::for_controller`] selects one.
    pub listen: SocketAddr,
    /// The controller's own region: one of the probe vantage points.
    pub region: Option<RegionName>,
    /// `[[controller.instances]]`: the controllers of a deployment in
    /// several regions (etcd store), one leading at a time. Empty: one
    /// controller at `listen`.
    pub instances: Vec<ControllerInstance>,
    /// Where the embedded state store and local files live.
    pub state_dir: PathBuf,
    pub store: StoreKind,
    /// Tokens the API accepts; empty means no authentication (only allowed
    /// on a loopback address).
    pub tokens: Vec<ApiToken>,
    pub readiness_interval: Duration,
    /// How many scheduled backups (each of another cluster) run at once;
    /// the others wait their turn, longest due first. Bounds the load a
    /// controller of many clusters puts on its hosts and on the storage
    /// API when their schedules fire together.
    pub max_concurrent_backups: u32,
    /// Threads of `pgdr run`'s async runtime (the controller, the API and
    /// the proxies' control; the proxies' sessions have threads of their
    /// own). The controller waits on the network almost all the time: one
    /// thread spends less CPU per cluster than several handing wake-ups to
    /// each other (bench/RESULTS-scale.md).
    pub worker_threads: usize,
}

/// `controller.max_concurrent_backups` when the config does not say.
pub const DEFAULT_MAX_CONCURRENT_BACKUPS: u32 = 2;

/// `controller.worker_threads` when the config does not say.
pub const DEFAULT_WORKER_THREADS: usize = 1;

/// One controller of a deployment in several regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerInstance {
    pub name: String,
    pub region: RegionName,
    /// Its API address: clients (agents renewing a lease, the CLI) try
    /// every instance's and follow the one that leads.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// One redb file in `state_dir`: a single controller.
    Embedded,
    /// An etcd cluster: controllers in several regions.
    Etcd(EtcdConfig),
}

/// `controller.store = "etcd"` and its `controller.etcd_*` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://host:port`, `https://host:port`, or `host:port` (then
    /// `https` when `ca` is set).
    pub endpoints: Vec<String>,
    /// Every pgdr key is stored under this prefix, so several deployments
    /// can share one etcd: empty, or `/name` (starts with `/`, does not end with one).
    pub prefix: String,
    /// etcd user name, when etcd has authentication enabled.
    pub user: Option<String>,
    /// That user's password (never inline in logs or `Debug`).
    pub password: Option<Secret>,
    /// PEM of the CA that signed the etcd members' certificates: TLS on.
    pub ca: Option<PathBuf>,
    /// A client certificate, for members started with `--client-cert-auth`.
    pub identity: Option<TlsIdentity>,
    /// The longest one etcd request may take before it counts as failed
    /// (the store is then "unavailable": nothing is decided on it).
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct Agents {
    /// Bearer token every agent requires; `None` disables authentication
    /// (only sensible on loopback).
    pub token: Option<Secret>,
}

/// Failure detection and fencing timings. `validate` checks the inequalities
/// between them (see [`Timing::check`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    /// How often the controller's canary also goes through each proxy's
    /// writer endpoint (for the per-path metrics; it decides nothing). At
    /// most once per `probe_interval`.
    pub proxy_probe_interval: Duration,
    /// Consecutive failed probes before a vantage point reports an outage.
    pub failure_threshold: u32,
    /// Vantage points that must agree; 0 means a majority of those configured.
    pub probe_quorum: u32,
    pub lease_ttl: Duration,
    pub lease_renew: Duration,
    /// Extra wait past `lease_ttl` before a lost primary is presumed fenced,
    /// covering clock-rate differences and the agent's own fencing time.
    pub lease_margin: Duration,
    /// How long an in-place restart of a crashed primary may take before
    /// failing over instead.
    pub restart_deadline: Duration,
    pub promote_timeout: Duration,
    pub drain_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(800),
            proxy_probe_interval: Duration::from_secs(5),
            failure_threshold: 3,
            probe_quorum: 0,
            lease_ttl: Duration::from_secs(6),
            lease_renew: Duration::from_secs(1),
            lease_margin: Duration::from_secs(2),
            restart_deadline: Duration::from_secs(10),
            promote_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

impl Timing {
    /// The inequalities the timings must obey, each as (key, message) when
    /// broken. Documented in the README's failover math.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut bad = Vec::new();
        if self.probe_timeout >= self.probe_interval {
            bad.push((
                "timing.probe_timeout",
                format!(
                    "must be shorter than timing.probe_interval ({}), or probes overlap",
                    pgdr_model::format_duration(self.probe_interval)
                ),
            ));
        }
        if self.failure_threshold == 0 {
            bad.push(("timing.failure_threshold", "must be at least 1".to_owned()));
        }
        if self.lease_ttl < self.lease_renew * 3 {
            bad.push((
                "timing.lease_ttl",
                format!(
                    "must be at least 3 × timing.lease_renew ({}), so two lost renewals do not fence a healthy primary",
                    pgdr_model::format_duration(self.lease_renew)
                ),
            ));
        }
        if self.lease_renew.is_zero() {
            bad.push(("timing.lease_renew", "must be more than 0".to_owned()));
        }
        bad
    }

    /// Time for a vantage point to call an outage once the primary stops
    /// answering: the failures needed, each a full probe period at worst.
    pub fn detection_window(&self) -> Duration {
        self.probe_interval * self.failure_threshold + self.probe_timeout
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub name: RegionName,
    pub parent: Option<RegionName>,
    pub kind: RegionKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    Region,
    Zone,
}

#[derive(Debug, Clone)]
pub struct Tier {
    pub name: TierName,
    pub rpo: Duration,
    pub rto: Duration,
    pub backup: Option<TierBackup>,
}

#[derive(Debug, Clone)]
pub struct TierBackup {
    /// Cron expression (5 or 6 fields), checked by the backup scheduler.
    pub schedule: String,
    pub retain_count: Option<u32>,
    pub retain_age: Option<Duration>,
    /// The destination a backup is taken to.
    pub destination: String,
    /// Destinations the backup is then copied to.
    pub copies: Vec<String>,
    pub compression_level: i32,
}

/// What to do when only the primary's postmaster died and its host answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCrash {
    /// Restart in place first (crash recovery loses nothing), fail over if it
    /// is not back within `timing.restart_deadline`.
    RestartFirst,
    /// Fail over at once.
    Failover,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: ClusterName,
    pub tier: TierName,
    pub replication: ReplicationMode,
    /// Database used by agents, probes and checks.
    pub database: String,
    /// Role pgdr connects as (a superuser in sandboxes).
    pub user: String,
    pub password: Option<Secret>,
    pub replication_user: String,
    pub tags: Vec<String>,
    /// Regions to prefer for a new primary, most preferred first.
    pub region_preference: Vec<RegionName>,
    pub on_crash: OnCrash,
    /// Fail over to a replica past the tier's RPO without an operator.
    pub availability_over_rpo: bool,
    /// Operator command run while fencing an old primary.
    pub fence_hook: Option<String>,
    pub nodes: Vec<Node>,
    /// Managed roles and their stores (`[clusters.secrets]`), when set.
    pub secrets: Option<ClusterSecrets>,
    /// The writer name in DNS (`[clusters.dns]`), when set.
    pub dns: Option<ClusterDns>,
}

/// `[clusters.dns]`: a DNS name for the cluster's writer that pgdr points
/// at the primary's region (RFC 2136 dynamic update signed with TSIG)
/// after every role change, for clients that connect straight to a
/// region's endpoint instead of through a proxy.
#[derive(Debug, Clone)]
pub struct ClusterDns {
    /// The zone's primary server, which takes updates.
    pub server: SocketAddr,
    /// The zone, without a trailing dot.
    pub zone: String,
    /// The writer name, inside the zone, without a trailing dot.
    pub name: String,
    /// The records' TTL: how long resolvers may keep the old answer.
    pub ttl: Duration,
    pub tsig_key: String,
    /// `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    pub tsig_algorithm: String,
    /// Base64, or a BIND key file holding it.
    pub tsig_secret: Secret,
    /// How long one update may take.
    pub timeout: Duration,
    /// What the name points at while the primary is in each region.
    pub endpoints: Vec<(RegionName, DnsTarget)>,
    /// The config key it is set at (`clusters[0].dns`), for errors.
    pub key: String,
}

impl ClusterDns {
    pub fn endpoint(&self, region: &str) -> Option<&DnsTarget> {
        self.endpoints.iter().find(|(r, _)| r.as_str() == region).map(|(_, t)| t)
    }
}

/// What a writer name points at in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsTarget {
    /// A and AAAA records.
    Addresses(Vec<std::net::IpAddr>),
    /// A CNAME to this name (no trailing dot).
    Alias(String),
}

/// `[clusters.secrets]`: the roles pgdr rotates on the primary and the
/// secret store of each region it writes them to.
#[derive(Debug, Clone)]
pub struct ClusterSecrets {
    /// When the controller rotates on its own (`schedule` or `every`).
    pub schedule: Option<RotationSchedule>,
    /// Each cluster's scheduled rotation starts this cluster's share of
    /// `spread` after the due time (a fixed offset from the cluster's
    /// name), so clusters of one schedule do not all rotate at once.
    pub spread: Duration,
    /// `pgdr secrets status` flags a stored secret older than this.
    pub max_age: Option<Duration>,
    pub roles: Vec<ManagedRole>,
    pub stores: Vec<SecretStoreConfig>,
}

/// `[clusters.secrets] schedule` (cron, 5 or 6 fields, checked by parsing
/// it) or `every` (an interval since the last rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationSchedule {
    Cron(String),
    Every(Duration),
}

impl std::fmt::Display for RotationSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RotationSchedule::Cron(c) => write!(f, "cron {c:?}"),
            RotationSchedule::Every(d) => write!(f, "every {}", pgdr_model::format_duration(*d)),
        }
    }
}

impl ClusterSecrets {
    pub fn role(&self, name: &str) -> Option<&ManagedRole> {
        self.roles.iter().find(|r| r.name == name)
    }

    pub fn store(&self, region: &str) -> Option<&SecretStoreConfig> {
        self.stores.iter().find(|s| s.region.as_str() == region)
    }
}

/// A role pgdr rotates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedRole {
    /// The name applications know it by; the key of its stored secret.
    pub name: String,
    pub strategy: RotationStrategy,
    /// `dbname` in the stored secret.
    pub database: String,
}

impl ManagedRole {
    /// The logins the rotation alternates between (one for `single`).
    pub fn logins(&self) -> Vec<&str> {
        match &self.strategy {
            RotationStrategy::Single => vec![self.name.as_str()],
            RotationStrategy::Alternating { alternate } => vec![self.name.as_str(), alternate.as_str()],
        }
    }
}

/// How a role's password changes without locking clients out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationStrategy {
    /// Two logins sharing privileges (`app`, `app_b`): the one not in use
    /// gets the new password, then the stored secret flips to it, so
    /// sessions opened with the previous secret keep working until the
    /// next rotation.
    Alternating { alternate: String },
    /// One login: its password changes in place (for roles that cannot be
    /// doubled); clients holding the old secret fail their next login.
    Single,
}

/// One region's secret store.
#[derive(Debug, Clone)]
pub struct SecretStoreConfig {
    pub region: RegionName,
    pub kind: SecretStoreKind,
    /// The config key it is set at (`clusters[0].secrets.stores[1]`), for errors.
    pub key: String,
}

#[derive(Debug, Clone)]
pub enum SecretStoreKind {
    /// One JSON file per role in `dir` (`<cluster>.<role>.json`, mode 0600),
    /// the previous `keep` versions beside it.
    File { dir: PathBuf, keep: u32 },
    /// AWS Secrets Manager (or anything speaking its API) with its own
    /// endpoint, region and credentials, so a store can be in another account.
    AwsSecretsManager {
        endpoint: String,
        aws_region: String,
        access_key_id: Option<Secret>,
        secret_access_key: Option<Secret>,
        prefix: String,
    },
}

impl SecretStoreKind {
    pub fn name(&self) -> &'static str {
        match self {
            SecretStoreKind::File { .. } => "file",
            SecretStoreKind::AwsSecretsManager { .. } => "aws-secretsmanager",
        }
    }
}

impl Cluster {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name.as_str() == name)
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: NodeName,
    pub region: RegionName,
    /// The agent's HTTP address (`host:port`).
    pub agent: String,
    /// How clients and other nodes reach PostgreSQL.
    pub host: String,
    pub port: u16,
    /// Known when the agent runs on this machine.
    pub data_dir: Option<PathBuf>,
    pub bin_dir: Option<PathBuf>,
    /// Unprivileged user PostgreSQL runs as when the agent runs as root.
    pub os_user: Option<String>,
    pub settings: Vec<(String, String)>,
}

/// How the proxy authenticates clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyAuth {
    /// The backend authenticates; the proxy relays the exchange.
    Passthrough,
    /// The proxy checks SCRAM-SHA-256 or md5 against verifiers in a file.
    Users { file: PathBuf },
}

#[derive(Debug, Clone)]
pub struct Proxy {
    pub name: String,
    pub cluster: ClusterName,
    pub region: RegionName,
    pub writer: SocketAddr,
    pub reader: Option<SocketAddr>,
    /// Admin HTTP: pause/resume, metrics.
    pub api: Option<SocketAddr>,
    pub max_pause: Duration,
    pub max_queue: u32,
    /// The most client connections the proxy holds at once on this
    /// cluster's endpoints; more are refused with SQLSTATE 53300.
    pub max_clients: u32,
    pub drain_timeout: Duration,
    /// Send readers to the primary when no replica is healthy.
    pub reader_fallback: bool,
    pub connect_timeout: Duration,
    pub tcp_user_timeout: Duration,
    pub auth: ProxyAuth,
    /// Certificate and key the client endpoints answer an SSLRequest with.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Refuse a client that did not start TLS, before any password crosses
    /// the network (needs `tls_cert` and `tls_key`).
    pub require_tls: bool,
    /// How clients share backends.
    pub pool: PoolMode,
    /// Backends per (endpoint, user, database) when pooling.
    pub pool_size: u32,
    /// Idle backends kept open per (endpoint, user, database).
    pub pool_min_idle: u32,
    /// How long a client waits for a free backend before SQLSTATE 53300.
    pub pool_timeout: Duration,
    /// Bearer token the admin API requires (`None`: only on loopback).
    pub api_token: Option<Secret>,
}

/// `pool` in `[[proxies]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolMode {
    /// A client holds a backend for one transaction (or one statement
    /// outside a transaction), longer only while it holds state that
    /// cannot move (temporary tables, session advisory locks, LISTEN,
    /// WITH HOLD cursors). The default.
    #[default]
    Transaction,
    /// One backend per client for its whole session.
    Session,
}

#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    /// `file:///path`, `s3://bucket/prefix`, `gs://…`, `az://…`.
    pub url: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub allow_http: bool,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    /// Encryption key (32 bytes, hex or base64) for new objects.
    pub key: Option<Secret>,
    pub key_id: String,
    /// Earlier keys, kept to read older objects after a rotation.
    pub old_keys: Vec<(String, Secret)>,
    /// Write-once: pgdr never deletes or overwrites here.
    pub immutable: bool,
    /// Parallel transfers allowed to this destination.
    pub concurrency: u32,
}

#[derive(Debug, Clone)]
pub struct Notify {
    pub webhook: String,
    pub token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct SandboxInfo {
    pub dir: PathBuf,
    pub wan_delay: Option<Duration>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    /// Validates config text as if read from `path` (used for errors and for
    /// resolving relative paths).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        validate::parse(path, text).map_err(|problems| ConfigError::Invalid { file: path.to_owned(), problems })
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name.as_str() == name)
    }

    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.name.as_str() == name)
    }

    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name.as_str() == name)
    }

    pub fn destination(&self, name: &str) -> Option<&Destination> {
        self.destinations.iter().find(|d| d.name == name)
    }

    /// Finds a node by name in any cluster.
    pub fn node(&self, name: &str) -> Option<(&Cluster, &Node)> {
        self.clusters.iter().find_map(|c| c.node(name).map(|n| (c, n)))
    }

    /// Reads a secret configured at `key`; the error names this file and
    /// the key.
    pub fn secret(&self, key: &str, secret: &Secret) -> Result<Redacted, KeyedSecretError> {
        secret.redacted().map_err(|source| KeyedSecretError { file: self.file.clone(), key: key.to_owned(), source })
    }

    /// Every token and password of the config that this machine can read
    /// but is empty (an empty file or variable): each one a config error.
    /// Secrets this machine cannot read are left to the process that needs
    /// them.
    pub fn empty_secrets(&self) -> Vec<KeyedSecretError> {
        let mut all: Vec<(String, &Secret)> = Vec::new();
        all.extend(self.controller.tokens.iter().map(|t| (t.key.clone(), &t.secret)));
        all.extend(self.agents.token.iter().map(|s| ("agents.token".to_owned(), s)));
        for (i, p) in self.proxies.iter().enumerate() {
            all.extend(p.api_token.iter().map(|s| (format!("proxies[{i}].api_token"), s)));
        }
        for (i, c) in self.clusters.iter().enumerate() {
            all.extend(c.password.iter().map(|s| (format!("clusters[{i}].password"), s)));
            for st in c.secrets.iter().flat_map(|s| &s.stores) {
                if let SecretStoreKind::AwsSecretsManager { access_key_id, secret_access_key, .. } = &st.kind {
                    all.extend(access_key_id.iter().map(|s| (format!("{}.access_key_id", st.key), s)));
                    all.extend(secret_access_key.iter().map(|s| (format!("{}.secret_access_key", st.key), s)));
                }
            }
        }
        for c in self.clusters.iter() {
            all.extend(c.dns.iter().map(|d| (format!("{}.tsig_secret", d.key), &d.tsig_secret)));
        }
        for (i, n) in self.notify.iter().enumerate() {
            all.extend(n.token.iter().map(|s| (format!("notify[{i}].token"), s)));
        }
        all.into_iter()
            .filter_map(|(key, s)| match s.resolve() {
                Err(source @ SecretError::Empty(_)) => Some(KeyedSecretError { file: self.file.clone(), key, source }),
                _ => None,
            })
            .collect()
    }

    /// A cluster's TSIG secret, read now (the text of `tsig_secret`).
    pub fn dns_secret(&self, dns: &ClusterDns) -> Result<Redacted, KeyedSecretError> {
        self.secret(&format!("{}.tsig_secret", dns.key), &dns.tsig_secret)
    }

    /// The agents' bearer token, when configured.
    pub fn agent_api_token(&self) -> Result<Option<Redacted>, KeyedSecretError> {
        self.agents.token.as_ref().map(|s| self.secret("agents.token", s)).transpose()
    }

    /// Every controller token, read: what the controller's API accepts.
    pub fn controller_tokens(&self) -> Result<Vec<(ApiToken, Redacted)>, KeyedSecretError> {
        self.controller.tokens.iter().map(|t| Ok((t.clone(), self.secret(&t.key, &t.secret)?))).collect()
    }

    /// The token a client sends to the controller for what needs `need`:
    /// the first readable token of exactly that role, else one that grants
    /// it (an operator token for a viewer's request). Tokens whose file
    /// this machine cannot read are passed over; `Ok(None)` when there is
    /// none, an error when the only candidates are unreadable or empty.
    pub fn controller_client_token(&self, need: Access) -> Result<Option<Redacted>, KeyedSecretError> {
        let mut first_err = None;
        let exact = self.controller.tokens.iter().filter(|t| t.role == need);
        let wider = self.controller.tokens.iter().filter(|t| t.role != need && t.role.grants(need));
        for t in exact.chain(wider) {
            match self.secret(&t.key, &t.secret) {
                Ok(v) => return Ok(Some(v)),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(None), Err)
    }

    /// A proxy's admin API token, when configured.
    pub fn proxy_api_token(&self, proxy: &Proxy) -> Result<Option<Redacted>, KeyedSecretError> {
        let i = self.proxies.iter().position(|p| p.name == proxy.name).unwrap_or(0);
        proxy.api_token.as_ref().map(|s| self.secret(&format!("proxies[{i}].api_token"), s)).transpose()
    }

    /// With `[tls]` off, one warning per address outside loopback that
    /// pgdr listens on or connects to: there, tokens, passwords and data
    /// cross the network in the clear.
    pub fn tls_warnings(&self) -> Vec<String> {
        if self.tls.is_some() {
            return Vec::new();
        }
        let loopback = |host: &str| {
            let h = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host).trim_matches(['[', ']']);
            h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        };
        let mut out = Vec::new();
        let mut check = |key: String, addr: String, host_only: bool| {
            let bare = if host_only {
                addr.clone()
            } else {
                addr.rsplit_once(':').map(|(h, _)| h.to_owned()).unwrap_or(addr.clone())
            };
            if !loopback(&bare) && !bare.starts_with('/') {
                out.push(format!("{key} = {addr:?} is not a loopback address and [tls] is off: traffic there is unencrypted (set [tls] mode = \"verify-full\")"));
            }
        };
        if self.controller.instances.is_empty() {
            check("controller.listen".into(), self.controller.listen.to_string(), false);
        }
        for (i, c) in self.controller.instances.iter().enumerate() {
            check(format!("controller.instances[{i}].listen"), c.listen.to_string(), false);
        }
        for (ci, c) in self.clusters.iter().enumerate() {
            for (ni, n) in c.nodes.iter().enumerate() {
                check(format!("clusters[{ci}].nodes[{ni}].agent"), n.agent.clone(), false);
                check(format!("clusters[{ci}].nodes[{ni}].host"), n.host.clone(), true);
            }
        }
        for (pi, p) in self.proxies.iter().enumerate() {
            if let Some(a) = p.api {
                check(format!("proxies[{pi}].api"), a.to_string(), false);
            }
        }
        out
    }

    /// Every controller's API address (`host:port`), in the config's
    /// order: what clients of the controller try. One address without
    /// `[[controller.instances]]`.
    pub fn controller_addrs(&self) -> Vec<String> {
        if self.controller.instances.is_empty() {
            vec![self.controller.listen.to_string()]
        } else {
            self.controller.instances.iter().map(|i| i.listen.to_string()).collect()
        }
    }

    /// This config as controller `name` of `[[controller.instances]]` runs
    /// it: its `listen` and `region`. `None` selects the only instance (or
    /// the one controller without instances); with several, a name is
    /// required. The error names the choices.
    pub fn for_controller(mut self, name: Option<&str>) -> Result<Config, String> {
        let file = self.file.display().to_string();
        let names = || self.controller.instances.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ");
        let chosen = match (name, self.controller.instances.len()) {
            (None, 0) => return Ok(self),
            (Some(n), 0) => {
                return Err(format!("{file}: --controller {n}: the config declares no [[controller.instances]]"));
            }
            (None, 1) => self.controller.instances[0].clone(),
            (None, _) => {
                return Err(format!(
                    "{file}: [[controller.instances]] declares several controllers ({}): choose one with --controller NAME",
                    names()
                ));
            }
            (Some(n), _) => match self.controller.instances.iter().find(|i| i.name == n) {
                Some(i) => i.clone(),
                None => {
                    return Err(format!(
                        "{file}: --controller {n}: no such [[controller.instances]] name (declared: {})",
                        names()
                    ));
                }
            },
        };
        self.controller.listen = chosen.listen;
        self.controller.region = Some(chosen.region);
        Ok(self)
    }

    pub fn proxies_of<'a>(&'a self, cluster: &'a str) -> impl Iterator<Item = &'a Proxy> + 'a {
        self.proxies.iter().filter(move |p| p.cluster.as_str() == cluster)
    }
}
