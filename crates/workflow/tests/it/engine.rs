//! The engine's guarantees, one test each, on both stores.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgdr_model::{ClusterName, Epoch};
use pgdr_store::{StateStore, keys};
use pgdr_workflow::{
    Registry, RetryPolicy, Stage, Step, StepBody, StepContext, StepError, StepOutput, StepRecord, StepState,
    WorkflowError, WorkflowState,
};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{OWNER_TTL, TestDef, both, engine, wait_event};

type Log = Arc<Mutex<Vec<(String, Duration)>>>;

fn main_cluster() -> ClusterName {
    ClusterName::new("main")
}

/// A step that logs when it starts (relative to `t0`) and sleeps `d`.
fn sleeper(name: &str, log: &Log, t0: Instant, d: Duration) -> Step {
    let log = log.clone();
    let n = name.to_owned();
    Step::from_fn(name, format!("sleep {d:?}"), move |_ctx| {
        let log = log.clone();
        let n = n.clone();
        async move {
            log.lock().expect("log").push((n, t0.elapsed()));
            tokio::time::sleep(d).await;
            Ok(StepOutput::none())
        }
    })
}

async fn step_state(store: &Arc<dyn StateStore>, id: &str, stage: usize, step: &str) -> Option<StepState> {
    let v = store.get(&keys::workflow_step(id, stage, step)).await.ok()??;
    serde_json::from_slice::<StepRecord>(&v.value).ok().map(|r| r.state)
}

/// Fails unless `step` (at `stage`) is journalled as succeeded.
fn expect_journalled(name: &str, stage: usize, step: &'static str) -> Step {
    Step::from_fn(name, format!("check {step} is journalled"), move |ctx: StepContext| async move {
        match step_state(&ctx.store, ctx.workflow.as_str(), stage, step).await {
            Some(StepState::Succeeded) => Ok(StepOutput::json(json!({ "seen": step }))),
            other => Err(StepError::fatal(format!("{step} is {other:?} in the journal"))),
        }
    })
}

async fn order_and_parallel(store: Arc<dyn StateStore>) {
    let log: Log = Arc::default();
    let t0 = Instant::now();
    let l = log.clone();
    let def = TestDef::new("drill", move |_| {
        let s = Duration::from_secs(1);
        vec![
            Stage::one(sleeper("a", &l, t0, s)),
            Stage::parallel(vec![
                sleeper("b", &l, t0, s),
                sleeper("c", &l, t0, s),
                expect_journalled("b-sees-a", 0, "a"),
            ]),
            Stage::parallel(vec![
                expect_journalled("d-sees-b", 1, "b"),
                expect_journalled("d-sees-c", 1, "c"),
                sleeper("d", &l, t0, s),
            ]),
        ]
    });
    let e = engine(&store, "ctl", Registry::new().register(def)).await;
    let mut events = e.subscribe();
    let h = e.start("drill", &main_cluster(), json!({"why": "test"})).await.expect("start");
    let rec = h.wait().await.expect("wait");
    assert_eq!(rec.state, WorkflowState::Succeeded, "error: {:?}", rec.error);
    assert_eq!(t0.elapsed(), Duration::from_secs(3), "three stages of 1 s; the parallel one took 1 s, not 2");
    let log = log.lock().expect("log").clone();
    let secs = |n: &str| log.iter().find(|(m, _)| m == n).map(|(_, t)| t.as_secs());
    assert_eq!([secs("a"), secs("b"), secs("c"), secs("d")], [Some(0), Some(1), Some(1), Some(2)]);

    let journal = e.journal(&rec.id).await.expect("journal");
    assert_eq!(journal.len(), 7);
    assert!(journal.iter().all(|s| s.state == StepState::Succeeded && s.attempts.len() == 1));
    let b = journal.iter().find(|s| s.name == "b").expect("b");
    assert_eq!(b.attempts[0].duration_ms, Some(1000), "per-step duration is journalled");

    // Events: each step started and succeeded, with durations, then the end.
    let mut seen = Vec::new();
    while let Ok(ev) = events.try_recv() {
        seen.push((ev.step.clone().unwrap_or_default(), ev.state.clone(), ev.duration_ms));
    }
    assert_eq!(seen.first().map(|s| s.1.as_str()), Some("started"));
    assert!(seen.contains(&("a".into(), "succeeded".into(), Some(1000))));
    assert_eq!(seen.iter().filter(|s| s.1 == "started" && !s.0.is_empty()).count(), 7);
    assert_eq!(seen.last().map(|s| (s.0.as_str(), s.1.as_str(), s.2)), Some(("", "succeeded", Some(3000))));
    let stored = e.event_log().list(None, 1000).await.expect("events");
    assert_eq!(stored.len(), seen.len(), "every event is also in the store's log");
    assert!(
        stored.iter().all(|ev| ev.workflow.as_deref() == Some(rec.id.as_str()) && ev.kind.as_deref() == Some("drill"))
    );
}
both!(order_and_parallel_, order_and_parallel);

