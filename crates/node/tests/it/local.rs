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
    let login = Login { user: "postgres".into(), password: Some("secret".into()), database: "postgres".into() };
    let client = pg.connect(&login).await.expect("connect");
    let row = client.query_one("select 40 + 2", &[]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 42);
    let bad = Login { password: Some("wrong".into()), ..login };
    assert!(pg.connect(&bad).await.is_err(), "a wrong password must be refused");
    pg.stop(StopMode::Fast, Duration::from_secs(30)).await.expect("stop");
    assert!(!pg.is_running().await);
    pg.stop(StopMode::Fast, Duration::from_secs(30)).await.expect("stop again is a no-op");
}
