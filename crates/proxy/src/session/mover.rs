//! The start of a transaction (pause gate on the writer endpoint, routing
//! check) and landing a session on a new backend: same startup parameters
//! and credential, tracked state replayed (see `state`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;
use super::state::{PIN_CHECK, PINS, STATE_CHECK};
use crate::backend::{self, BackendConn, BackendError, same_shared};
use crate::pool::BackendState;
use crate::protocol::{self, Startup};
use crate::server::{ClientError, Endpoint};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Starts a transaction: pause gate (writer), then make sure the backend
    /// is the one the current routing names.
    pub(super) async fn begin_tx(&mut self) -> Result<(), ClientError> {
        loop {
            self.begin_tx_once().await?;
            if self.endpoint != Endpoint::Writer || self.busy {
                break;
            }
            // A held connect gave back the gate count: take it again, then
            // check the routing again.
        }
        // What landing told the client (changed settings), before anything
        // of the transaction.
        self.flush_pending().await
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
        if self.endpoint == Endpoint::Reader && self.state.gate.is_paused() {
            let on_primary = self.be.as_ref().is_some_and(|be| !self.routing.borrow().replicas.contains(&*be.backend));
            if on_primary {
                self.wait_reader_fallback().await?;
            }
        }
        let must_move = match &mut self.be {
            None => true,
            Some(be) => {
                if self.routing.has_changed().unwrap_or(false) || std::mem::take(&mut self.route_seen) || be.read_only {
                    let r = self.routing.borrow_and_update();
                    match self.endpoint {
                        Endpoint::Writer => {
                            if r.primary.as_ref() == Some(&*be.backend) && !be.read_only {
                                be.epoch = r.epoch;
                                false
                            } else {
                                true
                            }
                        }
                        Endpoint::Reader => {
                            !(r.replicas.contains(&*be.backend)
                                || r.primary.as_ref() == Some(&*be.backend) && r.replicas.is_empty())
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

    /// An idle listening session whose backend ended or whose primary
    /// changed: it moves now (through the pause gate, like a transaction's
    /// start), so its LISTENs are replayed on the new primary and it is
    /// told notifications may have been missed, without waiting for the
    /// client to send anything.
    pub(super) async fn relisten(&mut self) -> Result<(), ClientError> {
        self.begin_tx().await?;
        if self.busy {
            self.busy = false;
            self.state.gate.end();
        }
        Ok(())
    }

    /// Moves the session to the backend the routing names: the old
    /// backend is closed, the session lands on a pooled or new one with its
    /// state replayed. Ends the session when its state cannot move.
    pub(super) async fn move_backend(&mut self) -> Result<(), ClientError> {
        let had_backend = self.be.is_some();
        if had_backend || self.pool.is_none() || self.st.pins != 0 {
            if let Some(what) = self.st.unmovable() {
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
        }
        if let Some(old) = self.be.take() {
            match &self.pool {
                Some(p) => p.closed(Some(&old)),
                None => {
                    let _ = old.stream.try_write(&[b'X', 0, 0, 0, 4]);
                }
            }
        }
        // A pooled connection can die unnoticed while idle (its server
        // crashed a moment ago): replaying on it fails before anything of
        // the client ran, so another is taken.
        for attempt in 0.. {
            let (conn, bst, reused) = self.backend_for_session().await?;
            if self.land(conn, bst, had_backend, reused && attempt < 3).await? {
                break;
            }
        }
        Ok(())
    }

    /// A backend for this session on the backend the routing names: an
    /// idle pooled one, or a new connection (held while the primary is
    /// unreachable, see `hold_unreachable`).
    async fn backend_for_session(&mut self) -> Result<(BackendConn, BackendState, bool), ClientError> {
        let pool = self.pool.clone();
        if let Some(pool) = &pool
            && self.permit.is_none()
        {
            let timeout = self.state.settings.pool_timeout;
            match pool.acquire(timeout).await {
                Some((p, waited)) => {
                    self.permit = Some(p);
                    self.state.metrics.pool_wait.observe(waited.as_secs_f64());
                }
                None => {
                    self.state.metrics.error("pool_timeout");
                    let msg = format!(
                        "sorry, too many clients already: the {} of cluster {} has all its {} backends busy and none was free within {}",
                        pool.describe(),
                        self.state.name,
                        pool.size,
                        pgdr_model::format_duration(timeout)
                    );
                    return Err(self.fatal("53300", msg).await);
                }
            }
        }
        let mut hold = None;
        let (conn, bst, epoch, reused) = loop {
            // The usual case first: an idle pooled backend on the primary,
            // taken without copying the routing (see `pick` for the rest).
            if let Some(pool) = &pool
                && self.endpoint == Endpoint::Writer
            {
                let r = self.routing.borrow_and_update();
                if let Some(primary) = r.primary.as_ref()
                    && !self.state.is_marked_read_only(primary, r.epoch)
                    && let Some(p) = pool.take_idle(std::slice::from_ref(primary), true)
                {
                    break (p.conn, p.state, r.epoch, true);
                }
            }
            let (target, epoch) = self.pick().await?;
            // A reader takes an idle backend on any routed replica (the
            // round robin is for new connections).
            let replicas;
            let allowed = match self.endpoint {
                Endpoint::Reader if self.routing.borrow().replicas.contains(&target) => {
                    replicas = self.routing.borrow().replicas.clone();
                    &replicas[..]
                }
                _ => std::slice::from_ref(&target),
            };
            if let Some(pool) = &pool
                && let Some(p) = pool.take_idle(allowed, self.endpoint == Endpoint::Writer)
            {
                break (p.conn, p.state, epoch, true);
            }
            let startup = match &pool {
                Some(_) => self.pool_startup(),
                None => self.startup.clone(),
            };
            match backend::open(
                &target,
                epoch,
                self.state.settings.tcp,
                self.state.settings.backend_tls.as_ref(),
                &startup,
                &self.cred,
            )
            .await
            {
                Ok(c) => {
                    if let Some(pool) = &pool {
                        pool.open.fetch_add(1, Ordering::Relaxed);
                        self.state.metrics.pool_opened.inc();
                    }
                    break (c, BackendState::default(), epoch, false);
                }
                Err(e) => {
                    if self.hold_unreachable(&mut hold, &target, &e).await? {
                        continue;
                    }
                    self.state.metrics.error(e.kind());
                    return Err(self
                        .fatal("08006", format!("terminating connection: cannot reach the server: {e}"))
                        .await);
                }
            }
        };
        drop(hold);
        if self.endpoint == Endpoint::Writer && conn.read_only {
            self.state.mark_read_only(&conn.backend, epoch);
        }
        let mut conn = conn;
        conn.epoch = epoch;
        Ok((conn, bst, reused))
    }

    /// The startup a pooled backend is opened with: only user and
    /// database (the rest is the client's and replayed as SETs).
    pub(super) fn pool_startup(&self) -> Startup {
        let mut params = vec![("user".to_owned(), self.startup.user().to_owned())];
        params.push(("database".to_owned(), self.startup.database().to_owned()));
        Startup { params }
    }

    /// Puts the session on `conn`: SETs, SQL prepared statements and
    /// LISTENs replayed, reported settings the client knows restored; the
    /// client is told about reported values that still differ.
    /// Returns false when `retry` and the connection failed (closed): the
    /// caller takes another.
    async fn land(
        &mut self,
        mut conn: BackendConn,
        mut bst: BackendState,
        moved: bool,
        retry: bool,
    ) -> Result<bool, ClientError> {
        self.out.clear();
        let mut n = 0;
        if std::mem::take(&mut bst.unknown) {
            protocol::put_query(&mut self.out, "DEALLOCATE ALL");
            bst.statements.clear();
            bst.sql_prepared.clear();
            n += 1;
        }
        n += self.st.set_queries(&mut bst.sets, &mut self.out);
        n += self.st.prepare_queries(&bst.sql_prepared, &mut self.out);
        let fresh_listen = !self.st.listening.is_empty();
        if fresh_listen {
            n += self.st.listen_queries(&mut self.out);
        }
        let mut r = Ok(());
        if n > 0 {
            r = replay(&mut conn, &self.out, n).await;
        }
        // Most landings find the settings the client was told (most often
        // the same shared copy: one pointer comparison).
        if r.is_ok() && !same_shared(&mut conn.params, &mut self.st.params) {
            self.out.clear();
            let n = self.st.restore_queries(&conn.params, &mut self.out);
            if n > 0 {
                r = replay(&mut conn, &self.out, n).await;
            }
        }
        if let Err(e) = r {
            if let Some(p) = &self.pool {
                p.closed(Some(&conn));
            }
            if retry && !matches!(e, BackendError::Refused { .. }) {
                return Ok(false);
            }
            return Err(self
                .fatal("08006", format!("terminating connection: cannot restore session state on the server: {e}"))
                .await);
        }
        bst.sets = Arc::clone(&self.st.sets);
        self.st.left_sql_prepared(&mut bst.sql_prepared);
        // Told to the client with its next write (see `cpend`).
        if !same_shared(&mut conn.params, &mut self.st.params) {
            self.st.adopt_reported(&conn.params, &mut self.cpend);
        }
        if fresh_listen {
            protocol::put_notice(
                &mut self.cpend,
                "WARNING",
                "01000",
                "the session moved to a new server: its LISTEN channels were listened to again there, but notifications sent meanwhile may have been missed",
            );
        }
        if self.pool.is_none() {
            self.st.unprepare_all();
        }
        if let Ok(mut t) = self.cancel_to.lock() {
            *t = Some((conn.backend.clone(), conn.key));
        }
        if moved || (self.pool.is_none() && self.st.carries_state()) {
            self.state.metrics.moves.inc();
            tracing::info!(cluster = %self.state.name, to = %conn.backend.node, epoch = %conn.epoch, "session moved to a new backend");
        }
        self.be = Some(conn);
        self.bst = bst;
        Ok(true)
    }

    /// At the end of a transaction: a pooled session gives its backend
    /// back unless it holds state that pins it (asking the backend first
    /// when that state may have ended).
    pub(super) async fn release(&mut self) -> Result<(), ClientError> {
        if self.st.pins != 0 && self.st.recheck {
            self.check_pins().await?;
        }
        if self.st.sync {
            self.check_state().await?;
        }
        let Some(pool) = self.pool.clone() else { return Ok(()) };
        let pinned = self.st.pins;
        if pinned != self.pinned_metric {
            self.note_pins_metric(pinned);
        }
        if pinned != 0 || self.be.as_ref().is_none_or(|b| !b.buf.is_empty()) || self.bskip > 0 || self.cskip > 0 {
            return Ok(());
        }
        let Some(conn) = self.be.take() else { return Ok(()) };
        if let Ok(mut t) = self.cancel_to.lock() {
            *t = None;
        }
        // What the session left on the backend goes with it; the session
        // keeps an empty state, whose `sets` shares the session's instead
        // of allocating an empty `Arc` at every transaction.
        let mut bst = std::mem::replace(&mut self.bst, BackendState::sharing(&self.st.sets));
        bst.sets = Arc::clone(&self.st.sets);
        self.st.left_sql_prepared(&mut bst.sql_prepared);
        let warm = (pool.min_idle > 0).then(|| (Arc::clone(&conn.backend), conn.epoch));
        pool.put(conn, bst);
        self.permit = None;
        if let Some((target, epoch)) = warm {
            self.warm(&pool, &target, epoch).await;
        }
        Ok(())
    }

    /// Opens one more idle backend while the pool has fewer than
    /// `pool_min_idle` idle (and room), so bursts find them ready.
    async fn warm(&mut self, pool: &crate::pool::Pool, target: &crate::routing::Backend, epoch: pgdr_model::Epoch) {
        if pool.idle_count() >= pool.min_idle || !pool.reserve_open() {
            return;
        }
        let startup = self.pool_startup();
        match backend::open(
            target,
            epoch,
            self.state.settings.tcp,
            self.state.settings.backend_tls.as_ref(),
            &startup,
            &self.cred,
        )
        .await
        {
            Ok(conn) => {
                self.state.metrics.pool_opened.inc();
                pool.put(conn, BackendState::default());
            }
            Err(e) => {
                pool.open.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(cluster = %self.state.name, error = %e, "could not open an idle backend for pool_min_idle");
            }
        }
    }

    /// Keeps the pins-by-reason gauge in step with this session.
    pub(super) fn note_pins_metric(&mut self, pins: u8) {
        for (bit, label, _) in PINS {
            let (was, is) = (self.pinned_metric & bit != 0, pins & bit != 0);
            if is && !was {
                self.state.metrics.pin(label).inc();
                self.state.metrics.pinned(label).inc();
            } else if was && !is {
                self.state.metrics.pinned(label).dec();
            }
        }
        self.pinned_metric = pins;
    }

    /// Asks the backend which pinning state it still holds.
    async fn check_pins(&mut self) -> Result<(), ClientError> {
        let Some(be) = self.be.as_mut() else { return Ok(()) };
        match ask(be, PIN_CHECK).await {
            Ok(Some(rows)) if rows.len() == 1 && rows[0].len() == 4 => {
                let n = |i: usize| rows[0][i].as_deref().and_then(|v| v.parse::<i64>().ok()).unwrap_or(1);
                self.st.on_pin_check(n(0), n(1), n(2), n(3));
                Ok(())
            }
            Ok(_) => {
                self.st.recheck = false;
                Ok(())
            }
            Err(_) => self.backend_lost().await,
        }
    }

    /// Asks the backend for the SQL prepared statements, channels and
    /// session settings a statement changed where its text did not show.
    async fn check_state(&mut self) -> Result<(), ClientError> {
        let Some(be) = self.be.as_mut() else { return Ok(()) };
        match ask(be, STATE_CHECK).await {
            Ok(None) => {
                self.st.sync = false;
                Ok(())
            }
            Ok(Some(rows)) => {
                let rows: Vec<_> = rows
                    .into_iter()
                    .filter_map(|r| {
                        let mut r = r.into_iter();
                        let kind = r.next()??.bytes().next()?;
                        Some((kind, r.next()??, r.next()?))
                    })
                    .collect();
                self.st.on_state_check(&rows);
                Ok(())
            }
            Err(_) => self.backend_lost().await,
        }
    }
}

/// Runs one query of the proxy's own on `be` (idle), returning its rows
/// (`None` when the server answered with an error).
async fn ask(be: &mut BackendConn, sql: &str) -> Result<Option<Vec<Vec<Option<String>>>>, BackendError> {
    let mut q = BytesMut::new();
    protocol::put_query(&mut q, sql);
    be.send(&q).await?;
    let mut rows = Vec::new();
    let mut failed = false;
    loop {
        let m = be.read_message().await?;
        match m[0] {
            b'D' => {
                if let Some(cols) = protocol::parse_data_row(protocol::body(&m)) {
                    rows.push(cols.iter().map(|c| c.map(|v| String::from_utf8_lossy(v).into_owned())).collect());
                }
            }
            b'E' => failed = true,
            b'Z' => return Ok((!failed).then_some(rows)),
            _ => {}
        }
    }
}

/// Sends the replay queries and waits for their `n` ReadyForQuery.
async fn replay(conn: &mut BackendConn, queries: &[u8], n: usize) -> Result<(), BackendError> {
    conn.send(queries).await?;
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
pub(super) async fn abort_tx(conn: &mut BackendConn) -> Result<(), BackendError> {
    let mut q = BytesMut::new();
    protocol::put_query(&mut q, "BEGIN; SELECT 1/0");
    conn.send(&q).await?;
    loop {
        let m = conn.read_message().await?;
        if m[0] == b'Z' {
            return Ok(());
        }
    }
}
