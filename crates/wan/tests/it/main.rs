//! Real sockets through the relay: delay applied, partition hangs, heal restores.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pgdr_wan::control::{heal, partition_region};
use pgdr_wan::{Link, Relay, Route, Wan, WanState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// An echo server on a free port; returns its address.
async fn echo_server(cancel: CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = listener.accept() => match r { Ok(x) => x, Err(_) => return },
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if sock.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn relay(target: SocketAddr, link: Link, cancel: CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let relay = Relay::new(listener, target, link);
    let addr = relay.local_addr().expect("relay addr");
    tokio::spawn(relay.run(cancel));
    addr
}

async fn round_trip(sock: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    sock.write_all(msg).await?;
    let mut got = vec![0u8; msg.len()];
    sock.read_exact(&mut got).await?;
    Ok(got)
}

#[tokio::test]
async fn delay_is_applied_each_way_and_order_kept() {
    let cancel = CancellationToken::new();
    let echo = echo_server(cancel.clone()).await;
    let delay = Duration::from_millis(60);
    let addr = relay(echo, Link::new(delay), cancel.clone()).await;
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    for i in 0..3u8 {
        let msg: Vec<u8> = (0..100u8).map(|b| b.wrapping_add(i)).collect();
        let t = Instant::now();
        let got = round_trip(&mut sock, &msg).await.expect("round trip");
        let rtt = t.elapsed();
        assert_eq!(got, msg, "bytes arrive intact and in order");
        println!("round trip {i}: {rtt:?} (one-way delay {delay:?})");
        assert!(rtt >= delay * 2, "a round trip crosses the link twice: {rtt:?} < {:?}", delay * 2);
    }
    // Many small writes stay in order.
    let mut expected = Vec::new();
    for i in 0..200u32 {
        let chunk = i.to_be_bytes();
        expected.extend_from_slice(&chunk);
        sock.write_all(&chunk).await.expect("write");
    }
    let mut got = vec![0u8; expected.len()];
    sock.read_exact(&mut got).await.expect("read back");
    assert_eq!(got, expected);
    cancel.cancel();
}

#[tokio::test]
async fn partition_hangs_both_ways_without_reset_and_heal_restores() {
    let cancel = CancellationToken::new();
    let echo = echo_server(cancel.clone()).await;
    let link = Link::new(Duration::from_millis(5));
    let addr = relay(echo, link.clone(), cancel.clone()).await;
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(round_trip(&mut sock, b"before").await.expect("before"), b"before");

    link.partition();
    // An established connection: the write is accepted locally, the answer
    // never comes, and the socket is neither closed nor reset.
    sock.write_all(b"during").await.expect("a write into a partition succeeds locally");
    let mut buf = [0u8; 6];
    let read = tokio::time::timeout(Duration::from_millis(700), sock.read(&mut buf)).await;
    assert!(read.is_err(), "the read must hang (timed out), not end: got {read:?}");

    // A new connection: not refused, not reset; it just never answers.
    let mut fresh = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .expect("connect does not hang at the SYN on loopback")
        .expect("a partition does not refuse connections");
    fresh.write_all(b"hello!").await.expect("write on a stalled connection");
    let mut buf2 = [0u8; 6];
    let read = tokio::time::timeout(Duration::from_millis(500), fresh.read(&mut buf2)).await;
    assert!(read.is_err(), "the new connection must stall: got {read:?}");

    link.heal();
    // Held bytes are delivered, in order, on both connections.
    let got = tokio::time::timeout(Duration::from_secs(5), sock.read_exact(&mut buf)).await;
    assert!(matches!(got, Ok(Ok(6))), "held bytes arrive after heal: {got:?}");
    assert_eq!(&buf, b"during");
    let got = tokio::time::timeout(Duration::from_secs(5), fresh.read_exact(&mut buf2)).await;
    assert!(matches!(got, Ok(Ok(6))), "stalled connection proceeds after heal: {got:?}");
    assert_eq!(&buf2, b"hello!");
    assert_eq!(round_trip(&mut sock, b"after!").await.expect("after"), b"after!");
    cancel.cancel();
}

#[tokio::test]
async fn close_during_partition_is_held_until_heal() {
    let cancel = CancellationToken::new();
    let echo = echo_server(cancel.clone()).await;
    let link = Link::new(Duration::ZERO);
    let addr = relay(echo, link.clone(), cancel.clone()).await;
    // The server side closing is what we watch: use a listener that closes
    // the connection right away.
    let closer = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closer_addr = closer.local_addr().expect("addr");
    let link2 = Link::new(Duration::ZERO);
    let addr2 = relay(closer_addr, link2.clone(), cancel.clone()).await;
    link2.partition();
    let mut sock = TcpStream::connect(addr2).await.expect("connect");
    // Nothing reaches the server while partitioned: no accept-then-close seen.
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(400), sock.read(&mut buf)).await;
    assert!(read.is_err(), "no FIN while partitioned: {read:?}");
    link2.heal();
    let (server_side, _) = tokio::time::timeout(Duration::from_secs(5), closer.accept())
        .await
        .expect("the relay connects after heal")
        .expect("accept");
    drop(server_side);
    let read = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0))), "after heal the close arrives: {read:?}");
    let _ = addr;
    cancel.cancel();
}

#[tokio::test]
async fn control_file_partitions_a_region_from_another_process_view() {
    let cancel = CancellationToken::new();
    let echo = echo_server(cancel.clone()).await;
    let dir = tempfile::Builder::new().prefix("pgdr-wan-").tempdir_in("/tmp").expect("tempdir");
    let control = dir.path().join("wan.json");
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr")
    };
    let routes =
        vec![Route { name: "replication".into(), listen, target: echo, from: "west".into(), to: "east".into() }];
    let state = WanState { delay_ms: 10, partitioned: Default::default() };
    state.store(&control).expect("write control");
    let wan = Wan::bind(routes, &state).await.expect("bind");
    tokio::spawn(wan.run(Some(control.clone()), cancel.clone()));

    let mut sock = TcpStream::connect(listen).await.expect("connect");
    assert_eq!(round_trip(&mut sock, b"one").await.expect("one"), b"one");

    // Partitioning an unrelated region changes nothing.
    partition_region(&control, "north").expect("partition north");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(round_trip(&mut sock, b"two").await.expect("two"), b"two");

    partition_region(&control, "east").expect("partition east");
    tokio::time::sleep(Duration::from_millis(300)).await;
    sock.write_all(b"three").await.expect("write");
    let mut buf = [0u8; 5];
    let read = tokio::time::timeout(Duration::from_millis(500), sock.read_exact(&mut buf)).await;
    assert!(read.is_err(), "east is cut off: {read:?}");

    heal(&control, None).expect("heal");
    let read = tokio::time::timeout(Duration::from_secs(5), sock.read_exact(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(5))), "healed: {read:?}");
    assert_eq!(&buf, b"three");
    cancel.cancel();
}
