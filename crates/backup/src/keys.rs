//! A destination's encryption keys: the current key (for new objects) and
//! older keys kept to read objects written before a rotation.

use base64::Engine;

/// Keys by id; the first is the current one.
#[derive(Clone)]
pub struct Keyring {
    current: (String, [u8; 32]),
    old: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring(current {:?}, old {:?})", self.current.0, self.old.iter().map(|k| &k.0).collect::<Vec<_>>())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "destination {dest:?} has no encryption key: set destinations.key (32 random bytes as 64 hex digits, e.g. from `openssl rand -hex 32`)"
    )]
    Missing { dest: String },
    #[error("destination {dest:?}: key id {key_id:?}: {detail}")]
    Bad { dest: String, key_id: String, detail: String },
}

impl Keyring {
    pub fn new(id: &str, key: [u8; 32], old: Vec<(String, [u8; 32])>) -> Keyring {
        Keyring { current: (id.to_owned(), key), old }
    }

    /// Builds a keyring from a destination's config, resolving its secrets.
    pub fn from_config(d: &pgdr_config::Destination) -> Result<Keyring, KeyError> {
        let bad =
            |key_id: &str, detail: String| KeyError::Bad { dest: d.name.clone(), key_id: key_id.to_owned(), detail };
        let secret = d.key.as_ref().ok_or_else(|| KeyError::Missing { dest: d.name.clone() })?;
        let current =
            parse_key(&secret.resolve().map_err(|e| bad(&d.key_id, e.to_string()))?).map_err(|e| bad(&d.key_id, e))?;
        if d.key_id.is_empty() || d.key_id.len() > 64 {
            return Err(bad(&d.key_id, "expected a key id of 1 to 64 characters".into()));
        }
        let mut old = Vec::new();
        for (id, s) in &d.old_keys {
            let k = parse_key(&s.resolve().map_err(|e| bad(id, e.to_string()))?).map_err(|e| bad(id, e))?;
            old.push((id.clone(), k));
        }
        Ok(Keyring { current: (d.key_id.clone(), current), old })
    }

    pub fn current(&self) -> (&str, &[u8; 32]) {
        (&self.current.0, &self.current.1)
    }

    pub fn get(&self, id: &str) -> Option<&[u8; 32]> {
        if self.current.0 == id {
            return Some(&self.current.1);
        }
        self.old.iter().find(|(i, _)| i == id).map(|(_, k)| k)
    }

    pub fn ids(&self) -> Vec<String> {
        std::iter::once(self.current.0.clone()).chain(self.old.iter().map(|(i, _)| i.clone())).collect()
    }
}

/// 32 bytes as 64 hex digits or as base64.
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    let bytes = if t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(t).map_err(|e| e.to_string())?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(t)
            .map_err(|_| "expected 32 bytes as 64 hex digits or base64".to_owned())?
    };
    bytes.try_into().map_err(|v: Vec<u8>| format!("expected 32 bytes, got {}", v.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_base64() {
        let hex_key = "00".repeat(31) + "ff";
        assert_eq!(parse_key(&hex_key).expect("hex")[31], 0xff);
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(parse_key(&b64).expect("b64"), [7u8; 32]);
        assert!(parse_key("abcd").is_err());
        assert!(parse_key(&"00".repeat(16)).is_err());
    }
}
