//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it, both sides.
//!
//! The server side checks a client's proof against a stored verifier
//! (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`) and, as PgBouncer
//! does, recovers the ClientKey from the proof (ClientKey = ClientProof XOR
//! ClientSignature). The client side logs in to a backend with that
//! ClientKey, so the proxy can open new backend connections for a session
//! (after a failover) without ever holding a plaintext password.
//!
//! Neither side derives keys from a password on the network path: only
//! [`ClientKey::from_password`] runs PBKDF2 (tests and verifier building).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("invalid SCRAM verifier")]
    BadVerifier,
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported by this proxy")]
    ChannelBinding,
    #[error("SCRAM nonce mismatch")]
    Nonce,
    #[error("password authentication failed")]
    BadProof,
    #[error("the server's SCRAM signature is wrong")]
    BadServerSignature,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A stored SCRAM-SHA-256 verifier, as in `pg_authid.rolpassword`.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(<redacted>)")
    }
}

impl Verifier {
    pub fn parse(s: &str) -> Result<Verifier, ScramError> {
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or(ScramError::BadVerifier)?;
        let (params, keys) = rest.split_once('$').ok_or(ScramError::BadVerifier)?;
        let (iter, salt) = params.split_once(':').ok_or(ScramError::BadVerifier)?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::BadVerifier)?;
        let key = |k: &str| -> Result<[u8; 32], ScramError> {
            B64.decode(k).ok().and_then(|v| <[u8; 32]>::try_from(v).ok()).ok_or(ScramError::BadVerifier)
        };
        Ok(Verifier {
            iterations: iter.parse().map_err(|_| ScramError::BadVerifier)?,
            salt: B64.decode(salt).map_err(|_| ScramError::BadVerifier)?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// Builds a verifier from a password (PBKDF2: run it off the network
    /// threads).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    pub fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
    out
}

/// The key a client proves it holds; enough to log in anywhere the same
/// verifier is stored, so it is kept in memory only and never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey(pub [u8; 32]);

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKey(<redacted>)")
    }
}

impl ClientKey {
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ClientKey {
        ClientKey(hmac(&salted_password(password, salt, iterations), b"Client Key"))
    }
}

fn nonce() -> String {
    let bytes: [u8; 18] = rand::random();
    B64.encode(bytes)
}

fn attr(part: &str, name: char) -> Option<&str> {
    let mut chars = part.chars();
    (chars.next() == Some(name) && chars.next() == Some('=')).then(|| &part[2..])
}

/// The salt an unknown user is offered, as PostgreSQL does
/// (`scram_mock_salt`): derived from a per-proxy secret and the user name,
/// so asking twice gives the same salt, as for a real user, and the
/// exchange cannot tell a missing user from a wrong password.
pub fn mock_salt(secret: &[u8; 32], user: &str) -> [u8; MOCK_SALT_LEN] {
    let mac = hmac(secret, user.as_bytes());
    let mut out = [0u8; MOCK_SALT_LEN];
    out.copy_from_slice(&mac[..MOCK_SALT_LEN]);
    out
}

/// PostgreSQL's salt length and default iteration count for new verifiers.
pub const MOCK_SALT_LEN: usize = 16;
pub const MOCK_ITERATIONS: u32 = 4096;

/// Constant-time equality of two byte strings (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The server side of one SCRAM exchange.
#[derive(Debug)]
pub struct ScramServer {
    verifier: Verifier,
    /// An unknown user: the exchange runs against a mock verifier and
    /// always fails at the proof.
    mock: bool,
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
    nonce: String,
}

