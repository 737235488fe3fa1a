//! The one validation pass: raw types in, validated types or every problem out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgdr_model::{ClusterName, NodeName, RegionName, ReplicationMode, TierName, check_name, parse_duration};

use crate::raw::*;
use crate::spans::SpanIndex;
use crate::*;

struct Checker {
    spans: SpanIndex,
    problems: Vec<Problem>,
    base_dir: PathBuf,
}

impl Checker {
    fn bad(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        let line = self.spans.line_of_key(&key);
        self.problems.push(Problem { key, line, message: message.into() });
    }

    fn name(&mut self, key: String, value: &str, what: &str) {
        if let Err(expected) = check_name(value) {
            self.bad(key, format!("{what} name {value:?} is not valid: expected {expected}"));
        }
    }

    fn duration(&mut self, key: String, value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(s) => match parse_duration(s) {
                Ok(d) => d,
                Err(e) => {
                    self.bad(key, format!("expected a duration like \"500ms\", \"5s\" or \"2m\": {e}"));
                    default
                }
            },
        }
    }

    fn addr(&mut self, key: String, value: &str) -> Option<SocketAddr> {
        match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.bad(key, format!("expected an address like \"127.0.0.1:6432\", got {value:?}"));
                None
            }
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() { p.to_owned() } else { self.base_dir.join(p) }
    }

    fn secret(&mut self, key: String, raw: &Option<RawSecret>) -> Option<Secret> {
        let raw = raw.as_ref()?;
        let given = [raw.value.is_some(), raw.env.is_some(), raw.file.is_some()].iter().filter(|b| **b).count();
        if given != 1 {
            self.bad(key, "expected exactly one of `value`, `env` or `file`");
            return None;
        }
        if let Some(v) = &raw.value {
            if v.trim().is_empty() {
                self.bad(key, "the inline `value` is empty: expected a secret");
                return None;
            }
            Some(Secret::Inline(v.clone()))
        } else if let Some(e) = &raw.env {
            Some(Secret::Env(e.clone()))
        } else {
            raw.file.as_deref().map(|f| Secret::File(self.path(f)))
        }
    }

    fn unique<'a>(&mut self, list: impl Iterator<Item = (String, &'a str)>, what: &str) {
        let mut seen = BTreeMap::new();
        for (key, name) in list {
            if let Some(first) = seen.insert(name.to_owned(), key.clone()) {
                self.bad(key, format!("duplicate {what} name {name:?} (first declared at `{first}`)"));
            }
        }
    }
}

/// Whether `host:port` names this machine's loopback interface.
fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn parse(path: &Path, text: &str) -> Result<Config, Vec<Problem>> {
    let spans = SpanIndex::new(text);
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let offset = e.span().map(|s| s.start);
            let key = offset.and_then(|o| spans.key_at(o)).unwrap_or_default().to_owned();
            let line = offset.map(|o| spans.line_of(o));
            return Err(vec![Problem { key, line, message: e.message().trim().to_owned() }]);
        }
    };
    let base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
    let base_dir = if base_dir.as_os_str().is_empty() { PathBuf::from(".") } else { base_dir };
    let mut c = Checker { spans, problems: Vec::new(), base_dir };
    let config = build(&mut c, raw, path);
    if c.problems.is_empty() { Ok(config) } else { Err(c.problems) }
}

