//! One rotation of a cluster's managed roles, and the read-only checks
//! (`status`, `verify`) over the same stores.
//!
//! For each role, in order:
//!
//! 1. the topology (epoch, primary, the replica set) is read from the
//!    controller ([`TopologySource`]); a role change running on the cluster
//!    stops the rotation before anything changes;
//! 2. every store of the replica set's regions is read; one that cannot be
//!    read stops this role before the database changes. A store holding an
//!    older version than another (a rotation that could not write it) is
//!    brought up to the newest version that logs in: a rerun repairs;
//! 3. the login to change is picked (`alternating`: the one the stores do
//!    not name; `single`: the role itself), and a new password and its
//!    SCRAM verifier are made;
//! 4. on the primary, in one transaction: the server must not be in
//!    recovery, the controller must still name the same primary and epoch,
//!    then `ALTER ROLE ... PASSWORD '<verifier>'` (statement logging off for
//!    the transaction where pgdr is superuser). An epoch that changed
//!    restarts the change on the new primary, never on the demoted one;
//! 5. every standby of the replica set must replay past the primary's WAL
//!    position after the commit;
//! 6. every region's store gets the secret, with that region's proxy
//!    writer endpoint as host/port (retried with backoff when unreachable);
//! 7. each written secret is read back and logs in through its region's
//!    proxy writer endpoint.
//!
//! Stores of regions with no node in the replica set are left untouched.
//! No password is logged, journalled or printed: reports carry versions,
//! logins and store names only.

use std::time::Duration;

use async_trait::async_trait;
use pgdr_config::{Cluster, Config, ManagedRole, RotationStrategy, SecretStoreConfig};
use pgdr_node::local::{conn_quote, pg_detail};
use serde::{Deserialize, Serialize};

use crate::store::{SecretStore, StoreError, open_store};
use crate::{SecretKey, SecretValue, password};

/// How long a standby may take to replay the change.
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at writing one store before it is reported.
const STORE_ATTEMPTS: u32 = 3;
/// Restarts of one role's change after the epoch moved under it.
const EPOCH_RESTARTS: u32 = 3;

/// Who is primary now, and which nodes follow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub epoch: u64,
    pub primary: String,
    /// Replicas and standbys in the replica set: they must replay the
    /// change, and their regions' stores get the secret.
    pub replicas: Vec<String>,
    /// Nodes out of the set (fenced, down, an old primary kept for
    /// reconciliation), with why.
    pub excluded: Vec<(String, String)>,
    /// Nodes whose agent did not answer the controller just now (a busy
    /// host is not a departed one): the rotation asks their PostgreSQL
    /// directly and counts a server in recovery as a standby of the set.
    pub unknown: Vec<String>,
    /// A role change running on the cluster (its kind and id), if any.
    pub busy: Option<String>,
}

/// Where the topology comes from (the controller's API in `pgdr`), and
/// how the cluster's proxies learn a changed password.
#[async_trait]
pub trait TopologySource: Send + Sync {
    async fn current(&self) -> Result<Topology, String>;

    /// Makes every proxy of the cluster reload its user verifiers (a proxy
    /// with `auth = auto` checks logins against verifiers it read from the
    /// primary), by proxy name. Called after the change replayed and before
    /// any store hands the new secret out.
    async fn refresh_proxies(&self) -> Vec<(String, Result<(), String>)> {
        Vec::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("cluster {0} has no [clusters.secrets] in the config")]
    NotManaged(String),
    #[error("cluster {cluster} manages no role {role:?}")]
    NoRole { cluster: String, role: String },
    #[error("{0}")]
    Config(String),
}

impl RotateError {
    /// Bad usage or config (exit 2) rather than a failed rotation.
    pub fn is_usage(&self) -> bool {
        true
    }
}

