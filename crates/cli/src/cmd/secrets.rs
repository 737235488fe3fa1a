//! `pgdr secrets rotate|status|verify|show`: managed database credentials
//! (docs/secrets.md). `rotate` asks the controller to run the
//! `rotate-secrets` workflow (an operator token) and follows it to its end:
//! the controller holds the cluster's lock for it, journals every step,
//! resumes it after a restart and lets a failover preempt it. There is no
//! way around the controller: a rotation without the lock could race a
//! switchover, so with the controller down `rotate` exits 1 and changes
//! nothing.
//!
//! Exit codes: 0 every store written and logging in; 1 a store, a standby,
//! the database or the controller failed, or a failover preempted the
//! rotation (the report says which; the controller reruns a preempted one);
//! 2 bad usage or config. No password is ever printed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use pgdr_api::controller::{ControllerClient, RotateRequest, WorkflowView};
use pgdr_config::Config;
use pgdr_secrets::rotate::{Report, RoleReport, StoreReport};

use super::Global;
use crate::exit::Usage;

/// The longest `rotate` follows a workflow (each standby's replay is
/// bounded by 30 s, each store's writes by their retries).
const FOLLOW_LIMIT: Duration = Duration::from_secs(600);
/// How long `rotate` keeps following through a controller that does not
/// answer (restarting: the workflow resumes from its journal).
const UNREACHABLE_LIMIT: Duration = Duration::from_secs(90);

#[derive(Debug, Subcommand)]
pub enum SecretsCmd {
    /// Rotate the managed roles' passwords: the controller's rotate-secrets workflow, followed to its end.
    Rotate(RotateArgs),
    /// What every region's store holds (version, login, age; never the password).
    Status(SecretsArgs),
    /// Log in with every region's stored secret through the endpoint it names; exit 1 if one fails.
    Verify(SecretsArgs),
    /// Which login is current, when it was rotated, each region's store, the last and next rotation (never the password).
    Show(SecretsArgs),
}

