//! TLS for every pgdr connection: certificates and keys read from PEM files,
//! rustls configurations built on the `ring` provider, the HTTPS listener the
//! agent, controller and proxy admin APIs serve on ([`listen`]), TLS toward
//! PostgreSQL for tokio-postgres ([`pg`]), and a small certificate authority
//! for sandboxes ([`ca`]).
//!
//! Clients always verify the server's certificate against the cluster's CA
//! and its name (the host they dialled, an IP address included): the
//! equivalent of libpq's `sslmode=verify-full`. There is no "encrypt but do not
//! verify" mode.
//!
//! This crate knows nothing of pgdr's config; callers pass paths in.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub mod ca;
pub mod listen;
pub mod pg;

pub use listen::{ApiListener, ApiStream};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {what}", path.display())]
    Pem { path: PathBuf, what: String },
    #[error("TLS setup with {}: {detail}", path.display())]
    Config { path: PathBuf, detail: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connection string: {0}")]
    Conninfo(String),
    #[error("cannot make a certificate: {0}")]
    Issue(String),
}

/// The crypto provider every config here uses: `ring` (the workspace builds
/// rustls without a process-wide default, so each config names it).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn open(path: &Path) -> Result<BufReader<std::fs::File>, TlsError> {
    std::fs::File::open(path).map(BufReader::new).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// Every certificate in a PEM file; an empty file is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_owned(), what: format!("not a PEM certificate file: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_owned(), what: "expected a PEM certificate, found none".into() });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|e| TlsError::Pem { path: path.to_owned(), what: format!("not a PEM key file: {e}") })?
        .ok_or_else(|| TlsError::Pem { path: path.to_owned(), what: "expected a PEM private key, found none".into() })
}

/// The trust anchors of a CA file.
pub fn load_roots(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Pem { path: ca.to_owned(), what: format!("not a usable CA certificate: {e}") })?;
    }
    Ok(roots)
}

/// A certificate and its key, as file paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A client configuration trusting only `ca`; with `identity`, the client
/// shows that certificate when a server asks (mTLS).
pub fn client_config(ca: &Path, identity: Option<&Identity>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let cfg_err = |path: &Path| {
        let path = path.to_owned();
        move |e: rustls::Error| TlsError::Config { path, detail: e.to_string() }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(cfg_err(ca))?
        .with_root_certificates(load_roots(ca)?);
    let cfg = match identity {
        Some(id) => {
            builder.with_client_auth_cert(load_certs(&id.cert)?, load_key(&id.key)?).map_err(cfg_err(&id.key))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// A server configuration presenting `identity`; with `client_ca`, every
/// client must show a certificate signed by it (mTLS) or the handshake fails.
pub fn server_config(identity: &Identity, client_ca: Option<&Path>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cfg_err = |path: &Path| {
        let path = path.to_owned();
        move |e: rustls::Error| TlsError::Config { path, detail: e.to_string() }
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(cfg_err(&identity.cert))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                    .build()
                    .map_err(|e| TlsError::Config { path: ca.to_owned(), detail: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let cfg = builder
        .with_single_cert(load_certs(&identity.cert)?, load_key(&identity.key)?)
        .map_err(cfg_err(&identity.key))?;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let e = load_certs(&empty).expect_err("empty");
        assert!(e.to_string().contains("empty.pem") && e.to_string().contains("found none"), "{e}");
        let e = load_key(&dir.path().join("missing.key")).expect_err("missing");
        assert!(e.to_string().contains("missing.key"), "{e}");
    }
}
