//! `pgdr check` reports an immutable destination whose bucket does not
//! enforce it; `pgdr backup lock` makes the bucket enforce it (S3 Object Lock
//! in COMPLIANCE mode, the tier's retention as the default).
//!
//! The S3 server is moto (`moto_server`, PyPI `moto[server]`) on loopback:
//! it stands in for a cloud's S3 API, which cannot be reached here.

mod common;

use common::free_port;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const PGDR: &str = env!("CARGO_BIN_EXE_pgdr");

/// moto's S3 server, killed (SIGKILL, by PID) and reaped on drop.
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pgdr(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(PGDR).args(args).env_remove("PGDR_CONFIG").output().expect("run pgdr");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn immutable_finding(config: &str) -> Value {
    let (_, out, err) = pgdr(&["--config", config, "check", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("check --json: {e}: {out} {err}"));
    v["findings"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["check"] == "immutable"))
        .cloned()
        .unwrap_or_else(|| panic!("no immutable finding: {v}"))
}

#[test]
fn check_reports_an_unenforced_immutable_bucket_and_lock_enforces_it() {
    let port = free_port();
    let moto = Moto(
        Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto_server ({e}); install it with `pip install 'moto[server]'`")),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not listen on 127.0.0.1:{port} within 30s");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A bucket created with Object Lock enabled, but no default retention yet.
    let st = Command::new("curl")
        .args(["-sf", "-X", "PUT", "-H", "x-amz-bucket-object-lock-enabled: true"])
        .arg(format!("http://127.0.0.1:{port}/vault"))
        .stdout(Stdio::null())
        .status()
        .expect("curl");
    assert!(st.success(), "cannot create the bucket");

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgdr.toml");
    let s3 = |name: &str, immutable: bool| {
        format!(
            r#"
[[destinations]]
name = "{name}"
url = "s3://vault/backups"
endpoint = "http://127.0.0.1:{port}"
allow_http = true
access_key_id = {{ value = "testing" }}
secret_access_key = {{ value = "testing" }}
key = {{ value = "{key}" }}
immutable = {immutable}
"#,
            key = "ab".repeat(32)
        )
    };
    let text = format!(
        r#"
[[regions]]
name = "east"
{vault}{plain}
[[tiers]]
name = "gold"
rpo = "5s"
rto = "30s"
backup = {{ schedule = "0 * * * *", destination = "vault", retain_age = "10d" }}

[[clusters]]
name = "main"
tier = "gold"
[[clusters.nodes]]
name = "n1"
region = "east"
agent = "127.0.0.1:{agent}"
host = "127.0.0.1"
port = {pg}
"#,
        vault = s3("vault", true),
        plain = s3("plain", false),
        agent = free_port(),
        pg = free_port(),
    );
    std::fs::write(&config, text).expect("write config");
    let config = config.display().to_string();

    let f = immutable_finding(&config);
    assert_eq!(f["severity"], "error", "{f}");
    let msg = f["message"].as_str().unwrap_or_default();
    assert!(msg.contains("vault") && msg.contains("does not enforce"), "{f}");
    assert!(f["fix"].as_str().unwrap_or_default().contains("pgdr backup lock --dest vault"), "{f}");

    // Only destinations marked immutable are locked by pgdr.
    let (code, _, err) = pgdr(&["--config", &config, "backup", "lock", "--dest", "plain"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not marked immutable"), "{err}");

    let (code, out, err) = pgdr(&["--config", &config, "backup", "lock", "--dest", "vault"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("COMPLIANCE") && out.contains("10 days"), "the tier's retain_age: {out}");
    let f = immutable_finding(&config);
    assert_eq!(f["severity"], "ok", "{f}");
    drop(moto);
}
