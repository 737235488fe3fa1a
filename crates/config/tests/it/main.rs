//! The bad-config table: each broken file must give an error naming the
//! file, the key, the line and what was expected.

use std::path::Path;

use pgdr_config::{Config, ConfigError};

const GOOD: &str = r#"
[controller]
listen = "127.0.0.1:7400"
region = "west"

[timing]
probe_interval = "1s"
probe_timeout = "500ms"

[[regions]]
name = "east"

[[regions]]
name = "east-a"
kind = "zone"
parent = "east"

[[regions]]
name = "west"

[[tiers]]
name = "gold"
rpo = "5s"
rto = "30s"

[[clusters]]
name = "main"
tier = "gold"
replication = "sync"
sync_quorum = 1
password = { env = "PGDR_TEST_PASSWORD" }

[[clusters.nodes]]
name = "n1"
region = "east-a"
agent = "127.0.0.1:7401"
host = "127.0.0.1"
port = 5432

[[clusters.nodes]]
name = "n2"
region = "west"
agent = "127.0.0.1:7402"
host = "127.0.0.1"
port = 5433

[[proxies]]
cluster = "main"
region = "east"
writer = "127.0.0.1:6432"
reader = "127.0.0.1:6433"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/pgdr/pgdr.toml"), text)
}

#[test]
fn good_config_loads() {
    let c = parse(GOOD).expect("the good config is valid");
    assert_eq!(c.clusters.len(), 1);
    assert_eq!(c.clusters[0].nodes.len(), 2);
    assert_eq!(c.regions[1].parent.as_ref().map(|r| r.as_str()), Some("east"));
    assert_eq!(c.proxies[0].name, "main-east");
    assert_eq!(c.base_dir, Path::new("/etc/pgdr"));
}

#[test]
fn etcd_store_loads() {
    let text = GOOD.replacen(
        "region = \"west\"\n",
        "region = \"west\"\nstore = \"etcd\"\netcd_endpoints = [\"10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\n\
         etcd_prefix = \"/prod-eu\"\netcd_user = \"pgdr\"\netcd_password = { env = \"PGDR_ETCD_PASSWORD\" }\n\
         etcd_timeout = \"1500ms\"\n",
        1,
    );
    let c = parse(&text).expect("valid");
    let pgdr_config::StoreKind::Etcd(e) = &c.controller.store else { panic!("etcd expected") };
    assert_eq!(e.endpoints, ["10.0.0.1:2379", "http://10.0.0.2:2379"]);
    assert_eq!((e.prefix.as_str(), e.user.as_deref()), ("/prod-eu", Some("pgdr")));
    assert_eq!(e.timeout, std::time::Duration::from_millis(1500));
    assert!(e.ca.is_none() && e.identity.is_none());
    assert!(!format!("{e:?}").contains("PGDR_ETCD_PASSWORD="), "no secret value in Debug");
}

