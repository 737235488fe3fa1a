//! The drill's client load: writers committing rows with unique ids through
//! the writer endpoint, readers through the reader endpoint, every outcome
//! recorded with its time.
//!
//! Each write is one autocommit `INSERT` of a fresh id into
//! `pgdr_drill.ledger`. An id is never retried: a write whose connection was
//! lost (or that timed out) has an unknown outcome and is recorded as such,
//! and the checker later tells which of those turned up.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::DrillError;

/// The ledger the writers fill.
pub const LEDGER_DDL: &str = "CREATE SCHEMA IF NOT EXISTS pgdr_drill;
CREATE TABLE IF NOT EXISTS pgdr_drill.ledger (id bigint PRIMARY KEY, writer int NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS pgdr_drill.writable_probe (at timestamptz NOT NULL DEFAULT now())";

/// The write each statement does, returning which server instance took it
/// (its port and its postmaster's start time): an acknowledgement from the
/// instance that was failed is never taken for recovery.
const INSERT: &str = "INSERT INTO pgdr_drill.ledger (id, writer) VALUES ($1, $2) \
RETURNING inet_server_port()::text || '@' || pg_postmaster_start_time()::text";

/// Creates the ledger table (run against the primary or the writer endpoint).
pub async fn prepare(client: &tokio_postgres::Client) -> Result<(), DrillError> {
    client
        .batch_execute(LEDGER_DDL)
        .await
        .map_err(|source| DrillError::Query { what: "the ledger setup".into(), source })
}

/// What the workload does.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// libpq connection string of the writer endpoint.
    pub writer: String,
    /// libpq connection string of the reader endpoint, if any.
    pub reader: Option<String>,
    pub writers: usize,
    pub readers: usize,
    /// Longest wait for a connection (a pausing proxy holds new connections).
    pub connect_timeout: Duration,
    /// Longest wait for one statement before its outcome is called unknown.
    pub statement_timeout: Duration,
    /// Pause after an error before reconnecting.
    pub backoff: Duration,
    /// Pause between writes of one writer (zero: as fast as it can).
    pub pace: Duration,
    /// Each write in an explicit `BEGIN READ WRITE` ... `COMMIT`, which a
    /// read-only setting (`default_transaction_read_only`) does not stop:
    /// the client that finds a server still taking writes if one does.
    pub begin_read_write: bool,
}

impl WorkloadSpec {
    pub fn new(writer: impl Into<String>) -> WorkloadSpec {
        WorkloadSpec {
            writer: writer.into(),
            reader: None,
            writers: 4,
            readers: 1,
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(50),
            pace: Duration::from_millis(2),
            begin_read_write: false,
        }
    }
}

/// A client-visible error, classified.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Nothing listened: the connection was refused.
    ConnectionRefused,
    /// Connecting took longer than the connect timeout.
    ConnectTimeout,
    /// Connecting failed another way (reset, authentication...).
    ConnectFailed,
    /// The connection broke while a statement was running: outcome unknown.
    ConnectionLost,
    /// The statement did not answer within the statement timeout: outcome unknown.
    Timeout,
    /// The server answered with an error of this SQLSTATE class (two
    /// characters, like `57` operator intervention, `25` read-only).
    Sqlstate(String),
}

impl ErrorKind {
    /// A short label for tables and JSON keys.
    pub fn label(&self) -> String {
        match self {
            ErrorKind::ConnectionRefused => "connection refused".into(),
            ErrorKind::ConnectTimeout => "connect timeout".into(),
            ErrorKind::ConnectFailed => "connect failed".into(),
            ErrorKind::ConnectionLost => "connection lost (outcome unknown)".into(),
            ErrorKind::Timeout => "statement timeout (outcome unknown)".into(),
            ErrorKind::Sqlstate(c) => format!("SQLSTATE class {c}"),
        }
    }

