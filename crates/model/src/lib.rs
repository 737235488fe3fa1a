//! The words of `DESIGN.md` as types.
//!
//! Everything that more than one part of pgdr talks about lives here: names of
//! clusters, regions and nodes, a node's role, the cluster epoch, WAL positions
//! and replication lag. This crate does no IO and depends on nothing of pgdr's.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod lsn;
mod redacted;
pub use lsn::{Lsn, LsnParseError};
pub use redacted::Redacted;

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a name without checking it; config validation checks names.
            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// One logical database: a writable primary and its replicas.
    ClusterName
);
name_type!(
    /// A failure domain: a data centre, a cloud region, or a zone inside one.
    RegionName
);
name_type!(
    /// One PostgreSQL server of a cluster, with its agent.
    NodeName
);
name_type!(
    /// A named set of objectives and schedules that clusters pick.
    TierName
);

/// Checks that a name is usable as a cluster, region, node or tier name:
/// 1 to 63 characters of ASCII letters, digits, `-` and `_`, starting with a
/// letter. Names end up in replication slot names, file names and URLs.
pub fn check_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 63 {
        return Err("a name of 1 to 63 characters");
    }
    let mut chars = s.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic()) {
        return Err("a name starting with a letter");
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err("a name of letters, digits, '-' and '_'");
    }
    Ok(())
}

/// Checks a host pgdr writes into PostgreSQL's configuration and connection
/// strings and connects to: a DNS name (labels of ASCII letters, digits,
/// `-` and `_`) or an IPv4 or IPv6 address. Nothing accepted can end a
/// quoted value or add a connection parameter.
pub fn check_host(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && (h.parse::<std::net::IpAddr>().is_ok()
            || h.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            }));
    if ok { Ok(()) } else { Err(format!("host {h:?}: expected a host name or an IP address")) }
}

/// Whether `k` is a PostgreSQL parameter name (custom ones have a dot:
/// `pgdr.x`): nothing else may stand left of `=` in postgresql.conf.
pub fn is_setting_name(k: &str) -> bool {
    let mut chars = k.chars();
    k.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// A cluster's generation number, raised by every promotion. It is the fencing
/// token: agents refuse commands carrying an older epoch and proxies route only
/// to the node the current epoch names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    pub const ZERO: Epoch = Epoch(0);

    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A PostgreSQL timeline id, raised by every promotion of that server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a node is, as observed on the server itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Not in recovery: accepts writes (unless fenced).
    Primary,
    /// In recovery, streaming or replaying WAL.
    Replica,
    /// PostgreSQL is not running or not answering.
    Down,
    /// The agent could not be reached, so nothing is known.
    Unknown,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Down => "down",
            Role::Unknown => "unknown",
        })
    }
}

/// How a replica trails its upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    /// Bytes of WAL the primary has written that this node has not replayed.
    pub bytes: Option<u64>,
    /// Seconds since the last replayed transaction was committed on the
    /// primary (0 when fully caught up and idle).
    pub seconds: Option<f64>,
}

/// How commits wait for replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum ReplicationMode {
    /// Commits return once the primary has written them; a failover may lose
    /// up to the replicas' lag.
    Async,
    /// Commits wait for `quorum` replicas (`ANY k` in
    /// `synchronous_standby_names`); a failover to one of them loses nothing.
    Sync { quorum: u32 },
}

/// Parses durations as the config does: "500ms", "5s", "2m", "1h".
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humanize_parse(s)
}

const MAX_DURATION_SECS: f64 = 100.0 * 365.0 * 86400.0;

fn humanize_parse(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} has no unit (use ms, s, m, h or d)"))?;
    let (num, unit) = s.split_at(split);
    let value: f64 = f64::from_str(num).map_err(|_| format!("{s:?} does not start with a number"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => return Err(format!("{s:?} has unknown unit {other:?} (use ms, s, m, h or d)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    // Found by the config parser's property test: from_secs_f64 panics
    // past u64::MAX seconds. No pgdr duration needs more than a century.
    if secs > MAX_DURATION_SECS {
        return Err(format!("{s:?} is longer than 100 years"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Formats a duration the way [`parse_duration`] reads it back.
pub fn format_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) || ms == 0 {
        format!("{ms}ms")
    } else if !ms.is_multiple_of(60_000) {
        format!("{}s", ms / 1000)
    } else if !ms.is_multiple_of(3_600_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}h", ms / 3_600_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("five seconds").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("18446744073709551616s").is_err(), "past u64::MAX seconds: an error, no panic");
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("36500d").is_ok());
        for d in ["250ms", "5s", "2m", "1h"] {
            assert_eq!(format_duration(parse_duration(d).unwrap_or_default()), d);
        }
    }

    #[test]
    fn names() {
        assert!(check_name("east-1").is_ok());
        assert!(check_name("1east").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        for ok in ["127.0.0.1", "::1", "db-1.example.com", "localhost", "node_2"] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "h'", "h\\", "h=1", "-x", "a..b", "h\n", "host=evil"] {
            assert!(check_host(bad).is_err(), "{bad:?}");
        }
        assert!(is_setting_name("pgdr.probe") && is_setting_name("fsync"));
        assert!(!is_setting_name("a = 1\nb") && !is_setting_name("") && !is_setting_name("1a"));
    }

    #[test]
    fn role_serde() {
        assert_eq!(serde_json::to_string(&Role::Primary).ok().as_deref(), Some("\"primary\""));
        let m: ReplicationMode =
            serde_json::from_str(r#"{"mode":"sync","quorum":1}"#).unwrap_or(ReplicationMode::Async);
        assert_eq!(m, ReplicationMode::Sync { quorum: 1 });
    }
}