/// A step failing with `err` on its first `failures` attempts, logging when
/// each attempt starts.
fn flaky(failures: u32, err: StepError, log: &Log, t0: Instant, retry: RetryPolicy) -> Step {
    let log = log.clone();
    Step::from_fn("flaky", "fails, then succeeds", move |ctx: StepContext| {
        let log = log.clone();
        let err = err.clone();
        async move {
            log.lock().expect("log").push((format!("attempt {}", ctx.attempt), t0.elapsed()));
            if ctx.attempt <= failures { Err(err) } else { Ok(StepOutput::json(json!(ctx.attempt))) }
        }
    })
    .retry(retry)
}

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy { max_attempts, initial: Duration::from_secs(1), factor: 2.0, max: Duration::from_secs(3) }
}

async fn retries(store: Arc<dyn StateStore>) {
    let t0 = Instant::now();
    let log: Log = Arc::default();
    let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
    let registry = Registry::new()
        .register(TestDef::new("recovers", move |_| {
            vec![Stage::one(flaky(2, StepError::retryable("not yet"), &l1, t0, policy(3)))]
        }))
        .register(TestDef::new("exhausts", move |_| {
            vec![Stage::one(flaky(10, StepError::retryable("still down"), &l2, t0, policy(4)))]
        }))
        .register(TestDef::new("fatal", move |_| {
            vec![Stage::one(flaky(10, StepError::fatal("no candidate"), &l3, t0, policy(5)))]
        }));
    let e = engine(&store, "ctl", registry).await;
    let main = main_cluster();

    let rec = e.start("recovers", &main, Value::Null).await.expect("start").wait().await.expect("wait");
    assert_eq!(rec.state, WorkflowState::Succeeded);
    let starts: Vec<u64> = log.lock().expect("log").drain(..).map(|(_, t)| t.as_secs()).collect();
    assert_eq!(starts, [0, 1, 3], "backoff 1 s then 2 s");
    let j = e.journal(&rec.id).await.expect("journal");
    assert_eq!(j[0].attempts.len(), 3);
    assert_eq!(j[0].attempts.iter().filter(|a| a.failed()).count(), 2);
    assert_eq!(j[0].output, Some(json!(3)));

    let t1 = t0.elapsed();
    let rec = e
        .start("exhausts", &main, Value::Null)
        .await
        .expect("start: the lock was released")
        .wait()
        .await
        .expect("wait");
    assert_eq!(rec.state, WorkflowState::Failed);
    assert_eq!(rec.error.as_deref(), Some("step flaky failed: still down (after 4 attempts)"));
    let starts: Vec<u64> = log.lock().expect("log").drain(..).map(|(_, t)| (t - t1).as_secs()).collect();
    assert_eq!(starts, [0, 1, 3, 6], "backoff 1, 2, then capped at 3 s");
    let j = e.journal(&rec.id).await.expect("journal");
    assert_eq!((j[0].state, j[0].attempts.len()), (StepState::Failed, 4));

    let rec = e.start("fatal", &main, Value::Null).await.expect("start after a failure").wait().await.expect("wait");
    assert_eq!(rec.state, WorkflowState::Failed);
    assert_eq!(log.lock().expect("log").len(), 1, "a non-retryable error is not retried");
    assert_eq!(e.journal(&rec.id).await.expect("journal")[0].attempts.len(), 1);
    assert!(store.get(&keys::cluster_lock("main")).await.expect("get").is_none(), "lock released after failure");
}
both!(retries_, retries);

