//! An immutable destination enforced by the store: S3 Object Lock in
//! COMPLIANCE mode as the bucket's default retention, against moto's S3
//! server on loopback (it stands in for the cloud's S3 API, which cannot be
//! reached here). With the destination's own credentials, a locked version
//! can be neither deleted nor overwritten.

use bytes::Bytes;
use pgdr_backup::Dest;
use pgdr_backup::lock::{self, Enforcement, S3Admin};
use pgdr_config::Config;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_lock_is_enforced_by_the_store() {
    let dir = tempdir("pgdr-backup-lock-");
    let s3_port = free_port();
    let moto = Moto::start(s3_port);
    moto.create_bucket("pgdr-test");
    moto.create_locked_bucket("pgdr-lock");
    let config_path = write_config(dir.path(), free_port(), &dir.path().join("src"), Some(s3_port), "s3");
    let config = Config::load(&config_path).expect("config");

    // Marked immutable but not enforced by its bucket: reported, and an
    // immutable destination on a bucket without Object Lock cannot be locked.
    let mut plain = config.destination("s3lock").expect("s3lock").clone();
    plain.url = "s3://pgdr-test/backups".into();
    assert!(matches!(lock::enforcement(&config, &plain).await, Enforcement::NotEnforced(_)));
    let d = config.destination("s3lock").expect("s3lock");
    match lock::enforcement(&config, d).await {
        Enforcement::NotEnforced(why) => assert!(why.contains("default retention"), "{why}"),
        other => panic!("a locked bucket without default retention is not enforcing: {other:?}"),
    }

    // `pgdr backup lock`: COMPLIANCE default retention for the tier's period.
    let days = lock::lock_days(&config, "s3lock");
    assert_eq!(days, lock::DEFAULT_LOCK_DAYS, "no tier sets retain_age for s3lock");
    let admin = S3Admin::for_destination(d).expect("admin").expect("an s3 destination");
    admin.set_default_retention(days).await.expect("lock the bucket");
    match lock::enforcement(&config, d).await {
        Enforcement::Enforced(how) => assert!(how.contains("COMPLIANCE"), "{how}"),
        other => panic!("expected enforced, got {other:?}"),
    }

    // pgdr writes a backup object there (with a checksum, as Object Lock requires).
    let dest = Dest::open_named(&config, "s3lock").expect("open");
    let key = "c1/backups/x/data/000000";
    dest.put_new(key, Bytes::from_static(b"locked bytes")).await.expect("put");
    let path = format!("/backups/{key}");
    let head = admin.request("HEAD", &path, "", Vec::new(), &[]).await.expect("head");
    let version = head.header("x-amz-version-id").expect("a versioned, locked bucket").to_owned();
    let q = format!("versionId={version}");

    // With the destination's own credentials: deleting the locked version fails.
    let del = admin.request("DELETE", &path, &q, Vec::new(), &[]).await.expect("delete");
    assert_eq!(del.status, 403, "deleting a locked version must be refused: {} {}", del.status, del.body);
    // Overwriting adds a version; the locked one stays, unchanged.
    let evil = b"attacker bytes".to_vec();
    let md5 = {
        use base64::Engine;
        use md5::Digest;
        base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&evil))
    };
    let put = admin.request("PUT", &path, "", evil, &[("content-md5", md5)]).await.expect("overwrite");
    assert_eq!(put.status, 200, "{}", put.body);
    // A plain delete only adds a delete marker; the locked version stays.
    let hide = admin.request("DELETE", &path, "", Vec::new(), &[]).await.expect("delete marker");
    assert!(hide.status < 300, "{}", hide.body);
    let del = admin.request("DELETE", &path, &q, Vec::new(), &[]).await.expect("delete again");
    assert_eq!(del.status, 403, "{}", del.body);
    let kept = admin.request("GET", &path, &q, Vec::new(), &[]).await.expect("get version");
    assert_eq!((kept.status, kept.body.as_str()), (200, "locked bytes"));
    // pgdr itself never deletes on an immutable destination either.
    assert!(dest.delete(key).await.is_err());
    drop(moto);
}
