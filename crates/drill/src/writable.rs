//! The overlap checker: during a drill, every node is asked directly (never
//! through a proxy) every 50 ms whether it accepts a write, and any instant
//! at which two servers did fails the drill.
//!
//! "Accepts a write" is a real one: `BEGIN READ WRITE` (which a read-only
//! setting such as `default_transaction_read_only` does not stop), an
//! `INSERT` into `pgdr_drill.writable_probe`, then `ROLLBACK`. A server in
//! recovery refuses the `BEGIN READ WRITE`; a stopped one refuses the
//! connection; a frozen or cut-off one does not answer in time.
//!
//! The checker must not disturb what it watches: one connection per node,
//! kept open and opened again only after a failure, a 1 s connect timeout
//! and a 500 ms statement timeout (a frozen node costs one pending
//! connection a second), and a rolled-back write that neither commits nor
//! waits for synchronous replication.
//!
//! [`WritableLog::analyse`] is pure: the probes become per-node segments
//! (consecutive probes with the same answer) and overlaps (writable
//! segments of two nodes that intersect). A writable segment spans from the
//! first probe's sending to the last probe's answer, so an overlap is
//! flagged whenever two servers may have accepted writes at the same
//! instant; a clean role change leaves a gap of at least a promotion.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pgdr_config::{Cluster, Node};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::DrillError;

/// How often each node is asked.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const STATEMENT_TIMEOUT: Duration = Duration::from_millis(500);

const PROBE: &str = "BEGIN READ WRITE; INSERT INTO pgdr_drill.writable_probe DEFAULT VALUES; ROLLBACK";
/// When the probe table is missing on a node (it has not replayed the
/// drill's setup yet): creating it is a write too.
const PROBE_SETUP: &str = "BEGIN READ WRITE; SET LOCAL synchronous_commit = local; \
CREATE SCHEMA IF NOT EXISTS pgdr_drill; \
CREATE TABLE IF NOT EXISTS pgdr_drill.writable_probe (at timestamptz NOT NULL DEFAULT now()); COMMIT";

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// The write was accepted.
    Writable,
    /// The server answered and refused the write (in recovery, ...).
    Refused,
    /// No connection, or no answer in time.
    Unreachable,
}

impl Answer {
    pub fn label(self) -> &'static str {
        match self {
            Answer::Writable => "writable",
            Answer::Refused => "refuses writes",
            Answer::Unreachable => "unreachable",
        }
    }
}

/// One probe of one node, ms since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub sent_unix_ms: f64,
    pub at_unix_ms: f64,
    pub answer: Answer,
    /// Why, for a refusal or a failure (the first words of the error).
    pub detail: Option<String>,
}

/// Consecutive probes of one node with the same answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub answer: Answer,
    /// First probe sent, ms since the workload started.
    pub from_ms: f64,
    /// Last probe answered, ms since the workload started.
    pub until_ms: f64,
    pub probes: u32,
    /// The first probe's detail.
    pub detail: Option<String>,
}

/// One node's lane of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lane {
    pub node: String,
    pub segments: Vec<Segment>,
}

/// Two servers that accepted writes at the same time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overlap {
    pub nodes: [String; 2],
    /// ms since the workload started.
    pub from_ms: f64,
    pub until_ms: f64,
}

/// The writable-server timeline of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WritableTimeline {
    pub probe_interval_ms: f64,
    pub probes: u64,
    pub lanes: Vec<Lane>,
    /// Empty when at most one server accepted writes at any instant.
    pub overlaps: Vec<Overlap>,
}

impl WritableTimeline {
    /// The first instant `node` accepted a write at or after `from_ms`.
    pub fn first_writable(&self, node: &str, from_ms: f64) -> Option<f64> {
        self.lanes
            .iter()
            .find(|l| l.node == node)?
            .segments
            .iter()
            .filter(|s| s.answer == Answer::Writable && s.until_ms >= from_ms)
            .map(|s| s.from_ms.max(from_ms))
            .min_by(f64::total_cmp)
    }

