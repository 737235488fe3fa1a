//! Connections from the proxy to PostgreSQL servers: TCP with dead-peer
//! detection (keepalive, `TCP_USER_TIMEOUT`, connect timeout), startup and
//! login with a credential the proxy may reuse (a SCRAM ClientKey, an md5
//! hash, or nothing for trust), up to the first ReadyForQuery. With a TLS
//! client configuration (the cluster's CA under `[tls]`), every connection
//! starts TLS and verifies the server's certificate for the backend's host
//! name (verify-full); a server that does not accept TLS is refused.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use pgdr_model::Epoch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::protocol::{self, MAX_DECODED, ProtocolError, Startup, auth};
use crate::routing::Backend;
use crate::scram::{ClientKey, ScramClient, ScramError};

/// Read buffer size for both directions.
pub const BUF_SIZE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("connecting to {addr} timed out")]
    Timeout { addr: String },
    #[error("connection to the server lost: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{message}")]
    Refused { severity: String, code: String, message: String },
    #[error("the server at {addr} asks for a password the proxy does not hold")]
    NeedsPassword { addr: String },
    #[error("SCRAM with the server failed: {0}")]
    Scram(#[from] ScramError),
    #[error("unexpected message {0:?} from the server during login")]
    Unexpected(char),
    #[error("TLS with the server at {addr} failed: {detail}")]
    Tls { addr: String, detail: String },
}

impl BackendError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Connect { .. } | BackendError::Timeout { .. } => "backend_connect",
            BackendError::Io(_) => "backend_io",
            BackendError::Protocol(_) | BackendError::Unexpected(_) => "backend_protocol",
            BackendError::Refused { .. } => "backend_refused",
            BackendError::NeedsPassword { .. } | BackendError::Scram(_) => "backend_auth",
            BackendError::Tls { .. } => "backend_tls",
        }
    }
}

/// A credential for logging in to any backend as the client's user.
#[derive(Debug, Clone)]
pub enum Credential {
    /// Only trust logins can be repeated.
    None,
    Scram {
        key: ClientKey,
        server_key: Option<[u8; 32]>,
    },
    /// A stored `md5...` hash.
    Md5(String),
}

/// TCP settings toward backends.
#[derive(Debug, Clone, Copy)]
pub struct TcpSettings {
    pub connect_timeout: Duration,
    pub user_timeout: Duration,
}

/// Opens a TCP connection with keepalive, `TCP_USER_TIMEOUT` and no Nagle.
pub async fn connect_tcp(b: &Backend, s: TcpSettings) -> Result<TcpStream, BackendError> {
    let addr = b.addr();
    let fut = async {
        let mut last = None;
        for sa in tokio::net::lookup_host(&addr).await? {
            let sock = if sa.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            {
                let r = socket2::SockRef::from(&sock);
                r.set_tcp_nodelay(true)?;
                let ka = socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(1))
                    .with_interval(Duration::from_secs(1))
                    .with_retries(3);
                r.set_tcp_keepalive(&ka)?;
                r.set_tcp_user_timeout(Some(s.user_timeout))?;
            }
            match sock.connect(sa).await {
                Ok(st) => return Ok(st),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))
    };
    match tokio::time::timeout(s.connect_timeout, fut).await {
        Ok(Ok(st)) => Ok(st),
        Ok(Err(source)) => Err(BackendError::Connect { addr, source }),
        Err(_) => Err(BackendError::Timeout { addr }),
    }
}