/// The crash test's steps: `two` hangs on its first attempt.
fn crash_def(ones: Arc<AtomicU32>, twos: Arc<AtomicU32>, entered: Arc<Notify>) -> TestDef {
    TestDef::new("failover", move |_| {
        let (ones, twos, entered) = (ones.clone(), twos.clone(), entered.clone());
        vec![
            Stage::one(Step::from_fn("one", "first", move |_| {
                let ones = ones.clone();
                async move {
                    ones.fetch_add(1, Ordering::SeqCst);
                    Ok(StepOutput::json(json!("from one")).with_epoch(Epoch(7)))
                }
            })),
            Stage::one(Step::from_fn("two", "hangs once", move |ctx: StepContext| {
                let (twos, entered) = (twos.clone(), entered.clone());
                async move {
                    twos.fetch_add(1, Ordering::SeqCst);
                    if ctx.output("one") != Some(&json!("from one")) {
                        return Err(StepError::fatal("the output of step one is missing"));
                    }
                    if ctx.attempt == 1 {
                        entered.notify_one();
                        std::future::pending::<()>().await;
                    }
                    Ok(StepOutput::none())
                }
            })),
            Stage::one(Step::from_fn("three", "last", |_| async { Ok(StepOutput::none()) })),
        ]
    })
}

async fn resume_after_crash(store: Arc<dyn StateStore>) {
    let (ones, twos, entered) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)), Arc::new(Notify::new()));
    let registry = || Registry::new().register(crash_def(ones.clone(), twos.clone(), entered.clone()));
    let first = engine(&store, "ctl-a", registry()).await;
    let h = first.start("failover", &main_cluster(), json!({"to": "n2"})).await.expect("start");
    entered.notified().await;
    drop(first); // the controller dies mid-step
    assert!(matches!(h.wait().await, Err(WorkflowError::Interrupted(_))));
    let id = h_id(&store).await;
    assert_eq!(step_state(&store, &id, 1, "two").await, Some(StepState::Started), "journalled as started, no end");

    // Another controller does not take it while the first one's lease lives.
    let other = engine(&store, "ctl-b", registry()).await;
    assert!(other.resume_all().await.expect("resume").is_empty());
    tokio::time::sleep(OWNER_TTL).await;
    let handles = other.resume_all().await.expect("resume");
    assert_eq!(handles.len(), 1, "resumed once the dead engine's lease expired");
    let rec = handles.into_iter().next().expect("handle").wait().await.expect("wait");
    assert_eq!(rec.state, WorkflowState::Succeeded, "error: {:?}", rec.error);
    assert_eq!((rec.resumed, rec.epoch), (1, Some(Epoch(7))));
    assert_eq!(ones.load(Ordering::SeqCst), 1, "a succeeded step is not run again");
    assert_eq!(twos.load(Ordering::SeqCst), 2, "the interrupted step ran again");
    let j = other.journal(&rec.id).await.expect("journal");
    let two = j.iter().find(|s| s.name == "two").expect("two");
    assert_eq!(two.attempts.iter().map(|a| a.n).collect::<Vec<_>>(), [1, 2], "attempt count continues");
    assert!(two.attempts[0].error.as_deref().is_some_and(|e| e.contains("interrupted")));
    assert!(store.get(&keys::cluster_lock("main")).await.expect("get").is_none(), "lock released at the end");
}
both!(resume_after_crash_, resume_after_crash);

async fn h_id(store: &Arc<dyn StateStore>) -> String {
    let kvs = store.list(keys::WORKFLOWS).await.expect("list");
    let key = kvs.iter().find(|kv| kv.key.ends_with("/record")).expect("a workflow").key.clone();
    key.trim_start_matches(keys::WORKFLOWS).trim_end_matches("/record").to_owned()
}

