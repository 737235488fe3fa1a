//! A re-establish that rebuilds a replica for a long time (its agent hangs,
//! like a long base backup) does not block detection: the primary fails,
//! the watch loop declares the outage, the failover starts and cancels the
//! re-establish; failover, switchover and failback stay one at a time.

use std::time::Duration;

use pgdr_controller::ControllerError;
use pgdr_controller::workflows::{self, Params};
use pgdr_model::{ClusterName, Epoch, NodeName};
use pgdr_workflow::{WorkflowError, WorkflowState};
use tokio_util::sync::CancellationToken;

use crate::{Silent, closed_port, config, controller};

fn params(node: Option<&str>, to: Option<&str>) -> Params {
    Params {
        cluster: ClusterName::new("c"),
        reason: "test".into(),
        to: to.map(str::to_owned),
        allow_data_loss: false,
        require_approval: false,
        requested_by: Some("test".into()),
        old_primary: Some(NodeName::new("a")),
        old_epoch: Epoch(1),
        old_lsn: None,
        crash: false,
        node: node.map(NodeName::new),
        keep_tail: true,
        automatic: false,
    }
}

async fn state_of(ctl: &pgdr_controller::Controller, id: &pgdr_workflow::WorkflowId) -> WorkflowState {
    ctl.engine.get(id).await.expect("get").expect("record").state
}

#[tokio::test]
async fn failover_during_a_long_reestablish_cancels_it() {
    let agents = [Silent::start().await, Silent::start().await, Silent::start().await];
    let cfg = config([agents[0].addr, agents[1].addr, agents[2].addr], closed_port().await, "");
    let cluster = cfg.clusters[0].clone();
    let ctl = controller(cfg).await;
    let c = ClusterName::new("c");
    ctl.sh.clusters.init(&c, Epoch(1), Some(NodeName::new("a")), "test").await.expect("init");

    // A re-establish of b: its agent never answers the rebuild, so it runs.
    let re = ctl.start_params(workflows::REESTABLISH, params(Some("b"), None)).await.expect("re-establish starts");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state_of(&ctl, &re).await, WorkflowState::Running);
    assert!(!ctl.busy(&c).await, "a re-establish must not hold the cluster lock");
    // Only one re-establish per cluster.
    let second = ctl.start_params(workflows::REESTABLISH, params(Some("d"), None)).await;
    assert!(matches!(second, Err(ControllerError::Conflict(_))), "{second:?}");

    // The primary refuses connections and its agent hangs: the watch loop
    // declares an outage while the re-establish runs.
    let cancel = CancellationToken::new();
    let monitor = tokio::spawn(pgdr_controller::monitor::run(ctl.clone(), cluster, cancel.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let failover = loop {
        let list = ctl.engine.list().await.expect("list");
        if let Some(f) = list.iter().find(|r| r.kind == workflows::FAILOVER) {
            break f.id.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no failover started while a re-establish ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state_of(&ctl, &re).await != WorkflowState::Cancelled {
        assert!(tokio::time::Instant::now() < deadline, "the re-establish was not cancelled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The node stays flagged for a rejoin (the next re-establish points it
    // at whichever primary the failover makes).
    assert!(ctl.sh.needs_rejoin.lock().expect("lock").contains_key(&(c.clone(), NodeName::new("b"))));
    // The failover holds the lock (its fence step waits for the lease):
    // a switchover is refused, and so is a new re-establish.
    assert!(!state_of(&ctl, &failover).await.is_terminal());
    assert!(ctl.busy(&c).await);
    let sw = ctl.start_params(workflows::SWITCHOVER, params(None, Some("b"))).await;
    assert!(matches!(sw, Err(ControllerError::Workflow(WorkflowError::ClusterBusy { .. }))), "{sw:?}");
    let re2 = ctl.start_params(workflows::REESTABLISH, params(Some("b"), None)).await;
    assert!(matches!(re2, Err(ControllerError::Conflict(_))), "{re2:?}");

    cancel.cancel();
    monitor.await.expect("monitor");
    ctl.engine.cancel(&failover, "test").await.expect("cancel");
    ctl.engine.shutdown().await;
}
