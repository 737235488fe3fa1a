//! One client session: login (relayed or SCRAM against a verifier), then
//! the relay loop.
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use pgdr_model::Epoch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::auth::StoredSecret;
use crate::backend::{self, BUF_SIZE, BackendConn, BackendError, Credential};
use crate::protocol::{self, MAX_DECODED, MAX_MESSAGE, Startup, auth};
use crate::routing::Backend;
use crate::scram::ScramServer;
use crate::server::{ClientError, Endpoint};
use crate::{AuthConfig, CancelTarget, ClusterState, Inner};

/// Settings PostgreSQL reports with ParameterStatus that a client may have
/// changed and that are restored after a move.
const RESTORABLE: [&str; 8] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
    "search_path",
    "default_transaction_read_only",
];
const MAX_TRACKED_SETS: usize = 1000;
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
    /// Parse messages awaiting ParseComplete: (injected by the proxy, batch).
    expect: VecDeque<(bool, u64)>,
    syncs_sent: u64,
    syncs_done: u64,
    prepared: HashMap<Bytes, Bytes>,
    unprepared: HashSet<Bytes>,
    sets: Vec<String>,
    client_params: Vec<(String, String)>,
    pinned: Option<&'static str>,
    key: (i32, i32),
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
    state.sessions.fetch_add(1, Ordering::Relaxed);
    let mut s = Session {
        routing: state.routing.clone(),
        inner,
        state,
        endpoint,
        client,
        cbuf,
        out: BytesMut::with_capacity(1024),
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
        syncs_sent: 0,
        syncs_done: 0,
        prepared: HashMap::new(),
        unprepared: HashSet::new(),
        sets: Vec::new(),
        client_params: Vec::new(),
        pinned: None,
        key: (0, 0),
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
        if let Some(be) = &self.be {
            // Best effort: a polite Terminate so the server logs no EOF.
            let _ = be.stream.try_write(&[b'X', 0, 0, 0, 4]);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Sends a FATAL error and returns the error that ends the session.
    async fn fatal(&mut self, code: &str, msg: String) -> ClientError {
        self.out.clear();
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
                protocol::put_error(&mut self.out, &severity, &code, &message);
                let _ = self.client.write_all(&self.out).await;
                ClientError::Closed(message)
            }
            e => self.fatal("08006", format!("cannot connect to the database server: {e}")).await,
        }
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
            let found = {
                let r = self.routing.borrow_and_update();
                let primary = r.primary.clone().filter(|p| !self.state.is_marked_read_only(p, r.epoch));
                let b = match self.endpoint {
                    Endpoint::Writer => primary,
                    Endpoint::Reader if !r.replicas.is_empty() => {
                        let i = self.state.reader_rr.fetch_add(1, Ordering::Relaxed);
                        Some(r.replicas[i % r.replicas.len()].clone())
                    }
                    Endpoint::Reader if self.state.settings.reader_fallback => primary,
                    Endpoint::Reader => None,
                };
                b.map(|b| (b, r.epoch))
            };
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

    async fn login(&mut self) -> Result<(), ClientError> {
        if self.endpoint == Endpoint::Writer {
            let s = &self.state.settings;
            match self.state.gate.wait_open(s.max_pause, s.max_queue).await {
                Ok(Some(w)) => self.state.metrics.queue_wait.observe(w.as_secs_f64()),
                Ok(None) => {}
                Err(e) => return Err(self.paused_error(e).await),
            }
        }
        let mut hold = None;
        let mut authenticated = false;
        let (mut conn, epoch) = loop {
            let (target, epoch) = self.pick().await?;
            let tcp = self.state.settings.tcp;
            let r = match self.state.auth.clone() {
                // Only the TCP connect can be retried: after it the client
                // takes part in the backend's authentication.
                AuthConfig::Passthrough => match backend::connect_tcp(&target, tcp).await {
                    Ok(stream) => Ok(self.login_passthrough(stream, &target, epoch).await?),
                    Err(e) => Err(e),
                },
                AuthConfig::UsersFile(_) | AuthConfig::Auto(_) => {
                    if !authenticated {
                        self.authenticate_client(&target).await?;
                        authenticated = true;
                    }
                    backend::open(&target, epoch, tcp, &self.startup, &self.cred).await
                }
            };
            match r {
                Ok(c) => break (c, epoch),
                Err(e) => {
                    if !self.hold_unreachable(&mut hold, &target, &e).await? {
                        return Err(self.forward_backend_error(e).await);
                    }
                }
            }
        };
        drop(hold);
        if self.endpoint == Endpoint::Writer && conn.read_only {
            self.state.mark_read_only(&conn.backend, epoch);
        }
        // Our own cancel key, mapped to the backend's.
        let key = loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            let secret = rand::random::<i32>();
            let Ok(mut m) = self.inner.cancel.lock() else { break (pid.max(1), secret) };
            if pid != 0 && !m.contains_key(&pid) {
                m.insert(pid, CancelTarget { secret, backend: Some((conn.backend.clone(), conn.key)) });
                break (pid, secret);
            }
        };
        self.key = key;
        self.out.clear();
        if !matches!(self.state.auth, AuthConfig::Passthrough) {
            protocol::put_auth(&mut self.out, auth::OK, &[]);
        }
        for (k, v) in &conn.params {
            protocol::put_parameter_status(&mut self.out, k, v);
        }
        self.client_params = std::mem::take(&mut conn.params);
        protocol::put_backend_key(&mut self.out, key.0, key.1);
        protocol::put_ready(&mut self.out, b'I');
        self.client.write_all(&self.out).await?;
        self.be = Some(conn);
        Ok(())
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

    /// Passthrough: the backend authenticates; the exchange is relayed.
    async fn login_passthrough(
        &mut self,
        stream: tokio::net::TcpStream,
        target: &Backend,
        epoch: Epoch,
    ) -> Result<BackendConn, ClientError> {
        let mut conn = BackendConn::new(stream, target.clone(), epoch);
        self.out.clear();
        self.startup.encode(&mut self.out);
        conn.stream.write_all(&self.out).await.map_err(|e| ClientError::Closed(e.to_string()))?;
        loop {
            let m = match conn.read_message().await {
                Ok(m) => m,
                Err(e) => return Err(self.forward_backend_error(e).await),
            };
            let body = protocol::body(&m);
            match m[0] {
                b'R' if body.len() >= 4 => {
                    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    self.client.write_all(&m).await?;
                    match code {
                        auth::OK => break,
                        auth::SASL_FINAL => {}
                        _ => {
                            conn.used_password = true;
                            let reply = self.read_client_message().await?;
                            if reply[0] != b'p' {
                                return Err(self.fatal("08P01", "expected a password message".into()).await);
                            }
                            conn.stream.write_all(&reply).await.map_err(|e| ClientError::Closed(e.to_string()))?;
                        }
                    }
                }
                b'E' => {
                    self.client.write_all(&m).await?;
                    return Err(ClientError::Closed("the server refused the login".into()));
                }
                b'N' => self.client.write_all(&m).await?,
                t => {
                    return Err(self
                        .fatal("08P01", format!("unexpected message {:?} from the server", t as char))
                        .await);
                }
            }
        }
        if let Err(e) = conn.finish_login().await {
            return Err(self.forward_backend_error(e).await);
        }
        if conn.used_password {
            self.unmovable_auth =
                Some("it logged in with auth = \"passthrough\", so the proxy holds no reusable credential");
        }
        Ok(conn)
    }

    /// `users`/`auto`: SCRAM-SHA-256 (or md5) against the stored secret.
    async fn authenticate_client(&mut self, target: &Backend) -> Result<(), ClientError> {
        let user = self.startup.user().to_owned();
        let mut secret = self.state.users.get(&user);
        if secret.is_none()
            && let AuthConfig::Auto(login) = &self.state.auth
            && self.state.users.may_refresh()
        {
            match crate::auth::fetch_from_backend(target, login, self.state.settings.tcp.connect_timeout).await {
                Ok(u) => self.state.users.replace(u),
                Err(e) => {
                    tracing::warn!(cluster = %self.state.name, error = %e, "cannot refresh user verifiers")
                }
            }
            secret = self.state.users.get(&user);
        }
        let failed = |user: &str| format!("password authentication failed for user \"{user}\"");
        if let Some(StoredSecret::Md5(stored)) = &secret {
            let salt: [u8; 4] = rand::random();
            self.out.clear();
            protocol::put_auth(&mut self.out, auth::MD5, &salt);
            self.client.write_all(&self.out).await?;
            let m = self.read_client_message().await?;
            let got = protocol::take_cstr(protocol::body(&m)).map(|(p, _)| p).unwrap_or(&[]);
            if m[0] != b'p' || got != crate::auth::md5_response(stored, salt).as_bytes() {
                self.state.metrics.error("auth_failed");
                return Err(self.fatal("28P01", failed(&user)).await);
            }
            self.cred = Credential::Md5(stored.clone());
            return Ok(());
        }
        let verifier = match secret {
            Some(StoredSecret::Scram(v)) => Some(v),
            _ => None,
        };
        self.out.clear();
        protocol::put_auth(&mut self.out, auth::SASL, b"SCRAM-SHA-256\0\0");
        self.client.write_all(&self.out).await?;
        let m = self.read_client_message().await?;
        let body = protocol::body(&m);
        let first = (|| {
            let (mech, rest) = protocol::take_cstr(body)?;
            if m[0] != b'p' || mech != b"SCRAM-SHA-256" || rest.len() < 4 {
                return None;
            }
            let n = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let data = rest.get(4..4 + usize::try_from(n).ok()?)?;
            std::str::from_utf8(data).ok().map(str::to_owned)
        })();
        let Some(first) = first else {
            return Err(self.fatal("28000", "expected a SCRAM-SHA-256 SASLInitialResponse".into()).await);
        };
        let server_key = verifier.as_ref().map(|v| v.server_key);
        let (server, server_first) = match ScramServer::start(verifier, &first) {
            Ok(x) => x,
            Err(e) => return Err(self.fatal("28000", e.to_string()).await),
        };
        self.out.clear();
        protocol::put_auth(&mut self.out, auth::SASL_CONTINUE, server_first.as_bytes());
        self.client.write_all(&self.out).await?;
        let m = self.read_client_message().await?;
        let fin = String::from_utf8_lossy(protocol::body(&m)).into_owned();
        if m[0] != b'p' {
            return Err(self.fatal("28000", "expected a SASLResponse".into()).await);
        }
        match server.finish(&fin) {
            Ok((key, server_final)) => {
                self.out.clear();
                protocol::put_auth(&mut self.out, auth::SASL_FINAL, server_final.as_bytes());
                self.client.write_all(&self.out).await?;
                self.cred = Credential::Scram { key, server_key };
                Ok(())
            }
            Err(crate::scram::ScramError::BadProof) => {
                self.state.metrics.error("auth_failed");
                Err(self.fatal("28P01", failed(&user)).await)
            }
            Err(e) => Err(self.fatal("28000", e.to_string()).await),
        }
    }

    fn is_idle(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.status == b'I'
    }

    async fn relay(&mut self, token: CancellationToken) -> Result<(), ClientError> {
        enum Ev {
            Client(std::io::Result<usize>),
            Backend(std::io::Result<usize>),
            Shutdown,
        }
        // Registered once: polling a fresh `cancelled()` every iteration
        // would lock the token's shared waiter list on the hot path.
        let shutdown = token.cancelled();
        tokio::pin!(shutdown);
        loop {
            if self.cbuf.capacity() - self.cbuf.len() < 4096 {
                self.cbuf.reserve(BUF_SIZE);
            }
            let ev = {
                let be = &mut self.be;
                let client = &mut self.client;
                let cbuf = &mut self.cbuf;
                let be_read = async move {
                    match be.as_mut() {
                        Some(be) => {
                            if be.buf.capacity() - be.buf.len() < 4096 {
                                be.buf.reserve(BUF_SIZE);
                            }
                            be.stream.read_buf(&mut be.buf).await
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    r = be_read => Ev::Backend(r),
                    r = client.read_buf(cbuf) => Ev::Client(r),
                    _ = &mut shutdown => Ev::Shutdown,
                }
            };
            match ev {
                Ev::Client(Ok(0)) | Ev::Client(Err(_)) => return Ok(()),
                Ev::Client(Ok(n)) => {
                    self.state.metrics.bytes_in.inc_by(n as u64);
                    if let Flow::Terminate = self.on_client().await? {
                        return Ok(());
                    }
                }
                Ev::Backend(Ok(0)) | Ev::Backend(Err(_)) => self.backend_lost().await?,
                Ev::Backend(Ok(n)) => {
                    self.state.metrics.bytes_out.inc_by(n as u64);
                    self.on_backend().await?;
                }
                Ev::Shutdown => {
                    return Err(self.fatal("57P01", "terminating connection: the proxy is shutting down".into()).await);
                }
            }
        }
    }

    /// Starts a transaction: pause gate (writer), then make sure the backend
    /// is the one the current routing names.
    async fn begin_tx(&mut self) -> Result<(), ClientError> {
        loop {
            self.begin_tx_once().await?;
            if self.endpoint != Endpoint::Writer || self.busy {
                return Ok(());
            }
            // A held connect gave back the gate count: take it again, then
            // check the routing again.
        }
    }

    async fn begin_tx_once(&mut self) -> Result<(), ClientError> {
        if self.endpoint == Endpoint::Writer && !self.busy {
            let s = &self.state.settings;
            match self.state.gate.begin(s.max_pause, s.max_queue).await {
                Ok(w) => {
                    self.busy = true;
                    if let Some(w) = w {
                        self.state.metrics.queue_wait.observe(w.as_secs_f64());
                    }
                }
                Err(e) => return Err(self.paused_error(e).await),
            }
        }
        let must_move = match &mut self.be {
            None => true,
            Some(be) => {
                if self.routing.has_changed().unwrap_or(false) || be.read_only {
                    let r = self.routing.borrow_and_update();
                    match self.endpoint {
                        Endpoint::Writer => {
                            if r.primary.as_ref() == Some(&be.backend) && !be.read_only {
                                be.epoch = r.epoch;
                                false
                            } else {
                                true
                            }
                        }
                        Endpoint::Reader => {
                            !(r.replicas.contains(&be.backend)
                                || r.primary.as_ref() == Some(&be.backend) && r.replicas.is_empty())
                        }
                    }
                } else {
                    false
                }
            }
        };
        if must_move {
            self.move_backend().await?;
        }
        Ok(())
    }

    /// Re-creates the backend connection on the backend the routing names.
    async fn move_backend(&mut self) -> Result<(), ClientError> {
        let had_backend = self.be.is_some();
        if let Some(what) = self.pinned {
            self.state.metrics.error("unmovable_session");
            return Err(self
                .fatal(
                    "57P01",
                    format!(
                        "terminating connection: the server changed and this session holds {what}, which cannot move to the new server; reconnect"
                    ),
                )
                .await);
        }
        if let Some(why) = self.unmovable_auth {
            self.state.metrics.error("unmovable_session");
            return Err(self
                .fatal(
                    "57P01",
                    format!(
                        "terminating connection: the server changed and this session cannot move: {why}; reconnect"
                    ),
                )
                .await);
        }
        if let Some(old) = self.be.take() {
            let _ = old.stream.try_write(&[b'X', 0, 0, 0, 4]);
        }
        let mut hold = None;
        let (mut conn, epoch) = loop {
            let (target, epoch) = self.pick().await?;
            match backend::open(&target, epoch, self.state.settings.tcp, &self.startup, &self.cred).await {
                Ok(c) => break (c, epoch),
                Err(e) => {
                    if self.hold_unreachable(&mut hold, &target, &e).await? {
                        continue;
                    }
                    self.state.metrics.error(e.kind());
                    return Err(self
                        .fatal("08006", format!("terminating connection: cannot reach the new server: {e}"))
                        .await);
                }
            }
        };
        drop(hold);
        if self.endpoint == Endpoint::Writer && conn.read_only {
            self.state.mark_read_only(&conn.backend, epoch);
        }
        // Replay tracked SETs, then reported settings that differ.
        self.out.clear();
        let mut n = 0;
        for s in &self.sets {
            protocol::put_query(&mut self.out, s);
            n += 1;
        }
        for (k, v) in &self.client_params {
            if RESTORABLE.contains(&k.as_str())
                && conn.params.iter().find(|(ck, _)| ck == k).map(|(_, cv)| cv) != Some(v)
            {
                let sql = format!("SET {} = '{}'", quote_ident(k), v.replace('\'', "''"));
                protocol::put_query(&mut self.out, &sql);
                n += 1;
            }
        }
        if n > 0
            && let Err(e) = replay(&mut conn, &self.out, n).await
        {
            return Err(self
                .fatal(
                    "08006",
                    format!("terminating connection: cannot restore session settings on the new server: {e}"),
                )
                .await);
        }
        // Tell the client about reported values that now differ.
        self.out.clear();
        for (k, v) in &conn.params {
            match self.client_params.iter_mut().find(|(ck, _)| ck == k) {
                Some(p) if p.1 == *v => {}
                Some(p) => {
                    p.1 = v.clone();
                    protocol::put_parameter_status(&mut self.out, k, v);
                }
                None => {
                    self.client_params.push((k.clone(), v.clone()));
                    protocol::put_parameter_status(&mut self.out, k, v);
                }
            }
        }
        if !self.out.is_empty() {
            self.client.write_all(&self.out).await?;
        }
        self.unprepared = self.prepared.keys().cloned().collect();
        if let Ok(mut m) = self.inner.cancel.lock()
            && let Some(t) = m.get_mut(&self.key.0)
        {
            t.backend = Some((conn.backend.clone(), conn.key));
        }
        if had_backend || !self.prepared.is_empty() || !self.sets.is_empty() {
            self.state.metrics.moves.inc();
            tracing::info!(cluster = %self.state.name, to = %conn.backend.node, epoch = %epoch, "session moved to a new backend");
        }
        self.be = Some(conn);
        Ok(())
    }

    async fn on_client(&mut self) -> Result<Flow, ClientError> {
        // The rest of a large message being streamed through.
        if self.cskip > 0 {
            let n = self.cskip.min(self.cbuf.len());
            self.cskip -= n;
            if let Some(be) = self.be.as_mut()
                && be.stream.write_all(&self.cbuf[..n]).await.is_err()
            {
                self.cbuf.advance(n);
                self.backend_lost().await?;
                return Ok(Flow::Continue);
            }
            self.cbuf.advance(n);
            if self.cbuf.is_empty() {
                return Ok(Flow::Continue);
            }
        }
        if self.failed {
            self.discard_until_sync().await?;
            if self.failed || self.cbuf.is_empty() {
                return Ok(Flow::Continue);
            }
        }
        if self.cbuf.first() == Some(&b'X') && (self.is_idle() || self.be.is_none()) {
            return Ok(Flow::Terminate);
        }
        if self.is_idle() || self.be.is_none() {
            if self.be.is_none() && !self.is_idle() && !self.reopen_aborted {
                return Err(self.fatal("08006", "the server connection was lost".into()).await);
            }
            self.begin_tx().await?;
            if self.reopen_aborted {
                self.reopen_aborted = false;
                let r = match self.be.as_mut() {
                    Some(be) => abort_tx(be).await,
                    None => Ok(()),
                };
                if let Err(e) = r {
                    return Err(self
                        .fatal("08006", format!("terminating connection: cannot continue on the new server: {e}"))
                        .await);
                }
            }
        }
        let mut fwd = 0usize;
        loop {
            let rest = &self.cbuf[fwd..];
            let avail = rest.len();
            let h = match protocol::header(rest, MAX_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    // Forward what was fine, then end only this client.
                    self.write_backend(fwd).await;
                    return Err(self.fatal("08P01", format!("invalid frontend message: {e}")).await);
                }
            };
            if h.total > avail {
                let whole_needed = matches!(h.tag, b'Q' | b'P' | b'B' | b'D' | b'C') && h.total <= MAX_DECODED;
                if whole_needed {
                    break;
                }
                // Stream the part we have; the rest follows in later reads.
                self.note_client_tag(h.tag);
                self.cskip = h.total - avail;
                fwd = self.cbuf.len();
                break;
            }
            let msg_start = fwd;
            let body = &self.cbuf[fwd + 5..fwd + h.total];
            match h.tag {
                b'Q' => {
                    self.pending += 1;
                    self.syncs_sent += 1;
                    if self.pinned.is_none() {
                        self.pinned = protocol::unmovable_state(body);
                    }
                    if protocol::is_session_set(body) && self.sets.len() < MAX_TRACKED_SETS {
                        let sql = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body)).into_owned();
                        if !self.sets.contains(&sql) {
                            self.sets.push(sql);
                        }
                    }
                }
                b'P' => {
                    self.unsynced = true;
                    if self.pinned.is_none() {
                        self.pinned = protocol::unmovable_state(protocol::parse_query_text(body).unwrap_or(&[]));
                    }
                    let name = protocol::parse_statement_name(body).unwrap_or(&[]);
                    if !name.is_empty() {
                        let name = Bytes::copy_from_slice(name);
                        self.unprepared.remove(&name);
                        self.prepared.insert(name, Bytes::copy_from_slice(&self.cbuf[msg_start..msg_start + h.total]));
                    }
                    self.expect.push_back((false, self.syncs_sent));
                }
                b'B' | b'D' => {
                    self.unsynced = true;
                    if !self.unprepared.is_empty() {
                        let name = if h.tag == b'B' {
                            protocol::bind_statement_name(body)
                        } else {
                            protocol::target(body).filter(|(k, _)| *k == b'S').map(|(_, n)| n)
                        };
                        if let Some(parse) =
                            name.and_then(|n| self.unprepared.take(n)).and_then(|n| self.prepared.get(&n).cloned())
                        {
                            // Re-prepare before first use on this backend.
                            if !self.write_backend(fwd).await {
                                return Ok(Flow::Continue);
                            }
                            fwd = 0;
                            self.expect.push_back((true, self.syncs_sent));
                            if let Some(be) = self.be.as_mut()
                                && be.stream.write_all(&parse).await.is_err()
                            {
                                self.backend_lost().await?;
                                return Ok(Flow::Continue);
                            }
                        }
                    }
                }
                b'C' => {
                    self.unsynced = true;
                    if let Some((b'S', name)) = protocol::target(body)
                        && !name.is_empty()
                    {
                        self.prepared.remove(name);
                        self.unprepared.remove(name);
                    }
                }
                b'S' => {
                    self.pending += 1;
                    self.syncs_sent += 1;
                    self.unsynced = false;
                }
                b'F' => {
                    self.pending += 1;
                    self.syncs_sent += 1;
                }
                b'X' => {
                    self.write_backend(fwd).await;
                    return Ok(Flow::Terminate);
                }
                t => self.note_client_tag(t),
            }
            fwd += h.total;
        }
        self.write_backend(fwd).await;
        Ok(Flow::Continue)
    }

    fn note_client_tag(&mut self, tag: u8) {
        if !matches!(tag, b'd' | b'c' | b'f' | b'S' | b'Q' | b'F' | b'X') {
            self.unsynced = true;
        }
    }

    /// Writes `cbuf[..n]` to the backend and consumes it; on a write error
    /// handles the lost backend and returns false.
    async fn write_backend(&mut self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let ok = match self.be.as_mut() {
            Some(be) => be.stream.write_all(&self.cbuf[..n]).await.is_ok(),
            None => false,
        };
        self.cbuf.advance(n);
        if !ok {
            // The error (if any) reaches the client through backend_lost.
            let _ = self.backend_lost().await;
        }
        ok
    }

    /// After a lost backend mid-batch: drop client messages until Sync, then
    /// answer it with ReadyForQuery.
    async fn discard_until_sync(&mut self) -> Result<(), ClientError> {
        while let Some(h) = protocol::header(&self.cbuf, MAX_MESSAGE)? {
            if self.cbuf.len() < h.total {
                break;
            }
            self.cbuf.advance(h.total);
            if h.tag == b'X' {
                return Err(ClientError::Closed("client terminated after losing its transaction".into()));
            }
            self.out.clear();
            if self.lost_error {
                self.lost_error = false;
                protocol::put_error(
                    &mut self.out,
                    "ERROR",
                    "08006",
                    "the server connection was lost inside this transaction; it was not committed",
                );
            }
            let end = matches!(h.tag, b'S' | b'Q');
            if end {
                self.failed = false;
                protocol::put_ready(&mut self.out, self.status);
            }
            if !self.out.is_empty() {
                self.client.write_all(&self.out).await?;
            }
            if end {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn on_backend(&mut self) -> Result<(), ClientError> {
        let Some(be) = self.be.as_mut() else { return Ok(()) };
        let mut fwd = 0usize;
        let mut lost = false;
        let mut end_tx = false;
        loop {
            if self.bskip > 0 {
                let n = self.bskip.min(be.buf.len() - fwd);
                fwd += n;
                self.bskip -= n;
                if self.bskip > 0 {
                    break;
                }
            }
            let rest = &be.buf[fwd..];
            let h = match protocol::header(rest, MAX_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(_) => {
                    lost = true;
                    break;
                }
            };
            if h.total > rest.len() {
                if matches!(h.tag, b'Z' | b'S' | b'E' | b'1' | b'K') && h.total <= MAX_DECODED {
                    break;
                }
                self.bskip = h.total - rest.len();
                fwd = be.buf.len();
                break;
            }
            let body = &rest[5..h.total];
            match h.tag {
                b'Z' => {
                    self.status = body.first().copied().unwrap_or(b'I');
                    self.pending = self.pending.saturating_sub(1);
                    let done = self.syncs_done;
                    self.syncs_done += 1;
                    while self.expect.front().is_some_and(|(_, b)| *b <= done) {
                        self.expect.pop_front();
                    }
                    if self.pending == 0 && !self.unsynced && self.status == b'I' {
                        end_tx = true;
                    }
                }
                b'S' => {
                    if let Some((k, v)) = protocol::parse_parameter_status(body) {
                        if k == b"in_hot_standby" && v == b"on" {
                            be.read_only = true;
                        }
                        let (k, v) = (String::from_utf8_lossy(k), String::from_utf8_lossy(v));
                        match self.client_params.iter_mut().find(|(ck, _)| *ck == k) {
                            Some(p) => p.1 = v.into_owned(),
                            None => self.client_params.push((k.into_owned(), v.into_owned())),
                        }
                    }
                }
                b'E' => {
                    let f = protocol::parse_error(body);
                    if f.code == b"25006" && self.endpoint == Endpoint::Writer {
                        be.read_only = true;
                        self.state.mark_read_only(&be.backend, be.epoch);
                    }
                    if f.severity == b"FATAL" || f.severity == b"PANIC" {
                        // The server is ending this connection (shutdown,
                        // terminate): handled as a lost backend, not relayed.
                        lost = true;
                        break;
                    }
                }
                b'1' => {
                    if let Some((injected, _)) = self.expect.pop_front()
                        && injected
                    {
                        // Our own re-prepare's ParseComplete: drop it.
                        if fwd > 0 {
                            self.client.write_all(&be.buf[..fwd]).await?;
                        }
                        be.buf.advance(fwd + h.total);
                        fwd = 0;
                        continue;
                    }
                }
                _ => {}
            }
            fwd += h.total;
        }
        // Account the transaction's end before the client can see it.
        if end_tx && self.pending == 0 && !self.unsynced && self.status == b'I' {
            if self.busy {
                self.busy = false;
                self.state.gate.end();
            }
            self.state.metrics.transactions.inc();
        }
        if fwd > 0 {
            self.client.write_all(&be.buf[..fwd]).await?;
            be.buf.advance(fwd);
        }
        if lost {
            self.backend_lost().await?;
        }
        Ok(())
    }

    /// The backend connection ended or failed.
    async fn backend_lost(&mut self) -> Result<(), ClientError> {
        self.be = None;
        self.bskip = 0;
        self.cskip = 0;
        if let Ok(mut m) = self.inner.cancel.lock()
            && let Some(t) = m.get_mut(&self.key.0)
        {
            t.backend = None;
        }
        if self.is_idle() {
            // Nothing in flight: reconnect at the next transaction.
            tracing::debug!(cluster = %self.state.name, "idle session's server connection ended; it will reconnect on next use");
            return Ok(());
        }
        self.state.metrics.error("backend_lost");
        if self.status != b'I' {
            // Inside a transaction: it is gone (never replayed). Report it
            // to a waiting client; the session continues on the next server
            // in a failed transaction, so the client's ROLLBACK (or COMMIT,
            // answered ROLLBACK) works as on PostgreSQL.
            self.out.clear();
            if self.pending > 0 {
                protocol::put_error(
                    &mut self.out,
                    "ERROR",
                    "08006",
                    "the server connection was lost inside this transaction; it was not committed (if COMMIT was already sent, its outcome is unknown)",
                );
                for _ in 0..self.pending {
                    protocol::put_ready(&mut self.out, b'E');
                }
                self.client.write_all(&self.out).await?;
                self.failed = self.unsynced;
            } else {
                // Idle in the transaction: the error answers its next message.
                self.failed = true;
                self.lost_error = true;
            }
            self.pending = 0;
            self.expect.clear();
            self.unsynced = false;
            self.status = b'E';
            self.reopen_aborted = true;
            if self.busy {
                self.busy = false;
                self.state.gate.end();
            }
            return Ok(());
        }
        // A statement outside an explicit transaction was running: its
        // outcome is unknown. Report it and carry on with a new backend.
        self.out.clear();
        protocol::put_error(
            &mut self.out,
            "ERROR",
            "08006",
            "the server connection was lost while this statement ran; its outcome is unknown (the session continues on the current server)",
        );
        for _ in 0..self.pending {
            protocol::put_ready(&mut self.out, b'I');
        }
        self.client.write_all(&self.out).await?;
        self.failed = self.unsynced;
        self.pending = 0;
        self.expect.clear();
        self.unsynced = false;
        self.status = b'I';
        if self.busy {
            self.busy = false;
            self.state.gate.end();
        }
        Ok(())
    }
}

/// Sends the replay queries and waits for their `n` ReadyForQuery.
async fn replay(conn: &mut BackendConn, queries: &[u8], n: usize) -> Result<(), BackendError> {
    conn.stream.write_all(queries).await?;
    let mut seen = 0;
    let mut err = None;
    while seen < n {
        let m = conn.read_message().await?;
        match m[0] {
            b'Z' => seen += 1,
            b'E' => err = Some(backend::refused(protocol::body(&m))),
            b'S' => {
                if let Some((k, v)) = protocol::parse_parameter_status(protocol::body(&m)) {
                    conn.note_parameter(k, v);
                }
            }
            _ => {}
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Puts a fresh backend into a failed transaction block (status `E`).
async fn abort_tx(conn: &mut BackendConn) -> Result<(), BackendError> {
    let mut q = BytesMut::new();
    protocol::put_query(&mut q, "BEGIN; SELECT 1/0");
    conn.stream.write_all(&q).await?;
    loop {
        let m = conn.read_message().await?;
        if m[0] == b'Z' {
            return Ok(());
        }
    }
}

fn quote_ident(s: &str) -> String {
    if s.bytes().all(|c| c.is_ascii_lowercase() || c == b'_') {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// Keeps `auto` verifiers fresh: at start and every minute from the
/// current primary.
pub(crate) async fn refresh_users(state: Arc<ClusterState>, token: CancellationToken) {
    let AuthConfig::Auto(login) = &state.auth else { return };
    let mut routing = state.routing.clone();
    loop {
        let primary = routing.borrow_and_update().primary.clone();
        if let Some(p) = primary {
            match crate::auth::fetch_from_backend(
                &p,
                login,
                state.settings.tcp.connect_timeout.max(Duration::from_secs(2)),
            )
            .await
            {
                Ok(u) => {
                    tracing::debug!(cluster = %state.name, users = u.len(), "user verifiers loaded from the primary");
                    state.users.replace(u);
                }
                Err(e) => tracing::warn!(cluster = %state.name, error = %e, "cannot load user verifiers"),
            }
        }
        let wait = if state.users.is_empty() { Duration::from_secs(1) } else { Duration::from_secs(60) };
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = routing.changed() => {}
        }
    }
}