    /// One line for people: "east-1 writable 0.0–3.2 s; west-1 ...".
    pub fn describe_overlaps(&self) -> String {
        self.overlaps
            .iter()
            .map(|o| {
                format!(
                    "{} and {} both accepted writes from {:.3} s to {:.3} s",
                    o.nodes[0],
                    o.nodes[1],
                    o.from_ms / 1000.0,
                    o.until_ms / 1000.0
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Every probe of every node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WritableLog {
    pub nodes: Vec<(String, Vec<Probe>)>,
}

impl WritableLog {
    /// Segments and overlaps, in ms since `origin_unix_ms` (the workload's
    /// start).
    pub fn analyse(&self, origin_unix_ms: f64) -> WritableTimeline {
        let mut lanes = Vec::new();
        let mut probes = 0u64;
        for (node, list) in &self.nodes {
            probes += list.len() as u64;
            let mut segments: Vec<Segment> = Vec::new();
            for p in list {
                let (from, until) = (p.sent_unix_ms - origin_unix_ms, p.at_unix_ms - origin_unix_ms);
                match segments.last_mut() {
                    Some(s) if s.answer == p.answer => {
                        s.until_ms = s.until_ms.max(until);
                        s.probes += 1;
                    }
                    _ => segments.push(Segment {
                        answer: p.answer,
                        from_ms: from,
                        until_ms: until,
                        probes: 1,
                        detail: p.detail.clone(),
                    }),
                }
            }
            lanes.push(Lane { node: node.clone(), segments });
        }
        let overlaps = overlaps(&lanes);
        WritableTimeline { probe_interval_ms: PROBE_INTERVAL.as_secs_f64() * 1000.0, probes, lanes, overlaps }
    }
}

/// Writable segments of different nodes that intersect.
pub fn overlaps(lanes: &[Lane]) -> Vec<Overlap> {
    let writable = |l: &Lane| -> Vec<(f64, f64)> {
        l.segments.iter().filter(|s| s.answer == Answer::Writable).map(|s| (s.from_ms, s.until_ms)).collect()
    };
    let mut out = Vec::new();
    for (i, a) in lanes.iter().enumerate() {
        for b in &lanes[i + 1..] {
            for (af, au) in writable(a) {
                for (bf, bu) in writable(b) {
                    let (from, until) = (af.max(bf), au.min(bu));
                    if from <= until {
                        out.push(Overlap { nodes: [a.node.clone(), b.node.clone()], from_ms: from, until_ms: until });
                    }
                }
            }
        }
    }
    out.sort_by(|x, y| x.from_ms.total_cmp(&y.from_ms));
    out
}

struct Shared {
    origin: Instant,
    origin_unix_ms: f64,
    log: Mutex<WritableLog>,
}

impl Shared {
    fn now_unix_ms(&self) -> f64 {
        self.origin_unix_ms + self.origin.elapsed().as_secs_f64() * 1000.0
    }

    fn push(&self, node: usize, p: Probe) {
        let mut g = match self.log.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((_, list)) = g.nodes.get_mut(node) {
            list.push(p);
        }
    }
}

/// The running checker; [`WritableProbe::stop`] returns every probe.
pub struct WritableProbe {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl WritableProbe {
    /// Starts probing every node of `cluster`.
    /// With `tls` (the config's `[tls]`), over TLS.
    pub fn start(cluster: &Cluster, tls: Option<&pgdr_config::Tls>) -> Result<WritableProbe, DrillError> {
        let targets: Vec<(String, String)> = cluster
            .nodes
            .iter()
            .map(|n| Ok((n.name.to_string(), probe_conninfo(cluster, n, tls)?)))
            .collect::<Result<_, DrillError>>()?;
        Ok(WritableProbe::start_conninfos(targets))
    }

    /// Starts probing these `(name, libpq conninfo)` servers.
    pub fn start_conninfos(targets: Vec<(String, String)>) -> WritableProbe {
        let shared = Arc::new(Shared {
            origin: Instant::now(),
            origin_unix_ms: crate::unix_ms(SystemTime::now()),
            log: Mutex::new(WritableLog { nodes: targets.iter().map(|(n, _)| (n.clone(), Vec::new())).collect() }),
        });
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        for (i, (_, conninfo)) in targets.into_iter().enumerate() {
            tracker.spawn(probe_loop(i, conninfo, shared.clone(), cancel.clone()));
        }
        WritableProbe { shared, cancel, tracker }
    }

    /// Stops probing (an unanswered probe is dropped) and returns the log.
    pub async fn stop(self) -> WritableLog {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let mut g = match self.shared.log.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        std::mem::take(&mut *g)
    }
}

impl Drop for WritableProbe {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn probe_conninfo(cluster: &Cluster, node: &Node, tls: Option<&pgdr_config::Tls>) -> Result<String, DrillError> {
    Ok(crate::observer::node_conninfo(cluster, node, CONNECT_TIMEOUT.as_secs() as u32, tls)?
        .replace("application_name=pgdr-drill", "application_name=pgdr-drill-writable-probe"))
}

/// The first line of an error, short.
fn short(e: &impl std::fmt::Display) -> String {
    let s = e.to_string();
    let line = s.lines().next().unwrap_or("").to_owned();
    if line.len() > 120 {
        format!("{}…", &line[..line.char_indices().nth(119).map_or(line.len(), |(i, _)| i)])
    } else {
        line
    }
}

fn db_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => short(e),
    }
}

async fn probe_loop(node: usize, conninfo: String, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sent = shared.now_unix_ms();
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            o = probe_once(&conninfo, &mut client) => o,
        };
        let (answer, detail) = outcome;
        shared.push(node, Probe { sent_unix_ms: sent, at_unix_ms: shared.now_unix_ms(), answer, detail });
    }
}

async fn probe_once(conninfo: &str, client: &mut Option<tokio_postgres::Client>) -> (Answer, Option<String>) {
    if client.is_none() {
        let (conninfo, tls) = match pgdr_tls::pg::split_conninfo(conninfo) {
            Ok(split) => split,
            Err(e) => return (Answer::Unreachable, Some(e.to_string())),
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, pgdr_tls::pg::connect_str(&conninfo, tls.as_ref())).await {
            Err(_) => return (Answer::Unreachable, Some(format!("no connection within {CONNECT_TIMEOUT:?}"))),
            Ok(Err(e)) => {
                // A server that answers "starting up" or "shutting down" refuses.
                let answer = if e.as_db_error().is_some() { Answer::Refused } else { Answer::Unreachable };
                return (answer, Some(db_detail(&e)));
            }
            Ok(Ok(c)) => *client = Some(c),
        }
    }
    let Some(c) = client.as_ref() else { return (Answer::Unreachable, None) };
    match tokio::time::timeout(STATEMENT_TIMEOUT, c.batch_execute(PROBE)).await {
        Err(_) => {
            *client = None;
            (Answer::Unreachable, Some(format!("no answer within {STATEMENT_TIMEOUT:?}")))
        }
        Ok(Ok(())) => (Answer::Writable, None),
        Ok(Err(e)) => match e.as_db_error() {
            Some(db) => {
                let undefined = db.code() == &tokio_postgres::error::SqlState::UNDEFINED_TABLE;
                let detail = db_detail(&e);
                // Leave the failed transaction block; a fresh connection if that fails.
                if tokio::time::timeout(STATEMENT_TIMEOUT, c.batch_execute("ROLLBACK"))
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    *client = None;
                    return (Answer::Refused, Some(detail));
                }
                if undefined {
                    return match tokio::time::timeout(STATEMENT_TIMEOUT, c.batch_execute(PROBE_SETUP)).await {
                        Ok(Ok(())) => (Answer::Writable, Some("created the probe table".into())),
                        Ok(Err(e)) => {
                            let d = db_detail(&e);
                            let _ = tokio::time::timeout(STATEMENT_TIMEOUT, c.batch_execute("ROLLBACK")).await;
                            (Answer::Refused, Some(d))
                        }
                        Err(_) => {
                            *client = None;
                            (Answer::Unreachable, Some(format!("no answer within {STATEMENT_TIMEOUT:?}")))
                        }
                    };
                }
                (Answer::Refused, Some(detail))
            }
            None => {
                *client = None;
                (Answer::Unreachable, Some(short(&e)))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(sent: f64, at: f64, answer: Answer) -> Probe {
        Probe { sent_unix_ms: sent, at_unix_ms: at, answer, detail: None }
    }

    fn log(nodes: Vec<(&str, Vec<Probe>)>) -> WritableLog {
        WritableLog { nodes: nodes.into_iter().map(|(n, l)| (n.to_owned(), l)).collect() }
    }

    #[test]
    fn a_clean_handover_has_no_overlap() {
        let l = log(vec![
            (
                "a",
                vec![
                    p(1000.0, 1002.0, Answer::Writable),
                    p(1050.0, 1052.0, Answer::Writable),
                    p(1100.0, 1101.0, Answer::Unreachable),
                ],
            ),
            (
                "b",
                vec![
                    p(1000.0, 1001.0, Answer::Refused),
                    p(1050.0, 1051.0, Answer::Refused),
                    p(1100.0, 1101.0, Answer::Refused),
                    p(1150.0, 1152.0, Answer::Writable),
                ],
            ),
        ]);
        let t = l.analyse(1000.0);
        assert!(t.overlaps.is_empty(), "{:?}", t.overlaps);
        assert_eq!(t.probes, 7);
        let a = &t.lanes[0].segments;
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].answer, a[0].from_ms, a[0].until_ms, a[0].probes), (Answer::Writable, 0.0, 52.0, 2));
        assert_eq!(t.first_writable("b", 0.0), Some(150.0));
        assert_eq!(t.first_writable("a", 60.0), None);
    }

    #[test]
    fn two_writable_servers_at_one_instant_are_an_overlap() {
        let l = log(vec![
            (
                "a",
                vec![p(0.0, 2.0, Answer::Writable), p(50.0, 52.0, Answer::Writable), p(100.0, 102.0, Answer::Writable)],
            ),
            ("b", vec![p(10.0, 11.0, Answer::Refused), p(60.0, 61.0, Answer::Writable)]),
            ("c", vec![p(5.0, 600.0, Answer::Unreachable)]),
        ]);
        let t = l.analyse(0.0);
        assert_eq!(t.overlaps.len(), 1, "{:?}", t.overlaps);
        let o = &t.overlaps[0];
        assert_eq!(o.nodes, ["a".to_owned(), "b".to_owned()]);
        assert_eq!((o.from_ms, o.until_ms), (60.0, 61.0));
        assert!(t.describe_overlaps().contains("a and b both accepted writes"));
    }
}
