//! One client session: login, then the relay loop, over a backend the
//! session may change at transaction boundaries.
//!
//! - `login`: the client's login (relayed to the backend, or SCRAM/md5
//!   against a stored verifier) and the verifier refresh.
//! - `relay`: the loop that forwards messages both ways and follows the
//!   transaction state from ReadyForQuery; a lost backend.
//! - `state`: what follows the client from backend to backend (tracked
//!   SETs, reported settings, named statements, unmovable state); pure.
//! - `mover`: the start of a transaction (pause gate, routing check) and
//!   landing the session on a new backend with its state replayed.
//!
//! The relay scans each read buffer for whole messages and forwards them in
//! one write; only a few tags are looked at (ReadyForQuery for transaction
//! state, ParameterStatus, ErrorResponse, ParseComplete; Query, Parse, Bind,
//! Describe, Close, Sync from the client), and large messages are streamed
//! through without being buffered whole.
//!
//! A transaction starts when an idle session (no Sync outstanding, last
//! ReadyForQuery `I`) sends a message: that is where the pause gate is
//! checked and where a session moves to a new primary when the routing
//! changed. A move re-creates the backend with the same startup parameters
//! and credential, replays tracked SETs and reported settings, and
//! re-prepares named statements lazily before their next Bind/Describe.
//!
//! On the writer endpoint, a connect for a new client connection or for a
//! session starting a transaction that fails because the backend is
//! unreachable (refused, reset, timed out, "cannot connect now") is held
//! rather than failed: the session retries with a short backoff, at once
//! when the routing changes, and waits in the pause gate if the cluster is
//! paused meanwhile; `max_pause` after the first failure it ends with
//! SQLSTATE 57P03. Only that failure path differs; nothing running inside a
//! transaction is ever retried.

mod login;
mod mover;
mod relay;
mod state;

pub(crate) use login::refresh_users;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use bytes::BytesMut;
use pgdr_model::Epoch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::backend::{BackendConn, BackendError, Credential};
use crate::protocol::{self, MAX_DECODED, Startup};
use crate::routing::Backend;
use crate::server::{ClientError, Endpoint};
use crate::{ClusterState, Inner};

/// Pause between connect attempts while the primary is unreachable (a
/// routing change cuts it short).
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(150);

/// Whether a failed connect means the backend is not reachable now (as
/// opposed to refusing this client: auth, bad database...).
fn unreachable(e: &BackendError) -> bool {
    match e {
        BackendError::Connect { .. } | BackendError::Timeout { .. } | BackendError::Io(_) => true,
        BackendError::Refused { code, .. } => code == "57P03",
        _ => false,
    }
}

/// One session's wait for an unreachable writer backend; counted in the
/// cluster's `held` while it lasts, so an episode is logged once.
struct Hold {
    state: Arc<ClusterState>,
    deadline: Instant,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.state.held.fetch_sub(1, Ordering::SeqCst) == 1 {
            tracing::info!(cluster = %self.state.name, "no writer connect is held for an unreachable primary any more");
        }
    }
}

enum Flow {
    Continue,
    Terminate,
}

