//! `pgdr demo`: the project's main job on a fresh machine. A sandbox of two
//! regions (east: primary and replica; west: two standbys, so that a lost
//! east can be fenced by lease), `pgdr run` (controller and proxies) as a
//! child process, a write workload through the proxy, the kill-primary
//! (with `on_crash = "failover"`), switchover and region-loss drills, a
//! summary table, the report in a folder it names, and everything torn down
//! (`--keep` leaves it running and says how to look around and how to stop
//! it). It never prints a number it did not measure: a drill that could not
//! run is shown as failed, with why.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use pgdr_config::Config;
use pgdr_drill::controller_observer::ControllerObserver;
use pgdr_drill::report::Report;
use pgdr_drill::scenario::Scenario;

use crate::cmd::Global;

/// The drills the demo runs, in order.
pub const DEMO_SCENARIOS: [Scenario; 3] = [Scenario::KillPrimary, Scenario::Switchover, Scenario::RegionLoss];

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Leave the topology running and print how to reach and stop it.
    #[arg(long)]
    pub keep: bool,
    /// Folder for the sandbox, logs and report (default: a new folder under /tmp).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Folder for the report (default: DIR/report).
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Progress: a spinner with the current step in a terminal, plain
/// timestamped lines otherwise (CI logs, pipes).
struct Progress {
    t0: Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new() -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Progress { t0: Instant::now(), bar }
    }

    fn line(&self, s: &str) {
        let e = self.t0.elapsed().as_secs();
        let text = format!("[{:02}:{:02}] {s}", e / 60, e % 60);
        match &self.bar {
            Some(b) => {
                b.println(&text);
                b.set_message(s.to_owned());
            }
            None => eprintln!("{text}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn pgdr(exe: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running pgdr {}", args.join(" ")))
}

/// Stops `pgdr run`: SIGTERM, then SIGKILL after 10 s.
fn stop_child(mut c: Child) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.kill();
    let _ = c.wait();
}

