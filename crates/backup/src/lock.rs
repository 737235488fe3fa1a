//! Immutability enforced by the store, not only by pgdr declining to delete.
//!
//! An `immutable` S3 destination is backed by S3 Object Lock in COMPLIANCE
//! mode: the bucket's default retention locks every object version written
//! there for the tier's retention period, and no credential (not the
//! destination's own, not the account root) can delete or overwrite a locked
//! version before its date. `pgdr backup lock` sets that default retention;
//! `pgdr check` reports an immutable destination whose bucket does not
//! enforce it.
//!
//! What stays possible with stolen write credentials on a locked bucket: a
//! plain DELETE adds a delete marker and a PUT adds a newer version, so the
//! *current* view can hide or shadow objects; every locked version stays
//! readable by version id until its retention date (recover by removing the
//! markers or reading versions). pgdr writes create-if-absent, so a shadowing
//! version is also caught by the manifest's checksums and the AEAD binding.
//!
//! `object_store` 0.14 cannot send the Object Lock headers or call the
//! bucket's `?object-lock` API, so this module signs those few requests
//! itself (AWS Signature Version 4, `pgdr-sigv4`).
//! GCS bucket retention policies and Azure immutability policies are not
//! driven from here yet: `check` says so.

use std::time::Duration;

use crate::DestError;

/// Retention when no tier using the destination sets `retain_age`.
pub const DEFAULT_LOCK_DAYS: u32 = 30;

/// The bucket's Object Lock configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LockState {
    pub enabled: bool,
    pub mode: Option<String>,
    pub days: Option<u32>,
    pub years: Option<u32>,
}

impl LockState {
    /// Default retention in days (years counted as 365 days).
    pub fn retention_days(&self) -> u32 {
        self.days.unwrap_or(0).max(self.years.unwrap_or(0).saturating_mul(365))
    }

    /// Why this configuration does not enforce write-once for `days`, or `None`.
    pub fn shortfall(&self, days: u32) -> Option<String> {
        if !self.enabled {
            return Some("Object Lock is not enabled on the bucket".into());
        }
        match self.mode.as_deref() {
            None => return Some("the bucket has no default retention: objects are written unlocked".into()),
            Some("COMPLIANCE") => {}
            Some(m) => {
                return Some(format!(
                    "the default retention is in {m} mode, which credentials with s3:BypassGovernanceRetention can lift; COMPLIANCE is needed"
                ));
            }
        }
        let have = self.retention_days();
        (have < days).then(|| format!("the default retention is {have} days, shorter than the tier's {days} days"))
    }

    fn parse(xml: &str) -> LockState {
        let tag = |name: &str| -> Option<String> {
            let open = format!("<{name}>");
            let start = xml.find(&open)? + open.len();
            let end = xml[start..].find(&format!("</{name}>"))? + start;
            Some(xml[start..end].trim().to_owned())
        };
        LockState {
            enabled: tag("ObjectLockEnabled").as_deref() == Some("Enabled"),
            mode: tag("Mode").filter(|m| !m.is_empty()),
            days: tag("Days").and_then(|d| d.parse().ok()).filter(|d| *d > 0),
            years: tag("Years").and_then(|d| d.parse().ok()).filter(|d| *d > 0),
        }
    }
}

/// The retention an immutable destination's objects get: the longest
/// `retain_age` of the tiers backing up to it or copying to it, in whole
/// days, else [`DEFAULT_LOCK_DAYS`].
pub fn lock_days(config: &pgdr_config::Config, dest: &str) -> u32 {
    let longest = config
        .tiers
        .iter()
        .filter_map(|t| t.backup.as_ref())
        .filter(|b| b.destination == dest || b.copies.iter().any(|c| c == dest))
        .filter_map(|b| b.retain_age)
        .max();
    match longest {
        Some(d) if d > Duration::ZERO => u32::try_from(d.as_secs().div_ceil(86400)).unwrap_or(u32::MAX),
        _ => DEFAULT_LOCK_DAYS,
    }
}

