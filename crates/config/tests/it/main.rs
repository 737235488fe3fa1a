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

/// (what to change in GOOD, into what, the key the error must name, text on
/// the line the error must point at, words the message must contain)
const BAD: &[(&str, &str, &str, &str, &str)] = &[
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
    // syntax error
    ("[controller]", "[controller", "", "[controller", ""),
];

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