fn build(c: &mut Checker, raw: RawConfig, path: &Path) -> Config {
    // Regions.
    c.unique(raw.regions.iter().enumerate().map(|(i, r)| (format!("regions[{i}].name"), r.name.as_str())), "region");
    let region_names: BTreeSet<&str> = raw.regions.iter().map(|r| r.name.as_str()).collect();
    let mut regions = Vec::new();
    for (i, r) in raw.regions.iter().enumerate() {
        c.name(format!("regions[{i}].name"), &r.name, "region");
        let kind = match r.kind.as_deref() {
            None | Some("region") => RegionKind::Region,
            Some("zone") => RegionKind::Zone,
            Some(other) => {
                c.bad(format!("regions[{i}].kind"), format!("expected \"region\" or \"zone\", got {other:?}"));
                RegionKind::Region
            }
        };
        if let Some(p) = &r.parent {
            if !region_names.contains(p.as_str()) {
                c.bad(format!("regions[{i}].parent"), format!("region {p:?} is not declared under [[regions]]"));
            } else if p == &r.name {
                c.bad(format!("regions[{i}].parent"), "a region cannot be its own parent");
            }
        }
        if kind == RegionKind::Zone && r.parent.is_none() {
            c.bad(format!("regions[{i}].parent"), "a zone needs a `parent` region");
        }
        regions.push(Region {
            name: RegionName::new(&r.name),
            parent: r.parent.as_deref().map(RegionName::from),
            kind,
        });
    }
    let region_ok = |name: &str| region_names.contains(name);

    // Destinations (before tiers, which name them).
    c.unique(
        raw.destinations.iter().enumerate().map(|(i, d)| (format!("destinations[{i}].name"), d.name.as_str())),
        "destination",
    );
    let mut destinations = Vec::new();
    for (i, d) in raw.destinations.iter().enumerate() {
        let k = |f: &str| format!("destinations[{i}].{f}");
        c.name(k("name"), &d.name, "destination");
        let scheme_ok =
            ["file://", "s3://", "gs://", "az://", "azure://", "memory://"].iter().any(|s| d.url.starts_with(s));
        if !scheme_ok {
            c.bad(k("url"), format!("expected a URL starting with file://, s3://, gs:// or az://, got {:?}", d.url));
        }
        let url = match d.url.strip_prefix("file://") {
            Some(rest) if !rest.starts_with('/') => format!("file://{}", c.path(rest).display()),
            _ => d.url.clone(),
        };
        if d.concurrency == Some(0) {
            c.bad(k("concurrency"), "expected at least 1");
        }
        let key = c.secret(k("key"), &d.key);
        let access_key_id = c.secret(k("access_key_id"), &d.access_key_id);
        let secret_access_key = c.secret(k("secret_access_key"), &d.secret_access_key);
        let mut old_keys = Vec::new();
        for (j, ok) in d.old_keys.iter().enumerate() {
            if let Some(s) = c.secret(format!("destinations[{i}].old_keys[{j}].key"), &Some(ok.key.clone())) {
                old_keys.push((ok.id.clone(), s));
            }
        }
        destinations.push(Destination {
            name: d.name.clone(),
            url,
            region: d.region.clone(),
            endpoint: d.endpoint.clone(),
            allow_http: d.allow_http.unwrap_or(false),
            access_key_id,
            secret_access_key,
            key,
            key_id: d.key_id.clone().unwrap_or_else(|| "k1".to_owned()),
            old_keys,
            immutable: d.immutable.unwrap_or(false),
            concurrency: d.concurrency.unwrap_or(4),
        });
    }
    let dest_names: BTreeSet<&str> = raw.destinations.iter().map(|d| d.name.as_str()).collect();

    // Tiers.
    c.unique(raw.tiers.iter().enumerate().map(|(i, t)| (format!("tiers[{i}].name"), t.name.as_str())), "tier");
    let mut tiers = Vec::new();
    for (i, t) in raw.tiers.iter().enumerate() {
        let k = |f: &str| format!("tiers[{i}].{f}");
        c.name(k("name"), &t.name, "tier");
        let rpo = c.duration(k("rpo"), Some(&t.rpo), Duration::ZERO);
        let rto = c.duration(k("rto"), Some(&t.rto), Duration::ZERO);
        let backup = t.backup.as_ref().map(|b| {
            let fields = b.schedule.split_whitespace().count();
            if !(5..=6).contains(&fields) {
                c.bad(
                    k("backup.schedule"),
                    format!("expected a cron expression of 5 or 6 fields like \"0 */6 * * *\", got {:?}", b.schedule),
                );
            }
            for (key, name) in std::iter::once((k("backup.destination"), &b.destination))
                .chain(b.copies.iter().enumerate().map(|(j, n)| (format!("tiers[{i}].backup.copies[{j}]"), n)))
            {
                if !dest_names.contains(name.as_str()) {
                    c.bad(key, format!("destination {name:?} is not declared under [[destinations]]"));
                }
            }
            if let Some(level) = b.compression_level
                && !(1..=19).contains(&level)
            {
                c.bad(k("backup.compression_level"), format!("expected a zstd level from 1 to 19, got {level}"));
            }
            TierBackup {
                schedule: b.schedule.clone(),
                retain_count: b.retain_count,
                retain_age: b
                    .retain_age
                    .as_deref()
                    .map(|a| c.duration(k("backup.retain_age"), Some(a), Duration::ZERO)),
                destination: b.destination.clone(),
                copies: b.copies.clone(),
                compression_level: b.compression_level.unwrap_or(3),
            }
        });
        tiers.push(Tier { name: TierName::new(&t.name), rpo, rto, backup });
    }
    let tier_names: BTreeSet<&str> = raw.tiers.iter().map(|t| t.name.as_str()).collect();

    // Clusters and nodes.
    c.unique(
        raw.clusters.iter().enumerate().map(|(i, cl)| (format!("clusters[{i}].name"), cl.name.as_str())),
        "cluster",
    );
    c.unique(
        raw.clusters.iter().enumerate().flat_map(|(i, cl)| {
            cl.nodes.iter().enumerate().map(move |(j, n)| (format!("clusters[{i}].nodes[{j}].name"), n.name.as_str()))
        }),
        "node",
    );
    let mut clusters = Vec::new();
    let mut agent_addrs: BTreeMap<String, String> = BTreeMap::new();
    let mut pg_addrs: BTreeMap<(String, u16), String> = BTreeMap::new();
    for (i, cl) in raw.clusters.iter().enumerate() {
        let k = |f: &str| format!("clusters[{i}].{f}");
        c.name(k("name"), &cl.name, "cluster");
        if !tier_names.contains(cl.tier.as_str()) {
            c.bad(k("tier"), format!("tier {:?} is not declared under [[tiers]]", cl.tier));
        }
        if cl.nodes.is_empty() {
            c.bad(k("nodes"), format!("cluster {:?} has no node: expected at least one [[clusters.nodes]]", cl.name));
        }
        let replication = match (cl.replication.as_deref(), cl.sync_quorum) {
            (None | Some("async"), None) => ReplicationMode::Async,
            (None | Some("async"), Some(_)) => {
                c.bad(k("sync_quorum"), "only allowed with replication = \"sync\"");
                ReplicationMode::Async
            }
            (Some("sync"), q) => {
                let quorum = q.unwrap_or(1);
                let replicas = cl.nodes.len().saturating_sub(1) as u32;
                if quorum == 0 || quorum > replicas.max(1) {
                    c.bad(
                        k("sync_quorum"),
                        format!("expected a quorum from 1 to the number of replicas ({replicas}), got {quorum}"),
                    );
                }
                ReplicationMode::Sync { quorum }
            }
            (Some(other), _) => {
                c.bad(k("replication"), format!("expected \"async\" or \"sync\", got {other:?}"));
                ReplicationMode::Async
            }
        };
        let on_crash = match cl.on_crash.as_deref() {
            None | Some("restart-first") => OnCrash::RestartFirst,
            Some("failover") => OnCrash::Failover,
            Some(other) => {
                c.bad(k("on_crash"), format!("expected \"restart-first\" or \"failover\", got {other:?}"));
                OnCrash::RestartFirst
            }
        };
        let mut region_preference = Vec::new();
        for (j, r) in cl.region_preference.iter().enumerate() {
            if !region_ok(r) {
                c.bad(
                    format!("clusters[{i}].region_preference[{j}]"),
                    format!("region {r:?} is not declared under [[regions]]"),
                );
            }
            region_preference.push(RegionName::new(r));
        }
        let password = c.secret(k("password"), &cl.password);
        let mut nodes = Vec::new();
        for (j, n) in cl.nodes.iter().enumerate() {
            let k = |f: &str| format!("clusters[{i}].nodes[{j}].{f}");
            c.name(k("name"), &n.name, "node");
            if !region_ok(&n.region) {
                c.bad(k("region"), format!("region {:?} is not declared under [[regions]]", n.region));
            }
            if n.agent.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                c.bad(k("agent"), format!("expected the agent's address as host:port, got {:?}", n.agent));
            } else if let Some(first) = agent_addrs.insert(n.agent.clone(), k("agent")) {
                c.bad(k("agent"), format!("address {} is already used by `{first}`", n.agent));
            }
            if let Err(e) = pgdr_model::check_host(&n.host) {
                c.bad(k("host"), e);
            }
            for key in n.settings.keys() {
                if !pgdr_model::is_setting_name(key) {
                    c.bad(k("settings"), format!("{key:?} is not a PostgreSQL parameter name"));
                }
            }
            if n.port == 0 {
                c.bad(k("port"), "expected a port from 1 to 65535");
            } else if let Some(first) = pg_addrs.insert((n.host.clone(), n.port), k("port")) {
                c.bad(k("port"), format!("{}:{} is already used by `{first}`", n.host, n.port));
            }
            nodes.push(Node {
                name: NodeName::new(&n.name),
                region: RegionName::new(&n.region),
                agent: n.agent.clone(),
                host: n.host.clone(),
                port: n.port,
                data_dir: n.data_dir.as_deref().map(|d| c.path(d)),
                bin_dir: n.bin_dir.as_deref().map(|d| c.path(d)),
                os_user: n.os_user.clone(),
                settings: n.settings.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
            });
        }
        let database = cl.database.clone().unwrap_or_else(|| "postgres".to_owned());
        let secrets = cl.secrets.as_ref().map(|s| cluster_secrets(c, i, s, &database, &region_ok));
        if let Some(s) = &secrets {
            let node_regions: BTreeSet<&str> = nodes.iter().map(|n: &Node| n.region.as_str()).collect();
            for r in node_regions.into_iter().filter(|r| s.store(r).is_none()) {
                c.bad(
                    k("secrets.stores"),
                    format!("region {r:?} has nodes of this cluster but no secret store: expected a [[clusters.secrets.stores]] with region = {r:?}"),
                );
            }
        }
        let dns = cl.dns.as_ref().and_then(|d| cluster_dns(c, i, d, &nodes, &region_ok));
        let user = cl.user.clone().unwrap_or_else(|| "postgres".to_owned());
        clusters.push(Cluster {
            name: ClusterName::new(&cl.name),
            tier: TierName::new(&cl.tier),
            replication,
            database,
            replication_user: cl.replication_user.clone().unwrap_or_else(|| user.clone()),
            user,
            password,
            tags: cl.tags.clone(),
            region_preference,
            on_crash,
            availability_over_rpo: cl.availability_over_rpo.unwrap_or(false),
            fence_hook: cl.fence_hook.clone(),
            nodes,
            secrets,
            dns,
        });
    }
    let cluster_names: BTreeSet<&str> = raw.clusters.iter().map(|cl| cl.name.as_str()).collect();

    // Proxies.
    let mut proxies = Vec::new();
    let mut listen_addrs: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for (i, p) in raw.proxies.iter().enumerate() {
        let k = |f: &str| format!("proxies[{i}].{f}");
        if !cluster_names.contains(p.cluster.as_str()) {
            c.bad(k("cluster"), format!("cluster {:?} is not declared under [[clusters]]", p.cluster));
        }
        if !region_ok(&p.region) {
            c.bad(k("region"), format!("region {:?} is not declared under [[regions]]", p.region));
        }
        let mut listen = |c: &mut Checker, key: String, v: &str| {
            let a = c.addr(key.clone(), v)?;
            if let Some(first) = listen_addrs.insert(a, key.clone())
                && a.port() != 0
            {
                c.bad(key, format!("address {a} is already used by `{first}`"));
            }
            Some(a)
        };
        let writer = listen(c, k("writer"), &p.writer);
        let reader = p.reader.as_deref().and_then(|r| listen(c, k("reader"), r));
        let api = p.api.as_deref().and_then(|r| listen(c, k("api"), r));
        let auth = match (p.auth.as_deref(), &p.users_file) {
            (None | Some("passthrough"), None) => ProxyAuth::Passthrough,
            (Some("users") | None, Some(f)) => ProxyAuth::Users { file: c.path(f) },
            (Some("users"), None) => {
                c.bad(k("users_file"), "auth = \"users\" needs a users_file with SCRAM verifiers");
                ProxyAuth::Passthrough
            }
            (Some("passthrough"), Some(_)) => {
                c.bad(k("users_file"), "only used with auth = \"users\"");
                ProxyAuth::Passthrough
            }
            (Some(other), _) => {
                c.bad(k("auth"), format!("expected \"passthrough\" or \"users\", got {other:?}"));
                ProxyAuth::Passthrough
            }
        };
        let tls = match (&p.tls_cert, &p.tls_key) {
            (Some(cert), Some(key)) => Some((c.path(cert), c.path(key))),
            (None, None) => None,
            _ => {
                c.bad(k("tls_cert"), "tls_cert and tls_key go together");
                None
            }
        };
        let require_tls = p.require_tls.unwrap_or(false);
        if require_tls && p.tls_cert.is_none() {
            c.bad(k("require_tls"), "require_tls needs tls_cert and tls_key: the proxy has no certificate to offer");
        }
        let pool = match p.pool.as_deref() {
            None | Some("transaction") => PoolMode::Transaction,
            Some("session") => PoolMode::Session,
            Some(other) => {
                c.bad(k("pool"), format!("expected \"transaction\" or \"session\", got {other:?}"));
                PoolMode::Transaction
            }
        };
        let pool_size = p.pool_size.unwrap_or(20);
        if pool_size == 0 {
            c.bad(k("pool_size"), "expected at least 1");
        }
        let pool_min_idle = p.pool_min_idle.unwrap_or(0);
        if pool_min_idle > pool_size {
            c.bad(k("pool_min_idle"), format!("expected at most pool_size ({pool_size}), got {pool_min_idle}"));
        }
        let api_token = c.secret(k("api_token"), &p.api_token);
        if let Some(a) = api
            && !a.ip().is_loopback()
            && api_token.is_none()
        {
            c.bad(
                k("api"),
                format!("the admin API listens on {a}, not a loopback address, without a token: set api_token"),
            );
        }
        let defaults = Timing::default();
        if p.max_clients == Some(0) {
            c.bad(k("max_clients"), "expected at least 1 (the most client connections the proxy holds at once)");
        }
        let proxy = Proxy {
            name: p.name.clone().unwrap_or_else(|| format!("{}-{}", p.cluster, p.region)),
            cluster: ClusterName::new(&p.cluster),
            region: RegionName::new(&p.region),
            writer: writer.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            reader,
            api,
            max_pause: c.duration(k("max_pause"), p.max_pause.as_deref(), Duration::from_secs(30)),
            max_queue: p.max_queue.unwrap_or(10_000),
            max_clients: p.max_clients.unwrap_or(10_000).max(1),
            drain_timeout: c.duration(k("drain_timeout"), p.drain_timeout.as_deref(), defaults.drain_timeout),
            reader_fallback: p.reader_fallback.unwrap_or(true),
            connect_timeout: c.duration(k("connect_timeout"), p.connect_timeout.as_deref(), Duration::from_secs(2)),
            tcp_user_timeout: c.duration(k("tcp_user_timeout"), p.tcp_user_timeout.as_deref(), Duration::from_secs(2)),
            auth,
            tls,
            require_tls,
            pool,
            pool_size: pool_size.max(1),
            pool_min_idle: pool_min_idle.min(pool_size),
            pool_timeout: c.duration(k("pool_timeout"), p.pool_timeout.as_deref(), Duration::from_secs(10)),
            api_token,
        };
        proxies.push(proxy);
    }

    // Controller, agents, timing.
    let rc = &raw.controller;
    let listen = rc
        .listen
        .as_deref()
        .map(|l| c.addr("controller.listen".into(), l))
        .unwrap_or_else(|| Some(SocketAddr::from(([127, 0, 0, 1], 7400))))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7400)));
    if let Some(r) = &rc.region
        && !region_ok(r)
    {
        c.bad("controller.region", format!("region {r:?} is not declared under [[regions]]"));
    }
    let store = match rc.store.as_deref() {
        None | Some("embedded") => {
            let etcd_keys = [
                ("etcd_endpoints", !rc.etcd_endpoints.is_empty()),
                ("etcd_prefix", rc.etcd_prefix.is_some()),
                ("etcd_user", rc.etcd_user.is_some()),
                ("etcd_password", rc.etcd_password.is_some()),
                ("etcd_ca", rc.etcd_ca.is_some()),
                ("etcd_cert", rc.etcd_cert.is_some()),
                ("etcd_key", rc.etcd_key.is_some()),
                ("etcd_timeout", rc.etcd_timeout.is_some()),
            ];
            for (key, set) in etcd_keys {
                if set {
                    c.bad(format!("controller.{key}"), "only used with store = \"etcd\"");
                }
            }
            StoreKind::Embedded
        }
        Some("etcd") => StoreKind::Etcd(etcd(c, rc)),
        Some(other) => {
            c.bad("controller.store", format!("expected \"embedded\" or \"etcd\", got {other:?}"));
            StoreKind::Embedded
        }
    };
    let mut tokens = Vec::new();
    if let Some(secret) = c.secret("controller.token".into(), &rc.token) {
        tokens.push(ApiToken {
            name: "operator".into(),
            role: Access::Operator,
            secret,
            key: "controller.token".into(),
        });
    }
    c.unique(
        tokens.iter().map(|t| (t.key.clone(), t.name.as_str())).chain(
            rc.tokens.iter().enumerate().map(|(i, t)| (format!("controller.tokens[{i}].name"), t.name.as_str())),
        ),
        "token",
    );
    for (i, t) in rc.tokens.iter().enumerate() {
        let k = |f: &str| format!("controller.tokens[{i}].{f}");
        c.name(k("name"), &t.name, "token");
        let role = Access::parse(&t.role);
        if role.is_none() {
            c.bad(k("role"), format!("expected \"viewer\", \"operator\" or \"agent\", got {:?}", t.role));
        }
        let secret = c.secret(k("token"), &Some(t.token.clone()));
        if let (Some(role), Some(secret)) = (role, secret) {
            tokens.push(ApiToken { name: t.name.clone(), role, secret, key: k("token") });
        }
    }
    let mut instances = Vec::new();
    for (i, inst) in rc.instances.iter().enumerate() {
        let k = |f: &str| format!("controller.instances[{i}].{f}");
        c.name(k("name"), &inst.name, "controller");
        if !region_ok(&inst.region) {
            c.bad(k("region"), format!("region {:?} is not declared under [[regions]]", inst.region));
        }
        let Some(addr) = c.addr(k("listen"), &inst.listen) else { continue };
        if !addr.ip().is_loopback() && tokens.is_empty() {
            c.bad(
                k("listen"),
                format!(
                    "the controller listens on {addr}, not a loopback address, without a token: \
                     add [[controller.tokens]] (name, role, token)"
                ),
            );
        }
        instances.push(ControllerInstance {
            name: inst.name.clone(),
            region: RegionName::from(inst.region.as_str()),
            listen: addr,
        });
    }
    c.unique(
        rc.instances.iter().enumerate().map(|(i, t)| (format!("controller.instances[{i}].name"), t.name.as_str())),
        "controller",
    );
    let listens: Vec<(String, String)> = rc
        .instances
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("controller.instances[{i}].listen"), t.listen.clone()))
        .collect();
    for (i, (key, l)) in listens.iter().enumerate() {
        if let Some((first, _)) = listens[..i].iter().find(|(_, o)| o == l) {
            c.bad(
                key.clone(),
                format!("controller address {l:?} given twice (first at `{first}`): every controller needs its own"),
            );
        }
    }
    if !rc.instances.is_empty() {
        for (key, set) in [("listen", rc.listen.is_some()), ("region", rc.region.is_some())] {
            if set {
                c.bad(
                    format!("controller.{key}"),
                    "each [[controller.instances]] has its own listen and region: remove this key",
                );
            }
        }
    }
    if rc.instances.len() > 1 && !matches!(store, StoreKind::Etcd(_)) {
        c.bad(
            "controller.instances",
            "several controllers need a shared store: set controller.store = \"etcd\" (the embedded store is one controller's)",
        );
    }
    let (listen, region) = match instances.first() {
        Some(first) => (first.listen, Some(first.region.clone())),
        None => (listen, rc.region.as_deref().map(RegionName::from)),
    };
    if instances.is_empty() && !listen.ip().is_loopback() && tokens.is_empty() {
        c.bad(
            "controller.listen",
            format!(
                "the controller listens on {listen}, not a loopback address, without a token: \
                 add [[controller.tokens]] (name, role, token)"
            ),
        );
    }
    let controller = Controller {
        listen,
        region,
        instances,
        state_dir: rc.state_dir.as_deref().map(|d| c.path(d)).unwrap_or_else(|| c.path("pgdr-state")),
        store,
        tokens,
        readiness_interval: c.duration(
            "controller.readiness_interval".into(),
            rc.readiness_interval.as_deref(),
            Duration::from_secs(30 * 60),
        ),
        max_concurrent_backups: match rc.max_concurrent_backups {
            Some(0) => {
                c.bad("controller.max_concurrent_backups", "expected at least 1");
                1
            }
            Some(n) => n,
            None => DEFAULT_MAX_CONCURRENT_BACKUPS,
        },
        worker_threads: match rc.worker_threads {
            Some(n) if !(1..=256).contains(&n) => {
                c.bad("controller.worker_threads", "expected 1 to 256");
                DEFAULT_WORKER_THREADS
            }
            Some(n) => n,
            None => DEFAULT_WORKER_THREADS,
        },
    };
    let agents = Agents { token: c.secret("agents.token".into(), &raw.agents.token) };
    if agents.token.is_none() {
        let exposed = raw.clusters.iter().enumerate().find_map(|(i, cl)| {
            cl.nodes.iter().enumerate().find_map(|(j, n)| (!is_loopback(&n.agent)).then(|| (i, j, n.agent.clone())))
        });
        if let Some((i, j, addr)) = exposed {
            c.bad(
                format!("clusters[{i}].nodes[{j}].agent"),
                format!("the agent listens on {addr}, not a loopback address, without a token: set agents.token"),
            );
        }
    }

    let d = Timing::default();
    let rt = &raw.timing;
    let timing = Timing {
        probe_interval: c.duration("timing.probe_interval".into(), rt.probe_interval.as_deref(), d.probe_interval),
        probe_timeout: c.duration("timing.probe_timeout".into(), rt.probe_timeout.as_deref(), d.probe_timeout),
        proxy_probe_interval: c.duration(
            "timing.proxy_probe_interval".into(),
            rt.proxy_probe_interval.as_deref(),
            d.proxy_probe_interval,
        ),
        failure_threshold: rt.failure_threshold.unwrap_or(d.failure_threshold),
        probe_quorum: rt.probe_quorum.unwrap_or(d.probe_quorum),
        lease_ttl: c.duration("timing.lease_ttl".into(), rt.lease_ttl.as_deref(), d.lease_ttl),
        lease_renew: c.duration("timing.lease_renew".into(), rt.lease_renew.as_deref(), d.lease_renew),
        lease_margin: c.duration("timing.lease_margin".into(), rt.lease_margin.as_deref(), d.lease_margin),
        restart_deadline: c.duration(
            "timing.restart_deadline".into(),
            rt.restart_deadline.as_deref(),
            d.restart_deadline,
        ),
        promote_timeout: c.duration("timing.promote_timeout".into(), rt.promote_timeout.as_deref(), d.promote_timeout),
        drain_timeout: c.duration("timing.drain_timeout".into(), rt.drain_timeout.as_deref(), d.drain_timeout),
    };
    for (key, msg) in timing.check() {
        c.bad(key, msg);
    }

    let notify = raw
        .notify
        .iter()
        .enumerate()
        .map(|(i, n)| Notify { webhook: n.webhook.clone(), token: c.secret(format!("notify[{i}].token"), &n.token) })
        .collect();

    let sandbox = raw.sandbox.as_ref().map(|s| SandboxInfo {
        dir: c.path(&s.dir),
        wan_delay: s.wan_delay.as_deref().map(|w| c.duration("sandbox.wan_delay".into(), Some(w), Duration::ZERO)),
    });

    let tls = tls(c, &raw.tls);

    Config {
        file: path.to_owned(),
        base_dir: c.base_dir.clone(),
        controller,
        agents,
        timing,
        regions,
        tiers,
        clusters,
        proxies,
        destinations,
        notify,
        sandbox,
        tls,
    }
}

