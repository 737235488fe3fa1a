//! Accept loops: per cluster a writer and an optional reader listener, the
//! startup negotiation (SSLRequest answered `S` with rustls when a
//! certificate is configured, else `N`; GSSENCRequest answered `N`), cancel
//! requests routed to the real backend, and the admin API.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::{self, ProtocolError, Startup, StartupPacket};
use crate::{ClusterState, Inner, ProxyError, ProxyHandle};

/// A cluster's bound endpoints.
#[derive(Debug)]
pub struct ClusterListeners {
    pub cluster: String,
    pub writer: TcpListener,
    pub reader: Option<TcpListener>,
}

/// Everything `serve` listens on.
#[derive(Debug, Default)]
pub struct Listeners {
    pub clusters: Vec<ClusterListeners>,
    pub api: Option<TcpListener>,
}

/// Which endpoint a client came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Writer,
    Reader,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Writer => "writer",
            Endpoint::Reader => "reader",
        }
    }
}

pub(crate) fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, ProxyError> {
    let bad = |what: &Path, e: &dyn std::fmt::Display| ProxyError::Tls(format!("{}: {e}", what.display()));
    let certs: Vec<_> =
        rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(cert).map_err(|e| bad(cert, &e))?))
            .collect::<Result<_, _>>()
            .map_err(|e| bad(cert, &e))?;
    let key_der =
        rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(key).map_err(|e| bad(key, &e))?))
            .map_err(|e| bad(key, &e))?
            .ok_or_else(|| bad(key, &"no private key found"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| ProxyError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// One listening endpoint, accepted on by every shard.
struct Accept {
    inner: Arc<Inner>,
    state: Arc<ClusterState>,
    endpoint: Endpoint,
    listener: std::net::TcpListener,
}

/// Sessions run on single-threaded runtimes ("shards", half the cores), each
/// on its own OS thread with its own IO driver: all cores are used, and a
/// session's reads and writes never wake another thread (on a loaded
/// 2-core machine a work-stealing runtime spent a large share of its time
/// in cross-thread wakeups). Every shard accepts on every listener itself
/// (its own descriptor of the same socket), so a new connection is not
/// handed from thread to thread either: the shard that wakes first takes
/// it, and a busy shard wakes later.
struct Shards {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Shards {
    fn start(n: usize, accepts: &[Accept], token: &CancellationToken) -> Result<Shards, ProxyError> {
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let mine = accepts
                .iter()
                .map(|a| {
                    Ok(Accept {
                        inner: a.inner.clone(),
                        state: a.state.clone(),
                        endpoint: a.endpoint,
                        listener: a.listener.try_clone().map_err(ProxyError::Api)?,
                    })
                })
                .collect::<Result<Vec<_>, ProxyError>>()?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ProxyError::Api)?;
            let token = token.clone();
            let t = std::thread::Builder::new()
                .name(format!("pgdr-proxy-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        let tracker = TaskTracker::new();
                        for a in mine {
                            match TcpListener::from_std(a.listener) {
                                Ok(l) => {
                                    tracker.spawn(accept_loop(
                                        a.inner,
                                        a.state,
                                        a.endpoint,
                                        l,
                                        token.clone(),
                                        tracker.clone(),
                                    ));
                                }
                                Err(e) => tracing::error!(error = %e, "a proxy shard cannot listen"),
                            }
                        }
                        token.cancelled().await;
                        tracker.close();
                        if tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await.is_err() {
                            tracing::warn!(tasks = tracker.len(), "proxy sessions still running after 5 s of shutdown");
                        }
                    })
                })
                .map_err(ProxyError::Api)?;
            threads.push(t);
        }
        Ok(Shards { threads })
    }
}

