//! What a workflow is made of: [`Step`]s grouped in [`Stage`]s, built by a
//! [`WorkflowDef`] from the workflow's parameters, found by kind in a
//! [`Registry`] (so a new process can rebuild the steps of a workflow it
//! resumes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pgdr_model::{ClusterName, Epoch};
use pgdr_store::StateStore;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{StepError, WorkflowError, WorkflowId};

/// What a step returns: JSON that later steps can read (through
/// [`StepContext::output`]) and that is journalled, and optionally the epoch
/// the cluster is now at (carried by later events).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutput {
    pub data: Value,
    pub epoch: Option<Epoch>,
}

impl StepOutput {
    pub fn none() -> Self {
        Self::default()
    }
    pub fn json(data: Value) -> Self {
        Self { data, epoch: None }
    }
    pub fn with_epoch(mut self, epoch: Epoch) -> Self {
        self.epoch = Some(epoch);
        self
    }
}

/// How the engine retries a step: exponential backoff from `initial`,
/// multiplied by `factor` after each failure, capped at `max`, for at most
/// `max_attempts` attempts, and only for retryable errors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub factor: f64,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 3, initial: Duration::from_millis(500), factor: 2.0, max: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub fn once() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// The wait after the `failures`-th failed attempt (1-based).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.factor.max(1.0).powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() { self.max } else { Duration::from_secs_f64(secs) }
    }
}

/// What a step can see while it runs (or is planned).
#[derive(Clone, Debug)]
pub struct StepContext {
    pub workflow: WorkflowId,
    pub kind: String,
    pub cluster: ClusterName,
    pub params: Arc<Value>,
    pub step: String,
    pub stage: usize,
    /// 1 for the first attempt; 0 in a dry run.
    pub attempt: u32,
    /// Cancelled when the workflow is cancelled, a sibling in a parallel
    /// stage failed, or the engine stops. Long operations should watch it;
    /// the engine also drops the step's future when it fires.
    pub cancel: CancellationToken,
    /// True in [`crate::Engine::plan`]: inspect, change nothing.
    pub dry_run: bool,
    pub store: Arc<dyn StateStore>,
    pub(crate) outputs: Arc<BTreeMap<String, Value>>,
}

impl StepContext {
    /// The output of an earlier step that succeeded (journalled, so also
    /// available after a resume).
    pub fn output(&self, step: &str) -> Option<&Value> {
        self.outputs.get(step)
    }
}

/// The body of an action step. Steps must be idempotent: after a crash the
/// engine runs an interrupted step again.
#[async_trait]
pub trait StepBody: Send + Sync {
    async fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError>;

    /// The checks this step makes before acting, in words, for plans.
    fn checks(&self) -> Vec<String> {
        Vec::new()
    }

    /// What a dry run reports: by default [`StepBody::checks`]; a step may
    /// inspect live state (read-only) and say what it found.
    async fn dry_run(&self, _ctx: &StepContext) -> Result<Vec<String>, StepError> {
        Ok(self.checks())
    }
}

struct FnBody<F>(F);

#[async_trait]
impl<F, Fut> StepBody for FnBody<F>
where
    F: Fn(StepContext) -> Fut + Send + Sync,
    Fut: Future<Output = Result<StepOutput, StepError>> + Send,
{
    async fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        (self.0)(ctx.clone()).await
    }
}

#[derive(Clone)]
pub(crate) enum StepKind {
    Action(Arc<dyn StepBody>),
    Approval,
}

/// One named step of a workflow.
#[derive(Clone)]
pub struct Step {
    pub name: String,
    pub description: String,
    pub retry: RetryPolicy,
    /// A limit on each attempt; an attempt that exceeds it fails (retryable).
    pub timeout: Option<Duration>,
    /// Checks named by the definition, in addition to the body's.
    pub checks: Vec<String>,
    pub(crate) kind: StepKind,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("approval", &self.is_approval())
            .field("retry", &self.retry)
            .finish()
    }
}

