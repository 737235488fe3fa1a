//! The `rotate-secrets` workflow holds the cluster's lock without blocking
//! a failover: while it runs the monitor still counts the cluster as free
//! (detection goes on), a switchover is refused, and a failover that must
//! start cancels it, records its rerun, and takes the lock; once the
//! cluster is free the controller starts the rotation again.

use std::time::Duration;

use pgdr_api::controller::RotateRequest;
use pgdr_config::Config;
use pgdr_controller::ControllerError;
use pgdr_controller::rotation::{self, ROTATE_SECRETS};
use pgdr_controller::workflows::{self, Params};
use pgdr_model::{ClusterName, Epoch, NodeName};
use pgdr_workflow::{WorkflowError, WorkflowState};
use tokio_util::sync::CancellationToken;

use crate::{Silent, closed_port, config_text, controller};

fn params(kind: &str) -> Params {
    Params {
        cluster: ClusterName::new("c"),
        reason: format!("test {kind}"),
        to: (kind == workflows::SWITCHOVER).then(|| "b".to_owned()),
        allow_data_loss: false,
        require_approval: false,
        requested_by: Some("test".into()),
        old_primary: Some(NodeName::new("a")),
        old_epoch: Epoch(1),
        old_lsn: None,
        crash: false,
        node: None,
        keep_tail: true,
        automatic: false,
    }
}

#[tokio::test]
async fn a_failover_preempts_a_rotation_which_runs_again_afterwards() {
    let stores = tempfile::tempdir().expect("tempdir");
    // Silent agents: each of the rotation's topology reads waits 3 s for
    // them, so it is still running when the failover comes.
    let agents = [Silent::start().await, Silent::start().await, Silent::start().await];
    let mut text = config_text([agents[0].addr, agents[1].addr, agents[2].addr], closed_port().await, "");
    text.push_str(&format!(
        "[clusters.secrets]\n[[clusters.secrets.roles]]\nname = \"app\"\n\
         [[clusters.secrets.stores]]\nregion = \"east\"\nkind = \"file\"\ndir = \"{0}/east\"\n\
         [[clusters.secrets.stores]]\nregion = \"west\"\nkind = \"file\"\ndir = \"{0}/west\"\n",
        stores.path().display()
    ));
    let cfg = Config::parse(std::path::Path::new("t.toml"), &text).expect("config");
    let ctl = controller(cfg).await;
    let c = ClusterName::new("c");
    ctl.sh.clusters.init(&c, Epoch(1), Some(NodeName::new("a")), "test").await.expect("init");

    // A dry run starts nothing.
    let plan = rotation::start(&ctl, "c", RotateRequest { dry_run: true, ..Default::default() }).await.expect("plan");
    assert!(plan.id.is_none() && plan.plan.iter().any(|l| l.starts_with("rotate_app")), "{plan:?}");
    assert!(ctl.engine.list().await.expect("list").is_empty());

    let started = rotation::start(&ctl, "c", RotateRequest::default()).await.expect("rotation starts");
    let rot = pgdr_workflow::WorkflowId::parse(started.id.as_deref().expect("id")).expect("id");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ctl.engine.get(&rot).await.expect("get").expect("record").state, WorkflowState::Running);
    assert!(ctl.locked(&c).await, "the rotation holds the cluster's lock");
    assert!(!ctl.busy(&c).await, "the monitor must keep detecting while a rotation runs");
    let sw = ctl.start_params(workflows::SWITCHOVER, params(workflows::SWITCHOVER)).await;
    assert!(matches!(sw, Err(ControllerError::Workflow(WorkflowError::ClusterBusy { .. }))), "{sw:?}");
    let again = rotation::start(&ctl, "c", RotateRequest::default()).await;
    assert!(again.is_err(), "a second rotation while one runs: {again:?}");

    // The failover is not refused: it cancels the rotation and takes the lock.
    let t = tokio::time::Instant::now();
    let failover = ctl.start_params(workflows::FAILOVER, params(workflows::FAILOVER)).await.expect("failover starts");
    eprintln!("the failover started {} ms after it asked (rotation cancelled first)", t.elapsed().as_millis());
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(ctl.engine.get(&rot).await.expect("get").expect("record").state, WorkflowState::Cancelled);
    assert!(ctl.busy(&c).await, "the failover holds the lock");
    let view = rotation::view(&ctl, "c").await.expect("view");
    assert!(view.rerun.as_deref().is_some_and(|r| r.contains(rot.as_str())), "{view:?}");

    // Once the failover ends, the controller starts the rotation again.
    let cancel = CancellationToken::new();
    let runner = tokio::spawn(rotation::run(ctl.clone(), cancel.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ctl.engine.list().await.expect("list").iter().filter(|r| r.kind == ROTATE_SECRETS).count(),
        1,
        "no rerun while the failover holds the lock"
    );
    ctl.engine.cancel(&failover, "test").await.expect("cancel the failover");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let rerun = loop {
        let list = ctl.engine.list().await.expect("list");
        if let Some(r) = list.iter().find(|r| r.kind == ROTATE_SECRETS && r.id != rot) {
            break r.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "the preempted rotation was not started again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(rerun.params["reason"].as_str().is_some_and(|r| r.contains("preempted")), "{:?}", rerun.params);
    assert!(rotation::view(&ctl, "c").await.expect("view").rerun.is_none(), "the rerun is recorded as started");
    cancel.cancel();
    runner.await.expect("runner");
    let _ = ctl.engine.cancel(&rerun.id, "test").await;
    ctl.engine.shutdown().await;
}
