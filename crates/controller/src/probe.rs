//! Canary probes: a real write transaction (the heartbeat row in schema
//! `pgdr`) directly to the primary and through the proxy's writer endpoint,
//! and the replicated heartbeat read on each replica, which gives its lag in
//! seconds.
//!
//! A [`Prober`] keeps one connection and reconnects after an error, so a
//! healthy path costs one round trip per probe; a dead postmaster shows as a
//! broken connection and then as refused connections, a silent host as a
//! timeout at the probe's deadline.
//!
//! Opening a connection has its own deadline ([`CONNECT_DEADLINE`]), apart
//! from the probe's: a connection (TCP, the TLS handshake, SCRAM) that is
//! still being opened when a probe's deadline passes keeps going in the
//! background, and the next probe writes over it. The late probe still
//! counts as timed out; what changes is that on a loaded host, where a full
//! handshake can take longer than `probe_timeout`, the probes no longer
//! throw each handshake away at the deadline and start another, failing
//! every probe (and so declaring an outage) while the primary answers.

use std::time::Duration;

use crate::detect::ProbeOutcome;

/// The heartbeat table, created by the controller on the primary.
pub const SCHEMA_SQL: &str = "CREATE SCHEMA IF NOT EXISTS pgdr; \
     CREATE TABLE IF NOT EXISTS pgdr.heartbeat (id int PRIMARY KEY, counter bigint NOT NULL, at timestamptz NOT NULL, written_by text NOT NULL)";

/// Heartbeat row ids: one per path, so paths never contend on one row.
pub const ROW_DIRECT: i32 = 1;
pub const ROW_PROXY: i32 = 2;

/// The canary write of one path: the same upsert as ever, sent as one
/// simple query (one round trip; with parameters it was two, a parse and
/// then the execution, both planned by the server). The row and the writer
/// are this program's own values, written in as literals: the writer's name
/// keeps only letters, digits and `-_.:`, so it needs no escaping.
pub fn upsert_sql(row: i32, written_by: &str) -> String {
    let who: String = written_by.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.:".contains(*c)).collect();
    format!(
        "INSERT INTO pgdr.heartbeat AS h (id, counter, at, written_by) VALUES ({row}, 1, now(), '{who}') \
         ON CONFLICT (id) DO UPDATE SET counter = h.counter + 1, at = now(), written_by = excluded.written_by \
         RETURNING extract(epoch from at)::float8"
    )
}

/// The first column of the first row of a simple query's answer, as a
/// float8's text (PostgreSQL prints the shortest text that reads back
/// exactly); `None` when no row came back.
pub async fn simple_f64(client: &tokio_postgres::Client, sql: &str) -> Result<Option<f64>, tokio_postgres::Error> {
    for m in client.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).and_then(|v| v.parse::<f64>().ok()));
        }
    }
    Ok(None)
}

fn missing_table(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| d.code().code() == "42P01" || d.code().code() == "3F000")
}

/// Where and as whom to connect. Its `Debug` never shows the password.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    /// Where the password is kept (a file, a variable): read when a
    /// connection is opened, so a rotated password is used by the next
    /// connection without reading the secret at every probe. Used instead
    /// of `password` when set.
    pub secret: Option<pgdr_config::Secret>,
    pub database: String,
    /// TLS with the cluster's CA, or plain TCP.
    pub tls: Option<pgdr_tls::pg::PgTls>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr())
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Target {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn config(&self, timeout: Duration, app: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.database)
            .connect_timeout(timeout)
            .application_name(app);
        match &self.secret {
            Some(s) => {
                if let Ok(p) = s.resolve() {
                    c.password(p);
                }
            }
            None => {
                if let Some(p) = &self.password {
                    c.password(p);
                }
            }
        }
        c
    }
}

/// Classifies a client error: refused, or an error with a message.
pub fn classify(e: &tokio_postgres::Error) -> ProbeOutcome {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return ProbeOutcome::Refused;
            }
            if io.kind() == std::io::ErrorKind::TimedOut {
                return ProbeOutcome::TimedOut;
            }
        }
        src = s.source();
    }
    match e.as_db_error() {
        Some(db) => ProbeOutcome::Failed(format!("{} ({})", db.message(), db.code().code())),
        None => ProbeOutcome::Failed(e.to_string()),
    }
}

