//! `pgdr config check`.

use std::process::ExitCode;

use clap::Subcommand;

use super::Global;

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate the config: every problem with file, key, line and what was expected.
    Check {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(global: &Global, cmd: ConfigCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCmd::Check { json } => check(global, json),
    }
}

fn check(global: &Global, json: bool) -> anyhow::Result<ExitCode> {
    let path = global.config_path();
    match pgdr_config::Config::load(&path) {
        Ok(cfg) => {
            let nodes: usize = cfg.clusters.iter().map(|c| c.nodes.len()).sum();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "file": path.display().to_string(),
                        "valid": true,
                        "clusters": cfg.clusters.len(),
                        "nodes": nodes,
                        "regions": cfg.regions.len(),
                        "proxies": cfg.proxies.len(),
                    })
                );
            } else {
                println!(
                    "{}: ok ({} clusters, {} nodes, {} regions, {} proxies)",
                    path.display(),
                    cfg.clusters.len(),
                    nodes,
                    cfg.regions.len(),
                    cfg.proxies.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            if json {
                let problems: Vec<_> = err
                    .problems()
                    .iter()
                    .map(|p| serde_json::json!({"key": p.key, "line": p.line, "message": p.message}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"file": path.display().to_string(), "valid": false, "error": err.to_string(), "problems": problems})
                );
                Ok(ExitCode::from(2))
            } else {
                Err(err.into())
            }
        }
    }
}
