//! Client authentication sources: which users the proxy knows and their
//! SCRAM verifiers (or md5 hashes).
//!
//! - `passthrough`: the backend authenticates; the proxy relays the exchange.
//!   Such a session can move to another backend only if that login needed no
//!   password (trust); otherwise it is closed with a clear error on a move.
//! - `users`: a file of `"user" "SCRAM-SHA-256$..."` lines (PgBouncer's
//!   `auth_file` format; `md5...` hashes also accepted).
//! - `auto`: the verifiers are read from the primary's `pg_authid` with the
//!   cluster's configured (superuser) credential at start and whenever an
//!   unknown user logs in (at most once per second).
//!
//! In `users`/`auto` the proxy runs SCRAM's server side, recovers the
//! client's ClientKey and logs in to any backend with it ([`crate::scram`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::routing::Backend;
use crate::scram::Verifier;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read users file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("users file {}:{line}: {message}", path.display())]
    Parse { path: PathBuf, line: usize, message: String },
    #[error("cannot read verifiers from {addr}: {message}")]
    Backend { addr: String, message: String },
}

/// What the proxy stores for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredSecret {
    Scram(Verifier),
    /// `md5` + hex(md5(password + user)).
    Md5(String),
}

impl StoredSecret {
    pub fn parse(s: &str) -> Option<StoredSecret> {
        if s.starts_with("SCRAM-SHA-256$") {
            Verifier::parse(s).ok().map(StoredSecret::Scram)
        } else if s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|c| c.is_ascii_hexdigit()) {
            Some(StoredSecret::Md5(s.to_owned()))
        } else {
            None
        }
    }
}

/// The superuser credential used to read `pg_authid` in `auto` mode, and
/// to find the primary.
#[derive(Clone)]
pub struct AdminLogin {
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// TLS toward the servers (the cluster's CA), or plain TCP.
    pub tls: Option<pgdr_tls::pg::PgTls>,
}

impl std::fmt::Debug for AdminLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminLogin({}@{})", self.user, self.database)
    }
}

/// How a cluster's clients authenticate.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    Passthrough,
    UsersFile(PathBuf),
    Auto(AdminLogin),
}

/// Known users and their secrets; reloadable.
#[derive(Debug)]
pub struct UserStore {
    users: RwLock<HashMap<String, StoredSecret>>,
    last_refresh: std::sync::Mutex<Option<Instant>>,
}

impl Default for UserStore {
    fn default() -> Self {
        UserStore { users: RwLock::new(HashMap::new()), last_refresh: std::sync::Mutex::new(None) }
    }
}

impl UserStore {
    pub fn get(&self, user: &str) -> Option<StoredSecret> {
        self.users.read().ok()?.get(user).cloned()
    }

    pub fn replace(&self, users: HashMap<String, StoredSecret>) {
        if let Ok(mut g) = self.users.write() {
            *g = users;
        }
    }

    pub fn len(&self) -> usize {
        self.users.read().map(|u| u.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a refresh from the backend may run now (at most one a second).
    pub fn may_refresh(&self) -> bool {
        let Ok(mut last) = self.last_refresh.lock() else { return false };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Parses a PgBouncer-style users file: `"user" "secret"` per line; `#` and
/// `;` start comments. Unsupported secrets are an error naming the line.
pub fn parse_users_file(path: &std::path::Path, text: &str) -> Result<HashMap<String, StoredSecret>, AuthError> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        let bad = |message: &str| AuthError::Parse { path: path.to_owned(), line: i + 1, message: message.to_owned() };
        let fields = quoted_fields(l).ok_or_else(|| bad("expected \"user\" \"secret\""))?;
        if fields.len() < 2 {
            return Err(bad("expected \"user\" \"secret\""));
        }
        let secret = StoredSecret::parse(&fields[1]).ok_or_else(|| {
            bad("expected a SCRAM-SHA-256$... verifier or an md5 hash (plaintext passwords are not accepted)")
        })?;
        users.insert(fields[0].clone(), secret);
    }
    Ok(users)
}

fn quoted_fields(l: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = l.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(out),
            Some('"') => {
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            s.push('"');
                        }
                        '"' => break,
                        c => s.push(c),
                    }
                }
                out.push(s);
            }
            Some(_) => return None,
        }
    }
}

