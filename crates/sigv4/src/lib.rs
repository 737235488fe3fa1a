//! AWS Signature Version 4, for the few AWS requests pgdr signs itself: the
//! S3 bucket settings `object_store` cannot send (`pgdr-backup`'s lock) and
//! the Secrets Manager API (`pgdr-secrets`). Pure: no IO, the time is passed
//! in. Checked against AWS's published S3 examples.
//!
//! This crate depends on nothing of pgdr.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// What a signature needs besides the headers and body.
#[derive(Debug, Clone, Copy)]
pub struct Signing<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// The canonical (already encoded) path, `/` at least.
    pub uri: &'a str,
    /// The canonical query string: sorted, encoded, `k=` for bare keys.
    pub query: &'a str,
    pub region: &'a str,
    /// `s3`, `secretsmanager`, ...
    pub service: &'a str,
    pub access_key: &'a str,
    pub secret_key: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this never takes the empty branch
    // (which would only yield a signature the service rejects).
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Signs a request: adds `host`, `x-amz-date` and `x-amz-content-sha256` to
/// `headers` and returns the `Authorization` value. Every header in
/// `headers` is signed.
pub fn sign(s: &Signing<'_>, headers: &mut Vec<(String, String)>, body: &[u8]) -> String {
    let payload = hex::encode(Sha256::digest(body));
    headers.retain(|(k, _)| !matches!(k.as_str(), "host" | "x-amz-date" | "x-amz-content-sha256"));
    headers.push(("host".into(), s.host.to_owned()));
    headers.push(("x-amz-date".into(), s.amz_date.to_owned()));
    headers.push(("x-amz-content-sha256".into(), payload.clone()));
    let mut sorted: Vec<(String, String)> =
        headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned())).collect();
    sorted.sort();
    let canonical_headers: String = sorted.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: String = sorted.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(";");
    let canonical = format!("{}\n{}\n{}\n{canonical_headers}\n{signed}\n{payload}", s.method, s.uri, s.query);
    let date = &s.amz_date[..8.min(s.amz_date.len())];
    let scope = format!("{date}/{}/{}/aws4_request", s.region, s.service);
    let to_sign =
        format!("AWS4-HMAC-SHA256\n{}\n{scope}\n{}", s.amz_date, hex::encode(Sha256::digest(canonical.as_bytes())));
    let k = hmac(format!("AWS4{}", s.secret_key).as_bytes(), date.as_bytes());
    let k = hmac(&k, s.region.as_bytes());
    let k = hmac(&k, s.service.as_bytes());
    let k = hmac(&k, b"aws4_request");
    let signature = hex::encode(hmac(&k, to_sign.as_bytes()));
    format!("AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}", s.access_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(method: &'static str, uri: &'static str, query: &'static str) -> Signing<'static> {
        Signing {
            method,
            host: "examplebucket.s3.amazonaws.com",
            uri,
            query,
            region: "us-east-1",
            service: "s3",
            access_key: "AKIAIOSFODNN7EXAMPLE",
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            amz_date: "20130524T000000Z",
        }
    }

    #[test]
    fn signature_matches_aws_published_examples() {
        // "Example: GET Object" of AWS's Signature Version 4 documentation for S3.
        let mut headers = vec![("range".to_owned(), "bytes=0-9".to_owned())];
        let auth = sign(&example("GET", "/test.txt", ""), &mut headers, b"");
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        // "Example: GET Bucket Lifecycle" (a sub-resource query, like ?object-lock).
        let mut headers = Vec::new();
        let auth = sign(&example("GET", "/", "lifecycle="), &mut headers, b"");
        assert!(auth.ends_with("Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"), "{auth}");
    }

    #[test]
    fn the_service_is_part_of_the_scope() {
        let mut h = Vec::new();
        let s = Signing { service: "secretsmanager", ..example("POST", "/", "") };
        assert!(sign(&s, &mut h, b"{}").contains("/us-east-1/secretsmanager/aws4_request"));
    }
}
