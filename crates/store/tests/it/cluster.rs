//! The typed cluster layer: epochs, primary lease, health.

use std::sync::Arc;
use std::time::Duration;

use pgdr_model::{ClusterName, Epoch, NodeName, Role};
use pgdr_store::{ClusterError, ClusterStore, NodeHealth, StateStore, TokioClock, WatchEvent, keys};

use crate::{Time, both, both_threaded};

fn cs(s: Arc<dyn StateStore>) -> ClusterStore {
    ClusterStore::new(s, Arc::new(TokioClock::new()))
}

async fn epochs(s: Arc<dyn StateStore>, _t: Time) {
    let c = cs(s);
    let main = ClusterName::new("main");
    assert_eq!(c.state(&main).await.expect("state"), None);
    let st = c.init(&main, Epoch(1), Some(NodeName::new("n1")), "bootstrap").await.expect("init");
    assert_eq!(st.epoch, Epoch(1));
    let again = c.init(&main, Epoch(7), Some(NodeName::new("n9")), "bootstrap").await.expect("init");
    assert_eq!(again, st, "init keeps an existing state");

    let raised = c.raise_epoch(&main, Epoch(1), Some(NodeName::new("n2")), "failover wf-1").await.expect("raise");
    assert_eq!((raised.epoch, raised.primary.as_ref().map(|p| p.as_str())), (Epoch(2), Some("n2")));
    assert_eq!(c.state(&main).await.expect("state"), Some(raised));
    match c.raise_epoch(&main, Epoch(1), Some(NodeName::new("n3")), "stale").await {
        Err(ClusterError::EpochConflict { current, primary, .. }) => {
            assert_eq!(current, Epoch(2));
            assert_eq!(primary, Some(NodeName::new("n2")));
        }
        other => panic!("a stale raise must conflict, got {other:?}"),
    }
    // A cluster with no state is at epoch 0.
    let other = ClusterName::new("other");
    assert_eq!(c.raise_epoch(&other, Epoch::ZERO, None, "first").await.expect("raise").epoch, Epoch(1));
}
both!(epochs_, epochs);

async fn freeze_gates_automatic_raises(s: Arc<dyn StateStore>, _t: Time) {
    let c = cs(s);
    let main = ClusterName::new("main");
    let other = ClusterName::new("other");
    c.init(&main, Epoch(1), Some(NodeName::new("n1")), "bootstrap").await.expect("init");
    c.init(&other, Epoch(1), Some(NodeName::new("o1")), "bootstrap").await.expect("init");
    assert!(!c.freezes(&main).await.expect("freezes").any());

    // A cluster freeze refuses the automatic raise of that cluster only,
    // in the raise's own transaction, and changes nothing.
    let f = c.freeze(Some(&main), "ops", Some("maintenance")).await.expect("freeze");
    assert_eq!(f.by, "ops");
    let again = c.freeze(Some(&main), "someone-else", None).await.expect("freeze again");
    assert_eq!(again, f, "freezing a frozen cluster keeps who froze it first");
    match c.raise_epoch_unless_frozen(&main, Epoch(1), None, "fence").await {
        Err(e @ ClusterError::Frozen { global: false, .. }) => {
            assert!(e.to_string().contains("refused by rule freeze"), "{e}");
            assert!(e.to_string().contains("ops"), "{e}");
        }
        other => panic!("a frozen cluster must refuse, got {other:?}"),
    }
    assert_eq!(c.state(&main).await.expect("state").map(|s| s.epoch), Some(Epoch(1)));
    let raised = c.raise_epoch_unless_frozen(&other, Epoch(1), None, "fence").await.expect("other is not frozen");
    assert_eq!(raised.epoch, Epoch(2));
    // An operator's change (plain raise_epoch) is not gated.
    assert_eq!(c.raise_epoch(&main, Epoch(1), None, "operator").await.expect("operator").epoch, Epoch(2));

    // The global freeze refuses every cluster.
    c.freeze(None, "ops", None).await.expect("global freeze");
    assert!(c.freezes(&other).await.expect("freezes").global.is_some());
    assert!(matches!(
        c.raise_epoch_unless_frozen(&other, Epoch(2), None, "fence").await,
        Err(ClusterError::Frozen { global: true, .. })
    ));
    assert_eq!(c.unfreeze(None).await.expect("unfreeze").map(|f| f.by), Some("ops".into()));
    assert_eq!(c.unfreeze(None).await.expect("unfreeze twice"), None);
    assert_eq!(c.raise_epoch_unless_frozen(&other, Epoch(2), None, "fence").await.expect("thawed").epoch, Epoch(3));
    assert!(c.unfreeze(Some(&main)).await.expect("unfreeze").is_some());
    assert!(!c.freezes(&main).await.expect("freezes").any());
    assert_eq!(c.raise_epoch_unless_frozen(&main, Epoch(2), None, "fence").await.expect("thawed").epoch, Epoch(3));
}
both!(freeze_gates_automatic_raises_, freeze_gates_automatic_raises);

