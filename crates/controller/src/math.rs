//! The failover math: the inequalities the timing settings must obey and the
//! worst-case recovery time they imply for each class of failure. Printed by
//! `pgdr config check`; explained in `docs/failover-math.md`.

use std::time::Duration;

use pgdr_config::{Config, OnCrash, Timing};
use serde::Serialize;

/// A class of failure with its derived worst-case timings.
#[derive(Debug, Clone, Serialize)]
pub struct ClassRto {
    /// `primary-crash`, `host-loss`, `region-loss`, `controller-loss`.
    pub class: &'static str,
    /// Fault → the controller may promote (detection and fencing done).
    pub decision_seconds: f64,
    /// `decision_seconds` plus the promotion bound (`timing.promote_timeout`).
    pub worst_rto_seconds: f64,
    /// How the numbers are made up.
    pub formula: String,
}

/// The math for one config.
#[derive(Debug, Clone, Serialize)]
pub struct Math {
    pub detection_refused_seconds: f64,
    pub detection_silent_seconds: f64,
    /// The longest blip that can never cause a failover.
    pub tolerated_blip_seconds: f64,
    pub lease_wait_seconds: f64,
    pub classes: Vec<ClassRto>,
    /// Broken inequalities: (key, message). `config check` rejects these.
    pub violations: Vec<(String, String)>,
    /// Objectives the settings cannot meet: printed, not rejected.
    pub warnings: Vec<String>,
}

fn s(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Worst detection when probes are refused at once (the host answers): the
/// first failing probe starts up to one interval after the fault, then
/// `threshold - 1` more intervals.
pub fn detection_refused(t: &Timing) -> Duration {
    t.probe_interval * t.failure_threshold.max(1)
}

/// Worst detection when probes hang (host or region silent): as above, and
/// the last probe counts only at its deadline.
pub fn detection_silent(t: &Timing) -> Duration {
    t.probe_interval * t.failure_threshold.max(1) + t.probe_timeout
}

/// The lease wait for a silent primary: the fault may come just after a
/// renewal, so the lease certainly ends `lease_ttl + lease_margin` later.
pub fn lease_wait(t: &Timing) -> Duration {
    t.lease_ttl + t.lease_margin
}

/// Inequalities beyond the basic ones `pgdr-config` checks.
pub fn violations(t: &Timing) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = t.check().into_iter().map(|(k, m)| (k.to_owned(), m)).collect();
    if t.lease_margin < t.lease_renew {
        v.push((
            "timing.lease_margin".into(),
            format!(
                "must be at least timing.lease_renew ({}): it covers the old primary's fencing action, which the agent bounds by lease_renew, and clock-rate drift",
                pgdr_model::format_duration(t.lease_renew)
            ),
        ));
    }
    if t.probe_timeout.is_zero() {
        v.push(("timing.probe_timeout".into(), "must be more than 0".into()));
    }
    v
}

impl Math {
    pub fn of(config: &Config) -> Math {
        let t = &config.timing;
        let det_r = detection_refused(t);
        let det_s = detection_silent(t);
        let lease = lease_wait(t);
        let promote = t.promote_timeout;
        let restart_first = config.clusters.iter().any(|c| c.on_crash == OnCrash::RestartFirst);
        // Crash: refused probes; the agent answers and confirms the fence in
        // at most one probe timeout.
        let crash_decision = det_r + t.probe_timeout + if restart_first { t.restart_deadline } else { Duration::ZERO };
        let silent_decision = det_s.max(lease);
        let mut classes = vec![
            ClassRto {
                class: "primary-crash",
                decision_seconds: s(crash_decision),
                worst_rto_seconds: s(crash_decision + promote),
                formula: if restart_first {
                    "failure_threshold × probe_interval + probe_timeout (agent confirms) + restart_deadline (on_crash = restart-first) + promote_timeout".into()
                } else {
                    "failure_threshold × probe_interval + probe_timeout (agent confirms) + promote_timeout".into()
                },
            },
            ClassRto {
                class: "host-loss",
                decision_seconds: s(silent_decision),
                worst_rto_seconds: s(silent_decision + promote),
                formula: "max(failure_threshold × probe_interval + probe_timeout, lease_ttl + lease_margin) + promote_timeout".into(),
            },
            ClassRto {
                class: "region-loss",
                decision_seconds: s(silent_decision),
                worst_rto_seconds: s(silent_decision + promote),
                formula: "as host-loss, to a replica in another region (only if within the tier's RPO)".into(),
            },
            ClassRto {
                class: "controller-loss",
                decision_seconds: 0.0,
                worst_rto_seconds: 0.0,
                formula: "writes continue (the primary still reaches a majority of its agents, so it does not fence); if the primary fails too: controller restart + max(detection, lease_ttl + lease_margin counted from the controller's start) + promote_timeout".into(),
            },
        ];
        classes.retain(|_| true);
        let mut warnings = Vec::new();
        for cl in &config.clusters {
            if let Some(tier) = config.tier(cl.tier.as_str()) {
                for c in &classes[..3] {
                    if c.decision_seconds > tier.rto.as_secs_f64() {
                        warnings.push(format!(
                            "cluster {}: {} needs up to {:.1}s before promotion, more than tier {}'s RTO of {}",
                            cl.name,
                            c.class,
                            c.decision_seconds,
                            tier.name,
                            pgdr_model::format_duration(tier.rto)
                        ));
                    }
                }
            }
        }
        Math {
            detection_refused_seconds: s(det_r),
            detection_silent_seconds: s(det_s),
            tolerated_blip_seconds: s(t.probe_interval * t.failure_threshold.saturating_sub(1)),
            lease_wait_seconds: s(lease),
            classes,
            violations: violations(t),
            warnings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_obey_the_inequalities() {
        let t = Timing::default();
        assert!(violations(&t).is_empty());
        assert_eq!(detection_refused(&t), Duration::from_secs(3));
        assert_eq!(detection_silent(&t), Duration::from_millis(3800));
        assert_eq!(lease_wait(&t), Duration::from_secs(8));
        let bad = Timing { lease_margin: Duration::from_millis(100), ..Timing::default() };
        assert_eq!(violations(&bad)[0].0, "timing.lease_margin");
    }
}
