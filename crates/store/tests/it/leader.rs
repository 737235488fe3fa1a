//! One leader among controllers: the election, the term, and a deposed
//! leader (frozen past its lease, then awake) that cannot change anything.

use std::sync::Arc;
use std::time::Duration;

use pgdr_store::{Election, Expect, StateStore, StoreError};
use tokio_util::sync::CancellationToken;

use crate::{Time, both};

async fn deposed_leader_changes_nothing(s: Arc<dyn StateStore>, t: Time) {
    let ttl = Duration::from_secs(3);
    let cancel = CancellationToken::new();
    let a = Election::new(s.clone(), "controller-a", ttl);
    let la = a.campaign(&cancel, |_| {}).await.expect("a leads");
    assert_eq!((la.info.holder.as_str(), la.info.term), ("controller-a", 1));
    let fa = la.fenced();
    fa.put("/pgdr/x", b"a".to_vec(), None).await.expect("the leader writes");
    // A lease the leader keeps alive for someone (a primary's lease), long
    // enough to outlive the leader's own.
    let data = fa.grant_lease(ttl * 10).await.expect("grant");
    fa.keep_alive(data).await.expect("the leader renews it");

    // b waits while a renews.
    let b = Election::new(s.clone(), "controller-b", ttl);
    let mut seen = Vec::new();
    let b_task = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            let l = b.campaign(&cancel, |holder| seen.push(holder.holder.clone())).await;
            (l, seen)
        }
    });
    // A sleep, not a jump of paused time: the leader's renewals (on the
    // blocking pool for the redb store) run in between.
    let _ = t;
    tokio::time::sleep(ttl * 2).await;
    assert!(!b_task.is_finished(), "b must wait while a renews its lease");
    assert_eq!(a.leader().await.expect("leader").map(|l| l.term), Some(1));

    // a freezes (stops renewing, gives nothing up): after its TTL, b leads
    // with the next term.
    la.stop_renewing().await;
    let (lb, seen) = tokio::time::timeout(ttl * 4, b_task).await.expect("b leads in time").expect("join");
    let lb = lb.expect("b leads");
    assert!(seen.iter().all(|h| h == "controller-a"), "b saw a as the holder: {seen:?}");
    assert_eq!((lb.info.holder.as_str(), lb.info.term), ("controller-b", 2));

    // a wakes up: every write it tries is refused in the same transaction,
    // and says who leads now.
    let x = s.get("/pgdr/x").await.expect("get").expect("x");
    match fa.put("/pgdr/x", b"stale".to_vec(), None).await {
        Err(StoreError::Fenced(msg)) => assert!(msg.contains("controller-b (term 2)"), "{msg}"),
        other => panic!("a deposed leader's write must be fenced, got {other:?}"),
    }
    assert!(matches!(
        fa.compare_and_set("/pgdr/x", Expect::Revision(x.revision), b"stale".to_vec(), None).await,
        Err(StoreError::Fenced(_))
    ));
    assert!(matches!(fa.delete("/pgdr/x", Expect::Any).await, Err(StoreError::Fenced(_))));
    assert_eq!(s.get("/pgdr/x").await.expect("get").expect("x").value, b"a", "nothing changed");
    // Nor does it renew anything on the new leader's watch: the renewal is
    // refused after the fact, so nothing is granted on it.
    match fa.keep_alive(data).await {
        Err(StoreError::Fenced(msg)) => assert!(msg.contains("controller-b (term 2)"), "{msg}"),
        other => panic!("a deposed leader's renewal must be fenced, got {other:?}"),
    }
    lb.fenced().keep_alive(data).await.expect("the new leader renews it");
    lb.fenced().put("/pgdr/x", b"b".to_vec(), None).await.expect("the new leader writes");

    // Leadership lost in the store (its lease gone) is noticed.
    let lost = lb.lost();
    assert!(!lost.is_cancelled());
    s.revoke(lb.lease).await.expect("revoke");
    tokio::time::timeout(ttl, lost.cancelled()).await.expect("the leader notices it lost the key");
    assert!(matches!(lb.fenced().put("/pgdr/x", vec![], None).await, Err(StoreError::Fenced(_))));

    // The next election raises the term again.
    let c = Election::new(s.clone(), "controller-c", ttl);
    let lc = c.campaign(&cancel, |_| {}).await.expect("c leads");
    assert_eq!(lc.info.term, 3);
    lc.resign().await.expect("resign");
    assert_eq!(c.leader().await.expect("leader"), None, "resigning frees the key at once");
}
both!(deposed_leader_changes_nothing_, deposed_leader_changes_nothing);

/// A leader hands leadership to one named standby: the standbys announce
/// themselves while they campaign, the chosen one leads next (a new term),
/// the other keeps standing by, and a deposed leader cannot hand over.
async fn leader_hands_over_to_the_named_standby(s: Arc<dyn StateStore>, t: Time) {
    let _ = t;
    let ttl = Duration::from_secs(3);
    let cancel = CancellationToken::new();
    let a = Election::new(s.clone(), "controller-a", ttl).with_instance("a", "west");
    let la = a.campaign(&cancel, |_| {}).await.expect("a leads");
    let spawn = |name: &'static str, region: &'static str| {
        let e = Election::new(s.clone(), format!("controller-{name}"), ttl).with_instance(name, region);
        let cancel = cancel.clone();
        tokio::spawn(async move { e.campaign(&cancel, |_| {}).await })
    };
    let b = spawn("b", "south");
    let c = spawn("c", "east");
    // Both announce themselves while a leads.
    let mut standbys = Vec::new();
    for _ in 0..100 {
        standbys = Election::standbys(s.as_ref()).await.expect("standbys");
        if standbys.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seen: Vec<(String, String)> = standbys.into_iter().map(|i| (i.instance, i.region)).collect();
    seen.sort();
    assert_eq!(seen, [("b".to_owned(), "south".to_owned()), ("c".to_owned(), "east".to_owned())]);

    let fa = la.fenced();
    la.hand_to("c", "east holds the primaries").await.expect("hand over");
    let lc = tokio::time::timeout(ttl, c).await.expect("c leads in time").expect("join").expect("c leads");
    assert_eq!((lc.info.holder.as_str(), lc.info.term), ("controller-c", 2));
    // The leader no longer stands by; b does, and waits.
    let left: Vec<String> =
        Election::standbys(s.as_ref()).await.expect("standbys").into_iter().map(|i| i.instance).collect();
    assert_eq!(left, ["b"]);
    tokio::time::sleep(ttl * 2).await;
    assert!(!b.is_finished(), "b stands by while c leads");
    // a, deposed, can write nothing, not even a handoff.
    assert!(matches!(fa.put("/pgdr/x", vec![], None).await, Err(StoreError::Fenced(_))));
    // A handoff to a standby that never takes it: b campaigns once it expired.
    lc.hand_to("nobody", "test").await.expect("hand over");
    let lb = tokio::time::timeout(ttl * 3, b).await.expect("b leads in time").expect("join").expect("b leads");
    assert_eq!(lb.info.term, 3);
    lb.resign().await.expect("resign");
    cancel.cancel();
}
both!(leader_hands_over_to_the_named_standby_, leader_hands_over_to_the_named_standby);
