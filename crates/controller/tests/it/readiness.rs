//! The readiness checks on the controller's schedule: they run at once and
//! then every interval, the findings are kept for `/v1/snapshot`, and a
//! finding that was not there at the previous run is an event.

use std::time::Duration;

use pgdr_controller::readiness::{self, ReadinessView};
use tokio_util::sync::CancellationToken;

use crate::{closed_port, config, controller};

#[tokio::test]
async fn readiness_runs_on_schedule_and_reports_regressions() {
    // Nothing answers at any node: every node check fails.
    let agents = [
        format!("127.0.0.1:{}", closed_port().await).parse().expect("addr"),
        format!("127.0.0.1:{}", closed_port().await).parse().expect("addr"),
        format!("127.0.0.1:{}", closed_port().await).parse().expect("addr"),
    ];
    let cfg = config(agents, closed_port().await, "");
    let ctl = controller(cfg).await;

    let cancel = CancellationToken::new();
    let task = tokio::spawn(readiness::run(ctl.clone(), Duration::from_millis(200), cancel.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let view = loop {
        let v = ctl.sh.readiness.lock().expect("lock").clone();
        if let Some(v) = v.filter(|v| v.runs >= 2) {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "the checks did not run twice");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    cancel.cancel();
    task.await.expect("readiness task");
    assert!(view.checked_at.is_some());
    assert!(
        view.findings.iter().any(|f| f.severity == pgdr_drill::readiness::Severity::Error),
        "unreachable nodes must be errors: {:?}",
        view.findings
    );
    // The same findings twice: no regression event.
    let events = ctl.sh.events.tail(100).await.expect("events");
    assert!(!events.iter().any(|e| e.state == "readiness_regressed"), "{events:?}");

    // After a clean run, the same errors are regressions, one event each.
    *ctl.sh.readiness.lock().expect("lock") = Some(ReadinessView::default());
    let regressed = readiness::run_once(&ctl).await;
    assert!(!regressed.is_empty());
    let events = ctl.sh.events.tail(100).await.expect("events");
    let n = events.iter().filter(|e| e.state == "readiness_regressed").count();
    assert_eq!(n, regressed.len(), "{events:?}");
    ctl.engine.shutdown().await;
}
