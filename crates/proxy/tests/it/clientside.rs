//! The proxy's client side against hostile or unlucky clients: user names
//! cannot be probed through SCRAM, a connection cap answered with 53300,
//! clients that have not authenticated take no place in the pause queue,
//! and a client that stalls its TLS handshake or its login is cut off.

use std::time::Duration;

use base64::Engine;
use bytes::{BufMut, BytesMut};
use pgdr_proxy::Settings;
use pgdr_proxy::protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Proxy, Servers, auto_auth};

/// Reads one whole message from the proxy.
async fn read_msg(s: &mut TcpStream, buf: &mut BytesMut) -> Option<BytesMut> {
    loop {
        if let Some(m) = protocol::split_message(buf, 1 << 20).expect("frame") {
            return Some(m);
        }
        match tokio::time::timeout(Duration::from_secs(20), s.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// Sends the startup packet and the client-first-message for `user`;
/// returns the connection and the server-first-message.
async fn scram_start(addr: std::net::SocketAddr, user: &str) -> (TcpStream, BytesMut, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut b = BytesMut::new();
    protocol::Startup { params: vec![("user".into(), user.into()), ("database".into(), "postgres".into())] }
        .encode(&mut b);
    s.write_all(&b).await.expect("startup");
    let mut buf = BytesMut::new();
    let m = read_msg(&mut s, &mut buf).await.expect("AuthenticationSASL");
    assert_eq!(&m[..1], b"R");
    assert_eq!(&protocol::body(&m)[..4], &10i32.to_be_bytes(), "SASL for {user}");
    let first = "n,,n=,r=abcdefghijklmnopqrstuvwx";
    let mut out = BytesMut::new();
    protocol::put_message(&mut out, b'p', |o| {
        protocol::put_cstr(o, "SCRAM-SHA-256");
        o.put_i32(first.len() as i32);
        o.put_slice(first.as_bytes());
    });
    s.write_all(&out).await.expect("client-first");
    let m = read_msg(&mut s, &mut buf).await.expect("AuthenticationSASLContinue");
    assert_eq!(&protocol::body(&m)[..4], &11i32.to_be_bytes());
    (s, buf, String::from_utf8_lossy(&protocol::body(&m)[4..]).into_owned())
}

fn attr<'a>(msg: &'a str, name: &str) -> &'a str {
    msg.split(',').find_map(|p| p.strip_prefix(name)).expect("attribute")
}

/// Sends a proof made from `password` and returns the error the proxy ends
/// the exchange with.
async fn scram_finish(mut s: TcpStream, mut buf: BytesMut, server_first: &str, password: &str) -> String {
    use pgdr_proxy::scram::{ClientKey, ScramClient};
    let salt = base64::engine::general_purpose::STANDARD.decode(attr(server_first, "s=")).expect("salt");
    let iters: u32 = attr(server_first, "i=").parse().expect("iterations");
    let key = ClientKey::from_password(password, &salt, iters);
    let (mut c, _) = ScramClient::with_nonce(key, None, "abcdefghijklmnopqrstuvwx");
    let fin = c.respond(server_first).expect("respond");
    let mut out = BytesMut::new();
    protocol::put_message(&mut out, b'p', |o| o.put_slice(fin.as_bytes()));
    s.write_all(&out).await.expect("client-final");
    let m = read_msg(&mut s, &mut buf).await.expect("an answer");
    assert_eq!(&m[..1], b"E", "an error, not {:?}", m[0] as char);
    String::from_utf8_lossy(protocol::body(&m)).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_look_like_wrong_passwords() {
    let servers = Servers::start(false).await;
    let proxy = Proxy::start(servers.routing(), auto_auth(), Settings::default()).await;
    // Learn the real users' verifiers first (auto mode reads them).
    proxy.connect().await.simple_query("SELECT 1").await.expect("query");

    // The same salt for the same unknown user, as for a real user, with
    // the real users' salt length and iteration count.
    let (_s, _b, first_a) = scram_start(proxy.writer, "nobody").await;
    let (s, b, first_b) = scram_start(proxy.writer, "nobody").await;
    assert_eq!(attr(&first_a, "s="), attr(&first_b, "s="), "the mock salt is deterministic");
    let (_s2, _b2, other) = scram_start(proxy.writer, "somebody").await;
    assert_ne!(attr(&first_a, "s="), attr(&other, "s="), "each user name its own salt");
    let (rs, rb, real) = scram_start(proxy.writer, "postgres").await;
    let salt_len = |m: &str| base64::engine::general_purpose::STANDARD.decode(attr(m, "s=")).expect("b64").len();
    assert_eq!(salt_len(&first_a), salt_len(&real));
    assert_eq!(attr(&first_a, "i="), attr(&real, "i="));

    // Both fail the same way, at the end.
    let unknown = scram_finish(s, b, &first_b, "guess").await;
    let wrong = scram_finish(rs, rb, &real, "guess").await;
    assert!(unknown.contains("28P01") && unknown.contains("password authentication failed for user \"nobody\""));
    assert!(wrong.contains("28P01") && wrong.contains("password authentication failed for user \"postgres\""));
    assert_eq!(unknown.replace("nobody", "U"), wrong.replace("postgres", "U"), "the same error but for the name");

    // And through psql.
    let out = tokio::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.writer.port().to_string(),
            "-U",
            "nobody",
            "-d",
            "postgres",
            "-c",
            "select 1",
        ])
        .env("PGPASSWORD", "guess")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .expect("psql");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("password authentication failed for user \"nobody\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_and_the_pause_queue() {
    let servers = Servers::start(false).await;

    // Three clients held: a fourth is refused with 53300, by psql's account
    // too; once one leaves, a new client gets its place.
    let capped = Proxy::start(servers.routing(), auto_auth(), Settings { max_clients: 3, ..Settings::default() }).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let c = capped.connect().await;
        c.simple_query("SELECT 1").await.expect("query");
        held.push(c);
    }
    let (ok, _, err) =
        crate::harness::client_program("psql", capped.writer.port(), &["-d", "postgres", "-c", "select 1"], None).await;
    assert!(!ok);
    assert!(err.contains("too many clients"), "{err}");
    match crate::harness::connect(&capped.conninfo(capped.reader)).await {
        Err(e) => assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e}"),
        Ok(_) => panic!("a client past max_clients was let in"),
    }
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match crate::harness::connect(&capped.conninfo(capped.writer)).await {
            Ok(c) => {
                c.simple_query("SELECT 2").await.expect("query");
                break;
            }
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "no place freed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);

    // Paused, with room for one waiter: a client stalled in its SCRAM
    // exchange (it got its challenge: it was not queued before proving who
    // it is) holds no place in the queue, so an authenticated client still
    // gets it; the stalled login is cut off after auth_timeout.
    let settings = Settings {
        max_queue: 1,
        max_pause: Duration::from_secs(30),
        auth_timeout: Duration::from_secs(5),
        ..Settings::default()
    };
    let proxy = Proxy::start(servers.routing(), auto_auth(), settings).await;
    proxy.connect().await.simple_query("SELECT 1").await.expect("query");
    proxy.handle.pause("main").await.expect("pause");
    let (mut s, mut buf, _) = scram_start(proxy.writer, "postgres").await;
    assert_eq!(proxy.handle.status().clusters[0].queued, 0, "an unauthenticated client is not queued");
    let conninfo = proxy.conninfo(proxy.writer);
    let queued = tokio::spawn(async move { crate::harness::connect(&conninfo).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while proxy.handle.status().clusters[0].queued == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the authenticated client never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = read_msg(&mut s, &mut buf).await.expect("an error before the close");
    assert!(String::from_utf8_lossy(&m).contains("authentication did not finish"), "{m:?}");
    assert!(read_msg(&mut s, &mut buf).await.is_none(), "closed after the timeout");
    proxy.handle.resume("main").expect("resume");
    let b = queued.await.expect("join").expect("the queued client logs in after the resume");
    b.simple_query("SELECT 2").await.expect("query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_is_cut_off() {
    let servers = Servers::start(false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("proxy.crt"), dir.path().join("proxy.key"));
    let ok = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl")
        .status
        .success();
    assert!(ok, "openssl made a certificate");
    let settings = Settings { handshake_timeout: Duration::from_secs(1), ..Settings::default() };
    let proxy = Proxy::start_tls(servers.routing(), auto_auth(), settings, Some((cert, key))).await;
    let mut s = TcpStream::connect(proxy.writer).await.expect("connect");
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.expect("SSLRequest");
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.expect("answer");
    assert_eq!(&one, b"S");
    // Send nothing: the proxy gives up on the handshake and closes.
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "the proxy closed a stalled TLS handshake");
    // Clients that do complete it are served.
    let (ok, out, err) =
        crate::harness::client_program("psql", proxy.writer.port(), &["-d", "postgres", "-Atc", "select 1"], None)
            .await;
    assert!(ok && out.trim() == "1", "{out} {err}");
}
