//! The event log: ordered, bounded, safe with concurrent appenders.

use std::sync::Arc;

use pgdr_model::{ClusterName, Epoch};
use pgdr_store::{Event, EventLog, StateStore, keys};
use time::macros::datetime;

use crate::{Time, both, both_threaded};

fn ev(i: u64) -> Event {
    let mut e = Event::new(ClusterName::new("main"), "started", datetime!(2026-01-01 00:00 UTC));
    e.step = Some(format!("step-{i}"));
    e.epoch = Some(Epoch(3));
    e
}

async fn ordered_and_bounded(s: Arc<dyn StateStore>, _t: Time) {
    let log = EventLog::new(s.clone(), 5);
    for i in 1..=8 {
        assert_eq!(log.append(&ev(i)).await.expect("append"), i);
    }
    let all = log.list(None, 100).await.expect("list");
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5, 6, 7, 8].map(Some), "only the newest 5 are kept");
    assert_eq!(all[0].step.as_deref(), Some("step-4"));
    let after = log.list(Some(6), 100).await.expect("list");
    assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [Some(7), Some(8)]);
    assert_eq!(log.list(None, 2).await.expect("list").len(), 2);
    assert_eq!(log.tail(2).await.expect("tail").iter().map(|e| e.seq).collect::<Vec<_>>(), [Some(7), Some(8)]);

    let smaller = EventLog::new(s.clone(), 2);
    assert_eq!(smaller.trim().await.expect("trim"), 3);
    assert_eq!(s.list(keys::EVENTS_LOG).await.expect("list").len(), 2);

    // The JSON webhooks get.
    let json = serde_json::to_value(&all[0]).expect("json");
    assert_eq!(json["cluster"], "main");
    assert_eq!(json["state"], "started");
    assert_eq!(json["epoch"], 3);
    assert_eq!(json["at"], "2026-01-01T00:00:00Z");
    assert!(json.get("workflow").is_some(), "every documented field is present, null when unknown");
}
both!(ordered_and_bounded_, ordered_and_bounded);

async fn concurrent_appenders(s: Arc<dyn StateStore>, _t: Time) {
    let log = EventLog::new(s, 1000);
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..10 {
                seqs.push(log.append(&ev(t * 100 + i)).await.expect("append"));
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.expect("join"));
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>(), "distinct, gap-free sequence numbers");
    assert_eq!(log.list(None, 100).await.expect("list").len(), 40);
}
both_threaded!(concurrent_appenders_, concurrent_appenders);