/// (what to change in GOOD, into what, the key the error must name, text on
/// the line the error must point at, words the message must contain)
const BAD: &[(&str, &str, &str, &str, &str)] = &[
    // no backup could ever run
    (
        "region = \"west\"\n\n[timing]",
        "region = \"west\"\nmax_concurrent_backups = 0\n\n[timing]",
        "controller.max_concurrent_backups",
        "max_concurrent_backups = 0",
        "expected at least 1",
    ),
    // a runtime without threads
    (
        "region = \"west\"\n\n[timing]",
        "region = \"west\"\nworker_threads = 0\n\n[timing]",
        "controller.worker_threads",
        "worker_threads = 0",
        "expected 1 to 256",
    ),
    // unknown key
    (
        "name = \"main\"\ntier = \"gold\"",
        "name = \"main\"\ntier = \"gold\"\ncolour = \"blue\"",
        "clusters[0].colour",
        "colour =",
        "unknown field `colour`",
    ),
    // duplicate names
    (
        "name = \"n2\"",
        "name = \"n1\"",
        "clusters[0].nodes[1].name",
        "name = \"n1\"\nregion = \"west",
        "duplicate node name \"n1\"",
    ),
    ("name = \"west\"", "name = \"east\"", "regions[2].name", "name = \"east\"\n\n[[tiers", "duplicate region name"),
    // a node in an undeclared region
    (
        "region = \"west\"\nagent",
        "region = \"mars\"\nagent",
        "clusters[0].nodes[1].region",
        "mars",
        "region \"mars\" is not declared",
    ),
    // bad durations
    ("rpo = \"5s\"", "rpo = \"5 parsecs\"", "tiers[0].rpo", "parsecs", "expected a duration"),
    ("rto = \"30s\"", "rto = \"30\"", "tiers[0].rto", "rto =", "has no unit"),
    ("rpo = \"5s\"", "rpo = 5", "tiers[0].rpo", "rpo = 5", "invalid type: integer"),
    // wrong types and values
    ("port = 5433", "port = \"5433\"", "clusters[0].nodes[1].port", "\"5433\"", "invalid type: string"),
    ("port = 5433", "port = 99999", "clusters[0].nodes[1].port", "99999", ""),
    // a host that would add a connection parameter
    (
        "host = \"127.0.0.1\"\nport = 5433",
        "host = \"127.0.0.1 sslmode=disable\"\nport = 5433",
        "clusters[0].nodes[1].host",
        "sslmode=disable",
        "expected a host name or an IP address",
    ),
    // a durations past what a clock holds
    (
        "rpo = \"5s\"",
        "rpo = \"18446744073709551616s\"",
        "tiers[0].rpo",
        "18446744073709551616s",
        "longer than 100 years",
    ),
    (
        "replication = \"sync\"",
        "replication = \"eventual\"",
        "clusters[0].replication",
        "eventual",
        "expected \"async\" or \"sync\"",
    ),
    (
        "sync_quorum = 1",
        "sync_quorum = 3",
        "clusters[0].sync_quorum",
        "sync_quorum",
        "quorum from 1 to the number of replicas (1)",
    ),
    ("tier = \"gold\"", "tier = \"platinum\"", "clusters[0].tier", "platinum", "tier \"platinum\" is not declared"),
    ("writer = \"127.0.0.1:6432\"", "writer = \"localhost\"", "proxies[0].writer", "localhost", "expected an address"),
    (
        "reader = \"127.0.0.1:6433\"",
        "reader = \"127.0.0.1:6432\"",
        "proxies[0].reader",
        "reader =",
        "already used by `proxies[0].writer`",
    ),
    ("port = 5433", "port = 5432", "clusters[0].nodes[1].port", "port = 5432\n\n[[proxies", "already used"),
    ("agent = \"127.0.0.1:7402\"", "agent = \"nowhere\"", "clusters[0].nodes[1].agent", "nowhere", "host:port"),
    (
        "kind = \"zone\"\nparent = \"east\"",
        "kind = \"zone\"",
        "regions[1].parent",
        "[[regions]]\nname = \"east-a\"",
        "needs a `parent`",
    ),
    ("name = \"east-a\"", "name = \"1east\"", "regions[1].name", "1east", "starting with a letter"),
    (
        "password = { env = \"PGDR_TEST_PASSWORD\" }",
        "password = { env = \"X\", file = \"y\" }",
        "clusters[0].password",
        "password =",
        "exactly one of",
    ),
    // the etcd store: endpoints, TLS, credentials, prefix
    (
        "region = \"west\"\n",
        "region = \"west\"\nstore = \"etcd\"\n",
        "controller.etcd_endpoints",
        "[controller]",
        "needs at least one endpoint",
    ),
    (
        "region = \"west\"\n",
        "region = \"west\"\nstore = \"etcd\"\netcd_endpoints = [\"https://10.0.0.1:2379\"]\n",
        "controller.etcd_endpoints[0]",
        "etcd_endpoints",
        "set controller.etcd_ca",
    ),
    (
        "region = \"west\"\n",
        "region = \"west\"\nstore = \"etcd\"\netcd_endpoints = [\"http://pgdr:hunter2@10.0.0.1:2379\"]\n",
        "controller.etcd_endpoints[0]",
        "etcd_endpoints",
        "must not carry credentials",
    ),
    (
        "region = \"west\"\n",
        "region = \"west\"\nstore = \"etcd\"\netcd_endpoints = [\"10.0.0.1\"]\n",
        "controller.etcd_endpoints[0]",
        "etcd_endpoints",
        "expected \"http://host:port\"",
    ),
    (
        "region = \"west\"\n",
        "region = \"west\"\nstore = \"etcd\"\netcd_endpoints = [\"10.0.0.1:2379\"]\netcd_user = \"pgdr\"\n",
        "controller.etcd_password",
        "[controller]",
        "expected its password too",
    ),
    (
        "region = \"west\"\n",
        "region = \"west\"\nstore = \"etcd\"\netcd_endpoints = [\"10.0.0.1:2379\"]\netcd_prefix = \"prod/\"\n",
        "controller.etcd_prefix",
        "etcd_prefix",
        "expected a key prefix like \"/pgdr-prod\"",
    ),
    (
        "region = \"west\"\n",
        "region = \"west\"\netcd_endpoints = [\"10.0.0.1:2379\"]\n",
        "controller.etcd_endpoints",
        "etcd_endpoints",
        "only used with store = \"etcd\"",
    ),
    // timing inequalities
    (
        "probe_timeout = \"500ms\"",
        "probe_timeout = \"2s\"",
        "timing.probe_timeout",
        "probe_timeout",
        "shorter than timing.probe_interval",
    ),
    (
        "probe_timeout = \"500ms\"",
        "probe_timeout = \"500ms\"\nlease_ttl = \"2s\"",
        "timing.lease_ttl",
        "lease_ttl",
        "3 × timing.lease_renew",
    ),
    // tokens: roles, names, empty values, public addresses without a token
    (
        "region = \"west\"\n",
        "region = \"west\"\n[[controller.tokens]]\nname = \"ops\"\nrole = \"admin\"\ntoken = { value = \"x\" }\n",
        "controller.tokens[0].role",
        "role = \"admin\"",
        "expected \"viewer\", \"operator\" or \"agent\"",
    ),
    (
        "region = \"west\"\n",
        "region = \"west\"\n[[controller.tokens]]\nname = \"ops\"\nrole = \"viewer\"\ntoken = { value = \"\" }\n",
        "controller.tokens[0].token",
        "token = { value",
        "empty",
    ),
    (
        "region = \"west\"\n",
        "region = \"west\"\ntoken = { value = \"a\" }\n[[controller.tokens]]\nname = \"operator\"\nrole = \"viewer\"\ntoken = { value = \"b\" }\n",
        "controller.tokens[0].name",
        "name = \"operator\"",
        "duplicate token name",
    ),
    (
        "listen = \"127.0.0.1:7400\"",
        "listen = \"0.0.0.0:7400\"",
        "controller.listen",
        "listen =",
        "not a loopback address, without a token",
    ),
    (
        "agent = \"127.0.0.1:7402\"",
        "agent = \"10.0.0.2:7402\"",
        "clusters[0].nodes[1].agent",
        "agent = \"10.0.0.2",
        "set agents.token",
    ),
    (
        "reader = \"127.0.0.1:6433\"",
        "reader = \"127.0.0.1:6433\"\napi = \"192.0.2.1:6434\"",
        "proxies[0].api",
        "api =",
        "set api_token",
    ),
    // syntax error
    ("[controller]", "[controller", "", "[controller", ""),
];

