//! The drill report: what a team hands to its auditors.
//!
//! [`Report`] is the JSON (one file, every drill and run), rendered also as
//! Markdown and as one self-contained HTML page (inline CSS and SVG, no
//! scripts, no external resources) with a timeline per run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::DrillError;
use crate::checker::LostCommit;
use crate::observer::{Marker, MarkerKind, StepTiming};
use crate::timeline::{BUCKET_MS, Bucket};
use crate::writable::{Answer, WritableTimeline};

/// The tier's objectives and whether a run met them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Objectives {
    pub tier: String,
    pub rto_seconds: f64,
    pub rpo_seconds: f64,
    /// Writes were back within the RTO (false when they never came back).
    pub rto_met: bool,
    /// Lost acknowledged commits cover no more than the RPO.
    pub rpo_met: bool,
    /// At no instant did two servers accept writes (the overlap checker,
    /// and for a partition the stranded clients' last commit before the
    /// promotion).
    #[serde(default = "yes")]
    pub single_writer: bool,
    pub passed: bool,
}

fn yes() -> bool {
    true
}

/// The clients a partition strands with the old primary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stranded {
    pub acknowledged_commits: u64,
    /// Of those, missing on the new primary (the partition's data loss).
    pub missing_on_new_primary: u64,
    /// Their last acknowledgement, seconds after the fault.
    pub last_ack_after_fault_seconds: Option<f64>,
    /// The start of the new primary's promotion, seconds after the fault.
    pub promotion_after_fault_seconds: Option<f64>,
    /// Whether every commit they saw acknowledged came before the promotion
    /// started (`null` when no promotion was observed).
    pub last_ack_before_promotion: Option<bool>,
}

/// One run of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub scenario: String,
    pub run: u32,
    pub started_at: String,
    pub fault: String,
    pub fault_at: String,
    pub old_primary: Option<String>,
    pub new_primary: Option<String>,
    pub epoch_before: Option<u64>,
    pub epoch_after: Option<u64>,
    /// How long writes were unavailable (see [`Report::rto_definition`]);
    /// `null` when writes never came back within the drill.
    pub rto_seconds: Option<f64>,
    /// The outage itself, ms since the workload started (unplanned faults).
    #[serde(default)]
    pub writes_unavailable: Option<crate::checker::Outage>,
    /// Fault → throughput back to 90% of the 5 s before the fault.
    pub rto_throughput_seconds: Option<f64>,
    pub baseline_commits_per_second: f64,
    /// Fault → the outage was detected (from the controller's events).
    pub detection_seconds: Option<f64>,
    pub steps: Vec<StepReport>,
    /// How the system recovered, when it says so.
    pub recovery_path: Option<String>,
    /// Client-visible write errors (all kinds).
    pub client_errors: u64,
    pub write_errors_by_kind: BTreeMap<String, u64>,
    pub read_errors_by_kind: BTreeMap<String, u64>,
    pub reads: u64,
    pub acknowledged_commits: u64,
    pub lost_commits: u64,
    /// Time span the lost commits cover, first to last.
    pub lost_span_seconds: Option<f64>,
    /// The measured RPO: oldest lost acknowledgement → fault.
    pub rpo_seconds: f64,
    /// Every lost commit (id, writer, when acknowledged).
    pub lost: Vec<LostCommit>,
    pub unknown_outcome_writes: u64,
    pub unknown_outcome_committed: u64,
    pub failed_but_present: Vec<i64>,
    pub objectives: Objectives,
    pub restored: Vec<String>,
    /// Things the reader must know to read the numbers right.
    pub notes: Vec<String>,
    /// Wall-clock ms of the workload's start: `timeline` and `markers` are
    /// relative to it.
    pub workload_started_unix_ms: f64,
    pub fault_ms: f64,
    pub timeline: Vec<Bucket>,
    pub markers: Vec<TimelineMarker>,
    /// The partition's stranded clients (region-partition only).
    #[serde(default)]
    pub stranded: Option<Stranded>,
    /// Which servers accepted direct writes, node by node, over the run.
    #[serde(default)]
    pub writable: WritableTimeline,
}

