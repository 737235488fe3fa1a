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

/// deploy/pgdr.toml, the production example the README and the .deb ship, is a
/// valid config: copied next to every file it names (certificates made by
/// `pgdr certs init` for its hosts, each secret a non-empty file), `pgdr config
/// check` accepts it.
#[test]
fn the_deploy_example_config_checks() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/pgdr.toml");
    let text = std::fs::read_to_string(&example).expect("deploy/pgdr.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = "10.0.1.10,10.0.1.11,10.0.1.12,10.0.1.20,10.0.2.10,10.0.2.11,10.0.2.20";
    let out =
        pgdr().args(["certs", "init", "--hosts", hosts, "--dir"]).arg(dir.path().join("tls")).output().expect("certs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // Every file the example names, relative to it: the certificates above, the rest here.
    let mut named = Vec::new();
    for part in text.split('"').skip(1).step_by(2) {
        if part.starts_with("tls/") || part.starts_with("secrets/") {
            named.push(part.to_owned());
        }
    }
    assert!(named.len() > 20, "the example names its files: {named:?}");
    std::fs::create_dir_all(dir.path().join("secrets")).expect("secrets dir");
    for f in &named {
        let path = dir.path().join(f);
        if f.ends_with("dns-main.key") {
            std::fs::write(&path, "key \"pgdr-main\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LWJ5dGVzLWZvci10aGUtdGVzdA==\";\n};\n")
                .expect("write");
        } else if f.ends_with("backup.key") {
            std::fs::write(&path, format!("{}\n", "ab".repeat(32))).expect("write");
        } else if f.starts_with("secrets/") {
            std::fs::write(&path, "not-a-real-secret\n").expect("write");
        }
        assert!(path.is_file(), "{f} named by the example does not exist");
    }
    let cfg = dir.path().join("pgdr.toml");
    std::fs::write(&cfg, &text).expect("write");
    let out = pgdr().args(["config", "check", "--config"]).arg(&cfg).output().expect("run pgdr");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok (1 clusters, 3 nodes"), "{stdout}");
}
