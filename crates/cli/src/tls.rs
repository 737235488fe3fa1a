//! The config's `[tls]` as the clients and servers of this binary use it.

use anyhow::Context;
use pgdr_config::Config;
use pgdr_tls::pg::PgTls;

/// TLS toward PostgreSQL under `[tls]`, else `None` (plain TCP).
pub fn pg(cfg: &Config) -> anyhow::Result<Option<PgTls>> {
    match &cfg.tls {
        Some(t) => Ok(Some(PgTls::new(&t.ca).context("tls.ca")?)),
        None => Ok(None),
    }
}

/// How this binary calls the agent and controller APIs: HTTPS trusting
/// `tls.ca`, showing `tls.client` (else the controller's certificate) when a
/// server asks for one.
pub fn http(cfg: &Config) -> anyhow::Result<pgdr_api::HttpTls> {
    match &cfg.tls {
        Some(t) => {
            let id = t.cli_identity().map(|i| pgdr_tls::Identity { cert: i.cert.clone(), key: i.key.clone() });
            Ok(pgdr_api::HttpTls::new(&t.ca, id.as_ref()).context("[tls]")?)
        }
        None => Ok(pgdr_api::HttpTls::plain()),
    }
}

/// The certificate the proxies' admin APIs serve HTTPS with.
pub fn proxy_api(cfg: &Config) -> Option<pgdr_tls::Identity> {
    let id = cfg.tls.as_ref()?.proxy.as_ref()?;
    Some(pgdr_tls::Identity { cert: id.cert.clone(), key: id.key.clone() })
}

/// A proxy's settings from its `[[proxies]]` entry; under `[tls]` its
/// connections to PostgreSQL start TLS and verify the server's
/// certificate with `tls.ca` for the node's host name (verify-full).
pub fn proxy_settings(cfg: &Config, p: &pgdr_config::Proxy) -> anyhow::Result<pgdr_proxy::Settings> {
    let mut s = pgdr_proxy::Settings::from_config(p);
    if let Some(t) = &cfg.tls {
        s.backend_tls = Some(pgdr_tls::client_config(&t.ca, None).context("tls.ca")?);
    }
    Ok(s)
}