impl ScramServer {
    /// Takes the client-first-message; returns the server-first-message. An
    /// unknown user (`None`) gets an exchange that looks the same (the salt
    /// from [`mock_salt`], 4096 iterations, the same work for the proof) and
    /// always fails at the proof, so user names cannot be probed.
    pub fn start(
        verifier: Option<Verifier>,
        mock_salt: &[u8],
        client_first: &str,
    ) -> Result<(ScramServer, String), ScramError> {
        let mut parts = client_first.splitn(3, ',');
        let cb = parts.next().ok_or(ScramError::Malformed("client-first"))?;
        let authzid = parts.next().ok_or(ScramError::Malformed("client-first"))?;
        let bare = parts.next().ok_or(ScramError::Malformed("client-first"))?;
        match cb {
            "n" | "y" => {}
            c if c.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("client-first gs2 header")),
        }
        let client_nonce =
            bare.split(',').find_map(|p| attr(p, 'r')).ok_or(ScramError::Malformed("client-first nonce"))?;
        if client_nonce.is_empty() || client_nonce.contains(',') {
            return Err(ScramError::Malformed("client-first nonce"));
        }
        let nonce = format!("{client_nonce}{}", nonce());
        let mock = verifier.is_none();
        let verifier = verifier.unwrap_or_else(|| Verifier {
            iterations: MOCK_ITERATIONS,
            salt: mock_salt.to_vec(),
            stored_key: rand::random(),
            server_key: rand::random(),
        });
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&verifier.salt), verifier.iterations);
        let s = ScramServer {
            verifier,
            mock,
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            gs2_header: format!("{cb},{authzid},"),
            nonce,
        };
        Ok((s, server_first))
    }

    /// Takes the client-final-message; on success returns the recovered
    /// ClientKey and the server-final-message.
    pub fn finish(self, client_final: &str) -> Result<(ClientKey, String), ScramError> {
        let (without_proof, proof) = client_final.rsplit_once(",p=").ok_or(ScramError::Malformed("client-final"))?;
        let mut cbind = None;
        let mut nonce = None;
        for p in without_proof.split(',') {
            if let Some(v) = attr(p, 'c') {
                cbind = Some(v);
            } else if let Some(v) = attr(p, 'r') {
                nonce = Some(v);
            }
        }
        if cbind != Some(B64.encode(self.gs2_header.as_bytes()).as_str()) {
            return Err(ScramError::Malformed("client-final channel binding"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Nonce);
        }
        let proof: [u8; 32] =
            B64.decode(proof).ok().and_then(|p| p.try_into().ok()).ok_or(ScramError::Malformed("client proof"))?;
        let v = self.verifier;
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let sig = hmac(&v.stored_key, auth_message.as_bytes());
        let mut key = [0u8; 32];
        for i in 0..32 {
            key[i] = proof[i] ^ sig[i];
        }
        // Constant time; a mock verifier never matches (its keys are random).
        if !ct_eq(&sha256(&key), &v.stored_key) || self.mock {
            return Err(ScramError::BadProof);
        }
        let server_sig = hmac(&v.server_key, auth_message.as_bytes());
        Ok((ClientKey(key), format!("v={}", B64.encode(server_sig))))
    }
}

/// The client side, logging in with a ClientKey instead of a password.
#[derive(Debug)]
pub struct ScramClient {
    key: ClientKey,
    server_key: Option<[u8; 32]>,
    client_first_bare: String,
    auth_message: Option<String>,
}

impl ScramClient {
    /// Returns the client and the client-first-message. `server_key`, when
    /// known (from the verifier), is used to check the server's signature.
    pub fn new(key: ClientKey, server_key: Option<[u8; 32]>) -> (ScramClient, String) {
        Self::with_nonce(key, server_key, &nonce())
    }

    pub fn with_nonce(key: ClientKey, server_key: Option<[u8; 32]>, nonce: &str) -> (ScramClient, String) {
        let client_first_bare = format!("n=,r={nonce}");
        let first = format!("n,,{client_first_bare}");
        (ScramClient { key, server_key, client_first_bare, auth_message: None }, first)
    }

    /// Replaces the key (a password client learns salt and iterations only
    /// from the server-first-message).
    pub fn set_key(&mut self, key: ClientKey) {
        self.key = key;
    }

