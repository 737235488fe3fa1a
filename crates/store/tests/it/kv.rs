//! The low-level trait's semantics, on both stores.

use std::sync::Arc;
use std::time::Duration;

use pgdr_store::{Expect, Outcome, StateStore, StoreError, Txn, TxnOutcome, WatchEvent};

use crate::{Time, both, both_threaded};

async fn put_get_list(s: Arc<dyn StateStore>, _t: Time) {
    let base = s.revision().await.expect("rev");
    assert_eq!(s.get("/a/x").await.expect("get"), None);
    let r1 = s.put("/a/x", b"1".to_vec(), None).await.expect("put");
    assert!(r1 > base, "a put raises the revision");
    let r2 = s.put("/a/y", b"2".to_vec(), None).await.expect("put");
    let r3 = s.put("/ab", b"3".to_vec(), None).await.expect("put");
    assert!(r1 < r2 && r2 < r3, "revisions rise: {r1} {r2} {r3}");
    assert_eq!(s.revision().await.expect("rev"), r3);
    let x = s.get("/a/x").await.expect("get").expect("present");
    assert_eq!((x.value.as_slice(), x.revision, x.lease), (&b"1"[..], r1, None));
    let keys: Vec<String> = s.list("/a/").await.expect("list").into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, ["/a/x", "/a/y"], "prefix /a/ excludes /ab");
    let r4 = s.put("/a/x", b"one".to_vec(), None).await.expect("overwrite");
    assert_eq!(s.get("/a/x").await.expect("get").expect("present").revision, r4);
    assert!(matches!(s.put("", vec![], None).await, Err(StoreError::Invalid(_))));
}
both!(put_get_list_, put_get_list);

async fn compare_and_set(s: Arc<dyn StateStore>, _t: Time) {
    let Outcome::Done(r1) = s.compare_and_set("/k", Expect::Absent, b"a".to_vec(), None).await.expect("cas") else {
        panic!("first create must win");
    };
    match s.compare_and_set("/k", Expect::Absent, b"b".to_vec(), None).await.expect("cas") {
        Outcome::Conflict(Some(cur)) => assert_eq!((cur.value, cur.revision), (b"a".to_vec(), r1)),
        other => panic!("second create must conflict, got {other:?}"),
    }
    assert!(
        !s.compare_and_set("/k", Expect::Revision(r1 + 100), b"c".to_vec(), None).await.expect("cas").is_done(),
        "wrong revision conflicts"
    );
    let Outcome::Done(r2) = s.compare_and_set("/k", Expect::Revision(r1), b"c".to_vec(), None).await.expect("cas")
    else {
        panic!("right revision wins");
    };
    assert!(r2 > r1);
    assert!(matches!(
        s.compare_and_set("/absent", Expect::Revision(r1), b"x".to_vec(), None).await.expect("cas"),
        Outcome::Conflict(None)
    ));
    assert!(!s.delete("/k", Expect::Revision(r1)).await.expect("delete").is_done(), "stale delete conflicts");
    assert!(s.delete("/k", Expect::Revision(r2)).await.expect("delete").is_done());
    assert_eq!(s.get("/k").await.expect("get"), None);
    let before = s.revision().await.expect("rev");
    assert_eq!(
        s.delete("/k", Expect::Any).await.expect("delete"),
        Outcome::Done(before),
        "deleting nothing changes nothing"
    );
}
both!(compare_and_set_, compare_and_set);

