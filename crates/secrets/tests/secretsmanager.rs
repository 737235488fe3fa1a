//! The `aws-secretsmanager` store against moto's server (`moto_server`,
//! PyPI `moto[server]`, installed by scripts/setup) on loopback. moto stands
//! in for AWS Secrets Manager, a cloud API that cannot be reached here: the
//! requests are the real JSON API, signed with SigV4 (moto does not check
//! signatures, so the signing itself is tested against AWS's published
//! examples in pgdr-sigv4).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgdr_secrets::{SecretKey, SecretValue};

/// moto's server, killed (by PID) and reaped on drop.
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn value(version: u64) -> SecretValue {
    SecretValue {
        username: if version.is_multiple_of(2) { "app_b".into() } else { "app".into() },
        password: format!("not-a-real-password-{version}"),
        host: "127.0.0.1".into(),
        port: 6432,
        dbname: "postgres".into(),
        engine: "postgres".into(),
        version,
        epoch: 1,
        rotated_at: "2026-12-02T18:00:00Z".into(),
    }
}

#[tokio::test]
async fn put_get_and_update_through_the_secrets_manager_api() {
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let child = match Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "SKIPPED: moto_server cannot be started ({e}); install it with scripts/setup or `pip install 'moto[server]'`"
            );
            return;
        }
    };
    let _moto = Moto(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not listen on 127.0.0.1:{port} within 30s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = format!(
        r#"
[[regions]]
name = "west"

[[tiers]]
name = "gold"
rpo = "5s"
rto = "30s"

[[clusters]]
name = "main"
tier = "gold"

[[clusters.nodes]]
name = "w1"
region = "west"
agent = "127.0.0.1:1"
host = "127.0.0.1"
port = 5432

[clusters.secrets]
[[clusters.secrets.roles]]
name = "app"

[[clusters.secrets.stores]]
region = "west"
kind = "aws-secretsmanager"
aws_region = "us-west-2"
endpoint = "http://127.0.0.1:{port}"
allow_http = true
access_key_id = {{ value = "testing" }}
secret_access_key = {{ value = "testing" }}
prefix = "prod/"
"#
    );
    let cfg = pgdr_config::Config::parse(Path::new("/tmp/pgdr.toml"), &text).expect("config");
    let sc = &cfg.clusters[0].secrets.as_ref().expect("secrets").stores[0];
    let store = pgdr_secrets::open_store(&cfg, sc).expect("store");
    assert!(store.describe().contains("aws-secretsmanager") && !store.describe().contains("testing"));
    let key = SecretKey::new("main", "app");
    assert_eq!(store.get(&key).await.expect("get before any put"), None);
    store.put(&key, &value(1)).await.expect("first put creates the secret");
    assert_eq!(store.get(&key).await.expect("get"), Some(value(1)));
    store.put(&key, &value(2)).await.expect("second put adds a version");
    assert_eq!(store.get(&key).await.expect("get"), Some(value(2)));
    // A retried put of the same version (same request token) is harmless.
    store.put(&key, &value(2)).await.expect("retried put");
    assert_eq!(store.get(&key).await.expect("get"), Some(value(2)));

    // An endpoint where nothing listens is reported as unreachable (retryable).
    let dead = text.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:1");
    let cfg = pgdr_config::Config::parse(Path::new("/tmp/pgdr.toml"), &dead).expect("config");
    let sc = &cfg.clusters[0].secrets.as_ref().expect("secrets").stores[0];
    let e = pgdr_secrets::open_store(&cfg, sc).expect("store").get(&key).await.expect_err("nothing listens");
    assert!(e.is_retryable(), "{e}");
}