/// Connects, bounded by `timeout`.
pub async fn connect(target: &Target, timeout: Duration, app: &str) -> Result<tokio_postgres::Client, ProbeOutcome> {
    let cfg = target.config(timeout, app);
    match tokio::time::timeout(timeout, pgdr_tls::pg::connect(&cfg, target.tls.as_ref())).await {
        Err(_) => Err(ProbeOutcome::TimedOut),
        Ok(Err(e)) => Err(classify(&e)),
        Ok(Ok(client)) => Ok(client),
    }
}

/// How long opening a probe's connection may take, whatever the probe's
/// own deadline (see the module docs).
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// A kept connection of a probe (see the module docs).
type Kept = pgdr_tls::pg::KeptClient<ProbeOutcome>;

/// Opens `target` for a [`Kept`]: the attempt's own deadline.
fn open(
    target: &Target,
    app: &'static str,
) -> impl Future<Output = Result<tokio_postgres::Client, ProbeOutcome>> + use<> {
    let target = target.clone();
    async move { connect(&target, CONNECT_DEADLINE, app).await }
}

/// [`open`] for the canary writer.
fn open_canary(target: &Target) -> impl Future<Output = Result<tokio_postgres::Client, ProbeOutcome>> + use<> {
    let opening = open(target, "pgdr-probe");
    async move {
        let c = opening.await?;
        // The canary asks "does the primary take writes", not "is a
        // synchronous standby there": a primary whose commits wait for
        // one is degraded, not down, and must never be fenced for it.
        c.batch_execute("SET synchronous_commit = local").await.map_err(|e| classify(&e))?;
        Ok(c)
    }
}

fn lost(e: String) -> ProbeOutcome {
    ProbeOutcome::Failed(format!("connecting: {e}"))
}

/// One path's canary writer, keeping its connection between probes.
#[derive(Debug)]
pub struct Prober {
    pub target: Target,
    pub row: i32,
    pub written_by: String,
    /// [`upsert_sql`] of `row` and `written_by`, made once.
    sql: String,
    conn: Kept,
}

/// A probe's result: the outcome, and on success the heartbeat time the
/// primary wrote (seconds since the Unix epoch, the primary's clock).
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    pub outcome: ProbeOutcome,
    pub heartbeat_at: Option<f64>,
    pub took: Duration,
}

impl Prober {
    pub fn new(target: Target, row: i32, written_by: impl Into<String>) -> Prober {
        let written_by = written_by.into();
        let sql = upsert_sql(row, &written_by);
        Prober { target, row, written_by, sql, conn: Kept::default() }
    }

    /// Points the prober at another server (after a role change).
    pub fn retarget(&mut self, target: Target) {
        if target.addr() != self.target.addr() {
            self.conn.reset();
        }
        self.target = target;
    }

    /// Drops the connection (the next probe reconnects).
    pub fn disconnect(&mut self) {
        self.conn.reset();
    }

    /// One heartbeat write, bounded by `timeout` as a whole.
    pub async fn probe(&mut self, timeout: Duration) -> ProbeResult {
        let start = tokio::time::Instant::now();
        let res = tokio::time::timeout(timeout, self.write()).await;
        let (outcome, at) = match res {
            Err(_) => {
                // A write that did not answer in time drops its connection
                // (a connection still being opened is kept: see `Kept`).
                self.conn.close();
                (ProbeOutcome::TimedOut, None)
            }
            Ok(Ok(at)) => {
                self.conn.release();
                (ProbeOutcome::Ok, Some(at))
            }
            Ok(Err(o)) => {
                self.conn.close();
                (o, None)
            }
        };
        ProbeResult { outcome, heartbeat_at: at, took: start.elapsed() }
    }