#[test]
fn tokens_load_with_their_roles_and_public_addresses_need_them() {
    let text = GOOD
        .replace("listen = \"127.0.0.1:7400\"", "listen = \"0.0.0.0:7400\"\ntoken = { value = \"legacy\" }")
        .replace(
            "region = \"west\"\n\n[timing]",
            "region = \"west\"\n[[controller.tokens]]\nname = \"grafana\"\nrole = \"viewer\"\ntoken = { env = \"PGDR_TEST_VIEWER\" }\n\n[timing]",
        );
    let c = parse(&text).expect("tokens on a public address are fine");
    let roles: Vec<(&str, pgdr_config::Access)> =
        c.controller.tokens.iter().map(|t| (t.name.as_str(), t.role)).collect();
    assert_eq!(roles, [("operator", pgdr_config::Access::Operator), ("grafana", pgdr_config::Access::Viewer)]);
    // A viewer's request takes the viewer token when readable, else the operator's.
    let op = c.controller_client_token(pgdr_config::Access::Viewer).expect("readable").expect("a token");
    assert_eq!(op.expose(), "legacy");
    assert!(c.controller_client_token(pgdr_config::Access::Agent).expect("none").is_none());
    assert!(!format!("{c:?}").contains("legacy"), "Debug shows an inline token");
}

