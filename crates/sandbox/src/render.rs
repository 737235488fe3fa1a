//! The sandbox's `pgdr.toml`, as text (comments included, so a person reading
//! it learns the format).

use std::fmt::Write;
use std::net::SocketAddr;

use crate::record::NodeRecord;

/// The controller's tokens `up` writes under `secrets/`: (file, role); each
/// is named after its role.
pub const CONTROLLER_TOKENS: [(&str, &str); 3] =
    [("operator.token", "operator"), ("viewer.token", "viewer"), ("lease.token", "agent")];

/// The proxies' admin API token under `secrets/`.
pub const PROXY_API_TOKEN: &str = "proxy-api.token";

/// How many base backups `up` runs at once (each holds two WAL senders).
pub const PARALLEL_BACKUPS: usize = 4;

/// The sandbox settings plus the backup engine's archive settings
/// (`archive_mode`, `archive_command` through `pgdr wal-push`), which every
/// node gets so that whichever node is primary archives its WAL.
/// With `small`, [`small_settings`] replace their defaults.
pub fn node_settings(replicas: usize, archive: &[(String, String)], small: bool) -> Vec<(String, String)> {
    let mut out = sandbox_settings(replicas);
    if small {
        for (k, v) in small_settings() {
            match out.iter_mut().find(|(have, _)| have == k) {
                Some(slot) => slot.1 = v.to_owned(),
                None => out.push((k.to_owned(), v.to_owned())),
            }
        }
    }
    for (k, v) in archive {
        if !out.iter().any(|(have, _)| have == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

/// PostgreSQL settings suited to a sandbox: fast (no fsync), replication on,
/// `wal_log_hints` for `pg_rewind`. Archive settings are the backup engine's.
/// `restart_after_crash = off`, as PostgreSQL advises under clusterware: a
/// crash reinitialisation rereads `standby.signal`, so under the boot guard
/// (`pgdr_node::guard`) a primary would come back read-only; the controller
/// restarts it in place instead (`on_crash`).
/// WAL senders and slots: 10, more when `replicas` streaming replicas plus
/// the base backups in flight need more.
pub fn sandbox_settings(replicas: usize) -> Vec<(String, String)> {
    let senders = (replicas + 2 * PARALLEL_BACKUPS + 2).max(10).to_string();
    let slots = (replicas + 2).max(10).to_string();
    [
        ("fsync", "off"),
        ("wal_level", "replica"),
        ("max_wal_senders", senders.as_str()),
        ("max_replication_slots", slots.as_str()),
        ("hot_standby", "on"),
        ("wal_log_hints", "on"),
        ("hot_standby_feedback", "on"),
        ("restart_after_crash", "off"),
        ("shared_buffers", "32MB"),
        ("wal_keep_size", "256MB"),
        ("max_connections", "100"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Settings of the servers of a sandbox of many clusters (`up --clusters
/// N`): a small footprint each (memory, WAL kept, connections, background
/// workers), so a hundred two-node clusters fit on a laptop. Enough for the
/// controller's probes, the agents, a proxy's pool and a base backup.
pub fn small_settings() -> [(&'static str, &'static str); 9] {
    [
        ("shared_buffers", "16MB"),
        ("max_connections", "25"),
        ("wal_keep_size", "32MB"),
        ("min_wal_size", "32MB"),
        ("max_wal_size", "64MB"),
        ("max_worker_processes", "2"),
        ("max_parallel_workers", "0"),
        ("autovacuum_max_workers", "1"),
        ("wal_buffers", "512kB"),
    ]
}

pub struct ProxyPorts {
    /// The cluster it serves (a proxy serves one).
    pub cluster: String,
    pub region: String,
    pub writer: SocketAddr,
    pub reader: SocketAddr,
    pub api: SocketAddr,
}

pub struct ConfigText<'a> {
    /// The clusters, each with the nodes of `nodes` that name it.
    pub clusters: &'a [String],
    pub regions: &'a [String],
    /// Every controller: (region, API address). One: `controller.listen`;
    /// several: one `[[controller.instances]]` each, named after its region.
    pub controllers: &'a [(String, SocketAddr)],
    pub nodes: &'a [NodeRecord],
    pub os_user: Option<&'a str>,
    pub proxies: &'a [ProxyPorts],
    pub on_crash: Option<&'a str>,
    pub wan_delay: Option<std::time::Duration>,
    /// The backup engine's archive settings of a cluster (see [`node_settings`]).
    pub archive: &'a dyn Fn(&str) -> Vec<(String, String)>,
    /// The sandbox's folder, when it made certificates (`tls/`, see
    /// [`crate::certs`]): TLS everywhere.
    pub tls_dir: Option<&'a std::path::Path>,
    /// The etcd members' client URLs, with `--store etcd`.
    pub etcd: Option<Vec<String>>,
}

fn q(s: &str) -> String {
    // TOML basic string.
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The folder (in the sandbox) of the per-region file secret stores.
pub const SECRET_STORES: &str = "secret-stores";

pub fn render(c: &ConfigText<'_>) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "# Written by `pgdr sandbox up`: a local sandbox of real PostgreSQL.");
    let _ = writeln!(t, "# Relative paths are relative to this file. Stop it with `pgdr sandbox down --dir .`.\n");
    let _ = writeln!(t, "[sandbox]\ndir = \".\"");
    if let Some(d) = c.wan_delay {
        let _ = writeln!(t, "# Relays add this delay each way on every cross-region path; they are listed");
        let _ = writeln!(t, "# in sandbox.json (wan.routes). `pgdr sandbox partition --dir . --region R` cuts R off.");
        let _ = writeln!(t, "wan_delay = {}", q(&format!("{}ms", d.as_millis())));
    }
    let _ = writeln!(t);
    let controller = c.controllers[0].1;
    if let [(region, listen)] = c.controllers {
        let _ = writeln!(
            t,
            "[controller]\nlisten = {}\nregion = {}\nstate_dir = \"state\"\n",
            q(&listen.to_string()),
            q(region)
        );
    } else {
        let _ = writeln!(t, "[controller]\nstate_dir = \"state\"\n");
    }
    if let Some(endpoints) = &c.etcd {
        let _ = writeln!(t, "# The state store: the sandbox's three etcd members (listed in sandbox.json),");
        let _ = writeln!(t, "# every key under etcd_prefix. `pgdr sandbox down` stops them.");
        let list = endpoints.iter().map(|e| q(e)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(t, "store = \"etcd\"\netcd_endpoints = [{list}]\netcd_prefix = \"/pgdr-sandbox\"");
        if c.tls_dir.is_some() {
            let _ = writeln!(
                t,
                "etcd_ca = \"tls/ca.crt\"\netcd_cert = \"tls/controller.crt\"\netcd_key = \"tls/controller.key\""
            );
        }
        let _ = writeln!(t);
    }
    let _ = writeln!(
        t,
        "# Who may call the controller's API. viewer: the read routes, the status page's data and /metrics\n\
         # (open the page as http://{}/#token=<the viewer token>); operator: role changes and approvals too;\n\
         # agent: only the lease renewal of a primary's agent. `pgdr` commands send the first token they can\n\
         # read of the role they need (PGDR_TOKEN overrides). An approval is recorded under the token's name.",
        controller
    );
    for (file, role) in CONTROLLER_TOKENS {
        let name = file.trim_end_matches(".token");
        let _ = writeln!(
            t,
            "[[controller.tokens]]\nname = {}\nrole = {}\ntoken = {{ file = {} }}\n",
            q(name),
            q(role),
            q(&format!("secrets/{file}"))
        );
    }
    if c.controllers.len() > 1 {
        let _ = writeln!(
            t,
            "# A controller per region, all on the etcd store: one leads, the others stand by. Run each with\n\
             # `pgdr run --config pgdr.toml --controller <name>`; it serves its region's proxies once it leads.\n\
             # Agents and pgdr commands try every address and follow the leader."
        );
        for (region, listen) in c.controllers {
            let _ = writeln!(
                t,
                "[[controller.instances]]\nname = {}\nregion = {}\nlisten = {}\n",
                q(region),
                q(region),
                q(&listen.to_string())
            );
        }
    }
    let _ = writeln!(
        t,
        "# Every agent route but /v1/health needs this token (the controller, pgdr and the peers send it)."
    );
    let _ = writeln!(t, "[agents]\ntoken = {{ file = \"secrets/agent.token\" }}\n");
    if c.tls_dir.is_some() {
        let _ = writeln!(t, "# TLS everywhere: HTTPS on every API, TLS to PostgreSQL and for replication, each");
        let _ =
            writeln!(t, "# client checking the server's certificate against the sandbox's CA and the name it dialled.");
        let _ = writeln!(t, "# Agents accept only clients showing a certificate of this CA (mTLS).");
        let _ = writeln!(t, "[tls]\nmode = \"verify-full\"\nca = \"tls/ca.crt\"\nclient_certs = true");
        for part in crate::certs::PARTS {
            let _ = writeln!(t, "{part} = {{ cert = \"tls/{part}.crt\", key = \"tls/{part}.key\" }}");
        }
        let _ = writeln!(t);
    }
    // Loopback links are fast and reliable: a sandbox detects and fences in
    // about two seconds. See docs/failover-math.md for the inequalities.
    // Across a WAN a probe's (re)connection takes several round trips
    // (startup, SCRAM, the canary write): give it ten one-way delays more.
    // A support round must fit in lease_renew / 4 even on a new TLS
    // connection (TCP, handshake, request: about four round trips, eight
    // one-way delays): a freshly started agent has one round to keep its
    // primary (docs/failover-math.md).
    let (interval_ms, timeout_ms, renew_ms, ttl_ms) = match c.wan_delay {
        Some(d) => {
            let timeout = 400 + 10 * d.as_millis();
            let renew = 500 + 32 * d.as_millis();
            (timeout + 200, timeout, renew, 3 * renew)
        }
        // Many clusters come up side by side on one machine: a primary's
        // agent, lapsed until the controller runs, keeps its server only
        // if a support round (lease_renew / 4) answers, which on a loaded
        // host a fresh TLS connection cannot do in 125 ms (seen at 30
        // clusters: 27 of 30 primaries fenced themselves during `up`).
        None if c.clusters.len() > 1 => (500, 400, 2000, 6000),
        // A controller per region: when a region is lost with the etcd
        // member that led etcd, the controller cannot renew the primary's
        // lease until etcd has elected another leader (up to two election
        // timeouts, 1.2 s here), and a primary whose region holds no
        // majority of agents has only its lease: ttl - 2 x renew must cover
        // the election.
        None if c.controllers.len() > 1 => (500, 400, 500, 3000),
        None => (500, 400, 500, 2000),
    };
    let _ = writeln!(
        t,
        "[timing]\nprobe_interval = \"{interval_ms}ms\"\nprobe_timeout = \"{timeout_ms}ms\"\nfailure_threshold = 3\nlease_renew = \"{renew_ms}ms\"\nlease_ttl = \"{ttl_ms}ms\"\nlease_margin = \"{renew_ms}ms\"\nrestart_deadline = \"5s\"\n"
    );
    for r in c.regions {
        let _ = writeln!(t, "[[regions]]\nname = {}\n", q(r));
    }
    let _ = writeln!(
        t,
        "[[destinations]]\nname = \"local\"\nurl = \"file://backups\"\nkey = {{ file = \"secrets/backup-local.key\" }}\n"
    );
    let _ = writeln!(
        t,
        "[[tiers]]\nname = \"gold\"\nrpo = \"5s\"\nrto = \"30s\"\n\n# Every node archives its WAL here through `pgdr wal-push` (archive_command below);\n# the controller (`pgdr run`) takes a base backup on this cron schedule (5 fields, or 6 with seconds first),\n# copies it to the destinations listed in `copies`, and prunes by retain_count / retain_age.\n[tiers.backup]\nschedule = \"0 */6 * * *\"\ndestination = \"local\"\nretain_count = 7\n"
    );
    let small = c.clusters.len() > 1;
    for cluster in c.clusters {
        let _ = writeln!(
            t,
            "[[clusters]]\nname = {}\ntier = \"gold\"\npassword = {{ file = \"secrets/postgres.password\" }}",
            q(cluster)
        );
        if let Some(o) = c.on_crash {
            let _ = writeln!(t, "on_crash = {}", q(o));
        }
        let _ = writeln!(t);
        let nodes: Vec<&NodeRecord> = c.nodes.iter().filter(|n| &n.cluster == cluster).collect();
        let archive = (c.archive)(cluster);
        for n in &nodes {
            let mut all = node_settings(nodes.len().saturating_sub(1), &archive, small);
            if let Some(dir) = c.tls_dir {
                all.extend(crate::certs::node_settings(dir, &n.name));
            }
            let settings: Vec<String> = all.iter().map(|(k, v)| format!("{k} = {}", q(v))).collect();
            let _ = writeln!(t, "[[clusters.nodes]]");
            let _ = writeln!(t, "name = {}", q(&n.name));
            let _ = writeln!(t, "region = {}", q(&n.region));
            let _ = writeln!(t, "agent = {}", q(&n.agent));
            let _ = writeln!(t, "host = {}", q(&n.host));
            let _ = writeln!(t, "port = {}", n.port);
            let _ = writeln!(t, "data_dir = {}", q(&format!("{}/data", n.name)));
            if let Some(u) = c.os_user {
                let _ = writeln!(t, "os_user = {}", q(u));
            }
            let _ = writeln!(t, "settings = {{ {} }}\n", settings.join(", "));
        }
        let _ = writeln!(
            t,
            "# Managed credentials: `pgdr secrets rotate --cluster {cluster}` changes the password of role app\n\
             # (alternating with app_b, created on the first rotation) on the primary only, waits for every\n\
             # standby to replay it, and writes it to each region's store below with that region's proxy\n\
             # writer endpoint as host/port. See docs/secrets.md.\n\
             [clusters.secrets]\nschedule = \"0 3 * * *\"\nmax_age = \"30d\"\n\n\
             [[clusters.secrets.roles]]\nname = \"app\"\nstrategy = \"alternating\"\n"
        );
        for r in c.regions {
            let _ = writeln!(
                t,
                "[[clusters.secrets.stores]]\nregion = {}\nkind = \"file\"\ndir = {}\n",
                q(r),
                q(&format!("{SECRET_STORES}/{r}"))
            );
        }
    }
    for p in c.proxies {
        let _ = writeln!(t, "[[proxies]]\ncluster = {}\nregion = {}", q(&p.cluster), q(&p.region));
        if c.tls_dir.is_some() {
            // Clients must start TLS with the proxy (sslmode=require and up,
            // verify-full against tls/ca.crt): one that does not is refused
            // before any password crosses the network.
            let _ = writeln!(t, "tls_cert = \"tls/proxy.crt\"\ntls_key = \"tls/proxy.key\"\nrequire_tls = true");
        }
        let _ = writeln!(
            t,
            "writer = {}\nreader = {}\napi = {}\napi_token = {{ file = {} }}\n",
            q(&p.writer.to_string()),
            q(&p.reader.to_string()),
            q(&p.api.to_string()),
            q(&format!("secrets/{PROXY_API_TOKEN}"))
        );
    }
    t
}