pub fn load_users_file(path: &std::path::Path) -> Result<HashMap<String, StoredSecret>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read { path: path.to_owned(), source })?;
    parse_users_file(path, &text)
}

/// Reads every role's verifier from `pg_authid` on `backend`.
pub async fn fetch_from_backend(
    backend: &Backend,
    login: &AdminLogin,
    timeout: Duration,
) -> Result<HashMap<String, StoredSecret>, AuthError> {
    let addr = backend.addr();
    let err = |message: String| AuthError::Backend { addr: addr.clone(), message };
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&backend.host)
        .port(backend.port)
        .user(&login.user)
        .dbname(&login.database)
        .connect_timeout(timeout)
        .application_name("pgdr-proxy");
    if let Some(p) = &login.password {
        cfg.password(p);
    }
    let client = tokio::time::timeout(timeout, pgdr_tls::pg::connect(&cfg, login.tls.as_ref()))
        .await
        .map_err(|_| err("connect timed out".into()))?
        .map_err(|e| err(e.to_string()))?;
    let rows = tokio::time::timeout(
        timeout,
        client.query(
            "SELECT rolname::text, rolpassword FROM pg_authid WHERE rolcanlogin AND rolpassword IS NOT NULL",
            &[],
        ),
    )
    .await
    .map_err(|_| err("query timed out".into()))?
    .map_err(|e| err(e.to_string()))?;
    drop(client);
    let mut users = HashMap::new();
    for row in rows {
        let (Ok(name), Ok(secret)) = (row.try_get::<_, String>(0), row.try_get::<_, String>(1)) else { continue };
        if let Some(s) = StoredSecret::parse(&secret) {
            users.insert(name, s);
        }
    }
    Ok(users)
}

/// md5 password response for a stored `md5...` hash and the server's salt:
/// `md5` + hex(md5(hex_hash + salt)).
pub fn md5_response(stored: &str, salt: [u8; 4]) -> String {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    h.update(&stored.as_bytes()[3..]);
    h.update(salt);
    format!("md5{}", hex_lower(&h.finalize()))
}

fn hex_lower(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &c in b {
        s.push(HEX[(c >> 4) as usize] as char);
        s.push(HEX[(c & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file() {
        let v = Verifier::from_password("pw", b"0123456789abcdef", 4096).encode();
        let text = format!("# comment\n\"alice\" \"{v}\"\n\"bob\" \"md5{}\"\n", "0".repeat(32));
        let users = parse_users_file(std::path::Path::new("u.txt"), &text).expect("parse");
        assert_eq!(users.len(), 2);
        assert!(matches!(users.get("alice"), Some(StoredSecret::Scram(_))));
        let err = parse_users_file(std::path::Path::new("u.txt"), "\"x\" \"plain\"\n").expect_err("plaintext refused");
        assert!(err.to_string().contains("u.txt:1"), "{err}");
        assert!(parse_users_file(std::path::Path::new("u.txt"), "alice pw\n").is_err());
    }

    #[test]
    fn md5_matches_postgres() {
        // md5("pw" + "alice") = stored hash; response over salt 1,2,3,4.
        use md5::{Digest, Md5};
        let inner = format!("md5{}", hex_lower(&Md5::digest(b"pwalice")));
        let r = md5_response(&inner, [1, 2, 3, 4]);
        let mut h = Md5::new();
        h.update(&inner.as_bytes()[3..]);
        h.update([1, 2, 3, 4]);
        assert_eq!(r, format!("md5{}", hex_lower(&h.finalize())));
        assert_eq!(r.len(), 35);
    }
}
