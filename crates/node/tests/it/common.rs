//! What the host-layer and agent tests share: the superuser login, guards
//! that stop what a test started, and a backend that outlives its
//! postmaster (for the tests of what a killed postmaster leaves behind).

use std::time::Duration;

use pgdr_node::LocalPg;
use pgdr_node::local::Login;

/// The superuser every test server is initdb'd with.
pub fn login() -> Login {
    Login { user: "postgres".into(), password: Some("secret".into()), database: "postgres".into(), tls: None }
}

/// Stops the server by PID when the test ends, passed or failed.
pub struct PgGuard(pub LocalPg);

impl Drop for PgGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.postmaster_pid() {
            // SIGQUIT: immediate shutdown.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGQUIT);
        }
    }
}

/// Kills the listed processes when the test ends, passed or failed (empty
/// it once they are gone: a PID may be another process's by then).
pub struct KillOnDrop(pub Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Starts a backend of `pg` busy in a `DO` loop: it checks for its
/// postmaster's death only when it waits, and it never waits. Returns the
/// task running it and its PID.
pub async fn busy_backend(
    pg: &LocalPg,
    login: &Login,
) -> (tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>, i32) {
    let busy_client = pg.connect(login).await.expect("connect");
    let busy = tokio::spawn(async move { busy_client.batch_execute("DO $$BEGIN LOOP END LOOP; END$$").await });
    let client = pg.connect(login).await.expect("connect");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows = client
            .query("select pid from pg_stat_activity where query like 'DO $$BEGIN LOOP%'", &[])
            .await
            .expect("pg_stat_activity");
        if let Some(r) = rows.first() {
            return (busy, r.get(0));
        }
        assert!(std::time::Instant::now() < deadline, "the busy backend did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
