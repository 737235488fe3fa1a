//! How a client reaches pgdr's HTTP APIs: plain HTTP, or HTTPS trusting only
//! the cluster's CA (and showing a certificate when the server asks for one:
//! mTLS between controller and agents).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ApiError;

pub use pgdr_tls::Identity;

/// Plain HTTP (`HttpTls::plain()`), or HTTPS with a rustls config. Cheap
/// to clone.
#[derive(Clone, Default)]
pub struct HttpTls {
    config: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.config.is_some() { "HttpTls(https)" } else { "HttpTls(http)" })
    }
}

impl HttpTls {
    pub fn plain() -> HttpTls {
        HttpTls::default()
    }

    /// HTTPS trusting `ca`; `identity` is shown to servers that ask for a
    /// client certificate.
    pub fn new(ca: &Path, identity: Option<&Identity>) -> Result<HttpTls, pgdr_tls::TlsError> {
        Ok(HttpTls { config: Some(pgdr_tls::client_config(ca, identity)?) })
    }

    pub fn is_tls(&self) -> bool {
        self.config.is_some()
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.config.is_some() { "https" } else { "http" }
    }

    /// A reqwest client: no proxy, this connect timeout, this TLS.
    pub fn client(&self, connect_timeout: Duration) -> Result<reqwest::Client, ApiError> {
        let b = reqwest::Client::builder().no_proxy().connect_timeout(connect_timeout);
        let b = match &self.config {
            Some(c) => b.tls_backend_preconfigured(rustls::ClientConfig::clone(c)).https_only(true),
            // Plain HTTP still names its TLS backend: reqwest is built
            // without a default crypto provider, and this one trusts no
            // certificate, so an https URL fails instead of trusting any.
            None => b.tls_backend_preconfigured(no_trust()?),
        };
        b.build().map_err(|e| ApiError::Client(e.to_string()))
    }
}

fn no_trust() -> Result<rustls::ClientConfig, ApiError> {
    Ok(rustls::ClientConfig::builder_with_provider(pgdr_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Client(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}