struct Session<S> {
    inner: Arc<Inner>,
    state: Arc<ClusterState>,
    endpoint: Endpoint,
    routing: tokio::sync::watch::Receiver<crate::Routing>,
    client: S,
    cbuf: BytesMut,
    out: BytesMut,
    /// Bytes for the client not yet written: they go with the next write
    /// (a login's SASLFinal, AuthenticationOk, settings and ReadyForQuery
    /// in one write, as PostgreSQL sends them).
    cpend: BytesMut,
    be: Option<BackendConn>,
    startup: Startup,
    cred: Credential,
    /// Why this session cannot log in again elsewhere, if it cannot.
    unmovable_auth: Option<&'static str>,
    /// Last ReadyForQuery status: `I`, `T` or `E`.
    status: u8,
    /// Sync/Query/FunctionCall sent, ReadyForQuery not yet received.
    pending: u32,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// Holds a writer gate count (a transaction is running).
    busy: bool,
    /// Backend lost mid-batch: client messages are dropped until Sync.
    failed: bool,
    /// Backend lost inside a transaction: the next backend is put into a
    /// failed transaction so the client's ROLLBACK/COMMIT get PostgreSQL's
    /// own answers.
    reopen_aborted: bool,
    /// The client has not yet been told its transaction was lost.
    lost_error: bool,
    /// Parse messages awaiting ParseComplete: (injected by the proxy,
    /// batch, statement hash or 0), in the order sent.
    expect: VecDeque<(bool, u64, u64)>,
    /// Close messages awaiting CloseComplete: (injected, batch).
    expect_close: VecDeque<(bool, u64)>,
    syncs_sent: u64,
    syncs_done: u64,
    /// Session state that follows the client from backend to backend.
    st: state::Tracked,
    /// Pooled sessions: the pool, the right to a backend while holding
    /// one, and what sessions left on the backend held.
    pool: Option<Arc<crate::pool::Pool>>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    bst: crate::pool::BackendState,
    /// Pin reasons counted in the pinned gauge for this session.
    pinned_metric: u8,
    /// Client messages rewritten for the backend (pooled statement names).
    bout: BytesMut,
    key: (i32, i32),
    /// Where a cancel request with `key` goes (shared with the cancel map).
    cancel_to: crate::CancelSlot,
    /// A routing change was seen by the relay (an idle listener): the
    /// next transaction start checks the backend against it.
    route_seen: bool,
    cskip: usize,
    bskip: usize,
}

pub(crate) async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    inner: Arc<Inner>,
    state: Arc<ClusterState>,
    endpoint: Endpoint,
    client: S,
    cbuf: BytesMut,
    startup: Startup,
    token: CancellationToken,
) -> Result<(), ClientError> {
    let gauge = state.metrics.connection(endpoint.as_str());
    gauge.inc();
    let pool = match state.settings.pool {
        pgdr_config::PoolMode::Session => None,
        pgdr_config::PoolMode::Transaction => state.pools.get(
            crate::pool::PoolKey {
                endpoint: endpoint.as_str(),
                user: startup.user().to_owned(),
                database: startup.database().to_owned(),
            },
            state.settings.pool_size,
            state.settings.pool_min_idle,
            &state.metrics.pool_closed,
        ),
    };
    state.sessions.fetch_add(1, Ordering::Relaxed);
    let mut s = Session {
        routing: state.routing.clone(),
        inner,
        state,
        endpoint,
        client,
        cbuf,
        out: BytesMut::with_capacity(1024),
        cpend: BytesMut::new(),
        be: None,
        startup,
        cred: Credential::None,
        unmovable_auth: None,
        status: b'I',
        pending: 0,
        unsynced: false,
        busy: false,
        failed: false,
        reopen_aborted: false,
        lost_error: false,
        expect: VecDeque::new(),
        expect_close: VecDeque::new(),
        syncs_sent: 0,
        syncs_done: 0,
        st: state::Tracked::default(),
        pool,
        permit: None,
        bst: Default::default(),
        pinned_metric: 0,
        bout: BytesMut::new(),
        key: (0, 0),
        cancel_to: Default::default(),
        route_seen: false,
        cskip: 0,
        bskip: 0,
    };
    let r = async {
        s.login().await?;
        s.relay(token).await
    }
    .await;
    gauge.dec();
    r
}