#[test]
fn an_empty_secret_file_is_an_error_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("empty.token"), "\n").expect("write");
    let text = GOOD.replace(
        "region = \"west\"\n\n[timing]",
        "region = \"west\"\n[[controller.tokens]]\nname = \"ops\"\nrole = \"operator\"\ntoken = { file = \"empty.token\" }\n\n[timing]",
    );
    let path = dir.path().join("pgdr.toml");
    let c = Config::parse(&path, &text).expect("valid until read");
    let err = c.controller_tokens().expect_err("an empty token file").to_string();
    assert!(
        err.contains("pgdr.toml")
            && err.contains("key `controller.tokens[0].token`")
            && err.contains("empty.token")
            && err.contains("empty"),
        "{err}"
    );
    let found: Vec<String> = c.empty_secrets().iter().map(|e| e.key.clone()).collect();
    assert_eq!(found, ["controller.tokens[0].token"]);
}

#[test]
fn bad_config_table() {
    for (from, to, key, marker, words) in BAD {
        assert!(GOOD.contains(from), "test setup: {from:?} not in GOOD");
        let text = GOOD.replacen(from, to, 1);
        let at = text.find(marker).unwrap_or_else(|| panic!("test setup: marker {marker:?} not in the changed text"));
        let line = Some(text[..at].matches('\n').count() + 1);
        let err = match parse(&text) {
            Ok(_) => panic!("config with {to:?} must be rejected"),
            Err(e) => e,
        };
        let shown = err.to_string();
        assert!(shown.starts_with("/etc/pgdr/pgdr.toml"), "error must name the file: {shown}");
        let p = err
            .problems()
            .iter()
            .find(|p| p.key == *key)
            .unwrap_or_else(|| panic!("no problem for key {key:?} in:\n{shown}"));
        assert_eq!(p.line, line, "line of {key:?} in:\n{shown}");
        assert!(p.message.contains(words), "message for {key:?} must contain {words:?}:\n{shown}");
        if !key.is_empty() {
            assert!(shown.contains(&format!("key `{key}`")), "rendered error must name the key: {shown}");
        }
    }
}

#[test]
fn cluster_without_nodes() {
    let text = "[[regions]]\nname = \"east\"\n[[tiers]]\nname = \"gold\"\nrpo = \"5s\"\nrto = \"30s\"\n[[clusters]]\nname = \"empty\"\ntier = \"gold\"\n";
    let err = parse(text).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("key `clusters[0].nodes`") && err.contains("has no node"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = GOOD.replace("rpo = \"5s\"", "rpo = \"soon\"").replace("tier = \"gold\"", "tier = \"lead\"");
    let err = parse(&text).expect_err("invalid");
    assert!(err.problems().len() >= 2, "{err}");
}

#[test]
fn missing_file_names_it() {
    let err = Config::load(Path::new("/nonexistent/pgdr.toml")).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("/nonexistent/pgdr.toml") && err.contains("cannot read"), "{err}");
}

#[test]
fn locate_order() {
    use pgdr_config::locate;
    assert_eq!(locate(Some(Path::new("a.toml")), Some("b.toml")), Path::new("a.toml"));
    assert_eq!(locate(None, Some("b.toml")), Path::new("b.toml"));
    assert_eq!(locate(None, None), Path::new("pgdr.toml"));
}

mod props;

/// GOOD with a `[clusters.secrets]` section appended after the nodes (it
/// belongs to the last `[[clusters]]`).
fn with_secrets(section: &str) -> String {
    let at = GOOD.find("[[proxies]]").expect("GOOD has proxies");
    format!("{}{section}\n{}", &GOOD[..at], &GOOD[at..])
}

const SECRETS: &str = r#"
[clusters.secrets]
schedule = "0 3 * * *"
max_age = "30d"

[[clusters.secrets.roles]]
name = "app"

[[clusters.secrets.roles]]
name = "reporting"
strategy = "single"
database = "reports"

[[clusters.secrets.stores]]
region = "east-a"
kind = "file"
dir = "stores/east"

