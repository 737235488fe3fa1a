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
            let math = pgdr_controller::math::Math::of(&cfg);
            let empty = cfg.empty_secrets();
            if !math.violations.is_empty() || !empty.is_empty() {
                let lines: Vec<String> = math
                    .violations
                    .iter()
                    .map(|(k, m)| format!("{}: key `{k}`: {m}", path.display()))
                    .chain(empty.iter().map(|e| e.to_string()))
                    .collect();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"file": path.display().to_string(), "valid": false, "error": lines.join("\n")})
                    );
                    return Ok(ExitCode::from(2));
                }
                return Err(crate::exit::Usage(lines.join("\n")).into());
            }
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
                        "failover_math": math,
                        "tls_warnings": cfg.tls_warnings(),
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
                print_math(&math);
                for w in cfg.tls_warnings() {
                    println!("warning: {w}");
                }
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

/// The derived failover timings (docs/failover-math.md).
fn print_math(math: &pgdr_controller::math::Math) {
    println!(
        "detection: {:.1}s when refused, {:.1}s when silent; blips up to {:.1}s never fail over; lease wait {:.1}s",
        math.detection_refused_seconds,
        math.detection_silent_seconds,
        math.tolerated_blip_seconds,
        math.lease_wait_seconds
    );
    println!("worst-case RTO per failure class (decision / with promote_timeout):");
    for c in &math.classes {
        println!("  {:<16} {:>6.1}s / {:>6.1}s  = {}", c.class, c.decision_seconds, c.worst_rto_seconds, c.formula);
    }
    for w in &math.warnings {
        println!("warning: {w}");
    }
}
