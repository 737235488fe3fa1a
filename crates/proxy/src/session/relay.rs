//! The relay loop: client and backend messages forwarded in whole-buffer
//! writes, transaction state followed from ReadyForQuery, a lost backend
//! reported without losing the session.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::mover::abort_tx;
use super::{Flow, Session, state};
use crate::backend::BUF_SIZE;
use crate::protocol::{self, MAX_DECODED, MAX_MESSAGE};
use crate::server::{ClientError, Endpoint};
use crate::sql;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn relay(&mut self, token: CancellationToken) -> Result<(), ClientError> {
        enum Ev {
            Client(std::io::Result<usize>),
            Backend(std::io::Result<usize>),
            Routing(bool),
            Shutdown,
        }
        let mut routing_open = true;
        // Registered once: polling a fresh `cancelled()` every iteration
        // would lock the token's shared waiter list on the hot path.
        let shutdown = token.cancelled();
        tokio::pin!(shutdown);
        loop {
            if self.cbuf.capacity() - self.cbuf.len() < 4096 {
                self.cbuf.reserve(BUF_SIZE);
            }
            // An idle listener does not wait for its client to speak to
            // follow the primary: notifications must keep coming.
            let listener = self.endpoint == Endpoint::Writer
                && self.is_idle()
                && !self.failed
                && (!self.st.listening.is_empty() || self.st.listen_unknown);
            if listener && self.be.is_none() {
                self.relisten().await?;
                continue;
            }
            let ev = {
                let be = &mut self.be;
                let client = &mut self.client;
                let cbuf = &mut self.cbuf;
                let routing = &mut self.routing;
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
                    r = routing.changed(), if listener && routing_open => Ev::Routing(r.is_ok()),
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
                Ev::Routing(open) => {
                    routing_open = open;
                    if open {
                        self.route_seen = true;
                        self.relisten().await?;
                    }
                }
                Ev::Shutdown => {
                    return Err(self.fatal("57P01", "terminating connection: the proxy is shutting down".into()).await);
                }
            }
        }
    }

    async fn on_client(&mut self) -> Result<Flow, ClientError> {
        // The rest of a large message being streamed through.
        if self.cskip > 0 {
            let n = self.cskip.min(self.cbuf.len());
            self.cskip -= n;
            if let Some(be) = self.be.as_mut()
                && be.send(&self.cbuf[..n]).await.is_err()
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
        if self.be.is_none() && self.is_idle() && self.pool.is_some() && self.answer_known_parses().await? {
            return Ok(Flow::Continue);
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
        // Pooled: bytes before `copied` are already in `bout`, rewritten
        // where statement names needed it.
        let pooled = self.pool.is_some();
        let mut copied = 0usize;
        loop {
            let rest = &self.cbuf[fwd..];
            let avail = rest.len();
            let h = match protocol::header(rest, MAX_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    // Forward what was fine, then end only this client.
                    self.write_assembled(fwd, copied).await;
                    return Err(self.fatal("08P01", format!("invalid frontend message: {e}")).await);
                }
            };
            if h.total > avail {
                let whole_needed = matches!(h.tag, b'Q' | b'P' | b'B' | b'D' | b'C') && h.total <= MAX_DECODED;
                if whole_needed {
                    break;
                }
                if pooled && h.tag == b'B' {
                    // A large Bind of a named statement: its name is
                    // rewritten in the part at hand, the rest streamed.
                    let partial = &self.cbuf[fwd..];
                    let name = match protocol::bind_statement_name(&partial[5..]) {
                        Some(n) => n,
                        None if avail < MAX_DECODED => break,
                        None => {
                            self.write_assembled(fwd, copied).await;
                            return Err(self
                                .fatal("08P01", "invalid frontend message: Bind names too long".into())
                                .await);
                        }
                    };
                    let st = (!name.is_empty()).then(|| self.st.prepared.get(name)).flatten();
                    if let Some(st) = st {
                        let (hash, parse) = (st.hash, st.parse.clone());
                        self.bout.extend_from_slice(&self.cbuf[copied..fwd]);
                        if !self.bst.statements.contains(&hash) {
                            self.put_injected_parse(hash, &parse);
                        }
                        let partial = &self.cbuf[fwd..];
                        put_renamed_bind_prefix(&mut self.bout, partial, h.total, &state::backend_name(hash));
                        copied = self.cbuf.len();
                    }
                } else if h.tag == b'B' && !self.st.unprepared.is_empty() {
                    // Session mode after a move: re-prepare first.
                    let Some(name) = protocol::bind_statement_name(&self.cbuf[fwd + 5..]) else { break };
                    if let Some(parse) = self.st.take_unprepared(name) {
                        self.bout.extend_from_slice(&self.cbuf[copied..fwd]);
                        copied = fwd;
                        self.expect.push_back((true, self.syncs_sent, 0));
                        self.bout.extend_from_slice(&parse);
                    }
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
                    self.st.batch = self.syncs_sent;
                    self.syncs_sent += 1;
                    let hits = self.st.on_query(body);
                    if pooled && hits & (sql::hit::DEALLOCATE | sql::hit::DISCARD) != 0 {
                        self.bst.statements.clear();
                        self.bst.unknown = true;
                    }
                }
                b'P' => {
                    self.unsynced = true;
                    self.st.batch = self.syncs_sent;
                    let hash = self.st.on_parse(&self.cbuf[msg_start..msg_start + h.total], body);
                    match hash {
                        Some(hash) if pooled => {
                            self.bout.extend_from_slice(&self.cbuf[copied..msg_start]);
                            copied = msg_start + h.total;
                            self.put_pooled_parse(hash, msg_start, h.total, false);
                        }
                        _ => self.expect.push_back((false, self.syncs_sent, 0)),
                    }
                }
                b'B' | b'D' if pooled => {
                    self.unsynced = true;
                    let name = if h.tag == b'B' {
                        protocol::bind_statement_name(body)
                    } else {
                        protocol::target(body).filter(|(k, _)| *k == b'S').map(|(_, n)| n)
                    };
                    let st = name.filter(|n| !n.is_empty()).and_then(|n| self.st.prepared.get(n));
                    if let Some(st) = st {
                        let (hash, parse) = (st.hash, st.parse.clone());
                        self.bout.extend_from_slice(&self.cbuf[copied..msg_start]);
                        copied = msg_start + h.total;
                        if !self.bst.statements.contains(&hash) {
                            // Prepared on demand where the session landed.
                            self.put_injected_parse(hash, &parse);
                        }
                        let msg = &self.cbuf[msg_start..msg_start + h.total];
                        rename_statement(&mut self.bout, msg, &state::backend_name(hash));
                    }
                }
                b'B' | b'D' => {
                    self.unsynced = true;
                    if !self.st.unprepared.is_empty() {
                        let name = if h.tag == b'B' {
                            protocol::bind_statement_name(body)
                        } else {
                            protocol::target(body).filter(|(k, _)| *k == b'S').map(|(_, n)| n)
                        };
                        if let Some(parse) = name.and_then(|n| self.st.take_unprepared(n)) {
                            // Re-prepare before first use on this backend.
                            self.bout.extend_from_slice(&self.cbuf[copied..msg_start]);
                            copied = msg_start;
                            self.expect.push_back((true, self.syncs_sent, 0));
                            self.bout.extend_from_slice(&parse);
                        }
                    }
                }
                b'C' => {
                    self.unsynced = true;
                    self.expect_close.push_back((false, self.syncs_sent));
                    if let Some((b'S', name)) = protocol::target(body) {
                        let hash = self.st.prepared.get(name).map(|s| s.hash);
                        self.st.on_close_statement(name);
                        if pooled && let Some(hash) = hash {
                            self.bout.extend_from_slice(&self.cbuf[copied..msg_start]);
                            copied = msg_start + h.total;
                            self.bst.statements.remove(&hash);
                            let msg = &self.cbuf[msg_start..msg_start + h.total];
                            rename_statement(&mut self.bout, msg, &state::backend_name(hash));
                        }
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
                    self.write_assembled(fwd, copied).await;
                    return Ok(Flow::Terminate);
                }
                t => self.note_client_tag(t),
            }
            fwd += h.total;
        }
        self.write_assembled(fwd, copied).await;
        Ok(Flow::Continue)
    }

    /// Pooled, between transactions: a batch of only named Parses of
    /// statements known to prepare fine, then Sync (how libpq's PQprepare
    /// looks), is answered without taking a backend; the statements are
    /// prepared where the client next lands. Returns whether it was.
    async fn answer_known_parses(&mut self) -> Result<bool, ClientError> {
        let Some(pool) = self.pool.clone() else { return Ok(false) };
        let mut at = 0;
        let mut parses = Vec::new();
        loop {
            let Ok(Some(h)) = protocol::header(&self.cbuf[at..], MAX_DECODED) else { return Ok(false) };
            if h.total > self.cbuf.len() - at {
                return Ok(false);
            }
            let body = &self.cbuf[at + 5..at + h.total];
            match h.tag {
                b'P' => {
                    let name = protocol::parse_statement_name(body).unwrap_or(&[]);
                    let query = protocol::parse_query_text(body).unwrap_or(&[]);
                    if name.is_empty()
                        || !pool.is_known(state::statement_hash(&body[name.len() + 1..]))
                        || protocol::unmovable_state(query).is_some()
                        || protocol::is_session_set(query)
                    {
                        return Ok(false);
                    }
                    parses.push((at, h.total));
                }
                b'S' if at + h.total == self.cbuf.len() && !parses.is_empty() => break,
                _ => return Ok(false),
            }
            at += h.total;
        }
        self.out.clear();
        for (start, len) in parses {
            let msg = self.cbuf[start..start + len].to_vec();
            self.st.on_parse(&msg, &msg[5..]);
            protocol::put_message(&mut self.out, b'1', |_| {});
        }
        protocol::put_ready(&mut self.out, b'I');
        self.cbuf.clear();
        self.client.write_all(&self.out).await?;
        Ok(true)
    }

    /// A client's named Parse on a pooled backend: sent under the
    /// proxy-side name (closed first: it may exist there already).
    fn put_pooled_parse(&mut self, hash: u64, start: usize, len: usize, injected: bool) {
        let name = state::backend_name(hash);
        self.put_close_statement(&name);
        let msg = &self.cbuf[start..start + len];
        rename_statement(&mut self.bout, msg, &name);
        self.bst.statements.insert(hash);
        self.expect.push_back((injected, self.syncs_sent, hash));
    }

    /// Prepares a statement of the session on its pooled backend before
    /// its use; the answers are not relayed.
    fn put_injected_parse(&mut self, hash: u64, parse: &[u8]) {
        let name = state::backend_name(hash);
        self.put_close_statement(&name);
        rename_statement(&mut self.bout, parse, &name);
        self.bst.statements.insert(hash);
        self.expect.push_back((true, self.syncs_sent, hash));
    }

    /// An injected Close of a proxy-side statement (not an error when it
    /// does not exist); its CloseComplete is not relayed.
    fn put_close_statement(&mut self, name: &str) {
        protocol::put_message(&mut self.bout, b'C', |o| {
            o.extend_from_slice(b"S");
            protocol::put_cstr(o, name);
        });
        self.expect_close.push_back((true, self.syncs_sent));
    }

    /// Sends the client's messages `cbuf[..n]` to the backend, through
    /// `bout` when some were rewritten (`cbuf[..copied]` is in `bout`).
    async fn write_assembled(&mut self, n: usize, copied: usize) -> bool {
        if self.bout.is_empty() {
            return self.write_backend(n).await;
        }
        if n > copied {
            self.bout.extend_from_slice(&self.cbuf[copied..n]);
        }
        self.cbuf.advance(n);
        let ok = match self.be.as_mut() {
            Some(be) => be.send(&self.bout).await.is_ok(),
            None => false,
        };
        self.bout.clear();
        if !ok {
            let _ = self.backend_lost().await;
        }
        ok
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
            Some(be) => be.send(&self.cbuf[..n]).await.is_ok(),
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
                if matches!(h.tag, b'Z' | b'S' | b'E' | b'1' | b'3' | b'C' | b'K') && h.total <= MAX_DECODED {
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
                    // Parses of that batch never answered failed (or were
                    // skipped): their statements do not exist there.
                    while let Some(&(_, b, hash)) = self.expect.front()
                        && b <= done
                    {
                        self.expect.pop_front();
                        if hash != 0 {
                            self.bst.statements.remove(&hash);
                        }
                    }
                    while self.expect_close.front().is_some_and(|(_, b)| *b <= done) {
                        self.expect_close.pop_front();
                    }
                    self.st.on_ready(self.status, done);
                    if self.pending == 0 && !self.unsynced && self.status == b'I' {
                        end_tx = true;
                    }
                }
                b'S' => {
                    if let Some((k, v)) = protocol::parse_parameter_status(body) {
                        if k == b"in_hot_standby" && v == b"on" {
                            be.read_only = true;
                        }
                        crate::backend::set_param(&mut be.params, k, v);
                        self.st.on_parameter_status(k, v);
                    }
                }
                b'C' => self.st.on_command_complete(body),
                b'E' => {
                    self.st.on_error();
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
                b'1' | b'3' => {
                    let injected = if h.tag == b'1' {
                        let e = self.expect.pop_front();
                        if let (Some(p), Some((_, _, hash))) = (&self.pool, e)
                            && hash != 0
                        {
                            p.note_known(hash);
                        }
                        e.is_some_and(|e| e.0)
                    } else {
                        self.expect_close.pop_front().is_some_and(|e| e.0)
                    };
                    if injected {
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
        } else if end_tx && self.is_idle() && (self.pool.is_some() || self.st.recheck || self.st.sync) {
            self.release().await?;
        }
        Ok(())
    }

    /// The backend connection ended or failed.
    pub(super) async fn backend_lost(&mut self) -> Result<(), ClientError> {
        if let (Some(p), Some(_)) = (&self.pool, self.be.take()) {
            p.closed(None);
        }
        self.be = None;
        self.bst = Default::default();
        self.bskip = 0;
        self.cskip = 0;
        if self.is_idle() {
            // A pooled session holds no backend between transactions.
            self.permit = None;
        }
        if let Ok(mut t) = self.cancel_to.lock() {
            *t = None;
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

/// Writes `msg` (a Parse, Bind, Describe or Close naming a statement) with
/// the statement name replaced by `name`.
fn rename_statement(out: &mut BytesMut, msg: &[u8], name: &str) {
    let tag = msg[0];
    let body = &msg[5..];
    protocol::put_message(out, tag, |o| match tag {
        b'P' => {
            let old = protocol::parse_statement_name(body).map_or(0, |n| n.len());
            protocol::put_cstr(o, name);
            o.extend_from_slice(body.get(old + 1..).unwrap_or(&[]));
        }
        b'B' => {
            let portal = protocol::take_cstr(body).map_or(0, |(p, _)| p.len());
            let old = protocol::bind_statement_name(body).map_or(0, |n| n.len());
            o.extend_from_slice(&body[..portal + 1]);
            protocol::put_cstr(o, name);
            o.extend_from_slice(body.get(portal + 1 + old + 1..).unwrap_or(&[]));
        }
        _ => {
            o.extend_from_slice(b"S");
            protocol::put_cstr(o, name);
        }
    });
}

/// Writes the first part (`partial`, header included) of a Bind whose
/// whole length is `total`, with its statement name replaced by `name`
/// and its length adjusted; the rest of the message follows unchanged.
fn put_renamed_bind_prefix(out: &mut BytesMut, partial: &[u8], total: usize, name: &str) {
    let body = &partial[5..];
    let portal = protocol::take_cstr(body).map_or(0, |(p, _)| p.len());
    let old = protocol::bind_statement_name(body).map_or(0, |n| n.len());
    let len = total - 1 - old + name.len();
    out.extend_from_slice(b"B");
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&body[..portal + 1]);
    protocol::put_cstr(out, name);
    out.extend_from_slice(body.get(portal + 1 + old + 1..).unwrap_or(&[]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_statements() {
        let mut parse = BytesMut::new();
        protocol::put_message(&mut parse, b'P', |o| {
            protocol::put_cstr(o, "s1");
            protocol::put_cstr(o, "SELECT $1");
            o.extend_from_slice(&[0, 1, 0, 0, 0, 23]);
        });
        let mut out = BytesMut::new();
        rename_statement(&mut out, &parse, "pgdr_x");
        let body = protocol::body(&out);
        assert_eq!(protocol::parse_statement_name(body), Some(&b"pgdr_x"[..]));
        assert_eq!(protocol::parse_query_text(body), Some(&b"SELECT $1"[..]));
        assert!(body.ends_with(&[0, 1, 0, 0, 0, 23]));
        let mut bind = BytesMut::new();
        protocol::put_message(&mut bind, b'B', |o| {
            protocol::put_cstr(o, "");
            protocol::put_cstr(o, "s1");
            o.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        });
        out.clear();
        rename_statement(&mut out, &bind, "pgdr_x");
        assert_eq!(protocol::bind_statement_name(protocol::body(&out)), Some(&b"pgdr_x"[..]));
        assert_eq!(out.len(), bind.len() + 4);
        let mut close = BytesMut::new();
        protocol::put_message(&mut close, b'C', |o| {
            o.extend_from_slice(b"S");
            protocol::put_cstr(o, "s1");
        });
        out.clear();
        rename_statement(&mut out, &close, "pgdr_x");
        assert_eq!(protocol::target(protocol::body(&out)), Some((b'S', &b"pgdr_x"[..])));
        let mut streamed = BytesMut::new();
        put_renamed_bind_prefix(&mut streamed, &bind[..bind.len() - 3], bind.len(), "pgdr_x");
        streamed.extend_from_slice(&bind[bind.len() - 3..]);
        out.clear();
        rename_statement(&mut out, &bind, "pgdr_x");
        assert_eq!(streamed, out, "a streamed Bind is renamed like a whole one");
    }
}
