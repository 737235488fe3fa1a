//! The cluster's writer name in DNS (`[clusters.dns]`): pointed at the
//! endpoint of the primary's region by an RFC 2136 update signed with TSIG
//! (`pgdr-dns`).
//!
//! A role change updates it in its `update_dns` step, after the proxies
//! moved ([`step`]). DNS is for clients that connect straight to a region;
//! the proxies stay the epoch-checked path, so a failed update never blocks
//! or undoes the role change: it is journalled, sent as a
//! `dns_update_failed` event, logged, and retried in the background by
//! [`run`] until it succeeds. [`run`] also syncs every cluster's name once
//! when the controller starts (a new leader does not know whether its
//! predecessor's last update went through). Every update names the
//! primary the store holds at that moment, so a retry never points the
//! name at a node that has since lost the role.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pgdr_config::{Cluster, ClusterDns, DnsTarget};
use pgdr_model::{ClusterName, Epoch, RegionName};
use pgdr_workflow::{StepContext, StepError, StepOutput};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Controller;
use crate::runtime::Shared;
use crate::workflows::{Ctx, fatal};

/// Attempts inside the workflow step; the background loop takes over after.
const STEP_ATTEMPTS: u32 = 2;
/// The background loop's first delay after a failure, doubled up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How often the background loop looks for due retries.
const TICK: Duration = Duration::from_millis(500);

/// Clusters whose writer name may not point at the primary's region yet.
#[derive(Debug, Default)]
pub struct Pending {
    due: std::sync::Mutex<BTreeMap<ClusterName, Retry>>,
}

#[derive(Debug, Clone)]
struct Retry {
    at: Instant,
    delay: Duration,
    /// The last error, so a failure that repeats is evented once.
    last_error: Option<String>,
}

impl Pending {
    /// Retries `cluster` soon (and keeps the error it last saw).
    pub fn mark(&self, cluster: &ClusterName, error: Option<String>) {
        if let Ok(mut d) = self.due.lock() {
            let e = d.entry(cluster.clone()).or_insert(Retry {
                at: Instant::now() + RETRY_FIRST,
                delay: RETRY_FIRST,
                last_error: None,
            });
            if error.is_some() {
                e.last_error = error;
            }
        }
    }

    pub fn clear(&self, cluster: &ClusterName) {
        if let Ok(mut d) = self.due.lock() {
            d.remove(cluster);
        }
    }

    pub fn is_pending(&self, cluster: &ClusterName) -> bool {
        self.due.lock().map(|d| d.contains_key(cluster)).unwrap_or(false)
    }

    fn due_now(&self) -> Vec<(ClusterName, Retry)> {
        let now = Instant::now();
        self.due
            .lock()
            .map(|d| d.iter().filter(|(_, r)| r.at <= now).map(|(c, r)| (c.clone(), r.clone())).collect())
            .unwrap_or_default()
    }

    fn soon(&self, cluster: &ClusterName) {
        if let Ok(mut d) = self.due.lock()
            && let Some(r) = d.get_mut(cluster)
        {
            r.delay = RETRY_FIRST;
            r.at = Instant::now() + RETRY_FIRST;
        }
    }

    fn back_off(&self, cluster: &ClusterName, error: String) {
        if let Ok(mut d) = self.due.lock()
            && let Some(r) = d.get_mut(cluster)
        {
            r.delay = (r.delay * 2).min(RETRY_MAX);
            r.at = Instant::now() + r.delay;
            r.last_error = Some(error);
        }
    }
}

/// What an update did.
#[derive(Debug, Clone)]
pub struct Synced {
    pub name: String,
    pub region: RegionName,
    pub target: String,
    pub epoch: Epoch,
}

/// Why the name could not be updated now.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Between fencing and promotion: nothing to point at yet.
    #[error("the cluster names no primary now")]
    NoPrimary,
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Dns(#[from] pgdr_dns::DnsError),
}