#[derive(Debug, Args)]
pub struct SecretsArgs {
    #[arg(long)]
    pub cluster: String,
    /// One managed role (default: all of the cluster's).
    #[arg(long)]
    pub role: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub common: SecretsArgs,
    /// Show the steps and what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(global: &Global, cmd: SecretsCmd) -> anyhow::Result<ExitCode> {
    let cfg = global.load_config()?;
    let (args, what) = match &cmd {
        SecretsCmd::Rotate(a) => (&a.common, "rotate"),
        SecretsCmd::Status(a) => (a, "status"),
        SecretsCmd::Verify(a) => (a, "verify"),
        SecretsCmd::Show(a) => (a, "show"),
    };
    pgdr_secrets::rotate::managed(&cfg, &args.cluster, args.role.as_deref()).map_err(|e| Usage(e.to_string()))?;
    init_logs();
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    match &cmd {
        SecretsCmd::Rotate(a) => rt.block_on(rotate(&cfg, a)),
        SecretsCmd::Show(a) => rt.block_on(show(&cfg, a)),
        _ => {
            let report =
                rt.block_on(pgdr_secrets::rotate::status(&cfg, &args.cluster, args.role.as_deref(), what == "verify"))?;
            print(&cfg, &report, what, args.json)?;
            Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

async fn rotate(cfg: &Config, a: &RotateArgs) -> anyhow::Result<ExitCode> {
    let args = &a.common;
    let client = super::ops::client_for(cfg, pgdr_config::Access::Operator)?.with_timeout(Duration::from_secs(30));
    let req = RotateRequest { role: args.role.clone(), dry_run: a.dry_run, requested_by: None };
    let id = match client.rotate_secrets(&args.cluster, &req).await {
        Ok(started) if started.dry_run => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&started)?);
            } else {
                println!("rotate-secrets on cluster {} (dry run, nothing changes):", args.cluster);
                for l in &started.plan {
                    println!("  {l}");
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Ok(started) => started.id.context("the controller started no workflow")?,
        Err(e) if e.is_unreachable() => {
            eprintln!(
                "error: the controller at {} did not answer ({e}): rotations run in the controller, which holds the cluster's lock for them; nothing changed",
                client.addr()
            );
            return Ok(ExitCode::from(1));
        }
        Err(e) => match running_rotation(&client, &args.cluster).await {
            // Already rotating (a schedule, a rerun, another operator): follow that one.
            Some(id) => {
                eprintln!("a rotation is already running on cluster {}: following workflow {id}", args.cluster);
                id
            }
            None => {
                let msg = if e.to_string().contains("busy") {
                    format!("a workflow is running on cluster {}: rotate once it ends ({e})", args.cluster)
                } else {
                    e.to_string()
                };
                if args.json {
                    println!("{}", serde_json::json!({"error": msg}));
                }
                eprintln!("error: {msg}");
                return Ok(ExitCode::from(1));
            }
        },
    };
    if !args.json {
        eprintln!("rotate-secrets workflow {id} started on cluster {}", args.cluster);
    }
    let view = follow(&client, &id).await?;
    let report = report_of(&args.cluster, &view);
    if args.json {
        // The report as `status` and earlier versions print it, with the workflow.
        let mut v = serde_json::to_value(&report)?;
        v["workflow"] = serde_json::json!(view.id);
        v["state"] = serde_json::json!(view.state);
        v["error"] = serde_json::json!(view.error);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print(cfg, &report, "rotate", false)?;
        match view.state.as_str() {
            "succeeded" => {}
            "cancelled" => eprintln!(
                "error: workflow {} was cancelled (a failover preempts a rotation): every store keeps a login that logs in, and the controller rotates again once the cluster is free (pgdr secrets show)",
                view.id
            ),
            s => eprintln!("error: workflow {} {s}: {}", view.id, view.error.clone().unwrap_or_default()),
        }
    }
    Ok(if view.state == "succeeded" && report.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn running_rotation(client: &ControllerClient, cluster: &str) -> Option<String> {
    let list = client.workflows().await.ok()?;
    list.into_iter()
        .filter(|w| w.kind == "rotate-secrets" && w.cluster.as_str() == cluster)
        .filter(|w| !matches!(w.state.as_str(), "succeeded" | "failed" | "cancelled"))
        .map(|w| w.id)
        .max()
}

/// Polls the workflow until it ends, through a controller restart.
async fn follow(client: &ControllerClient, id: &str) -> anyhow::Result<WorkflowView> {
    let started = tokio::time::Instant::now();
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    loop {
        match client.workflow(id).await {
            Ok(v) if matches!(v.state.as_str(), "succeeded" | "failed" | "cancelled") => return Ok(v),
            Ok(_) => unreachable_since = None,
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > UNREACHABLE_LIMIT {
                    anyhow::bail!(
                        "the controller at {} stopped answering ({e}); workflow {id} resumes when it is back: pgdr secrets show",
                        client.addr()
                    );
                }
            }
        }
        if started.elapsed() > FOLLOW_LIMIT {
            anyhow::bail!("workflow {id} still running after {}s: pgdr workflow show {id}", FOLLOW_LIMIT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The rotation's report, from its journalled step outputs.
fn report_of(cluster: &str, v: &WorkflowView) -> Report {
    let roles: Vec<RoleReport> = v
        .steps
        .iter()
        .filter(|s| s.name.starts_with("rotate_"))
        .map(|s| {
            s.output
                .as_ref()
                .and_then(|o| o.get("report"))
                .and_then(|r| serde_json::from_value::<RoleReport>(r.clone()).ok())
                .unwrap_or_else(|| RoleReport {
                    role: s.name.trim_start_matches("rotate_").to_owned(),
                    error: Some(match (&s.error, s.state.as_str()) {
                        (Some(e), _) => e.clone(),
                        (None, st) => format!("step {st}"),
                    }),
                    ..Default::default()
                })
        })
        .collect();
    let ok = v.state == "succeeded" && roles.iter().all(|r| r.ok);
    Report { cluster: cluster.to_owned(), roles, ok }
}

async fn show(cfg: &Config, args: &SecretsArgs) -> anyhow::Result<ExitCode> {
    let report = pgdr_secrets::rotate::status(cfg, &args.cluster, args.role.as_deref(), false).await?;
    let client = super::ops::client_for(cfg, pgdr_config::Access::Viewer)?.with_timeout(Duration::from_secs(5));
    let ctl = client.secrets(&args.cluster).await;
    let now = chrono::Utc::now();
    let at = |age: Option<u64>| {
        age.map(|a| (now - chrono::Duration::seconds(a as i64)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    };
    if args.json {
        let roles: Vec<serde_json::Value> = report
            .roles
            .iter()
            .map(|r| {
                let newest = r.stores.iter().filter(|s| s.version == r.version).find(|s| s.login.is_some());
                serde_json::json!({
                    "role": r.role,
                    "strategy": r.strategy,
                    "current_login": newest.and_then(|s| s.login.clone()),
                    "version": r.version,
                    "rotated_at": newest.and_then(|s| at(s.age_seconds)),
                    "stores": r.stores.iter().map(|s| serde_json::json!({
                        "region": s.region, "store": s.store, "version": s.version, "login": s.login,
                        "endpoint": s.via, "rotated_at": at(s.age_seconds), "too_old": s.too_old,
                        "behind": s.version.is_some() && s.version < r.version, "error": s.error, "skipped": s.skipped,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let c = match &ctl {
            Ok(v) => serde_json::to_value(v)?,
            Err(e) => serde_json::json!({"error": e.to_string()}),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"cluster": args.cluster, "roles": roles, "controller": c})
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    for r in &report.roles {
        let newest = r.stores.iter().filter(|s| s.version == r.version).find(|s| s.login.is_some());
        println!(
            "cluster {}  role {} ({})  current login {}  version {}  rotated {}",
            args.cluster,
            r.role,
            r.strategy,
            newest.and_then(|s| s.login.clone()).unwrap_or_else(|| "-".into()),
            r.version.map_or_else(|| "-".into(), |v| v.to_string()),
            newest.and_then(|s| at(s.age_seconds)).unwrap_or_else(|| "never".into()),
        );
        let t = stores_table(r, ("rotated at", &|s: &StoreReport| at(s.age_seconds)), |s| {
            if let Some(e) = &s.error {
                e.clone()
            } else if s.version < r.version {
                "behind: brought up to date by the next rotation or rejoin".into()
            } else if s.too_old {
                "older than max_age".into()
            } else {
                "current".into()
            }
        });
        println!("{t}");
    }
    match ctl {
        Ok(v) => {
            println!("schedule: {}", v.schedule.unwrap_or_else(|| "none (rotate with pgdr secrets rotate)".into()));
            if let Some(d) = v.next_due {
                println!("next scheduled rotation: {d}");
            }
            match v.last {
                Some(w) => println!(
                    "last rotation: workflow {} {} (started {}){}",
                    w.id,
                    w.state,
                    w.created_at.unwrap_or_default(),
                    w.error.map(|e| format!(": {e}")).unwrap_or_default()
                ),
                None => println!("last rotation: none run by the controller"),
            }
            if let Some(r) = v.rerun {
                println!("to run again (preempted by a failover): {r}");
            }
        }
        Err(e) => println!("controller: did not answer ({e}); the stores above are read directly"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A store's time column (`rotated at`, `age`).
type When<'a> = dyn Fn(&StoreReport) -> Option<String> + 'a;

/// One role's stores, a row per region: what `rotate`, `status`, `verify`
/// and `show` print, each with its own time column (`when`: its header and
/// value) and state words.
fn stores_table(r: &RoleReport, when: (&str, &When), state: impl Fn(&StoreReport) -> String) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["region", "store", "version", "login", "endpoint", when.0, "state"]);
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for s in &r.stores {
        t.add_row([
            s.region.clone(),
            s.store.clone(),
            opt(s.version.map(|v| v.to_string())),
            opt(s.login.clone()),
            opt(s.via.clone()),
            opt((when.1)(s)),
            state(s),
        ]);
    }
    t
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn print(_cfg: &Config, report: &Report, what: &str, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    for r in &report.roles {
        let mut head = format!("cluster {}  role {} ({})", report.cluster, r.role, r.strategy);
        if what == "rotate" {
            if let (Some(l), Some(v)) = (&r.login, r.version) {
                head.push_str(&format!("  changed {l} to version {v}"));
            }
            if let (Some(p), Some(e)) = (&r.primary, r.epoch) {
                head.push_str(&format!(" on {p} at epoch {e}"));
            }
        }
        let _ = writeln!(out, "{head}");
        for x in r.proxies.iter().filter(|x| !x.refreshed) {
            let _ = writeln!(
                out,
                "  proxy {}: did not reload its user verifiers: {}",
                x.proxy,
                x.error.clone().unwrap_or_default()
            );
        }
        for x in &r.replicas {
            let _ = writeln!(
                out,
                "  standby {}: {}",
                x.node,
                if x.replayed { "replayed".to_owned() } else { x.error.clone().unwrap_or_default() }
            );
        }
        let age = |s: &StoreReport| s.age_seconds.map(|a| pgdr_model::format_duration(Duration::from_secs(a)));
        let t = stores_table(r, ("age", &age), |s| {
            if let Some(e) = &s.error {
                format!("FAILED: {e}")
            } else if let Some(k) = &s.skipped {
                format!("skipped: {k}")
            } else if s.verified == Some(true) {
                if s.written { "written, logs in".into() } else { "logs in".into() }
            } else if s.too_old {
                "older than max_age".into()
            } else if s.written {
                "written".into()
            } else {
                "ok".into()
            }
        });
        let _ = writeln!(out, "{t}");
        if let Some(e) = &r.error {
            let _ = writeln!(out, "  error: {e}");
        }
    }
    if !report.ok {
        eprintln!(
            "error: {what} did not complete for every role and region (see above); a rerun of `pgdr secrets rotate` repairs stores left behind"
        );
    }
    Ok(())
}
