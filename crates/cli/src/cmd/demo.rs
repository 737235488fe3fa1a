//! `pgdr demo`: the project's main job on a fresh machine. A sandbox of two
//! regions, `pgdr run` (controller and proxies), a write workload, the
//! kill-primary, switchover and region-loss drills, a summary table, the
//! report in a folder it names, and everything torn down (`--keep` leaves it
//! running and says how to look around and how to stop it).
//!
//! When this build has no controller (`pgdr run` missing or not answering),
//! the demo says so and runs only what needs none (replica-loss): it never
//! prints numbers it did not measure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use pgdr_config::Config;
use pgdr_drill::controller_observer::ControllerObserver;
use pgdr_drill::scenario::Scenario;

use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Leave the topology running and print how to reach and stop it.
    #[arg(long)]
    pub keep: bool,
    /// Folder for the sandbox (default: a new folder under /tmp).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Folder for the report (default: DIR/report).
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
}

struct Say {
    t0: Instant,
}

impl Say {
    fn line(&self, s: &str) {
        let e = self.t0.elapsed().as_secs();
        eprintln!("[{:02}:{:02}] {s}", e / 60, e % 60);
    }
}

fn pgdr(exe: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running pgdr {}", args.join(" ")))
}

pub fn run(_global: &Global, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let say = Say { t0: Instant::now() };
    let exe = std::env::current_exe().context("locating the pgdr binary")?;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => tempfile::Builder::new().prefix("pgdr-demo-").tempdir_in("/tmp")?.keep(),
    };
    std::fs::create_dir_all(&dir)?;
    // PostgreSQL runs as its own user when we are root: let it in.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let sandbox = dir.join("sandbox");
    let sb = sandbox.display().to_string();

    say.line(&format!("sandbox: two regions (east: primary + replica, west: standby) in {sb}"));
    let out = pgdr(&exe, &["sandbox", "up", "--dir", &sb])?;
    if !out.status.success() {
        anyhow::bail!("pgdr sandbox up failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let config_path = sandbox.join("pgdr.toml");
    let cfg = Config::load(&config_path)?;
    let cluster = cfg.clusters.first().map(|c| c.name.to_string()).context("the sandbox config has no cluster")?;

    let result = demo_body(&say, &exe, &cfg, &cluster, &dir, &config_path, &args);
    let (mut run_child, outcome) = match result {
        Ok((child, code)) => (child, Ok(code)),
        Err(e) => (None, Err(e)),
    };
    if args.keep && outcome.is_ok() {
        say.line("left running (--keep):");
        eprintln!("  status page:  http://{}/", cfg.controller.listen);
        for p in cfg.proxies_of(&cluster) {
            eprintln!(
                "  {} proxy:  writer {}{}",
                p.region,
                p.writer,
                p.reader.map(|r| format!(", reader {r}")).unwrap_or_default()
            );
        }
        eprintln!("  pgdr status:  pgdr status --config {}", config_path.display());
        let stop_run = run_child.as_ref().map(|c| format!("kill {} && ", c.id())).unwrap_or_default();
        eprintln!("  stop it:      {stop_run}pgdr sandbox down --dir {sb}");
        if let Some(c) = run_child.take() {
            std::mem::forget(c);
        }
    } else {
        say.line("tearing down");
        if let Some(mut c) = run_child.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let out = pgdr(&exe, &["sandbox", "down", "--dir", &sb])?;
        if !out.status.success() {
            eprintln!("pgdr sandbox down: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    outcome
}

fn demo_body(
    say: &Say,
    exe: &Path,
    cfg: &Config,
    cluster: &str,
    dir: &Path,
    config_path: &Path,
    args: &DemoArgs,
) -> anyhow::Result<(Option<Child>, ExitCode)> {
    say.line("controller and proxies: pgdr run");
    let log_path = dir.join("pgdr-run.log");
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn();
    let rt = tokio::runtime::Runtime::new()?;
    let mut run_child = child.ok();
    let mut controller = false;
    if let Some(c) = run_child.as_mut() {
        let token = cfg.controller.token.as_ref().and_then(|t| t.resolve().ok());
        let obs = ControllerObserver::new(&cfg.controller.listen.to_string(), token, cluster)?;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if matches!(c.try_wait(), Ok(Some(_))) {
                break;
            }
            if rt.block_on(obs.reachable()) {
                controller = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let scenarios: Vec<Scenario> = if controller {
        vec![Scenario::KillPrimary, Scenario::Switchover, Scenario::RegionLoss]
    } else {
        say.line(&format!(
            "NOTE: no controller answered at {} (see {}): this build cannot fail over or switch over yet, so the \
             kill-primary, switchover and region-loss drills are skipped; running replica-loss, which needs no controller",
            cfg.controller.listen,
            log_path.display()
        ));
        if let Some(mut c) = run_child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        vec![Scenario::ReplicaLoss]
    };
    say.line(&format!(
        "drills: {} (a write workload through the writer endpoint during each)",
        scenarios.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    ));
    let report = rt.block_on(super::drill::run_scenarios(
        cfg,
        cluster,
        &scenarios,
        |s| {
            s.runs = 1;
            s.warmup = Duration::from_secs(2);
            s.settle = Duration::from_secs(2);
            s.recovery_timeout = Duration::from_secs(40);
            s.restore_timeout = Duration::from_secs(60);
        },
        &|l: &str| say.line(l),
    ))?;
    let report_dir = args.report.clone().unwrap_or_else(|| dir.join("report"));
    report.write(&report_dir)?;
    println!();
    print!("{}", super::drill::summary_table(&report));
    if !controller {
        println!("(kill-primary, switchover and region-loss need the controller: not run)");
    }
    println!("report: {}/report.html (also report.md, report.json)", report_dir.display());
    Ok((run_child, if report.passed { ExitCode::SUCCESS } else { ExitCode::from(1) }))
}
