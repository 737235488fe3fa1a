//! Adopting a running PostgreSQL that pgdr did not create: what the server
//! is ([`Facts`], read once over a connection), what a managed cluster
//! needs of it ([`Needs`]), and the gaps between the two, each with the
//! exact fix and what applying it takes ([`gaps`], pure).
//!
//! Nothing here changes the server; `pgdr adopt` shows the gaps and applies
//! only what the operator asked for ([`Gap::level`] says which fixes a
//! reload is enough for).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

/// One row of `pg_settings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    pub value: String,
    /// `postmaster` (restart), `sighup` (reload), `superuser`, ...
    pub context: String,
    /// Changed in the files, waiting for a restart.
    pub pending_restart: bool,
}

/// One row of `pg_hba_file_rules`, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HbaRule {
    pub line: i32,
    /// `local`, `host`, `hostssl`, `hostnossl`, ...
    pub kind: String,
    pub databases: Vec<String>,
    pub users: Vec<String>,
    pub address: Option<String>,
    pub netmask: Option<String>,
    pub auth: Option<String>,
    pub error: Option<String>,
}

/// A role as the check needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleFact {
    pub name: String,
    pub login: bool,
    pub replication: bool,
    pub superuser: bool,
}

/// What the server says of itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Facts {
    /// `server_version_num`, like 150010.
    pub version_num: u32,
    pub settings: BTreeMap<String, Setting>,
    pub data_checksums: bool,
    pub data_directory: String,
    pub hba_file: String,
    pub hba: Vec<HbaRule>,
    pub roles: Vec<RoleFact>,
    pub in_recovery: bool,
}

/// The settings [`Facts::read`] asks for.
pub const SETTINGS: [&str; 15] = [
    "wal_level",
    "max_wal_senders",
    "max_replication_slots",
    "wal_log_hints",
    "hot_standby",
    "restart_after_crash",
    "archive_mode",
    "archive_command",
    "ssl",
    "ssl_cert_file",
    "ssl_key_file",
    "listen_addresses",
    "port",
    "data_directory",
    "hba_file",
];

impl Facts {
    /// Reads the facts over `client` (a superuser's connection: the
    /// `pg_hba.conf` rules are readable only by one).
    pub async fn read(client: &tokio_postgres::Client) -> Result<Facts, tokio_postgres::Error> {
        let mut f = Facts::default();
        let names: Vec<String> = SETTINGS.iter().map(|s| (*s).to_owned()).collect();
        for r in client
            .query(
                "select name, setting, context, coalesce(pending_restart, false) from pg_settings where name = any($1)",
                &[&names],
            )
            .await?
        {
            f.settings.insert(r.get(0), Setting { value: r.get(1), context: r.get(2), pending_restart: r.get(3) });
        }
        let row = client
            .query_one(
                "select current_setting('server_version_num')::int, current_setting('data_checksums') = 'on', pg_is_in_recovery()",
                &[],
            )
            .await?;
        f.version_num = u32::try_from(row.get::<_, i32>(0)).unwrap_or(0);
        f.data_checksums = row.get(1);
        f.in_recovery = row.get(2);
        f.data_directory = f.settings.get("data_directory").map(|s| s.value.clone()).unwrap_or_default();
        f.hba_file = f.settings.get("hba_file").map(|s| s.value.clone()).unwrap_or_default();
        for r in client
            .query(
                "select line_number, type, coalesce(database, '{}'), coalesce(user_name, '{}'), address, netmask, auth_method, error \
                 from pg_hba_file_rules order by line_number",
                &[],
            )
            .await?
        {
            f.hba.push(HbaRule {
                line: r.get::<_, Option<i32>>(0).unwrap_or(0),
                kind: r.get::<_, Option<String>>(1).unwrap_or_default(),
                databases: r.get(2),
                users: r.get(3),
                address: r.get(4),
                netmask: r.get(5),
                auth: r.get(6),
                error: r.get(7),
            });
        }
        for r in client
            .query("select rolname::text, rolcanlogin, rolreplication, rolsuper from pg_roles order by 1", &[])
            .await?
        {
            f.roles.push(RoleFact { name: r.get(0), login: r.get(1), replication: r.get(2), superuser: r.get(3) });
        }
        Ok(f)
    }

