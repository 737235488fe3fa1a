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

/// After the fence step's withdrawals: a support round the old primary
/// sent just before them covers it for `2 × lease_renew`, then the margin.
pub fn withdrawal_wait(t: &Timing) -> Duration {
    t.lease_renew * 2 + t.lease_margin
}

/// The shortest `lease_renew`: the agent bounds its fence by it (an
/// immediate stop, then SIGKILL of the postmaster after half of it) and a
/// support round by a quarter of it.
pub const MIN_LEASE_RENEW: Duration = Duration::from_millis(200);

/// Inequalities beyond the basic ones `pgdr-config` checks.
pub fn violations(t: &Timing) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = t.check().into_iter().map(|(k, m)| (k.to_owned(), m)).collect();
    if t.lease_margin < t.lease_renew {
        v.push((
            "timing.lease_margin".into(),
            format!(
                "must be at least timing.lease_renew ({}): the agent starts its fence lease_renew before its lease ends and bounds it by that, and the margin covers what is left: an agent restarted just before its deadline decides within lease_renew / 2, and clock drift and timer lateness take the other half",
                pgdr_model::format_duration(t.lease_renew)
            ),
        ));
    }
    if !t.lease_renew.is_zero() && t.lease_renew < MIN_LEASE_RENEW {
        v.push((
            "timing.lease_renew".into(),
            format!(
                "must be at least {}: the slowest fence the agent allows is lease_renew (an immediate stop, SIGKILL after half of it), and a support round gets lease_renew / 4",
                pgdr_model::format_duration(MIN_LEASE_RENEW)
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
        // The lease from the last grant, or the withdrawals made once the
        // outage is declared, whichever ends later.
        let silent_decision = lease.max(det_s + withdrawal_wait(t));
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
                formula: "max(lease_ttl + lease_margin, failure_threshold × probe_interval + probe_timeout + 2 × lease_renew + lease_margin) + promote_timeout".into(),
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
        warnings.extend(boot_guard_warnings(config));
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

/// Nodes whose settings in the config leave `restart_after_crash` on: a
/// backend crash makes PostgreSQL reinitialise, which rereads the boot
/// guard's `standby.signal`, so a primary would come back read-only until
/// the controller restarts it (see `pgdr_node::guard`).
fn boot_guard_warnings(config: &Config) -> Vec<String> {
    config
        .clusters
        .iter()
        .flat_map(|c| c.nodes.iter())
        .filter(|n| !n.settings.iter().any(|(k, v)| k == "restart_after_crash" && matches!(v.as_str(), "off" | "false" | "0")))
        .map(|n| {
            format!(
                "node {}: its settings do not set restart_after_crash = off; unless postgresql.conf does, a backend crash brings the primary back read-only under the boot guard until the controller restarts it",
                n.name
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_left_restarting_after_a_crash_is_warned_about() {
        let text = |settings: &str| {
            format!(
                "[[regions]]\nname = \"east\"\n[[tiers]]\nname = \"gold\"\nrpo = \"5s\"\nrto = \"30s\"\n\
                 [[clusters]]\nname = \"main\"\ntier = \"gold\"\n[[clusters.nodes]]\nname = \"n1\"\n\
                 region = \"east\"\nagent = \"127.0.0.1:7401\"\nhost = \"127.0.0.1\"\nport = 5432\n{settings}"
            )
        };
        let load = |t: String| Config::parse(std::path::Path::new("pgdr.toml"), &t).expect("config");
        let warned = boot_guard_warnings(&load(text("")));
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0].contains("n1") && warned[0].contains("restart_after_crash"), "{warned:?}");
        let off = load(text("settings = { restart_after_crash = \"off\" }\n"));
        assert!(boot_guard_warnings(&off).is_empty());
    }

    #[test]
    fn defaults_obey_the_inequalities() {
        let t = Timing::default();
        assert!(violations(&t).is_empty());
        assert_eq!(detection_refused(&t), Duration::from_secs(3));
        assert_eq!(detection_silent(&t), Duration::from_millis(3800));
        assert_eq!(lease_wait(&t), Duration::from_secs(8));
        let bad = Timing { lease_margin: Duration::from_millis(100), ..Timing::default() };
        assert_eq!(violations(&bad)[0].0, "timing.lease_margin");
        let fast = Timing {
            lease_renew: Duration::from_millis(100),
            lease_ttl: Duration::from_millis(300),
            lease_margin: Duration::from_millis(100),
            ..Timing::default()
        };
        assert_eq!(violations(&fast)[0].0, "timing.lease_renew");
        // Host loss: the withdrawals after detection end later than the lease.
        assert_eq!(withdrawal_wait(&t), Duration::from_secs(4));
    }
}