async fn same_owner_takes_over_at_once(store: Arc<dyn StateStore>) {
    let (ones, twos, entered) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)), Arc::new(Notify::new()));
    let registry = || Registry::new().register(crash_def(ones.clone(), twos.clone(), entered.clone()));
    let first = engine(&store, "ctl-a", registry()).await;
    let _h = first.start("failover", &main_cluster(), Value::Null).await.expect("start");
    entered.notified().await;
    drop(first);
    // A workflow of the same cluster is refused while the lock is held across the crash.
    let restarted = engine(&store, "ctl-a", registry()).await;
    assert!(matches!(
        restarted.start("failover", &main_cluster(), Value::Null).await,
        Err(WorkflowError::ClusterBusy { .. })
    ));
    let t = Instant::now();
    let handles = restarted.resume_all().await.expect("resume");
    let rec = handles.into_iter().next().expect("resumed").wait().await.expect("wait");
    assert_eq!(rec.state, WorkflowState::Succeeded);
    assert_eq!(t.elapsed(), Duration::ZERO, "the same controller restarted does not wait for its old lease");
}
both!(same_owner_takes_over_at_once_, same_owner_takes_over_at_once);

struct Inspect;

#[async_trait::async_trait]
impl StepBody for Inspect {
    async fn run(&self, _ctx: &StepContext) -> Result<StepOutput, StepError> {
        Err(StepError::fatal("must not run in a dry run"))
    }
    fn checks(&self) -> Vec<String> {
        vec!["the candidate is streaming".into()]
    }
    async fn dry_run(&self, ctx: &StepContext) -> Result<Vec<String>, StepError> {
        assert!(ctx.dry_run);
        let state = ctx
            .store
            .get(&keys::cluster_state(ctx.cluster.as_str()))
            .await
            .map_err(|e| StepError::retryable(e.to_string()))?;
        Ok(vec![format!("cluster state present: {}", state.is_some())])
    }
}

async fn dry_run_writes_nothing(store: Arc<dyn StateStore>) {
    let def = TestDef::new("switchover", |_| {
        vec![
            Stage::one(Step::new("inspect", "look at the cluster", Inspect).check("the target is healthy")),
            Stage::one(Step::approval("approve", "a person agrees")),
        ]
    });
    let e = engine(&store, "ctl", Registry::new().register(def)).await;
    let before = store.revision().await.expect("revision");
    let plan = e.plan("switchover", &main_cluster(), json!({"to": "n2"})).await.expect("plan");
    assert_eq!(store.revision().await.expect("revision"), before, "a plan writes nothing");
    assert!(e.list().await.expect("list").is_empty());
    assert!(e.event_log().list(None, 10).await.expect("events").is_empty());
    assert_eq!(plan.stages.len(), 2);
    let inspect = &plan.stages[0][0];
    assert_eq!(inspect.description, "look at the cluster");
    assert_eq!(inspect.checks, ["the target is healthy", "cluster state present: false"]);
    assert!(plan.stages[1][0].approval);
    assert_eq!(plan.blocked_by, None);
    assert!(matches!(e.plan("nope", &main_cluster(), Value::Null).await, Err(WorkflowError::UnknownKind(_))));
}
both!(dry_run_writes_nothing_, dry_run_writes_nothing);

fn gated(ran: Arc<AtomicU32>) -> TestDef {
    TestDef::new("switchover", move |_| {
        let ran = ran.clone();
        vec![
            Stage::one(Step::from_fn("prepare", "prepare", |_| async { Ok(StepOutput::none()) })),
            Stage::one(Step::approval("approve", "an operator approves the promotion")),
            Stage::one(Step::from_fn("promote", "promote", move |_| {
                let ran = ran.clone();
                async move {
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok(StepOutput::none())
                }
            })),
        ]
    })
}

async fn approval_gate(store: Arc<dyn StateStore>) {
    let ran = Arc::new(AtomicU32::new(0));
    let e = engine(&store, "ctl", Registry::new().register(gated(ran.clone()))).await;
    let mut events = e.subscribe();
    let h = e.start("switchover", &main_cluster(), Value::Null).await.expect("start");
    let id = h.id.clone();
    wait_event(&mut events, |ev| ev.state == "waiting_approval").await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(ran.load(Ordering::SeqCst), 0, "nothing past the gate runs before approval");
    assert_eq!(e.get(&id).await.expect("get").expect("record").state, WorkflowState::WaitingApproval);

    let t = Instant::now();
    assert_eq!(e.approve(&id, "alice").await.expect("approve"), ["approve"]);
    let rec = h.wait().await.expect("wait");
    assert_eq!(rec.state, WorkflowState::Succeeded);
    assert_eq!(t.elapsed(), Duration::ZERO, "the gate opens on the approval, no polling delay");
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    let gate = e.journal(&id).await.expect("journal").into_iter().find(|s| s.name == "approve").expect("gate");
    assert_eq!((gate.state, gate.approved_by.as_deref()), (StepState::Succeeded, Some("alice")));
    let approved = wait_event(&mut events, |ev| ev.state == "approved").await;
    assert_eq!(approved.message.as_deref(), Some("approved by alice"));
    assert!(matches!(e.approve(&id, "bob").await, Err(WorkflowError::NotWaitingApproval { .. })));
}
both!(approval_gate_, approval_gate);

