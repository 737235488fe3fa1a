//! The stored object format: a header, then chunked authenticated encryption
//! (the STREAM construction over XChaCha20-Poly1305) of zstd-compressed data.
//!
//! ```text
//! magic "PGDRBK" | version u8 | compression u8 | key id length u8 | key id
//! | nonce prefix (19 bytes) | chunk 0 | chunk 1 | … | last chunk
//! ```
//!
//! Every chunk but the last holds [`CHUNK`] bytes of ciphertext plus a 16-byte
//! tag; the last holds the rest (possibly nothing) and is sealed with STREAM's
//! "last" flag, so truncation at a chunk boundary is detected. The whole header
//! is the associated data of every chunk, so a changed key id or compression
//! byte fails authentication. The key id names which key of the destination
//! sealed the object: keys rotate without rewriting old objects.

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305};
use rand::RngCore;

use crate::keys::Keyring;

pub const MAGIC: &[u8; 6] = b"PGDRBK";
pub const VERSION: u8 = 1;
/// Plaintext bytes per AEAD chunk.
pub const CHUNK: usize = 1 << 20;
const TAG: usize = 16;
const NONCE_PREFIX: usize = 19;

/// How the payload was compressed before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a pgdr object (bad magic): the object is corrupt or was not written by pgdr")]
    BadMagic,
    #[error("object format version {0} is newer than this pgdr understands (1)")]
    Version(u8),
    #[error("object header is truncated or corrupt")]
    Header,
    #[error(
        "object was encrypted with key id {key_id:?}, which is not configured for this destination (configured: {known})"
    )]
    UnknownKey { key_id: String, known: String },
    #[error(
        "object failed authentication with key id {key_id:?} at chunk {chunk}: the object is corrupt or the key configured under that id is wrong"
    )]
    Auth { key_id: String, chunk: usize },
    #[error("cannot compress: {0}")]
    Compress(String),
    #[error("cannot decompress an authenticated object: {0}")]
    Decompress(String),
}

/// The parsed header of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub compression: Compression,
    pub key_id: String,
    pub nonce_prefix: [u8; NONCE_PREFIX],
    /// Header length in bytes: where the chunks start.
    pub len: usize,
}

fn header_bytes(compression: Compression, key_id: &str, nonce_prefix: &[u8; NONCE_PREFIX]) -> Vec<u8> {
    let mut h = Vec::with_capacity(MAGIC.len() + 3 + key_id.len() + NONCE_PREFIX);
    h.extend_from_slice(MAGIC);
    h.push(VERSION);
    h.push(compression as u8);
    // Key ids are short names; longer ones are cut (validated in Keyring).
    let id = &key_id.as_bytes()[..key_id.len().min(255)];
    h.push(id.len() as u8);
    h.extend_from_slice(id);
    h.extend_from_slice(nonce_prefix);
    h
}

/// Reads an object's header.
pub fn parse_header(data: &[u8]) -> Result<Header, FormatError> {
    if data.len() < MAGIC.len() + 3 || &data[..MAGIC.len()] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let mut p = MAGIC.len();
    let version = data[p];
    if version != VERSION {
        return Err(FormatError::Version(version));
    }
    let compression = match data[p + 1] {
        0 => Compression::None,
        1 => Compression::Zstd,
        _ => return Err(FormatError::Header),
    };
    let id_len = data[p + 2] as usize;
    p += 3;
    if data.len() < p + id_len + NONCE_PREFIX {
        return Err(FormatError::Header);
    }
    let key_id = String::from_utf8(data[p..p + id_len].to_vec()).map_err(|_| FormatError::Header)?;
    p += id_len;
    let mut nonce_prefix = [0u8; NONCE_PREFIX];
    nonce_prefix.copy_from_slice(&data[p..p + NONCE_PREFIX]);
    Ok(Header { compression, key_id, nonce_prefix, len: p + NONCE_PREFIX })
}

/// Compresses (zstd at `level`, 0 for none) and encrypts `plain` with the
/// keyring's current key.
pub fn seal(plain: &[u8], level: i32, keys: &Keyring) -> Result<Vec<u8>, FormatError> {
    if level == 0 {
        return encrypt(plain, Compression::None, keys);
    }
    let compressed = zstd::bulk::compress(plain, level).map_err(|e| FormatError::Compress(e.to_string()))?;
    encrypt(&compressed, Compression::Zstd, keys)
}