    pub fn major(&self) -> u32 {
        self.version_num / 10000
    }

    pub fn setting(&self, name: &str) -> &str {
        self.settings.get(name).map(|s| s.value.as_str()).unwrap_or("")
    }

    fn int(&self, name: &str) -> i64 {
        self.setting(name).parse().unwrap_or(0)
    }

    fn pending(&self, name: &str) -> bool {
        self.settings.get(name).is_some_and(|s| s.pending_restart)
    }
}

/// What a managed cluster needs of the server.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// Hosts its replicas will stream from (their `pg_hba.conf` entries).
    pub peer_hosts: Vec<String>,
    /// The role replicas stream as.
    pub replication_user: String,
    /// Nodes the cluster is planned to have, this one included.
    pub nodes: usize,
    /// `[tls]` is on: the server must serve TLS with a certificate of the
    /// cluster's CA.
    pub tls: bool,
    /// Whether a connection verifying the server against the CA
    /// (`verify-full`) succeeded.
    pub tls_verified: bool,
    /// Certificate and key to serve TLS with, when the operator gave them.
    pub ssl_files: Option<(String, String)>,
    /// Major version of the binaries replicas are built with here.
    pub replica_major: Option<u32>,
}

/// What it takes to apply a fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    /// A reload (or an online SQL statement): no client notices.
    Reload,
    /// A restart of the server: every session is cut.
    Restart,
    /// Something pgdr cannot do for you (a certificate, a version).
    Manual,
    /// Not needed to adopt, needed for a later feature (backups).
    Advice,
}

impl Level {
    /// Whether the gap stops the adoption.
    pub fn blocks(self) -> bool {
        self != Level::Advice
    }
}

/// The fix, in a form pgdr can apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fix {
    /// `ALTER SYSTEM SET name = value`.
    Set { name: String, value: String },
    /// A line appended to `pg_hba.conf` (it must come before any line that
    /// matches first and rejects).
    Hba { file: String, line: String },
    /// An SQL statement run once (no reload needed).
    Sql { sql: String },
    /// Words for a person.
    Manual { what: String },
}

/// One thing the server lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub what: String,
    pub have: String,
    pub want: String,
    pub level: Level,
    pub fixes: Vec<Fix>,
}

impl Gap {
    /// The exact fix as a person types it.
    pub fn fix_text(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        for f in &self.fixes {
            out.push(match f {
                Fix::Set { name, value } => format!("ALTER SYSTEM SET {name} = {};", crate::local::quote(value)),
                Fix::Hba { file, line } => format!("add to {file}, before its other rules: {line}"),
                Fix::Sql { sql } => sql.clone(),
                Fix::Manual { what } => what.clone(),
            });
        }
        match self.level {
            Level::Reload if self.fixes.iter().any(|f| matches!(f, Fix::Set { .. } | Fix::Hba { .. })) => {
                out.push("SELECT pg_reload_conf();".into())
            }
            Level::Restart => out.push("then restart the server (pg_ctl restart -m fast)".into()),
            _ => {}
        }
        out.join("  ")
    }
}

/// WAL senders a cluster of `nodes` needs: one per replica, two per base
/// backup in flight, and a margin.
pub fn senders_needed(nodes: usize) -> i64 {
    (nodes as i64 + 4).max(10)
}

/// Replication slots: one per other node, and a margin.
pub fn slots_needed(nodes: usize) -> i64 {
    (nodes as i64 + 2).max(10)
}

fn set(name: &str, value: &str) -> Fix {
    Fix::Set { name: name.to_owned(), value: value.to_owned() }
}

/// `have`, and when the files already hold a change that waits for a
/// restart, says so.
fn have(f: &Facts, name: &str) -> String {
    let v = f.setting(name).to_owned();
    if f.pending(name) { format!("{v} (a new value waits for a restart)") } else { v }
}

