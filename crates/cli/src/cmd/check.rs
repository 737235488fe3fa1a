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
    let r = rt.block_on(readiness::check(&cfg, args.cluster.as_deref()));
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
