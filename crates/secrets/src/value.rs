//! What a store holds for one managed role.

use serde::{Deserialize, Serialize};

/// Where a secret lives in a store: the cluster and the managed role's name
/// (not the login, which alternates).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretKey {
    pub cluster: String,
    pub role: String,
}

impl SecretKey {
    pub fn new(cluster: &str, role: &str) -> SecretKey {
        SecretKey { cluster: cluster.to_owned(), role: role.to_owned() }
    }
}

impl std::fmt::Display for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.cluster, self.role)
    }
}

/// The stored secret: the JSON object applications already read for RDS
/// secrets (`username`, `password`, `host`, `port`, `dbname`, `engine`),
/// plus pgdr's `version` (raised by every rotation), `epoch` (the cluster's
/// epoch when the password was set) and `rotated_at`. `host`/`port` are the
/// region's proxy writer endpoint.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretValue {
    pub username: String,
    pub password: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub engine: String,
    pub version: u64,
    pub epoch: u64,
    /// RFC 3339, UTC.
    #[serde(default)]
    pub rotated_at: String,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("version", &self.version)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl SecretValue {
    /// The same credentials pointed at another region's endpoint.
    pub fn at(&self, host: &str, port: u16) -> SecretValue {
        SecretValue { host: host.to_owned(), port, ..self.clone() }
    }

    /// Age in seconds at `now`, when `rotated_at` parses.
    pub fn age(&self, now: chrono::DateTime<chrono::Utc>) -> Option<std::time::Duration> {
        let at = chrono::DateTime::parse_from_rfc3339(&self.rotated_at).ok()?;
        (now - at.with_timezone(&chrono::Utc)).to_std().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password_and_json_has_the_rds_fields() {
        let v = SecretValue {
            username: "app".into(),
            password: "hunter2-hunter2".into(),
            host: "127.0.0.1".into(),
            port: 6432,
            dbname: "postgres".into(),
            engine: "postgres".into(),
            version: 3,
            epoch: 2,
            rotated_at: "2026-12-02T18:00:00Z".into(),
        };
        assert!(!format!("{v:?}").contains("hunter2"));
        let j: serde_json::Value = serde_json::to_value(&v).expect("json");
        for f in ["username", "password", "host", "port", "dbname", "engine", "version", "epoch"] {
            assert!(j.get(f).is_some(), "{f} missing: {j}");
        }
    }
}
