//! TLS toward PostgreSQL for tokio-postgres, with libpq's `verify-full`
//! checks: the server's certificate must chain to the cluster's CA and name
//! the host dialled. [`PgTls::libpq_params`] gives libpq programs
//! (`pg_basebackup`, `pg_rewind`, the WAL receiver's `primary_conninfo`) the
//! same checks.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::TlsError;

/// How pgdr's clients reach PostgreSQL: TLS, verified against `ca`.
#[derive(Clone)]
pub struct PgTls {
    ca: PathBuf,
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTls(verify-full, ca {})", self.ca.display())
    }
}

impl PgTls {
    /// Trusts the servers `ca` signed.
    pub fn new(ca: &Path) -> Result<PgTls, TlsError> {
        Ok(PgTls { ca: ca.to_owned(), config: crate::client_config(ca, None)? })
    }

    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// The libpq connection parameters asking for the same checks:
    /// ` sslmode=verify-full sslrootcert='CA'` (leading space included).
    pub fn libpq_params(&self) -> String {
        libpq_params(&self.ca)
    }

    /// The same as environment variables for libpq programs.
    pub fn libpq_env(&self) -> [(&'static str, String); 2] {
        [("PGSSLMODE", "verify-full".to_owned()), ("PGSSLROOTCERT", self.ca.display().to_string())]
    }
}

/// ` sslmode=verify-full sslrootcert='CA'` (leading space included): what a
/// libpq connection string needs to check servers against `ca`.
pub fn libpq_params(ca: &Path) -> String {
    let ca = ca.display().to_string();
    format!(" sslmode=verify-full sslrootcert='{}'", ca.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Splits a libpq connection string into what tokio-postgres reads and the
/// TLS it asks for: `sslmode=verify-full` or `verify-ca` (both verify the
/// name here) or `require`, with `sslrootcert`, become a [`PgTls`];
/// `disable`, `allow` and `prefer` become plain TCP. TLS without a
/// `sslrootcert` is refused: pgdr never encrypts without verifying.
pub fn split_conninfo(conninfo: &str) -> Result<(String, Option<PgTls>), TlsError> {
    let bad = |what: String| TlsError::Conninfo(what);
    let mut rest = String::new();
    let (mut mode, mut root) = (None::<String>, None::<String>);
    let mut chars = conninfo.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else { break };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(bad(format!("expected `=` after {key:?}")));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(bad(format!("unterminated quoted value of {key:?}"))),
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return Err(bad(format!("unterminated quoted value of {key:?}"))),
                    },
                    Some((_, c)) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        let end = chars.peek().map(|(i, _)| *i).unwrap_or(conninfo.len());
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => {
                rest.push_str(&conninfo[start..end]);
                rest.push(' ');
            }
        }
    }
    let tls = match mode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => None,
        Some("require" | "verify-ca" | "verify-full") => {
            let Some(root) = root else {
                return Err(bad("TLS without `sslrootcert`: give the CA to verify the server against".into()));
            };
            Some(PgTls::new(Path::new(&root))?)
        }
        Some(other) => {
            return Err(bad(format!(
                "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    Ok((rest.trim_end().to_owned(), tls))
}

/// Connects with `cfg`, spawning the connection's task. With `tls` the
/// connection must be TLS (a server that declines is an error); without it,
/// plain TCP.
pub async fn connect(
    cfg: &tokio_postgres::Config,
    tls: Option<&PgTls>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    match tls {
        Some(t) => {
            let mut cfg = cfg.clone();
            cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (client, conn) = cfg.connect(t.clone()).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        }
        None => {
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        }
    }
}

/// [`connect`] with a tokio-postgres connection string.
pub async fn connect_str(conninfo: &str, tls: Option<&PgTls>) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let cfg: tokio_postgres::Config = conninfo.parse()?;
    connect(&cfg, tls).await
}

/// A connection kept between uses, and the attempt to open one, which may
/// outlive the caller that started it.
///
/// Probes keep their connections: a TLS handshake and SCRAM on every probe
/// would cost several round trips each time, and on a loaded host longer
/// than a probe's deadline. When a connection must be (re)opened, the
/// attempt runs in its own task with its own deadline (the `open` future's):
/// a caller whose deadline passes drops [`KeptClient::get`], the attempt
/// goes on, and the next call takes its connection instead of starting the
/// handshake over. The late caller still sees its own deadline pass.
///
/// A connection handed out by [`KeptClient::get`] is in use until
/// [`KeptClient::release`]: a caller dropped mid-query (its deadline passed)
/// never releases it, and the next `get` drops that connection, whose state
/// is unknown, and opens another.
pub struct KeptClient<E> {
    client: Option<tokio_postgres::Client>,
    in_use: bool,
    opening: Option<tokio::task::JoinHandle<Result<tokio_postgres::Client, E>>>,
}

impl<E> std::fmt::Debug for KeptClient<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptClient")
            .field("open", &self.client.is_some())
            .field("opening", &self.opening.is_some())
            .finish()
    }
}

impl<E> Default for KeptClient<E> {
    fn default() -> Self {
        KeptClient { client: None, in_use: false, opening: None }
    }
}

impl<E: Send + 'static> KeptClient<E> {
    /// The open connection, else the one being opened, else a new attempt
    /// with `open` (spawned). Cancel-safe: see the type's docs. An attempt
    /// that failed between two calls is not this call's answer: it is
    /// dropped and a new one started. `lost` names a failure of the
    /// attempt's task itself (a panic).
    pub async fn get<F>(
        &mut self,
        open: impl FnOnce() -> F,
        lost: impl FnOnce(String) -> E,
    ) -> Result<&tokio_postgres::Client, E>
    where
        F: Future<Output = Result<tokio_postgres::Client, E>> + Send + 'static,
    {
        if self.in_use || self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.close();
        }
        if self.client.is_none()
            && self.opening.as_ref().is_some_and(|h| h.is_finished())
            && let Some(h) = self.opening.take()
            && let Ok(Ok(c)) = h.await
        {
            // (Finished: the await returns at once.)
            self.client = Some(c);
        }
        let client = match self.client.take() {
            Some(c) => c,
            None => {
                let handle = self.opening.get_or_insert_with(|| tokio::spawn(open()));
                let res = handle.await;
                self.opening = None;
                match res {
                    Ok(r) => r?,
                    Err(e) => return Err(lost(e.to_string())),
                }
            }
        };
        self.in_use = true;
        Ok(self.client.insert(client))
    }

    /// The connection from the last [`KeptClient::get`] answered and may be
    /// used again.
    pub fn release(&mut self) {
        self.in_use = false;
    }

    /// Drops the connection (after an error or a late answer); an attempt
    /// under way goes on.
    pub fn close(&mut self) {
        self.client = None;
        self.in_use = false;
    }

    /// Drops the connection and stops any attempt to open one.
    pub fn reset(&mut self) {
        self.close();
        if let Some(h) = self.opening.take() {
            h.abort();
        }
    }
}