/// A minimal signed client for the S3 bucket APIs object_store lacks.
pub struct S3Admin {
    dest: String,
    /// `scheme://host[:port]` without a trailing slash.
    base: String,
    host: String,
    /// Path of the bucket: `/bucket` (path style) or empty (virtual host).
    bucket_path: String,
    region: String,
    access_key: String,
    secret_key: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for S3Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Admin({} {}{})", self.dest, self.base, self.bucket_path)
    }
}

/// An answer from S3.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl S3Admin {
    /// A client for an `s3://` destination, `None` for other schemes.
    /// Credentials: the destination's, else `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`.
    pub fn for_destination(d: &pgdr_config::Destination) -> Result<Option<S3Admin>, DestError> {
        let Some(rest) = d.url.strip_prefix("s3://") else { return Ok(None) };
        let cfg = |detail: String| DestError::Config { dest: d.name.clone(), detail };
        let bucket = rest.split_once('/').map_or(rest, |(b, _)| b);
        if bucket.is_empty() {
            return Err(cfg(format!("expected s3://BUCKET[/PREFIX], got {:?}", d.url)));
        }
        let region = d.region.clone().unwrap_or_else(|| "us-east-1".to_owned());
        let (base, bucket_path) = match &d.endpoint {
            Some(e) => (e.trim_end_matches('/').to_owned(), format!("/{bucket}")),
            None => (format!("https://{bucket}.s3.{region}.amazonaws.com"), String::new()),
        };
        let host = base.split_once("://").map_or(base.as_str(), |(_, h)| h).split('/').next().unwrap_or("").to_owned();
        let secret = |s: &Option<pgdr_config::Secret>, env: &str, what: &str| -> Result<Option<String>, DestError> {
            match s {
                Some(s) => s.resolve().map(Some).map_err(|e| cfg(format!("{what}: {e}"))),
                None => Ok(std::env::var(env).ok().filter(|v| !v.is_empty())),
            }
        };
        let access_key = secret(&d.access_key_id, "AWS_ACCESS_KEY_ID", "access_key_id")?;
        let secret_key = secret(&d.secret_access_key, "AWS_SECRET_ACCESS_KEY", "secret_access_key")?;
        let (Some(access_key), Some(secret_key)) = (access_key, secret_key) else {
            return Err(cfg(
                "the bucket's Object Lock settings need static credentials: set access_key_id and secret_access_key (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)".into(),
            ));
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| cfg(format!("cannot build an HTTP client: {e}")))?;
        if base.starts_with("http://") && !d.allow_http {
            return Err(cfg(format!("endpoint {base} is plain HTTP and allow_http is not set")));
        }
        Ok(Some(S3Admin {
            dest: d.name.clone(),
            base,
            host,
            bucket_path,
            region,
            access_key,
            secret_key,
            token: std::env::var("AWS_SESSION_TOKEN").ok().filter(|t| !t.is_empty() && d.access_key_id.is_none()),
            client,
        }))
    }

    fn err(&self, what: &str, detail: String) -> DestError {
        DestError::Config { dest: self.dest.clone(), detail: format!("{what}: {detail}") }
    }

    /// Sends one signed request. `path` is relative to the bucket (`""` for
    /// the bucket itself, else `/key`), `query` is already canonical
    /// (`object-lock=`, `versionId=…`, sorted, encoded).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: Vec<u8>,
        extra: &[(&str, String)],
    ) -> Result<Answer, DestError> {
        let uri = {
            let p = format!("{}{}", self.bucket_path, path);
            if p.is_empty() { "/".to_owned() } else { p }
        };
        let now = chrono::Utc::now();
        let mut headers: Vec<(String, String)> =
            extra.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
        if let Some(t) = &self.token {
            headers.push(("x-amz-security-token".into(), t.clone()));
        }
        let auth = pgdr_sigv4::sign(
            &pgdr_sigv4::Signing {
                method,
                host: &self.host,
                uri: &uri,
                query,
                region: &self.region,
                service: "s3",
                access_key: &self.access_key,
                secret_key: &self.secret_key,
                amz_date: &now.format("%Y%m%dT%H%M%SZ").to_string(),
            },
            &mut headers,
            &body,
        );
        let url = if query.is_empty() { format!("{}{uri}", self.base) } else { format!("{}{uri}?{query}", self.base) };
        let m = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| self.err(method, e.to_string()))?;
        let mut req = self.client.request(m, &url).header("authorization", auth).body(body);
        for (k, v) in &headers {
            if k != "host" {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        let res = req.send().await.map_err(|e| self.err(&format!("{method} {url}"), e.to_string()))?;
        let status = res.status().as_u16();
        let headers = res
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let body = res.text().await.unwrap_or_default();
        Ok(Answer { status, headers, body })
    }

    /// The bucket's Object Lock configuration (not enabled when it has none).
    pub async fn lock_state(&self) -> Result<LockState, DestError> {
        let a = self.request("GET", "", "object-lock=", Vec::new(), &[]).await?;
        match a.status {
            200 => Ok(LockState::parse(&a.body)),
            404 if a.body.contains("ObjectLockConfigurationNotFound") => Ok(LockState::default()),
            s => {
                Err(self
                    .err("cannot read the bucket's Object Lock configuration", format!("HTTP {s}: {}", a.body.trim())))
            }
        }
    }

    /// Sets the bucket's default retention to COMPLIANCE for `days` (and
    /// enables Object Lock where the store allows enabling it on an existing
    /// versioned bucket).
    pub async fn set_default_retention(&self, days: u32) -> Result<(), DestError> {
        let body = format!(
            "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Days>{days}</Days></DefaultRetention></Rule></ObjectLockConfiguration>"
        )
        .into_bytes();
        let md5 = {
            use base64::Engine;
            use md5::Digest as _;
            base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body))
        };
        let a = self
            .request(
                "PUT",
                "",
                "object-lock=",
                body,
                &[("content-md5", md5), ("content-type", "application/xml".into())],
            )
            .await?;
        if a.status == 200 {
            Ok(())
        } else {
            Err(self.err(
                "cannot set the bucket's default Object Lock retention",
                format!(
                    "HTTP {}: {} (the bucket must have versioning and Object Lock enabled, e.g. created with Object Lock on; some stores only accept this on a new, empty bucket)",
                    a.status,
                    a.body.trim()
                ),
            ))
        }
    }
}