/// What happened to one region's store.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreReport {
    pub region: String,
    pub store: String,
    /// The version the store holds after the run.
    pub version: Option<u64>,
    pub login: Option<String>,
    /// Written by this run (rotation or repair).
    pub written: bool,
    /// Logged in with the stored secret through `via`.
    pub verified: Option<bool>,
    /// The endpoint the secret names (the region's proxy writer).
    pub via: Option<String>,
    /// Seconds since the stored secret was rotated.
    pub age_seconds: Option<u64>,
    /// Older than the config's `max_age`.
    pub too_old: bool,
    pub skipped: Option<String>,
    pub error: Option<String>,
}

/// One standby's replay of the change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayReport {
    pub node: String,
    pub replayed: bool,
    pub error: Option<String>,
}

/// One proxy's reload of its user verifiers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyReport {
    pub proxy: String,
    pub refreshed: bool,
    pub error: Option<String>,
}

/// One managed role.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoleReport {
    pub role: String,
    pub strategy: String,
    /// The login whose password changed.
    pub login: Option<String>,
    pub version: Option<u64>,
    pub epoch: Option<u64>,
    pub primary: Option<String>,
    /// The change had to restart on a new primary this many times.
    pub epoch_restarts: u32,
    pub replicas: Vec<ReplayReport>,
    pub proxies: Vec<ProxyReport>,
    pub stores: Vec<StoreReport>,
    pub ok: bool,
    pub error: Option<String>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub cluster: String,
    pub roles: Vec<RoleReport>,
    pub ok: bool,
}

/// The config's secrets of `cluster`, and the roles `only` picks (all when `None`).
pub fn managed<'a>(
    cfg: &'a Config,
    cluster: &str,
    only: Option<&str>,
) -> Result<(&'a Cluster, Vec<&'a ManagedRole>), RotateError> {
    let c = cfg.cluster(cluster).ok_or_else(|| RotateError::Config(format!("no cluster {cluster:?} in the config")))?;
    let s = c.secrets.as_ref().ok_or_else(|| RotateError::NotManaged(cluster.to_owned()))?;
    let roles: Vec<&ManagedRole> = match only {
        Some(r) => {
            vec![s.role(r).ok_or_else(|| RotateError::NoRole { cluster: cluster.to_owned(), role: r.to_owned() })?]
        }
        None => s.roles.iter().collect(),
    };
    Ok((c, roles))
}

fn strategy_name(r: &ManagedRole) -> &'static str {
    match r.strategy {
        RotationStrategy::Alternating { .. } => "alternating",
        RotationStrategy::Single => "single",
    }
}

/// The endpoint a region's secret names: the region's proxy writer, else
/// the primary itself.
pub fn endpoint(cfg: &Config, cluster: &Cluster, region: &str, primary: &str) -> (String, u16) {
    if let Some(p) = cfg.proxies_of(cluster.name.as_str()).find(|p| p.region.as_str() == region) {
        return (p.writer.ip().to_string(), p.writer.port());
    }
    cluster.node(primary).map(|n| (n.host.clone(), n.port)).unwrap_or_else(|| ("127.0.0.1".into(), 5432))
}

struct Admin {
    user: String,
    password: Option<String>,
    database: String,
    /// TLS toward the nodes under `[tls]` (`verify-full` with its CA).
    tls: Option<pgdr_node::local::PgTls>,
}

fn admin(cfg: &Config, c: &Cluster) -> Result<Admin, RotateError> {
    let i = cfg.clusters.iter().position(|x| x.name == c.name).unwrap_or(0);
    let password = match &c.password {
        Some(s) => Some(
            cfg.secret(&format!("clusters[{i}].password"), s)
                .map_err(|e| RotateError::Config(e.to_string()))?
                .expose()
                .to_owned(),
        ),
        None => None,
    };
    let tls = match &cfg.tls {
        Some(t) => Some(pgdr_node::local::PgTls::new(&t.ca).map_err(|e| RotateError::Config(format!("tls.ca: {e}")))?),
        None => None,
    };
    Ok(Admin { user: c.user.clone(), password, database: c.database.clone(), tls })
}

