//! The mutating actions. Each checks the epoch first, then runs alone (one
//! action at a time per agent), is idempotent (asking for the state the node
//! is already in succeeds with `changed: false`) and reports its steps.

use std::time::{Duration, Instant};

use pgdr_api::agent::{
    Action, EpochOnly, FenceMode, FenceRequest, PromoteRequest, RebuildRequest, RewindRequest, StopMode, StopRequest,
    UpstreamRequest, slot_name,
};
use pgdr_api::controller::ControllerClient;
use pgdr_model::{Epoch, NodeName};
use tokio_postgres::Client;

use super::{AgentError, AgentState, parse_body};
use crate::local::{self, PgError};
use crate::replica::{self, ReplicaPlan, Upstream};

/// What an action did.
pub(crate) struct Done {
    pub changed: bool,
    pub message: String,
    pub steps: Vec<String>,
    /// `stop`: where the shutdown checkpoint is, after a clean stop.
    pub checkpoint_lsn: Option<pgdr_model::Lsn>,
}

impl Done {
    fn new(changed: bool, message: impl Into<String>, steps: Vec<String>) -> Done {
        Done { changed, message: message.into(), steps, checkpoint_lsn: None }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Request {
    Start,
    Stop(StopMode),
    Promote(Option<u64>),
    Fence(FenceMode),
    Unfence,
    Rebuild(RebuildRequest),
    Rewind(RewindRequest),
    Upstream(UpstreamRequest),
}

pub(crate) async fn run(state: &AgentState, action: Action, body: &[u8]) -> Result<Done, AgentError> {
    let (epoch, req) = parse_request(action, body)?;
    confirm_jump(state, epoch).await?;
    state.epoch.check(epoch).await?;
    let _one_at_a_time = state.actions.lock().await;
    tracing::info!(node = %state.cfg.node, %action, %epoch, "action requested");
    match req {
        Request::Start => start(state).await,
        Request::Stop(mode) => stop(state, mode).await,
        Request::Promote(timeout_ms) => promote(state, timeout_ms).await,
        Request::Fence(mode) => fence(state, mode).await,
        Request::Unfence => unfence(state).await,
        Request::Rebuild(r) => rebuild(state, r).await,
        Request::Rewind(r) => rewind(state, r).await,
        Request::Upstream(r) => upstream(state, r).await,
    }
}

/// An action's body, decoded: a 400 with the reason when it does not fit.
pub(crate) fn parse_request(action: Action, body: &[u8]) -> Result<(Epoch, Request), AgentError> {
    Ok(match action {
        Action::Start => (parse_body::<EpochOnly>(body)?.epoch, Request::Start),
        Action::Unfence => (parse_body::<EpochOnly>(body)?.epoch, Request::Unfence),
        Action::Stop => {
            let r: StopRequest = parse_body(body)?;
            (r.epoch, Request::Stop(r.mode))
        }
        Action::Promote => {
            let r: PromoteRequest = parse_body(body)?;
            (r.epoch, Request::Promote(r.timeout_ms))
        }
        Action::Fence => {
            let r: FenceRequest = parse_body(body)?;
            (r.epoch, Request::Fence(r.mode))
        }
        Action::Rebuild => {
            let r: RebuildRequest = parse_body(body)?;
            (r.epoch, Request::Rebuild(r))
        }
        Action::Rewind => {
            let r: RewindRequest = parse_body(body)?;
            (r.epoch, Request::Rewind(r))
        }
        Action::Upstream => {
            let r: UpstreamRequest = parse_body(body)?;
            (r.epoch, Request::Upstream(r))
        }
    })
}

/// An epoch is raised by one per role change, in the controller's store,
/// before any agent hears of it. An agent that heard of every change sees
/// each epoch at most one above the last; a bigger jump (an agent that was
/// away, a new host) is accepted only when the controller confirms its
/// store holds that epoch, so a caller cannot push an agent to an epoch the
/// store never reached (with `u64::MAX` the agent would refuse every
/// legitimate command from then on). Without a controller to ask, a jump is
/// refused.
pub(crate) async fn confirm_jump(state: &AgentState, given: Epoch) -> Result<(), AgentError> {
    let seen = state.epoch.current();
    if given.0 <= seen.0.saturating_add(1) {
        return Ok(());
    }
    let unconfirmed = |why: String| AgentError::EpochUnconfirmed { given, seen, why };
    let Some(ctl) = &state.cfg.controller else {
        return Err(unconfirmed("no controller is configured to confirm it".to_owned()));
    };
    let client = ControllerClient::new_multi(&ctl.addrs, ctl.token.clone(), &state.cfg.http_tls)
        .map_err(|e| unconfirmed(format!("the controller cannot be asked ({e})")))?
        .with_timeout(EPOCH_CONFIRM_TIMEOUT);
    let view = client
        .cluster(state.cfg.cluster.as_str())
        .await
        .map_err(|e| unconfirmed(format!("the controller did not confirm it ({e})")))?;
    if view.epoch < given {
        return Err(unconfirmed(format!("the controller's store holds epoch {}", view.epoch)));
    }
    tracing::info!(node = %state.cfg.node, %given, %seen, stored = %view.epoch, "epoch jump confirmed by the controller");
    Ok(())
}

const EPOCH_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a request may ask `promote` to wait; longer asks are clamped.
pub(crate) const MAX_PROMOTE_TIMEOUT: Duration = Duration::from_secs(3600);

async fn connect(state: &AgentState) -> Result<Client, AgentError> {
    let cfg = &state.cfg;
    if !cfg.pg.is_running().await {
        return Err(AgentError::Down { node: cfg.node.to_string(), detail: "no postmaster is running".to_owned() });
    }
    // Never another server that answers on our address: the action is not
    // for it.
    match tokio::time::timeout(Duration::from_secs(5), cfg.pg.connect_own(&cfg.login)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(AgentError::Down { node: cfg.node.to_string(), detail: e.to_string() }),
        Err(_) => Err(AgentError::Down { node: cfg.node.to_string(), detail: "no answer within 5s".to_owned() }),
    }
}

fn query_err(state: &AgentState) -> impl FnOnce(tokio_postgres::Error) -> AgentError + '_ {
    move |source| {
        AgentError::Pg(PgError::Query { addr: format!("{}:{}", state.cfg.pg.host, state.cfg.pg.port), source })
    }
}

/// Whether the server is in recovery, and whether pgdr fenced it.
async fn role(state: &AgentState, client: &Client) -> Result<(bool, bool), AgentError> {
    let row = client
        .query_one(
            "select pg_is_in_recovery(), setting = 'on' and coalesce(sourcefile like '%postgresql.auto.conf', false) \
             from pg_settings where name = 'default_transaction_read_only'",
            &[],
        )
        .await
        .map_err(query_err(state))?;
    Ok((row.get(0), row.get(1)))
}

async fn start(state: &AgentState) -> Result<Done, AgentError> {
    let pg = &state.cfg.pg;
    let mut steps = Vec::new();
    // A primary that came up without its agent (at boot, by hand) runs in
    // standby mode under the boot guard: this start is the decision it was
    // waiting for, so stop it and start it as what it was.
    if pg.is_running().await && crate::guard::armed(&pg.data_dir) {
        let client = connect(state).await?;
        if role(state, &client).await?.0 {
            drop(client);
            pg.stop(local::StopMode::Fast, state.cfg.pg_wait).await?;
            steps.push("stopped the server that came up in standby mode under the boot guard".to_owned());
        }
    }
    let was_running = pg.is_running().await;
    // Another server on our address: ours could not listen there, and
    // waiting for it to answer would only time out. Said before the guard
    // is lifted, so a refused start changes nothing.
    if !was_running {
        pg.check_port_free(&state.cfg.login).await?;
    }
    if !was_running && crate::guard::lift(&pg.data_dir)? {
        steps.push("lifted the boot guard (standby.signal written by pgdr)".to_owned());
    }
    pg.start(state.cfg.pg_wait).await?;
    wait_own(state, state.cfg.pg_wait).await?;
    if was_running {
        Ok(Done::new(false, "PostgreSQL was already running", steps))
    } else {
        steps.push("pg_ctl start".to_owned());
        Ok(Done::new(true, "started PostgreSQL", steps))
    }
}

async fn stop(state: &AgentState, mode: StopMode) -> Result<Done, AgentError> {
    let pg = &state.cfg.pg;
    let mut done = if !pg.is_running().await {
        Done::new(false, "PostgreSQL was already stopped", vec![])
    } else {
        let m = match mode {
            StopMode::Fast => local::StopMode::Fast,
            StopMode::Immediate => local::StopMode::Immediate,
        };
        pg.stop(m, state.cfg.pg_wait).await?;
        let how = if mode == StopMode::Fast { "fast" } else { "immediate" };
        Done::new(true, format!("stopped PostgreSQL ({how})"), vec![format!("pg_ctl stop -m {how}")])
    };
    // The shutdown checkpoint, read from the stopped data directory (also
    // when it was already stopped: a retried call reads the same one).
    match pg.control_data().await {
        Ok(c) if c.shut_down_as_primary() => {
            done.steps.push(format!("pg_controldata: shut down, shutdown checkpoint at {}", c.checkpoint));
            done.checkpoint_lsn = Some(c.checkpoint);
        }
        Ok(c) => done.steps.push(format!("pg_controldata: {}, no shutdown checkpoint of a primary", c.state)),
        Err(e) => done.steps.push(format!("pg_controldata failed: {e}")),
    }
    Ok(done)
}

/// The wait `promote` allows: the request's, else the configured one,
/// clamped to 1 s ..= [`MAX_PROMOTE_TIMEOUT`] (a deadline past what the
/// clock can hold would panic).
pub(crate) fn promote_timeout(timeout_ms: Option<u64>, default: Duration) -> (Duration, Duration) {
    let asked = timeout_ms.map(Duration::from_millis).unwrap_or(default);
    (asked, asked.clamp(Duration::from_secs(1), MAX_PROMOTE_TIMEOUT))
}

async fn promote(state: &AgentState, timeout_ms: Option<u64>) -> Result<Done, AgentError> {
    let (asked, timeout) = promote_timeout(timeout_ms, state.cfg.promote_timeout);
    let deadline = Instant::now() + timeout;
    let client = connect(state).await?;
    let (in_recovery, fenced) = role(state, &client).await?;
    let mut steps = Vec::new();
    if timeout != asked {
        steps.push(format!("wait limited to {} s (asked {} ms)", timeout.as_secs(), asked.as_millis()));
    }
    if in_recovery {
        // Signal, then watch recovery end at 10 ms on this session
        // (pg_promote's own wait polls at 100 ms, inside the write pause of
        // a switchover).
        let sent: bool = client.query_one("select pg_promote(false)", &[]).await.map_err(query_err(state))?.get(0);
        if !sent {
            return Err(AgentError::Pg(PgError::Invalid("pg_promote could not signal the postmaster".into())));
        }
        let mut promoted = false;
        while Instant::now() < deadline {
            let recovering: bool =
                client.query_one("select pg_is_in_recovery()", &[]).await.map_err(query_err(state))?.get(0);
            if !recovering {
                promoted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        steps.push(format!("pg_promote (done within the wait: {promoted})"));
    }
    if fenced {
        unfence_sql(state, &client).await?;
        steps.push("lifted the read-only fence (ALTER SYSTEM RESET default_transaction_read_only)".to_owned());
    }
    // Writable: out of recovery, and a transaction that takes an xid commits.
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    wait_until(remaining, "the promoted node to take writes", || async {
        match connect(state).await {
            Ok(c) => c.batch_execute("begin read write; select txid_current(); commit").await.is_ok(),
            Err(_) => false,
        }
    })
    .await?;
    steps.push("checked a write commits".to_owned());
    if let Err(e) = crate::guard::arm(&state.cfg.pg) {
        tracing::warn!(node = %state.cfg.node, "cannot write the boot guard: {e}");
    }
    if in_recovery {
        Ok(Done::new(true, "promoted to primary; it takes writes", steps))
    } else if fenced {
        Ok(Done::new(true, "already primary; lifted its read-only fence", steps))
    } else {
        Ok(Done::new(false, "already primary and taking writes", steps))
    }
}

async fn unfence_sql(state: &AgentState, client: &Client) -> Result<(), AgentError> {
    // ALTER SYSTEM cannot run in the implicit transaction of a batch.
    client.batch_execute("alter system reset default_transaction_read_only").await.map_err(query_err(state))?;
    client.batch_execute("select pg_reload_conf()").await.map_err(query_err(state))?;
    wait_setting(state, "off").await
}

/// Waits until a new session sees `default_transaction_read_only = value`
/// (the reload is asynchronous).
async fn wait_setting(state: &AgentState, value: &str) -> Result<(), AgentError> {
    wait_until(Duration::from_secs(10), "the configuration reload", || async {
        match connect(state).await {
            Ok(c) => c
                .query_one("select current_setting('default_transaction_read_only')", &[])
                .await
                .map(|r| r.get::<_, String>(0) == value)
                .unwrap_or(false),
            Err(_) => false,
        }
    })
    .await
}

async fn fence(state: &AgentState, mode: FenceMode) -> Result<Done, AgentError> {
    if mode == FenceMode::Stop {
        let done = stop(state, StopMode::Fast).await?;
        let msg =
            if done.changed { "fenced by stopping PostgreSQL (fast)" } else { "already fenced: PostgreSQL is stopped" };
        return Ok(Done::new(done.changed, msg, done.steps));
    }
    let client = connect(state).await?;
    let (_, was_fenced) = role(state, &client).await?;
    let mut steps = Vec::new();
    if !was_fenced {
        client.batch_execute("alter system set default_transaction_read_only = on").await.map_err(query_err(state))?;
        client.batch_execute("select pg_reload_conf()").await.map_err(query_err(state))?;
        wait_setting(state, "on").await?;
        steps.push("ALTER SYSTEM SET default_transaction_read_only = on; reloaded".to_owned());
    }
    // Sessions opened before the reload may be inside a writing transaction.
    // PostgreSQL 14+ waits (up to 5 s) for each one to be gone.
    let version: i32 = client
        .query_one("select current_setting('server_version_num')::int", &[])
        .await
        .map_err(query_err(state))?
        .get(0);
    let terminate = if version >= 140000 { "pg_terminate_backend(pid, 5000)" } else { "pg_terminate_backend(pid)" };
    let ended: i64 = client
        .query_one(
            &format!(
                "select count({terminate}) from pg_stat_activity \
                 where backend_type = 'client backend' and pid <> pg_backend_pid()"
            ),
            &[],
        )
        .await
        .map_err(query_err(state))?
        .get(0);
    steps.push(format!("terminated {ended} client sessions"));
    // Commits acknowledged with synchronous_commit = off may still sit in WAL
    // buffers. One locally synchronous commit flushes everything before it,
    // so the WAL position reported next covers every acknowledged commit (a
    // switchover waits for the target to replay up to it).
    client
        .batch_execute("begin read write; set local synchronous_commit = local; select txid_current(); commit")
        .await
        .map_err(query_err(state))?;
    steps.push("flushed WAL with one synchronous commit".to_owned());
    let msg = if was_fenced { "already fenced read-only; client sessions ended" } else { "fenced read-only" };
    Ok(Done::new(!was_fenced, msg, steps))
}

async fn unfence(state: &AgentState) -> Result<Done, AgentError> {
    let client = connect(state).await?;
    let (_, fenced) = role(state, &client).await?;
    if !fenced {
        return Ok(Done::new(false, "not fenced", vec![]));
    }
    unfence_sql(state, &client).await?;
    Ok(Done::new(
        true,
        "lifted the read-only fence",
        vec!["ALTER SYSTEM RESET default_transaction_read_only; reloaded".to_owned()],
    ))
}

/// What to copy or stream from: the address this agent's config has for
/// `node` when the request names one (the sender may reach it at another
/// address), else `host:port`, which must be a node of the config.
fn plan(
    state: &AgentState,
    node: Option<&NodeName>,
    host: &str,
    port: u16,
    slot: Option<String>,
) -> Result<ReplicaPlan, AgentError> {
    let cfg = &state.cfg;
    let (host, port) = match node {
        Some(name) => {
            let t = cfg.targets.iter().find(|t| !t.proxy && t.name == name.as_str()).ok_or_else(|| {
                AgentError::BadRequest(format!(
                    "node {name} is not a node of cluster {} in the config (nodes: {}): the agent connects only to those",
                    cfg.cluster,
                    known(cfg, false)
                ))
            })?;
            (t.host.as_str(), t.port)
        }
        None => (host, port),
    };
    if host.is_empty() || port == 0 {
        return Err(AgentError::BadRequest("the upstream needs a host and a port".to_owned()));
    }
    if port == cfg.pg.port && (host == cfg.pg.host || host == "localhost") {
        return Err(AgentError::BadRequest(format!("{host}:{port} is this node itself")));
    }
    crate::local::valid_host(host).map_err(AgentError::BadRequest)?;
    if cfg.target(host, port, false).is_none() {
        return Err(AgentError::BadRequest(format!(
            "{host}:{port} is not a node of cluster {} in the config (nodes: {}): the agent connects only to those",
            cfg.cluster,
            known(cfg, false)
        )));
    }
    let slot = slot.unwrap_or_else(|| slot_name(cfg.node.as_str()));
    if slot.is_empty()
        || slot.len() > 63
        || !slot.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(AgentError::BadRequest(format!("slot name {slot:?}: expected 1 to 63 of a-z, 0-9 and _")));
    }
    Ok(ReplicaPlan {
        upstream: Upstream { host: host.to_owned(), port, slot: Some(slot) },
        login: cfg.login.clone(),
        replication_user: cfg.replication_user.clone(),
        application_name: cfg.node.to_string(),
        settings: cfg.settings.clone(),
        wait: cfg.pg_wait,
    })
}

/// The configured targets, for an error message.
pub(crate) fn known(cfg: &super::AgentConfig, proxies: bool) -> String {
    let v: Vec<String> = cfg
        .targets
        .iter()
        .filter(|t| proxies || !t.proxy)
        .map(|t| format!("{} {}:{}", t.name, t.host, t.port))
        .collect();
    if v.is_empty() { "none".to_owned() } else { v.join(", ") }
}

/// Rebuild and rewind destroy this node's history: refuse while it is a
/// primary that could still be taking writes.
async fn refuse_writable_primary(state: &AgentState, what: &str) -> Result<(), AgentError> {
    if let Ok(client) = connect(state).await {
        let (in_recovery, fenced) = role(state, &client).await?;
        if !in_recovery && !fenced {
            return Err(AgentError::Pg(PgError::Invalid(format!(
                "node {} is a writable primary: fence or stop it before {what} it",
                state.cfg.node
            ))));
        }
    }
    Ok(())
}

async fn rebuild(state: &AgentState, r: RebuildRequest) -> Result<Done, AgentError> {
    let plan = plan(state, r.from.node.as_ref(), &r.from.host, r.from.port, r.slot)?;
    let Some(from) = r.from_backup else {
        refuse_writable_primary(state, "rebuilding").await?;
        let steps = replica::rebuild(&state.cfg.pg, &plan).await?;
        return Ok(Done::new(
            true,
            format!("rebuilt as a replica of {}:{}", plan.upstream.host, plan.upstream.port),
            steps,
        ));
    };
    let Some(restorer) = state.restorer.get().cloned() else {
        return Err(AgentError::BadRequest(format!(
            "the agent of {} cannot restore backups (it runs without the backup engine): rebuild from the upstream instead",
            state.cfg.node
        )));
    };
    refuse_writable_primary(state, "rebuilding").await?;
    let restore = async |pg: &crate::local::LocalPg| {
        restorer
            .restore(from.dest.as_deref(), pg)
            .await
            .map_err(|e| PgError::Invalid(format!("cannot restore the latest backup: {e}")))
    };
    let steps = replica::rebuild_from_backup(&state.cfg.pg, &plan, restore).await?;
    Ok(Done::new(
        true,
        format!("rebuilt from a backup as a replica of {}:{}", plan.upstream.host, plan.upstream.port),
        steps,
    ))
}

async fn rewind(state: &AgentState, r: RewindRequest) -> Result<Done, AgentError> {
    let plan = plan(state, r.from.node.as_ref(), &r.from.host, r.from.port, r.slot)?;
    refuse_writable_primary(state, "rewinding").await?;
    let steps = replica::rewind(&state.cfg.pg, &plan).await?;
    Ok(Done::new(true, format!("rewound to follow {}:{}", plan.upstream.host, plan.upstream.port), steps))
}

async fn upstream(state: &AgentState, r: UpstreamRequest) -> Result<Done, AgentError> {
    let plan = plan(state, r.node.as_ref(), &r.host, r.port, r.slot)?;
    let client = connect(state).await?;
    let (in_recovery, _) = role(state, &client).await?;
    if !in_recovery {
        return Err(AgentError::Pg(PgError::Invalid(format!(
            "node {} is a primary: rewind or rebuild it to make it a replica",
            state.cfg.node
        ))));
    }
    let pg = &state.cfg.pg;
    let before = pg.read_file(replica::UPSTREAM_CONF).unwrap_or_default();
    let mut steps = Vec::new();
    if replica::ensure_slot(&plan.upstream, &plan.login).await? {
        steps.push(format!(
            "created replication slot {} on {}:{}",
            plan.upstream.slot.as_deref().unwrap_or(""),
            plan.upstream.host,
            plan.upstream.port
        ));
    }
    pg.write_passfile(plan.login.password.as_deref())?;
    pg.write_standby_config(&plan.upstream, &plan.replication_user, &plan.application_name, plan.login.tls.as_ref())?;
    let after = pg.read_file(replica::UPSTREAM_CONF).unwrap_or_default();
    if before == after {
        return Ok(Done::new(
            !steps.is_empty(),
            format!("already streaming from {}:{}", plan.upstream.host, plan.upstream.port),
            steps,
        ));
    }
    client.batch_execute("select pg_reload_conf()").await.map_err(query_err(state))?;
    steps.push(format!("primary_conninfo → {}:{}; reloaded", plan.upstream.host, plan.upstream.port));
    Ok(Done::new(true, format!("now streaming from {}:{}", plan.upstream.host, plan.upstream.port), steps))
}

/// Waits until this node's own server accepts connections. Another
/// server answering on its address ends the wait at once
/// ([`PgError::NotOurs`]: one took the port between the check and the
/// start, or ours listens on another address of the same name); a timeout
/// says what the last attempt met.
async fn wait_own(state: &AgentState, timeout: Duration) -> Result<(), AgentError> {
    let cfg = &state.cfg;
    let deadline = Instant::now() + timeout;
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(5), cfg.pg.connect_own(&cfg.login)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e @ PgError::NotOurs { .. })) => return Err(e.into()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 5s".to_owned(),
        };
        if Instant::now() >= deadline {
            return Err(AgentError::Pg(PgError::Timeout {
                what: format!("PostgreSQL to accept connections (last attempt: {last})"),
                secs: timeout.as_secs(),
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<(), AgentError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(AgentError::Pg(PgError::Timeout { what: what.to_owned(), secs: timeout.as_secs() }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdr_api::agent::Endpoint;
    use proptest::prelude::*;

    fn action() -> impl Strategy<Value = Action> {
        proptest::sample::select(Action::ALL.to_vec())
    }

    fn request() -> impl Strategy<Value = (Action, serde_json::Value, Request)> {
        let epoch = any::<u64>();
        let text = ".{0,40}";
        let slot = proptest::option::of("[a-z0-9_]{0,70}");
        prop_oneof![
            epoch.prop_map(|e| (Action::Start, serde_json::json!({ "epoch": e }), Request::Start)),
            (epoch, any::<bool>()).prop_map(|(e, fast)| {
                let mode = if fast { StopMode::Fast } else { StopMode::Immediate };
                (Action::Stop, serde_json::json!({ "epoch": e, "mode": mode }), Request::Stop(mode))
            }),
            (epoch, proptest::option::of(any::<u64>())).prop_map(|(e, t)| (
                Action::Promote,
                serde_json::json!({ "epoch": e, "timeout_ms": t }),
                Request::Promote(t)
            )),
            (epoch, text, any::<u16>(), slot.clone()).prop_map(|(e, host, port, slot)| {
                let r = RebuildRequest {
                    epoch: Epoch(e),
                    from: Endpoint { host, port, node: None },
                    slot,
                    from_backup: None,
                };
                (Action::Rebuild, serde_json::to_value(&r).unwrap_or_default(), Request::Rebuild(r))
            }),
            (epoch, text, any::<u16>(), slot).prop_map(|(e, host, port, slot)| {
                let r = UpstreamRequest { epoch: Epoch(e), host, port, node: None, slot };
                (Action::Upstream, serde_json::to_value(&r).unwrap_or_default(), Request::Upstream(r))
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any bytes as any action's body: a decoded request or a 400,
        /// never a panic.
        #[test]
        fn any_body_is_a_request_or_a_400(a in action(), body in proptest::collection::vec(any::<u8>(), 0..256)) {
            match parse_request(a, &body) {
                Ok(_) => {}
                Err(e) => prop_assert_eq!(e.kind(), "bad_request"),
            }
        }

        /// JSON of the right shape, whatever its values, decodes to what
        /// was encoded.
        #[test]
        fn typed_bodies_round_trip((a, json, want) in request()) {
            let body = serde_json::to_vec(&json).unwrap_or_default();
            let (epoch, got) = parse_request(a, &body).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(Some(epoch.0), json.get("epoch").and_then(serde_json::Value::as_u64));
            prop_assert_eq!(got, want);
        }

        /// Every promote timeout, absurd ones included, gives a wait the
        /// clock can add without overflowing.
        #[test]
        fn promote_timeouts_are_clamped(t in proptest::option::of(any::<u64>()), d in any::<u64>()) {
            let (_, timeout) = promote_timeout(t, Duration::from_millis(d));
            prop_assert!(timeout >= Duration::from_secs(1) && timeout <= MAX_PROMOTE_TIMEOUT);
            prop_assert!(Instant::now().checked_add(timeout).is_some());
        }
    }
}