/// A step with its duration, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    pub workflow: String,
    pub step: String,
    /// Seconds after the fault the step started.
    pub started_after_fault_seconds: f64,
    pub duration_seconds: Option<f64>,
    pub outcome: String,
}

impl StepReport {
    pub fn from_timing(s: &StepTiming, fault_unix_ms: f64) -> StepReport {
        StepReport {
            workflow: s.workflow.clone(),
            step: s.step.clone(),
            started_after_fault_seconds: (s.started_unix_ms - fault_unix_ms) / 1000.0,
            duration_seconds: s.duration_seconds(),
            outcome: s.outcome.clone(),
        }
    }
}

/// A marker placed on the timeline, ms since the workload started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineMarker {
    pub kind: MarkerKind,
    pub at_ms: f64,
    pub label: String,
}

impl TimelineMarker {
    pub fn from_marker(m: &Marker, workload_started_unix_ms: f64) -> TimelineMarker {
        TimelineMarker { kind: m.kind, at_ms: m.at_unix_ms - workload_started_unix_ms, label: m.label.clone() }
    }
}

/// min / median / max of a number over runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    /// Runs that had a value.
    pub n: usize,
}

impl Stat {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Stat { min: v[0], median, max: v[n - 1], n })
    }
}

/// Every run of one scenario, summarised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    pub scenario: String,
    pub description: String,
    pub runs: Vec<RunReport>,
    pub rto_seconds: Option<Stat>,
    pub rto_throughput_seconds: Option<Stat>,
    pub detection_seconds: Option<Stat>,
    pub client_errors: Option<Stat>,
    pub lost_commits_total: u64,
    pub acknowledged_commits_total: u64,
    pub rpo_seconds: Option<Stat>,
    /// Every run passed the tier's objectives.
    pub passed: bool,
    /// Runs that did not complete, with why.
    pub failed_runs: Vec<String>,
}

impl DrillReport {
    pub fn summarize(scenario: &str, description: &str, runs: Vec<RunReport>, failed_runs: Vec<String>) -> DrillReport {
        let rto = Stat::of(runs.iter().filter_map(|r| r.rto_seconds));
        DrillReport {
            scenario: scenario.to_owned(),
            description: description.to_owned(),
            rto_seconds: rto,
            rto_throughput_seconds: Stat::of(runs.iter().filter_map(|r| r.rto_throughput_seconds)),
            detection_seconds: Stat::of(runs.iter().filter_map(|r| r.detection_seconds)),
            client_errors: Stat::of(runs.iter().map(|r| r.client_errors as f64)),
            lost_commits_total: runs.iter().map(|r| r.lost_commits).sum(),
            acknowledged_commits_total: runs.iter().map(|r| r.acknowledged_commits).sum(),
            rpo_seconds: Stat::of(runs.iter().map(|r| r.rpo_seconds)),
            passed: !runs.is_empty() && failed_runs.is_empty() && runs.iter().all(|r| r.objectives.passed),
            failed_runs,
            runs,
        }
    }
}

/// The whole report: one cluster, one or more scenarios.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub generated_at: String,
    pub pgdr_version: String,
    pub cluster: String,
    pub tier: String,
    pub rto_objective_seconds: f64,
    pub rpo_objective_seconds: f64,
    /// Where topology answers came from (controller API or SQL).
    pub observer: String,
    /// Whether the topology had WAN delay between regions, and how much.
    pub wan_delay_ms: Option<u64>,
    /// What `rto_seconds` measures.
    #[serde(default)]
    pub rto_definition: String,
    pub drills: Vec<DrillReport>,
    pub passed: bool,
}

