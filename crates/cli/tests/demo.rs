//! End-to-end: `pgdr demo` (the debug binary) brings up a two-region sandbox
//! of real PostgreSQL, runs `pgdr run`, drills kill-primary, switchover and
//! region-loss under a write workload, writes the report and tears
//! everything down. Checks the report's shape and what the modes guarantee
//! (a switchover loses nothing and shows clients no error), never timings.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const PGDR: &str = env!("CARGO_BIN_EXE_pgdr");

/// Runs `pgdr sandbox down` on the demo's sandbox when dropped, so a failed
/// test leaves no server behind (a demo that finished already did it).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let sb = self.0.join("sandbox");
        if sb.exists() {
            let _ = Command::new(PGDR).args(["sandbox", "down", "--dir"]).arg(&sb).arg("--purge").output();
        }
    }
}

#[test]
fn demo_runs_every_drill_and_writes_the_report() {
    let tmp = tempfile::Builder::new().prefix("pgdr-demo-test-").tempdir_in("/tmp").expect("tempdir");
    Command::new("chmod").arg("755").arg(tmp.path()).status().expect("chmod");
    let dir = tmp.path().join("demo");
    let _cleanup = Cleanup(dir.clone());

    let out = Command::new(PGDR).arg("demo").arg("--dir").arg(&dir).output().expect("run pgdr demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgdr demo failed ({}):\n{stdout}\n{stderr}", out.status);

    // The table names every scenario; the report is where it says.
    for s in ["kill-primary", "switchover", "region-loss"] {
        assert!(stdout.contains(s), "table lacks {s}:\n{stdout}");
    }
    assert!(stdout.contains(&format!("report: {}/report/report.html", dir.display())), "{stdout}");

    let text = std::fs::read_to_string(dir.join("report/report.json")).expect("report.json");
    let report: Value = serde_json::from_str(&text).expect("report.json is JSON");
    assert_eq!(report["passed"], Value::Bool(true), "{text}");
    let drills = report["drills"].as_array().expect("drills");
    let names: Vec<&str> = drills.iter().filter_map(|d| d["scenario"].as_str()).collect();
    assert_eq!(names, ["kill-primary", "switchover", "region-loss"]);
    for d in drills {
        let scenario = d["scenario"].as_str().unwrap_or_default();
        let runs = d["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), 1, "{scenario}: one run");
        let run = &runs[0];
        for field in
            ["scenario", "rto_seconds", "detection_seconds", "client_errors", "acknowledged_commits", "lost_commits"]
        {
            assert!(run.get(field).is_some(), "{scenario}: run lacks {field}");
        }
        assert!(run["objectives"]["passed"].is_boolean(), "{scenario}: objectives.passed");
        assert!(run["rto_seconds"].is_number(), "{scenario}: writes came back");
        assert!(run["acknowledged_commits"].as_u64().unwrap_or(0) > 0, "{scenario}: the workload committed");
        // What the report says was lost is listed, id by id.
        assert_eq!(run["lost"].as_array().map(Vec::len), run["lost_commits"].as_u64().map(|n| n as usize));
        match scenario {
            "switchover" => {
                // A planned switchover: nothing lost, no client error.
                assert_eq!(run["lost_commits"], 0, "{scenario}");
                assert_eq!(run["client_errors"], 0, "{scenario}");
                assert_ne!(run["old_primary"], run["new_primary"], "{scenario}: the primary moved");
            }
            _ => {
                // An unplanned fault: the controller detected it and another node took over.
                assert!(run["detection_seconds"].is_number(), "{scenario}: detection observed");
                assert_ne!(run["old_primary"], run["new_primary"], "{scenario}: failed over");
                assert!(
                    run["recovery_path"].as_str().is_some_and(|p| p.starts_with("failover")),
                    "{scenario}: {}",
                    run["recovery_path"]
                );
            }
        }
    }
    // Torn down: the sandbox is gone, its logs kept next to the report.
    assert!(!dir.join("sandbox").exists(), "sandbox folder left behind");
    assert!(dir.join("logs").is_dir());
    assert!(dir.join("report/report.html").is_file() && dir.join("report/report.md").is_file());
}
