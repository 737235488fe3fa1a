//! The client's login: relayed to the backend (`passthrough`) or
//! SCRAM-SHA-256/md5 against a stored verifier, then the first backend
//! connection; and the refresh of `auto` verifiers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::Session;
use super::state::Tracked;
use crate::auth::StoredSecret;
use crate::backend::{self, BackendConn, Credential};
use crate::pool::{TRUST_NO, TRUST_OK};
use crate::protocol::{self, auth};
use crate::routing::Backend;
use crate::scram::ScramServer;
use crate::server::{ClientError, Endpoint};
use crate::{AuthConfig, CancelTarget, ClusterState};
use pgdr_model::Epoch;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn login(&mut self) -> Result<(), ClientError> {
        // A client that has not proved who it is takes no place in the
        // pause queue: with `users`/`auto` it authenticates first, within
        // `auth_timeout`. (With `passthrough` the backend authenticates, so
        // a queued client is not yet authenticated: `max_queue` and
        // `max_clients` bound those.)
        if !matches!(self.state.auth, AuthConfig::Passthrough) {
            match tokio::time::timeout(self.state.settings.auth_timeout, self.authenticate_client()).await {
                Ok(r) => r?,
                Err(_) => return Err(self.auth_timeout().await),
            }
        }
        if self.endpoint == Endpoint::Writer {
            let s = &self.state.settings;
            match self.state.gate.wait_open(s.max_pause, s.max_queue).await {
                Ok(Some(w)) => self.state.metrics.queue_wait.observe(w.as_secs_f64()),
                Ok(None) => {}
                Err(e) => return Err(self.paused_error(e).await),
            }
        }
        // Pooled unless the client asks for what a shared backend cannot
        // give, or its backends need a password only it holds.
        let startup_sets = Tracked::startup_sets(&self.startup);
        if startup_sets.is_none()
            || matches!(self.state.auth, AuthConfig::Passthrough)
                && self.pool.as_ref().is_some_and(|p| p.trust.load(Ordering::Relaxed) == TRUST_NO)
        {
            self.pool = None;
        }
        let trusted = self.pool.as_ref().is_some_and(|p| p.trust.load(Ordering::Relaxed) == TRUST_OK);
        let mut hold = None;
        let first = loop {
            let (target, epoch) = self.pick().await?;
            let tcp = self.state.settings.tcp;
            let r = match self.state.auth.clone() {
                AuthConfig::Passthrough if trusted => break None,
                // Only the TCP connect can be retried: after it the client
                // takes part in the backend's authentication.
                AuthConfig::Passthrough => {
                    match backend::connect(&target, tcp, self.state.settings.backend_tls.as_ref()).await {
                        Ok(stream) => {
                            let limit = self.state.settings.auth_timeout;
                            match tokio::time::timeout(limit, self.login_passthrough(stream, &target, epoch)).await {
                                Ok(r) => Ok(r?),
                                Err(_) => return Err(self.auth_timeout().await),
                            }
                        }
                        Err(e) => Err(e),
                    }
                }
                AuthConfig::UsersFile(_) | AuthConfig::Auto(_) => {
                    if self.pool.is_some() {
                        break None;
                    }
                    backend::open(
                        &target,
                        epoch,
                        tcp,
                        self.state.settings.backend_tls.as_ref(),
                        &self.startup,
                        &self.cred,
                    )
                    .await
                }
            };
            match r {
                Ok(c) => break Some((c, epoch)),
                Err(e) => {
                    if !self.hold_unreachable(&mut hold, &target, &e).await? {
                        return Err(self.forward_backend_error(e).await);
                    }
                }
            }
        };
        drop(hold);
        // The client saw the backend's AuthenticationOk when its login was
        // relayed.
        let relayed = first.is_some() && matches!(self.state.auth, AuthConfig::Passthrough);
        let mut conn = None;
        if let Some((c, epoch)) = first {
            if self.endpoint == Endpoint::Writer && c.read_only {
                self.state.mark_read_only(&c.backend, epoch);
            }
            match &self.pool {
                // A relayed login: it tells whether this pool's backends
                // let the proxy log in without a password.
                Some(pool) if c.used_password => {
                    pool.trust.store(TRUST_NO, Ordering::Relaxed);
                    self.pool = None;
                    conn = Some(c);
                }
                Some(pool) => {
                    pool.trust.store(TRUST_OK, Ordering::Relaxed);
                    let _ = c.stream.try_write(&[b'X', 0, 0, 0, 4]);
                }
                None => conn = Some(c),
            }
        }
        // Our own cancel key, mapped to the backend's while there is one.
        let key = loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            let secret = rand::random::<i32>();
            let Ok(mut m) = self.inner.cancel.lock() else { break (pid.max(1), secret) };
            if pid != 0 && !m.contains_key(&pid) {
                if let (Some(c), Ok(mut t)) = (conn.as_ref(), self.cancel_to.lock()) {
                    *t = Some((c.backend.clone(), c.key));
                }
                m.insert(pid, CancelTarget { secret, backend: self.cancel_to.clone() });
                break (pid, secret);
            }
        };
        self.key = key;
        // The rest of the login goes to the client in one write (after the
        // SASLFinal still pending, if any).
        if !relayed {
            protocol::put_auth(&mut self.cpend, auth::OK, &[]);
        }
        match conn {
            Some(conn) => {
                for (k, v) in conn.params.iter() {
                    protocol::put_parameter_status(&mut self.cpend, k, v);
                }
                self.st.params = Arc::clone(&conn.params);
                self.be = Some(conn);
            }
            None => {
                // Pooled: land on a pooled backend with the client's
                // startup settings, tell it what they are, give it back.
                self.st.sets = Arc::new(startup_sets.unwrap_or_default());
                self.move_backend().await?;
                self.release().await?;
            }
        }
        protocol::put_backend_key(&mut self.cpend, key.0, key.1);
        protocol::put_ready(&mut self.cpend, b'I');
        self.flush_pending().await
    }

    /// Passthrough: the backend authenticates; the exchange is relayed.
    async fn login_passthrough(
        &mut self,
        stream: backend::BackendStream,
        target: &Backend,
        epoch: Epoch,
    ) -> Result<BackendConn, ClientError> {
        let mut conn = BackendConn::new(stream, target.clone(), epoch);
        self.out.clear();
        self.startup.encode(&mut self.out);
        conn.send(&self.out).await.map_err(|e| ClientError::Closed(e.to_string()))?;
        loop {
            let m = match conn.read_message().await {
                Ok(m) => m,
                Err(e) => return Err(self.forward_backend_error(e).await),
            };
            let body = protocol::body(&m);
            match m[0] {
                b'R' if body.len() >= 4 => {
                    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    if code == auth::SASL {
                        // Channel binding would bind to the backend's TLS,
                        // which the client does not see: plain SCRAM only.
                        self.out.clear();
                        protocol::put_message(&mut self.out, b'R', |o| {
                            o.extend_from_slice(&body[..4]);
                            for mech in backend::sasl_mechanisms(&body[4..]).filter(|m| *m != b"SCRAM-SHA-256-PLUS") {
                                o.extend_from_slice(mech);
                                o.extend_from_slice(&[0]);
                            }
                            o.extend_from_slice(&[0]);
                        });
                        self.client.write_all(&self.out).await?;
                    } else {
                        self.client.write_all(&m).await?;
                    }
                    match code {
                        auth::OK => break,
                        auth::SASL_FINAL => {}
                        _ => {
                            conn.used_password = true;
                            let reply = self.read_client_message().await?;
                            if reply[0] != b'p' {
                                return Err(self.fatal("08P01", "expected a password message".into()).await);
                            }
                            conn.send(&reply).await.map_err(|e| ClientError::Closed(e.to_string()))?;
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

    async fn auth_timeout(&mut self) -> ClientError {
        self.state.metrics.error("auth_timeout");
        let msg = format!(
            "authentication did not finish within {}",
            pgdr_model::format_duration(self.state.settings.auth_timeout)
        );
        self.fatal("08P01", msg).await
    }

    /// `users`/`auto`: SCRAM-SHA-256 (or md5) against the stored secret.
    async fn authenticate_client(&mut self) -> Result<(), ClientError> {
        let user = self.startup.user().to_owned();
        let mut secret = self.state.users.get(&user);
        // Verifiers are read from the current primary (else a replica).
        let source = {
            let r = self.routing.borrow();
            r.primary.clone().or_else(|| r.replicas.first().cloned())
        };
        if secret.is_none()
            && let AuthConfig::Auto(login) = &self.state.auth
            && let Some(target) = &source
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
            let want = crate::auth::md5_response(stored, salt);
            if !crate::scram::ct_eq(got, want.as_bytes()) || m[0] != b'p' {
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
        let mock_salt = crate::scram::mock_salt(&self.inner.mock_secret, &user);
        let (server, server_first) = match ScramServer::start(verifier, &mock_salt, &first) {
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
                // Sent with AuthenticationOk and the rest of the login.
                protocol::put_auth(&mut self.cpend, auth::SASL_FINAL, server_final.as_bytes());
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
