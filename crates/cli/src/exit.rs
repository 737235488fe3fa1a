//! Errors at the edge: print them once, pick the exit code.

use std::process::ExitCode;

/// Marks an error as bad usage or config (exit code 2) rather than a failed
/// operation (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

pub fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            let usage = err.chain().any(|e| {
                e.is::<Usage>()
                    || e.is::<pgdr_config::ConfigError>()
                    || e.is::<pgdr_config::KeyedSecretError>()
                    || matches!(e.downcast_ref(), Some(pgdr_controller::ControllerError::Config(_)))
            });
            // Config errors carry file, key and line in their message already.
            let mut msg = String::new();
            for (i, cause) in err.chain().enumerate() {
                if i == 0 {
                    msg.push_str(&cause.to_string());
                } else {
                    let s = cause.to_string();
                    if !msg.contains(&s) {
                        msg.push_str(&format!(": {s}"));
                    }
                }
            }
            eprintln!("error: {msg}");
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
