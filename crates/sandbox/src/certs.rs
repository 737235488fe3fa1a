//! The sandbox's own CA and a certificate for every part, under `tls/`:
//! `ca.crt` (what every client trusts), `controller`, `agent`, `proxy` and
//! `client` (the CLI's, for mTLS) with their keys, and one per node for
//! PostgreSQL, whose key belongs to the server's user (PostgreSQL refuses a
//! key file others can read). Every certificate names `127.0.0.1` and
//! `localhost` (and the node's host), so clients verify names as libpq's
//! `verify-full` does.

use std::path::{Path, PathBuf};

use pgdr_node::RunAs;
use pgdr_tls::ca::{Authority, write_new};

use crate::SandboxError;
use crate::record::NodeRecord;

/// The folder, relative to the sandbox's.
pub const DIR: &str = "tls";
/// The parts with a certificate of their own besides the nodes.
pub const PARTS: [&str; 4] = ["controller", "agent", "proxy", "client"];
/// The etcd members' certificate and key (`--store etcd`), in [`DIR`].
pub const ETCD_CERT: &str = "etcd.crt";
pub const ETCD_KEY: &str = "etcd.key";

fn tls_err(e: pgdr_tls::TlsError) -> SandboxError {
    SandboxError::Tls(e.to_string())
}

/// Makes the CA and every certificate; returns the folder.
pub fn make(dir: &Path, nodes: &[NodeRecord], run_as: &RunAs) -> Result<PathBuf, SandboxError> {
    let tls = dir.join(DIR);
    std::fs::create_dir_all(&tls).map_err(SandboxError::io(&tls))?;
    crate::up::set_mode(&tls, 0o755)?;
    let ca = Authority::generate("pgdr sandbox CA").map_err(tls_err)?;
    write_new(&tls.join("ca.crt"), ca.cert_pem(), 0o644).map_err(tls_err)?;
    write_new(&tls.join("ca.key"), &ca.key_pem(), 0o600).map_err(tls_err)?;
    let mut names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    for n in nodes {
        if !names.contains(&n.host) {
            names.push(n.host.clone());
        }
    }
    for part in PARTS {
        let c = ca.issue(&format!("pgdr {part}"), &names).map_err(tls_err)?;
        write_new(&tls.join(format!("{part}.crt")), &c.cert_pem, 0o644).map_err(tls_err)?;
        write_new(&tls.join(format!("{part}.key")), &c.key_pem, 0o600).map_err(tls_err)?;
    }
    let c = ca.issue("pgdr etcd", &names).map_err(tls_err)?;
    write_new(&tls.join(ETCD_CERT), &c.cert_pem, 0o644).map_err(tls_err)?;
    write_new(&tls.join(ETCD_KEY), &c.key_pem, 0o600).map_err(tls_err)?;
    for n in nodes {
        let c = ca.issue(&n.name, &names).map_err(tls_err)?;
        let (crt, key) = node_files(dir, &n.name);
        write_new(&crt, &c.cert_pem, 0o644).map_err(tls_err)?;
        write_new(&key, &c.key_pem, 0o600).map_err(tls_err)?;
        run_as.give(&key)?;
    }
    Ok(tls)
}

/// A node's PostgreSQL certificate and key.
pub fn node_files(dir: &Path, node: &str) -> (PathBuf, PathBuf) {
    let tls = dir.join(DIR);
    (tls.join(format!("{node}-postgres.crt")), tls.join(format!("{node}-postgres.key")))
}

/// The PostgreSQL settings serving TLS with a node's certificate.
pub fn node_settings(dir: &Path, node: &str) -> Vec<(String, String)> {
    let (crt, key) = node_files(dir, node);
    vec![
        ("ssl".to_owned(), "on".to_owned()),
        ("ssl_cert_file".to_owned(), pgdr_node::local::quote(&crt.display().to_string())),
        ("ssl_key_file".to_owned(), pgdr_node::local::quote(&key.display().to_string())),
    ]
}

/// The clients of a sandbox folder: TLS toward PostgreSQL and HTTPS toward
/// the APIs when it has certificates (`tls/ca.crt`), else plain.
pub fn clients(dir: &Path) -> Result<(Option<pgdr_node::local::PgTls>, pgdr_api::HttpTls), SandboxError> {
    let tls = dir.join(DIR);
    let ca = tls.join("ca.crt");
    if !ca.exists() {
        return Ok((None, pgdr_api::HttpTls::plain()));
    }
    let id = pgdr_tls::Identity { cert: tls.join("client.crt"), key: tls.join("client.key") };
    Ok((
        Some(pgdr_node::local::PgTls::new(&ca).map_err(tls_err)?),
        pgdr_api::HttpTls::new(&ca, Some(&id)).map_err(tls_err)?,
    ))
}