[[clusters.secrets.stores]]
region = "west"
kind = "aws-secretsmanager"
aws_region = "us-west-2"
endpoint = "http://127.0.0.1:5000"
allow_http = true
access_key_id = { value = "AKIDEXAMPLE" }
secret_access_key = { env = "PGDR_TEST_SM_SECRET" }
"#;

#[test]
fn managed_roles_and_secret_stores_load() {
    let c = parse(&with_secrets(SECRETS)).expect("valid");
    let s = c.clusters[0].secrets.as_ref().expect("secrets");
    assert_eq!(s.max_age, Some(std::time::Duration::from_secs(30 * 86400)));
    let app = s.role("app").expect("app");
    assert_eq!(app.logins(), vec!["app", "app_b"], "alternating is the default");
    assert_eq!(app.database, "postgres");
    let rep = s.role("reporting").expect("reporting");
    assert_eq!(rep.strategy, pgdr_config::RotationStrategy::Single);
    assert_eq!(rep.database, "reports");
    match &s.store("east-a").expect("east store").kind {
        pgdr_config::SecretStoreKind::File { dir, keep } => {
            assert_eq!(dir, Path::new("/etc/pgdr/stores/east"));
            assert_eq!(*keep, 5);
        }
        other => panic!("{other:?}"),
    }
    match &s.store("west").expect("west store").kind {
        pgdr_config::SecretStoreKind::AwsSecretsManager { endpoint, prefix, .. } => {
            assert_eq!(endpoint, "http://127.0.0.1:5000");
            assert_eq!(prefix, "pgdr/");
        }
        other => panic!("{other:?}"),
    }
    assert!(!format!("{c:?}").contains("AKIDEXAMPLE"), "an inline credential stays out of Debug");
}

#[test]
fn bad_secrets_config_names_the_key() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "strategy = \"single\"",
            "strategy = \"double\"",
            "clusters[0].secrets.roles[1].strategy",
            "expected \"alternating\" or \"single\"",
        ),
        ("name = \"reporting\"", "name = \"Reporting; DROP\"", "clusters[0].secrets.roles[1].name", "is not valid"),
        ("name = \"reporting\"", "name = \"app_b\"", "clusters[0].secrets.roles[1].name", "already managed"),
        (
            "kind = \"file\"",
            "kind = \"vault\"",
            "clusters[0].secrets.stores[0].kind",
            "expected \"file\" or \"aws-secretsmanager\"",
        ),
        ("dir = \"stores/east\"", "", "clusters[0].secrets.stores[0].dir", "needs `dir`"),
        ("allow_http = true\n", "", "clusters[0].secrets.stores[1].endpoint", "allow_http"),
        (
            "region = \"west\"\nkind = \"aws",
            "region = \"mars\"\nkind = \"aws",
            "clusters[0].secrets.stores[1].region",
            "not declared",
        ),
        ("schedule = \"0 3 * * *\"", "schedule = \"daily\"", "clusters[0].secrets.schedule", "cron expression"),
        ("schedule = \"0 3 * * *\"", "schedule = \"0 25 * * *\"", "clusters[0].secrets.schedule", "cron expression"),
        (
            "schedule = \"0 3 * * *\"",
            "schedule = \"0 3 * * *\"\nevery = \"7d\"",
            "clusters[0].secrets.every",
            "not both",
        ),
        ("schedule = \"0 3 * * *\"", "every = \"30s\"", "clusters[0].secrets.every", "at least 1m"),
        ("schedule = \"0 3 * * *\"", "every = \"weekly\"", "clusters[0].secrets.every", "expected a duration"),
        (
            "schedule = \"0 3 * * *\"",
            "schedule = \"0 3 * * *\"\nspread = \"soon\"",
            "clusters[0].secrets.spread",
            "expected a duration",
        ),
        ("max_age = \"30d\"", "max_age = \"a month\"", "clusters[0].secrets.max_age", "expected a duration"),
        ("aws_region = \"us-west-2\"\n", "", "clusters[0].secrets.stores[1].aws_region", "needs `aws_region`"),
    ];
    for (from, to, key, words) in cases {
        let text = with_secrets(&SECRETS.replacen(from, to, 1));
        let err = parse(&text).expect_err(&format!("{from} -> {to} must fail"));
        let p = err.problems().iter().find(|p| p.key == *key).unwrap_or_else(|| panic!("no problem at {key}: {err}"));
        assert!(p.message.contains(words), "{key}: {:?} lacks {words:?}", p.message);
        assert!(err.to_string().starts_with("/etc/pgdr/pgdr.toml"), "{err}");
    }
    // `every` instead of cron, with its spread.
    let c = parse(&with_secrets(&SECRETS.replacen("schedule = \"0 3 * * *\"", "every = \"12h\"\nspread = \"1m\"", 1)))
        .expect("every");
    let s = c.clusters[0].secrets.as_ref().expect("secrets");
    assert_eq!(s.schedule, Some(pgdr_config::RotationSchedule::Every(std::time::Duration::from_secs(12 * 3600))));
    assert_eq!(s.spread, std::time::Duration::from_secs(60));
    // A region with nodes but no store.
    let text = with_secrets(&SECRETS.replacen("region = \"west\"\nkind = \"aws", "region = \"east\"\nkind = \"aws", 1));
    let err = parse(&text).expect_err("west has a node and no store");
    assert!(err.to_string().contains("region \"west\" has nodes of this cluster but no secret store"), "{err}");
}

