//! RFC 2136 updates signed with TSIG against a real BIND 9 (`named` from
//! Debian's `bind9`) started on a free loopback port for each test.

use std::time::Duration;

use pgdr_dns::testing::{Named, NamedZone};
use pgdr_dns::{Algorithm, DnsError, Target, TsigKey, WriterRecord, lookup, replace};

const SECRET: &str = "cGdkci10ZXN0LXRzaWctc2VjcmV0LTMyLWJ5dGVzISE=";
const T: Duration = Duration::from_secs(5);

fn named(dir: &std::path::Path) -> Named {
    let zone = NamedZone {
        zone: "pgdr.test".into(),
        key_name: "pgdr-key".into(),
        algorithm: Algorithm::HmacSha256,
        secret: SECRET.into(),
    };
    Named::start(dir, &zone).expect("start named (Debian's bind9; scripts/setup installs it)")
}

fn record(target: Target) -> WriterRecord {
    WriterRecord { zone: "pgdr.test".into(), name: "main-writer.pgdr.test".into(), ttl: 30, target }
}

#[tokio::test]
async fn a_signed_update_moves_the_writer_name_between_addresses_and_an_alias() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = named(dir.path());
    let key = TsigKey::new("pgdr-key", Algorithm::HmacSha256, SECRET).expect("key");
    let name = "main-writer.pgdr.test";

    let east = Target::Addresses(vec!["10.0.1.20".parse().expect("ip"), "fd00::1:20".parse().expect("ip")]);
    replace(ns.addr, &record(east), &key, T).await.unwrap_or_else(|e| panic!("{e}\n{}", ns.log_tail()));
    assert_eq!(lookup(ns.addr, name, "A", T).await.expect("A"), ["10.0.1.20"]);
    assert_eq!(lookup(ns.addr, name, "AAAA", T).await.expect("AAAA"), ["fd00::1:20"]);

    // To an alias: the addresses go in the same update.
    replace(ns.addr, &record(Target::Alias("west-pg.example.net".into())), &key, T).await.expect("to CNAME");
    assert_eq!(lookup(ns.addr, name, "CNAME", T).await.expect("CNAME"), ["west-pg.example.net."]);
    assert!(lookup(ns.addr, name, "AAAA", T).await.expect("AAAA").is_empty());

    // And back; sending the same update twice changes nothing.
    let west = Target::Addresses(vec!["10.0.2.20".parse().expect("ip")]);
    for _ in 0..2 {
        replace(ns.addr, &record(west.clone()), &key, T).await.expect("to A");
    }
    assert_eq!(lookup(ns.addr, name, "A", T).await.expect("A"), ["10.0.2.20"]);
    assert!(lookup(ns.addr, name, "CNAME", T).await.expect("CNAME").is_empty());
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_said_so_and_the_record_is_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = named(dir.path());
    let good = TsigKey::new("pgdr-key", Algorithm::HmacSha256, SECRET).expect("key");
    let a = |ip: &str| record(Target::Addresses(vec![ip.parse().expect("ip")]));
    replace(ns.addr, &a("10.0.1.20"), &good, T).await.expect("first update");

    // The right name with another secret: BADSIG.
    let wrong_secret = TsigKey::new("pgdr-key", Algorithm::HmacSha256, "d3Jvbmctc2VjcmV0").expect("key");
    let e = replace(ns.addr, &a("10.9.9.9"), &wrong_secret, T).await.expect_err("a wrong secret is refused");
    eprintln!("wrong secret: {e}");
    assert!(matches!(&e, DnsError::Refused { tsig: Some(t), .. } if t == "BADSIG"), "{e:?}");
    assert!(!e.is_retryable());
    assert!(!e.to_string().contains("d3Jvbmct"), "the secret is never in a message: {e}");

    // A name the server does not know: BADKEY.
    let unknown = TsigKey::new("other-key", Algorithm::HmacSha256, SECRET).expect("key");
    let e = replace(ns.addr, &a("10.9.9.9"), &unknown, T).await.expect_err("an unknown key is refused");
    eprintln!("unknown key: {e}");
    assert!(matches!(&e, DnsError::Refused { tsig: Some(t), .. } if t == "BADKEY"), "{e:?}");
    assert_eq!(e.kind(), "tsig_refused");

    assert_eq!(lookup(ns.addr, "main-writer.pgdr.test", "A", T).await.expect("A"), ["10.0.1.20"]);

    // A server that is gone: worth retrying.
    let addr = ns.addr;
    drop(ns);
    let e = replace(addr, &a("10.9.9.9"), &good, Duration::from_secs(1)).await.expect_err("nobody listens");
    assert!(e.is_retryable(), "{e:?}");
}
