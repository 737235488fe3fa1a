//! The redb store survives a restart: values, revisions and leases.

use std::sync::Arc;
use std::time::Duration;

use pgdr_store::{EmbeddedStore, StateStore, TokioClock};
use time::macros::datetime;
use tokio::time::advance;

/// Opens the store at `path` again once the one before let go of the file:
/// a dropped store's lease reaper may still be finishing a write on the
/// blocking pool, holding the database until it returns (a restarted
/// process has no such leftover; only a reopen in one process does).
async fn reopen(path: &std::path::Path, clock: &Arc<TokioClock>) -> EmbeddedStore {
    for _ in 0..300 {
        match EmbeddedStore::open_with_clock(path, clock.clone()).await {
            Ok(s) => return s,
            Err(e) if e.to_string().contains("already open") => {
                // A real pause, off the runtime's thread, so the reaper's
                // task can end; paused tokio time does not move meanwhile.
                tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(10))).await.expect("sleep");
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
    panic!("{} stayed locked for 3 s after its store was dropped", path.display());
}

#[tokio::test(start_paused = true)]
async fn values_and_revisions_survive_reopen() {
    let dir = crate::tempdir();
    let path = dir.path().join("state.redb");
    let rev = {
        let s = EmbeddedStore::open(&path).await.expect("open");
        s.put("/p/a", b"kept".to_vec(), None).await.expect("put");
        s.put("/p/b", b"kept too".to_vec(), None).await.expect("put")
    };
    let s = EmbeddedStore::open(&path).await.expect("reopen");
    assert_eq!(s.revision().await.expect("rev"), rev);
    assert_eq!(s.get("/p/a").await.expect("get").expect("a").value, b"kept");
    assert_eq!(s.list("/p/").await.expect("list").len(), 2);
    assert!(s.put("/p/c", vec![], None).await.expect("put") > rev, "revisions continue after a restart");
}

#[tokio::test(start_paused = true)]
async fn second_open_of_the_same_file_is_a_clear_error() {
    let dir = crate::tempdir();
    let path = dir.path().join("state.redb");
    let _s = EmbeddedStore::open(&path).await.expect("open");
    let err = EmbeddedStore::open(&path).await.expect_err("file is in use");
    assert!(err.to_string().contains("state.redb"), "names the file: {err}");
}

#[tokio::test(start_paused = true)]
async fn leases_keep_their_remaining_ttl_across_reopen() {
    let dir = crate::tempdir();
    let path = dir.path().join("state.redb");
    // A wall clock that follows paused tokio time, so "time passing while
    // the store is closed" is deterministic.
    let clock = Arc::new(TokioClock::starting_at(datetime!(2026-01-01 00:00 UTC)));
    let (short, long) = {
        let s = EmbeddedStore::open_with_clock(&path, clock.clone()).await.expect("open");
        let short = s.grant_lease(Duration::from_secs(10)).await.expect("grant");
        let long = s.grant_lease(Duration::from_secs(60)).await.expect("grant");
        s.put("/l/short", vec![], Some(short)).await.expect("put");
        s.put("/l/long", vec![], Some(long)).await.expect("put");
        (short, long)
    };
    // 20 s pass with nobody holding the file.
    advance(Duration::from_secs(20)).await;
    let s = reopen(&path, &clock).await;
    assert_eq!(s.get("/l/short").await.expect("get"), None, "expired while the store was closed");
    assert_eq!(s.lease_remaining(short).await.expect("remaining"), None);
    // What was left (40 s), and at most one TTL more: the file keeps the
    // deadline one TTL ahead so that keep-alives need not write it each time.
    let left = s.lease_remaining(long).await.expect("remaining").expect("alive");
    assert!(left >= Duration::from_secs(40) && left <= Duration::from_secs(100), "{left:?}");
    s.keep_alive(long).await.expect("the long lease is still alive");
    let next = s.grant_lease(Duration::from_secs(1)).await.expect("grant");
    assert!(next.0 > long.0, "lease ids are not reused after a restart");
    advance(Duration::from_secs(61)).await;
    assert_eq!(s.get("/l/long").await.expect("get"), None);
}

/// The stored deadline is never earlier than the one the store gave its
/// holder, even when keep-alives did not write it: a store reopened right
/// after a crash must not end a lease its holder still counts on.
#[tokio::test(start_paused = true)]
async fn a_lease_renewed_without_a_write_still_outlives_a_reopen() {
    let dir = crate::tempdir();
    let path = dir.path().join("state.redb");
    let clock = Arc::new(TokioClock::starting_at(datetime!(2026-01-01 00:00 UTC)));
    let lease = {
        let s = EmbeddedStore::open_with_clock(&path, clock.clone()).await.expect("open");
        let lease = s.grant_lease(Duration::from_secs(10)).await.expect("grant");
        s.put("/l/held", vec![], Some(lease)).await.expect("put");
        // Renewals every 3 s for a minute: the holder is told its lease runs
        // until the last renewal + 10 s.
        for _ in 0..20 {
            advance(Duration::from_secs(3)).await;
            s.keep_alive(lease).await.expect("renew");
            let left = s.lease_remaining(lease).await.expect("remaining").expect("alive");
            assert_eq!(left, Duration::from_secs(10), "a keep-alive gives a full TTL");
        }
        lease
    };
    // The store stops right after the last renewal; 9 s later it is back.
    advance(Duration::from_secs(9)).await;
    let s = reopen(&path, &clock).await;
    let left = s.lease_remaining(lease).await.expect("remaining");
    assert!(left.is_some_and(|l| l >= Duration::from_secs(1)), "the holder was promised 1 s more: {left:?}");
    assert!(s.get("/l/held").await.expect("get").is_some());
    // And it does end: at most one TTL past what the holder was promised.
    advance(Duration::from_secs(12)).await;
    assert_eq!(s.get("/l/held").await.expect("get"), None);
}
