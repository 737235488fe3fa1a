//! `pgdr-wal`: PostgreSQL's archive and restore command, with the same flags
//! as `pgdr wal-push` and `pgdr wal-fetch`, in a small program (the backup
//! crate's tests use it; it also serves where the full `pgdr` is not
//! installed). Exit codes: 0 done, 1 failed or (fetch) absent, 2 bad usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "pgdr-wal", about = "Archive or fetch one WAL file")]
struct Args {
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// archive_command: push %p.
    WalPush {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        to: Option<String>,
        path: PathBuf,
    },
    /// restore_command: fetch %f into %p.
    WalFetch {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        from: Option<String>,
        name: String,
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let path = pgdr_config::locate(args.config.as_deref(), std::env::var(pgdr_config::CONFIG_ENV).ok().as_deref());
    let config = match pgdr_config::Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = rt.block_on(async {
        match args.cmd {
            Cmd::WalPush { cluster, to, path } => {
                pgdr_backup::wal::push_cmd(&config, &cluster, to.as_deref(), &path).await.map(|_| ())
            }
            Cmd::WalFetch { cluster, from, name, path } => {
                pgdr_backup::wal::fetch_cmd(&config, &cluster, from.as_deref(), &name, &path).await
            }
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(pgdr_backup::BackupError::WalMissing { .. }) => ExitCode::from(1),
        Err(e) => {
            eprintln!("pgdr-wal: error: {e}");
            ExitCode::from(1)
        }
    }
}