impl<E> Drop for KeptClient<E> {
    fn drop(&mut self) {
        if let Some(h) = self.opening.take() {
            h.abort();
        }
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, Self::Error> {
        Ok(PgTlsConnect { config: self.config.clone(), name: ServerName::try_from(domain.to_owned())? })
    }
}

/// One handshake toward the host named at [`MakeTlsConnect::make_tls_connect`].
pub struct PgTlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let s = tokio_rustls::TlsConnector::from(self.config).connect(self.name, stream).await?;
            Ok(PgTlsStream(s))
        })
    }
}

/// A TLS connection to PostgreSQL.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    /// No channel binding: SCRAM runs without `-PLUS`. The certificate check
    /// against the cluster's CA is what stops a man in the middle.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_tls_from_a_conninfo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = crate::ca::Authority::generate("t").expect("ca");
        let path = dir.path().join("it's ca.crt");
        std::fs::write(&path, ca.cert_pem()).expect("write");
        let s = format!("host=127.0.0.1 password='a b\\'c'{} port=5", libpq_params(&path));
        let (rest, tls) = split_conninfo(&s).expect("split");
        assert_eq!(rest, "host=127.0.0.1 password='a b\\'c' port=5");
        assert_eq!(tls.expect("tls").ca(), path);
        let (rest, tls) = split_conninfo("host=h sslmode=disable").expect("split");
        assert!(tls.is_none() && rest == "host=h");
        assert!(split_conninfo("host=h sslmode=require").is_err(), "TLS without a CA is refused");
        assert!(split_conninfo("host='h").is_err());
    }
}