async fn connect(
    host: &str,
    port: u16,
    user: &str,
    password: Option<&str>,
    db: &str,
    tls: Option<&pgdr_node::local::PgTls>,
) -> Result<tokio_postgres::Client, String> {
    let mut info = format!(
        "host={} port={port} user={} dbname={} connect_timeout=5 application_name=pgdr-secrets",
        conn_quote(host),
        conn_quote(user),
        conn_quote(db)
    );
    if let Some(p) = password {
        info.push_str(&format!(" password={}", conn_quote(p)));
    }
    let addr = format!("{host}:{port}");
    match tokio::time::timeout(Duration::from_secs(10), pgdr_node::local::connect(&info, &addr, tls)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{addr}: no answer within 10s")),
    }
}

/// How pgdr logs in at `host:port` with a stored secret: a proxy of the
/// config is reached over TLS when it serves TLS (`tls_cert`) and `[tls]`
/// is on, a node whenever `[tls]` is on; verified against `tls.ca` either
/// way (`verify-full`), never TLS without a check.
pub fn endpoint_tls(
    cfg: &Config,
    cluster: &Cluster,
    host: &str,
    port: u16,
) -> Result<Option<pgdr_node::local::PgTls>, String> {
    let Some(t) = &cfg.tls else { return Ok(None) };
    let proxy = cfg
        .proxies_of(cluster.name.as_str())
        .find(|p| [Some(p.writer), p.reader].iter().flatten().any(|a| a.ip().to_string() == host && a.port() == port));
    if proxy.is_some_and(|p| p.tls.is_none()) {
        return Ok(None);
    }
    pgdr_node::local::PgTls::new(&t.ca).map(Some).map_err(|e| format!("tls.ca: {e}"))
}

/// Logs in with a stored secret at the endpoint it names (or `at`), over
/// `tls` when given ([`endpoint_tls`] says which the endpoint needs).
pub async fn login(
    v: &SecretValue,
    at: Option<(&str, u16)>,
    tls: Option<&pgdr_node::local::PgTls>,
) -> Result<(), String> {
    let (host, port) = at.unwrap_or((&v.host, v.port));
    let c = connect(host, port, &v.username, Some(&v.password), &v.dbname, tls).await?;
    let row = c.query_one("SELECT current_user::text", &[]).await.map_err(|e| pg_detail(&e))?;
    let user: String = row.get(0);
    if user != v.username && !user.is_empty() {
        // `ALTER ROLE app_b SET role = app` makes current_user the shared role.
        tracing::debug!(login = %v.username, current_user = %user, "logged in");
    }
    Ok(())
}

/// A store's config and the store, or why it could not be opened.
type Opened<'a> = (&'a SecretStoreConfig, Result<Box<dyn SecretStore>, StoreError>);

/// Every store of the cluster, opened.
fn stores_of<'a>(cfg: &Config, c: &'a Cluster) -> Vec<Opened<'a>> {
    c.secrets.iter().flat_map(|s| &s.stores).map(|s| (s, open_store(cfg, s))).collect()
}

