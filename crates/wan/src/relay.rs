//! [`Relay`]: forwards connections from one listener to one target through a
//! [`Link`], delaying bytes each way and holding them while partitioned.
//!
//! Each direction of a connection is a reader task and a writer task joined
//! by a bounded queue. The reader stamps each chunk with its release time
//! (read time + delay); the writer sleeps until then, waits while the link is
//! partitioned, and writes. End of stream and resets travel through the same
//! queue, so a FIN or RST is delayed and held like data: a partition never
//! shows a peer a closed socket.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::link::Link;

/// Chunks queued per direction before the reader stops reading (and the
/// sender's kernel buffers fill, as they would on a slow real link).
const QUEUE: usize = 256;
const CHUNK: usize = 64 * 1024;

/// One relayed path: `listener` → `target` through `link`.
pub struct Relay {
    listener: TcpListener,
    target: SocketAddr,
    link: Link,
}

impl Relay {
    pub fn new(listener: TcpListener, target: SocketAddr, link: Link) -> Relay {
        Relay { listener, target, link }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Accepts and relays connections until `cancel`; then drops every
    /// connection and returns.
    pub async fn run(self, cancel: CancellationToken) {
        let tracker = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.listener.accept() => r,
            };
            match accepted {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    tracker.spawn(connection(sock, self.target, self.link.clone(), cancel.child_token()));
                }
                Err(e) => {
                    tracing::warn!(target = %self.target, "relay accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tracker.close();
        tracker.wait().await;
    }
}

/// What travels through a direction's queue.
enum Piece {
    Data(Bytes, Instant),
    /// The sender closed its side (FIN).
    Eof(Instant),
    /// The sender's socket failed or was reset.
    Reset(Instant),
}

async fn connection(client: TcpStream, target: SocketAddr, link: Link, cancel: CancellationToken) {
    // A partitioned path never answers a SYN; our kernel already has, so the
    // closest we can do is accept and stall without reading.
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = link.wait_healed() => {}
    }
    let server = tokio::select! {
        _ = cancel.cancelled() => return,
        r = TcpStream::connect(target) => r,
    };
    let server = match server {
        Ok(s) => s,
        Err(_) => {
            // The far host answered with a refusal: it travels back over the
            // link, then the client sees a reset.
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(link.delay()) => {}
            }
            reset(&client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let stop = cancel.child_token();
    let up = direction(cr, sw, link.clone(), stop.clone());
    let down = direction(sr, cw, link, stop);
    tokio::join!(up, down);
}

/// Makes closing this socket send RST instead of FIN.
fn reset(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

async fn direction(mut from: OwnedReadHalf, to: OwnedWriteHalf, link: Link, stop: CancellationToken) {
    let (tx, rx) = mpsc::channel::<Piece>(QUEUE);
    let reader_link = link.clone();
    let reader_stop = stop.clone();
    let reader = async move {
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            buf.reserve(CHUNK);
            let read = tokio::select! {
                _ = reader_stop.cancelled() => return,
                r = from.read_buf(&mut buf) => r,
            };
            let release = Instant::now() + reader_link.delay();
            let piece = match read {
                Ok(0) => Piece::Eof(release),
                Ok(_) => Piece::Data(buf.split().freeze(), release),
                Err(_) => Piece::Reset(release),
            };
            let last = !matches!(piece, Piece::Data(..));
            if tx.send(piece).await.is_err() || last {
                return;
            }
        }
    };
    tokio::join!(reader, write_side(rx, to, link, stop));
}

async fn write_side(mut rx: mpsc::Receiver<Piece>, mut to: OwnedWriteHalf, link: Link, stop: CancellationToken) {
    loop {
        let piece = tokio::select! {
            _ = stop.cancelled() => return,
            p = rx.recv() => p,
        };
        let Some(piece) = piece else { return };
        let release = match &piece {
            Piece::Data(_, at) | Piece::Eof(at) | Piece::Reset(at) => *at,
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = async {
                tokio::time::sleep_until(release).await;
                link.wait_healed().await;
            } => {}
        }
        match piece {
            Piece::Data(bytes, _) => {
                let ok = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = to.write_all(&bytes) => r.is_ok(),
                };
                if !ok {
                    // The receiving peer is gone: end both directions.
                    stop.cancel();
                    return;
                }
            }
            Piece::Eof(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Piece::Reset(_) => {
                reset(to.as_ref());
                stop.cancel();
                return;
            }
        }
    }
}
