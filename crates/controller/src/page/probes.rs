//! The latest canary probe result per cluster and path, read from the
//! controller's own `pgdr_probes` counters: the outcome whose counter moved
//! last is the latest one. No IO; the counts come from
//! [`crate::metrics::Metrics::encode`].

use std::collections::{BTreeMap, HashMap};

use tokio::time::Instant;

/// One counter's last value and when the book last saw it change.
#[derive(Debug, Clone, Copy)]
struct Seen {
    count: u64,
    /// `None` until a change is seen (the first reading tells nothing about
    /// which outcome is the latest).
    changed_at: Option<Instant>,
}

/// Latest outcome of one probe path of one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    /// `ok`, `refused`, `timeout`, `error`; `None` until a probe is seen.
    pub outcome: Option<String>,
    /// How long ago that outcome's counter moved.
    pub age_ms: Option<u64>,
    /// Probes since the controller started, by outcome.
    pub counts: BTreeMap<String, u64>,
}

/// Remembers the probe counters between readings.
#[derive(Debug, Default)]
pub struct ProbeBook {
    /// (cluster, path, outcome) → last reading.
    seen: HashMap<(String, String, String), Seen>,
}

impl ProbeBook {
    /// Reads the `pgdr_probes_total` lines of a Prometheus text exposition.
    pub fn update(&mut self, exposition: &str, now: Instant) {
        for line in exposition.lines() {
            let Some((labels, value)) = probe_line(line) else { continue };
            let (Some(c), Some(p), Some(o)) = (labels.get("cluster"), labels.get("path"), labels.get("outcome")) else {
                continue;
            };
            let key = (c.clone(), p.clone(), o.clone());
            match self.seen.get_mut(&key) {
                Some(s) if s.count != value => {
                    s.count = value;
                    s.changed_at = Some(now);
                }
                Some(_) => {}
                None => {
                    self.seen.insert(key, Seen { count: value, changed_at: None });
                }
            }
        }
    }

    /// The paths seen for `cluster` (`direct`, `proxy`), sorted.
    pub fn paths(&self, cluster: &str) -> Vec<String> {
        let mut v: Vec<String> = self.seen.keys().filter(|k| k.0 == cluster).map(|k| k.1.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn latest(&self, cluster: &str, path: &str, now: Instant) -> Latest {
        let mut counts = BTreeMap::new();
        let mut best: Option<(&str, Instant)> = None;
        for ((c, p, o), s) in &self.seen {
            if c != cluster || p != path {
                continue;
            }
            counts.insert(o.clone(), s.count);
            if let Some(at) = s.changed_at
                && best.is_none_or(|(_, b)| at > b)
            {
                best = Some((o.as_str(), at));
            }
        }
        // Before any change is seen: when one outcome is all there ever was,
        // it is the latest (how long ago is not known).
        let only = match counts.iter().filter(|(_, n)| **n > 0).collect::<Vec<_>>().as_slice() {
            [(o, _)] if best.is_none() => Some((*o).clone()),
            _ => None,
        };
        Latest {
            outcome: best.map(|(o, _)| o.to_owned()).or(only),
            age_ms: best.map(|(_, at)| now.saturating_duration_since(at).as_millis() as u64),
            counts,
        }
    }
}

/// `pgdr_probes_total{cluster="main",path="direct",outcome="ok"} 12` →
/// its labels and value.
fn probe_line(line: &str) -> Option<(HashMap<String, String>, u64)> {
    let rest = line.strip_prefix("pgdr_probes_total{")?;
    let (labels, value) = rest.rsplit_once('}')?;
    let value: f64 = value.split_whitespace().next()?.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    Some((parse_labels(labels)?, value as u64))
}

/// `a="x",b="y\"z"` → {a: x, b: y"z}.
fn parse_labels(s: &str) -> Option<HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::{Metrics, ProbeLabel};

    fn label(path: &str, outcome: &str) -> ProbeLabel {
        ProbeLabel { cluster: "main".into(), path: path.into(), outcome: outcome.into() }
    }

    #[test]
    fn labels_with_escapes() {
        let l = parse_labels(r#"cluster="a\"b",path="direct",outcome="ok""#).expect("labels");
        assert_eq!(l.get("cluster").map(String::as_str), Some("a\"b"));
        assert_eq!(l.get("outcome").map(String::as_str), Some("ok"));
        assert!(parse_labels(r#"cluster="unterminated"#).is_none());
        assert!(probe_line("pgdr_probes_total{cluster=\"x\"} nan").is_none());
        assert!(probe_line("pgdr_other_total{cluster=\"x\"} 1").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_counter_that_moved_last_is_the_latest_outcome() {
        let m = Metrics::default();
        let mut book = ProbeBook::default();
        m.probes.get_or_create(&label("direct", "ok")).inc();
        m.probes.get_or_create(&label("direct", "timeout")).inc();
        book.update(&m.encode(), Instant::now());
        let first = book.latest("main", "direct", Instant::now());
        assert_eq!(first.outcome, None, "one reading of two outcomes cannot tell which is latest");
        assert_eq!(first.counts.get("ok"), Some(&1));

        tokio::time::advance(Duration::from_secs(1)).await;
        m.probes.get_or_create(&label("direct", "timeout")).inc();
        m.probes.get_or_create(&label("proxy", "ok")).inc();
        book.update(&m.encode(), Instant::now());
        tokio::time::advance(Duration::from_millis(300)).await;
        let l = book.latest("main", "direct", Instant::now());
        assert_eq!(l.outcome.as_deref(), Some("timeout"));
        assert_eq!(l.age_ms, Some(300));
        assert_eq!(l.counts.get("timeout"), Some(&2));
        assert_eq!(book.paths("main"), ["direct", "proxy"]);
        // The proxy path has only ever seen `ok`: that is its latest outcome.
        let p = book.latest("main", "proxy", Instant::now());
        assert_eq!((p.outcome.as_deref(), p.age_ms), (Some("ok"), None));
        assert!(book.paths("other").is_empty());

        tokio::time::advance(Duration::from_secs(1)).await;
        m.probes.get_or_create(&label("direct", "ok")).inc();
        book.update(&m.encode(), Instant::now());
        assert_eq!(book.latest("main", "direct", Instant::now()).outcome.as_deref(), Some("ok"));
    }
}
