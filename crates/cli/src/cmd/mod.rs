//! One module per subcommand family.

use std::path::PathBuf;

use pgdr_config::Config;

pub mod adopt;
pub mod agent;
pub mod backup;
pub mod certs;
pub mod check;
pub mod config;
pub mod demo;
pub mod drill;
pub mod ops;
pub mod proxy;
pub mod replica;
pub mod rules;
pub mod runbook;
pub mod sandbox;
pub mod secrets;
pub mod status;

/// Flags every command shares.
#[derive(Debug, Clone)]
pub struct Global {
    pub config_flag: Option<PathBuf>,
    pub config_env: Option<String>,
}

impl Global {
    pub fn new(config_flag: Option<PathBuf>) -> Global {
        Global { config_flag, config_env: std::env::var(pgdr_config::CONFIG_ENV).ok() }
    }

    pub fn config_path(&self) -> PathBuf {
        pgdr_config::locate(self.config_flag.as_deref(), self.config_env.as_deref())
    }

    /// Loads and validates the config; its errors exit with code 2.
    pub fn load_config(&self) -> anyhow::Result<Config> {
        let path = self.config_path();
        // The ConfigError's message leads with file, key and line; the edge
        // maps it to exit code 2.
        Ok(Config::load(&path)?)
    }
}