    async fn write(&mut self) -> Result<f64, ProbeOutcome> {
        let client = self.conn.get(|| open_canary(&self.target), lost).await?;
        let at = match simple_f64(client, &self.sql).await {
            Ok(at) => at,
            Err(e) if missing_table(&e) => {
                // The table is missing (a new primary built without it, or
                // first contact): create it, then write.
                client.batch_execute(SCHEMA_SQL).await.map_err(|e| classify(&e))?;
                simple_f64(client, &self.sql).await.map_err(|e| classify(&e))?
            }
            Err(e) => return Err(classify(&e)),
        };
        at.ok_or_else(|| ProbeOutcome::Failed("the heartbeat write returned no time".into()))
    }
}

/// Reads one replica's replicated heartbeat, keeping its connection
/// between reads like a [`Prober`].
#[derive(Debug)]
pub struct LagReader {
    pub target: Target,
    conn: Kept,
}

impl LagReader {
    pub fn new(target: Target) -> LagReader {
        LagReader { target, conn: Kept::default() }
    }

    /// Points the reader at another address (a node's config changed).
    pub fn retarget(&mut self, target: Target) {
        if target.addr() != self.target.addr() {
            self.conn.reset();
        }
        self.target = target;
    }

    /// [`replicated_heartbeat`] over the kept connection.
    pub async fn read(&mut self, timeout: Duration) -> Result<Option<f64>, ProbeOutcome> {
        let res = tokio::time::timeout(timeout, async {
            let client = self.conn.get(|| open(&self.target, "pgdr-lag"), lost).await?;
            read_heartbeat(client).await
        })
        .await
        .unwrap_or(Err(ProbeOutcome::TimedOut));
        match res {
            Ok(_) => self.conn.release(),
            Err(_) => self.conn.close(),
        }
        res
    }
}

/// Reads the replicated heartbeat on a replica: the time of the last
/// heartbeat it has replayed (seconds since the Unix epoch, primary's clock).
pub async fn replicated_heartbeat(target: &Target, timeout: Duration) -> Result<Option<f64>, ProbeOutcome> {
    let fut = async {
        let client = connect(target, timeout, "pgdr-lag").await?;
        read_heartbeat(&client).await
    };
    tokio::time::timeout(timeout, fut).await.unwrap_or(Err(ProbeOutcome::TimedOut))
}

/// The replicated heartbeat read (one simple query: one round trip).
const READ_HEARTBEAT: &str = "SELECT extract(epoch from at)::float8 FROM pgdr.heartbeat WHERE id = 1";
const _: () = assert!(ROW_DIRECT == 1, "READ_HEARTBEAT reads the direct path's row");

async fn read_heartbeat(client: &tokio_postgres::Client) -> Result<Option<f64>, ProbeOutcome> {
    match simple_f64(client, READ_HEARTBEAT).await {
        Ok(at) => Ok(at),
        Err(e) if missing_table(&e) => Ok(None),
        Err(e) => Err(classify(&e)),
    }
}

/// A replica's lag in seconds from the heartbeat: how far the heartbeat it
/// replayed trails the last one the primary committed.
pub fn heartbeat_lag(primary_at: f64, replica_at: f64) -> f64 {
    (primary_at - replica_at).max(0.0)
}

#[cfg(test)]
mod sql_tests {
    #[test]
    fn the_writer_name_is_kept_to_safe_characters() {
        let sql = super::upsert_sql(2, "pgdr-controller'; DROP TABLE x; --");
        assert!(sql.contains("VALUES (2, 1, now(), 'pgdr-controllerDROPTABLEx--')"), "{sql}");
        assert!(super::upsert_sql(1, "pgdr-agent-east-1").contains("'pgdr-agent-east-1'"));
    }
}

#[cfg(test)]
mod debug_tests {
    #[test]
    fn a_target_never_prints_its_password() {
        let t = super::Target {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "pgdr".into(),
            password: Some("hunter2-pw".into()),
            secret: Some(pgdr_config::Secret::Inline("hunter2-pw".into())),
            database: "postgres".into(),
            tls: None,
        };
        let shown = format!("{t:?} {t:#?}");
        assert!(!shown.contains("hunter2") && shown.contains("***") && shown.contains("127.0.0.1:5432"), "{shown}");
    }
}