    /// Whether a write that failed this way may still have committed.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, ErrorKind::ConnectionLost | ErrorKind::Timeout)
    }

    /// Classifies an error from a connect attempt.
    pub fn of_connect(e: &tokio_postgres::Error) -> ErrorKind {
        if let Some(db) = e.as_db_error() {
            return ErrorKind::Sqlstate(db.code().code().chars().take(2).collect());
        }
        if io_kind(e) == Some(std::io::ErrorKind::ConnectionRefused) {
            return ErrorKind::ConnectionRefused;
        }
        if e.to_string().contains("timeout") || e.to_string().contains("timed out") {
            return ErrorKind::ConnectTimeout;
        }
        ErrorKind::ConnectFailed
    }

    /// Classifies an error from a running statement.
    pub fn of_statement(e: &tokio_postgres::Error) -> ErrorKind {
        match e.as_db_error() {
            Some(db) => ErrorKind::Sqlstate(db.code().code().chars().take(2).collect()),
            None => ErrorKind::ConnectionLost,
        }
    }
}

fn io_kind(e: &tokio_postgres::Error) -> Option<std::io::ErrorKind> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        src = s.source();
    }
    None
}

/// One acknowledged commit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub id: i64,
    pub writer: u32,
    /// The server instance that acknowledged it: an index into
    /// [`WorkloadRecord::instances`].
    #[serde(default)]
    pub instance: u32,
    /// When the statement was sent, ms since the workload started.
    pub sent_ms: f64,
    /// When the acknowledgement arrived, ms since the workload started.
    pub at_ms: f64,
}

/// One client-visible error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The id being written, for write errors after connecting.
    pub id: Option<i64>,
    pub writer: Option<u32>,
    /// `true` for the readers.
    pub read: bool,
    pub kind: ErrorKind,
    pub sent_ms: f64,
    pub at_ms: f64,
    pub message: String,
}

/// One successful read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReadOk {
    pub sent_ms: f64,
    pub at_ms: f64,
}

/// Everything the workload saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkloadRecord {
    /// Wall-clock start, ms since the Unix epoch; every `*_ms` above is
    /// relative to it.
    pub started_unix_ms: f64,
    /// How long it ran, ms.
    pub duration_ms: f64,
    /// Ids written are in `[first_id, first_id + ids_used)`.
    pub first_id: i64,
    pub ids_used: i64,
    pub acks: Vec<Ack>,
    pub failures: Vec<Failure>,
    pub reads: Vec<ReadOk>,
    /// Server instances that acknowledged writes (`port@postmaster start`),
    /// in the order first seen.
    #[serde(default)]
    pub instances: Vec<String>,
}

impl WorkloadRecord {
    /// The index of an instance, added when new.
    fn instance(&mut self, name: &str) -> u32 {
        match self.instances.iter().position(|i| i == name) {
            Some(i) => i as u32,
            None => {
                self.instances.push(name.to_owned());
                (self.instances.len() - 1) as u32
            }
        }
    }

    pub fn write_failures(&self) -> impl Iterator<Item = &Failure> {
        self.failures.iter().filter(|f| !f.read)
    }
}

/// The last first id handed out in this process: two workloads started in
/// the same millisecond (a drill runs one per side of a partition) must not
/// share ids, or each would see the other's rows as its own.
static LAST_FIRST_ID: AtomicI64 = AtomicI64::new(0);

/// Ids of one workload span at most 2^30; the next workload starts past them.
const ID_SPAN: i64 = 1 << 30;

fn first_id_for(clock_based: i64) -> i64 {
    let mut prev = LAST_FIRST_ID.load(Ordering::SeqCst);
    loop {
        let id = clock_based.max(prev.saturating_add(ID_SPAN));
        match LAST_FIRST_ID.compare_exchange(prev, id, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return id,
            Err(p) => prev = p,
        }
    }
}

struct Shared {
    origin: Instant,
    next_id: AtomicI64,
    record: Mutex<WorkloadRecord>,
}

impl Shared {
    fn now_ms(&self) -> f64 {
        self.origin.elapsed().as_secs_f64() * 1000.0
    }