pub(crate) async fn serve(
    handle: ProxyHandle,
    listeners: Listeners,
    token: CancellationToken,
) -> Result<(), ProxyError> {
    let tracker = TaskTracker::new();
    let mut accepts = Vec::new();
    for cl in listeners.clusters {
        let state = handle
            .inner
            .clusters
            .get(&cl.cluster)
            .cloned()
            .ok_or_else(|| ProxyError::UnknownCluster(cl.cluster.clone()))?;
        if let crate::AuthConfig::Auto(_) = &state.auth {
            tracker.spawn(crate::session::refresh_users(state.clone(), token.clone()));
        }
        let eps = [(Some(cl.writer), Endpoint::Writer), (cl.reader, Endpoint::Reader)];
        for (l, endpoint) in eps {
            if let Some(l) = l {
                let listener = l.into_std().map_err(ProxyError::Api)?;
                accepts.push(Accept { inner: handle.inner.clone(), state: state.clone(), endpoint, listener });
            }
        }
    }
    // Half the cores: the proxy's work per transaction is small next to
    // PostgreSQL's and the clients' on the same host, and one thread serving
    // many sessions per wakeup beat two on a 2-core machine (bench/RESULTS-proxy.md).
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let shards = Shards::start((cores / 2).max(1), &accepts, &token)?;
    // The shards hold their own descriptors of the listening sockets.
    drop(accepts);
    if let Some(api) = listeners.api {
        tracker.spawn(crate::api::serve(handle.clone(), api, token.clone()));
    }
    token.cancelled().await;
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await.is_err() {
        tracing::warn!(tasks = tracker.len(), "proxy tasks still running after 5 s of shutdown");
    }
    // The shards see the token: they stop accepting and drain.
    let threads = shards.threads;
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    Ok(())
}

/// Accepts on one listener in a shard; each client's session runs on this
/// shard.
async fn accept_loop(
    inner: Arc<Inner>,
    state: Arc<ClusterState>,
    endpoint: Endpoint,
    listener: TcpListener,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let (inner, state, token) = (inner.clone(), state.clone(), token.clone());
                tracker.spawn(async move {
                    if let Err(e) = handle_client(inner, state.clone(), endpoint, stream, token).await {
                        state.metrics.error(e.kind());
                        tracing::debug!(%peer, error = %e, "client session ended with an error");
                    }
                });
            }
            // (Another shard taking a connection first is not an error:
            // tokio waits again.)
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Why a client's session ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("client IO: {0}")]
    Io(#[from] std::io::Error),
    #[error("client protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("client sent no startup packet in time")]
    StartupTimeout,
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("{0}")]
    Closed(String),
}

impl ClientError {
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Io(_) => "client_io",
            ClientError::Protocol(_) => "client_protocol",
            ClientError::StartupTimeout => "client_startup_timeout",
            ClientError::Tls(_) => "client_tls",
            ClientError::Closed(_) => "session_closed",
        }
    }
}

enum Next {
    Startup(Startup),
    Tls,
    Done,
}

/// Reads startup packets until a StartupMessage (answering SSL/GSS
/// requests, handling a cancel).
async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Inner,
    s: &mut S,
    buf: &mut BytesMut,
    tls_allowed: bool,
) -> Result<Next, ClientError> {
    loop {
        let pkt = loop {
            match protocol::split_startup(buf) {
                Ok(Some(p)) => break p,
                Ok(None) => {}
                Err(e) => {
                    let mut out = BytesMut::new();
                    protocol::put_error(&mut out, "FATAL", "08P01", &format!("invalid startup packet: {e}"));
                    let _ = s.write_all(&out).await;
                    return Err(e.into());
                }
            }
            if s.read_buf(buf).await? == 0 {
                return Ok(Next::Done);
            }
        };
        match pkt {
            StartupPacket::Ssl if tls_allowed && inner.tls.is_some() => {
                if !buf.is_empty() {
                    // Bytes after SSLRequest before the handshake would be
                    // read as if encrypted (CVE-2021-23214): refuse.
                    return Err(ProtocolError::Malformed("data after SSLRequest").into());
                }
                s.write_all(b"S").await?;
                return Ok(Next::Tls);
            }
            StartupPacket::Ssl | StartupPacket::GssEnc => s.write_all(b"N").await?,
            StartupPacket::Cancel { pid, secret } => {
                cancel(inner, pid, secret).await;
                return Ok(Next::Done);
            }
            StartupPacket::Startup(st) => return Ok(Next::Startup(st)),
        }
    }
}

async fn cancel(inner: &Inner, pid: i32, secret: i32) {
    let target = inner.cancel.lock().ok().and_then(|m| m.get(&pid).cloned());
    match target {
        Some(t) if t.secret == secret => {
            let backend = t.backend.lock().ok().and_then(|b| b.clone());
            if let Some((b, key)) = backend
                && let Err(e) = crate::backend::send_cancel(&b, key, inner.tcp).await
            {
                tracing::debug!(error = %e, "cancel request not delivered");
            }
        }
        _ => tracing::debug!(pid, "cancel request with an unknown key ignored"),
    }
}

