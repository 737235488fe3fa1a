//! TLS on the proxy's leg to PostgreSQL (issue 15): with the cluster's CA,
//! every backend connection starts TLS and verifies the server's
//! certificate for the backend's host name (pooled and session mode);
//! a server whose certificate another CA signed is refused with a clear
//! error.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use pgdr_proxy::Settings;
use pgdr_tls::ca::Authority;

use crate::harness::{Proxy, Servers, auto_auth};

/// Turns TLS on in the primary with a certificate for 127.0.0.1 signed by
/// `ca`; returns the CA file's path.
async fn tls_on(servers: &Servers, ca: &Authority) -> std::path::PathBuf {
    let issued = ca.issue("127.0.0.1", &["127.0.0.1".to_owned()]).expect("issue");
    let data = &servers.primary.data_dir;
    let (crt, key) = (data.join("server.crt"), data.join("server.key"));
    std::fs::write(&crt, &issued.cert_pem).expect("cert");
    std::fs::write(&key, &issued.key_pem).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let owner = std::process::Command::new("stat").args(["-c", "%U"]).arg(data).output().expect("stat");
    let owner = String::from_utf8_lossy(&owner.stdout).trim().to_owned();
    std::process::Command::new("chown").arg(&owner).arg(&crt).arg(&key).status().expect("chown");
    let admin = Servers::admin(&servers.primary).await;
    admin.batch_execute("ALTER SYSTEM SET ssl = on").await.expect("ssl on");
    admin.batch_execute("SELECT pg_reload_conf()").await.expect("reload");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ca_file = servers.dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca.cert_pem()).expect("ca");
    ca_file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_speaks_tls_to_postgresql_and_verifies_it() {
    let servers = Servers::start(false).await;
    let ca = Authority::generate("pgdr test CA").expect("ca");
    let ca_file = tls_on(&servers, &ca).await;
    let client_tls = pgdr_tls::client_config(&ca_file, None).expect("client config");
    for pool in [pgdr_config::PoolMode::Transaction, pgdr_config::PoolMode::Session] {
        let settings = Settings { pool, backend_tls: Some(client_tls.clone()), ..Settings::default() };
        let proxy = Proxy::start(servers.routing(), auto_auth(), settings).await;
        let c = proxy.connect().await;
        for _ in 0..3 {
            let ssl: bool =
                c.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.expect("ssl").get(0);
            assert!(ssl, "{pool:?}: the backend connection is not TLS");
        }
    }

    // Another CA's certificate: refused, and the client is told why.
    let other = Authority::generate("another CA").expect("other ca");
    let other_file = servers.dir.path().join("other.crt");
    std::fs::write(&other_file, other.cert_pem()).expect("other ca file");
    let settings = Settings {
        backend_tls: Some(pgdr_tls::client_config(&other_file, None).expect("config")),
        ..Settings::default()
    };
    let proxy = Proxy::start(servers.routing(), auto_auth(), settings).await;
    let e = match proxy.connect_result().await {
        Ok(c) => c.simple_query("SELECT 1").await.expect_err("an unverified server"),
        Err(e) => e,
    };
    let msg = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| format!("{e:?}"));
    assert!(msg.contains("TLS") && msg.contains("certificate"), "{msg}");
}