    fn with<R>(&self, f: impl FnOnce(&mut WorkloadRecord) -> R) -> R {
        let mut guard = match self.record.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

/// A running workload; [`Workload::stop`] ends it and returns the record.
pub struct Workload {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Workload {
    /// Starts the writers and readers. Ids start at a value derived from the
    /// wall clock, so runs against the same ledger never collide.
    pub fn start(spec: WorkloadSpec) -> Workload {
        let now = SystemTime::now();
        let first_id = first_id_for((crate::unix_ms(now) as i64) << 20);
        let shared = Arc::new(Shared {
            origin: Instant::now(),
            next_id: AtomicI64::new(first_id),
            record: Mutex::new(WorkloadRecord { started_unix_ms: crate::unix_ms(now), first_id, ..Default::default() }),
        });
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        for w in 0..spec.writers {
            tracker.spawn(writer(spec.clone(), w as u32, shared.clone(), cancel.clone()));
        }
        if let Some(reader_conn) = &spec.reader {
            for _ in 0..spec.readers {
                tracker.spawn(reader(spec.clone(), reader_conn.clone(), shared.clone(), cancel.clone()));
            }
        }
        Workload { shared, cancel, tracker }
    }

    /// Milliseconds since the workload started (the record's time base).
    pub fn now_ms(&self) -> f64 {
        self.shared.now_ms()
    }

    /// Acknowledged commits so far.
    pub fn acks(&self) -> usize {
        self.shared.with(|r| r.acks.len())
    }

    /// Acknowledged commits whose acknowledgement came after `ms`.
    pub fn acks_after(&self, ms: f64) -> usize {
        self.shared.with(|r| r.acks.iter().filter(|a| a.sent_ms >= ms).count())
    }

    /// Whether writes work again after `fault_ms` by the rule of
    /// [`crate::checker::writes_unavailable`].
    pub fn recovered_since(&self, fault_ms: f64) -> bool {
        self.shared.with(|r| crate::checker::writes_unavailable(r, fault_ms).is_some())
    }

    /// Stops every client (in-flight statements are abandoned and recorded
    /// as nothing: they were neither acknowledged nor failed) and returns
    /// what was seen.
    pub async fn stop(self) -> WorkloadRecord {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let duration = self.shared.now_ms();
        let used = self.shared.next_id.load(Ordering::SeqCst);
        self.shared.with(|r| {
            r.duration_ms = duration;
            r.ids_used = used - r.first_id;
            std::mem::take(r)
        })
    }
}

impl Drop for Workload {
    /// A workload dropped without [`Workload::stop`] (a drill that failed)
    /// stops its clients too.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn connect(conninfo: &str, timeout: Duration) -> Result<tokio_postgres::Client, (ErrorKind, String)> {
    let (conninfo, tls) =
        pgdr_tls::pg::split_conninfo(conninfo).map_err(|e| (ErrorKind::ConnectFailed, e.to_string()))?;
    match tokio::time::timeout(timeout, pgdr_tls::pg::connect_str(&conninfo, tls.as_ref())).await {
        Err(_) => Err((ErrorKind::ConnectTimeout, format!("no connection within {timeout:?}"))),
        Ok(Err(e)) => Err((ErrorKind::of_connect(&e), e.to_string())),
        Ok(Ok(client)) => Ok(client),
    }
}

async fn pause(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// One write; the acknowledgement is the autocommit's, or the `COMMIT`'s.
async fn write(
    c: &tokio_postgres::Client,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    explicit: bool,
) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
    if !explicit {
        return c.query_opt(INSERT, params).await;
    }
    c.batch_execute("BEGIN READ WRITE").await?;
    let row = c.query_opt(INSERT, params).await?;
    c.batch_execute("COMMIT").await?;
    Ok(row)
}

async fn writer(spec: WorkloadSpec, n: u32, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut client: Option<tokio_postgres::Client> = None;
    while !cancel.is_cancelled() {
        let c = match client.take() {
            Some(c) => c,
            None => {
                let sent = shared.now_ms();
                let r = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = connect(&spec.writer, spec.connect_timeout) => r,
                };
                match r {
                    Ok(c) => c,
                    Err((kind, message)) => {
                        let at = shared.now_ms();
                        shared.with(|r| {
                            r.failures.push(Failure {
                                id: None,
                                writer: Some(n),
                                read: false,
                                kind,
                                sent_ms: sent,
                                at_ms: at,
                                message,
                            })
                        });
                        if !pause(spec.backoff, &cancel).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let writer_no = n as i32;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, &writer_no];
        let sent = shared.now_ms();
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(
                spec.statement_timeout,
                write(&c, &params, spec.begin_read_write),
            ) => r,
        };
        let at = shared.now_ms();
        match result {
            Ok(Ok(row)) => {
                let server: Option<String> = row.and_then(|r| r.try_get(0).ok());
                shared.with(|r| {
                    let instance = r.instance(server.as_deref().unwrap_or("?"));
                    r.acks.push(Ack { id, writer: n, instance, sent_ms: sent, at_ms: at })
                });
                client = Some(c);
                if !spec.pace.is_zero() && !pause(spec.pace, &cancel).await {
                    return;
                }
            }
            Ok(Err(e)) => {
                let kind = ErrorKind::of_statement(&e);
                shared.with(|r| {
                    r.failures.push(Failure {
                        id: Some(id),
                        writer: Some(n),
                        read: false,
                        kind,
                        sent_ms: sent,
                        at_ms: at,
                        message: e.to_string(),
                    })
                });
                // Whatever broke, a fresh connection is the safe next step.
                if !pause(spec.backoff, &cancel).await {
                    return;
                }
            }
            Err(_) => {
                shared.with(|r| {
                    r.failures.push(Failure {
                        id: Some(id),
                        writer: Some(n),
                        read: false,
                        kind: ErrorKind::Timeout,
                        sent_ms: sent,
                        at_ms: at,
                        message: format!("no answer within {:?}", spec.statement_timeout),
                    })
                });
            }
        }
    }
}

async fn reader(spec: WorkloadSpec, conninfo: String, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut client: Option<tokio_postgres::Client> = None;
    while !cancel.is_cancelled() {
        let c = match client.take() {
            Some(c) => c,
            None => {
                let sent = shared.now_ms();
                let r = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = connect(&conninfo, spec.connect_timeout) => r,
                };
                match r {
                    Ok(c) => c,
                    Err((kind, message)) => {
                        let at = shared.now_ms();
                        shared.with(|r| {
                            r.failures.push(Failure {
                                id: None,
                                writer: None,
                                read: true,
                                kind,
                                sent_ms: sent,
                                at_ms: at,
                                message,
                            })
                        });
                        if !pause(spec.backoff, &cancel).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let sent = shared.now_ms();
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(spec.statement_timeout, c.query_one("SELECT max(id) FROM pgdr_drill.ledger", &[])) => r,
        };
        let at = shared.now_ms();
        let failure = match result {
            Ok(Ok(_)) => {
                shared.with(|r| r.reads.push(ReadOk { sent_ms: sent, at_ms: at }));
                client = Some(c);
                None
            }
            Ok(Err(e)) => Some((ErrorKind::of_statement(&e), e.to_string())),
            Err(_) => Some((ErrorKind::Timeout, format!("no answer within {:?}", spec.statement_timeout))),
        };
        if let Some((kind, message)) = failure {
            shared.with(|r| {
                r.failures.push(Failure { id: None, writer: None, read: true, kind, sent_ms: sent, at_ms: at, message })
            });
            if !pause(spec.backoff, &cancel).await {
                return;
            }
        } else if !pause(Duration::from_millis(20), &cancel).await {
            return;
        }
    }
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn workloads_started_in_the_same_millisecond_get_distinct_ids() {
        let a = first_id_for(1_000 << 20);
        let b = first_id_for(1_000 << 20);
        assert!(b >= a + ID_SPAN, "{a} {b}");
        let later = first_id_for(i64::MAX >> 2);
        assert_eq!(later, i64::MAX >> 2);
    }
}
