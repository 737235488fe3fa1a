//! The stored object format: a header, then chunked authenticated encryption
//! (the STREAM construction over XChaCha20-Poly1305) of zstd-compressed data.
//!
//! ```text
//! magic "PGDRBK" | version u8 (2) | compression u8 | key id length u8 | key id
//! | binding length u16 (big endian) | binding | nonce prefix (19 bytes)
//! | chunk 0 | chunk 1 | … | last chunk
//! ```
//!
//! Every chunk but the last holds [`CHUNK`] bytes of ciphertext plus a 16-byte
//! tag; the last holds the rest (possibly nothing) and is sealed with STREAM's
//! "last" flag, so truncation at a chunk boundary is detected. The whole header
//! is the associated data of every chunk, so a changed key id, compression
//! byte or binding fails authentication. The key id names which key of the
//! destination sealed the object: keys rotate without rewriting old objects.
//!
//! The **binding** is the object's key path relative to the destination
//! (`<cluster>/backups/<backup id>/data/000003`, `<cluster>/wal/<segment>`),
//! so it names the cluster, the backup and the object. A reader states the
//! binding it expects; an object that authenticates but was sealed for
//! another place (moved or swapped between backups, clusters or WAL names by
//! someone with write access to the storage but not the key) is rejected as
//! [`FormatError::Substituted`], distinct from corruption ([`FormatError::Auth`]).
//!
//! Version 1 (before bindings) is not read: [`FormatError::Legacy`] says so.
//! Sizes taken from stored data are capped ([`MAX_PLAIN`], [`MAX_BINDING`]).

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305};
use rand::RngCore;

use crate::keys::Keyring;

pub const MAGIC: &[u8; 6] = b"PGDRBK";
pub const VERSION: u8 = 2;
/// Plaintext bytes per AEAD chunk.
pub const CHUNK: usize = 1 << 20;
const TAG: usize = 16;
const NONCE_PREFIX: usize = 19;
/// Longest binding (key path) accepted in a header.
pub const MAX_BINDING: usize = 1024;
/// Largest plaintext an object may hold (a WAL segment is at most 1 GiB;
/// backup parts are far smaller): no stored size makes a reader allocate more.
pub const MAX_PLAIN: usize = 1 << 30;
/// Largest stored object a reader accepts (the plaintext cap plus the AEAD
/// and compression overhead).
pub const MAX_STORED: u64 = (MAX_PLAIN as u64) + (MAX_PLAIN as u64 / 64) + (1 << 20);

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
    #[error("object format version {0} is newer than this pgdr understands (2)")]
    Version(u8),
    #[error(
        "object format version {0} was written by a pgdr from before objects were bound to their place (issue 15); this pgdr reads only version 2: take a new backup (old WAL and backups stay readable with the older pgdr)"
    )]
    Legacy(u8),
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
    #[error(
        "SUBSTITUTED: the object authenticates but was sealed for {found:?}, not for {expected:?}: it was moved or swapped here from another backup, cluster or WAL name by someone with write access to the storage"
    )]
    Substituted { expected: String, found: String },
    #[error("object is too large: {size} bytes, the limit is {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("cannot compress: {0}")]
    Compress(String),
    #[error("cannot decompress an authenticated object: {0}")]
    Decompress(String),
}

impl FormatError {
    /// A genuine object found in the wrong place (as opposed to damage).
    pub fn is_substitution(&self) -> bool {
        matches!(self, FormatError::Substituted { .. })
    }
}

/// The parsed header of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub compression: Compression,
    pub key_id: String,
    /// The key path the object was sealed for (authenticated only once the
    /// chunks are).
    pub binding: String,
    pub nonce_prefix: [u8; NONCE_PREFIX],
    /// Header length in bytes: where the chunks start.
    pub len: usize,
}

fn header_bytes(
    compression: Compression,
    key_id: &str,
    binding: &str,
    nonce_prefix: &[u8; NONCE_PREFIX],
) -> Result<Vec<u8>, FormatError> {
    if binding.len() > MAX_BINDING {
        return Err(FormatError::TooLarge { size: binding.len() as u64, limit: MAX_BINDING as u64 });
    }
    let mut h = Vec::with_capacity(MAGIC.len() + 5 + key_id.len() + binding.len() + NONCE_PREFIX);
    h.extend_from_slice(MAGIC);
    h.push(VERSION);
    h.push(compression as u8);
    // Key ids are short names; longer ones are cut (validated in Keyring).
    let id = &key_id.as_bytes()[..key_id.len().min(255)];
    h.push(id.len() as u8);
    h.extend_from_slice(id);
    h.extend_from_slice(&(binding.len() as u16).to_be_bytes());
    h.extend_from_slice(binding.as_bytes());
    h.extend_from_slice(nonce_prefix);
    Ok(h)
}