/// `[tls]`: `mode` is `"off"` (the default) or `"verify-full"`, which needs
/// `ca`. Files that exist here are checked for PEM content; a part's own
/// certificate may live only on its host, so a missing one is reported when
/// that part starts.
/// `controller.store = "etcd"`: endpoints, prefix, credentials, TLS.
fn etcd(c: &mut Checker, rc: &RawController) -> EtcdConfig {
    if rc.etcd_endpoints.is_empty() {
        c.bad(
            "controller.etcd_endpoints",
            "store = \"etcd\" needs at least one endpoint, like \"https://10.0.0.1:2379\"",
        );
    }
    for (i, e) in rc.etcd_endpoints.iter().enumerate() {
        let key = format!("controller.etcd_endpoints[{i}]");
        let (scheme, rest) = match e.split_once("://") {
            Some((s, r)) => (Some(s), r),
            None => (None, e.as_str()),
        };
        let port_ok =
            rest.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if rest.contains('@') {
            // Credentials in a URL would reach logs and status output.
            c.bad(
                key,
                "an endpoint must not carry credentials (user@): set controller.etcd_user and controller.etcd_password",
            );
        } else if !matches!(scheme, None | Some("http") | Some("https")) || !port_ok || rest.contains('/') {
            c.bad(key, format!("expected \"http://host:port\", \"https://host:port\" or \"host:port\", got {e:?}"));
        } else if scheme == Some("https") && rc.etcd_ca.is_none() {
            c.bad(
                key,
                format!(
                    "{e:?} uses https: set controller.etcd_ca, the PEM file of the CA that signed etcd's certificates"
                ),
            );
        } else if scheme == Some("http") && rc.etcd_ca.is_some() {
            c.bad(key, format!("{e:?} uses http but controller.etcd_ca turns TLS on: use https://"));
        }
    }
    let prefix = rc.etcd_prefix.clone().unwrap_or_default();
    if !prefix.is_empty()
        && (!prefix.starts_with('/')
            || prefix.ends_with('/')
            || !prefix[1..].split('/').all(|part| check_name(part).is_ok()))
    {
        c.bad(
            "controller.etcd_prefix",
            format!("expected a key prefix like \"/pgdr-prod\" (starts with /, no trailing /, names of letters, digits, - and _), got {prefix:?}"),
        );
    }
    let password = c.secret("controller.etcd_password".into(), &rc.etcd_password);
    match (&rc.etcd_user, rc.etcd_password.is_some()) {
        (Some(u), _) if u.trim().is_empty() => {
            c.bad("controller.etcd_user", "expected an etcd user name, got an empty one")
        }
        (Some(_), false) => c.bad(
            "controller.etcd_password",
            "controller.etcd_user is set: expected its password too (`{ file = \"...\" }` or `{ env = \"...\" }`)",
        ),
        (None, true) => {
            c.bad("controller.etcd_user", "controller.etcd_password is set: expected the etcd user name too")
        }
        _ => {}
    }
    let read_pem =
        |c: &mut Checker, key: &str, path: &PathBuf, marker: &str, what: &str| match std::fs::read_to_string(path) {
            Ok(text) if text.contains(marker) => {}
            Ok(_) => c.bad(key, format!("{}: expected {what}", path.display())),
            Err(e) => c.bad(key, format!("cannot read {}: {e}", path.display())),
        };
    let ca = rc.etcd_ca.as_deref().map(|p| c.path(p));
    if let Some(ca) = &ca {
        read_pem(c, "controller.etcd_ca", ca, "-----BEGIN CERTIFICATE-----", "a PEM certificate");
    }
    let identity = match (&rc.etcd_cert, &rc.etcd_key) {
        (Some(cert), Some(key)) => {
            let id = TlsIdentity { cert: c.path(cert), key: c.path(key) };
            read_pem(c, "controller.etcd_cert", &id.cert, "-----BEGIN CERTIFICATE-----", "a PEM certificate");
            read_pem(c, "controller.etcd_key", &id.key, "PRIVATE KEY-----", "a PEM private key");
            if ca.is_none() {
                c.bad("controller.etcd_cert", "a client certificate needs TLS: set controller.etcd_ca too");
            }
            Some(id)
        }
        (Some(_), None) => {
            c.bad("controller.etcd_key", "controller.etcd_cert is set: expected its private key (PEM file) too");
            None
        }
        (None, Some(_)) => {
            c.bad("controller.etcd_cert", "controller.etcd_key is set: expected the client certificate (PEM file) too");
            None
        }
        (None, None) => None,
    };
    let timeout = c.duration("controller.etcd_timeout".into(), rc.etcd_timeout.as_deref(), Duration::from_secs(2));
    if timeout < Duration::from_millis(100) {
        c.bad("controller.etcd_timeout", format!("expected at least 100ms, got {timeout:?}"));
    }
    EtcdConfig {
        endpoints: rc.etcd_endpoints.clone(),
        prefix,
        user: rc.etcd_user.clone(),
        password,
        ca,
        identity,
        timeout,
    }
}