impl Step {
    pub fn new(name: impl Into<String>, description: impl Into<String>, body: impl StepBody + 'static) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            retry: RetryPolicy::default(),
            timeout: None,
            checks: Vec::new(),
            kind: StepKind::Action(Arc::new(body)),
        }
    }

    /// A step whose body is an async closure.
    pub fn from_fn<F, Fut>(name: impl Into<String>, description: impl Into<String>, f: F) -> Self
    where
        F: Fn(StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<StepOutput, StepError>> + Send + 'static,
    {
        Self::new(name, description, FnBody(f))
    }

    /// An approval gate: the workflow waits here until
    /// [`crate::Engine::approve`] (or is cancelled).
    pub fn approval(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            retry: RetryPolicy::once(),
            timeout: None,
            checks: Vec::new(),
            kind: StepKind::Approval,
        }
    }

    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn max_attempts(mut self, n: u32) -> Self {
        self.retry.max_attempts = n.max(1);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn check(mut self, check: impl Into<String>) -> Self {
        self.checks.push(check.into());
        self
    }

    pub fn is_approval(&self) -> bool {
        matches!(self.kind, StepKind::Approval)
    }

    /// The checks without looking at live state.
    pub(crate) fn static_checks(&self) -> Vec<String> {
        let mut out = self.checks.clone();
        if let StepKind::Action(body) = &self.kind {
            out.extend(body.checks());
        }
        out
    }
}

/// Steps that run together: one step, or several in parallel. A stage
/// starts when every step of the previous one has succeeded.
#[derive(Clone, Debug)]
pub struct Stage {
    pub steps: Vec<Step>,
}

impl Stage {
    pub fn one(step: Step) -> Self {
        Self { steps: vec![step] }
    }
    pub fn parallel(steps: Vec<Step>) -> Self {
        Self { steps }
    }
}

impl From<Step> for Stage {
    fn from(step: Step) -> Self {
        Stage::one(step)
    }
}

/// A kind of workflow ("failover", "switchover", ...): builds its stages
/// from the workflow's parameters. Building must be deterministic, since a
/// resuming engine rebuilds the stages and matches them to the journal by
/// step name.
pub trait WorkflowDef: Send + Sync {
    fn kind(&self) -> &str;

    /// Whether it changes roles: then only one such workflow runs per
    /// cluster at a time.
    fn role_changing(&self) -> bool {
        true
    }

    fn build(&self, params: &Value) -> Result<Vec<Stage>, String>;
}

/// The workflow kinds an engine can run or resume.
#[derive(Clone, Default)]
pub struct Registry {
    defs: HashMap<String, Arc<dyn WorkflowDef>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.defs.keys()).finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(mut self, def: impl WorkflowDef + 'static) -> Self {
        self.defs.insert(def.kind().to_owned(), Arc::new(def));
        self
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn WorkflowDef>> {
        self.defs.get(kind).cloned()
    }
}

/// Builds and checks a definition's stages: at least one step, every step
/// name unique and usable in a key.
pub(crate) fn build_stages(def: &dyn WorkflowDef, params: &Value) -> Result<Vec<Stage>, WorkflowError> {
    let invalid = |message: String| WorkflowError::Invalid { kind: def.kind().to_owned(), message };
    let stages = def.build(params).map_err(invalid)?;
    if stages.iter().all(|s| s.steps.is_empty()) {
        return Err(invalid("it has no steps".into()));
    }
    let mut seen = HashSet::new();
    for step in stages.iter().flat_map(|s| &s.steps) {
        if step.name.is_empty() || step.name.contains('/') {
            return Err(invalid(format!("step name {:?} must be non-empty and without '/'", step.name)));
        }
        if !seen.insert(step.name.as_str()) {
            return Err(invalid(format!("step name {:?} is used twice", step.name)));
        }
    }
    Ok(stages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p =
            RetryPolicy { max_attempts: 10, initial: Duration::from_secs(1), factor: 2.0, max: Duration::from_secs(5) };
        let delays: Vec<u64> = (1..=5).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(5));
    }
}