async fn put_with_retry(store: &dyn SecretStore, key: &SecretKey, v: &SecretValue) -> Result<(), StoreError> {
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match store.put(key, v).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && attempt < STORE_ATTEMPTS => {
                tracing::warn!(store = %store.describe(), attempt, error = %e, "secret store write failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The regions of the replica set: the primary's and every replica's.
fn set_regions(c: &Cluster, t: &Topology) -> Vec<String> {
    let mut r: Vec<String> = std::iter::once(&t.primary)
        .chain(&t.replicas)
        .filter_map(|n| c.node(n).map(|n| n.region.to_string()))
        .collect();
    r.sort();
    r.dedup();
    r
}

/// A store of the replica set, as read: its report, the store, its value.
type Held = (StoreReport, Box<dyn SecretStore>, Option<SecretValue>);

/// Steps 1 and 2: reads every store of `regions` (the others are reported
/// as skipped) and brings those behind up to the newest version that logs
/// in on `primary`. Returns the stores and that newest value (`None` when
/// none is stored or it does not log in), or why nothing may change.
async fn read_and_repair(
    cfg: &Config,
    c: &Cluster,
    role: &ManagedRole,
    key: &SecretKey,
    primary: &str,
    regions: &[String],
    r: &mut RoleReport,
) -> Result<(Vec<Held>, Option<SecretValue>, Option<SecretValue>), String> {
    // 1. Read every store of the replica set.
    let mut stores = Vec::new();
    let mut unreadable = Vec::new();
    for (sc, opened) in stores_of(cfg, c) {
        let mut rep = StoreReport { region: sc.region.to_string(), ..Default::default() };
        let store = match opened {
            Ok(s) => s,
            Err(e) => {
                rep.store = sc.key.clone();
                rep.error = Some(e.to_string());
                unreadable.push(sc.region.to_string());
                r.stores.push(rep);
                continue;
            }
        };
        rep.store = store.describe();
        if !regions.contains(&rep.region) {
            rep.skipped = Some("no node of the replica set in this region".into());
            r.stores.push(rep);
            continue;
        }
        match store.get(key).await {
            Ok(v) => {
                rep.version = v.as_ref().map(|v| v.version);
                rep.login = v.as_ref().map(|v| v.username.clone());
                stores.push((rep, store, v));
            }
            Err(e) => {
                rep.error = Some(e.to_string());
                unreadable.push(rep.region.clone());
                r.stores.push(rep);
            }
        }
    }
    if !unreadable.is_empty() {
        r.stores.extend(stores.into_iter().map(|(rep, _, _)| rep));
        return Err(format!(
            "the secret store of {} cannot be read: nothing changed (rerun once it is back)",
            unreadable.join(", ")
        ));
    }
    // 2. Repair stores behind the newest version that still logs in.
    let newest = stores.iter().filter_map(|(_, _, v)| v.clone()).max_by_key(|v| v.version);
    let mut current = None;
    if let Some(n) = &newest {
        let pnode = c.node(primary).ok_or_else(|| format!("no node {primary} in the config"))?;
        let tls = endpoint_tls(cfg, c, &pnode.host, pnode.port)?;
        if login(n, Some((&pnode.host, pnode.port)), tls.as_ref()).await.is_ok() {
            current = Some(n.clone());
            for (rep, store, v) in stores.iter_mut() {
                if v.as_ref().map(|v| v.version) != Some(n.version) {
                    let (h, p) = endpoint(cfg, c, &rep.region, primary);
                    let fixed = n.at(&h, p);
                    match put_with_retry(store.as_ref(), key, &fixed).await {
                        Ok(()) => {
                            tracing::info!(role = %role.name, region = %rep.region, version = n.version, "secret store brought up to date");
                            rep.version = Some(n.version);
                            rep.login = Some(n.username.clone());
                            *v = Some(fixed);
                        }
                        Err(e) => {
                            rep.error = Some(e.to_string());
                        }
                    }
                }
            }
            if stores.iter().any(|(rep, _, _)| rep.error.is_some()) {
                r.stores.extend(stores.into_iter().map(|(rep, _, _)| rep));
                return Err("a secret store behind the others could not be brought up to date: nothing changed".into());
            }
        }
    }
    Ok((stores, newest, current))
}

/// Brings the stores of `regions` (a node's region rejoining the replica
/// set, and the primary's) up to the newest version that logs in on
/// `primary`, without rotating: what a node that comes back into the set
/// needs before it serves again. A cluster without managed roles is
/// nothing to do.
pub async fn sync(cfg: &Config, cluster: &str, primary: &str, regions: &[String]) -> Result<Report, RotateError> {
    let (c, roles) = match managed(cfg, cluster, None) {
        Ok(m) => m,
        Err(RotateError::NotManaged(_)) => return Ok(Report { cluster: cluster.to_owned(), roles: vec![], ok: true }),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for role in roles {
        let mut r = RoleReport { role: role.name.clone(), strategy: strategy_name(role).into(), ..Default::default() };
        let key = SecretKey::new(c.name.as_str(), &role.name);
        match read_and_repair(cfg, c, role, &key, primary, regions, &mut r).await {
            Ok((stores, newest, current)) => {
                r.version = newest.as_ref().map(|v| v.version);
                r.login = current.as_ref().map(|v| v.username.clone());
                r.primary = Some(primary.to_owned());
                if newest.is_some() && current.is_none() {
                    r.error = Some(format!("the newest stored secret does not log in on {primary}: rotate"));
                }
                r.stores.extend(stores.into_iter().map(|(rep, _, _)| rep));
            }
            Err(e) => r.error = Some(e),
        }
        r.ok = r.error.is_none() && r.stores.iter().all(|s| s.error.is_none());
        out.push(r);
    }
    let ok = out.iter().all(|r| r.ok);
    Ok(Report { cluster: cluster.to_owned(), roles: out, ok })
}

/// Rotates the roles `only` names (all when `None`) of `cluster`.
pub async fn rotate(
    cfg: &Config,
    cluster: &str,
    only: Option<&str>,
    topo: &dyn TopologySource,
) -> Result<Report, RotateError> {
    let (c, roles) = managed(cfg, cluster, only)?;
    let admin = admin(cfg, c)?;
    let mut out = Vec::new();
    for role in roles {
        let mut r = RoleReport { role: role.name.clone(), strategy: strategy_name(role).into(), ..Default::default() };
        if let Err(e) = rotate_role(cfg, c, role, &admin, topo, &mut r).await {
            tracing::error!(cluster, role = %role.name, error = %e, "rotation failed");
            r.error = Some(e);
        }
        r.ok = r.error.is_none()
            && r.replicas.iter().all(|x| x.replayed)
            && r.proxies.iter().all(|x| x.refreshed)
            && r.stores.iter().all(|s| s.error.is_none() && s.verified != Some(false));
        out.push(r);
    }
    let ok = out.iter().all(|r| r.ok);
    Ok(Report { cluster: cluster.to_owned(), roles: out, ok })
}

async fn rotate_role(
    cfg: &Config,
    c: &Cluster,
    role: &ManagedRole,
    admin: &Admin,
    topo: &dyn TopologySource,
    r: &mut RoleReport,
) -> Result<(), String> {
    let key = SecretKey::new(c.name.as_str(), &role.name);
    let t = topo.current().await.map_err(|e| format!("cannot learn the primary and epoch: {e}"))?;
    let t = resolve_unknown(c, admin, t).await;
    if let Some(b) = &t.busy {
        return Err(format!("{b} is running on cluster {}: rotate once it ends", c.name));
    }
    let regions = set_regions(c, &t);
    let (stores, newest, current) = read_and_repair(cfg, c, role, &key, &t.primary, &regions, r).await?;
    // 3. The login to change.
    let logins = role.logins();
    let login_name = match (&role.strategy, &current) {
        (RotationStrategy::Alternating { alternate }, Some(cur)) if cur.username == role.name => alternate.clone(),
        _ => role.name.clone(),
    };
    let version = newest.as_ref().map_or(0, |v| v.version) + 1;
    let new_password = password::generate();
    // 4. On the primary, the epoch checked in the same transaction.
    let mut t = t;
    let mut restarts = 0;
    let lsn = loop {
        match apply(c, admin, role, &logins, &login_name, &new_password, &t, topo).await {
            Ok(lsn) => {
                // The epoch must still be the one the change committed under.
                let after = topo.current().await.map_err(|e| format!("cannot re-read the epoch: {e}"))?;
                if after.epoch == t.epoch && after.primary == t.primary {
                    break lsn;
                }
                tracing::warn!(role = %role.name, old_epoch = t.epoch, new_epoch = after.epoch, "epoch changed after the password change; applying it again on the new primary");
                t = resolve_unknown(c, admin, after).await;
            }
            Err(Apply::EpochMoved(next)) => {
                tracing::warn!(role = %role.name, old_epoch = t.epoch, new_epoch = next.epoch, "epoch changed before commit; restarting on the new primary");
                t = resolve_unknown(c, admin, next).await;
            }
            Err(Apply::Failed(e)) => return Err(e),
        }
        restarts += 1;
        r.epoch_restarts = restarts;
        if restarts > EPOCH_RESTARTS {
            return Err(format!(
                "the epoch kept changing ({restarts} restarts): rotate again once the cluster is stable"
            ));
        }
        if let Some(b) = &t.busy {
            return Err(format!(
                "{b} started on cluster {}: the change is rolled back or not applied; rotate once it ends",
                c.name
            ));
        }
    };
    r.login = Some(login_name.clone());
    r.version = Some(version);
    r.epoch = Some(t.epoch);
    r.primary = Some(t.primary.clone());
    tracing::info!(cluster = %c.name, role = %role.name, login = %login_name, version, epoch = t.epoch, primary = %t.primary, "password changed on the primary");
    // 5. Every standby of the set replays it.
    for n in &t.replicas {
        let res = wait_replay(c, admin, n, &lsn).await;
        if let Err(e) = &res {
            tracing::warn!(node = %n, error = %e, "standby did not replay the password change");
        }
        r.replicas.push(ReplayReport { node: n.clone(), replayed: res.is_ok(), error: res.err() });
    }
    // The proxies learn the new verifier before any store hands it out.
    for (proxy, res) in topo.refresh_proxies().await {
        if let Err(e) = &res {
            tracing::warn!(proxy = %proxy, error = %e, "proxy did not reload its user verifiers");
        }
        r.proxies.push(ProxyReport { proxy, refreshed: res.is_ok(), error: res.err() });
    }
    // With two logins, the stores keep the other one (it still logs in)
    // unless every standby has the change and every proxy knows it: a
    // store must never hand out a secret a promoted standby or a proxy
    // would refuse. A rerun rotates again. (`single` changed the only
    // login in place: the old secret is dead, so the stores get the new.)
    // A proxy of a region with no node of the set (lost with its region:
    // another region's `pgdr run` that does not answer) holds nothing back:
    // that region's store is left as it is below.
    let regions = set_regions(c, &t);
    let proxy_region = |name: &str| {
        cfg.proxies_of(c.name.as_str())
            .find(|p| p.name == name || p.api.is_some_and(|a| a.to_string() == name))
            .map(|p| p.region.to_string())
    };
    let unready: Vec<String> = r
        .replicas
        .iter()
        .filter(|x| !x.replayed)
        .map(|x| format!("standby {} has not replayed the change", x.node))
        .chain(
            r.proxies
                .iter()
                .filter(|x| !x.refreshed && proxy_region(&x.proxy).is_none_or(|region| regions.contains(&region)))
                .map(|x| format!("proxy {} did not reload its verifiers", x.proxy)),
        )
        .collect();
    let hold = matches!(role.strategy, RotationStrategy::Alternating { .. }) && !unready.is_empty();
    if hold {
        tracing::warn!(cluster = %c.name, role = %role.name, version, "secret stores not written: {}", unready.join("; "));
    }
    // 6. Every region's store of the set, 7. verified through its proxy.
    let now = chrono::Utc::now();
    for (mut rep, store, _) in stores {
        if !regions.contains(&rep.region) {
            rep.skipped = Some("no node of the replica set in this region any more".into());
            r.stores.push(rep);
            continue;
        }
        if hold {
            rep.error = Some(format!(
                "not written: {}; the store keeps the other login, which still logs in (rerun to rotate)",
                unready.join("; ")
            ));
            r.stores.push(rep);
            continue;
        }
        let (host, port) = endpoint(cfg, c, &rep.region, &t.primary);
        let value = SecretValue {
            username: login_name.clone(),
            password: new_password.clone(),
            host,
            port,
            dbname: role.database.clone(),
            engine: "postgres".into(),
            version,
            epoch: t.epoch,
            rotated_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        rep.via = Some(format!("{}:{}", value.host, value.port));
        match put_with_retry(store.as_ref(), &key, &value).await {
            Ok(()) => {
                rep.written = true;
                rep.version = Some(version);
                rep.login = Some(login_name.clone());
                tracing::info!(role = %role.name, region = %rep.region, version, "secret store written");
                let back = store.get(&key).await.ok().flatten().filter(|v| v.version == version);
                let res = match back {
                    Some(v) => match endpoint_tls(cfg, c, &v.host, v.port) {
                        Ok(tls) => login(&v, None, tls.as_ref()).await,
                        Err(e) => Err(e),
                    },
                    None => Err("the store does not return the version just written".into()),
                };
                rep.verified = Some(res.is_ok());
                if let Err(e) = res {
                    rep.error = Some(format!(
                        "the stored secret does not log in through {}: {e}",
                        rep.via.clone().unwrap_or_default()
                    ));
                }
            }
            Err(e) => {
                tracing::error!(role = %role.name, region = %rep.region, error = %e, "secret store not written");
                rep.error = Some(format!("{e} (a rerun writes it)"));
            }
        }
        r.stores.push(rep);
    }
    Ok(())
}

/// Nodes the controller could not reach just now: a server that answers
/// and is in recovery is a standby of the set; anything else is left out.
async fn resolve_unknown(c: &Cluster, admin: &Admin, mut t: Topology) -> Topology {
    for name in std::mem::take(&mut t.unknown) {
        let Some(n) = c.node(&name) else { continue };
        let standby =
            match connect(&n.host, n.port, &admin.user, admin.password.as_deref(), &admin.database, admin.tls.as_ref())
                .await
            {
                Ok(db) => db.query_one("SELECT pg_is_in_recovery()", &[]).await.map(|r| r.get::<_, bool>(0)).ok(),
                Err(_) => None,
            };
        match standby {
            Some(true) => t.replicas.push(name),
            Some(false) => t.excluded.push((name, "its agent did not answer and it is not in recovery".into())),
            None => t.excluded.push((name, "neither its agent nor its server answered".into())),
        }
    }
    t
}

enum Apply {
    EpochMoved(Topology),
    Failed(String),
}

/// The change on the primary, in one transaction; returns the primary's
/// WAL position after the commit.
#[allow(clippy::too_many_arguments)]
async fn apply(
    c: &Cluster,
    admin: &Admin,
    role: &ManagedRole,
    logins: &[&str],
    login_name: &str,
    new_password: &str,
    t: &Topology,
    topo: &dyn TopologySource,
) -> Result<String, Apply> {
    let f = |e: tokio_postgres::Error| Apply::Failed(format!("on primary {}: {}", t.primary, pg_detail(&e)));
    let node = c.node(&t.primary).ok_or_else(|| Apply::Failed(format!("no node {} in the config", t.primary)))?;
    let pw = new_password.to_owned();
    let verifier = tokio::task::spawn_blocking(move || password::scram_verifier(&pw))
        .await
        .map_err(|e| Apply::Failed(e.to_string()))?;
    let mut db =
        connect(&node.host, node.port, &admin.user, admin.password.as_deref(), &admin.database, admin.tls.as_ref())
            .await
            .map_err(|e| Apply::Failed(format!("cannot reach primary {}: {e}", t.primary)))?;
    let tx = db.transaction().await.map_err(f)?;
    let row =
        tx.query_one("SELECT pg_is_in_recovery(), current_setting('is_superuser') = 'on'", &[]).await.map_err(f)?;
    let (in_recovery, superuser): (bool, bool) = (row.get(0), row.get(1));
    if in_recovery {
        let next = topo.current().await.map_err(Apply::Failed)?;
        return Err(if next.epoch != t.epoch {
            Apply::EpochMoved(next)
        } else {
            Apply::Failed(format!("{} is in recovery: not the primary", t.primary))
        });
    }
    if superuser {
        // The verifier is not the password, but keep it out of the log too.
        tx.batch_execute("SET LOCAL log_statement = 'none'; SET LOCAL log_min_duration_statement = -1")
            .await
            .map_err(f)?;
    }
    // Managed logins that do not exist yet: the role itself, and the
    // alternate as a member of it (same privileges, objects it creates
    // owned by the role).
    for (i, l) in logins.iter().enumerate() {
        let exists = tx.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[l]).await.map_err(f)?.is_some();
        if !exists {
            if i == 0 {
                tx.batch_execute(&format!("CREATE ROLE {l} LOGIN")).await.map_err(f)?;
            } else {
                tx.batch_execute(&format!(
                    "CREATE ROLE {l} LOGIN IN ROLE {0}; ALTER ROLE {l} SET role = '{0}'",
                    role.name
                ))
                .await
                .map_err(f)?;
            }
        }
    }
    // The epoch, checked in the same step: the controller still names this
    // primary at this epoch just before the commit.
    let now = topo.current().await.map_err(Apply::Failed)?;
    if now.epoch != t.epoch || now.primary != t.primary {
        let _ = tx.rollback().await;
        return Err(Apply::EpochMoved(now));
    }
    // Role names are validated plain identifiers; the verifier is base64 and `$:`.
    tx.batch_execute(&format!("ALTER ROLE {login_name} PASSWORD '{verifier}'")).await.map_err(f)?;
    tx.commit().await.map_err(f)?;
    let row = db.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.map_err(f)?;
    Ok(row.get(0))
}

async fn wait_replay(c: &Cluster, admin: &Admin, node: &str, lsn: &str) -> Result<(), String> {
    let n = c.node(node).ok_or_else(|| format!("no node {node} in the config"))?;
    let deadline = tokio::time::Instant::now() + REPLAY_TIMEOUT;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match connect(&n.host, n.port, &admin.user, admin.password.as_deref(), &admin.database, admin.tls.as_ref())
            .await
        {
            Ok(db) => loop {
                match db
                    .query_one("SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)", &[&lsn])
                    .await
                {
                    Ok(row) if row.get::<_, bool>(0) => return Ok(()),
                    Ok(_) => last = format!("replay has not reached {lsn}"),
                    Err(e) => {
                        last = pg_detail(&e);
                        break;
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("not replayed within {}s: {last}", REPLAY_TIMEOUT.as_secs()))
}

/// Every store of the cluster for the roles `only` picks: what it holds
/// (never the password) and, with `verify`, whether it logs in now through
/// the endpoint it names.
pub async fn status(cfg: &Config, cluster: &str, only: Option<&str>, verify: bool) -> Result<Report, RotateError> {
    let (c, roles) = managed(cfg, cluster, only)?;
    let max_age = c.secrets.as_ref().and_then(|s| s.max_age);
    let now = chrono::Utc::now();
    let mut out = Vec::new();
    for role in roles {
        let key = SecretKey::new(c.name.as_str(), &role.name);
        let mut r = RoleReport { role: role.name.clone(), strategy: strategy_name(role).into(), ..Default::default() };
        for (sc, opened) in stores_of(cfg, c) {
            let mut rep = StoreReport { region: sc.region.to_string(), store: sc.key.clone(), ..Default::default() };
            match opened {
                Err(e) => rep.error = Some(e.to_string()),
                Ok(store) => {
                    rep.store = store.describe();
                    match store.get(&key).await {
                        Err(e) => rep.error = Some(e.to_string()),
                        Ok(None) => rep.error = Some("no secret stored yet: run `pgdr secrets rotate`".into()),
                        Ok(Some(v)) => {
                            rep.version = Some(v.version);
                            rep.login = Some(v.username.clone());
                            rep.via = Some(format!("{}:{}", v.host, v.port));
                            rep.age_seconds = v.age(now).map(|d| d.as_secs());
                            rep.too_old = matches!((v.age(now), max_age), (Some(a), Some(m)) if !m.is_zero() && a > m);
                            if verify {
                                let res = match endpoint_tls(cfg, c, &v.host, v.port) {
                                    Ok(tls) => login(&v, None, tls.as_ref()).await,
                                    Err(e) => Err(e),
                                };
                                rep.verified = Some(res.is_ok());
                                if let Err(e) = res {
                                    rep.error = Some(format!("does not log in through {}: {e}", v.host));
                                }
                            }
                        }
                    }
                }
            }
            r.stores.push(rep);
        }
        let newest = r.stores.iter().filter_map(|s| s.version).max();
        r.version = newest;
        r.ok = r.stores.iter().all(|s| s.error.is_none() && s.verified != Some(false) && !s.too_old);
        out.push(r);
    }
    let ok = out.iter().all(|r| r.ok);
    Ok(Report { cluster: cluster.to_owned(), roles: out, ok })
}