impl<S> Drop for Session<S> {
    fn drop(&mut self) {
        if self.busy {
            self.state.gate.end();
        }
        self.state.sessions.fetch_sub(1, Ordering::Relaxed);
        if self.key.0 != 0
            && let Ok(mut m) = self.inner.cancel.lock()
        {
            m.remove(&self.key.0);
        }
        if self.pinned_metric != 0 {
            for (bit, label, _) in state::PINS {
                if self.pinned_metric & bit != 0 {
                    self.state.metrics.pinned(label).dec();
                }
            }
        }
        if let Some(be) = &self.be {
            // Best effort: a polite Terminate so the server logs no EOF. A
            // pooled backend left mid-transaction or pinned is not reused.
            match &self.pool {
                Some(p) => p.closed(Some(be)),
                None => {
                    let _ = be.stream.try_write(&[b'X', 0, 0, 0, 4]);
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Sends a FATAL error and returns the error that ends the session.
    async fn fatal(&mut self, code: &str, msg: String) -> ClientError {
        self.out.clear();
        self.take_pending();
        protocol::put_error(&mut self.out, "FATAL", code, &msg);
        let _ = self.client.write_all(&self.out).await;
        let _ = self.client.flush().await;
        ClientError::Closed(msg)
    }

    async fn forward_backend_error(&mut self, e: BackendError) -> ClientError {
        self.state.metrics.error(e.kind());
        match e {
            BackendError::Refused { severity, code, message } => {
                self.out.clear();
                self.take_pending();
                protocol::put_error(&mut self.out, &severity, &code, &message);
                let _ = self.client.write_all(&self.out).await;
                ClientError::Closed(message)
            }
            e => self.fatal("08006", format!("cannot connect to the database server: {e}")).await,
        }
    }

    /// Moves the bytes not yet written to the client to the front of `out`.
    fn take_pending(&mut self) {
        if !self.cpend.is_empty() {
            self.out.extend_from_slice(&self.cpend);
            self.cpend.clear();
        }
    }

    /// Writes the bytes not yet written to the client.
    async fn flush_pending(&mut self) -> Result<(), ClientError> {
        if !self.cpend.is_empty() {
            self.client.write_all(&self.cpend).await?;
            self.cpend.clear();
        }
        Ok(())
    }

    /// Reads one whole message from the client (login phase).
    async fn read_client_message(&mut self) -> Result<BytesMut, ClientError> {
        loop {
            if let Some(m) = protocol::split_message(&mut self.cbuf, MAX_DECODED)? {
                return Ok(m);
            }
            let n = tokio::time::timeout(Duration::from_secs(30), self.client.read_buf(&mut self.cbuf))
                .await
                .map_err(|_| ClientError::StartupTimeout)??;
            if n == 0 {
                return Err(ClientError::Closed("client closed during login".into()));
            }
        }
    }

    /// Waits for a backend the routing allows for this endpoint.
    async fn pick(&mut self) -> Result<(Backend, Epoch), ClientError> {
        let deadline = tokio::time::Instant::now() + self.state.settings.max_pause;
        loop {
            let (found, fallback) = {
                let r = self.routing.borrow_and_update();
                let primary = r.primary.clone().filter(|p| !self.state.is_marked_read_only(p, r.epoch));
                let (b, fallback) = match self.endpoint {
                    Endpoint::Writer => (primary, false),
                    Endpoint::Reader if !r.replicas.is_empty() => {
                        let i = self.state.reader_rr.fetch_add(1, Ordering::Relaxed);
                        (Some(r.replicas[i % r.replicas.len()].clone()), false)
                    }
                    Endpoint::Reader if self.state.settings.reader_fallback => (primary, true),
                    Endpoint::Reader => (None, false),
                };
                (b.map(|b| (b, r.epoch)), fallback)
            };
            if fallback && found.is_some() && self.state.gate.is_paused() {
                // A role change is under way: the reader never falls back
                // to the primary being replaced; it waits like a writer.
                self.wait_reader_fallback().await?;
                continue;
            }
            if let Some(f) = found {
                return Ok(f);
            }
            match tokio::time::timeout_at(deadline, self.routing.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    let what = if self.endpoint == Endpoint::Writer { "primary" } else { "replica" };
                    self.state.metrics.error("no_backend");
                    return Err(self
                        .fatal(
                            "57P03",
                            format!("cannot connect now: cluster {} has no {what} available", self.state.name),
                        )
                        .await);
                }
            }
        }
    }

    /// After a failed connect to `target`: on the writer endpoint, when the
    /// backend is unreachable, waits (for a routing change, the end of a
    /// pause, or a short backoff) and returns true to try again (picking
    /// the backend anew). Returns false when the failure is not held (the
    /// caller reports it); ends the session with 57P03 once `max_pause`
    /// passed since the first failure.
    async fn hold_unreachable(
        &mut self,
        hold: &mut Option<Hold>,
        target: &Backend,
        e: &BackendError,
    ) -> Result<bool, ClientError> {
        if self.endpoint != Endpoint::Writer || !unreachable(e) {
            return Ok(false);
        }
        let now = Instant::now();
        let max_pause = self.state.settings.max_pause;
        let deadline = match hold {
            Some(h) => h.deadline,
            None => {
                self.state.metrics.held_on_unreachable.inc();
                if self.state.held.fetch_add(1, Ordering::SeqCst) == 0 {
                    tracing::warn!(
                        cluster = %self.state.name,
                        backend = %target.node,
                        addr = %target.addr(),
                        error = %e,
                        max_pause = %pgdr_model::format_duration(max_pause),
                        "primary unreachable: holding new writer connections and transactions until the routing changes or it answers"
                    );
                }
                hold.insert(Hold { state: self.state.clone(), deadline: now + max_pause }).deadline
            }
        };
        if now >= deadline {
            self.state.metrics.error("unreachable_timeout");
            return Err(self
                .fatal(
                    "57P03",
                    format!(
                        "cannot connect now: the primary of cluster {} stayed unreachable longer than max_pause ({}): {e}",
                        self.state.name,
                        pgdr_model::format_duration(max_pause)
                    ),
                )
                .await);
        }
        // A held transaction is not running: give back its gate count so
        // a pause drains without waiting for it (begin_tx takes it again).
        if self.busy {
            self.busy = false;
            self.state.gate.end();
        }
        if self.state.gate.is_paused() {
            let s = &self.state.settings;
            match self.state.gate.wait_open(deadline.saturating_duration_since(now), s.max_queue).await {
                Ok(Some(w)) => self.state.metrics.queue_wait.observe(w.as_secs_f64()),
                Ok(None) => {}
                Err(e) => return Err(self.paused_error(e).await),
            }
            return Ok(true);
        }
        let wake = (now + UNREACHABLE_BACKOFF).min(deadline);
        if let Ok(Err(_)) = tokio::time::timeout_at(wake, self.routing.changed()).await {
            // The routing's sender is gone: only the backoff is left.
            tokio::time::sleep_until(wake).await;
        }
        Ok(true)
    }

    /// A reader session on the primary (the reader's fallback when no
    /// replica is routed) waits out a pause in the writers' queue, so no
    /// transaction reaches the primary being replaced.
    pub(super) async fn wait_reader_fallback(&mut self) -> Result<(), ClientError> {
        let s = &self.state.settings;
        match self.state.gate.wait_open(s.max_pause, s.max_queue).await {
            Ok(Some(w)) => {
                self.state.metrics.queue_wait.observe(w.as_secs_f64());
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(self.paused_error(e).await),
        }
    }

    async fn paused_error(&mut self, e: crate::gate::GateError) -> ClientError {
        self.state.metrics.error(match e {
            crate::gate::GateError::QueueFull => "queue_full",
            crate::gate::GateError::Timeout => "pause_timeout",
        });
        let msg = match e {
            crate::gate::GateError::QueueFull => {
                format!(
                    "cannot connect now: cluster {} is paused for a role change and its queue is full",
                    self.state.name
                )
            }
            crate::gate::GateError::Timeout => format!(
                "cannot connect now: cluster {} stayed paused for a role change longer than max_pause ({})",
                self.state.name,
                pgdr_model::format_duration(self.state.settings.max_pause)
            ),
        };
        self.fatal("57P03", msg).await
    }

    fn is_idle(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.status == b'I'
    }
}
