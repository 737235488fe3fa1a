use std::time::Duration;

use pgdr_node::local::{Login, StopMode};
use pgdr_node::{LocalPg, PgBinaries, RunAs};

use crate::common::{KillOnDrop, PgGuard, busy_backend, login};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// A server's folder in /tmp, open to the server's user, and the server,
/// initdb'd with the superuser `postgres` (password `secret`).
async fn initdb() -> (tempfile::TempDir, LocalPg) {
    let bin = PgBinaries::find(None).expect("PostgreSQL binaries");
    let dir = tempfile::Builder::new().prefix("pgdr-node-").tempdir_in("/tmp").expect("tempdir");
    std::process::Command::new("chmod").arg("755").arg(dir.path()).status().expect("chmod");
    let run_as = RunAs::for_node(None).expect("run as");
    let pg = LocalPg::new(bin, dir.path().join("data"), "127.0.0.1", free_port(), run_as);
    pg.initdb("postgres", "secret").await.expect("initdb");
    (dir, pg)
}

/// [`initdb`], started (fsync off), stopped by PID when the test ends.
async fn started() -> (tempfile::TempDir, LocalPg, PgGuard) {
    let (dir, pg) = initdb().await;
    let guard = PgGuard(pg.clone());
    pg.configure(&[("fsync".into(), "off".into())]).expect("configure");
    pg.start(Duration::from_secs(30)).await.expect("start");
    (dir, pg, guard)
}

#[tokio::test]
async fn initdb_start_query_stop() {
    let (_dir, pg) = initdb().await;
    pg.configure(&[("fsync".into(), "off".into())]).expect("configure");
    pg.start(Duration::from_secs(30)).await.expect("start");
    pg.start(Duration::from_secs(30)).await.expect("start again is a no-op");
    let login = login();
    let client = pg.connect(&login).await.expect("connect");
    let row = client.query_one("select 40 + 2", &[]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 42);
    let bad = Login { password: Some("wrong".into()), ..login };
    assert!(pg.connect(&bad).await.is_err(), "a wrong password must be refused");
    pg.stop(StopMode::Fast, Duration::from_secs(30)).await.expect("stop");
    assert!(!pg.is_running().await);
    pg.stop(StopMode::Fast, Duration::from_secs(30)).await.expect("stop again is a no-op");
}

