//! `pgdr`: parses flags and calls the library crates. Every subcommand lives
//! in its own module under `cmd/`; this file only dispatches and turns errors
//! into exit codes (0 success, 1 operation failed, 2 bad usage or config).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod exit;
mod tls;

/// pgdr: disaster recovery and high availability for PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "pgdr", version, about, propagate_version = true)]
pub struct Cli {
    /// Config file; else $PGDR_CONFIG, else ./pgdr.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a config file.
    #[command(subcommand)]
    Config(cmd::config::ConfigCmd),
    /// Run the controller alone (proxies are driven over their admin API).
    Controller(cmd::ops::ServeArgs),
    /// Run the controller and the config's proxies in one process.
    Run(cmd::ops::ServeArgs),
    /// Unplanned role change: fence the primary, promote the best replica.
    Failover(cmd::ops::RoleChangeArgs),
    /// Planned role change to --to NODE|REGION: no lost commits, no client errors.
    Switchover(cmd::ops::RoleChangeArgs),
    /// Switchover back to the original primary region.
    Failback(cmd::ops::RoleChangeArgs),
    /// Move the primary live to --to NODE: preparation ahead, an approval gate, then a switchover through the proxy.
    Migrate(cmd::ops::RoleChangeArgs),
    /// The safety rules every role change is checked against, and which clusters are frozen (by whom, when).
    Rules(cmd::rules::RulesArgs),
    /// Freeze --cluster C (or --all): no automatic failover until unfrozen; an operator's switchover or failover still runs.
    Freeze(cmd::rules::FreezeArgs),
    /// Unfreeze --cluster C (or --all): automatic failover again.
    Unfreeze(cmd::rules::FreezeArgs),
    /// Let a workflow waiting at its approval gate go on.
    Approve(cmd::ops::ApproveArgs),
    /// List workflows, or show one with its step journal.
    Workflows(cmd::ops::WorkflowsArgs),
    /// Run the config's proxies standalone (routing by polling the nodes), or pause|resume|status a running one.
    Proxy(cmd::proxy::ProxyArgs),
    /// Run one node's agent (HTTP API for status and host actions).
    Agent(cmd::agent::AgentArgs),
    /// A local sandbox of real PostgreSQL: up, down.
    #[command(subcommand)]
    Sandbox(cmd::sandbox::SandboxCmd),
    /// Certificates for a deployment's [tls]: certs init.
    #[command(subcommand)]
    Certs(cmd::certs::CertsCmd),
    /// Managed database credentials: rotate, status, verify (docs/secrets.md).
    #[command(subcommand)]
    Secrets(cmd::secrets::SecretsCmd),
    /// Take a running PostgreSQL that pgdr did not create into a new cluster as its primary.
    Adopt(cmd::adopt::AdoptArgs),
    /// Add a replica or standby to a cluster, built from its primary: replica add.
    #[command(subcommand)]
    Replica(cmd::replica::ReplicaCmd),
    /// Every cluster's nodes, roles, LSNs and lag, from the agents.
    Status(cmd::status::StatusArgs),
    /// Base backups: run, list, verify, prune, copy, pull, enable archiving.
    #[command(subcommand)]
    Backup(cmd::backup::BackupCmd),
    /// archive_command: archive one WAL file (%p).
    WalPush(cmd::backup::WalPushArgs),
    /// restore_command: fetch one WAL file (%f %p); exit 1 when absent.
    WalFetch(cmd::backup::WalFetchArgs),
    /// Restore a backup, optionally to a point in time, and start or verify it.
    Restore(cmd::backup::RestoreArgs),
    /// Inject a real fault under a write workload and report RTO, RPO and client errors.
    Drill(cmd::drill::DrillArgs),
    /// Readiness: would a failover work right now? Exit 1 on an error finding.
    Check(cmd::check::CheckArgs),
    /// Print the cluster's run book (Markdown).
    Runbook(cmd::runbook::RunbookArgs),
    /// The whole story in two minutes: sandbox, controller, drills, report, teardown.
    Demo(cmd::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let global = cmd::Global::new(cli.config.clone());
    let result = match cli.command {
        Command::Config(c) => cmd::config::run(&global, c),
        Command::Controller(a) => cmd::ops::controller(&global, a),
        Command::Run(a) => cmd::ops::run(&global, a),
        Command::Failover(a) => cmd::ops::role_change(&global, "failover", a),
        Command::Switchover(a) => cmd::ops::role_change(&global, "switchover", a),
        Command::Failback(a) => cmd::ops::role_change(&global, "failback", a),
        Command::Migrate(a) => cmd::ops::role_change(&global, "migrate", a),
        Command::Rules(a) => cmd::rules::rules(&global, a),
        Command::Freeze(a) => cmd::rules::freeze(&global, a, true),
        Command::Unfreeze(a) => cmd::rules::freeze(&global, a, false),
        Command::Approve(a) => cmd::ops::approve(&global, a),
        Command::Workflows(a) => cmd::ops::workflows(&global, a),
        Command::Proxy(a) => cmd::proxy::run(&global, a),
        Command::Agent(a) => cmd::agent::run(&global, a),
        Command::Sandbox(c) => cmd::sandbox::run(&global, c),
        Command::Certs(c) => cmd::certs::run(&global, c),
        Command::Secrets(c) => cmd::secrets::run(&global, c),
        Command::Adopt(a) => cmd::adopt::run(&global, a),
        Command::Replica(c) => cmd::replica::run(&global, c),
        Command::Status(a) => cmd::status::run(&global, a),
        Command::Backup(c) => cmd::backup::run(&global, c),
        Command::WalPush(a) => cmd::backup::wal_push(&global, a),
        Command::WalFetch(a) => cmd::backup::wal_fetch(&global, a),
        Command::Restore(a) => cmd::backup::restore(&global, a),
        Command::Drill(a) => cmd::drill::run(&global, a),
        Command::Check(a) => cmd::check::run(&global, a),
        Command::Runbook(a) => cmd::runbook::run(&global, a),
        Command::Demo(a) => cmd::demo::run(&global, a),
    };
    exit::report(result)
}
