//! Readiness on a schedule: the controller runs the checks of
//! [`pgdr_drill::readiness`] (the same ones as `pgdr check`: standbys
//! streaming within the RPO, slots, matching settings, proxies per region,
//! backups fresh...) once at start and then every
//! `controller.readiness_interval` (default 30 min), keeps the latest
//! findings for `/v1/snapshot` (the status page's Readiness section), and
//! emits a `readiness_regressed` event per finding that was not there at the
//! previous run (a new warning or error, or one that got worse).
//!
//! The controller depends on `pgdr-drill` for the check logic directly: no
//! cycle (the drill crate depends on the node, API and WAN crates, never on
//! the controller), and the only binary that links the controller links
//! the drill crate already.

use std::collections::BTreeMap;
use std::time::Duration;

use pgdr_drill::readiness::{Finding, Severity};
use pgdr_model::ClusterName;
use tokio_util::sync::CancellationToken;

use crate::controller::Controller;

/// The latest run of the readiness checks.
#[derive(Debug, Clone, Default)]
pub struct ReadinessView {
    pub findings: Vec<Finding>,
    /// When the latest run ended (RFC 3339, UTC).
    pub checked_at: Option<String>,
    /// Runs since the controller started.
    pub runs: u64,
}

/// What identifies a finding across runs (its message carries numbers that
/// change from run to run, such as a lag).
fn key(f: &Finding) -> (String, String, Option<String>) {
    (f.cluster.clone(), f.check.clone(), f.node.clone())
}

/// The findings of `after` that are regressions against `before`: a warning
/// or error whose check (on that cluster and node) was fine or absent before,
/// or an error that was a warning.
pub fn regressions<'a>(before: &[Finding], after: &'a [Finding]) -> Vec<&'a Finding> {
    let mut worst: BTreeMap<(String, String, Option<String>), Severity> = BTreeMap::new();
    for f in before {
        let e = worst.entry(key(f)).or_insert(f.severity);
        *e = (*e).max(f.severity);
    }
    after
        .iter()
        .filter(|f| f.severity != Severity::Ok && worst.get(&key(f)).is_none_or(|was| f.severity > *was))
        .collect()
}

/// Runs the checks now, stores the findings, and emits an event per
/// regression against the previous run (none on the first run: there is
/// nothing to regress from). Returns the regressions.
pub async fn run_once(ctl: &Controller) -> Vec<Finding> {
    let sh = &ctl.sh;
    let mut found = pgdr_drill::readiness::check(&sh.config, None).await.findings;
    // Per region: does the stored secret log in now (issue 16)?
    found.extend(crate::rotation::findings(&sh.config, None).await);
    let before = sh.readiness.lock().ok().and_then(|r| r.as_ref().map(|r| r.findings.clone()));
    let regressed: Vec<Finding> = match &before {
        Some(b) => regressions(b, &found).into_iter().cloned().collect(),
        None => Vec::new(),
    };
    let fmt = &time::format_description::well_known::Rfc3339;
    let (errors, warnings) = (
        found.iter().filter(|f| f.severity == Severity::Error).count(),
        found.iter().filter(|f| f.severity == Severity::Warning).count(),
    );
    if let Ok(mut r) = sh.readiness.lock() {
        let runs = r.as_ref().map(|r| r.runs).unwrap_or(0) + 1;
        *r =
            Some(ReadinessView { findings: found, checked_at: time::OffsetDateTime::now_utc().format(fmt).ok(), runs });
    }
    tracing::info!(errors, warnings, regressions = regressed.len(), "readiness checked");
    for f in &regressed {
        let node = f.node.as_deref().map(|n| format!(" on {n}")).unwrap_or_default();
        let fix = if f.fix.is_empty() { String::new() } else { format!(" — {}", f.fix) };
        let sev = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Ok => "ok",
        };
        let ev = sh.event(
            &ClusterName::new(&f.cluster),
            "readiness_regressed",
            format!("{sev}: {}{node}: {}{fix}", f.check, f.message),
        );
        sh.emit(ev).await;
    }
    regressed
}

/// Runs the checks at once and then every `interval` until `cancel` fires.
pub async fn run(ctl: Controller, interval: Duration, cancel: CancellationToken) {
    let interval = interval.max(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = run_once(&ctl) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(sev: Severity, check: &str, node: Option<&str>, msg: &str) -> Finding {
        Finding {
            severity: sev,
            cluster: "c".into(),
            check: check.into(),
            node: node.map(str::to_owned),
            message: msg.into(),
            fix: String::new(),
        }
    }

    #[test]
    fn only_new_or_worse_findings_regress() {
        let before = vec![
            f(Severity::Ok, "streaming", Some("b"), "streaming"),
            f(Severity::Warning, "lag", Some("b"), "lag 3.1s"),
            f(Severity::Error, "proxy", None, "no proxy in west"),
        ];
        let after = vec![
            f(Severity::Error, "streaming", Some("b"), "not streaming"),
            f(Severity::Warning, "lag", Some("b"), "lag 4.7s"),
            f(Severity::Error, "proxy", None, "no proxy in west"),
            f(Severity::Warning, "settings", Some("d"), "max_connections differs"),
            f(Severity::Ok, "backups", None, "fresh"),
        ];
        let r: Vec<(&str, Option<&str>)> =
            regressions(&before, &after).iter().map(|f| (f.check.as_str(), f.node.as_deref())).collect();
        assert_eq!(r, vec![("streaming", Some("b")), ("settings", Some("d"))]);
        // A warning turned error regresses; the same findings again do not.
        let worse = vec![f(Severity::Error, "lag", Some("b"), "lag 40s")];
        assert_eq!(regressions(&before, &worse).len(), 1);
        assert!(regressions(&after, &after).is_empty());
    }
}