#[test]
fn tls_section() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.crt"), "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
        .expect("ca");
    std::fs::write(dir.path().join("not-a-key.pem"), "hello").expect("key");
    let file = dir.path().join("pgdr.toml");
    let with = |tls: &str| Config::parse(&file, &format!("{GOOD}\n{tls}"));

    // Off by default; a warning for every address outside loopback.
    let c = parse(GOOD).expect("valid");
    assert!(c.tls.is_none() && c.tls_warnings().is_empty());
    // (An agent off loopback needs a token: the config check refuses one without.)
    let far = parse(&format!(
        "{}\n[agents]\ntoken = {{ value = \"t\" }}\n",
        GOOD.replace("agent = \"127.0.0.1:7401\"", "agent = \"10.0.0.5:7401\"")
    ))
    .expect("valid");
    let w = far.tls_warnings();
    assert!(w.len() == 1 && w[0].contains("clusters[0].nodes[0].agent") && w[0].contains("[tls]"), "{w:?}");

    // A proxy's require_tls needs a certificate to offer.
    let strict = GOOD.replacen("[[proxies]]\n", "[[proxies]]\nrequire_tls = true\n", 1);
    let err = parse(&strict).expect_err("require_tls without tls_cert");
    assert!(
        err.problems().iter().any(|p| p.key == "proxies[0].require_tls" && p.message.contains("tls_cert")),
        "{err}"
    );
    let strict = GOOD.replacen(
        "[[proxies]]\n",
        "[[proxies]]\nrequire_tls = true\ntls_cert = \"p.crt\"\ntls_key = \"p.key\"\n",
        1,
    );
    assert!(parse(&strict).expect("valid").proxies[0].require_tls);

    let ok = with(
        "[tls]\nmode = \"verify-full\"\nca = \"ca.crt\"\nclient_certs = true\n\
         controller = { cert = \"c.crt\", key = \"c.key\" }\nagent = { cert = \"a.crt\", key = \"a.key\" }\n",
    )
    .expect("valid");
    let t = ok.tls.as_ref().expect("tls on");
    assert_eq!(t.ca, dir.path().join("ca.crt"));
    assert!(t.client_certs);
    assert_eq!(t.cli_identity().map(|i| i.cert.clone()), Some(dir.path().join("c.crt")));
    assert!(ok.tls_warnings().is_empty());

    for (tls, key, words) in [
        ("[tls]\nmode = \"on\"\n", "tls.mode", "\"verify-full\""),
        ("[tls]\nmode = \"verify-full\"\n", "tls.ca", "needs `ca`"),
        ("[tls]\nmode = \"verify-full\"\nca = \"missing.crt\"\n", "tls.ca", "cannot read"),
        ("[tls]\nmode = \"verify-full\"\nca = \"ca.crt\"\n", "tls.agent", "[tls.agent]"),
        (
            "[tls]\nmode = \"verify-full\"\nca = \"ca.crt\"\ncontroller = { cert = \"ca.crt\", key = \"not-a-key.pem\" }\n\
             agent = { cert = \"ca.crt\", key = \"ca.crt\" }\n",
            "tls.controller.key",
            "PEM private key",
        ),
    ] {
        let err = with(tls).expect_err(tls);
        let p = err.problems().iter().find(|p| p.key == key).unwrap_or_else(|| panic!("no {key} in {err}"));
        assert!(p.message.contains(words), "{key}: {}", p.message);
        assert!(err.to_string().contains(&format!("key `{key}`")), "{err}");
    }
}

