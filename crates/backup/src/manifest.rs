//! Where things live in a destination, and the backup manifest.
//!
//! ```text
//! <cluster>/backups/<id>/data/<n>        parts of the base backup's tar stream
//! <cluster>/backups/<id>/manifest.json   written last: a backup without it is incomplete
//! <cluster>/wal/<segment>                archived WAL (and .history, .backup files)
//! <cluster>/verifications/<id>/<at>.json results of `restore --verify`
//! ```
//!
//! The manifest is plain JSON (no key needed to list, copy or verify stored
//! bytes) and carries its own checksum.

use pgdr_model::Lsn;
use serde::{Deserialize, Serialize};

pub fn backups_prefix(cluster: &str) -> String {
    format!("{cluster}/backups/")
}

pub fn backup_prefix(cluster: &str, id: &str) -> String {
    format!("{cluster}/backups/{id}/")
}

pub fn manifest_key(cluster: &str, id: &str) -> String {
    format!("{cluster}/backups/{id}/manifest.json")
}

pub fn part_key(cluster: &str, id: &str, name: &str) -> String {
    format!("{cluster}/backups/{id}/{name}")
}

pub fn wal_prefix(cluster: &str) -> String {
    format!("{cluster}/wal/")
}

pub fn wal_key(cluster: &str, name: &str) -> String {
    format!("{cluster}/wal/{name}")
}

pub fn verification_key(cluster: &str, id: &str, at: &str) -> String {
    format!("{cluster}/verifications/{id}/{at}.json")
}

/// One stored object of a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Object {
    /// Name relative to the backup's folder, like `data/000003`.
    pub name: String,
    pub plain_size: u64,
    /// blake3 of the plaintext (tar bytes).
    pub plain_blake3: String,
    pub stored_size: u64,
    /// blake3 of the stored (compressed, encrypted) bytes: checked by copy and
    /// verify without the key.
    pub stored_blake3: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub cluster: String,
    /// Node the backup was read from, and whether it was a replica then.
    pub source_node: String,
    pub from_replica: bool,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub finished_at: String,
    /// `server_version_num`, like 150018.
    pub pg_version: u32,
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    /// The first WAL segment the backup needs.
    pub start_wal: String,
    pub key_id: String,
    pub compression: String,
    pub compression_level: i32,
    /// Whether the WAL needed to make the backup consistent is inside it.
    pub wal_included: bool,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    pub objects: Vec<Object>,
    /// Set on copies: the destination this one was copied from.
    #[serde(default)]
    pub copied_from: Option<String>,
    /// blake3 of this manifest's JSON with this field empty.
    pub checksum: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {key} is not valid JSON: {source}")]
    Json { key: String, source: serde_json::Error },
    #[error("manifest {key} is corrupt: its checksum does not match its contents")]
    Checksum { key: String },
}

impl Manifest {
    fn body_hash(&self) -> String {
        let mut m = self.clone();
        m.checksum = String::new();
        // Serializing a plain struct cannot fail.
        let text = serde_json::to_vec(&m).unwrap_or_default();
        blake3::hash(&text).to_hex().to_string()
    }

    /// Sets the checksum and returns the JSON to store.
    pub fn seal(&mut self) -> Vec<u8> {
        self.checksum = self.body_hash();
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses and checks a stored manifest.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|source| ManifestError::Json { key: key.to_owned(), source })?;
        if m.body_hash() != m.checksum {
            return Err(ManifestError::Checksum { key: key.to_owned() });
        }
        Ok(m)
    }

    pub fn created(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::parse_from_rfc3339(&self.created_at).ok().map(|d| d.with_timezone(&chrono::Utc))
    }

    pub fn finished(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::parse_from_rfc3339(&self.finished_at).ok().map(|d| d.with_timezone(&chrono::Utc))
    }
}

/// The WAL segment file name holding `lsn` on `timeline` (16 MiB segments).
pub fn segment_name(timeline: u32, lsn: Lsn, seg_size: u64) -> String {
    let seg = lsn.0 / seg_size;
    let per_log = 0x1_0000_0000u64 / seg_size;
    format!("{timeline:08X}{:08X}{:08X}", seg / per_log, seg % per_log)
}

/// Whether `name` is a WAL segment file name (24 hex digits).
pub fn is_segment(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The position part of a segment or `.backup` name (log and segment
/// numbers, without the timeline), for ordering across timelines.
pub fn segment_position(name: &str) -> Option<&str> {
    if name.len() >= 24 && name[..24].bytes().all(|b| b.is_ascii_hexdigit()) { Some(&name[8..24]) } else { None }
}

/// A new backup id: sortable UTC time plus a random suffix.
pub fn new_id(now: chrono::DateTime<chrono::Utc>) -> String {
    use rand::Rng;
    format!("{}-{:04x}", now.format("%Y%m%dT%H%M%SZ"), rand::rng().random::<u16>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names() {
        let seg = 16 * 1024 * 1024;
        assert_eq!(segment_name(1, Lsn(0x0200_0028), seg), "000000010000000000000002");
        assert_eq!(segment_name(2, Lsn(0x1_0000_0000 + 0x0300_0000), seg), "000000020000000100000003");
        assert!(is_segment("000000010000000000000002"));
        assert!(!is_segment("00000002.history"));
        assert_eq!(segment_position("000000010000000000000002.00000028.backup"), Some("0000000000000002"));
    }

    #[test]
    fn manifest_checksum() {
        let mut m = Manifest {
            format: 1,
            id: "x".into(),
            cluster: "c".into(),
            source_node: "n".into(),
            from_replica: false,
            created_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:00:01Z".into(),
            pg_version: 150000,
            timeline: 1,
            start_lsn: Lsn(1),
            stop_lsn: Lsn(2),
            start_wal: "000000010000000000000001".into(),
            key_id: "k1".into(),
            compression: "zstd".into(),
            compression_level: 3,
            wal_included: true,
            plain_bytes: 0,
            stored_bytes: 0,
            objects: vec![],
            copied_from: None,
            checksum: String::new(),
        };
        let bytes = m.seal();
        assert_eq!(Manifest::parse("k", &bytes).expect("parse"), m);
        let tampered = String::from_utf8(bytes).expect("utf8").replace("\"n\"", "\"m\"");
        assert!(matches!(Manifest::parse("k", tampered.as_bytes()), Err(ManifestError::Checksum { .. })));
    }
}