impl SyncError {
    pub fn kind(&self) -> &'static str {
        match self {
            SyncError::NoPrimary => "no_primary",
            SyncError::Config(_) => "config",
            SyncError::Dns(e) => e.kind(),
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            SyncError::NoPrimary => true,
            SyncError::Config(_) => false,
            SyncError::Dns(e) => e.is_retryable(),
        }
    }
}

/// The TSIG key of `dns`, read now. Errors name the config file and key.
fn key(sh: &Shared, dns: &ClusterDns) -> Result<pgdr_dns::TsigKey, SyncError> {
    let secret = sh.config.dns_secret(dns).map_err(|e| SyncError::Config(e.to_string()))?;
    let algorithm = pgdr_dns::Algorithm::parse(&dns.tsig_algorithm)
        .ok_or_else(|| SyncError::Config(format!("unknown TSIG algorithm {}", dns.tsig_algorithm)))?;
    pgdr_dns::TsigKey::new(&dns.tsig_key, algorithm, secret.expose())
        .map_err(|e| SyncError::Config(format!("{}: key `{}.tsig_secret`: {e}", sh.config.file.display(), dns.key)))
}

/// Points `cluster`'s writer name at its current primary's region: one
/// signed update, no retry.
pub async fn sync(sh: &Shared, cluster: &Cluster) -> Result<Synced, SyncError> {
    let dns = cluster.dns.as_ref().ok_or_else(|| SyncError::Config("no [clusters.dns]".into()))?;
    let state = sh
        .clusters
        .state(&cluster.name)
        .await
        .map_err(|e| SyncError::Config(format!("cannot read the cluster's state: {e}")))?
        .ok_or(SyncError::NoPrimary)?;
    let primary = state.primary.as_ref().ok_or(SyncError::NoPrimary)?;
    let region = cluster
        .node(primary.as_str())
        .map(|n| n.region.clone())
        .ok_or_else(|| SyncError::Config(format!("the primary {primary} is not in the config")))?;
    let target = match dns.endpoint(region.as_str()) {
        Some(DnsTarget::Addresses(a)) => pgdr_dns::Target::Addresses(a.clone()),
        Some(DnsTarget::Alias(n)) => pgdr_dns::Target::Alias(n.clone()),
        None => {
            return Err(SyncError::Config(format!(
                "{}: key `{}.endpoints`: no endpoint for region {region}",
                sh.config.file.display(),
                dns.key
            )));
        }
    };
    let key = key(sh, dns)?;
    let record = pgdr_dns::WriterRecord {
        zone: dns.zone.clone(),
        name: dns.name.clone(),
        ttl: dns.ttl.as_secs().try_into().unwrap_or(u32::MAX),
        target,
    };
    pgdr_dns::replace(dns.server, &record, &key, dns.timeout).await?;
    Ok(Synced { name: dns.name.clone(), region, target: record.target.to_string(), epoch: state.epoch })
}