const DNS: &str = r#"
[clusters.dns]
server = "10.0.0.53"
zone = "db.example.com."
name = "main-writer.db.example.com"
ttl = "20s"
tsig_key = "pgdr-main"
tsig_secret = { file = "dns-main.key" }

[clusters.dns.endpoints]
east-a = "10.0.1.20"
west = ["10.0.2.20", "fd00::2:20"]
"#;

#[test]
fn a_writer_name_in_dns_loads() {
    let c = parse(&with_secrets(DNS)).expect("valid");
    let d = c.clusters[0].dns.as_ref().expect("dns");
    assert_eq!(d.server.to_string(), "10.0.0.53:53");
    assert_eq!((d.zone.as_str(), d.name.as_str()), ("db.example.com", "main-writer.db.example.com"));
    assert_eq!(d.ttl, std::time::Duration::from_secs(20));
    assert_eq!(d.tsig_algorithm, "hmac-sha256");
    assert_eq!(d.tsig_secret, pgdr_config::Secret::File("/etc/pgdr/dns-main.key".into()));
    assert_eq!(d.endpoint("east-a"), Some(&pgdr_config::DnsTarget::Addresses(vec!["10.0.1.20".parse().expect("ip")])));
    let alias = with_secrets(&DNS.replace("east-a = \"10.0.1.20\"", "east-a = \"east-pg.example.net.\""));
    let c = parse(&alias).expect("valid");
    let d = c.clusters[0].dns.as_ref().expect("dns");
    assert_eq!(d.endpoint("east-a"), Some(&pgdr_config::DnsTarget::Alias("east-pg.example.net".into())));
    assert!(!format!("{d:?}").contains("secret = "), "{d:?}");
}

#[test]
fn bad_dns_config_names_the_file_and_key() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("server = \"10.0.0.53\"", "server = \"ns1.example.com\"", "clusters[0].dns.server", "IP address"),
        ("zone = \"db.example.com.\"", "zone = \"db..example\"", "clusters[0].dns.zone", "DNS zone"),
        ("name = \"main-writer.db.example.com\"", "name = \"main.other.org\"", "clusters[0].dns.name", "not inside"),
        ("ttl = \"20s\"", "ttl = \"1500ms\"", "clusters[0].dns.ttl", "whole seconds"),
        (
            "tsig_key = \"pgdr-main\"\n",
            "tsig_key = \"pgdr-main\"\ntsig_algorithm = \"hmac-md5\"\n",
            "clusters[0].dns.tsig_algorithm",
            "hmac-sha256",
        ),
        ("tsig_secret = { file = \"dns-main.key\" }", "", "clusters[0].dns.tsig_secret", "expected the TSIG secret"),
        (
            "tsig_secret = { file = \"dns-main.key\" }",
            "tsig_secret = { file = \"a\", env = \"B\" }",
            "clusters[0].dns.tsig_secret",
            "exactly one",
        ),
        ("west = [", "mars = [", "clusters[0].dns.endpoints.mars", "not declared"),
        (
            "west = [",
            "mars = [",
            "clusters[0].dns.endpoints",
            "region \"west\" has nodes of this cluster but no endpoint",
        ),
        ("east-a = \"10.0.1.20\"", "east-a = \"not a name!\"", "clusters[0].dns.endpoints.east-a", "IP address"),
    ];
    for (from, to, key, words) in cases {
        assert!(DNS.contains(from), "test setup: {from:?}");
        let text = with_secrets(&DNS.replacen(from, to, 1));
        let err = parse(&text).expect_err(&format!("{from} -> {to} must fail"));
        let p = err.problems().iter().find(|p| p.key == *key).unwrap_or_else(|| panic!("no problem at {key}: {err}"));
        assert!(p.message.contains(words), "{key}: {:?} lacks {words:?}", p.message);
        assert!(p.line.is_some(), "{key}: no line");
        assert!(err.to_string().starts_with("/etc/pgdr/pgdr.toml"), "{err}");
    }
    // The secret is read where it is used; an empty one names the file and the key.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("dns-main.key"), "\n").expect("write");
    let c = Config::parse(&dir.path().join("pgdr.toml"), &with_secrets(DNS)).expect("valid until read");
    let err = c.dns_secret(c.clusters[0].dns.as_ref().expect("dns")).expect_err("empty").to_string();
    assert!(err.contains("key `clusters[0].dns.tsig_secret`") && err.contains("dns-main.key"), "{err}");
    assert_eq!(c.empty_secrets().len(), 1);
}

