//! The file as written: serde structs with `deny_unknown_fields`, every
//! duration and name still a string. [`crate::validate`] turns these into the
//! validated types of [`crate`]; nothing else reads them.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub controller: RawController,
    #[serde(default)]
    pub agents: RawAgents,
    #[serde(default)]
    pub timing: RawTiming,
    #[serde(default)]
    pub regions: Vec<RawRegion>,
    #[serde(default)]
    pub tiers: Vec<RawTier>,
    #[serde(default)]
    pub clusters: Vec<RawCluster>,
    #[serde(default)]
    pub proxies: Vec<RawProxy>,
    #[serde(default)]
    pub destinations: Vec<RawDestination>,
    #[serde(default)]
    pub notify: Vec<RawNotify>,
    pub sandbox: Option<RawSandbox>,
    #[serde(default)]
    pub tls: RawTls,
}

/// `[tls]`: the cluster's CA and each part's certificate.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub mode: Option<String>,
    pub ca: Option<String>,
    pub client_certs: Option<bool>,
    pub controller: Option<RawIdentity>,
    pub agent: Option<RawIdentity>,
    pub proxy: Option<RawIdentity>,
    pub client: Option<RawIdentity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub cert: String,
    pub key: String,
}

/// A secret given inline, from an environment variable, or from a file.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    pub value: Option<String>,
    pub env: Option<String>,
    pub file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawController {
    pub listen: Option<String>,
    pub region: Option<String>,
    pub state_dir: Option<String>,
    pub store: Option<String>,
    #[serde(default)]
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: Option<String>,
    pub etcd_user: Option<String>,
    pub etcd_password: Option<RawSecret>,
    pub etcd_ca: Option<String>,
    pub etcd_cert: Option<String>,
    pub etcd_key: Option<String>,
    pub etcd_timeout: Option<String>,
    /// One operator token (kept from before named tokens).
    pub token: Option<RawSecret>,
    /// Named tokens, each with a role.
    #[serde(default)]
    pub tokens: Vec<RawToken>,
    pub readiness_interval: Option<String>,
    /// How many scheduled backups (of different clusters) may run at once.
    pub max_concurrent_backups: Option<u32>,
    /// Threads of `pgdr run`'s async runtime.
    pub worker_threads: Option<usize>,
    /// Controllers in several regions (`[[controller.instances]]`), each
    /// with its own API address; replaces `listen` and `region`.
    #[serde(default)]
    pub instances: Vec<RawControllerInstance>,
}

/// `[[controller.instances]]`: `name = "east", region = "east", listen = "10.0.1.5:7400"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControllerInstance {
    pub name: String,
    pub region: String,
    pub listen: String,
}