/// The gaps between `f` and `n`, in the order a person fixes them.
pub fn gaps(f: &Facts, n: &Needs) -> Vec<Gap> {
    let mut g = Vec::new();
    let mut push = |what: &str, have: String, want: String, level: Level, fixes: Vec<Fix>| {
        g.push(Gap { what: what.to_owned(), have, want, level, fixes })
    };
    if f.in_recovery {
        push(
            "role",
            "in recovery (a standby)".into(),
            "a primary".into(),
            Level::Manual,
            vec![Fix::Manual { what: "adopt the cluster's primary; add standbys with `pgdr replica add`".into() }],
        );
    }
    if f.major() < 13 {
        push(
            "server_version",
            f.version_num.to_string(),
            "13 or later".into(),
            Level::Manual,
            vec![Fix::Manual { what: "upgrade PostgreSQL (pgdr reloads primary_conninfo, PostgreSQL 13+)".into() }],
        );
    }
    if let Some(m) = n.replica_major
        && m != f.major()
    {
        push(
            "server_version",
            f.major().to_string(),
            format!("{m} (the binaries replicas are built with here)"),
            Level::Manual,
            vec![Fix::Manual {
                what: format!(
                    "install PostgreSQL {} here (or pass --bin-dir): pg_basebackup and pg_rewind need the server's major version",
                    f.major()
                ),
            }],
        );
    }
    if !matches!(f.setting("wal_level"), "replica" | "logical") {
        push("wal_level", have(f, "wal_level"), "replica".into(), Level::Restart, vec![set("wal_level", "replica")]);
    }
    let senders = senders_needed(n.nodes);
    if f.int("max_wal_senders") < senders {
        push(
            "max_wal_senders",
            have(f, "max_wal_senders"),
            format!("at least {senders}"),
            Level::Restart,
            vec![set("max_wal_senders", &senders.to_string())],
        );
    }
    let slots = slots_needed(n.nodes);
    if f.int("max_replication_slots") < slots {
        push(
            "max_replication_slots",
            have(f, "max_replication_slots"),
            format!("at least {slots}"),
            Level::Restart,
            vec![set("max_replication_slots", &slots.to_string())],
        );
    }
    if !f.data_checksums && f.setting("wal_log_hints") != "on" {
        push(
            "wal_log_hints",
            format!("{} and data checksums off", have(f, "wal_log_hints")),
            "on (or data checksums), so pg_rewind can bring a former primary back".into(),
            Level::Restart,
            vec![set("wal_log_hints", "on")],
        );
    }
    if f.setting("hot_standby") != "on" {
        push(
            "hot_standby",
            have(f, "hot_standby"),
            "on (replicas built from it serve reads and report their position)".into(),
            Level::Restart,
            vec![set("hot_standby", "on")],
        );
    }
    if f.setting("restart_after_crash") == "on" {
        push(
            "restart_after_crash",
            have(f, "restart_after_crash"),
            "off: under pgdr's boot guard a crash reinitialisation would bring the primary back read-only; the controller restarts it instead".into(),
            Level::Reload,
            vec![set("restart_after_crash", "off")],
        );
    }
    if f.setting("listen_addresses").trim().is_empty() {
        push(
            "listen_addresses",
            "'' (Unix socket only)".into(),
            "the addresses replicas, agents and proxies connect to".into(),
            Level::Restart,
            vec![set("listen_addresses", "*")],
        );
    }
    // The replication role.
    let user = n.replication_user.as_str();
    match f.roles.iter().find(|r| r.name == user) {
        None => push(
            "replication role",
            format!("no role {user}"),
            format!("{user} WITH LOGIN REPLICATION"),
            Level::Manual,
            vec![Fix::Manual {
                what: format!(
                    "CREATE ROLE {} WITH LOGIN REPLICATION PASSWORD '...'; (the cluster's password: replicas read it from their password file)",
                    ident(user)
                ),
            }],
        ),
        Some(r) if !r.login || !(r.replication || r.superuser) => push(
            "replication role",
            format!("{user}: login {}, replication {}", r.login, r.replication),
            format!("{user} WITH LOGIN REPLICATION"),
            Level::Reload,
            vec![Fix::Sql { sql: format!("ALTER ROLE {} WITH LOGIN REPLICATION;", ident(user)) }],
        ),
        Some(_) => {}
    }
    // pg_hba.conf: replication from every peer host.
    let broken: Vec<String> =
        f.hba.iter().filter_map(|r| r.error.as_ref().map(|e| format!("line {}: {e}", r.line))).collect();
    if !broken.is_empty() {
        push(
            "pg_hba.conf",
            broken.join("; "),
            "no errors".into(),
            Level::Manual,
            vec![Fix::Manual { what: format!("correct {} and reload", f.hba_file) }],
        );
    }
    for host in &n.peer_hosts {
        let ok = match first_match(&f.hba, host, user, n.tls) {
            Some(r) => !matches!(r.auth.as_deref(), Some("reject")),
            None => false,
        };
        if !ok {
            let kind = if n.tls { "hostssl" } else { "host" };
            let mask = match host.parse::<IpAddr>() {
                Ok(IpAddr::V6(_)) => "/128",
                Ok(IpAddr::V4(_)) => "/32",
                Err(_) => "",
            };
            push(
                "pg_hba.conf replication",
                match first_match(&f.hba, host, user, n.tls) {
                    Some(r) => format!("line {} rejects replication from {host}", r.line),
                    None => format!("no line lets {user} replicate from {host}"),
                },
                format!("{kind} replication {user} {host}{mask} scram-sha-256"),
                Level::Reload,
                vec![Fix::Hba {
                    file: f.hba_file.clone(),
                    line: format!("{kind} replication {user} {host}{mask} scram-sha-256"),
                }],
            );
        }
    }
    // Under [tls], TCP logins only over TLS: a `host` line lets a client
    // (an application, a replica) send its password and data in the clear.
    // Advice: pgdr's own connections use TLS either way.
    if n.tls {
        let plain: Vec<String> = f
            .hba
            .iter()
            .filter(|r| matches!(r.kind.as_str(), "host" | "hostnossl") && r.auth.as_deref() != Some("reject"))
            .map(|r| r.line.to_string())
            .collect();
        if !plain.is_empty() {
            let lines = plain.join(", ");
            push(
                "pg_hba.conf TLS",
                format!("TCP logins without TLS accepted (line {lines})"),
                "hostssl lines only, hostnossl rejected".into(),
                Level::Advice,
                vec![Fix::Manual {
                    what: format!(
                        "in {}, make line {lines} `hostssl` (or `reject`), and put `hostnossl all all all reject` and `hostnossl replication all all reject` before the other TCP lines; then SELECT pg_reload_conf();",
                        f.hba_file
                    ),
                }],
            );
        }
    }
    // TLS under [tls].
    if n.tls && !(f.setting("ssl") == "on" && n.tls_verified) {
        let have_tls = if f.setting("ssl") == "on" {
            "ssl on, but its certificate does not verify against tls.ca for this host".to_owned()
        } else {
            "ssl off".to_owned()
        };
        match &n.ssl_files {
            Some((cert, key)) => push(
                "ssl",
                have_tls,
                "TLS with a certificate of tls.ca".into(),
                Level::Reload,
                vec![set("ssl_cert_file", cert), set("ssl_key_file", key), set("ssl", "on")],
            ),
            None => push(
                "ssl",
                have_tls,
                "TLS with a certificate of tls.ca".into(),
                Level::Manual,
                vec![Fix::Manual {
                    what: "issue a certificate for the server's host name from tls.ca (key readable only by the server's user), then run adopt again with --ssl-cert FILE --ssl-key FILE --apply-reloadable".into(),
                }],
            ),
        }
    }
    // Archiving, for backups and point-in-time recovery: advice only.
    let archiving = matches!(f.setting("archive_mode"), "on" | "always")
        && !matches!(f.setting("archive_command"), "" | "(disabled)");
    if !archiving {
        push(
            "archive_mode",
            format!("archive_mode {}, archive_command {:?}", have(f, "archive_mode"), f.setting("archive_command")),
            "WAL archived for backups (archive_mode needs a restart)".into(),
            Level::Advice,
            vec![Fix::Manual {
                what: "after adoption: pgdr backup enable --cluster CLUSTER (archive_command through pgdr wal-push), then a restart for archive_mode".into(),
            }],
        );
    }
    g
}

