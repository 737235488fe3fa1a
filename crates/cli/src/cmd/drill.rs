//! `pgdr drill`: inject a real fault into a topology under a write workload
//! and report RTO, detection, client errors and lost acknowledged commits.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use pgdr_config::Config;
use pgdr_drill::controller_observer::ControllerObserver;
use pgdr_drill::hosts::LocalHosts;
use pgdr_drill::observer::{DrillObserver, SqlObserver};
use pgdr_drill::report::Report;
use pgdr_drill::run::{Drill, DrillSpec};
use pgdr_drill::scenario::Scenario;

use crate::cmd::Global;
use crate::exit::Usage;

#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// The cluster to drill.
    #[arg(long)]
    pub cluster: String,
    /// kill-primary, host-loss, freeze-primary, region-loss, region-partition, replica-loss, switchover, failback.
    #[arg(long)]
    pub scenario: String,
    /// Runs (min / median / max over them).
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
    /// Folder for report.json, report.md and report.html.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Allow faults on a topology that is not a sandbox.
    #[arg(long)]
    pub live: bool,
    /// Do not ask for confirmation (with --live).
    #[arg(long)]
    pub yes: bool,
    /// Workload before the fault.
    #[arg(long, default_value = "3s", value_parser = pgdr_model::parse_duration)]
    pub warmup: Duration,
    /// Workload after writes are back.
    #[arg(long, default_value = "3s", value_parser = pgdr_model::parse_duration)]
    pub settle: Duration,
}

/// Picks the controller's API when it answers, else SQL on the nodes.
pub async fn observer(cfg: &Config, cluster: &str) -> Box<dyn DrillObserver> {
    let token = cfg.controller_client_token(pgdr_config::Access::Operator).ok().flatten();
    // A bad [tls] section fails in the plain client's call: SQL observes then.
    let tls = crate::tls::http(cfg).unwrap_or_default();
    if let Ok(c) = ControllerObserver::new(&cfg.controller_addrs(), token, &tls, cluster)
        && c.reachable().await
    {
        return Box::new(c);
    }
    let cl = cfg.cluster(cluster).cloned();
    Box::new(SqlObserver::new(cl.unwrap_or_else(|| cfg.clusters[0].clone()), cfg.tls.clone()))
}

/// Confirms a drill on a topology that is not a sandbox.
pub fn confirm_live(cfg: &Config, cluster: &str, live: bool, yes: bool) -> anyhow::Result<()> {
    if cfg.sandbox.is_some() {
        return Ok(());
    }
    if !live {
        return Err(Usage(format!(
            "{} is not a sandbox: injecting faults into cluster {cluster} needs --live (and confirmation or --yes)",
            cfg.file.display()
        ))
        .into());
    }
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Usage("--live without a terminal to confirm on needs --yes".into()).into());
    }
    eprint!("This injects a real fault into cluster {cluster}. Type the cluster name to go on: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() != cluster {
        return Err(Usage("not confirmed".into()).into());
    }
    Ok(())
}