/// `[[controller.tokens]]`: `name = "ops", role = "operator", token = { file = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub name: String,
    pub role: String,
    pub token: RawSecret,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgents {
    pub token: Option<RawSecret>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTiming {
    pub probe_interval: Option<String>,
    pub probe_timeout: Option<String>,
    pub proxy_probe_interval: Option<String>,
    pub failure_threshold: Option<u32>,
    pub probe_quorum: Option<u32>,
    pub lease_ttl: Option<String>,
    pub lease_renew: Option<String>,
    pub lease_margin: Option<String>,
    pub restart_deadline: Option<String>,
    pub promote_timeout: Option<String>,
    pub drain_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    pub name: String,
    pub parent: Option<String>,
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    pub name: String,
    pub rpo: String,
    pub rto: String,
    pub backup: Option<RawTierBackup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTierBackup {
    pub schedule: String,
    pub retain_count: Option<u32>,
    pub retain_age: Option<String>,
    pub destination: String,
    #[serde(default)]
    pub copies: Vec<String>,
    pub compression_level: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: String,
    pub tier: String,
    pub replication: Option<String>,
    pub sync_quorum: Option<u32>,
    pub database: Option<String>,
    pub user: Option<String>,
    pub password: Option<RawSecret>,
    pub replication_user: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub region_preference: Vec<String>,
    pub on_crash: Option<String>,
    pub availability_over_rpo: Option<bool>,
    pub fence_hook: Option<String>,
    #[serde(default)]
    pub nodes: Vec<RawNode>,
    /// `[clusters.secrets]`: the roles pgdr rotates and where it stores them.
    pub secrets: Option<RawSecrets>,
    /// `[clusters.dns]`: the writer name pgdr moves with the primary's region.
    pub dns: Option<RawDns>,
}

/// `[clusters.dns]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// The authoritative server taking RFC 2136 updates: `host:port` or an IP (port 53).
    pub server: String,
    pub zone: String,
    /// The writer name, inside `zone`.
    pub name: String,
    pub ttl: Option<String>,
    pub tsig_key: String,
    pub tsig_algorithm: Option<String>,
    pub tsig_secret: Option<RawSecret>,
    /// How long one update may take.
    pub timeout: Option<String>,
    /// Per region: an address, a list of addresses, or a host name (CNAME).
    #[serde(default)]
    pub endpoints: BTreeMap<String, RawDnsTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawDnsTarget {
    One(String),
    Many(Vec<String>),
}

/// `[clusters.secrets]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecrets {
    /// Cron expression for scheduled rotations.
    pub schedule: Option<String>,
    /// Or an interval between scheduled rotations ("12h", "7d").
    pub every: Option<String>,
    /// How far each cluster's scheduled rotations are spread after the due
    /// time, so clusters of one schedule do not all rotate at once.
    pub spread: Option<String>,
    /// Oldest a stored secret may get before `pgdr secrets status` flags it.
    pub max_age: Option<String>,
    #[serde(default)]
    pub roles: Vec<RawManagedRole>,
    #[serde(default)]
    pub stores: Vec<RawSecretStore>,
}

/// `[[clusters.secrets.roles]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManagedRole {
    pub name: String,
    /// `alternating` (default) or `single`.
    pub strategy: Option<String>,
    /// The second login of `alternating`; default `<name>_b`.
    pub alternate: Option<String>,
    /// `dbname` in the stored secret; default the cluster's database.
    pub database: Option<String>,
}

/// `[[clusters.secrets.stores]]`: one per region.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecretStore {
    pub region: String,
    /// `file` or `aws-secretsmanager`.
    pub kind: String,
    /// file: the folder of the JSON files.
    pub dir: Option<String>,
    /// file: previous versions kept beside the current one.
    pub keep: Option<u32>,
    /// aws-secretsmanager: the API endpoint (default the region's public one).
    pub endpoint: Option<String>,
    /// aws-secretsmanager: the AWS region of the store.
    pub aws_region: Option<String>,
    pub allow_http: Option<bool>,
    pub access_key_id: Option<RawSecret>,
    pub secret_access_key: Option<RawSecret>,
    /// aws-secretsmanager: secret names are `<prefix><cluster>/<role>`.
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub name: String,
    pub region: String,
    pub agent: String,
    pub host: String,
    pub port: u16,
    pub data_dir: Option<String>,
    pub bin_dir: Option<String>,
    pub os_user: Option<String>,
    /// PostgreSQL settings this node adds to its `postgresql.conf` on start.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub name: Option<String>,
    pub cluster: String,
    pub region: String,
    pub writer: String,
    pub reader: Option<String>,
    pub api: Option<String>,
    pub max_pause: Option<String>,
    pub max_queue: Option<u32>,
    pub max_clients: Option<u32>,
    pub drain_timeout: Option<String>,
    pub reader_fallback: Option<bool>,
    pub connect_timeout: Option<String>,
    pub tcp_user_timeout: Option<String>,
    pub auth: Option<String>,
    pub users_file: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub require_tls: Option<bool>,
    pub pool: Option<String>,
    pub pool_size: Option<u32>,
    pub pool_min_idle: Option<u32>,
    pub pool_timeout: Option<String>,
    /// Bearer token the admin API requires.
    pub api_token: Option<RawSecret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDestination {
    pub name: String,
    pub url: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub allow_http: Option<bool>,
    pub access_key_id: Option<RawSecret>,
    pub secret_access_key: Option<RawSecret>,
    pub key: Option<RawSecret>,
    pub key_id: Option<String>,
    #[serde(default)]
    pub old_keys: Vec<RawOldKey>,
    pub immutable: Option<bool>,
    pub concurrency: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOldKey {
    pub id: String,
    pub key: RawSecret,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub webhook: String,
    pub token: Option<RawSecret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSandbox {
    pub dir: String,
    pub wan_delay: Option<String>,
}