/// The first `pg_hba.conf` rule a replication connection of `user` from
/// `host` meets (over TLS when `tls`), as PostgreSQL picks it.
pub fn first_match<'a>(rules: &'a [HbaRule], host: &str, user: &str, tls: bool) -> Option<&'a HbaRule> {
    rules.iter().find(|r| {
        let kind = match r.kind.as_str() {
            "host" => true,
            "hostssl" => tls,
            "hostnossl" => !tls,
            _ => false,
        };
        // `all` does not match replication connections: only `replication` does.
        let db = r.databases.iter().any(|d| d == "replication");
        let usr = r.users.iter().any(|u| u == "all" || u == user);
        kind && db && usr && address_matches(r, host)
    })
}

fn address_matches(r: &HbaRule, host: &str) -> bool {
    let Some(addr) = r.address.as_deref() else { return false };
    match addr {
        "all" => return true,
        "samehost" | "samenet" => {
            return host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) || host == "localhost";
        }
        _ => {}
    }
    let (Ok(net), Ok(ip)) = (addr.parse::<IpAddr>(), host.parse::<IpAddr>()) else {
        // A host name rule: only an exact name matches here.
        return addr == host;
    };
    let mask = r.netmask.as_deref().and_then(|m| m.parse::<IpAddr>().ok());
    match (net, ip, mask) {
        (IpAddr::V4(n), IpAddr::V4(i), Some(IpAddr::V4(m))) => {
            let m = u32::from(m);
            u32::from(n) & m == u32::from(i) & m
        }
        (IpAddr::V6(n), IpAddr::V6(i), Some(IpAddr::V6(m))) => {
            let m = u128::from(m);
            u128::from(n) & m == u128::from(i) & m
        }
        (n, i, None) => n == i,
        _ => false,
    }
}