/// The byte stream to a backend: plain TCP, or TLS over it.
#[derive(Debug)]
pub enum BackendStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl BackendStream {
    /// A write that never waits (a polite Terminate on close); nothing
    /// under TLS, where a record cannot be written without waiting.
    pub fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            BackendStream::Plain(s) => s.try_write(buf),
            BackendStream::Tls(_) => Ok(0),
        }
    }

    /// A read of the socket that never waits (under TLS, of its raw bytes:
    /// only to tell whether an idle connection has anything to say).
    pub fn try_read_raw(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            BackendStream::Plain(s) => s.try_read(buf),
            BackendStream::Tls(s) => s.get_ref().0.try_read(buf),
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Starts TLS on `tcp` (SSLRequest, then a handshake verifying the
/// certificate for the backend's host name).
async fn start_tls(
    b: &Backend,
    mut tcp: TcpStream,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<BackendStream, BackendError> {
    let addr = b.addr();
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(BackendError::Tls { addr, detail: "the server does not accept TLS".into() });
    }
    let name = rustls::pki_types::ServerName::try_from(b.host.clone())
        .map_err(|e| BackendError::Tls { addr: addr.clone(), detail: format!("host name {:?}: {e}", b.host) })?;
    let s = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| BackendError::Tls { addr, detail: e.to_string() })?;
    Ok(BackendStream::Tls(Box::new(s)))
}

/// A logged-in backend connection.
#[derive(Debug)]
pub struct BackendConn {
    pub stream: BackendStream,
    pub buf: BytesMut,
    /// Shared: a landing session and the cancel map take a pointer, not
    /// a copy of the names.
    pub backend: Arc<Backend>,
    pub epoch: Epoch,
    /// The backend's own cancel key.
    pub key: (i32, i32),
    /// ParameterStatus values reported (at login and since), shared with
    /// sessions that have the same (see [`same_shared`]).
    pub params: Arc<Vec<(String, String)>>,
    /// Reported `in_hot_standby=on` or `default_transaction_read_only=on`.
    pub read_only: bool,
    /// The login needed a password (relevant in passthrough mode).
    pub used_password: bool,
}

impl BackendConn {
    /// Whether an idle connection still looks usable: nothing to read (an
    /// idle backend says nothing unprompted but a shutdown notice or an
    /// error before it closes) and not closed. One non-blocking read.
    pub fn idle_alive(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut b = [0u8; 1];
        matches!(self.stream.try_read_raw(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    pub fn new(stream: BackendStream, backend: Backend, epoch: Epoch) -> BackendConn {
        BackendConn {
            stream,
            buf: BytesMut::with_capacity(BUF_SIZE),
            backend: Arc::new(backend),
            epoch,
            key: (0, 0),
            params: Arc::default(),
            read_only: false,
            used_password: false,
        }
    }

    /// Writes `data` to the server, flushed (TLS keeps records until then).
    pub async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data).await?;
        self.stream.flush().await
    }

    /// Reads one whole message (for login and small exchanges).
    pub async fn read_message(&mut self) -> Result<BytesMut, BackendError> {
        loop {
            if let Some(m) = protocol::split_message(&mut self.buf, MAX_DECODED)? {
                return Ok(m);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Notes a ParameterStatus value; returns whether it marks the server
    /// read-only.
    pub fn note_parameter(&mut self, name: &[u8], value: &[u8]) {
        if read_only_parameter(name, value) {
            self.read_only = true;
        }
        set_param(&mut self.params, name, value);
    }

    /// After AuthenticationOk: reads ParameterStatus, BackendKeyData and
    /// notices until ReadyForQuery.
    pub async fn finish_login(&mut self) -> Result<(), BackendError> {
        loop {
            let m = self.read_message().await?;
            let body = protocol::body(&m);
            match m[0] {
                b'S' => {
                    if let Some((k, v)) = protocol::parse_parameter_status(body) {
                        self.note_parameter(k, v);
                    }
                }
                b'K' if body.len() >= 8 => {
                    let mut b = body;
                    self.key = (b.get_i32(), b.get_i32());
                }
                b'N' => {}
                b'E' => return Err(refused(body)),
                b'Z' => return Ok(()),
                t => return Err(BackendError::Unexpected(t as char)),
            }
        }
    }
}

/// Sets a reported value in a ParameterStatus list (copied first when the
/// list is shared and the value changes).
pub fn set_param(params: &mut Arc<Vec<(String, String)>>, k: &[u8], v: &[u8]) {
    let (k, v) = (String::from_utf8_lossy(k), String::from_utf8_lossy(v));
    match params.iter().position(|(ck, _)| *ck == k) {
        Some(i) if params[i].1 == v => {}
        Some(i) => Arc::make_mut(params)[i].1 = v.into_owned(),
        None => Arc::make_mut(params).push((k.into_owned(), v.into_owned())),
    }
}

/// Whether two shared values are equal, compared by pointer first. Equal
/// values found apart become one: both keep the copy at the lower
/// address, so sessions and backends with the same values end up sharing
/// one copy and landing compares one pointer instead of every string.
pub fn same_shared<T: PartialEq>(a: &mut Arc<T>, b: &mut Arc<T>) -> bool {
    if Arc::ptr_eq(a, b) {
        return true;
    }
    if **a != **b {
        return false;
    }
    if Arc::as_ptr(a) < Arc::as_ptr(b) {
        *b = Arc::clone(a);
    } else {
        *a = Arc::clone(b);
    }
    true
}

/// `in_hot_standby=on` or `default_transaction_read_only=on`.
pub fn read_only_parameter(name: &[u8], value: &[u8]) -> bool {
    (name == b"in_hot_standby" || name == b"default_transaction_read_only") && value == b"on"
}

pub fn refused(body: &[u8]) -> BackendError {
    let f = protocol::parse_error(body);
    BackendError::Refused {
        severity: String::from_utf8_lossy(f.severity).into_owned(),
        code: String::from_utf8_lossy(f.code).into_owned(),
        message: String::from_utf8_lossy(f.message).into_owned(),
    }
}

/// Connects, with TLS when `tls` is given.
pub async fn connect(
    b: &Backend,
    tcp: TcpSettings,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<BackendStream, BackendError> {
    let stream = connect_tcp(b, tcp).await?;
    match tls {
        None => Ok(BackendStream::Plain(stream)),
        Some(cfg) => {
            match tokio::time::timeout(tcp.connect_timeout.max(Duration::from_secs(5)), start_tls(b, stream, cfg)).await
            {
                Ok(r) => r,
                Err(_) => Err(BackendError::Timeout { addr: b.addr() }),
            }
        }
    }
}

/// Connects and logs in with `cred`.
pub async fn open(
    b: &Backend,
    epoch: Epoch,
    tcp: TcpSettings,
    tls: Option<&Arc<rustls::ClientConfig>>,
    startup: &Startup,
    cred: &Credential,
) -> Result<BackendConn, BackendError> {
    let stream = connect(b, tcp, tls).await?;
    let mut conn = BackendConn::new(stream, b.clone(), epoch);
    let mut out = BytesMut::with_capacity(256);
    startup.encode(&mut out);
    conn.send(&out).await?;
    let login = async {
        let mut scram: Option<ScramClient> = None;
        loop {
            let m = conn.read_message().await?;
            let body = protocol::body(&m);
            match m[0] {
                b'R' if body.len() >= 4 => {
                    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let data = &body[4..];
                    out.clear();
                    match (code, cred) {
                        (auth::OK, _) => break,
                        (auth::SASL, Credential::Scram { key, server_key }) => {
                            if !sasl_mechanisms(data).any(|m| m == b"SCRAM-SHA-256") {
                                return Err(BackendError::NeedsPassword { addr: b.addr() });
                            }
                            let (c, first) = ScramClient::new(key.clone(), *server_key);
                            scram = Some(c);
                            protocol::put_message(&mut out, b'p', |o| {
                                protocol::put_cstr(o, "SCRAM-SHA-256");
                                o.put_i32(first.len() as i32);
                                o.put_slice(first.as_bytes());
                            });
                        }
                        (auth::SASL_CONTINUE, _) => {
                            let c = scram.as_mut().ok_or(BackendError::Unexpected('R'))?;
                            let fin = c.respond(&String::from_utf8_lossy(data))?;
                            protocol::put_message(&mut out, b'p', |o| o.put_slice(fin.as_bytes()));
                        }
                        (auth::SASL_FINAL, _) => {
                            let c = scram.as_ref().ok_or(BackendError::Unexpected('R'))?;
                            c.verify(&String::from_utf8_lossy(data))?;
                        }
                        (auth::MD5, Credential::Md5(stored)) if data.len() >= 4 => {
                            let r = crate::auth::md5_response(stored, [data[0], data[1], data[2], data[3]]);
                            protocol::put_message(&mut out, b'p', |o| protocol::put_cstr(o, &r));
                        }
                        _ => return Err(BackendError::NeedsPassword { addr: b.addr() }),
                    }
                    if !out.is_empty() {
                        conn.used_password = true;
                        conn.send(&out).await?;
                    }
                }
                b'E' => return Err(refused(body)),
                b'N' => {}
                t => return Err(BackendError::Unexpected(t as char)),
            }
        }
        conn.finish_login().await
    };
    match tokio::time::timeout(tcp.connect_timeout.max(Duration::from_secs(5)), login).await {
        Ok(Ok(())) => Ok(conn),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BackendError::Timeout { addr: b.addr() }),
    }
}

/// The mechanism names in an AuthenticationSASL body.
pub fn sasl_mechanisms(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&c| c == 0).take_while(|m| !m.is_empty())
}

/// Sends a CancelRequest to a backend.
pub async fn send_cancel(b: &Backend, key: (i32, i32), tcp: TcpSettings) -> Result<(), BackendError> {
    let mut s = connect_tcp(b, tcp).await?;
    s.write_all(&protocol::cancel_request(key.0, key.1)).await?;
    let mut sink = [0u8; 1];
    // The server closes the connection when done; wait briefly for that.
    let _ = tokio::time::timeout(Duration::from_secs(1), s.read(&mut sink)).await;
    Ok(())
}
