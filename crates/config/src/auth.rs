//! Checking a bearer token: the pure part every server shares (controller,
//! agent, proxy admin API). Each server maps its routes to what they need
//! and answers 401 (no token, or one it does not know) or 403 (a known
//! token whose role does not allow the route).
//!
//! Tokens are compared in constant time: the given token and every known
//! one are hashed (SHA-256, so lengths do not show) and every digest is
//! compared with `subtle`, without stopping at the first match.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{Access, Redacted};

/// Who made a request: the token's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Access,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No `Authorization: Bearer` header, or a token no one was given: 401.
    #[error("missing or unknown bearer token")]
    Unauthenticated,
    /// A known token whose role does not allow this route: 403.
    #[error("this token's role does not allow this request")]
    Forbidden,
}

impl Denied {
    /// The HTTP status to answer with.
    pub fn status(self) -> u16 {
        match self {
            Denied::Unauthenticated => 401,
            Denied::Forbidden => 403,
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Denied::Unauthenticated => "unauthorized",
            Denied::Forbidden => "forbidden",
        }
    }
}

/// The tokens a server accepts.
#[derive(Clone, Default)]
pub struct TokenSet {
    known: Vec<(Caller, [u8; 32])>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.known.iter().map(|(c, _)| (&c.name, c.role))).finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl TokenSet {
    /// No token at all: every request is let through as `anonymous`
    /// (config validation allows this only on loopback addresses).
    pub fn open() -> TokenSet {
        TokenSet::default()
    }

    pub fn new(tokens: impl IntoIterator<Item = (Caller, Redacted)>) -> TokenSet {
        TokenSet { known: tokens.into_iter().map(|(c, t)| (c, digest(t.expose().as_bytes()))).collect() }
    }

    /// One token of one role (the agents' and the proxy's APIs).
    pub fn single(name: &str, role: Access, token: Option<Redacted>) -> TokenSet {
        TokenSet::new(token.map(|t| (Caller { name: name.to_owned(), role }, t)))
    }

    /// Whether authentication is off.
    pub fn is_open(&self) -> bool {
        self.known.is_empty()
    }

    /// Names of tokens that share a value (each value must name one holder).
    pub fn duplicates(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, (a, da)) in self.known.iter().enumerate() {
            if self.known[..i].iter().any(|(_, db)| bool::from(da.ct_eq(db))) {
                out.push(a.name.clone());
            }
        }
        out
    }

    /// Who holds the token in an `Authorization` header value, if anyone.
    pub fn identify(&self, authorization: Option<&[u8]>) -> Option<Caller> {
        let given = authorization.and_then(|h| h.strip_prefix(b"Bearer "))?;
        let d = digest(given);
        let mut found: Option<&Caller> = None;
        for (caller, known) in &self.known {
            // Every digest is compared; the first match is kept.
            let hit = bool::from(d.ct_eq(known));
            if hit && found.is_none() {
                found = Some(caller);
            }
        }
        found.cloned()
    }

    /// Checks a request that needs `need` (`None`: any known token).
    pub fn authorize(&self, authorization: Option<&[u8]>, need: Option<Access>) -> Result<Caller, Denied> {
        if self.is_open() {
            return Ok(Caller { name: "anonymous".into(), role: need.unwrap_or(Access::Operator) });
        }
        let caller = self.identify(authorization).ok_or(Denied::Unauthenticated)?;
        match need {
            Some(n) if !caller.role.grants(n) => Err(Denied::Forbidden),
            _ => Ok(caller),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> TokenSet {
        TokenSet::new([
            (Caller { name: "ops".into(), role: Access::Operator }, Redacted::from("op-token")),
            (Caller { name: "grafana".into(), role: Access::Viewer }, Redacted::from("view-token")),
            (Caller { name: "agents".into(), role: Access::Agent }, Redacted::from("agent-token")),
        ])
    }

    #[test]
    fn roles_grant_what_they_should() {
        let s = set();
        let h = |t: &str| format!("Bearer {t}");
        let ok = |t: &str, need| s.authorize(Some(h(t).as_bytes()), Some(need));
        assert_eq!(ok("op-token", Access::Operator).map(|c| c.name), Ok("ops".into()));
        assert_eq!(ok("op-token", Access::Viewer).map(|c| c.name), Ok("ops".into()));
        assert_eq!(ok("op-token", Access::Agent), Err(Denied::Forbidden));
        assert_eq!(ok("view-token", Access::Viewer).map(|c| c.name), Ok("grafana".into()));
        assert_eq!(ok("view-token", Access::Operator), Err(Denied::Forbidden));
        assert_eq!(ok("agent-token", Access::Agent).map(|c| c.name), Ok("agents".into()));
        assert_eq!(ok("agent-token", Access::Viewer), Err(Denied::Forbidden));
        assert_eq!(ok("wrong", Access::Viewer), Err(Denied::Unauthenticated));
        assert_eq!(ok("", Access::Viewer), Err(Denied::Unauthenticated));
        assert_eq!(ok("op-token ", Access::Viewer), Err(Denied::Unauthenticated));
        assert_eq!(s.authorize(None, Some(Access::Viewer)), Err(Denied::Unauthenticated));
        assert_eq!(s.authorize(Some(b"op-token"), Some(Access::Viewer)), Err(Denied::Unauthenticated));
        assert_eq!(s.authorize(Some(b"Basic op-token"), Some(Access::Viewer)), Err(Denied::Unauthenticated));
    }

    #[test]
    fn an_open_set_lets_everything_through_and_debug_hides_values() {
        assert!(TokenSet::open().authorize(None, Some(Access::Operator)).is_ok());
        let shown = format!("{:?}", set());
        assert!(shown.contains("ops") && !shown.contains("op-token"), "{shown}");
        let dup = TokenSet::new([
            (Caller { name: "a".into(), role: Access::Viewer }, Redacted::from("same")),
            (Caller { name: "b".into(), role: Access::Operator }, Redacted::from("same")),
        ]);
        assert_eq!(dup.duplicates(), vec!["b".to_owned()]);
    }
}
