//! Backup schedules: which clusters are due, given their tier's cron
//! expression and when each was last backed up. Pure; the controller (and
//! `pgdr backup run --due`) supplies the last backup times.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use croner::Cron;
use pgdr_config::Config;

/// Which clusters to consider.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// Only clusters of this tier.
    pub tier: Option<String>,
    /// Only clusters carrying every one of these tags.
    pub tags: Vec<String>,
    /// Only these clusters (empty: all).
    pub clusters: Vec<String>,
}

impl Selector {
    pub fn matches(&self, c: &pgdr_config::Cluster) -> bool {
        self.tier.as_deref().is_none_or(|t| c.tier.as_str() == t)
            && self.tags.iter().all(|t| c.tags.contains(t))
            && (self.clusters.is_empty() || self.clusters.iter().any(|n| n == c.name.as_str()))
    }
}

/// A cluster whose backup is due.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Due {
    pub cluster: String,
    /// The scheduled time that made it due (`None`: never backed up).
    pub scheduled: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
#[error("tier {tier:?}: backup schedule {schedule:?} is not a valid cron expression: {detail}")]
pub struct ScheduleError {
    pub tier: String,
    pub schedule: String,
    pub detail: String,
}

fn parse(tier: &str, schedule: &str) -> Result<Cron, ScheduleError> {
    schedule.parse::<Cron>().map_err(|e| ScheduleError {
        tier: tier.to_owned(),
        schedule: schedule.to_owned(),
        detail: e.to_string(),
    })
}

/// The clusters due at `now`: those never backed up, and those whose
/// schedule had an occurrence after their last backup and at or before now.
pub fn due(
    config: &Config,
    last: &BTreeMap<String, DateTime<Utc>>,
    now: DateTime<Utc>,
    sel: &Selector,
) -> Result<Vec<Due>, ScheduleError> {
    let mut out = Vec::new();
    for c in config.clusters.iter().filter(|c| sel.matches(c)) {
        let Some(policy) = config.tier(c.tier.as_str()).and_then(|t| t.backup.as_ref()) else { continue };
        let cron = parse(c.tier.as_str(), &policy.schedule)?;
        match last.get(c.name.as_str()) {
            None => out.push(Due { cluster: c.name.as_str().to_owned(), scheduled: None }),
            Some(at) => {
                if let Ok(next) = cron.find_next_occurrence(at, false)
                    && next <= now
                {
                    out.push(Due { cluster: c.name.as_str().to_owned(), scheduled: Some(next) });
                }
            }
        }
    }
    Ok(out)
}

/// When each selected cluster was last backed up, read from its tier's
/// primary destination (clusters never backed up are absent).
pub async fn last_backups(config: &Config, sel: &Selector) -> crate::Result<BTreeMap<String, DateTime<Utc>>> {
    let mut out = BTreeMap::new();
    for c in config.clusters.iter().filter(|c| sel.matches(c)) {
        let Some(policy) = config.tier(c.tier.as_str()).and_then(|t| t.backup.as_ref()) else { continue };
        let dest = crate::Dest::open_named(config, &policy.destination)?;
        if let Some(m) = crate::base::list_backups(&dest, c.name.as_str()).await?.pop()
            && let Some(at) = m.created()
        {
            out.insert(c.name.as_str().to_owned(), at);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[[regions]]
name = "r1"

[[destinations]]
name = "local"
url = "file:///tmp/x"

[[tiers]]
name = "gold"
rpo = "5s"
rto = "30s"
backup = { schedule = "0 */6 * * *", destination = "local" }

[[tiers]]
name = "none"
rpo = "5s"
rto = "30s"

[[clusters]]
name = "a"
tier = "gold"
tags = ["pci"]
nodes = [{ name = "a1", region = "r1", agent = "127.0.0.1:7001", host = "127.0.0.1", port = 5001 }]

[[clusters]]
name = "b"
tier = "gold"
nodes = [{ name = "b1", region = "r1", agent = "127.0.0.1:7002", host = "127.0.0.1", port = 5002 }]

[[clusters]]
name = "c"
tier = "none"
nodes = [{ name = "c1", region = "r1", agent = "127.0.0.1:7003", host = "127.0.0.1", port = 5003 }]
"#;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
    }

    #[test]
    fn due_by_schedule_tier_and_tags() {
        let config = Config::parse(std::path::Path::new("/tmp/pgdr.toml"), CONFIG).expect("config");
        let mut last = BTreeMap::new();
        last.insert("a".to_owned(), t("2026-01-01T05:00:00Z"));
        last.insert("b".to_owned(), t("2026-01-01T06:30:00Z"));
        let now = t("2026-01-01T07:00:00Z");
        let d = due(&config, &last, now, &Selector::default()).expect("due");
        assert_eq!(d, vec![Due { cluster: "a".into(), scheduled: Some(t("2026-01-01T06:00:00Z")) }]);
        // Never backed up: due. Tier without backups: never.
        let d = due(&config, &BTreeMap::new(), now, &Selector::default()).expect("due");
        assert_eq!(d.iter().map(|d| d.cluster.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        let pci = Selector { tags: vec!["pci".into()], ..Default::default() };
        assert_eq!(due(&config, &BTreeMap::new(), now, &pci).expect("due").len(), 1);
        let other = Selector { tier: Some("none".into()), ..Default::default() };
        assert!(due(&config, &BTreeMap::new(), now, &other).expect("due").is_empty());
    }
}