/// The `update_dns` step of failover, switchover and failback.
pub(crate) async fn step(c: Arc<Ctx>, sc: StepContext) -> Result<StepOutput, StepError> {
    let cluster = c.cluster()?;
    let Some(dns) = &cluster.dns else {
        return Ok(StepOutput::json(json!({"skipped": "no [clusters.dns] for this cluster"})));
    };
    if sc.output("restart_in_place").and_then(|v| v.get("restarted")).and_then(|v| v.as_bool()) == Some(true) {
        return Ok(StepOutput::json(json!({"skipped": "restarted in place"})));
    }
    let old_region = c.node(c.old_primary()?).map(|n| n.region.clone()).map_err(|_| fatal("no old primary"))?;
    let started = Instant::now();
    let mut attempts = 0;
    let result = loop {
        attempts += 1;
        let r = sync(&c.sh, cluster).await;
        match &r {
            Err(e) if e.is_retryable() && attempts < STEP_ATTEMPTS => {
                tokio::select! {
                    _ = sc.cancel.cancelled() => break r,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            _ => break r,
        }
    };
    let took_ms = started.elapsed().as_millis() as u64;
    let mut ev;
    let out = match result {
        Ok(s) => {
            c.sh.dns_pending.clear(&cluster.name);
            ev = c.sh.event(
                &cluster.name,
                "dns_updated",
                format!("{} points at {} (TTL {}s) for region {}", s.name, s.target, dns.ttl.as_secs(), s.region),
            );
            ev.epoch = Some(s.epoch);
            json!({"updated": true, "name": s.name, "region": s.region, "target": s.target,
                "region_changed": s.region != old_region, "ttl_s": dns.ttl.as_secs(), "server": dns.server.to_string(),
                "attempts": attempts, "took_ms": took_ms})
        }
        Err(e) => {
            let msg = e.to_string();
            tracing::error!(cluster = %cluster.name, name = %dns.name, "the writer name was not updated ({}); the role change stands, retrying in the background: {msg}", e.kind());
            c.sh.dns_pending.mark(&cluster.name, Some(msg.clone()));
            ev = c.sh.event(
                &cluster.name,
                "dns_update_failed",
                format!("{} not updated: {msg}; the role change stands; retrying in the background", dns.name),
            );
            json!({"updated": false, "name": dns.name, "error": msg, "error_kind": e.kind(),
                "retrying": "in the background until it succeeds", "attempts": attempts, "took_ms": took_ms})
        }
    };
    ev.workflow = Some(sc.workflow.as_str().to_owned());
    ev.kind = Some(sc.kind.clone());
    ev.step = Some("update_dns".into());
    c.sh.emit(ev).await;
    Ok(StepOutput::json(out))
}

async fn current_epoch(sh: &Shared, cluster: &ClusterName) -> Option<Epoch> {
    sh.clusters.state(cluster).await.ok().flatten().map(|s| s.epoch)
}

/// Syncs every cluster's writer name once at start, then retries the
/// names a step could not update, with backoff, until they succeed. It
/// runs beside role changes: each update names the primary of the moment,
/// and one the epoch overtook is sent again.
pub async fn run(ctl: Controller, cancel: CancellationToken) {
    let sh = ctl.sh.clone();
    for c in sh.config.clusters.iter().filter(|c| c.dns.is_some()) {
        sh.dns_pending.mark(&c.name, None);
        if let Ok(mut d) = sh.dns_pending.due.lock()
            && let Some(r) = d.get_mut(&c.name)
        {
            r.at = Instant::now();
        }
    }
    loop {
        for (name, retry) in sh.dns_pending.due_now() {
            let Some(cluster) = sh.cluster(name.as_str()) else {
                sh.dns_pending.clear(&name);
                continue;
            };
            match sync(&sh, cluster).await {
                // The primary moved while this update was on its way (a role
                // change's own step may have been overtaken): again, with the
                // primary the store names now.
                Ok(s) if current_epoch(&sh, &name).await != Some(s.epoch) => {
                    sh.dns_pending.soon(&name);
                }
                Ok(s) => {
                    sh.dns_pending.clear(&name);
                    let mut ev = sh.event(
                        &name,
                        "dns_updated",
                        format!("{} points at {} for region {}", s.name, s.target, s.region),
                    );
                    ev.epoch = Some(s.epoch);
                    if retry.last_error.is_some() {
                        sh.emit(ev).await;
                    } else {
                        tracing::info!(cluster = %name, "{}", ev.message.unwrap_or_default());
                    }
                }
                Err(SyncError::NoPrimary) => sh.dns_pending.back_off(&name, SyncError::NoPrimary.to_string()),
                Err(e) => {
                    let msg = e.to_string();
                    if retry.last_error.as_deref() != Some(msg.as_str()) {
                        tracing::error!(cluster = %name, "the writer name was not updated ({}): {msg}", e.kind());
                        sh.emit(sh.event(&name, "dns_update_failed", format!("not updated: {msg}; retrying"))).await;
                    } else {
                        tracing::warn!(cluster = %name, "the writer name is still not updated: {msg}");
                    }
                    sh.dns_pending.back_off(&name, msg);
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}
