use std::collections::BTreeMap;

use pgdr_drill::checker::LostCommit;
use pgdr_drill::observer::MarkerKind;
use pgdr_drill::report::{DrillReport, Objectives, Report, RunReport, TimelineMarker};
use pgdr_drill::timeline::Bucket;
use pgdr_drill::writable::{Answer, Probe, WritableLog, WritableTimeline};

fn run(n: u32, rto: f64, lost: u64) -> RunReport {
    let timeline = (0..60)
        .map(|i| Bucket {
            t_ms: f64::from(i) * 100.0,
            commits: if (30..40).contains(&i) { 0 } else { 40 },
            errors: u32::from(i == 30),
            reads: 5,
            read_errors: 0,
            latency_ms_mean: Some(2.0),
            latency_ms_max: Some(if i == 40 { 900.0 } else { 4.0 }),
        })
        .collect();
    RunReport {
        scenario: "kill-primary".into(),
        run: n,
        started_at: "2026-11-23T16:00:00Z".into(),
        fault: "SIGKILL to the postmaster of n1 <script>".into(),
        fault_at: "2026-11-23T16:00:03Z".into(),
        old_primary: Some("n1".into()),
        new_primary: Some("n2".into()),
        epoch_before: Some(1),
        epoch_after: Some(2),
        rto_seconds: Some(rto),
        writes_unavailable: None,
        rto_throughput_seconds: Some(rto + 0.2),
        baseline_commits_per_second: 400.0,
        detection_seconds: Some(0.5),
        steps: vec![],
        recovery_path: Some("failover".into()),
        client_errors: 3,
        write_errors_by_kind: BTreeMap::from([("connection lost (outcome unknown)".to_string(), 3)]),
        read_errors_by_kind: BTreeMap::new(),
        reads: 300,
        acknowledged_commits: 2000,
        lost_commits: lost,
        lost_span_seconds: (lost > 0).then_some(0.1),
        rpo_seconds: if lost > 0 { 0.2 } else { 0.0 },
        lost: (0..lost).map(|i| LostCommit { id: 77 + i as i64, writer: 1, acknowledged_ms: 2900.0 }).collect(),
        unknown_outcome_writes: 3,
        unknown_outcome_committed: 1,
        failed_but_present: vec![],
        objectives: Objectives {
            tier: "gold".into(),
            rto_seconds: 30.0,
            rpo_seconds: 0.0,
            rto_met: true,
            rpo_met: lost == 0,
            single_writer: true,
            passed: lost == 0,
        },
        restored: vec!["every node back".into()],
        notes: vec![],
        workload_started_unix_ms: 1.0e12,
        fault_ms: 3000.0,
        timeline,
        markers: vec![
            TimelineMarker { kind: MarkerKind::Fault, at_ms: 3000.0, label: "fault".into() },
            TimelineMarker { kind: MarkerKind::Promote, at_ms: 3800.0, label: "promote".into() },
        ],
        stranded: None,
        writable: WritableTimeline::default(),
    }
}

/// A run whose overlap checker saw n1 and n2 take writes at once.
fn split_brain(mut r: RunReport) -> RunReport {
    let p = |sent: f64, answer| Probe {
        sent_unix_ms: 1.0e12 + sent,
        at_unix_ms: 1.0e12 + sent + 2.0,
        answer,
        detail: None,
    };
    let log = WritableLog {
        nodes: vec![
            ("n1".into(), (0..80).map(|i| p(f64::from(i) * 50.0, Answer::Writable)).collect()),
            (
                "n2".into(),
                (0..80)
                    .map(|i| p(f64::from(i) * 50.0, if i < 70 { Answer::Refused } else { Answer::Writable }))
                    .collect(),
            ),
        ],
    };
    r.writable = log.analyse(r.workload_started_unix_ms);
    r.objectives.single_writer = r.writable.overlaps.is_empty();
    r.objectives.passed &= r.objectives.single_writer;
    r
}

#[test]
fn html_report_is_self_contained_and_shows_the_verdict() {
    let runs = vec![run(1, 1.2, 0), run(2, 0.9, 2), split_brain(run(3, 1.5, 0))];
    assert!(!runs[2].objectives.passed, "two writable servers at once fail the run");
    let drill = DrillReport::summarize("kill-primary", "SIGKILL of the primary's postmaster", runs, vec![]);
    let stat = drill.rto_seconds.expect("rto stat");
    assert_eq!((stat.min, stat.median, stat.max), (0.9, 1.2, 1.5));
    assert_eq!(drill.lost_commits_total, 2);
    assert!(!drill.passed, "a run that lost commits against RPO 0 fails the drill");
    let report = Report {
        generated_at: "now".into(),
        pgdr_version: "test".into(),
        cluster: "app".into(),
        tier: "gold".into(),
        rto_objective_seconds: 30.0,
        rpo_objective_seconds: 0.0,
        observer: "test".into(),
        wan_delay_ms: None,
        rto_definition: pgdr_drill::checker::RTO_DEFINITION.into(),
        passed: drill.passed,
        drills: vec![drill],
    };
    let html = report.html();
    let lower = html.to_ascii_lowercase();
    for banned in ["http://", "https://", "<script", "<link", "<img", "@import", "url("] {
        assert!(!lower.contains(banned), "the HTML report must not reference {banned}");
    }
    assert!(html.contains("<svg"), "an inline SVG timeline");
    assert!(html.contains("FAILED"), "the verdict line");
    assert!(html.contains("&lt;script&gt;"), "text is escaped");
    assert!(html.matches("<svg").count() == 4, "one timeline per run, and the writable-server lanes of run 3");
    assert!(html.contains("split brain: n1 and n2"), "the overlap is drawn");
    assert!(html.contains("How RTO is measured"), "the RTO definition is in the report");
    // The JSON has the fields auditors' tools read.
    let json: serde_json::Value = serde_json::to_value(&report).expect("json");
    let r0 = &json["drills"][0]["runs"][1];
    for key in [
        "scenario",
        "rto_seconds",
        "detection_seconds",
        "client_errors",
        "acknowledged_commits",
        "lost_commits",
        "objectives",
    ] {
        assert!(!r0[key].is_null(), "run JSON has {key}");
    }
    assert_eq!(r0["objectives"]["passed"], serde_json::Value::Bool(false));
    let md = report.markdown();
    assert!(md.contains("| kill-primary | 3 |"), "{md}");
    assert!(md.contains("How RTO is measured: RTO is the time writes were unavailable"), "{md}");
    assert!(md.contains("SPLIT BRAIN: n1 and n2 both accepted writes"), "{md}");
    assert!(md.contains("| n2 | writable |"), "the writable-server timeline: {md}");
    let dir = tempfile::Builder::new().prefix("pgdr-report-").tempdir_in("/tmp").expect("tempdir");
    let files = report.write(dir.path()).expect("write");
    assert_eq!(files.len(), 3);
    let back = Report::read(&dir.path().join("report.json")).expect("read back");
    assert_eq!(back, report);
}