    /// Takes the server-first-message; returns the client-final-message.
    pub fn respond(&mut self, server_first: &str) -> Result<String, ScramError> {
        let nonce = server_first.split(',').find_map(|p| attr(p, 'r')).ok_or(ScramError::Malformed("server-first"))?;
        let ours = self.client_first_bare.rsplit_once("r=").map(|(_, n)| n).unwrap_or("");
        if !nonce.starts_with(ours) || nonce.len() <= ours.len() {
            return Err(ScramError::Nonce);
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{},{}", self.client_first_bare, server_first, without_proof);
        let stored = sha256(&self.key.0);
        let sig = hmac(&stored, auth_message.as_bytes());
        let mut proof = [0u8; 32];
        for i in 0..32 {
            proof[i] = self.key.0[i] ^ sig[i];
        }
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message when the ServerKey is known.
    pub fn verify(&self, server_final: &str) -> Result<(), ScramError> {
        let (Some(sk), Some(am)) = (self.server_key, &self.auth_message) else { return Ok(()) };
        let v = server_final.split(',').find_map(|p| attr(p, 'v')).ok_or(ScramError::Malformed("server-final"))?;
        if B64.decode(v).ok().as_deref() == Some(&hmac(&sk, am.as_bytes())[..]) {
            Ok(())
        } else {
            Err(ScramError::BadServerSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677, section 3.
    const PASSWORD: &str = "pencil";
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn salt() -> Vec<u8> {
        B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt")
    }

    #[test]
    fn rfc7677_server_side() {
        let v = Verifier::from_password(PASSWORD, &salt(), 4096);
        let parsed = Verifier::parse(&v.encode()).expect("roundtrip");
        assert_eq!(parsed, v);
        // Drive the server with the RFC's nonce by building the state directly.
        let s = ScramServer {
            verifier: v.clone(),
            mock: false,
            client_first_bare: format!("n=user,r={CLIENT_NONCE}"),
            server_first: SERVER_FIRST.to_owned(),
            gs2_header: "n,,".to_owned(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".to_owned(),
        };
        let (key, final_msg) = s.finish(CLIENT_FINAL).expect("proof accepted");
        assert_eq!(final_msg, SERVER_FINAL);
        assert_eq!(key, ClientKey::from_password(PASSWORD, &salt(), 4096));
    }

    #[test]
    fn rfc7677_client_side() {
        let key = ClientKey::from_password(PASSWORD, &salt(), 4096);
        let v = Verifier::from_password(PASSWORD, &salt(), 4096);
        let (mut c, first) = ScramClient::with_nonce(key, Some(v.server_key), CLIENT_NONCE);
        assert_eq!(first, format!("n,,n=,r={CLIENT_NONCE}"));
        // The RFC's client-first-bare has n=user; ours has n= (PostgreSQL
        // ignores it), so recompute the expected proof with our bare message.
        c.client_first_bare = format!("n=user,r={CLIENT_NONCE}");
        let fin = c.respond(SERVER_FIRST).expect("respond");
        assert_eq!(fin, CLIENT_FINAL);
        c.verify(SERVER_FINAL).expect("server signature");
        assert_eq!(c.verify("v=AAAA"), Err(ScramError::BadServerSignature));
    }

    #[test]
    fn full_exchange_and_wrong_password() {
        let v = Verifier::from_password("right", b"saltsalt", 4096);
        for (pw, ok) in [("right", true), ("wrong", false)] {
            let key = ClientKey::from_password(pw, b"saltsalt", 4096);
            let (mut c, first) = ScramClient::new(key.clone(), Some(v.server_key));
            let (s, server_first) = ScramServer::start(Some(v.clone()), &[0; 16], &first).expect("start");
            let fin = c.respond(&server_first).expect("respond");
            match s.finish(&fin) {
                Ok((k, server_final)) => {
                    assert!(ok);
                    assert_eq!(k, key);
                    c.verify(&server_final).expect("verify");
                }
                Err(e) => {
                    assert!(!ok);
                    assert_eq!(e, ScramError::BadProof);
                }
            }
        }
    }

    #[test]
    fn unknown_user_looks_like_a_wrong_password() {
        let secret = [7u8; 32];
        let salt = mock_salt(&secret, "nobody");
        assert_eq!(salt, mock_salt(&secret, "nobody"), "the same user gets the same salt");
        assert_ne!(salt, mock_salt(&secret, "somebody"));
        assert_ne!(salt, mock_salt(&[8u8; 32], "nobody"), "another proxy, another salt");
        let key = ClientKey::from_password("guess", &salt, MOCK_ITERATIONS);
        let (mut c, first) = ScramClient::new(key, None);
        let (s, server_first) = ScramServer::start(None, &salt, &first).expect("start");
        assert!(server_first.ends_with(&format!(",s={},i=4096", B64.encode(salt))), "{server_first}");
        let fin = c.respond(&server_first).expect("respond");
        assert_eq!(s.finish(&fin), Err(ScramError::BadProof), "fails at the proof, like a wrong password");
    }

    #[test]
    fn unknown_user_and_garbage_fail_cleanly() {
        let (s, _) = ScramServer::start(None, &[0; 16], "n,,n=,r=abc").expect("start");
        assert!(s.finish("c=biws,r=x,p=AAAA").is_err());
        assert!(ScramServer::start(None, &[0; 16], "garbage").is_err());
        assert!(ScramServer::start(None, &[0; 16], "p=tls-server-end-point,,n=,r=abc").is_err());
        assert!(Verifier::parse("md5abc").is_err());
        assert!(Verifier::parse("SCRAM-SHA-256$x:y$z:w").is_err());
    }
}