/// An SQL identifier, quoted when it needs to be.
pub fn ident(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        let mut f = Facts {
            version_num: 150010,
            data_directory: "/d".into(),
            hba_file: "/d/pg_hba.conf".into(),
            ..Default::default()
        };
        for (k, v, c) in [
            ("wal_level", "replica", "postmaster"),
            ("max_wal_senders", "10", "postmaster"),
            ("max_replication_slots", "10", "postmaster"),
            ("wal_log_hints", "off", "postmaster"),
            ("hot_standby", "on", "postmaster"),
            ("archive_mode", "off", "postmaster"),
            ("archive_command", "(disabled)", "sighup"),
            ("ssl", "off", "sighup"),
            ("listen_addresses", "localhost", "postmaster"),
        ] {
            f.settings.insert(k.into(), Setting { value: v.into(), context: c.into(), pending_restart: false });
        }
        f.roles.push(RoleFact { name: "postgres".into(), login: true, replication: true, superuser: true });
        f.hba.push(HbaRule {
            line: 1,
            kind: "host".into(),
            databases: vec!["all".into()],
            users: vec!["all".into()],
            address: Some("127.0.0.1".into()),
            netmask: Some("255.255.255.255".into()),
            auth: Some("scram-sha-256".into()),
            error: None,
        });
        f
    }

    fn needs() -> Needs {
        Needs {
            peer_hosts: vec!["127.0.0.1".into()],
            replication_user: "postgres".into(),
            nodes: 2,
            ..Default::default()
        }
    }

    fn names(g: &[Gap]) -> Vec<&str> {
        g.iter().map(|g| g.what.as_str()).collect()
    }

    #[test]
    fn a_fresh_initdb_lacks_hints_replication_hba_and_archiving() {
        let g = gaps(&facts(), &needs());
        assert_eq!(names(&g), ["wal_log_hints", "pg_hba.conf replication", "archive_mode"]);
        assert_eq!(g[0].level, Level::Restart);
        assert_eq!(g[1].level, Level::Reload);
        assert_eq!(
            g[1].fix_text(),
            "add to /d/pg_hba.conf, before its other rules: host replication postgres 127.0.0.1/32 scram-sha-256  SELECT pg_reload_conf();"
        );
        assert!(!g[2].level.blocks());
    }

    #[test]
    fn restart_after_crash_on_is_a_reload_away() {
        let mut f = facts();
        f.settings.insert(
            "restart_after_crash".into(),
            Setting { value: "on".into(), context: "sighup".into(), pending_restart: false },
        );
        let g = gaps(&f, &needs());
        let r = g.iter().find(|g| g.what == "restart_after_crash").map(|g| (g.level, g.fix_text()));
        assert_eq!(
            r,
            Some((Level::Reload, "ALTER SYSTEM SET restart_after_crash = 'off';  SELECT pg_reload_conf();".into()))
        );
    }

    #[test]
    fn checksums_stand_in_for_wal_log_hints() {
        let mut f = facts();
        f.data_checksums = true;
        assert!(!names(&gaps(&f, &needs())).contains(&"wal_log_hints"));
    }

    #[test]
    fn replication_rule_is_first_match_and_reject_counts_as_missing() {
        let mut f = facts();
        let mut r = f.hba[0].clone();
        r.line = 2;
        r.databases = vec!["replication".into()];
        r.auth = Some("reject".into());
        f.hba.push(r.clone());
        assert!(names(&gaps(&f, &needs())).contains(&"pg_hba.conf replication"));
        r.line = 3;
        r.auth = Some("scram-sha-256".into());
        f.hba.insert(1, r);
        assert!(!names(&gaps(&f, &needs())).contains(&"pg_hba.conf replication"));
    }

    #[test]
    fn tls_with_files_is_a_reload_without_a_manual_step() {
        let mut n = needs();
        n.tls = true;
        let g = gaps(&facts(), &n);
        assert_eq!(g.iter().find(|g| g.what == "ssl").map(|g| g.level), Some(Level::Manual));
        n.ssl_files = Some(("/c.crt".into(), "/c.key".into()));
        let g = gaps(&facts(), &n);
        let ssl = g.iter().find(|g| g.what == "ssl").cloned();
        assert_eq!(ssl.map(|g| (g.level, g.fixes.len())), Some((Level::Reload, 3)));
        // Under TLS a plain `host` line still matches hostssl connections.
        assert_eq!(
            g.iter().find(|g| g.what == "pg_hba.conf replication").map(|g| g.want.starts_with("hostssl")),
            Some(true)
        );
        // ... and is advice to turn into `hostssl` (TCP logins only over TLS).
        let plain = g.iter().find(|g| g.what == "pg_hba.conf TLS").cloned();
        assert_eq!(
            plain.as_ref().map(|g| (g.level, g.have.as_str())),
            Some((Level::Advice, "TCP logins without TLS accepted (line 1)"))
        );
        let mut f = facts();
        f.hba[0].kind = "hostssl".into();
        assert!(!names(&gaps(&f, &n)).contains(&"pg_hba.conf TLS"));
        // A `hostnossl` line that does not reject takes plain logins too.
        let mut r = f.hba[0].clone();
        (r.line, r.kind) = (2, "hostnossl".into());
        f.hba.push(r.clone());
        let g = gaps(&f, &n);
        let plain = g.iter().find(|g| g.what == "pg_hba.conf TLS").map(|g| g.have.clone());
        assert_eq!(plain.as_deref(), Some("TCP logins without TLS accepted (line 2)"));
        f.hba[1].auth = Some("reject".into());
        assert!(!names(&gaps(&f, &n)).contains(&"pg_hba.conf TLS"));
        // Without [tls] there is nothing to advise.
        assert!(!names(&gaps(&facts(), &needs())).contains(&"pg_hba.conf TLS"));
    }

    #[test]
    fn small_sender_limits_and_versions_are_reported() {
        let mut f = facts();
        if let Some(s) = f.settings.get_mut("max_wal_senders") {
            s.value = "2".into();
        }
        let mut n = needs();
        n.replica_major = Some(16);
        let g = gaps(&f, &n);
        assert!(names(&g).contains(&"max_wal_senders"));
        assert!(names(&g).contains(&"server_version"));
    }

    #[test]
    fn netmasks_match() {
        let r = HbaRule {
            line: 1,
            kind: "host".into(),
            databases: vec!["replication".into()],
            users: vec!["all".into()],
            address: Some("10.0.0.0".into()),
            netmask: Some("255.0.0.0".into()),
            auth: Some("md5".into()),
            error: None,
        };
        assert!(address_matches(&r, "10.1.2.3"));
        assert!(!address_matches(&r, "11.1.2.3"));
    }
}