/// How an immutable destination's store stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Enforcement {
    /// The store enforces write-once for at least the tier's retention.
    Enforced(String),
    /// Marked immutable, but the store would let credentials delete.
    NotEnforced(String),
    /// Not checked (a store pgdr cannot inspect yet).
    Unknown(String),
}

/// Checks whether the store behind an immutable destination enforces it.
pub async fn enforcement(config: &pgdr_config::Config, d: &pgdr_config::Destination) -> Enforcement {
    let days = lock_days(config, &d.name);
    if d.url.starts_with("file://") {
        return Enforcement::NotEnforced(
            "a file:// destination cannot lock its files: only pgdr declines to delete there".into(),
        );
    }
    match S3Admin::for_destination(d) {
        Ok(Some(s3)) => match s3.lock_state().await {
            Ok(state) => match state.shortfall(days) {
                None => Enforcement::Enforced(format!(
                    "S3 Object Lock in COMPLIANCE mode, default retention {} days (tier needs {days})",
                    state.retention_days()
                )),
                Some(why) => Enforcement::NotEnforced(why),
            },
            Err(e) => Enforcement::Unknown(e.to_string()),
        },
        Ok(None) => Enforcement::Unknown(format!(
            "{}: pgdr does not check this store's retention yet; set a locked retention policy of at least {days} days on it (GCS bucket retention policy, Azure immutability policy)",
            d.url
        )),
        Err(e) => Enforcement::Unknown(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_states() {
        let xml = "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Days>30</Days></DefaultRetention></Rule></ObjectLockConfiguration>";
        let s = LockState::parse(xml);
        assert_eq!(s.shortfall(30), None);
        assert!(s.shortfall(31).expect("short").contains("30 days"));
        let g = LockState::parse(&xml.replace("COMPLIANCE", "GOVERNANCE"));
        assert!(g.shortfall(1).expect("governance").contains("COMPLIANCE"));
        assert!(LockState::default().shortfall(1).is_some());
        let y = LockState::parse(&xml.replace("<Days>30</Days>", "<Years>1</Years>"));
        assert_eq!(y.retention_days(), 365);
    }
}