/// Runs scenarios and builds the report (shared with `pgdr demo`).
pub async fn run_scenarios(
    cfg: &Config,
    cluster: &str,
    scenarios: &[Scenario],
    configure: impl Fn(&mut DrillSpec),
    progress: &(dyn Fn(&str) + Send + Sync),
) -> anyhow::Result<Report> {
    let cl = cfg.cluster(cluster).with_context(|| Usage(format!("no cluster {cluster} in {}", cfg.file.display())))?;
    let tier = cfg.tier(cl.tier.as_str()).with_context(|| format!("tier {} is not defined", cl.tier))?;
    let obs = observer(cfg, cluster).await;
    let pgdr = std::env::current_exe().context("locating the pgdr binary")?;
    let hosts = LocalHosts::new(cfg, pgdr);
    progress(&format!("observing through {}", obs.describe()));
    let drill = Drill { config: cfg, cluster: cl, tier, observer: obs.as_ref(), hosts: &hosts, progress: &progress };
    let mut drills = Vec::new();
    for s in scenarios {
        let mut spec = DrillSpec::new(*s, tier);
        configure(&mut spec);
        drills.push(drill.run(&spec).await);
    }
    let passed = drills.iter().all(|d| d.passed);
    Ok(Report {
        generated_at: pgdr_drill::rfc3339(pgdr_drill::unix_ms(std::time::SystemTime::now())),
        pgdr_version: env!("CARGO_PKG_VERSION").to_owned(),
        cluster: cluster.to_owned(),
        tier: tier.name.to_string(),
        rto_objective_seconds: tier.rto.as_secs_f64(),
        rpo_objective_seconds: tier.rpo.as_secs_f64(),
        observer: obs.describe(),
        wan_delay_ms: cfg.sandbox.as_ref().and_then(|s| s.wan_delay).map(|d| d.as_millis() as u64),
        rto_definition: pgdr_drill::checker::RTO_DEFINITION.to_owned(),
        drills,
        passed,
    })
}

pub fn run(global: &Global, args: DrillArgs) -> anyhow::Result<ExitCode> {
    let cfg = global.load_config()?;
    let scenario: Scenario = args.scenario.parse().map_err(Usage)?;
    if cfg.cluster(&args.cluster).is_none() {
        return Err(Usage(format!("no cluster {} in {}", args.cluster, cfg.file.display())).into());
    }
    if args.runs == 0 {
        return Err(Usage("--runs must be at least 1".into()).into());
    }
    confirm_live(&cfg, &args.cluster, args.live, args.yes)?;
    let rt = tokio::runtime::Runtime::new()?;
    let json = args.json;
    let scenarios = [scenario];
    let say = |line: &str| {
        if !json {
            eprintln!("{line}");
        }
    };
    let drill = run_scenarios(
        &cfg,
        &args.cluster,
        &scenarios,
        |s| {
            s.runs = args.runs;
            s.warmup = args.warmup;
            s.settle = args.settle;
        },
        &say,
    );
    // Ctrl-C drops the drill, whose fault guard continues frozen servers
    // and heals partitions before the process exits.
    let report = rt.block_on(async {
        tokio::select! {
            r = drill => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted: the fault was undone where it could be")),
        }
    })?;
    if let Some(dir) = &args.report {
        let files = report.write(dir)?;
        if !json {
            for f in files {
                eprintln!("wrote {}", f.display());
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary_table(&report));
    }
    Ok(if report.passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The one-line-per-scenario table people read.
pub fn summary_table(r: &Report) -> String {
    let mut s = format!(
        "{:<18} {:>5} {:>22} {:>11} {:>8} {:>9} {:>6} {:>7}\n",
        "scenario", "runs", "RTO min/median/max", "detection", "errors", "acked", "lost", "result"
    );
    for d in &r.drills {
        let rto =
            d.rto_seconds.map_or("did not recover".into(), |x| format!("{:.2}/{:.2}/{:.2} s", x.min, x.median, x.max));
        let det = d.detection_seconds.map_or("–".into(), |x| format!("{:.2} s", x.median));
        let err = d.client_errors.map_or("–".into(), |x| format!("{}", x.median));
        s.push_str(&format!(
            "{:<18} {:>5} {:>22} {:>11} {:>8} {:>9} {:>6} {:>7}\n",
            d.scenario,
            d.runs.len(),
            rto,
            det,
            err,
            d.acknowledged_commits_total,
            d.lost_commits_total,
            if d.passed { "passed" } else { "FAILED" }
        ));
        for f in &d.failed_runs {
            s.push_str(&format!("  {f}\n"));
        }
    }
    s.push_str(&format!(
        "objectives (tier {}): RTO {:.1} s, RPO {:.1} s → {}\n",
        r.tier,
        r.rto_objective_seconds,
        r.rpo_objective_seconds,
        if r.passed { "PASSED" } else { "FAILED" }
    ));
    s
}
