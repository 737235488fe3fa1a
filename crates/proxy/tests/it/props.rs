//! Property tests of the proxy's decoders and its SCRAM server on hostile
//! input (bounded case counts: they run in seconds in `scripts/test`; the
//! cargo-fuzz target in `fuzz/` is for longer runs): nothing panics, a
//! hostile length never makes the proxy allocate or wait for more than its
//! caps, and what an encoder writes decodes back to itself.

use bytes::{BufMut, BytesMut};
use pgdr_proxy::protocol::{self, MAX_DECODED, MAX_STARTUP, Startup, StartupPacket};
use pgdr_proxy::scram::{ClientKey, ScramClient, ScramError, ScramServer, Verifier};
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// A C string without NUL.
fn cstr() -> impl Strategy<Value = String> {
    "[^\\x00]{0,24}"
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

proptest! {
    #![proptest_config(config(512))]

    /// Any bytes: a whole message within the cap, "need more", or an error;
    /// the buffer is only ever split, never grown.
    #[test]
    fn split_message_on_any_bytes(data in bytes(64), cap in 4usize..(1 << 20)) {
        let mut buf = BytesMut::from(&data[..]);
        let capacity = buf.capacity();
        match protocol::split_message(&mut buf, cap) {
            Ok(Some(m)) => {
                prop_assert!(m.len() >= 5 && m.len() <= cap + 1);
                prop_assert_eq!(m.len() + buf.len(), data.len());
                prop_assert_eq!(&m[..], &data[..m.len()]);
            }
            Ok(None) => prop_assert_eq!(buf.len(), data.len()),
            Err(_) => {}
        }
        prop_assert!(buf.capacity() <= capacity);
    }

    /// A declared length past the cap is an error at once, whatever the
    /// rest: the proxy never waits for (or reserves) a gigabyte.
    #[test]
    fn hostile_lengths_are_refused(tag in any::<u8>(), len in any::<i32>(), rest in bytes(16)) {
        let mut buf = BytesMut::new();
        buf.put_u8(tag);
        buf.put_i32(len);
        buf.put_slice(&rest);
        let r = protocol::split_message(&mut buf, MAX_DECODED);
        if len < 4 || len as usize > MAX_DECODED {
            prop_assert!(r.is_err());
        } else {
            prop_assert!(r.is_ok());
        }
        let mut start = BytesMut::new();
        start.put_i32(len);
        start.put_slice(&rest);
        let r = protocol::split_startup(&mut start);
        if !(8..=MAX_STARTUP as i32).contains(&len) {
            prop_assert!(r.is_err());
        }
    }

    /// Any bytes as a startup packet: never a panic; a decoded
    /// StartupMessage encodes back to the same packet.
    #[test]
    fn split_startup_on_any_bytes(data in bytes(96)) {
        let mut buf = BytesMut::from(&data[..]);
        if let Ok(Some(StartupPacket::Startup(st))) = protocol::split_startup(&mut buf) {
            let consumed = data.len() - buf.len();
            let mut again = BytesMut::new();
            st.encode(&mut again);
            prop_assert_eq!(&again[8..], &data[8..consumed]);
        }
    }

    /// A StartupMessage with any parameters decodes to itself.
    #[test]
    fn startup_round_trip(user in cstr(), params in proptest::collection::vec((cstr(), cstr()), 0..6)) {
        let mut all = vec![("user".to_owned(), user)];
        all.extend(params.into_iter().filter(|(k, _)| !k.is_empty()));
        let st = Startup { params: all };
        let mut buf = BytesMut::new();
        st.encode(&mut buf);
        let len = buf.len();
        match protocol::split_startup(&mut buf) {
            Ok(Some(StartupPacket::Startup(got))) => prop_assert_eq!(got, st),
            other if len > MAX_STARTUP => prop_assert!(other.is_err()),
            other => prop_assert!(false, "decoded {:?}", other),
        }
    }

    /// ErrorResponse and ParameterStatus: what is written is read back.
    #[test]
    fn error_and_parameter_round_trip(sev in "[A-Z]{1,7}", code in "[0-9A-Z]{5}", msg in cstr(), k in cstr(), v in cstr()) {
        let mut buf = BytesMut::new();
        protocol::put_error(&mut buf, &sev, &code, &msg);
        let m = protocol::split_message(&mut buf, MAX_DECODED).ok().flatten().expect("a whole message");
        let f = protocol::parse_error(protocol::body(&m));
        prop_assert_eq!(f.severity, sev.as_bytes());
        prop_assert_eq!(f.code, code.as_bytes());
        prop_assert_eq!(f.message, msg.as_bytes());
        let mut buf = BytesMut::new();
        protocol::put_parameter_status(&mut buf, &k, &v);
        let m = protocol::split_message(&mut buf, MAX_DECODED).ok().flatten().expect("a whole message");
        prop_assert_eq!(protocol::parse_parameter_status(protocol::body(&m)), Some((k.as_bytes(), v.as_bytes())));
    }

    /// The body parsers and SQL scanners on any bytes: never a panic.
    #[test]
    fn body_parsers_on_any_bytes(body in bytes(128)) {
        let _ = protocol::parse_error(&body);
        let _ = protocol::parse_parameter_status(&body);
        let _ = protocol::parse_statement_name(&body);
        let _ = protocol::parse_query_text(&body);
        let _ = protocol::bind_statement_name(&body);
        let _ = protocol::target(&body);
        let _ = protocol::unmovable_state(&body);
        let _ = protocol::is_session_set(&body);
        let _ = protocol::contains_ci(&body, b"set");
        let _ = protocol::body(&body);
    }

    /// The SCRAM server on any client messages: an error, never a panic,
    /// and never a success without the key.
    #[test]
    fn scram_server_on_any_text(first in ".{0,80}", last in ".{0,120}", known in any::<bool>()) {
        let v = Verifier::from_password("pw", b"0123456789abcdef", 1);
        let verifier = known.then_some(v);
        let first = format!("n,,n=,r={first}");
        if let Ok((s, _)) = ScramServer::start(verifier.clone(), &[0; 16], &first) {
            prop_assert!(s.finish(&last).is_err());
        }
        let _ = ScramServer::start(verifier, &[0; 16], &last);
        let _ = Verifier::parse(&last);
    }

    /// A verifier encodes and parses back to itself.
    #[test]
    fn verifier_round_trip(iterations in any::<u32>(), salt in bytes(40), sk in any::<[u8; 32]>(), srv in any::<[u8; 32]>()) {
        let v = Verifier { iterations, salt, stored_key: sk, server_key: srv };
        prop_assert_eq!(Verifier::parse(&v.encode()), Ok(v));
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// A full exchange with any password and salt succeeds with the right
    /// password, recovers the ClientKey, and fails at the proof with any
    /// flipped proof bit.
    #[test]
    fn scram_exchange(password in ".{0,20}", salt in bytes(24), bit in 0usize..256) {
        let v = Verifier::from_password(&password, &salt, 2);
        let key = ClientKey::from_password(&password, &salt, 2);
        let (mut c, first) = ScramClient::new(key.clone(), Some(v.server_key));
        let (s, server_first) = ScramServer::start(Some(v.clone()), &[0; 16], &first).expect("start");
        let fin = c.respond(&server_first).expect("respond");
        let (got, server_final) = s.finish(&fin).expect("the right password");
        prop_assert_eq!(got, key.clone());
        prop_assert!(c.verify(&server_final).is_ok());

        // The same exchange with one bit of the proof flipped.
        let (mut c, first) = ScramClient::new(key, None);
        let (s, server_first) = ScramServer::start(Some(v), &[0; 16], &first).expect("start");
        let fin = c.respond(&server_first).expect("respond");
        let (head, proof) = fin.rsplit_once(",p=").expect("proof");
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut p = b64.decode(proof).expect("b64");
        p[bit / 8] ^= 1 << (bit % 8);
        prop_assert_eq!(s.finish(&format!("{head},p={}", b64.encode(p))).map(|_| ()), Err(ScramError::BadProof));
    }
}
