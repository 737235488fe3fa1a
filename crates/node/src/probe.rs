//! `POST /v1/probe`: the agent as a vantage point in its region. It runs the
//! canary write (an upsert of one `pgdr.heartbeat` row) against the target it
//! is given (a primary directly, or a proxy's writer endpoint) as its
//! cluster's login, bounded by the request's timeout, and says what it saw:
//! ok, refused (the host answers, nothing listens), timeout (nothing
//! answered by the deadline) or error (the server refused the write, or the
//! transport failed otherwise), with the latency.
//!
//! The connection to each target is kept between probes (a real write over
//! it each time) and dropped after any failure. Opening one has its own
//! deadline ([`CONNECT_DEADLINE`]): an attempt still under way when a
//! probe's deadline passes goes on, and the next probe writes over it,
//! rather than every probe starting a TLS handshake and SCRAM over that a
//! loaded host cannot finish within the probe's deadline.
//!
//! The controller asks the agents of regions other than the primary's, so
//! one observer's blip never declares an outage and a controller cut off
//! from the primary cannot declare one alone.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use pgdr_api::agent::{ProbeKind, ProbeReply, ProbeRequest};

use crate::agent::{AgentError, AgentState, parse_body};

/// The heartbeat row an agent writes when the request names none.
pub const DEFAULT_ROW: i32 = 10;
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// How long opening a probe's connection may take, whatever the probe's
/// deadline.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// A probe target's kept connection.
pub(crate) type Kept = pgdr_tls::pg::KeptClient<(ProbeKind, String)>;

const SCHEMA_SQL: &str = "CREATE SCHEMA IF NOT EXISTS pgdr; \
     CREATE TABLE IF NOT EXISTS pgdr.heartbeat (id int PRIMARY KEY, counter bigint NOT NULL, at timestamptz NOT NULL, written_by text NOT NULL)";
/// The canary upsert as one simple query (one round trip, where the
/// parameterised form took two): the row and the writer are the agent's own
/// values, the writer's name kept to letters, digits and `-_.:`.
fn upsert_sql(row: i32, written_by: &str) -> String {
    let who: String = written_by.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.:".contains(*c)).collect();
    format!(
        "INSERT INTO pgdr.heartbeat AS h (id, counter, at, written_by) VALUES ({row}, 1, now(), '{who}') \
         ON CONFLICT (id) DO UPDATE SET counter = h.counter + 1, at = now(), written_by = excluded.written_by \
         RETURNING extract(epoch from at)::float8"
    )
}

/// The first column of the first row, as a float8's text.
async fn simple_f64(client: &tokio_postgres::Client, sql: &str) -> Result<Option<f64>, tokio_postgres::Error> {
    for m in client.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).and_then(|v| v.parse::<f64>().ok()));
        }
    }
    Ok(None)
}

