//! `pgdr`: parses flags and calls the library crates. Every subcommand lives
//! in its own module under `cmd/`; this file only dispatches and turns errors
//! into exit codes (0 success, 1 operation failed, 2 bad usage or config).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod exit;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let global = cmd::Global::new(cli.config.clone());
    let result = match cli.command {
        Command::Config(c) => cmd::config::run(&global, c),
    };
    exit::report(result)
}