/// Reads an object's header. Never allocates more than the header's own
/// bytes, whatever its length fields say.
pub fn parse_header(data: &[u8]) -> Result<Header, FormatError> {
    if data.len() < MAGIC.len() + 3 || &data[..MAGIC.len()] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let mut p = MAGIC.len();
    let version = data[p];
    if version == 1 {
        return Err(FormatError::Legacy(version));
    }
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
    let key_id = std::str::from_utf8(data.get(p..p + id_len).ok_or(FormatError::Header)?)
        .map_err(|_| FormatError::Header)?
        .to_owned();
    p += id_len;
    let len_bytes: [u8; 2] = data.get(p..p + 2).and_then(|b| b.try_into().ok()).ok_or(FormatError::Header)?;
    let b_len = u16::from_be_bytes(len_bytes) as usize;
    if b_len > MAX_BINDING {
        return Err(FormatError::Header);
    }
    p += 2;
    let binding = std::str::from_utf8(data.get(p..p + b_len).ok_or(FormatError::Header)?)
        .map_err(|_| FormatError::Header)?
        .to_owned();
    p += b_len;
    let nonce: &[u8] = data.get(p..p + NONCE_PREFIX).ok_or(FormatError::Header)?;
    let mut nonce_prefix = [0u8; NONCE_PREFIX];
    nonce_prefix.copy_from_slice(nonce);
    Ok(Header { compression, key_id, binding, nonce_prefix, len: p + NONCE_PREFIX })
}

/// Compresses (zstd at `level`, 0 for none) and encrypts `plain` with the
/// keyring's current key, bound to `binding` (the object's key path).
pub fn seal(plain: &[u8], level: i32, keys: &Keyring, binding: &str) -> Result<Vec<u8>, FormatError> {
    if plain.len() > MAX_PLAIN {
        return Err(FormatError::TooLarge { size: plain.len() as u64, limit: MAX_PLAIN as u64 });
    }
    if level == 0 {
        return encrypt(plain, Compression::None, keys, binding);
    }
    let compressed = zstd::bulk::compress(plain, level).map_err(|e| FormatError::Compress(e.to_string()))?;
    encrypt(&compressed, Compression::Zstd, keys, binding)
}

