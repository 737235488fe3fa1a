//! A destination's encryption keys: the current key (for new objects) and
//! older keys kept to read objects written before a rotation.
//!
//! The configured 32-byte key is never used directly: two independent keys
//! are derived from it with BLAKE3's key derivation, one that encrypts
//! objects (XChaCha20-Poly1305) and one that authenticates manifests
//! (keyed BLAKE3), so the two uses can never be confused.

use base64::Engine;

/// BLAKE3 `derive_key` contexts: globally unique, fixed forever.
const ENC_CONTEXT: &str = "pgdr 2026-12 backup object encryption v2";
const MAC_CONTEXT: &str = "pgdr 2026-12 backup manifest authentication v2";

/// One key of a destination, with the keys derived from it.
#[derive(Clone)]
pub struct Key {
    pub id: String,
    /// Encrypts and authenticates objects.
    pub enc: [u8; 32],
    /// Authenticates manifests and catalogs.
    pub mac: [u8; 32],
}

impl Key {
    fn derive(id: &str, master: &[u8; 32]) -> Key {
        Key {
            id: id.to_owned(),
            enc: blake3::derive_key(ENC_CONTEXT, master),
            mac: blake3::derive_key(MAC_CONTEXT, master),
        }
    }

    /// Keyed BLAKE3 of `bytes` under this key's manifest key.
    pub fn mac(&self, bytes: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(&self.mac, bytes)
    }
}

/// Keys by id; the first is the current one.
#[derive(Clone)]
pub struct Keyring {
    current: Key,
    old: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keyring(current {:?}, old {:?})",
            self.current.id,
            self.old.iter().map(|k| &k.id).collect::<Vec<_>>()
        )
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
        Keyring { current: Key::derive(id, &key), old: old.iter().map(|(i, k)| Key::derive(i, k)).collect() }
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
            old.push(Key::derive(id, &k));
        }
        Ok(Keyring { current: Key::derive(&d.key_id, &current), old })
    }

    /// The key new objects and manifests are sealed with.
    pub fn current(&self) -> &Key {
        &self.current
    }

    pub fn get(&self, id: &str) -> Option<&Key> {
        std::iter::once(&self.current).chain(&self.old).find(|k| k.id == id)
    }

    pub fn ids(&self) -> Vec<String> {
        std::iter::once(&self.current).chain(&self.old).map(|k| k.id.clone()).collect()
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