/// The handler of `POST /v1/probe`.
pub async fn handle(State(state): State<Arc<AgentState>>, body: Bytes) -> Result<axum::Json<ProbeReply>, AgentError> {
    let req: ProbeRequest = parse_body(&body)?;
    if req.host.trim().is_empty() {
        return Err(AgentError::BadRequest("probe: host is empty".into()));
    }
    if req.port == 0 {
        return Err(AgentError::BadRequest("probe: port 0".into()));
    }
    crate::local::valid_host(&req.host).map_err(|e| AgentError::BadRequest(format!("probe: {e}")))?;
    if state.cfg.target(&req.host, req.port, true).is_none() {
        return Err(AgentError::BadRequest(format!(
            "probe: {}:{} is not a node or proxy of cluster {} in the config ({}): the agent probes only those",
            req.host,
            req.port,
            state.cfg.cluster,
            crate::agent::known_targets(&state.cfg)
        )));
    }
    if req.timeout_ms == 0 {
        return Err(AgentError::BadRequest("probe: timeout_ms must be at least 1".into()));
    }
    // Longer asks are clamped: a probe that waits minutes tells nothing.
    let timeout = Duration::from_millis(req.timeout_ms).min(MAX_TIMEOUT);
    let written_by = format!("pgdr-agent-{}", state.cfg.node);
    let started = tokio::time::Instant::now();
    let probe = async {
        let res = tokio::time::timeout(timeout, write(&state, &req, &written_by)).await;
        (res, started.elapsed().as_secs_f64() * 1000.0)
    };
    // The agent's own status, read alongside when asked (the controller's
    // vantage point then makes one request per probe instead of two).
    let status =
        async { if req.with_status { Some(Box::new(crate::agent::status::collect(&state).await)) } else { None } };
    let ((res, latency_ms), status) = tokio::join!(probe, status);
    let (outcome, error, heartbeat_at) = match res {
        Err(_) => (ProbeKind::Timeout, Some(format!("no answer within {} ms", timeout.as_millis())), None),
        Ok(Ok(at)) => (ProbeKind::Ok, None, Some(at)),
        Ok(Err((kind, msg))) => (kind, Some(msg), None),
    };
    tracing::debug!(node = %state.cfg.node, host = %req.host, port = req.port, outcome = outcome.as_str(), latency_ms, "probe");
    Ok(axum::Json(ProbeReply {
        node: state.cfg.node.clone(),
        region: state.cfg.region.clone(),
        outcome,
        latency_ms,
        error,
        heartbeat_at,
        status,
    }))
}

async fn write(state: &AgentState, req: &ProbeRequest, written_by: &str) -> Result<f64, (ProbeKind, String)> {
    let login = &state.cfg.login;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&req.host)
        .port(req.port)
        .user(&login.user)
        .dbname(&login.database)
        .connect_timeout(CONNECT_DEADLINE)
        .application_name("pgdr-agent-probe")
        // Does the primary take writes, not: is a synchronous standby
        // there (a primary whose commits wait for one is not down).
        .options("-c synchronous_commit=local");
    if let Some(p) = &login.password {
        cfg.password(p);
    }
    let tls = login.tls.clone();
    let open = move || async move {
        match tokio::time::timeout(CONNECT_DEADLINE, pgdr_tls::pg::connect(&cfg, tls.as_ref())).await {
            Ok(r) => r.map_err(|e| classify(&e)),
            Err(_) => Err((ProbeKind::Timeout, format!("not connected within {} s", CONNECT_DEADLINE.as_secs()))),
        }
    };
    let mut probes = state.probes.lock().await;
    let kept = probes.entry((req.host.clone(), req.port)).or_default();
    // If this probe's deadline passes mid-write, the connection is not
    // released, and the next probe opens another.
    let client = kept.get(open, |e| (ProbeKind::Error, format!("connecting: {e}"))).await?;
    let sql = upsert_sql(req.row.unwrap_or(DEFAULT_ROW), written_by);
    let res = match simple_f64(client, &sql).await {
        Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "42P01" || d.code().code() == "3F000") => {
            // First contact with a primary built without the table.
            match client.batch_execute(SCHEMA_SQL).await {
                Ok(()) => simple_f64(client, &sql).await,
                Err(e) => Err(e),
            }
        }
        other => other,
    };
    let at = res
        .map_err(|e| classify(&e))
        .and_then(|at| at.ok_or_else(|| (ProbeKind::Error, "the heartbeat write returned no time".to_owned())));
    match at {
        Ok(_) => kept.release(),
        Err(_) => kept.close(),
    }
    at
}

/// Refused or timed out at the socket, else an error with its message.
fn classify(e: &tokio_postgres::Error) -> (ProbeKind, String) {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return (ProbeKind::Refused, io.to_string()),
                std::io::ErrorKind::TimedOut => return (ProbeKind::Timeout, io.to_string()),
                _ => {}
            }
        }
        src = s.source();
    }
    match e.as_db_error() {
        Some(db) => (ProbeKind::Error, format!("{} ({})", db.message(), db.code().code())),
        None => (ProbeKind::Error, e.to_string()),
    }
}