impl Report {
    /// Writes `report.json`, `report.md` and `report.html` into `dir`,
    /// returning their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, DrillError> {
        std::fs::create_dir_all(dir).map_err(DrillError::io(dir))?;
        let json = serde_json::to_string_pretty(self).map_err(|e| DrillError::Other(e.to_string()))?;
        let mut out = Vec::new();
        for (name, body) in [("report.json", json), ("report.md", self.markdown()), ("report.html", self.html())] {
            let p = dir.join(name);
            std::fs::write(&p, body).map_err(DrillError::io(&p))?;
            out.push(p);
        }
        Ok(out)
    }

    /// Reads a `report.json`.
    pub fn read(path: &Path) -> Result<Report, DrillError> {
        let text = std::fs::read_to_string(path).map_err(DrillError::io(path))?;
        serde_json::from_str(&text)
            .map_err(|e| DrillError::Other(format!("{}: not a drill report: {e}", path.display())))
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# pgdr drill report: cluster `{}`\n", self.cluster);
        let _ = writeln!(s, "Generated {} by pgdr {}.\n", self.generated_at, self.pgdr_version);
        let _ = writeln!(
            s,
            "Objectives (tier `{}`): RTO {}, RPO {}. Observed through {}.{}\n",
            self.tier,
            secs(self.rto_objective_seconds),
            secs(self.rpo_objective_seconds),
            self.observer,
            self.wan_delay_ms.map(|d| format!(" WAN delay between regions: {d} ms each way.")).unwrap_or_default()
        );
        let _ = writeln!(s, "**Result: {}**\n", if self.passed { "PASSED" } else { "FAILED" });
        if !self.rto_definition.is_empty() {
            let _ = writeln!(s, "How RTO is measured: {}\n", self.rto_definition);
        }
        let _ = writeln!(s, "{WRITABLE_DEFINITION}\n");
        let _ = writeln!(
            s,
            "| scenario | runs | RTO (min / median / max) | throughput back (median) | detection (median) | client errors (median) | acknowledged commits | lost commits | RPO measured (max) | result |"
        );
        let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for d in &self.drills {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                d.scenario,
                d.runs.len(),
                stat3(d.rto_seconds),
                d.rto_throughput_seconds.map_or("–".into(), |x| secs(x.median)),
                d.detection_seconds.map_or("not observed".into(), |x| secs(x.median)),
                d.client_errors.map_or("–".into(), |x| format!("{}", x.median)),
                d.acknowledged_commits_total,
                d.lost_commits_total,
                d.rpo_seconds.map_or("–".into(), |x| secs(x.max)),
                if d.passed { "passed" } else { "FAILED" }
            );
        }
        for d in &self.drills {
            let _ = writeln!(s, "\n## {}: {}\n", d.scenario, d.description);
            for f in &d.failed_runs {
                let _ = writeln!(s, "- run did not complete: {f}");
            }
            for r in &d.runs {
                let _ = writeln!(s, "### Run {}\n", r.run);
                let _ = writeln!(s, "- fault: {} at {}", r.fault, r.fault_at);
                let _ = writeln!(
                    s,
                    "- primary: {} → {} (epoch {} → {})",
                    r.old_primary.as_deref().unwrap_or("?"),
                    r.new_primary.as_deref().unwrap_or("?"),
                    opt(r.epoch_before),
                    opt(r.epoch_after)
                );
                let _ = writeln!(
                    s,
                    "- RTO: {} (throughput back to 90% of {:.0}/s: {})",
                    r.rto_seconds.map_or("writes did not come back".into(), secs),
                    r.baseline_commits_per_second,
                    r.rto_throughput_seconds.map_or("not reached".into(), secs)
                );
                let _ = writeln!(s, "- detection: {}", r.detection_seconds.map_or("not observed".into(), secs));
                let _ = writeln!(s, "- writable servers: {}", writable_summary(r));
                if let Some(st) = &r.stranded {
                    let _ = writeln!(s, "- partitioned region's clients: {}", stranded_summary(st));
                }
                if let Some(p) = &r.recovery_path {
                    let _ = writeln!(s, "- recovery path: {p}");
                }
                let _ = writeln!(
                    s,
                    "- acknowledged commits: {}, lost: {}{}",
                    r.acknowledged_commits,
                    r.lost_commits,
                    if r.lost_commits > 0 {
                        format!(
                            " (acknowledged over {}; measured RPO {})",
                            r.lost_span_seconds.map_or("?".into(), secs),
                            secs(r.rpo_seconds)
                        )
                    } else {
                        String::new()
                    }
                );
                let _ = writeln!(
                    s,
                    "- writes with unknown outcome (connection lost or timed out): {} ({} committed)",
                    r.unknown_outcome_writes, r.unknown_outcome_committed
                );
                if !r.failed_but_present.is_empty() {
                    let _ = writeln!(s, "- writes reported as failed but present: {}", r.failed_but_present.len());
                }
                let _ = writeln!(s, "- client errors: {} {}", r.client_errors, kinds(&r.write_errors_by_kind));
                if !r.read_errors_by_kind.is_empty() {
                    let _ = writeln!(s, "- read errors: {}", kinds(&r.read_errors_by_kind));
                }
                let _ = writeln!(
                    s,
                    "- objectives: RTO {} {}, RPO {} {} → **{}**",
                    secs(r.objectives.rto_seconds),
                    if r.objectives.rto_met { "met" } else { "missed" },
                    secs(r.objectives.rpo_seconds),
                    if r.objectives.rpo_met { "met" } else { "missed" },
                    if r.objectives.passed { "passed" } else { "FAILED" }
                );
                if !r.steps.is_empty() {
                    let _ = writeln!(s, "\n| workflow | step | started after fault | duration | outcome |");
                    let _ = writeln!(s, "| --- | --- | --- | --- | --- |");
                    for st in &r.steps {
                        let _ = writeln!(
                            s,
                            "| {} | {} | {} | {} | {} |",
                            st.workflow,
                            st.step,
                            secs(st.started_after_fault_seconds),
                            st.duration_seconds.map_or("running".into(), secs),
                            st.outcome
                        );
                    }
                }
                if !r.lost.is_empty() {
                    let _ = writeln!(s, "\nLost acknowledged commits (id, writer, acknowledged at):\n");
                    for l in &r.lost {
                        let _ = writeln!(
                            s,
                            "- {} (writer {}, {})",
                            l.id,
                            l.writer,
                            crate::rfc3339(r.workload_started_unix_ms + l.acknowledged_ms)
                        );
                    }
                }
                if !r.writable.lanes.is_empty() {
                    let _ = writeln!(
                        s,
                        "\nWritable-server timeline (seconds from the fault; direct `BEGIN READ WRITE` probes every {:.0} ms):\n",
                        r.writable.probe_interval_ms
                    );
                    let _ = writeln!(s, "| node | answer | from | until | probes | detail |");
                    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
                    for lane in &r.writable.lanes {
                        for seg in &lane.segments {
                            let _ = writeln!(
                                s,
                                "| {} | {} | {} | {} | {} | {} |",
                                lane.node,
                                seg.answer.label(),
                                secs((seg.from_ms - r.fault_ms) / 1000.0),
                                secs((seg.until_ms - r.fault_ms) / 1000.0),
                                seg.probes,
                                seg.detail.as_deref().unwrap_or("").replace('|', "/")
                            );
                        }
                    }
                    s.push('\n');
                }
                for n in &r.notes {
                    let _ = writeln!(s, "- note: {n}");
                }
                for n in &r.restored {
                    let _ = writeln!(s, "- restored: {n}");
                }
                s.push('\n');
            }
        }
        s
    }

    /// One HTML page, self-contained: inline CSS and SVG only.
    pub fn html(&self) -> String {
        let mut s = String::new();
        s.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
        let _ = write!(s, "<title>pgdr drill report: {}</title>", esc(&self.cluster));
        s.push_str(
            "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}\
th{background:#f3f3f3}.pass{color:#0a7a2f;font-weight:bold}.fail{color:#b00020;font-weight:bold}\
.verdict{font-size:1.2em;padding:.5em 1em;border-radius:4px;display:inline-block}\
.verdict.pass{background:#e6f4ea}.verdict.fail{background:#fde7ea}svg{background:#fcfcfc;border:1px solid #ddd}\
.note{color:#555}</style></head><body>\n",
        );
        let _ = writeln!(s, "<h1>pgdr drill report: cluster <code>{}</code></h1>", esc(&self.cluster));
        let _ = writeln!(
            s,
            "<p>Generated {} by pgdr {}. Observed through {}.{}</p>",
            esc(&self.generated_at),
            esc(&self.pgdr_version),
            esc(&self.observer),
            self.wan_delay_ms.map(|d| format!(" WAN delay between regions: {d} ms each way.")).unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "<p class=\"verdict {}\">{} against tier <code>{}</code>: RTO {}, RPO {}</p>",
            if self.passed { "pass" } else { "fail" },
            if self.passed { "PASSED" } else { "FAILED" },
            esc(&self.tier),
            secs(self.rto_objective_seconds),
            secs(self.rpo_objective_seconds)
        );
        if !self.rto_definition.is_empty() {
            let _ = writeln!(s, "<p class=\"note\">How RTO is measured: {}</p>", esc(&self.rto_definition));
        }
        let _ = writeln!(s, "<p class=\"note\">{}</p>", esc(WRITABLE_DEFINITION));
        s.push_str("<table><tr><th>scenario</th><th>runs</th><th>RTO min / median / max</th><th>throughput back (median)</th><th>detection (median)</th><th>client errors (median)</th><th>acknowledged commits</th><th>lost commits</th><th>RPO measured (max)</th><th>result</th></tr>\n");
        for d in &self.drills {
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                esc(&d.scenario),
                d.runs.len(),
                stat3(d.rto_seconds),
                d.rto_throughput_seconds.map_or("–".into(), |x| secs(x.median)),
                d.detection_seconds.map_or("not observed".into(), |x| secs(x.median)),
                d.client_errors.map_or("–".into(), |x| format!("{}", x.median)),
                d.acknowledged_commits_total,
                d.lost_commits_total,
                d.rpo_seconds.map_or("–".into(), |x| secs(x.max)),
                if d.passed { "pass" } else { "fail" },
                if d.passed { "passed" } else { "FAILED" }
            );
        }
        s.push_str("</table>\n");
        for d in &self.drills {
            let _ = writeln!(s, "<h2>{}: {}</h2>", esc(&d.scenario), esc(&d.description));
            for f in &d.failed_runs {
                let _ = writeln!(s, "<p class=\"fail\">Run did not complete: {}</p>", esc(f));
            }
            for r in &d.runs {
                let _ = writeln!(s, "<h3>Run {}</h3>", r.run);
                let _ = writeln!(
                    s,
                    "<p class=\"verdict {}\">{}: RTO {} (objective {}, {}); lost acknowledged commits {} covering {} (objective RPO {}, {})</p>",
                    if r.objectives.passed { "pass" } else { "fail" },
                    if r.objectives.passed { "PASSED" } else { "FAILED" },
                    r.rto_seconds.map_or("writes did not come back".into(), secs),
                    secs(r.objectives.rto_seconds),
                    if r.objectives.rto_met { "met" } else { "missed" },
                    r.lost_commits,
                    secs(r.rpo_seconds),
                    secs(r.objectives.rpo_seconds),
                    if r.objectives.rpo_met { "met" } else { "missed" }
                );
                s.push_str(&svg_timeline(r));
                s.push_str(&svg_writable(r));
                s.push_str("<table>");
                let rows: Vec<(&str, String)> = vec![
                    ("fault", format!("{} at {}", r.fault, r.fault_at)),
                    (
                        "primary",
                        format!(
                            "{} → {} (epoch {} → {})",
                            r.old_primary.as_deref().unwrap_or("?"),
                            r.new_primary.as_deref().unwrap_or("?"),
                            opt(r.epoch_before),
                            opt(r.epoch_after)
                        ),
                    ),
                    ("RTO (writes unavailable)", r.rto_seconds.map_or("writes did not come back".into(), secs)),
                    (
                        "RTO (throughput at 90%)",
                        format!(
                            "{} (baseline {:.0} commits/s)",
                            r.rto_throughput_seconds.map_or("not reached".into(), secs),
                            r.baseline_commits_per_second
                        ),
                    ),
                    ("detection", r.detection_seconds.map_or("not observed".into(), secs)),
                    ("writable servers", writable_summary(r)),
                    ("recovery path", r.recovery_path.clone().unwrap_or_else(|| "–".into())),
                    ("acknowledged commits", r.acknowledged_commits.to_string()),
                    ("lost acknowledged commits", r.lost_commits.to_string()),
                    (
                        "unknown-outcome writes",
                        format!("{} ({} committed)", r.unknown_outcome_writes, r.unknown_outcome_committed),
                    ),
                    ("client errors", format!("{} {}", r.client_errors, kinds(&r.write_errors_by_kind))),
                    ("reads", format!("{} ok; errors {}", r.reads, kinds(&r.read_errors_by_kind))),
                ];
                let mut rows = rows;
                if let Some(st) = &r.stranded {
                    rows.push(("partitioned region's clients", stranded_summary(st)));
                }
                for (k, v) in rows {
                    let _ = write!(s, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
                }
                s.push_str("</table>\n");
                if !r.steps.is_empty() {
                    s.push_str("<table><tr><th>workflow</th><th>step</th><th>started after fault</th><th>duration</th><th>outcome</th></tr>");
                    for st in &r.steps {
                        let _ = write!(
                            s,
                            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                            esc(&st.workflow),
                            esc(&st.step),
                            secs(st.started_after_fault_seconds),
                            st.duration_seconds.map_or("running".into(), secs),
                            esc(&st.outcome)
                        );
                    }
                    s.push_str("</table>\n");
                }
                if !r.lost.is_empty() {
                    s.push_str("<details open><summary class=\"fail\">Lost acknowledged commits</summary><table><tr><th>id</th><th>writer</th><th>acknowledged at</th></tr>");
                    for l in &r.lost {
                        let _ = write!(
                            s,
                            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                            l.id,
                            l.writer,
                            esc(&crate::rfc3339(r.workload_started_unix_ms + l.acknowledged_ms))
                        );
                    }
                    s.push_str("</table></details>\n");
                }
                for n in r.notes.iter().chain(r.restored.iter()) {
                    let _ = writeln!(s, "<p class=\"note\">{}</p>", esc(n));
                }
            }
        }
        s.push_str("</body></html>\n");
        s
    }
}

