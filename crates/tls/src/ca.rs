//! A small certificate authority (rcgen, ECDSA P-256): the sandbox makes one
//! and signs a certificate for every part with it; `pgdr certs init` does the
//! same for a real cluster's first steps. The CA's key is only needed to sign
//! more certificates: keep it offline in production.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::TlsError;

/// A CA able to sign certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority(<key redacted>)")
    }
}

/// A signed certificate and its private key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued(<key redacted>)")
    }
}

fn issue_err(e: rcgen::Error) -> TlsError {
    TlsError::Issue(e.to_string())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pgdr");
    dn.push(DnType::CommonName, common_name);
    dn
}

impl Authority {
    /// A new self-signed CA named `common_name`, valid for ten years.
    pub fn generate(common_name: &str) -> Result<Authority, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let key = KeyPair::generate().map_err(issue_err)?;
        let cert = params.self_signed(&key).map_err(issue_err)?;
        Ok(Authority { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// The CA certificate (PEM): what every client trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PEM).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate for `common_name` valid for `names` (DNS names or IP
    /// addresses), usable by servers and, for mTLS, as a client.
    pub fn issue(&self, common_name: &str, names: &[String]) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::new(names.to_vec()).map_err(issue_err)?;
        params.distinguished_name = name(common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let key = KeyPair::generate().map_err(issue_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(issue_err)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Writes `text` to a new file with `mode` (the file must not exist: a
/// key is never written over).
pub fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write { path: path.to_owned(), source };
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Identity, client_config, server_config};

    #[test]
    fn issued_certificates_load_into_rustls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Authority::generate("test CA").expect("ca");
        let leaf = ca.issue("node", &["127.0.0.1".into(), "localhost".into()]).expect("leaf");
        let p = |f: &str| dir.path().join(f);
        write_new(&p("ca.crt"), ca.cert_pem(), 0o644).expect("ca");
        write_new(&p("n.crt"), &leaf.cert_pem, 0o644).expect("crt");
        write_new(&p("n.key"), &leaf.key_pem, 0o600).expect("key");
        let id = Identity { cert: p("n.crt"), key: p("n.key") };
        server_config(&id, Some(&p("ca.crt"))).expect("server");
        client_config(&p("ca.crt"), Some(&id)).expect("client");
        assert!(write_new(&p("n.key"), "x", 0o600).is_err(), "never overwrites a key");
    }
}