fn tls(c: &mut Checker, raw: &RawTls) -> Option<Tls> {
    let on = match raw.mode.as_deref() {
        None | Some("off") => false,
        Some("verify-full") => true,
        Some(other) => {
            c.bad("tls.mode", format!("expected \"off\" or \"verify-full\", got {other:?}"));
            return None;
        }
    };
    if !on {
        return None;
    }
    let Some(ca) = raw.ca.as_deref() else {
        c.bad("tls.ca", "mode = \"verify-full\" needs `ca`, the PEM file of the cluster's CA");
        return None;
    };
    let ca = c.path(ca);
    match std::fs::read_to_string(&ca) {
        Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => {}
        Ok(_) => c.bad("tls.ca", format!("{}: expected a PEM certificate", ca.display())),
        Err(e) => c.bad("tls.ca", format!("cannot read {}: {e}", ca.display())),
    }
    let identity = |c: &mut Checker, part: &str, raw: &Option<RawIdentity>| {
        let raw = raw.as_ref()?;
        let id = TlsIdentity { cert: c.path(&raw.cert), key: c.path(&raw.key) };
        for (field, path, marker) in
            [("cert", &id.cert, "-----BEGIN CERTIFICATE-----"), ("key", &id.key, "PRIVATE KEY-----")]
        {
            if let Ok(text) = std::fs::read_to_string(path)
                && !text.contains(marker)
            {
                let what = if field == "cert" { "a PEM certificate" } else { "a PEM private key" };
                c.bad(format!("tls.{part}.{field}"), format!("{}: expected {what}", path.display()));
            }
        }
        Some(id)
    };
    let tls = Tls {
        ca,
        client_certs: raw.client_certs.unwrap_or(false),
        controller: identity(c, "controller", &raw.controller),
        agent: identity(c, "agent", &raw.agent),
        proxy: identity(c, "proxy", &raw.proxy),
        client: identity(c, "client", &raw.client),
    };
    for (part, id) in [("controller", &tls.controller), ("agent", &tls.agent)] {
        if id.is_none() {
            c.bad(format!("tls.{part}"), format!("mode = \"verify-full\" needs [tls.{part}] with `cert` and `key`"));
        }
    }
    Some(tls)
}