async fn one_role_change_per_cluster(store: Arc<dyn StateStore>) {
    let ran = Arc::new(AtomicU32::new(0));
    let mut report = TestDef::new("report", |_| {
        vec![Stage::one(Step::from_fn("r", "read only", |_| async { Ok(StepOutput::none()) }))]
    });
    report.role_changing = false;
    let e = engine(&store, "ctl", Registry::new().register(gated(ran)).register(report)).await;
    let mut events = e.subscribe();
    let main = main_cluster();
    let first = e.start("switchover", &main, Value::Null).await.expect("start");
    wait_event(&mut events, |ev| ev.state == "waiting_approval").await;

    let err = e.start("switchover", &main, Value::Null).await.expect_err("second on the same cluster");
    match &err {
        WorkflowError::ClusterBusy { workflow, kind, .. } => {
            assert_eq!((workflow, kind.as_str()), (&first.id, "switchover"))
        }
        other => panic!("expected ClusterBusy, got {other}"),
    }
    assert!(err.to_string().contains(first.id.as_str()), "the message names the running workflow: {err}");
    let plan = e.plan("switchover", &main, Value::Null).await.expect("plan");
    assert_eq!(plan.blocked_by.map(|l| l.workflow), Some(first.id.clone()));

    let other = e.start("switchover", &ClusterName::new("other"), Value::Null).await.expect("another cluster is fine");
    let report = e.start("report", &main, Value::Null).await.expect("a workflow that changes no role is fine");
    assert_eq!(report.wait().await.expect("wait").state, WorkflowState::Succeeded);

    // Cancelling the first releases the lock.
    e.cancel(&first.id, "bob").await.expect("cancel");
    let rec = first.wait().await.expect("wait");
    assert_eq!((rec.state, rec.cancelled_by.as_deref()), (WorkflowState::Cancelled, Some("bob")));
    let again = e.start("switchover", &main, Value::Null).await.expect("lock released after cancel");
    assert!(matches!(e.cancel(&rec.id, "bob").await, Err(WorkflowError::Ended { .. })));
    for h in [again, other] {
        e.cancel(&h.id, "test").await.expect("cancel");
        assert_eq!(h.wait().await.expect("wait").state, WorkflowState::Cancelled);
    }
}
both!(one_role_change_per_cluster_, one_role_change_per_cluster);

async fn cancel_during_backoff(store: Arc<dyn StateStore>) {
    let t0 = Instant::now();
    let log: Log = Arc::default();
    let l = log.clone();
    let slow = RetryPolicy {
        max_attempts: 5,
        initial: Duration::from_secs(3600),
        factor: 2.0,
        max: Duration::from_secs(7200),
    };
    let def =
        TestDef::new("failover", move |_| vec![Stage::one(flaky(10, StepError::retryable("down"), &l, t0, slow))]);
    let e = engine(&store, "ctl", Registry::new().register(def)).await;
    let mut events = e.subscribe();
    let h = e.start("failover", &main_cluster(), Value::Null).await.expect("start");
    wait_event(&mut events, |ev| ev.state == "retrying").await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    e.cancel(&h.id, "carol").await.expect("cancel");
    let rec = h.wait().await.expect("wait");
    assert_eq!(rec.state, WorkflowState::Cancelled);
    assert_eq!(t0.elapsed(), Duration::from_secs(60), "the backoff wait ended on cancel");
    assert_eq!(log.lock().expect("log").len(), 1);
    assert_eq!(e.journal(&rec.id).await.expect("journal")[0].state, StepState::Cancelled);
}
both!(cancel_during_backoff_, cancel_during_backoff);

