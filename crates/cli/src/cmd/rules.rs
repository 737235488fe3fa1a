//! `pgdr rules`, `pgdr freeze`, `pgdr unfreeze`: the safety rules every
//! role change is checked against, and the freeze switches that keep the
//! controller from changing roles on its own during maintenance (an
//! operator's `pgdr switchover` or `pgdr failover` still runs).

use std::process::ExitCode;

use clap::Args;
use pgdr_api::controller::{FreezeRequest, FreezeView, RulesView};

use super::Global;
use super::ops::{api_err, client_for, runtime};
use crate::exit::Usage;

#[derive(Debug, Args)]
pub struct RulesArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FreezeArgs {
    /// The cluster to freeze (or unfreeze).
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    pub cluster: Option<String>,
    /// The global switch: every cluster.
    #[arg(long)]
    pub all: bool,
    /// Why (journalled with the token's name and the time).
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// `pgdr rules`.
pub fn rules(global: &Global, args: RulesArgs) -> anyhow::Result<ExitCode> {
    let cfg = global.load_config()?;
    let client = client_for(&cfg, pgdr_config::Access::Viewer)?;
    runtime()?.block_on(async move {
        let v = client.rules().await.map_err(api_err)?;
        print(&v, args.json)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `pgdr freeze` (`on`) and `pgdr unfreeze`.
pub fn freeze(global: &Global, args: FreezeArgs, on: bool) -> anyhow::Result<ExitCode> {
    if !on && args.reason.is_some() {
        return Err(Usage("--reason is for pgdr freeze".into()).into());
    }
    let cfg = global.load_config()?;
    let client = client_for(&cfg, pgdr_config::Access::Operator)?;
    let req = FreezeRequest { cluster: args.cluster.clone(), reason: args.reason.clone() };
    runtime()?.block_on(async move {
        // The controller records the token's name as who froze it.
        let v = if on { client.freeze(&req).await } else { client.unfreeze(&req).await }.map_err(api_err)?;
        print(&v, args.json)?;
        Ok(ExitCode::SUCCESS)
    })
}

fn frozen(f: &Option<FreezeView>) -> String {
    match f {
        None => "no".into(),
        Some(f) => format!(
            "FROZEN{} by {} at {}{}",
            if f.global { " (every cluster)" } else { "" },
            f.by,
            f.at,
            f.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
        ),
    }
}

fn print(v: &RulesView, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!("rules (checked on every role change and route):");
    for r in &v.rules {
        println!("  {:<22} {}", r.name, r.description);
    }
    println!("global freeze: {}", frozen(&v.global_freeze));
    println!("{:<16} frozen", "cluster");
    for c in &v.clusters {
        println!("{:<16} {}", c.cluster.as_str(), frozen(&c.frozen));
    }
    Ok(())
}