/// The agent (often root) writes into a data directory the server's user
/// controls: links planted there are replaced, never followed, and a
/// setting's value cannot add a line of its own to postgresql.conf.
#[tokio::test]
async fn planted_links_and_hostile_setting_values() {
    use std::os::unix::fs::symlink;
    let (dir, pg) = initdb().await;
    let _guard = PgGuard(pg.clone());

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
    let login = login();
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

/// A postmaster killed alone (the kill-primary drill) leaves a backend
/// busy in a loop running, holding the old shared memory: `start` stops
/// it and the server comes up. While the postmaster lives, its backends
/// are never touched.
#[tokio::test]
async fn start_stops_what_a_killed_postmaster_left_behind() {
    use pgdr_node::local::pid_alive;
    let (_dir, pg, _guard) = started().await;
    let login = login();

    let (busy, backend) = busy_backend(&pg, &login).await;
    let mut kill = KillOnDrop(vec![backend]);

    // A live postmaster's backends are not leftovers.
    assert_eq!(pg.stop_leftovers().await, Vec::<i32>::new());
    assert!(pid_alive(backend), "a live postmaster's backend was stopped");

    let postmaster = pg.postmaster_pid().expect("postmaster.pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(postmaster), nix::sys::signal::Signal::SIGKILL)
        .expect("kill the postmaster");
    // Gone, not only dead: the new postmaster refuses a lock file naming a
    // PID that still exists, and a zombie does until its parent (PID 1)
    // reaps it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(postmaster), None).is_ok() {
        assert!(std::time::Instant::now() < deadline, "the postmaster was not reaped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pid_alive(backend), "the busy backend {backend} outlives its postmaster (what start must clean up)");

    pg.start(Duration::from_secs(30)).await.expect("start after the postmaster was killed");
    assert!(!pid_alive(backend), "the leftover backend {backend} is still alive after start");
    kill.0.clear();
    assert_ne!(pg.postmaster_pid(), Some(postmaster));
    let client = pg.connect(&login).await.expect("connect to the new server");
    let row = client.query_one("select 40 + 2", &[]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 42);
    busy.abort();
    pg.stop(StopMode::Fast, Duration::from_secs(30)).await.expect("stop");
}

/// `start` called right after the postmaster was killed with SIGKILL,
/// while it is still exiting or a zombie its parent has not reaped: the
/// old `start` took an exiting postmaster for a running server (and did
/// nothing), and a new postmaster refuses a lock file naming a zombie's
/// PID ("lock file postmaster.pid already exists"). `start` waits for the
/// reap first.
///
/// Realistic parenthood: pg_ctl exits once the server is up, so the
/// postmaster is an orphan, reaped by init (on this host a process that
/// does so every second or two) or by a subreaper. This test makes itself
/// that subreaper (each test runs in its own process under nextest) and
/// reaps the killed postmaster only after a delay, as a slow init does;
/// the process that calls `start` is never its parent.
#[tokio::test]
async fn start_right_after_the_postmaster_is_killed() {
    nix::sys::prctl::set_child_subreaper(true).expect("become a subreaper");
    let (_dir, pg, _guard) = started().await;
    let login = login();
    let client = pg.connect(&login).await.expect("connect");
    client.batch_execute("create table t (x int); insert into t values (1)").await.expect("write");
    drop(client);
    // At once, while the postmaster is still exiting; once it is a
    // zombie; once it is a zombie and postmaster.pid is gone (as after
    // pg_rewind or a restore), when the socket's lock file still names it.
    for (zombie, remove_pid_file) in [(false, false), (true, false), (true, true)] {
        kill_and_start(&pg, zombie, remove_pid_file).await;
        let client = pg.connect(&login).await.expect("connect to the new server");
        let row = client.query_one("select count(*) from t", &[]).await.expect("query");
        assert_eq!(row.get::<_, i64>(0), 1);
    }
    pg.stop(StopMode::Fast, Duration::from_secs(30)).await.expect("stop");
}

/// SIGKILLs `pg`'s postmaster, reaped by this process (its subreaper) 1.5 s
/// later, and starts `pg` at once, or once the postmaster is a zombie
/// (and its postmaster.pid removed).
async fn kill_and_start(pg: &LocalPg, zombie: bool, remove_pid_file: bool) {
    use nix::sys::signal::{Signal, kill};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::Pid;
    let postmaster = pg.postmaster_pid().expect("postmaster.pid");
    assert_eq!(
        pgdr_node::leftover::parent(postmaster),
        Some(std::process::id() as i32),
        "the postmaster is an orphan of pg_ctl, adopted by this subreaper"
    );
    // The slow init: reaps the killed postmaster 1.5 s after the kill, and
    // says when.
    let reaper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            match waitpid(Pid::from_raw(postmaster), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
                Ok(_) => return Some(std::time::Instant::now()),
                Err(_) => return None,
            }
        }
        None
    });
    kill(Pid::from_raw(postmaster), Signal::SIGKILL).expect("kill the postmaster");
    if zombie {
        let stat = format!("/proc/{postmaster}/stat");
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while !std::fs::read_to_string(&stat)
            .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.starts_with(" Z")))
        {
            assert!(std::time::Instant::now() < deadline, "the killed postmaster did not become a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if remove_pid_file {
        std::fs::remove_file(pg.data_dir.join("postmaster.pid")).expect("remove postmaster.pid");
    }
    // Still there: the window `start` must get through.
    assert!(kill(Pid::from_raw(postmaster), None).is_ok(), "the killed postmaster is already gone");
    pg.start(Duration::from_secs(30)).await.expect("start right after the postmaster was killed");
    let started = std::time::Instant::now();
    // A new server, not the dying one taken for running.
    assert_ne!(pg.postmaster_pid(), Some(postmaster), "start took the killed postmaster for a running server");
    let reaped = reaper.join().expect("reaper").expect("the killed postmaster was reaped");
    assert!(reaped <= started, "start returned before the old postmaster was reaped");
}
