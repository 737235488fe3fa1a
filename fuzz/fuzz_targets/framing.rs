//! Feeds arbitrary bytes to the proxy's framing and decoders: startup
//! packets, regular messages in both directions, the decoded message kinds,
//! the cheap SQL scans and the SCRAM server. None may panic, loop or
//! allocate without bound.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgdr_proxy::protocol::{self, MAX_DECODED, MAX_MESSAGE};
use pgdr_proxy::scram::{ScramServer, Verifier};

fuzz_target!(|data: &[u8]| {
    // A client: one startup packet, then regular messages.
    let mut buf = BytesMut::from(data);
    if let Ok(Some(_)) = protocol::split_startup(&mut buf) {
        frames(&mut buf);
    }
    // A server: regular messages only.
    let mut buf = BytesMut::from(data);
    frames(&mut buf);
    // SCRAM with whatever text the bytes make.
    let text = String::from_utf8_lossy(data);
    let mut mid = text.len() / 2;
    while !text.is_char_boundary(mid) {
        mid -= 1;
    }
    let (first, last) = text.split_at(mid);
    let v = Verifier::from_password("pw", b"salt", 1);
    if let Ok((s, _)) = ScramServer::start(Some(v), &[0; 16], first) {
        let _ = s.finish(last);
    }
    let _ = Verifier::parse(&text);
});

fn frames(buf: &mut BytesMut) {
    while let Ok(Some(h)) = protocol::header(buf, MAX_MESSAGE) {
        if h.total > buf.len() {
            break;
        }
        let Ok(Some(msg)) = protocol::split_message(buf, MAX_MESSAGE) else { break };
        let body = protocol::body(&msg);
        if msg.len() <= MAX_DECODED {
            let _ = protocol::parse_error(body);
            let _ = protocol::parse_parameter_status(body);
            let _ = protocol::parse_statement_name(body);
            let _ = protocol::parse_query_text(body);
            let _ = protocol::bind_statement_name(body);
            let _ = protocol::target(body);
            let _ = protocol::unmovable_state(body);
            let _ = protocol::is_session_set(body);
        }
    }
}