/// PostgreSQL role names pgdr creates and alters: plain identifiers, so they
/// never need quoting in `ALTER ROLE` (lowercase letters, digits, `_`).
fn is_role_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|ch: char| ch.is_ascii_lowercase() || ch == '_')
        && s.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
}

/// A DNS name as RFC 1035 has it (letters, digits, `-` and `_` for service
/// labels; labels of 1-63; at most 253), without its trailing dot.
fn dns_name(s: &str) -> Option<String> {
    let s = s.strip_suffix('.').unwrap_or(s);
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        });
    ok.then(|| s.to_ascii_lowercase())
}

/// `[clusters.dns]`.
fn cluster_dns(
    c: &mut Checker,
    i: usize,
    raw: &RawDns,
    nodes: &[Node],
    region_ok: &dyn Fn(&str) -> bool,
) -> Option<ClusterDns> {
    let key = format!("clusters[{i}].dns");
    let k = |f: &str| format!("clusters[{i}].dns.{f}");
    let server = match (raw.server.parse::<SocketAddr>(), raw.server.parse::<std::net::IpAddr>()) {
        (Ok(a), _) => Some(a),
        (_, Ok(ip)) => Some(SocketAddr::new(ip, 53)),
        _ => {
            c.bad(
                k("server"),
                format!("expected the zone's primary server as an IP address with an optional port, like \"10.0.0.53\" or \"10.0.0.53:53\", got {:?}", raw.server),
            );
            None
        }
    };
    let zone = dns_name(&raw.zone);
    if zone.is_none() {
        c.bad(k("zone"), format!("expected a DNS zone like \"db.example.com\", got {:?}", raw.zone));
    }
    let name = dns_name(&raw.name);
    match (&name, &zone) {
        (None, _) => {
            c.bad(k("name"), format!("expected a DNS name like \"main-writer.db.example.com\", got {:?}", raw.name))
        }
        (Some(n), Some(z)) if !n.ends_with(&format!(".{z}")) => c.bad(
            k("name"),
            format!("{n:?} is not inside the zone {z:?}: expected a name ending in \".{z}\" (not the zone's apex)"),
        ),
        _ => {}
    }
    let ttl = c.duration(k("ttl"), raw.ttl.as_deref(), Duration::from_secs(30));
    if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(86_400) || ttl.subsec_nanos() != 0 {
        c.bad(k("ttl"), format!("expected whole seconds from 1s to 1d (a short TTL, like \"30s\", so clients follow a role change soon), got {}", pgdr_model::format_duration(ttl)));
    }
    let timeout = c.duration(k("timeout"), raw.timeout.as_deref(), Duration::from_secs(5));
    if timeout < Duration::from_millis(100) {
        c.bad(k("timeout"), format!("expected at least 100ms, got {}", pgdr_model::format_duration(timeout)));
    }
    if dns_name(&raw.tsig_key).is_none() {
        c.bad(
            k("tsig_key"),
            format!(
                "expected the TSIG key's name as the server knows it (a DNS name like \"pgdr-main\"), got {:?}",
                raw.tsig_key
            ),
        );
    }
    let algorithm = raw.tsig_algorithm.clone().unwrap_or_else(|| "hmac-sha256".to_owned()).to_ascii_lowercase();
    if !["hmac-sha256", "hmac-sha384", "hmac-sha512"].contains(&algorithm.as_str()) {
        c.bad(
            k("tsig_algorithm"),
            format!("expected \"hmac-sha256\", \"hmac-sha384\" or \"hmac-sha512\", got {algorithm:?}"),
        );
    }
    let secret = match &raw.tsig_secret {
        None => {
            c.bad(
                k("tsig_secret"),
                "expected the TSIG secret: `{ file = \"...\" }` (base64, or the key file tsig-keygen writes) or `{ env = \"...\" }`",
            );
            None
        }
        s => c.secret(k("tsig_secret"), s),
    };
    let mut endpoints = Vec::new();
    for (region, t) in &raw.endpoints {
        let kr = format!("clusters[{i}].dns.endpoints.{region}");
        if !region_ok(region) {
            c.bad(kr.clone(), format!("region {region:?} is not declared under [[regions]]"));
        }
        let target = match t {
            RawDnsTarget::One(s) => match s.parse::<std::net::IpAddr>() {
                Ok(ip) => Some(DnsTarget::Addresses(vec![ip])),
                Err(_) => dns_name(s).map(DnsTarget::Alias),
            },
            RawDnsTarget::Many(list) => {
                let ips: Vec<_> = list.iter().filter_map(|s| s.parse::<std::net::IpAddr>().ok()).collect();
                (!list.is_empty() && ips.len() == list.len()).then_some(DnsTarget::Addresses(ips))
            }
        };
        match target {
            Some(t) => endpoints.push((RegionName::new(region), t)),
            None => c.bad(
                kr,
                "expected the region's endpoint: an IP address, a list of IP addresses (A/AAAA records), or a host name (a CNAME)",
            ),
        }
    }
    let node_regions: BTreeSet<&str> = nodes.iter().map(|n| n.region.as_str()).collect();
    for r in node_regions.into_iter().filter(|r| !raw.endpoints.contains_key(*r)) {
        c.bad(
            k("endpoints"),
            format!("region {r:?} has nodes of this cluster but no endpoint: expected `{r} = \"<address or host name>\"` under [clusters.dns.endpoints]"),
        );
    }
    Some(ClusterDns {
        server: server?,
        zone: zone?,
        name: name?,
        ttl,
        tsig_key: raw.tsig_key.trim_end_matches('.').to_owned(),
        tsig_algorithm: algorithm,
        tsig_secret: secret?,
        timeout,
        endpoints,
        key,
    })
}

