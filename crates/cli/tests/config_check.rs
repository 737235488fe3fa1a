//! `pgdr config check` as a user runs it: exit codes and messages.

use std::process::Command;

fn pgdr() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgdr"));
    c.env_remove("PGDR_CONFIG");
    c
}

const GOOD: &str = r#"
[[regions]]
name = "east"
[[tiers]]
name = "gold"
rpo = "5s"
rto = "30s"
[[clusters]]
name = "main"
tier = "gold"
[[clusters.nodes]]
name = "n1"
region = "east"
agent = "127.0.0.1:7401"
host = "127.0.0.1"
port = 5432
"#;

#[test]
fn valid_config_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("pgdr.toml");
    std::fs::write(&f, GOOD).expect("write");
    let out = pgdr().args(["config", "check", "--config"]).arg(&f).output().expect("run pgdr");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 clusters, 1 nodes"));
}

#[test]
fn bad_config_exits_2_with_file_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("pgdr.toml");
    std::fs::write(
        &f,
        GOOD.replace("rpo = \"5s\"", "rpo = \"5 parsecs\"")
            .replace("region = \"east\"\nagent", "region = \"west\"\nagent"),
    )
    .expect("write");
    let out = pgdr().args(["config", "check", "--config"]).arg(&f).output().expect("run pgdr");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:6: key `tiers[0].rpo`", f.display())), "{err}");
    assert!(err.contains("key `clusters[0].nodes[0].region`: region \"west\" is not declared"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
}

#[test]
fn config_from_environment_then_default_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("custom.toml");
    std::fs::write(&f, GOOD).expect("write");
    let out = pgdr().args(["config", "check"]).env("PGDR_CONFIG", &f).output().expect("run pgdr");
    assert_eq!(out.status.code(), Some(0));
    // Without flag or variable: ./pgdr.toml, which is missing in this folder.
    let out = pgdr().args(["config", "check"]).current_dir(dir.path()).output().expect("run pgdr");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pgdr.toml: cannot read config file"));
}

#[test]
fn json_output_lists_problems() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("pgdr.toml");
    std::fs::write(&f, GOOD.replace("tier = \"gold\"", "tier = \"tin\"")).expect("write");
    let out = pgdr().args(["config", "check", "--json", "--config"]).arg(&f).output().expect("run pgdr");
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"][0]["key"], "clusters[0].tier");
}

#[test]
fn unknown_subcommand_is_usage_error() {
    let out = pgdr().arg("frobnicate").output().expect("run pgdr");
    assert_eq!(out.status.code(), Some(2));
}