/// One of the cluster's `max_clients` places, given back on drop.
struct ClientSlot(Arc<ClusterState>);

impl ClientSlot {
    fn take(state: &Arc<ClusterState>) -> Option<ClientSlot> {
        let max = state.settings.max_clients.max(1);
        if state.clients.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= max {
            state.clients.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            return None;
        }
        Some(ClientSlot(state.clone()))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Answers a client past `max_clients` once it sent its startup packet, as
/// PostgreSQL does past `max_connections`.
async fn too_many<S: AsyncWrite + Unpin>(state: &ClusterState, s: &mut S) -> Result<(), ClientError> {
    state.metrics.error("too_many_clients");
    let msg = format!(
        "sorry, too many clients already: the proxy of cluster {} holds at most {} (max_clients)",
        state.name, state.settings.max_clients
    );
    let mut out = BytesMut::new();
    protocol::put_error(&mut out, "FATAL", "53300", &msg);
    s.write_all(&out).await?;
    let _ = s.flush().await;
    Err(ClientError::Closed(msg))
}

/// Refuses a client that sent its startup packet without starting TLS
/// while `require_tls` is set: before authentication, so neither a
/// password nor a proof crosses the network in the clear. The same code
/// and words as PostgreSQL's for a `hostssl`-only server.
async fn tls_required<S: AsyncWrite + Unpin>(state: &ClusterState, s: &mut S) -> Result<(), ClientError> {
    state.metrics.error("tls_required");
    let msg = format!(
        "the proxy of cluster {} accepts only TLS connections (require_tls): connect with sslmode=require or stronger",
        state.name
    );
    let mut out = BytesMut::new();
    protocol::put_error(&mut out, "FATAL", "28000", &msg);
    s.write_all(&out).await?;
    let _ = s.flush().await;
    Err(ClientError::Closed(msg))
}

/// A client connection's first read buffer.
const CLIENT_BUF_START: usize = 8 * 1024;

async fn handle_client(
    inner: Arc<Inner>,
    state: Arc<ClusterState>,
    endpoint: Endpoint,
    mut stream: TcpStream,
    token: CancellationToken,
) -> Result<(), ClientError> {
    stream.set_nodelay(true)?;
    // Held for the connection's life; a client past the cap is told so
    // after its startup packet.
    let slot = ClientSlot::take(&state);
    let limit = state.settings.handshake_timeout;
    // Small at first (a login and short queries fit): the relay grows it
    // to `BUF_SIZE` when a client sends more. A connection that lives for
    // one transaction then neither allocates nor frees 64 KiB.
    let mut buf = BytesMut::with_capacity(CLIENT_BUF_START);
    let first = tokio::time::timeout(limit, negotiate(&inner, &mut stream, &mut buf, true))
        .await
        .map_err(|_| ClientError::StartupTimeout)??;
    match first {
        Next::Done => Ok(()),
        Next::Startup(_) if inner.require_tls => tls_required(&state, &mut stream).await,
        Next::Startup(_) if slot.is_none() => too_many(&state, &mut stream).await,
        // Boxed: the session's future is large, and the task would copy it
        // whole when spawned.
        Next::Startup(st) => Box::pin(crate::session::run(inner, state, endpoint, stream, buf, st, token)).await,
        Next::Tls => {
            let Some(acceptor) = inner.tls.clone() else { return Ok(()) };
            let mut tls = tokio::time::timeout(limit, acceptor.accept(stream))
                .await
                .map_err(|_| ClientError::Tls(std::io::ErrorKind::TimedOut.into()))?
                .map_err(ClientError::Tls)?;
            let next = tokio::time::timeout(limit, negotiate(&inner, &mut tls, &mut buf, false))
                .await
                .map_err(|_| ClientError::StartupTimeout)??;
            match next {
                Next::Startup(_) if slot.is_none() => too_many(&state, &mut tls).await,
                Next::Startup(st) => Box::pin(crate::session::run(inner, state, endpoint, tls, buf, st, token)).await,
                _ => Ok(()),
            }
        }
    }
}