fn cluster_secrets(
    c: &mut Checker,
    i: usize,
    raw: &RawSecrets,
    database: &str,
    region_ok: &dyn Fn(&str) -> bool,
) -> ClusterSecrets {
    let k = |f: &str| format!("clusters[{i}].secrets.{f}");
    let schedule = match (&raw.schedule, &raw.every) {
        (Some(_), Some(_)) => {
            c.bad(k("every"), "expected either `schedule` (cron) or `every` (an interval), not both");
            None
        }
        (Some(s), None) => {
            let fields = s.split_whitespace().count();
            match s.parse::<croner::Cron>() {
                Ok(_) if (5..=6).contains(&fields) => Some(RotationSchedule::Cron(s.clone())),
                Ok(_) => {
                    c.bad(
                        k("schedule"),
                        format!("expected a cron expression of 5 or 6 fields like \"0 3 * * 0\", got {s:?}"),
                    );
                    None
                }
                Err(e) => {
                    c.bad(k("schedule"), format!("expected a cron expression like \"0 3 * * 0\", got {s:?}: {e}"));
                    None
                }
            }
        }
        (None, Some(e)) => {
            let d = c.duration(k("every"), Some(e), Duration::ZERO);
            if parse_duration(e).is_err() {
                None
            } else if d < Duration::from_secs(60) {
                c.bad(k("every"), format!("expected an interval of at least 1m like \"12h\" or \"7d\", got {e:?}"));
                None
            } else {
                Some(RotationSchedule::Every(d))
            }
        }
        (None, None) => None,
    };
    let spread =
        raw.spread.as_deref().map_or(Duration::from_secs(600), |s| c.duration(k("spread"), Some(s), Duration::ZERO));
    let max_age = raw.max_age.as_deref().map(|a| c.duration(k("max_age"), Some(a), Duration::ZERO));
    if raw.roles.is_empty() {
        c.bad(k("roles"), "expected at least one [[clusters.secrets.roles]] with a `name`");
    }
    let mut logins: BTreeMap<String, String> = BTreeMap::new();
    let mut roles = Vec::new();
    for (j, r) in raw.roles.iter().enumerate() {
        let k = |f: &str| format!("clusters[{i}].secrets.roles[{j}].{f}");
        let mut login = |c: &mut Checker, key: String, name: &str| {
            if !is_role_name(name) {
                c.bad(
                    key.clone(),
                    format!("role name {name:?} is not valid: expected lowercase letters, digits and `_`, at most 63"),
                );
            } else if let Some(first) = logins.insert(name.to_owned(), key.clone()) {
                c.bad(key, format!("login {name:?} is already managed at `{first}`"));
            }
        };
        login(c, k("name"), &r.name);
        let strategy = match r.strategy.as_deref() {
            None | Some("alternating") => {
                let alternate = r.alternate.clone().unwrap_or_else(|| format!("{}_b", r.name));
                login(c, k("alternate"), &alternate);
                RotationStrategy::Alternating { alternate }
            }
            Some("single") => {
                if r.alternate.is_some() {
                    c.bad(k("alternate"), "only used with strategy = \"alternating\"");
                }
                RotationStrategy::Single
            }
            Some(other) => {
                c.bad(k("strategy"), format!("expected \"alternating\" or \"single\", got {other:?}"));
                RotationStrategy::Single
            }
        };
        roles.push(ManagedRole {
            name: r.name.clone(),
            strategy,
            database: r.database.clone().unwrap_or_else(|| database.to_owned()),
        });
    }
    if raw.stores.is_empty() {
        c.bad(k("stores"), "expected a [[clusters.secrets.stores]] for each region of the cluster");
    }
    c.unique(
        raw.stores
            .iter()
            .enumerate()
            .map(|(j, s)| (format!("clusters[{i}].secrets.stores[{j}].region"), s.region.as_str())),
        "secret store region",
    );
    let mut stores = Vec::new();
    for (j, s) in raw.stores.iter().enumerate() {
        let key = format!("clusters[{i}].secrets.stores[{j}]");
        let k = |f: &str| format!("{key}.{f}");
        if !region_ok(&s.region) {
            c.bad(k("region"), format!("region {:?} is not declared under [[regions]]", s.region));
        }
        let unused = |c: &mut Checker, fields: &[(&str, bool)], kind: &str| {
            for (f, set) in fields {
                if *set {
                    c.bad(k(f), format!("not used by kind = {kind:?}"));
                }
            }
        };
        let kind = match s.kind.as_str() {
            "file" => {
                unused(
                    c,
                    &[
                        ("endpoint", s.endpoint.is_some()),
                        ("aws_region", s.aws_region.is_some()),
                        ("allow_http", s.allow_http.is_some()),
                        ("access_key_id", s.access_key_id.is_some()),
                        ("secret_access_key", s.secret_access_key.is_some()),
                        ("prefix", s.prefix.is_some()),
                    ],
                    "file",
                );
                let Some(dir) = &s.dir else {
                    c.bad(k("dir"), "kind = \"file\" needs `dir`, the folder of the JSON files");
                    continue;
                };
                SecretStoreKind::File { dir: c.path(dir), keep: s.keep.unwrap_or(5) }
            }
            "aws-secretsmanager" => {
                unused(c, &[("dir", s.dir.is_some()), ("keep", s.keep.is_some())], "aws-secretsmanager");
                let Some(aws_region) = s.aws_region.clone() else {
                    c.bad(k("aws_region"), "kind = \"aws-secretsmanager\" needs `aws_region`, like \"eu-west-1\"");
                    continue;
                };
                let endpoint = s
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| format!("https://secretsmanager.{aws_region}.amazonaws.com"))
                    .trim_end_matches('/')
                    .to_owned();
                if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                    c.bad(k("endpoint"), format!("expected an http(s):// URL, got {endpoint:?}"));
                } else if endpoint.starts_with("http://") && !s.allow_http.unwrap_or(false) {
                    c.bad(
                        k("endpoint"),
                        "plain HTTP carries the passwords in clear: set allow_http = true (tests only)",
                    );
                }
                let access_key_id = c.secret(k("access_key_id"), &s.access_key_id);
                let secret_access_key = c.secret(k("secret_access_key"), &s.secret_access_key);
                if access_key_id.is_some() != secret_access_key.is_some() {
                    c.bad(k("access_key_id"), "access_key_id and secret_access_key go together");
                }
                SecretStoreKind::AwsSecretsManager {
                    endpoint,
                    aws_region,
                    access_key_id,
                    secret_access_key,
                    prefix: s.prefix.clone().unwrap_or_else(|| "pgdr/".to_owned()),
                }
            }
            other => {
                c.bad(k("kind"), format!("expected \"file\" or \"aws-secretsmanager\", got {other:?}"));
                continue;
            }
        };
        stores.push(SecretStoreConfig { region: RegionName::new(&s.region), kind, key });
    }
    ClusterSecrets { schedule, spread, max_age, roles, stores }
}