async fn failed_sibling_cancels_the_stage(store: Arc<dyn StateStore>) {
    let t0 = Instant::now();
    let log: Log = Arc::default();
    let l = log.clone();
    let def = TestDef::new("failover", move |_| {
        vec![Stage::parallel(vec![
            sleeper("slow", &l, t0, Duration::from_secs(3600)),
            Step::from_fn("broken", "fails at once", |_| async { Err(StepError::fatal("no quorum")) }),
        ])]
    });
    let e = engine(&store, "ctl", Registry::new().register(def)).await;
    let rec = e.start("failover", &main_cluster(), Value::Null).await.expect("start").wait().await.expect("wait");
    assert_eq!(rec.state, WorkflowState::Failed);
    assert_eq!(rec.error.as_deref(), Some("step broken failed: no quorum"));
    assert_eq!(t0.elapsed(), Duration::ZERO);
    let j = e.journal(&rec.id).await.expect("journal");
    assert_eq!(j.iter().find(|s| s.name == "slow").map(|s| s.state), Some(StepState::Cancelled));
}
both!(failed_sibling_cancels_the_stage_, failed_sibling_cancels_the_stage);

async fn bad_definitions_are_refused(store: Arc<dyn StateStore>) {
    let dup = TestDef::new("dup", |_| {
        let s = || Step::from_fn("same", "x", |_| async { Ok(StepOutput::none()) });
        vec![Stage::one(s()), Stage::one(s())]
    });
    let empty = TestDef::new("empty", |_| vec![]);
    let e = engine(&store, "ctl", Registry::new().register(dup).register(empty)).await;
    let err = e.start("dup", &main_cluster(), Value::Null).await.expect_err("duplicate names");
    assert_eq!(err.to_string(), "invalid dup workflow: step name \"same\" is used twice");
    assert!(err.is_usage());
    assert!(matches!(e.start("empty", &main_cluster(), Value::Null).await, Err(WorkflowError::Invalid { .. })));
    assert!(matches!(e.start("unknown", &main_cluster(), Value::Null).await, Err(WorkflowError::UnknownKind(_))));
    assert!(store.get(&keys::cluster_lock("main")).await.expect("get").is_none());
}
both!(bad_definitions_are_refused_, bad_definitions_are_refused);

/// The controller process dies mid-step: the redb file is closed, reopened
/// by a new process (same controller name) and the workflow finishes.
#[tokio::test(start_paused = true)]
async fn resume_after_restart_from_the_redb_file() {
    let dir = tempfile::Builder::new().prefix("pgdr-workflow-").tempdir_in("/tmp").expect("tempdir");
    let path = dir.path().join("state.redb");
    let (ones, twos, entered) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)), Arc::new(Notify::new()));
    let registry = || Registry::new().register(crash_def(ones.clone(), twos.clone(), entered.clone()));
    {
        let store: Arc<dyn StateStore> = Arc::new(pgdr_store::EmbeddedStore::open(&path).await.expect("open"));
        let e = engine(&store, "ctl-a", registry()).await;
        let _h = e.start("failover", &main_cluster(), Value::Null).await.expect("start");
        entered.notified().await;
        drop(e);
        // Let the dropped engine's tasks end so the file is released.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let store: Arc<dyn StateStore> = Arc::new(pgdr_store::EmbeddedStore::open(&path).await.expect("reopen"));
    let e = engine(&store, "ctl-a", registry()).await;
    let handles = e.resume_all().await.expect("resume");
    assert_eq!(handles.len(), 1);
    let rec = handles.into_iter().next().expect("handle").wait().await.expect("wait");
    assert_eq!(rec.state, WorkflowState::Succeeded, "error: {:?}", rec.error);
    assert_eq!((ones.load(Ordering::SeqCst), twos.load(Ordering::SeqCst)), (1, 2));
    let events = e.event_log().list(None, 100).await.expect("events");
    let states: Vec<&str> = events.iter().map(|ev| ev.state.as_str()).collect();
    assert!(states.contains(&"resumed"), "the event log survived the restart: {states:?}");
}