/// `[[controller.instances]]` in place of `controller.listen` and
/// `controller.region`: a controller per region on the etcd store.
fn with_instances(instances: &str, store: &str) -> String {
    GOOD.replacen("listen = \"127.0.0.1:7400\"\nregion = \"west\"\n", &format!("{store}\n{instances}"), 1)
}

const ETCD: &str = "store = \"etcd\"\netcd_endpoints = [\"10.0.0.1:2379\", \"10.0.0.2:2379\", \"10.0.0.3:2379\"]";
const TWO: &str = "[[controller.instances]]\nname = \"east\"\nregion = \"east\"\nlisten = \"127.0.0.1:7400\"\n\n\
[[controller.instances]]\nname = \"west\"\nregion = \"west\"\nlisten = \"127.0.0.1:7500\"\n";

#[test]
fn controller_instances_load_and_select() {
    let c = parse(&with_instances(TWO, ETCD)).expect("valid");
    assert_eq!(c.controller_addrs(), ["127.0.0.1:7400", "127.0.0.1:7500"], "clients try every controller");
    let west = c.clone().for_controller(Some("west")).expect("west");
    assert_eq!(west.controller.listen.to_string(), "127.0.0.1:7500");
    assert_eq!(west.controller.region.as_ref().map(|r| r.as_str()), Some("west"));
    let e = c.clone().for_controller(None).expect_err("several: a name is needed");
    assert!(e.contains("/etc/pgdr/pgdr.toml") && e.contains("--controller") && e.contains("east, west"), "{e}");
    let e = c.for_controller(Some("north")).expect_err("no such controller");
    assert!(e.contains("north") && e.contains("east, west"), "{e}");
    // Without instances: one controller, its listen the only address.
    let one = parse(GOOD).expect("valid");
    assert_eq!(one.controller_addrs(), ["127.0.0.1:7400"]);
    assert!(one.clone().for_controller(None).is_ok());
    assert!(one.for_controller(Some("east")).is_err());
}

#[test]
fn bad_controller_instances_name_the_key() {
    let dup_listen = TWO.replacen("127.0.0.1:7500", "127.0.0.1:7400", 1);
    let dup_name = TWO.replacen("name = \"west\"", "name = \"east\"", 1);
    let bad_region = TWO.replacen("region = \"west\"", "region = \"north\"", 1);
    let bad_addr = TWO.replacen("127.0.0.1:7500", "west-host", 1);
    let cases: Vec<(String, &str, &str)> = vec![
        (with_instances(TWO, ""), "controller.instances", "store = \"etcd\""),
        (with_instances(&dup_listen, ETCD), "controller.instances[1].listen", "given twice"),
        (with_instances(&dup_name, ETCD), "controller.instances[1].name", "duplicate controller name"),
        (with_instances(&bad_region, ETCD), "controller.instances[1].region", "not declared under [[regions]]"),
        (with_instances(&bad_addr, ETCD), "controller.instances[1].listen", "expected an address"),
        (
            with_instances(TWO, &format!("listen = \"127.0.0.1:7400\"\n{ETCD}")),
            "controller.listen",
            "its own listen and region",
        ),
    ];
    for (text, key, words) in cases {
        let err = parse(&text).expect_err(key);
        let shown = err.to_string();
        assert!(shown.starts_with("/etc/pgdr/pgdr.toml"), "error must name the file: {shown}");
        assert!(
            err.problems().iter().any(|p| p.key == key && p.message.contains(words)),
            "expected {key}: {words}, got {shown}"
        );
    }
}
