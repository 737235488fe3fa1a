use std::time::Duration;

use pgdr_node::local::{Login, StopMode};
use pgdr_node::{LocalPg, PgBinaries, RunAs};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

#[tokio::test]
async fn initdb_start_query_stop() {
    let bin = PgBinaries::find(None).expect("PostgreSQL binaries");
    let dir = tempfile::Builder::new().prefix("pgdr-node-").tempdir_in("/tmp").expect("tempdir");
    let run_as = RunAs::for_node(None).expect("run as");
    if let Some(user) = run_as.name() {
        // The temp dir is ours; let the server's user in.
        std::process::Command::new("chmod").arg("755").arg(dir.path()).status().expect("chmod");
        let _ = user;
    }
    let pg = LocalPg::new(bin, dir.path().join("data"), "127.0.0.1", free_port(), run_as);
    pg.initdb("postgres", "secret").await.expect("initdb");
    pg.configure(&[("fsync".into(), "off".into())]).expect("configure");
    pg.start(Duration::from_secs(30)).await.expect("start");
    pg.start(Duration::from_secs(30)).await.expect("start again is a no-op");
    let login =
        Login { user: "postgres".into(), password: Some("secret".into()), database: "postgres".into(), tls: None };
    let client = pg.connect(&login).await.expect("connect");
    let row = client.query_one("select 40 + 2", &[]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 42);
    let bad = Login { password: Some("wrong".into()), ..login };
    assert!(pg.connect(&bad).await.is_err(), "a wrong password must be refused");
    pg.stop(StopMode::Fast, Duration::from_secs(30)).await.expect("stop");
    assert!(!pg.is_running().await);
    pg.stop(StopMode::Fast, Duration::from_secs(30)).await.expect("stop again is a no-op");
}

/// Stops the server by PID when the test ends, passed or failed.
struct PgGuard(LocalPg);

impl Drop for PgGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.postmaster_pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGQUIT);
        }
    }
}

/// The agent (often root) writes into a data directory the server's user
/// controls: links planted there are replaced, never followed, and a
/// setting's value cannot add a line of its own to postgresql.conf.
#[tokio::test]
async fn planted_links_and_hostile_setting_values() {
    use std::os::unix::fs::symlink;
    let bin = PgBinaries::find(None).expect("PostgreSQL binaries");
    let dir = tempfile::Builder::new().prefix("pgdr-node-").tempdir_in("/tmp").expect("tempdir");
    std::process::Command::new("chmod").arg("755").arg(dir.path()).status().expect("chmod");
    let run_as = RunAs::for_node(None).expect("run as");
    let pg = LocalPg::new(bin, dir.path().join("data"), "127.0.0.1", free_port(), run_as);
    let _guard = PgGuard(pg.clone());
    pg.initdb("postgres", "secret").await.expect("initdb");

    // A file outside the data directory the links point at.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").expect("write");
    for name in ["pgdr.conf", "standby.signal", "pgdr-upstream.conf"] {
        symlink(&victim, pg.data_dir.join(name)).expect("symlink");
    }
    symlink(&victim, pg.passfile()).expect("symlink");

    // A value with a quote, a backslash and a line break that would set
    // another parameter if written as is.
    let hostile = "a'b\\c\nlisten_addresses = '*'";
    let settings = vec![("fsync".to_owned(), "off".to_owned()), ("pgdr.probe".to_owned(), hostile.to_owned())];
    pg.configure(&settings).expect("configure");
    pg.write_passfile(Some("secret")).expect("passfile");
    let upstream = pgdr_node::replica::Upstream { host: "127.0.0.1".into(), port: 1, slot: Some("s".into()) };
    pg.write_standby_config(&upstream, "postgres", "n1", None).expect("standby config");
    std::fs::remove_file(pg.data_dir.join("standby.signal")).expect("not a replica");
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious\n", "a planted link was followed");
    for name in ["pgdr.conf", "standby.signal", "pgdr-upstream.conf"] {
        let p = pg.data_dir.join(name);
        if p.exists() {
            assert!(std::fs::symlink_metadata(&p).expect("meta").file_type().is_file(), "{name} is still a link");
        }
    }

    // A bad setting name is refused.
    assert!(pg.configure(&[("fsync = off\nport".to_owned(), "1".to_owned())]).is_err());
    pg.configure(&settings).expect("configure");

    pg.start(Duration::from_secs(30)).await.expect("start");
    let login =
        Login { user: "postgres".into(), password: Some("secret".into()), database: "postgres".into(), tls: None };
    let client = pg.connect(&login).await.expect("connect");
    let got: String = client.query_one("show pgdr.probe", &[]).await.expect("show").get(0);
    assert_eq!(got, hostile, "the server reads back exactly the value written");
    let listen: String = client.query_one("show listen_addresses", &[]).await.expect("show").get(0);
    assert_eq!(listen, "127.0.0.1");
    pg.stop(StopMode::Fast, Duration::from_secs(30)).await.expect("stop");

    // postgresql.conf itself replaced by a link: refused, target untouched.
    let conf = pg.data_dir.join("postgresql.conf");
    std::fs::rename(&conf, dir.path().join("postgresql.conf.real")).expect("move");
    symlink(&victim, &conf).expect("symlink");
    let err = pg.configure(&settings).expect_err("a linked postgresql.conf is refused");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious\n");
}
