//! The overlap checker against real servers: a read-only setting does not
//! hide a writable server, a stopped one is unreachable, and two writable
//! servers at once are an overlap.

use std::time::Duration;

use pgdr_drill::writable::{Answer, WritableProbe};
use pgdr_node::local::StopMode;

use crate::checker::start_pg;

#[tokio::test]
async fn two_writable_servers_are_an_overlap_even_when_one_is_read_only() {
    let dir = tempfile::Builder::new().prefix("pgdr-drill-").tempdir_in("/tmp").expect("tempdir");
    std::fs::create_dir_all(dir.path().join("a")).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("b")).expect("mkdir");
    let (a, login) = start_pg(&dir.path().join("a")).await;
    let (b, _) = start_pg(&dir.path().join("b")).await;
    // b is "fenced" the advisory way: BEGIN READ WRITE still writes.
    let cb = b.0.connect(&login).await.expect("connect b");
    cb.batch_execute("ALTER SYSTEM SET default_transaction_read_only = on").await.expect("read-only setting");
    cb.batch_execute("SELECT pg_reload_conf()").await.expect("reload");
    drop(cb);
    let probe =
        WritableProbe::start_conninfos(vec![("a".into(), a.0.conninfo(&login)), ("b".into(), b.0.conninfo(&login))]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    b.0.stop(StopMode::Fast, Duration::from_secs(20)).await.expect("stop b");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t0 = std::time::Instant::now();
    let log = probe.stop().await;
    assert!(t0.elapsed() < Duration::from_secs(2), "stopping the checker is prompt");
    let origin = log.nodes[0].1.first().map(|p| p.sent_unix_ms).expect("probes");
    let t = log.analyse(origin);
    for lane in &t.lanes {
        for s in &lane.segments {
            println!(
                "{} {:?} {:.0}–{:.0} ms ({} probes) {:?}",
                lane.node, s.answer, s.from_ms, s.until_ms, s.probes, s.detail
            );
        }
    }
    assert!(t.probes >= 20, "probes every 50 ms: {}", t.probes);
    assert_eq!(t.lanes[0].segments.len(), 1, "a stays writable");
    assert_eq!(t.lanes[0].segments[0].answer, Answer::Writable);
    let b_answers: Vec<Answer> = t.lanes[1].segments.iter().map(|s| s.answer).collect();
    assert_eq!(b_answers.first(), Some(&Answer::Writable), "read-only setting does not stop BEGIN READ WRITE");
    assert!(
        b_answers.len() >= 2 && b_answers[1..].iter().all(|a| *a != Answer::Writable),
        "stopped b takes no writes: {b_answers:?}"
    );
    assert_eq!(t.overlaps.len(), 1, "{:?}", t.overlaps);
    assert_eq!(t.overlaps[0].nodes, ["a".to_owned(), "b".to_owned()]);
    println!("{}", t.describe_overlaps());
}