/// What the writable-server timeline is, printed in every report.
pub const WRITABLE_DEFINITION: &str = "Writable servers: during every run each node is asked directly (not \
through a proxy) every 50 ms to accept a real write (BEGIN READ WRITE, an INSERT, ROLLBACK), which a read-only \
setting does not stop. Any instant at which two servers accepted writes fails the drill.";

fn writable_summary(r: &RunReport) -> String {
    if r.writable.lanes.is_empty() {
        return "not observed".into();
    }
    if !r.writable.overlaps.is_empty() {
        return format!("SPLIT BRAIN: {}", r.writable.describe_overlaps());
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut all: Vec<(f64, &str)> = Vec::new();
    for lane in &r.writable.lanes {
        for seg in lane.segments.iter().filter(|s| s.answer == Answer::Writable) {
            all.push((seg.from_ms, lane.node.as_str()));
        }
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (_, n) in all {
        if seen.last() != Some(&n) {
            seen.push(n);
        }
    }
    format!(
        "never two at once ({} probes); writes accepted by {}",
        r.writable.probes,
        if seen.is_empty() { "none".to_owned() } else { seen.join(" → ") }
    )
}

fn stranded_summary(st: &Stranded) -> String {
    format!(
        "{} commits acknowledged, {} missing on the new primary; last acknowledgement {} after the fault, promotion started {} after it{}",
        st.acknowledged_commits,
        st.missing_on_new_primary,
        st.last_ack_after_fault_seconds.map_or("–".into(), secs),
        st.promotion_after_fault_seconds.map_or("not observed".into(), secs),
        match st.last_ack_before_promotion {
            Some(true) => ": every one before the promotion",
            Some(false) => ": SPLIT BRAIN, a commit acknowledged after the promotion started",
            None => "",
        }
    )
}

/// One lane per node: green where it accepted writes, grey where it
/// refused, red hatching where it did not answer; overlaps in red above.
fn svg_writable(r: &RunReport) -> String {
    if r.writable.lanes.is_empty() {
        return String::new();
    }
    const W: f64 = 1000.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const LANE: f64 = 16.0;
    const TOP: f64 = 20.0;
    let plot_w = W - LEFT - RIGHT;
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for seg in r.writable.lanes.iter().flat_map(|l| l.segments.iter()) {
        lo = lo.min(seg.from_ms);
        hi = hi.max(seg.until_ms);
    }
    if !lo.is_finite() || hi <= lo {
        return String::new();
    }
    let x = |ms: f64| LEFT + ((ms - lo) / (hi - lo)).clamp(0.0, 1.0) * plot_w;
    let h = TOP + r.writable.lanes.len() as f64 * (LANE + 6.0) + 20.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg viewBox=\"0 0 {W} {h}\" width=\"{W}\" height=\"{h}\" role=\"img\" aria-label=\"writable servers in run {}\">",
        r.run
    );
    let _ = write!(
        s,
        "<text x=\"{LEFT}\" y=\"12\" font-size=\"12\" fill=\"#333\">writable servers (direct probes; green: accepts writes, grey: refuses, orange: no answer)</text>"
    );
    for (i, lane) in r.writable.lanes.iter().enumerate() {
        let y = TOP + i as f64 * (LANE + 6.0);
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#333\" text-anchor=\"end\">{}</text>",
            LEFT - 4.0,
            y + LANE - 4.0,
            esc(&lane.node)
        );
        for seg in &lane.segments {
            let color = match seg.answer {
                Answer::Writable => "#0a7a2f",
                Answer::Refused => "#bbbbbb",
                Answer::Unreachable => "#e67e00",
            };
            let (x0, x1) = (x(seg.from_ms), x(seg.until_ms));
            let _ = write!(
                s,
                "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{LANE}\" fill=\"{color}\"><title>{} {}: {:.2}–{:.2} s after the fault{}</title></rect>",
                (x1 - x0).max(1.0),
                esc(&lane.node),
                seg.answer.label(),
                (seg.from_ms - r.fault_ms) / 1000.0,
                (seg.until_ms - r.fault_ms) / 1000.0,
                seg.detail.as_deref().map(|d| format!(" ({})", esc(d))).unwrap_or_default()
            );
        }
    }
    let bottom = TOP + r.writable.lanes.len() as f64 * (LANE + 6.0);
    for o in &r.writable.overlaps {
        let (x0, x1) = (x(o.from_ms), x(o.until_ms));
        let _ = write!(
            s,
            "<rect x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#b00020\" fill-opacity=\"0.35\"><title>split brain: {} and {}</title></rect>",
            (x1 - x0).max(2.0),
            bottom - TOP,
            esc(&o.nodes[0]),
            esc(&o.nodes[1])
        );
    }
    let fx = x(r.fault_ms);
    let _ = write!(
        s,
        "<line x1=\"{fx:.1}\" y1=\"{TOP}\" x2=\"{fx:.1}\" y2=\"{bottom:.1}\" stroke=\"#b00020\" stroke-dasharray=\"4 3\"><title>fault</title></line>"
    );
    let _ = write!(
        s,
        "<text x=\"{LEFT}\" y=\"{:.1}\" font-size=\"9\" fill=\"#777\">{:.1} s</text><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" fill=\"#777\" text-anchor=\"end\">{:.1} s after the fault</text>",
        h - 4.0,
        (lo - r.fault_ms) / 1000.0,
        W - RIGHT,
        h - 4.0,
        (hi - r.fault_ms) / 1000.0
    );
    s.push_str("</svg>\n");
    s
}

