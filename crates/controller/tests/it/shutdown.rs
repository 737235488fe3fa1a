//! Every long-lived task of the controller stops on cancel: the watch loop
//! with its pause task (holding the proxies while the primary is suspect),
//! the readiness schedule, the backup scheduler, the engine's event relay
//! and the HTTP server. `Controller::run` returns only after all of them.

use std::time::Duration;

use pgdr_model::{ClusterName, Epoch, NodeName};
use tokio_util::sync::CancellationToken;

use crate::{Silent, closed_port, config, controller};

#[tokio::test]
async fn run_returns_after_cancel_with_the_proxies_held() {
    let agents = [Silent::start().await, Silent::start().await, Silent::start().await];
    // A primary that refuses: the first failed probe holds the proxies (the
    // pause task is busy) and the watch loop keeps probing.
    let cfg = config([agents[0].addr, agents[1].addr, agents[2].addr], closed_port().await, "probe_quorum = 3\n");
    let ctl = controller(cfg).await;
    let c = ClusterName::new("c");
    ctl.sh.clusters.init(&c, Epoch(1), Some(NodeName::new("a")), "test").await.expect("init");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (ctl, cancel) = (ctl.clone(), cancel.clone());
        async move { ctl.run(listener, cancel).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = ctl.sh.observed.lock().expect("lock").get(&c).map(|o| o.detection.clone()).unwrap_or_default();
        if d.starts_with("suspect") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the primary never became suspect (detection {d:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
    // A hang guard only: the tasks stop at their next await.
    let res = tokio::time::timeout(Duration::from_secs(30), task).await;
    let res = res.expect("Controller::run did not return after cancel").expect("join");
    assert!(res.is_ok(), "{res:?}");
}