/// Encrypts an already-compressed payload, bound to `binding`.
pub fn encrypt(
    payload: &[u8],
    compression: Compression,
    keys: &Keyring,
    binding: &str,
) -> Result<Vec<u8>, FormatError> {
    let key = keys.current();
    let mut nonce_prefix = [0u8; NONCE_PREFIX];
    rand::rng().fill_bytes(&mut nonce_prefix);
    let header = header_bytes(compression, &key.id, binding, &nonce_prefix)?;
    let n_chunks = payload.len() / CHUNK + 1;
    let mut out = Vec::with_capacity(header.len() + payload.len() + n_chunks * TAG);
    out.extend_from_slice(&header);
    let aead = XChaCha20Poly1305::new(Key::from_slice(&key.enc));
    let mut enc = EncryptorBE32::from_aead(aead, nonce_prefix.as_slice().into());
    let mut rest = payload;
    let auth = |chunk| FormatError::Auth { key_id: key.id.clone(), chunk };
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

/// Authenticates and decrypts an object sealed for `binding`, returning the
/// (still compressed) payload and its header. An object that authenticates
/// but was sealed for another binding is [`FormatError::Substituted`].
pub fn decrypt(data: &[u8], keys: &Keyring, binding: &str) -> Result<(Header, Vec<u8>), FormatError> {
    let header = parse_header(data)?;
    if data.len() as u64 > MAX_STORED {
        return Err(FormatError::TooLarge { size: data.len() as u64, limit: MAX_STORED });
    }
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
    let aead = XChaCha20Poly1305::new(Key::from_slice(&key.enc));
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
    // Only now is the header's binding authentic.
    if header.binding != binding {
        return Err(FormatError::Substituted { expected: binding.to_owned(), found: header.binding });
    }
    Ok((header, out))
}

/// Authenticates, decrypts and decompresses an object sealed for `binding`.
/// `size_hint` is the expected plaintext size when known (from an
/// authenticated manifest); either way the plaintext is capped at [`MAX_PLAIN`].
pub fn open(data: &[u8], keys: &Keyring, binding: &str, size_hint: Option<usize>) -> Result<Vec<u8>, FormatError> {
    let (header, payload) = decrypt(data, keys, binding)?;
    match header.compression {
        Compression::None => Ok(payload),
        Compression::Zstd => match size_hint {
            Some(n) if n > MAX_PLAIN => Err(FormatError::TooLarge { size: n as u64, limit: MAX_PLAIN as u64 }),
            Some(n) => zstd::bulk::decompress(&payload, n.max(1)).map_err(|e| FormatError::Decompress(e.to_string())),
            None => {
                use std::io::Read;
                let dec = zstd::stream::read::Decoder::new(payload.as_slice())
                    .map_err(|e| FormatError::Decompress(e.to_string()))?;
                let mut out = Vec::new();
                dec.take(MAX_PLAIN as u64 + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| FormatError::Decompress(e.to_string()))?;
                if out.len() > MAX_PLAIN {
                    return Err(FormatError::TooLarge { size: out.len() as u64, limit: MAX_PLAIN as u64 });
                }
                Ok(out)
            }
        },
    }
}

/// Decrypts with the source keyring and seals the same compressed payload
/// with the target keyring's current key and the same binding (used by
/// copies: each destination has its own key, the key paths are the same).
pub fn reseal(data: &[u8], from: &Keyring, to: &Keyring, binding: &str) -> Result<Vec<u8>, FormatError> {
    let (header, payload) = decrypt(data, from, binding)?;
    encrypt(&payload, header.compression, to, binding)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: &str = "c1/backups/20260101T000000Z-0001/data/000000";

    fn ring(id: &str, byte: u8) -> Keyring {
        Keyring::new(id, [byte; 32], Vec::new())
    }

    #[test]
    fn round_trip_sizes() {
        let keys = ring("k1", 7);
        for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5] {
            let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            for level in [0, 3] {
                let sealed = seal(&plain, level, &keys, AT).expect("seal");
                assert_eq!(open(&sealed, &keys, AT, None).expect("open"), plain, "size {size} level {level}");
            }
        }
    }

    #[test]
    fn uncompressible_exact_chunks() {
        // Payload sizes that are exact multiples of CHUNK (level 0) must still round-trip.
        let keys = ring("k1", 1);
        let plain = vec![9u8; 2 * CHUNK];
        let sealed = seal(&plain, 0, &keys, AT).expect("seal");
        assert_eq!(open(&sealed, &keys, AT, Some(plain.len())).expect("open"), plain);
    }

    #[test]
    fn corruption_and_truncation_are_detected() {
        let keys = ring("k1", 7);
        let plain = vec![5u8; 2 * CHUNK + 10];
        let sealed = seal(&plain, 0, &keys, AT).expect("seal");
        let mut bad = sealed.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        assert!(matches!(open(&bad, &keys, AT, None), Err(FormatError::Auth { .. })));
        // Drop the last chunk: the previous one was not sealed as last.
        let h = parse_header(&sealed).expect("header").len;
        let cut = &sealed[..h + 2 * (CHUNK + TAG)];
        assert!(matches!(open(cut, &keys, AT, None), Err(FormatError::Auth { .. })));
        // A changed header byte (compression flag) fails authentication.
        let mut hdr = sealed.clone();
        hdr[MAGIC.len() + 1] = 1;
        assert!(open(&hdr, &keys, AT, None).is_err());
        assert_eq!(open(b"garbage", &keys, AT, None), Err(FormatError::BadMagic));
    }

    #[test]
    fn substitution_is_named_and_distinct_from_corruption() {
        let keys = ring("k1", 7);
        let other = "c1/backups/20251231T000000Z-0002/data/000000";
        let sealed = seal(b"from another backup", 3, &keys, other).expect("seal");
        let err = open(&sealed, &keys, AT, None).expect_err("swapped");
        assert!(err.is_substitution(), "{err}");
        assert!(err.to_string().contains(other) && err.to_string().contains(AT), "{err}");
        // Rewriting the header's binding to the expected one breaks authentication instead.
        let h = parse_header(&sealed).expect("header");
        let start = h.len - NONCE_PREFIX - h.binding.len();
        let mut forged = sealed.clone();
        assert_eq!(other.len(), AT.len());
        forged[start..start + other.len()].copy_from_slice(AT.as_bytes());
        let err = open(&forged, &keys, AT, None).expect_err("forged");
        assert!(matches!(err, FormatError::Auth { .. }), "{err}");
        // Another cluster's WAL of the same name.
        let wal = seal(b"wal", 3, &keys, "c2/wal/000000010000000000000001").expect("seal");
        assert!(open(&wal, &keys, "c1/wal/000000010000000000000001", None).expect_err("x").is_substitution());
    }

    #[test]
    fn hostile_headers_and_sizes() {
        let keys = ring("k1", 7);
        // Version 1 objects get a clear "older format" error.
        let mut v1 = seal(b"x", 3, &keys, AT).expect("seal");
        v1[MAGIC.len()] = 1;
        assert!(matches!(open(&v1, &keys, AT, None), Err(FormatError::Legacy(1))));
        // A binding length beyond the data or the cap is a header error, not an allocation.
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(&[VERSION, 1, 2, b'k', b'1', 0xff, 0xff]);
        assert_eq!(parse_header(&h), Err(FormatError::Header));
        h.truncate(MAGIC.len() + 5);
        h.extend_from_slice(&[0x00, 0x10]);
        assert_eq!(parse_header(&h), Err(FormatError::Header));
        // A size hint beyond the cap is refused before allocating.
        let sealed = seal(b"small", 3, &keys, AT).expect("seal");
        assert!(matches!(open(&sealed, &keys, AT, Some(usize::MAX)), Err(FormatError::TooLarge { .. })));
        // Every prefix of a valid object fails cleanly.
        for n in 0..sealed.len() {
            assert!(open(&sealed[..n], &keys, AT, None).is_err());
        }
    }

    #[test]
    fn rotation_and_wrong_key() {
        let old = ring("k1", 1);
        let sealed = seal(b"hello", 3, &old, AT).expect("seal");
        let rotated = Keyring::new("k2", [2; 32], vec![("k1".into(), [1; 32])]);
        assert_eq!(open(&sealed, &rotated, AT, None).expect("old key still reads"), b"hello");
        assert_eq!(parse_header(&seal(b"x", 3, &rotated, AT).expect("seal")).expect("h").key_id, "k2");
        let wrong = ring("k1", 9);
        let err = open(&sealed, &wrong, AT, None).expect_err("wrong key");
        assert!(err.to_string().contains("key id \"k1\""), "{err}");
        let missing = ring("k3", 1);
        let err = open(&sealed, &missing, AT, None).expect_err("unknown key");
        assert!(matches!(err, FormatError::UnknownKey { .. }), "{err}");
    }

    #[test]
    fn reseal_changes_key() {
        let a = ring("a", 1);
        let b = ring("b", 2);
        let sealed = seal(b"payload", 3, &a, AT).expect("seal");
        let moved = reseal(&sealed, &a, &b, AT).expect("reseal");
        assert_eq!(open(&moved, &b, AT, None).expect("open"), b"payload");
        assert!(open(&moved, &a, AT, None).is_err());
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

            /// Any stored bytes are refused or opened, never a panic, and a
            /// hostile size hint allocates nothing unbounded.
            #[test]
            fn any_bytes_open_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..4096), hint in any::<Option<usize>>()) {
                let keys = ring("k1", 7);
                let _ = parse_header(&bytes);
                let _ = open(&bytes, &keys, AT, hint);
            }

            /// A sealed object with one byte changed or cut short never opens
            /// to other bytes than the original.
            #[test]
            fn any_edit_of_a_sealed_object_is_refused(plain in proptest::collection::vec(any::<u8>(), 0..3000), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
                let keys = ring("k1", 7);
                let good = seal(&plain, 3, &keys, AT).expect("seal");
                let i = at.index(good.len());
                let mut bad = good.clone();
                if cut { bad.truncate(i) } else { bad[i] = byte }
                if let Ok(opened) = open(&bad, &keys, AT, None) {
                    prop_assert_eq!(opened, plain);
                }
            }
        }
    }
}