fn opt(v: Option<u64>) -> String {
    v.map_or("?".into(), |x| x.to_string())
}

fn secs(x: f64) -> String {
    if x.abs() < 10.0 { format!("{x:.2} s") } else { format!("{x:.1} s") }
}

fn stat3(s: Option<Stat>) -> String {
    s.map_or("did not recover".into(), |x| format!("{} / {} / {}", secs(x.min), secs(x.median), secs(x.max)))
}

fn kinds(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("({})", parts.join(", "))
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn marker_color(k: MarkerKind) -> &'static str {
    match k {
        MarkerKind::Fault => "#b00020",
        MarkerKind::Detection => "#e67e00",
        MarkerKind::Fence => "#7b1fa2",
        MarkerKind::Promote => "#1565c0",
        MarkerKind::Resume => "#0a7a2f",
        MarkerKind::Restore => "#555555",
        MarkerKind::Other => "#999999",
    }
}

/// Three stacked panels (commits/s, errors, latency) over the run, with
/// vertical markers.
fn svg_timeline(r: &RunReport) -> String {
    const W: f64 = 1000.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const PANEL: f64 = 90.0;
    const GAP: f64 = 28.0;
    const TOP: f64 = 24.0;
    let plot_w = W - LEFT - RIGHT;
    let end_ms = r.timeline.last().map_or(1000.0, |b| b.t_ms + BUCKET_MS).max(1000.0);
    let x = |ms: f64| LEFT + (ms.clamp(0.0, end_ms) / end_ms) * plot_w;
    let per_s = 1000.0 / BUCKET_MS;
    let commits: Vec<f64> = r.timeline.iter().map(|b| f64::from(b.commits) * per_s).collect();
    let errors: Vec<f64> = r.timeline.iter().map(|b| f64::from(b.errors)).collect();
    let latency: Vec<f64> = r.timeline.iter().map(|b| b.latency_ms_max.unwrap_or(0.0)).collect();
    let panels: [(&str, &Vec<f64>, &str); 3] = [
        ("commits/s", &commits, "#1565c0"),
        ("write errors per 100 ms", &errors, "#b00020"),
        ("max commit latency (ms)", &latency, "#6d4c41"),
    ];
    let h = TOP + 3.0 * (PANEL + GAP) + 20.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg viewBox=\"0 0 {W} {h}\" width=\"{W}\" height=\"{h}\" role=\"img\" aria-label=\"timeline of run {}\">",
        r.run
    );
    for (i, (name, values, color)) in panels.iter().enumerate() {
        let y0 = TOP + i as f64 * (PANEL + GAP);
        let max = values.iter().cloned().fold(0.0f64, f64::max).max(1.0);
        let _ = write!(
            s,
            "<text x=\"{LEFT}\" y=\"{:.1}\" font-size=\"12\" fill=\"#333\">{} (max {:.0})</text>",
            y0 - 6.0,
            esc(name),
            max
        );
        let _ = write!(
            s,
            "<rect x=\"{LEFT}\" y=\"{y0:.1}\" width=\"{plot_w:.1}\" height=\"{PANEL}\" fill=\"none\" stroke=\"#ccc\"/>"
        );
        let mut pts = String::new();
        for (j, v) in values.iter().enumerate() {
            let t = r.timeline[j].t_ms + BUCKET_MS / 2.0;
            let _ = write!(pts, "{:.1},{:.1} ", x(t), y0 + PANEL - (v / max) * PANEL);
        }
        let _ =
            write!(s, "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>", pts.trim());
    }
    let bottom = TOP + 3.0 * (PANEL + GAP) - GAP;
    for (k, m) in r.markers.iter().enumerate() {
        let mx = x(m.at_ms);
        let c = marker_color(m.kind);
        let _ = write!(
            s,
            "<line x1=\"{mx:.1}\" y1=\"{TOP}\" x2=\"{mx:.1}\" y2=\"{bottom:.1}\" stroke=\"{c}\" stroke-dasharray=\"4 3\"><title>{}</title></line>",
            esc(&m.label)
        );
        let ly = bottom + 12.0 + (k % 2) as f64 * 10.0;
        let _ = write!(
            s,
            "<text x=\"{mx:.1}\" y=\"{ly:.1}\" font-size=\"10\" fill=\"{c}\" text-anchor=\"middle\">{}</text>",
            esc(m.kind.label())
        );
    }
    // Time axis: a tick every second (or every 5 s on long runs).
    let step = if end_ms > 30_000.0 { 5000.0 } else { 1000.0 };
    let mut t = 0.0;
    while t <= end_ms {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" fill=\"#777\" text-anchor=\"middle\">{:.0}s</text>",
            x(t),
            h - 2.0,
            (t - r.fault_ms) / 1000.0
        );
        t += step;
    }
    s.push_str("</svg>\n");
    s
}
