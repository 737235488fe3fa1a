//! `pgdr check`: readiness. Would a failover work right now? Exit 1 when a
//! finding is an error.

use std::process::ExitCode;

use pgdr_drill::readiness::{self, Severity};

use crate::cmd::Global;
use crate::exit::Usage;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Only this cluster.
    #[arg(long)]
    pub cluster: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(global: &Global, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let cfg = global.load_config()?;
    if let Some(c) = &args.cluster
        && cfg.cluster(c).is_none()
    {
        return Err(Usage(format!("no cluster {c} in {}", cfg.file.display())).into());
    }
    let rt = tokio::runtime::Runtime::new()?;
    let mut r = rt.block_on(readiness::check(&cfg, args.cluster.as_deref()));
    r.findings.extend(rt.block_on(immutable_destinations(&cfg, args.cluster.as_deref())));
    r.findings.extend(rt.block_on(pgdr_controller::rotation::findings(&cfg, args.cluster.as_deref())));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for f in &r.findings {
            let tag = match f.severity {
                Severity::Ok => "ok     ",
                Severity::Warning => "WARNING",
                Severity::Error => "ERROR  ",
            };
            let node = f.node.as_deref().map(|n| format!(" {n}")).unwrap_or_default();
            println!("{tag} {} {}{}: {}", f.cluster, f.check, node, f.message);
            if !f.fix.is_empty() {
                println!("        fix: {}", f.fix);
            }
        }
    }
    Ok(if r.has_errors() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Destinations marked immutable: does the store enforce it (S3 Object Lock
/// in COMPLIANCE mode for at least the tier's retention), or is it only pgdr
/// declining to delete?
async fn immutable_destinations(cfg: &pgdr_config::Config, only: Option<&str>) -> Vec<readiness::Finding> {
    use pgdr_backup::lock::{self, Enforcement};
    let mut out = Vec::new();
    for d in cfg.destinations.iter().filter(|d| d.immutable) {
        let users: Vec<&str> = cfg
            .clusters
            .iter()
            .filter(|c| only.is_none_or(|o| o == c.name.as_str()))
            .filter(|c| {
                cfg.tier(c.tier.as_str())
                    .and_then(|t| t.backup.as_ref())
                    .is_some_and(|b| b.destination == d.name || b.copies.contains(&d.name))
            })
            .map(|c| c.name.as_str())
            .collect();
        if only.is_some() && users.is_empty() {
            continue;
        }
        let cluster = if users.is_empty() { "-".to_owned() } else { users.join(",") };
        let days = lock::lock_days(cfg, &d.name);
        let (severity, message, fix) = match lock::enforcement(cfg, d).await {
            Enforcement::Enforced(how) => (
                Severity::Ok,
                format!("destination {} is immutable, enforced by the store: {how}", d.name),
                String::new(),
            ),
            Enforcement::NotEnforced(why) if d.url.starts_with("file://") => (
                Severity::Warning,
                format!("destination {} is marked immutable but nothing enforces it: {why}", d.name),
                "use an S3 bucket with Object Lock for copies that stolen credentials must not erase".to_owned(),
            ),
            Enforcement::NotEnforced(why) => (
                Severity::Error,
                format!(
                    "destination {} is marked immutable but its bucket does not enforce it ({why}): credentials that leak can delete its backups",
                    d.name
                ),
                format!(
                    "`pgdr backup lock --dest {}` (COMPLIANCE mode, {days} days) on a bucket created with Object Lock enabled",
                    d.name
                ),
            ),
            Enforcement::Unknown(why) => (
                Severity::Warning,
                format!("destination {} is marked immutable; whether the store enforces it is unknown: {why}", d.name),
                "check the bucket's retention settings by hand".to_owned(),
            ),
        };
        out.push(readiness::Finding { severity, cluster, check: "immutable".into(), node: None, message, fix });
    }
    out
}