pub fn run(_global: &Global, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let progress = Progress::new();
    let exe = std::env::current_exe().context("locating the pgdr binary")?;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => tempfile::Builder::new().prefix("pgdr-demo-").tempdir_in("/tmp")?.keep(),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    // PostgreSQL runs as its own user when we are root: let it in.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let sandbox = dir.join("sandbox");
    let sb = sandbox.display().to_string();

    progress
        .line(&format!("sandbox: regions east (primary + replica) and west (2 standbys), real PostgreSQL, in {sb}"));
    let out = pgdr(
        &exe,
        &[
            "sandbox",
            "up",
            "--dir",
            &sb,
            "--regions",
            "east,west",
            "--standbys-per-region",
            "2",
            "--on-crash",
            "failover",
        ],
    )?;
    if !out.status.success() {
        progress.finish();
        anyhow::bail!("pgdr sandbox up failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let config_path = sandbox.join("pgdr.toml");
    let outcome = Config::load(&config_path)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| {
            let cluster =
                cfg.clusters.first().map(|c| c.name.to_string()).context("the sandbox config has no cluster")?;
            Ok((cfg, cluster))
        })
        .map(|(cfg, cluster)| {
            let mut run_child = None;
            let res = demo_body(&progress, &exe, &cfg, &cluster, &dir, &config_path, &args, &mut run_child);
            (cfg, cluster, run_child, res)
        });
    let (cfg, cluster, run_child, result) = match outcome {
        Ok(x) => x,
        Err(e) => {
            let _ = pgdr(&exe, &["sandbox", "down", "--dir", &sb]);
            progress.finish();
            return Err(e);
        }
    };
    if args.keep && result.is_ok() {
        progress.line("left running (--keep)");
        progress.finish();
        eprintln!("  status page:   {}://{}/", if cfg.tls.is_some() { "https" } else { "http" }, cfg.controller.listen);
        for p in cfg.proxies_of(&cluster) {
            // The sandbox's proxies take only TLS clients (require_tls).
            let tls = match (&cfg.tls, &p.tls) {
                (Some(t), Some(_)) => format!(" sslmode=verify-full sslrootcert={}", t.ca.display()),
                _ => String::new(),
            };
            eprintln!(
                "  {:<5} proxy:   writer {}{}   (psql \"host={} port={} user=postgres dbname=postgres{tls}\", password in {})",
                p.region.as_str(),
                p.writer,
                p.reader.map(|r| format!(", reader {r}")).unwrap_or_default(),
                p.writer.ip(),
                p.writer.port(),
                sandbox.join("secrets/postgres.password").display()
            );
        }
        eprintln!("  status:        {} status --config {}", exe.display(), config_path.display());
        let stop_run = run_child.as_ref().map(|c| format!("kill {} && ", c.id())).unwrap_or_default();
        eprintln!("  stop it:       {stop_run}{} sandbox down --dir {sb}", exe.display());
        // The controller keeps running after we exit.
        std::mem::forget(run_child);
    } else {
        progress.line("tearing down (pgdr run, then the sandbox)");
        if let Some(c) = run_child {
            stop_child(c);
        }
        match pgdr(&exe, &["sandbox", "down", "--dir", &sb]) {
            Ok(out) if out.status.success() => {
                // Keep the logs next to the report; the data (hundreds of MB of WAL) goes.
                let _ = std::fs::rename(sandbox.join("logs"), dir.join("logs"));
                let _ = pgdr(&exe, &["sandbox", "down", "--dir", &sb, "--purge"]);
            }
            Ok(out) => eprintln!("pgdr sandbox down: {}", String::from_utf8_lossy(&out.stderr).trim()),
            Err(e) => eprintln!("pgdr sandbox down: {e:#}"),
        }
        progress.finish();
    }
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.0)?);
    } else {
        println!();
        print!("{}", summary(&report.0));
        println!("report: {}/report.html (also report.md, report.json)", report.1.display());
    }
    Ok(if report.0.passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[allow(clippy::too_many_arguments)]
fn demo_body(
    progress: &Progress,
    exe: &Path,
    cfg: &Config,
    cluster: &str,
    dir: &Path,
    config_path: &Path,
    args: &DemoArgs,
    run_child: &mut Option<Child>,
) -> anyhow::Result<(Report, PathBuf)> {
    progress.line(&format!("controller and proxies: pgdr run (log: {})", dir.join("pgdr-run.log").display()));
    let log_path = dir.join("pgdr-run.log");
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting pgdr run")?;
    let c = run_child.insert(child);
    let rt = tokio::runtime::Runtime::new()?;
    let token = cfg.controller_client_token(pgdr_config::Access::Operator)?;
    let obs = ControllerObserver::new(&cfg.controller_addrs(), token, &crate::tls::http(cfg)?, cluster)?;
    let t = Instant::now();
    loop {
        if let Ok(Some(status)) = c.try_wait() {
            anyhow::bail!("pgdr run exited ({status}); see {}", log_path.display());
        }
        if rt.block_on(obs.reachable()) {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            anyhow::bail!(
                "the controller did not answer at {} within 30 s; see {}",
                cfg.controller.listen,
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    progress.line(&format!(
        "drills: {} (4 writers and a reader through the east proxy during each)",
        DEMO_SCENARIOS.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    ));
    let say = |l: &str| progress.line(l);
    let drills = super::drill::run_scenarios(
        cfg,
        cluster,
        &DEMO_SCENARIOS,
        |s| {
            s.runs = 1;
            s.warmup = Duration::from_secs(3);
            s.settle = Duration::from_secs(3);
            s.recovery_timeout = Duration::from_secs(60);
            s.restore_timeout = Duration::from_secs(60);
        },
        &say,
    );
    let report = rt.block_on(async {
        tokio::select! {
            r = drills => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    })?;
    let report_dir = args.report.clone().unwrap_or_else(|| dir.join("report"));
    report.write(&report_dir).with_context(|| format!("writing the report to {}", report_dir.display()))?;
    Ok((report, report_dir))
}

fn secs(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.2} s"))
}

/// The table the demo prints: one line per scenario.
pub fn summary(r: &Report) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "scenario",
        "RTO",
        "detection",
        "client errors",
        "acknowledged commits",
        "lost commits",
        "recovery",
        "result",
    ]);
    for d in &r.drills {
        let run = d.runs.first();
        t.add_row([
            d.scenario.clone(),
            match d.rto_seconds {
                Some(s) if s.n > 1 => format!("{:.2} s (median)", s.median),
                Some(s) => format!("{:.2} s", s.median),
                None if d.runs.is_empty() => "did not run".into(),
                None => "writes did not come back".into(),
            },
            match d.detection_seconds {
                Some(s) => secs(Some(s.median)),
                None if d.scenario.parse::<Scenario>().is_ok_and(|s| s.planned()) => "planned".into(),
                None => "–".into(),
            },
            d.client_errors.map_or("–".into(), |s| format!("{}", s.median)),
            d.acknowledged_commits_total.to_string(),
            d.lost_commits_total.to_string(),
            run.and_then(|r| {
                r.recovery_path.clone().or_else(|| match (&r.old_primary, &r.new_primary) {
                    (Some(a), Some(b)) => Some(format!("{a} → {b}")),
                    _ => None,
                })
            })
            .unwrap_or_default(),
            if d.passed { "passed".into() } else { "FAILED".into() },
        ]);
    }
    let mut s = format!("{t}\n");
    for d in &r.drills {
        for f in &d.failed_runs {
            s.push_str(&format!("{}: {f}\n", d.scenario));
        }
    }
    s.push_str(&format!(
        "objectives (tier {}): RTO {:.0} s, RPO {:.0} s → {}\n",
        r.tier,
        r.rto_objective_seconds,
        r.rpo_objective_seconds,
        if r.passed { "PASSED" } else { "FAILED" }
    ));
    s
}