async fn transactions(s: Arc<dyn StateStore>, _t: Time) {
    s.put("/t/a", b"a".to_vec(), None).await.expect("put");
    let before = s.revision().await.expect("rev");
    let failing = Txn::new().check("/t/a", Expect::Absent).put("/t/b", b"b".to_vec(), None).delete("/t/a");
    match s.txn(failing).await.expect("txn") {
        TxnOutcome::Conflict { key, current } => {
            assert_eq!(key, "/t/a");
            assert_eq!(current.map(|c| c.value), Some(b"a".to_vec()));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(s.revision().await.expect("rev"), before, "a failed txn changes nothing");
    assert_eq!(s.get("/t/b").await.expect("get"), None);
    let ok = Txn::new()
        .check("/t/b", Expect::Absent)
        .put("/t/b", b"b".to_vec(), None)
        .put("/t/c", b"c".to_vec(), None)
        .delete("/t/a");
    let TxnOutcome::Done(rev) = s.txn(ok).await.expect("txn") else { panic!("txn should apply") };
    assert_eq!(rev, before + 1, "one txn, one revision");
    let b = s.get("/t/b").await.expect("get").expect("b");
    let c = s.get("/t/c").await.expect("get").expect("c");
    assert_eq!((b.revision, c.revision), (rev, rev));
    assert_eq!(s.get("/t/a").await.expect("get"), None);
    let TxnOutcome::Done(_) = s.txn(Txn::new().delete_prefix("/t/")).await.expect("txn") else { panic!() };
    assert!(s.list("/t/").await.expect("list").is_empty());
}
both!(transactions_, transactions);

async fn leases(s: Arc<dyn StateStore>, t: Time) {
    assert!(matches!(s.grant_lease(Duration::ZERO).await, Err(StoreError::Invalid(_))));
    let lease = s.grant_lease(Duration::from_secs(10)).await.expect("grant");
    s.put("/l/held", b"x".to_vec(), Some(lease)).await.expect("put");
    s.put("/l/moved", b"x".to_vec(), Some(lease)).await.expect("put");
    // Re-writing a key without the lease detaches it.
    s.put("/l/moved", b"y".to_vec(), None).await.expect("put");
    s.put("/l/plain", b"x".to_vec(), None).await.expect("put");
    assert_eq!(s.get("/l/held").await.expect("get").expect("held").lease, Some(lease));

    t.pass(Duration::from_secs(6)).await;
    s.keep_alive(lease).await.expect("keep alive within the TTL");
    t.pass(Duration::from_secs(6)).await;
    assert!(s.get("/l/held").await.expect("get").is_some(), "kept alive 6 s ago with a 10 s TTL");
    let left = s.lease_remaining(lease).await.expect("remaining").expect("alive");
    t.assert_close(left, Duration::from_secs(4), "what is left of the lease");

    t.pass_expiry(Duration::from_secs(4)).await;
    assert_eq!(s.get("/l/held").await.expect("get"), None, "gone once the TTL passed");
    assert_eq!(s.lease_remaining(lease).await.expect("remaining"), None);
    assert!(matches!(s.keep_alive(lease).await, Err(StoreError::LeaseExpired(l)) if l == lease));
    assert!(matches!(s.put("/l/late", vec![], Some(lease)).await, Err(StoreError::LeaseExpired(_))));
    assert!(s.get("/l/moved").await.expect("get").is_some(), "detached key stays");
    assert!(s.get("/l/plain").await.expect("get").is_some());

    let l2 = s.grant_lease(Duration::from_secs(60)).await.expect("grant");
    assert_ne!(l2, lease);
    s.put("/l/r", vec![], Some(l2)).await.expect("put");
    s.revoke(l2).await.expect("revoke");
    assert_eq!(s.get("/l/r").await.expect("get"), None, "revoke deletes the lease's keys");
    s.revoke(l2).await.expect("revoking twice is fine");
}
both!(leases_, leases);

async fn watches(s: Arc<dyn StateStore>, t: Time) {
    s.put("/w/before", vec![], None).await.expect("put");
    let mut w = s.watch("/w/").await.expect("watch");
    assert_eq!(w.start_revision(), s.revision().await.expect("rev"));
    let r1 = s.put("/w/a", b"1".to_vec(), None).await.expect("put");
    s.put("/other", vec![], None).await.expect("put");
    let Outcome::Done(r2) = s.delete("/w/a", Expect::Any).await.expect("delete") else { panic!() };
    let lease = s.grant_lease(Duration::from_secs(3)).await.expect("grant");
    let r3 = s.put("/w/leased", vec![], Some(lease)).await.expect("put");

    let e1 = w.next().await.expect("next").expect("event");
    assert!(
        matches!(&e1, WatchEvent::Put { key, value } if key == "/w/a" && value.revision == r1 && value.value == b"1")
    );
    assert_eq!(w.next().await.expect("next"), Some(WatchEvent::Delete { key: "/w/a".into(), revision: r2 }));
    assert_eq!(w.next().await.expect("next").map(|e| e.revision()), Some(r3));
    // Nobody touches the store: the reaper expires the lease on time and the
    // watcher sees the delete (paused time advances to the deadline).
    let start = tokio::time::Instant::now();
    let e = w.next().await.expect("next").expect("expiry event");
    assert!(matches!(&e, WatchEvent::Delete { key, revision } if key == "/w/leased" && *revision > r3));
    t.assert_close(start.elapsed(), Duration::from_secs(3), "expired at the TTL");
}
both!(watches_, watches);

async fn racing_cas(s: Arc<dyn StateStore>, _t: Time) {
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { s.compare_and_set("/race", Expect::Absent, vec![i], None).await }));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await.expect("join").expect("cas").is_done() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "exactly one creator wins");
    let base = s.get("/race").await.expect("get").expect("present").revision;
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let s = s.clone();
        tasks
            .push(tokio::spawn(async move { s.compare_and_set("/race", Expect::Revision(base), vec![i], None).await }));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await.expect("join").expect("cas").is_done() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "exactly one updater of revision {base} wins");
}
both_threaded!(racing_cas_, racing_cas);

/// A read that follows a write sees it, while other tasks read the same
/// keys all along (the embedded store answers repeated reads from a cache
/// that every write updates before it returns).
async fn reads_follow_writes(s: Arc<dyn StateStore>, _t: Time) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (s, stop) = (s.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for k in 0..4u8 {
                    s.get(&format!("/rf/{k}")).await.expect("get");
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut writers = Vec::new();
    for k in 0..4u8 {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            let key = format!("/rf/{k}");
            for i in 0..40u32 {
                let v = i.to_le_bytes().to_vec();
                let rev = s.put(&key, v.clone(), None).await.expect("put");
                let got = s.get(&key).await.expect("get").expect("present");
                assert_eq!((got.value, got.revision), (v, rev), "{key}: the read after write {i}");
                if i % 10 == 9 {
                    s.delete(&key, Expect::Any).await.expect("delete");
                    assert_eq!(s.get(&key).await.expect("get"), None, "{key}: the read after delete {i}");
                }
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.await.expect("reader");
    }
}
both_threaded!(reads_follow_writes_, reads_follow_writes);
