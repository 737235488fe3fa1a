//! `pgdr certs init`: a CA and the certificates a deployment's `[tls]` names
//! (the controller's, the agents', the proxies', the CLI's client
//! certificate, and one for PostgreSQL), made with the same small CA the
//! sandbox uses (`pgdr_tls::ca`). Keys are written 0600 and never over an
//! existing file unless `--force`; the `[tls]` lines to paste are printed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use pgdr_tls::ca::{Authority, write_new};

use crate::cmd::Global;
use crate::exit::Usage;

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Make a CA and certificates for the controller, agents, proxies, the CLI (client) and PostgreSQL.
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Folder for the files (created when missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Host names and IP addresses every certificate is valid for (the
    /// names clients dial): comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_name = "HOST", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
    pub hosts: Vec<String>,
    /// Replace files that exist (a new CA: every certificate it signed must be replaced too).
    #[arg(long)]
    pub force: bool,
}

/// Each certificate made besides the CA: file stem and what uses it.
pub const PARTS: [(&str, &str); 5] = [
    ("controller", "the controller's API and status page"),
    ("agent", "every agent's API"),
    ("proxy", "the proxies' admin API and client endpoints"),
    ("client", "pgdr's client certificate toward the agents (mTLS)"),
    ("postgres", "PostgreSQL (ssl_cert_file, ssl_key_file)"),
];

pub fn run(_global: &Global, cmd: CertsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCmd::Init(a) => init(&a),
    }
}

/// Every file `init` writes in `dir`, with its mode.
fn files(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut v = vec![(dir.join("ca.crt"), 0o644), (dir.join("ca.key"), 0o600)];
    for (part, _) in PARTS {
        v.push((dir.join(format!("{part}.crt")), 0o644));
        v.push((dir.join(format!("{part}.key")), 0o600));
    }
    v
}

fn init(a: &InitArgs) -> anyhow::Result<ExitCode> {
    let mut hosts: Vec<String> = Vec::new();
    for h in &a.hosts {
        let h = h.trim();
        pgdr_model::check_host(h).map_err(|e| Usage(format!("--hosts: {e}")))?;
        if !hosts.iter().any(|x| x == h) {
            hosts.push(h.to_owned());
        }
    }
    if hosts.is_empty() {
        return Err(Usage("--hosts: give at least one host name or IP address".into()).into());
    }
    if a.dir.exists() && !a.dir.is_dir() {
        return Err(Usage(format!("--dir {}: not a folder", a.dir.display())).into());
    }
    let planned = files(&a.dir);
    let existing: Vec<String> = planned
        .iter()
        .filter(|(p, _)| std::fs::symlink_metadata(p).is_ok())
        .map(|(p, _)| p.display().to_string())
        .collect();
    if !existing.is_empty() && !a.force {
        return Err(Usage(format!(
            "{} already exist{}: nothing written (pass --force to replace them, and every certificate the old CA signed)",
            existing.join(", "),
            if existing.len() == 1 { "s" } else { "" }
        ))
        .into());
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("cannot create {}", a.dir.display()))?;
    let dir = a.dir.canonicalize().with_context(|| format!("cannot resolve {}", a.dir.display()))?;
    let planned = files(&dir);
    if a.force {
        for (p, _) in &planned {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot replace {}", p.display())),
            }
        }
    }
    let ca = Authority::generate("pgdr CA")?;
    write_new(&dir.join("ca.crt"), ca.cert_pem(), 0o644)?;
    write_new(&dir.join("ca.key"), &ca.key_pem(), 0o600)?;
    for (part, _) in PARTS {
        let c = ca.issue(&format!("pgdr {part}"), &hosts)?;
        write_new(&dir.join(format!("{part}.crt")), &c.cert_pem, 0o644)?;
        write_new(&dir.join(format!("{part}.key")), &c.key_pem, 0o600)?;
    }
    print!("{}", advice(&dir, &hosts));
    Ok(ExitCode::SUCCESS)
}

/// What `init` prints: the files, then the config lines to paste.
fn advice(dir: &Path, hosts: &[String]) -> String {
    let q = |f: &str| format!("{:?}", dir.join(f).display().to_string());
    let mut s = format!("wrote a CA and {} certificates in {} for {}:\n", PARTS.len(), dir.display(), hosts.join(", "));
    s.push_str("  ca.crt, ca.key             the CA (keep ca.key offline: only signing needs it)\n");
    for (part, what) in PARTS {
        s.push_str(&format!("  {:<26} {what}\n", format!("{part}.crt, {part}.key")));
    }
    s.push_str("\n# pgdr.toml\n[tls]\nmode = \"verify-full\"\n");
    s.push_str(&format!("ca = {}\nclient_certs = true\n", q("ca.crt")));
    for (part, _) in PARTS.iter().filter(|(p, _)| *p != "postgres") {
        s.push_str(&format!(
            "{part} = {{ cert = {}, key = {} }}\n",
            q(&format!("{part}.crt")),
            q(&format!("{part}.key"))
        ));
    }
    s.push_str("\n# in each [[proxies]] entry\n");
    s.push_str(&format!("tls_cert = {}\ntls_key = {}\nrequire_tls = true\n", q("proxy.crt"), q("proxy.key")));
    s.push_str("\n# postgresql.conf of every node (copy the files to each host; the key must belong to the server's user, 0600)\n");
    s.push_str(&format!(
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
        dir.join("postgres.crt").display(),
        dir.join("postgres.key").display()
    ));
    s.push_str(
        "\n# pg_hba.conf: TCP logins only over TLS\nhostnossl all all all reject\nhostnossl replication all all reject\nhostssl all all 0.0.0.0/0 scram-sha-256\nhostssl replication all 0.0.0.0/0 scram-sha-256\n",
    );
    s
}
