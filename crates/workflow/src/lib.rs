//! pgdr's durable workflow engine.
//!
//! Failover, switchover, re-establish, failback, backups and secret
//! rotation are workflows: lists of named, idempotent steps whose every
//! start, end, outcome, attempt and duration is journalled in the state store
//! (`pgdr-store`, through `Arc<dyn StateStore>`), so a controller that dies
//! mid-workflow is resumed by the next one. This crate owns the engine and
//! the journal format; the workflows themselves (their steps) live in the
//! controller. It must not depend on the controller, the node layer or the
//! proxy.
//!
//! # Model
//!
//! A workflow has an id (a UUIDv7: sortable by creation time), a kind
//! ("failover"), a cluster, JSON params and a list of [`Stage`]s; each stage
//! is one [`Step`] or several run in parallel. A step has a name, a
//! description, a [`RetryPolicy`] (`max_attempts`, exponential backoff), an
//! optional per-attempt timeout and a body ([`StepBody`], or a closure via
//! [`Step::from_fn`]) returning [`StepOutput`] (JSON, optionally the new
//! epoch) or [`StepError`] (`retryable` or not). A step may instead be an
//! approval gate ([`Step::approval`]). A [`WorkflowDef`], registered by kind
//! in a [`Registry`], builds the stages from the params, so a new process can
//! rebuild a workflow it resumes.
//!
//! # Guarantees
//!
//! - **Journal before progress.** An attempt is recorded as `started` (with
//!   its number and time) before its body runs, and as `succeeded`/`failed`
//!   (duration, output or error) before anything after it starts. Step
//!   journals are `/pgdr/workflows/<id>/steps/<stage>/<step>`, the workflow
//!   record (state, current stage, params, the plan, epoch, error)
//!   `/pgdr/workflows/<id>/record`.
//! - **Retries belong to the engine**: only for retryable errors, up to
//!   `max_attempts`, waiting `initial × factor^(n-1)` capped at `max`. A
//!   non-retryable error fails the step at once. When a step of a parallel
//!   stage fails, its siblings are cancelled.
//! - **Resume.** [`Engine::resume_all`] picks up workflows left `running` or
//!   `waiting_approval` whose engine is gone and runs each from its first
//!   step not journalled as succeeded, with the outputs of the earlier steps.
//!   A step journalled as started without an end runs again, so steps must
//!   be idempotent; its attempt numbers continue (the interrupted attempt is
//!   marked, and does not count as a failure).
//! - **Ownership.** Each running workflow has an owner claim
//!   (`/pgdr/workflows/<id>/owner`) attached to its engine's lease; every
//!   journal write checks that claim in the same transaction. An engine
//!   that cannot renew its lease stops its workflows; another engine resumes
//!   them once the lease has expired (an engine with the same owner name —
//!   the same controller restarted — takes them over at once). So two
//!   controllers never drive one workflow.
//! - **One role change per cluster.** A role-changing workflow takes
//!   `/pgdr/clusters/<c>/lock` in the transaction that records it; a second
//!   one is refused with [`WorkflowError::ClusterBusy`] naming the running
//!   workflow's id and kind. The lock is held across resumes and released in
//!   the transaction that records the end (succeeded, failed or cancelled).
//! - **Dry run.** [`Engine::plan`] returns every step with its description
//!   and checks (a step may inspect live state read-only in
//!   [`StepBody::dry_run`]) and whether the cluster lock would refuse it; it
//!   writes nothing.
//! - **Approval.** A gate records `waiting_approval`, then waits on a store
//!   watch (no polling) until [`Engine::approve`] writes who approved
//!   (journalled on the gate's step record) or the workflow is cancelled.
//! - **Cancellation.** [`Engine::cancel`] writes a cancel request the runner
//!   watches; the running step's future is dropped (and its
//!   [`StepContext::cancel`] token fires), backoff waits end, and the
//!   workflow ends `cancelled`.
//! - **Events.** Every workflow start/resume/end and step
//!   start/retry/end/approval emits a [`pgdr_store::Event`] (cluster,
//!   workflow, kind, step, state, epoch, at, attempt, duration) appended to
//!   the store's event log and published to [`Engine::subscribe`]rs.
//! - **Time** is `tokio::time` (backoff, timeouts, durations) and a
//!   [`pgdr_store::Clock`] (timestamps), so tests run with paused time.

mod engine;
mod error;
mod record;
mod run;
mod step;

pub use engine::{Engine, EngineOptions, WorkflowHandle};
pub use error::{StepError, WorkflowError};
pub use record::{
    Attempt, ClusterLock, OwnerClaim, Plan, PlannedStep, Signoff, StepRecord, StepState, WorkflowId, WorkflowRecord,
    WorkflowState,
};
pub use step::{Registry, RetryPolicy, Stage, Step, StepBody, StepContext, StepOutput, WorkflowDef};