async fn racing_raise(s: Arc<dyn StateStore>, _t: Time) {
    let c = cs(s);
    let main = ClusterName::new("main");
    c.init(&main, Epoch(5), Some(NodeName::new("n1")), "bootstrap").await.expect("init");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = c.clone();
        let main = main.clone();
        tasks.push(tokio::spawn(async move {
            c.raise_epoch(&main, Epoch(5), Some(NodeName::new(format!("n{i}"))), "race").await
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        match t.await.expect("join") {
            Ok(st) => won.push(st),
            Err(ClusterError::EpochConflict { current, .. }) => assert_eq!(current, Epoch(6)),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one controller raises the epoch");
    assert_eq!(c.state(&main).await.expect("state"), Some(won.remove(0)));
}
both_threaded!(racing_raise_, racing_raise);

async fn primary_lease(s: Arc<dyn StateStore>, t: Time) {
    let c = cs(s.clone());
    let main = ClusterName::new("main");
    let (n1, n2) = (NodeName::new("n1"), NodeName::new("n2"));
    let ttl = Duration::from_secs(5);
    assert!(matches!(c.acquire_primary_lease(&main, &n1, Epoch(1), ttl).await, Err(ClusterError::NotPrimary { .. })));
    c.init(&main, Epoch(1), Some(n1.clone()), "bootstrap").await.expect("init");
    assert!(
        matches!(c.acquire_primary_lease(&main, &n2, Epoch(1), ttl).await, Err(ClusterError::NotPrimary { .. })),
        "only the node the state names may hold the lease"
    );
    let held = c.acquire_primary_lease(&main, &n1, Epoch(1), ttl).await.expect("acquire");
    // The agent restarted and takes its own lease over.
    let held2 = c.acquire_primary_lease(&main, &n1, Epoch(1), ttl).await.expect("re-acquire");
    assert_ne!(held.lease, held2.lease);
    assert!(matches!(c.renew(&held).await, Err(ClusterError::LeaseLost { .. })), "the replaced lease is gone");
    let held = held2;

    let mut w = c.watch(&main).await.expect("watch");
    for _ in 0..3 {
        t.pass(Duration::from_secs(4)).await;
        c.renew(&held).await.expect("renew within the TTL");
    }
    let (info, left) = c.primary_lease(&main).await.expect("lease").expect("held");
    assert_eq!(info.holder, n1.clone());
    t.assert_close(left, ttl, "a renewed lease has its whole TTL left");

    // The agent stops renewing: the lease's expiry is observable.
    let start = tokio::time::Instant::now();
    let ev = w.next().await.expect("watch").expect("event");
    assert_eq!(ev, WatchEvent::Delete { key: keys::cluster_lease("main"), revision: ev.revision() });
    t.assert_close(start.elapsed(), ttl, "the lease expires at its TTL");
    assert_eq!(c.primary_lease(&main).await.expect("lease"), None);
    assert!(matches!(c.renew(&held).await, Err(ClusterError::LeaseLost { .. })));

    // After a failover the new primary takes it; the old one is refused.
    c.raise_epoch(&main, Epoch(1), Some(n2.clone()), "failover").await.expect("raise");
    assert!(matches!(
        c.acquire_primary_lease(&main, &n1, Epoch(1), ttl).await,
        Err(ClusterError::NotPrimary { current_epoch: Epoch(2), .. })
    ));
    let h2 = c.acquire_primary_lease(&main, &n2, Epoch(2), ttl).await.expect("new primary");
    let broken = c.break_primary_lease(&main).await.expect("break").expect("was held");
    assert_eq!(broken.holder, n2);
    assert!(matches!(c.renew(&h2).await, Err(ClusterError::LeaseLost { .. })));
}
both!(primary_lease_, primary_lease);

async fn health(s: Arc<dyn StateStore>, t: Time) {
    let c = cs(s.clone());
    let main = ClusterName::new("main");
    let lease = s.grant_lease(Duration::from_secs(3)).await.expect("grant");
    for (node, role, lease) in [("n1", Role::Primary, None), ("n2", Role::Replica, Some(lease))] {
        let h = NodeHealth {
            cluster: main.clone(),
            node: NodeName::new(node),
            role,
            healthy: true,
            lsn: Some("0/16B3748".parse().expect("lsn")),
            lag: None,
            observer: Some("controller-a".into()),
            message: None,
            observed_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        c.put_health(&h, lease).await.expect("put health");
    }
    let all = c.health(&main).await.expect("health");
    assert_eq!(all.iter().map(|h| h.node.as_str()).collect::<Vec<_>>(), ["n1", "n2"]);
    assert_eq!(all[0].role, Role::Primary);
    t.pass_expiry(Duration::from_secs(3)).await;
    assert_eq!(c.health(&main).await.expect("health").len(), 1, "the leased record went with its lease");
}
both!(health_, health);

#[test]
fn errors_say_what_happened() {
    let e = ClusterError::EpochConflict {
        cluster: ClusterName::new("main"),
        expected: Epoch(3),
        current: Epoch(4),
        primary: Some(NodeName::new("n2")),
    };
    assert_eq!(e.to_string(), "cluster main: expected epoch 3 but it is 4 (primary n2): another controller changed it");
    assert!(!e.is_retryable());
    assert!(ClusterError::Contended { cluster: ClusterName::new("main"), what: "raise_epoch" }.is_retryable());
    assert!(ClusterError::Store(pgdr_store::StoreError::Unavailable("no quorum".into())).is_retryable());
}
