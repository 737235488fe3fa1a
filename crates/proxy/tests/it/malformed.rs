//! Malformed protocol input ends only the offending client.

use std::time::Duration;

use pgdr_proxy::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Proxy, Servers, auto_auth};

/// Sends `bytes` on a fresh connection; returns what the proxy answered
/// before closing (it must close).
async fn send_raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out))
        .await
        .expect("the proxy closes the connection")
        .ok();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_closes_only_that_client() {
    let servers = Servers::start(false).await;
    let proxy = Proxy::start(servers.routing(), auto_auth(), Settings::default()).await;
    let good = proxy.connect().await;
    good.simple_query("SELECT 1").await.expect("good client works");

    // Garbage before the startup packet.
    let out = send_raw(proxy.writer, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(out.first(), Some(&b'E'), "an ErrorResponse first: {out:?}");
    // Absurd startup length, negative length, truncated startup.
    send_raw(proxy.writer, &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]).await;
    send_raw(proxy.writer, &[0xff, 0xff, 0xff, 0xf0]).await;
    send_raw(proxy.writer, &[0, 0, 0, 40, 0, 3, 0, 0, b'u']).await;
    // Unknown protocol version.
    send_raw(proxy.writer, &[0, 0, 0, 8, 0, 9, 0, 0]).await;
    // Random bytes.
    let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    send_raw(proxy.writer, &noise).await;

    // A logged-in session that then sends an absurd message length and a
    // truncated message: it gets an error and is closed; others are fine.
    let bad = proxy.connect().await;
    let bad_conn = crate::harness::connect(&proxy.conninfo(proxy.writer)).await.expect("second");
    drop(bad_conn);
    drop(bad);
    let mut raw = login_raw(&proxy).await;
    raw.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff]).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut out)).await.expect("closed").ok();
    assert!(out.windows(5).any(|w| w == b"08P01"), "protocol violation error: {:?}", String::from_utf8_lossy(&out));
    let mut raw = login_raw(&proxy).await;
    raw.write_all(&[b'Q', 0, 0, 0, 2]).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut out)).await.expect("closed").ok();
    assert!(out.windows(5).any(|w| w == b"08P01"), "protocol violation error");
    // Truncated message then hang-up mid-message.
    let mut raw = login_raw(&proxy).await;
    raw.write_all(&[b'Q', 0, 0, 0, 100, b'S', b'E']).await.expect("write");
    drop(raw);

    good.simple_query("SELECT 2").await.expect("the good client still works");
    let fresh = proxy.connect().await;
    fresh.simple_query("SELECT 3").await.expect("new clients still work");
}

/// Logs in over a raw socket (SCRAM with the password), so the test can
/// then write malformed bytes into a live session.
async fn login_raw(proxy: &Proxy) -> tokio::net::TcpStream {
    use pgdr_proxy::protocol;
    use pgdr_proxy::scram::{ClientKey, ScramClient};
    let mut s = tokio::net::TcpStream::connect(proxy.writer).await.expect("connect");
    let mut b = bytes::BytesMut::new();
    protocol::Startup { params: vec![("user".into(), "postgres".into()), ("database".into(), "postgres".into())] }
        .encode(&mut b);
    s.write_all(&b).await.expect("startup");
    let mut buf = bytes::BytesMut::new();
    let mut client: Option<ScramClient> = None;
    loop {
        let m = loop {
            if let Some(m) = protocol::split_message(&mut buf, 1 << 20).expect("frame") {
                break m;
            }
            assert!(s.read_buf(&mut buf).await.expect("read") > 0, "closed during login");
        };
        let body = protocol::body(&m).to_vec();
        match m[0] {
            b'R' => {
                let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let mut out = bytes::BytesMut::new();
                match code {
                    10 => {
                        // Learn salt/iterations from server-first below.
                        let (c, first) = ScramClient::new(ClientKey([0; 32]), None);
                        client = Some(c);
                        protocol::put_message(&mut out, b'p', |o| {
                            use bytes::BufMut;
                            protocol::put_cstr(o, "SCRAM-SHA-256");
                            o.put_i32(first.len() as i32);
                            o.put_slice(first.as_bytes());
                        });
                    }
                    11 => {
                        let sf = String::from_utf8_lossy(&body[4..]).into_owned();
                        let salt = sf.split(',').find_map(|p| p.strip_prefix("s=")).expect("salt");
                        let iters: u32 =
                            sf.split(',').find_map(|p| p.strip_prefix("i=")).expect("iters").parse().expect("int");
                        use base64::Engine;
                        let salt = base64::engine::general_purpose::STANDARD.decode(salt).expect("b64");
                        let key = ClientKey::from_password(crate::harness::PASSWORD, &salt, iters);
                        let mut c = client.take().expect("client");
                        c.set_key(key);
                        let fin = c.respond(&sf).expect("respond");
                        protocol::put_message(&mut out, b'p', |o| {
                            use bytes::BufMut;
                            o.put_slice(fin.as_bytes())
                        });
                        client = Some(c);
                    }
                    _ => {}
                }
                if !out.is_empty() {
                    s.write_all(&out).await.expect("auth reply");
                }
            }
            b'Z' => return s,
            b'E' => panic!("login refused: {:?}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
}