/// Encrypts an already-compressed payload.
pub fn encrypt(payload: &[u8], compression: Compression, keys: &Keyring) -> Result<Vec<u8>, FormatError> {
    let (key_id, key) = keys.current();
    let mut nonce_prefix = [0u8; NONCE_PREFIX];
    rand::rng().fill_bytes(&mut nonce_prefix);
    let header = header_bytes(compression, key_id, &nonce_prefix);
    let n_chunks = payload.len() / CHUNK + 1;
    let mut out = Vec::with_capacity(header.len() + payload.len() + n_chunks * TAG);
    out.extend_from_slice(&header);
    let aead = XChaCha20Poly1305::new(Key::from_slice(key));
    let mut enc = EncryptorBE32::from_aead(aead, nonce_prefix.as_slice().into());
    let mut rest = payload;
    let auth = |chunk| FormatError::Auth { key_id: key_id.to_owned(), chunk };
    let mut i = 0;
    // Every chunk that is followed by more data is a "next" chunk; what
    // remains (0..=CHUNK bytes) is the last.
    while rest.len() > CHUNK {
        let (now, later) = rest.split_at(CHUNK);
        let ct = enc.encrypt_next(Payload { msg: now, aad: &header }).map_err(|_| auth(i))?;
        out.extend_from_slice(&ct);
        rest = later;
        i += 1;
    }
    let ct = enc.encrypt_last(Payload { msg: rest, aad: &header }).map_err(|_| auth(i))?;
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Authenticates and decrypts an object, returning the (still compressed)
/// payload and its header.
pub fn decrypt(data: &[u8], keys: &Keyring) -> Result<(Header, Vec<u8>), FormatError> {
    let header = parse_header(data)?;
    let key = keys
        .get(&header.key_id)
        .ok_or_else(|| FormatError::UnknownKey { key_id: header.key_id.clone(), known: keys.ids().join(", ") })?;
    let aad = &data[..header.len];
    let body = &data[header.len..];
    if body.len() < TAG {
        return Err(FormatError::Auth { key_id: header.key_id.clone(), chunk: 0 });
    }
    let sealed = CHUNK + TAG;
    let n = body.len().div_ceil(sealed);
    let aead = XChaCha20Poly1305::new(Key::from_slice(key));
    let mut dec = DecryptorBE32::from_aead(aead, header.nonce_prefix.as_slice().into());
    let mut out = Vec::with_capacity(body.len());
    let auth = |chunk| FormatError::Auth { key_id: header.key_id.clone(), chunk };
    for i in 0..n - 1 {
        let ct = &body[i * sealed..(i + 1) * sealed];
        let pt = dec.decrypt_next(Payload { msg: ct, aad }).map_err(|_| auth(i))?;
        out.extend_from_slice(&pt);
    }
    let last = &body[(n - 1) * sealed..];
    if last.len() < TAG {
        return Err(auth(n - 1));
    }
    let pt = dec.decrypt_last(Payload { msg: last, aad }).map_err(|_| auth(n - 1))?;
    out.extend_from_slice(&pt);
    Ok((header, out))
}

/// Authenticates, decrypts and decompresses an object. `size_hint` is the
/// expected plaintext size when known.
pub fn open(data: &[u8], keys: &Keyring, size_hint: Option<usize>) -> Result<Vec<u8>, FormatError> {
    let (header, payload) = decrypt(data, keys)?;
    match header.compression {
        Compression::None => Ok(payload),
        Compression::Zstd => match size_hint {
            Some(n) => zstd::bulk::decompress(&payload, n.max(1)).map_err(|e| FormatError::Decompress(e.to_string())),
            None => zstd::stream::decode_all(payload.as_slice()).map_err(|e| FormatError::Decompress(e.to_string())),
        },
    }
}

/// Decrypts with the source keyring and seals the same compressed payload
/// with the target keyring's current key (used by copies: each destination
/// has its own key).
pub fn reseal(data: &[u8], from: &Keyring, to: &Keyring) -> Result<Vec<u8>, FormatError> {
    let (header, payload) = decrypt(data, from)?;
    encrypt(&payload, header.compression, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(id: &str, byte: u8) -> Keyring {
        Keyring::new(id, [byte; 32], Vec::new())
    }

    #[test]
    fn round_trip_sizes() {
        let keys = ring("k1", 7);
        for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5] {
            let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            for level in [0, 3] {
                let sealed = seal(&plain, level, &keys).expect("seal");
                assert_eq!(open(&sealed, &keys, None).expect("open"), plain, "size {size} level {level}");
            }
        }
    }

    #[test]
    fn uncompressible_exact_chunks() {
        // Payload sizes that are exact multiples of CHUNK (level 0) must still round-trip.
        let keys = ring("k1", 1);
        let plain = vec![9u8; 2 * CHUNK];
        let sealed = seal(&plain, 0, &keys).expect("seal");
        assert_eq!(open(&sealed, &keys, Some(plain.len())).expect("open"), plain);
    }

    #[test]
    fn corruption_and_truncation_are_detected() {
        let keys = ring("k1", 7);
        let plain = vec![5u8; 2 * CHUNK + 10];
        let sealed = seal(&plain, 0, &keys).expect("seal");
        let mut bad = sealed.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        assert!(matches!(open(&bad, &keys, None), Err(FormatError::Auth { .. })));
        // Drop the last chunk: the previous one was not sealed as last.
        let h = parse_header(&sealed).expect("header").len;
        let cut = &sealed[..h + 2 * (CHUNK + TAG)];
        assert!(matches!(open(cut, &keys, None), Err(FormatError::Auth { .. })));
        // A changed header byte (compression flag) fails authentication.
        let mut hdr = sealed.clone();
        hdr[MAGIC.len() + 1] = 1;
        assert!(open(&hdr, &keys, None).is_err());
        assert_eq!(open(b"garbage", &keys, None), Err(FormatError::BadMagic));
    }

    #[test]
    fn rotation_and_wrong_key() {
        let old = ring("k1", 1);
        let sealed = seal(b"hello", 3, &old).expect("seal");
        let rotated = Keyring::new("k2", [2; 32], vec![("k1".into(), [1; 32])]);
        assert_eq!(open(&sealed, &rotated, None).expect("old key still reads"), b"hello");
        assert_eq!(parse_header(&seal(b"x", 3, &rotated).expect("seal")).expect("h").key_id, "k2");
        let wrong = ring("k1", 9);
        let err = open(&sealed, &wrong, None).expect_err("wrong key");
        assert!(err.to_string().contains("key id \"k1\""), "{err}");
        let missing = ring("k3", 1);
        let err = open(&sealed, &missing, None).expect_err("unknown key");
        assert!(matches!(err, FormatError::UnknownKey { .. }), "{err}");
    }

    #[test]
    fn reseal_changes_key() {
        let a = ring("a", 1);
        let b = ring("b", 2);
        let sealed = seal(b"payload", 3, &a).expect("seal");
        let moved = reseal(&sealed, &a, &b).expect("reseal");
        assert_eq!(open(&moved, &b, None).expect("open"), b"payload");
        assert!(open(&moved, &a, None).is_err());
    }
}
