//! `pgdr runbook`: the cluster's run book as Markdown, from the config, the
//! topology now and the latest drill report.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cmd::Global;
use crate::exit::Usage;

#[derive(Debug, clap::Args)]
pub struct RunbookArgs {
    #[arg(long)]
    pub cluster: String,
    /// Where drill reports are (a report folder, or a folder of them);
    /// default: `drill-reports` beside the config.
    #[arg(long, value_name = "DIR")]
    pub reports: Option<PathBuf>,
}

pub fn run(global: &Global, args: RunbookArgs) -> anyhow::Result<ExitCode> {
    let cfg = global.load_config()?;
    let cluster = cfg
        .cluster(&args.cluster)
        .ok_or_else(|| Usage(format!("no cluster {} in {}", args.cluster, cfg.file.display())))?;
    let rt = tokio::runtime::Runtime::new()?;
    let topology = rt.block_on(async {
        let obs = super::drill::observer(&cfg, &args.cluster).await;
        obs.topology().await.ok()
    });
    let dir = args.reports.clone().unwrap_or_else(|| cfg.base_dir.join("drill-reports"));
    let latest = pgdr_drill::runbook::latest_report(&dir);
    let text =
        pgdr_drill::runbook::render(&cfg, cluster, topology.as_ref(), latest.as_ref().map(|(p, r)| (p.as_path(), r)));
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
