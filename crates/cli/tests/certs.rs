//! `pgdr certs init` through the binary: the files and their modes, the
//! `[tls]` lines it prints naming them, a real PostgreSQL serving its
//! `postgres` certificate to a `verify-full` client that trusts only the new
//! CA, never a file overwritten without `--force`, exit code 2 on bad usage.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use pgdr_node::local::{Login, PgTls, StopMode};
use pgdr_node::{LocalPg, PgBinaries, RunAs};

const PGDR: &str = env!("CARGO_BIN_EXE_pgdr");

fn pgdr(args: &[&str]) -> Output {
    Command::new(PGDR).args(args).output().expect("run pgdr")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Stops the server by its postmaster's PID if the test ends early.
struct Server(LocalPg);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(pid) = self.0.postmaster_pid() {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            for _ in 0..200 {
                if nix::sys::signal::kill(pid, None).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn init_makes_a_ca_and_certificates_postgres_serves_and_never_overwrites() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The server's user must reach its data folder and certificate.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let dir = tmp.path().join("tls");
    let d = dir.to_str().expect("utf-8 path");

    // 1. The files, private keys 0600, and the lines to paste naming them.
    let out = pgdr(&["certs", "init", "--dir", d, "--hosts", "localhost,127.0.0.1"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    for part in ["ca", "controller", "agent", "proxy", "client", "postgres"] {
        assert_eq!(mode(&dir.join(format!("{part}.key"))), 0o600, "{part}.key");
        assert_eq!(mode(&dir.join(format!("{part}.crt"))), 0o644, "{part}.crt");
    }
    for want in [
        "[tls]".to_owned(),
        "mode = \"verify-full\"".to_owned(),
        format!("ca = \"{d}/ca.crt\""),
        "client_certs = true".to_owned(),
        format!("controller = {{ cert = \"{d}/controller.crt\", key = \"{d}/controller.key\" }}"),
        format!("agent = {{ cert = \"{d}/agent.crt\", key = \"{d}/agent.key\" }}"),
        format!("proxy = {{ cert = \"{d}/proxy.crt\", key = \"{d}/proxy.key\" }}"),
        format!("client = {{ cert = \"{d}/client.crt\", key = \"{d}/client.key\" }}"),
        format!("tls_cert = \"{d}/proxy.crt\""),
        "require_tls = true".to_owned(),
        format!("ssl_cert_file = '{d}/postgres.crt'"),
        "hostnossl all all all reject".to_owned(),
    ] {
        assert!(t.contains(&want), "output lacks {want:?}:\n{t}");
    }
    assert!(!t.contains("PRIVATE KEY"), "a key was printed:\n{t}");

    // 2. A real PostgreSQL serves the postgres certificate; a client
    // trusting only the new CA verifies it for both names (verify-full).
    let bin = PgBinaries::find(None).expect("PostgreSQL binaries");
    let run_as = RunAs::for_node(None).expect("postgres user");
    run_as.give(&dir.join("postgres.key")).expect("chown key");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let pg = Server(LocalPg::new(bin, tmp.path().join("data"), "127.0.0.1", port, run_as));
    pg.0.initdb("postgres", "certs-test-pw").await.expect("initdb");
    pg.0.write_file("pg_hba.conf", pgdr_node::local::tls_only_hba(&["127.0.0.1/32"]).as_bytes()).expect("hba");
    let q = |f: &str| pgdr_node::local::quote(&dir.join(f).display().to_string());
    pg.0.configure(&[
        ("ssl".into(), "on".into()),
        ("ssl_cert_file".into(), q("postgres.crt")),
        ("ssl_key_file".into(), q("postgres.key")),
    ])
    .expect("configure");
    pg.0.start(Duration::from_secs(60)).await.expect("start");
    let tls = PgTls::new(&dir.join("ca.crt")).expect("ca");
    let login = Login {
        user: "postgres".into(),
        password: Some("certs-test-pw".into()),
        database: "postgres".into(),
        tls: Some(tls.clone()),
    };
    let c = pg.0.connect(&login).await.expect("verify-full against the new CA");
    let ssl: bool =
        c.query_one("select ssl from pg_stat_ssl where pid = pg_backend_pid()", &[]).await.expect("ssl").get(0);
    assert!(ssl);
    drop(c);
    let by_name = format!(
        "host=localhost port={port} user=postgres dbname=postgres password='certs-test-pw'{}",
        tls.libpq_params()
    );
    pgdr_drill::observer::connect(&by_name, "localhost", Duration::from_secs(10)).await.expect("verify-full by name");

    // 3. Run again: refused, exit 2, nothing changed; --force replaces all
    // (a new CA: the old one no longer verifies the new certificate).
    let ca_before = std::fs::read(dir.join("ca.crt")).expect("ca");
    let out = pgdr(&["certs", "init", "--dir", d]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("already exist") && t.contains("--force"), "{t}");
    assert_eq!(std::fs::read(dir.join("ca.crt")).expect("ca"), ca_before, "a refused run changed the CA");
    let out = pgdr(&["certs", "init", "--dir", d, "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_ne!(std::fs::read(dir.join("ca.crt")).expect("ca"), ca_before, "--force kept the old CA");
    assert_eq!(mode(&dir.join("ca.key")), 0o600);

    // 4. Bad usage: exit 2, nothing written.
    let other = tmp.path().join("other");
    let o = other.to_str().expect("utf-8");
    for args in [
        vec!["certs", "init", "--dir", o, "--hosts", "bad host"],
        vec!["certs", "init", "--dir", o, "--hosts", "db1,"],
        vec!["certs", "init"],
        vec!["certs"],
    ] {
        let out = pgdr(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    assert!(!other.exists(), "a refused run wrote {}", other.display());

    pg.0.stop(StopMode::Fast, Duration::from_secs(30)).await.expect("stop");
}
