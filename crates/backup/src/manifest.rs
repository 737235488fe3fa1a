//! Where things live in a destination, and the backup manifest.
//!
//! ```text
//! <cluster>/backups/<id>/data/<n>        parts of the base backup's tar stream
//! <cluster>/backups/<id>/manifest.json   written last: a backup without it is incomplete
//! <cluster>/wal/<segment>                archived WAL (and .history, .backup files)
//! <cluster>/verifications/<id>/<at>.json results of `restore --verify`
//! ```
//!
//! The manifest is plain JSON, authenticated with a keyed BLAKE3 under a key
//! derived from the destination's key (named by `key_id`): it cannot be
//! altered, forged or moved to another backup's or cluster's path by someone
//! with write access to the storage but not the key. Every object's size and
//! stored checksum are in it, so an authentic manifest also pins its objects.
//!
//! Each manifest carries a sequence number (one more than the newest backup
//! of the cluster at the destination when it was written) and the id of that
//! previous backup: readers detect a rollback (the newest backup deleted or
//! hidden, an older one served as the latest) against the newest sequence
//! they have seen, and a missing backup in the middle from the chain.
//!
//! Format 3 adds the list of files in the tar stream ([`FileEntry`]: path,
//! kind, mode, size, where its bytes start in the stream and their blake3),
//! which a delta restore compares a data directory against; format 2
//! manifests (no file list) are still read and restore in full. Format 1
//! manifests (a plain checksum, no key) are reported as legacy and not used.

use pgdr_model::Lsn;
use serde::{Deserialize, Serialize};

use crate::keys::{Key, Keyring};

/// The manifest format this pgdr writes and reads.
pub const FORMAT: u32 = 3;
/// The oldest manifest format this pgdr reads (2: authenticated, no file list).
pub const OLDEST_READ: u32 = 2;
/// Largest manifest read (about 100 000 objects): a hostile object at a
/// manifest's path cannot make a reader allocate more.
pub const MAX_MANIFEST: u64 = 64 << 20;

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
#[serde(deny_unknown_fields)]
pub struct Object {
    /// Name relative to the backup's folder, like `data/000003`.
    pub name: String,
    pub plain_size: u64,
    /// blake3 of the plaintext (tar bytes).
    pub plain_blake3: String,
    pub stored_size: u64,
    /// blake3 of the stored (compressed, encrypted) bytes: checked by copy and
    /// verify before decrypting.
    pub stored_blake3: String,
}

/// What a [`FileEntry`] is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Link,
}

/// One entry of the base backup's tar stream (format 3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the data directory, `/`-separated, no `.` or `..` parts.
    pub path: String,
    pub kind: FileKind,
    /// Permission bits (`0o600`, `0o700`).
    pub mode: u32,
    /// Bytes (files only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Where the file's bytes start in the plaintext tar stream (files only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// blake3 of the file's bytes (files only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blake3: String,
    /// A link's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub cluster: String,
    /// One more than the newest backup of this cluster known when this one
    /// was written (at the destination it was taken to; kept by copies).
    pub seq: u64,
    /// The newest backup of this cluster at the destination when this one
    /// was written.
    pub previous: Option<String>,
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
    /// The key that sealed the objects and authenticates this manifest.
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
    /// Keyed BLAKE3 (hex) of this manifest's JSON with this field empty,
    /// under the manifest key derived from key `key_id`.
    pub mac: String,
    /// Every entry of the tar stream (format 3; empty in format 2 manifests
    /// and when the stream could not be indexed): what a delta restore
    /// compares against. Left out of the JSON when empty, so a format 2
    /// manifest's authenticated bytes are unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileEntry>,
}

/// What kind of trouble a stored thing is in: the words `verify` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trouble {
    /// Damaged bytes: a checksum, authentication or parse failure.
    Corrupt,
    /// Authentic data in the wrong place: swapped or moved between backups,
    /// clusters or WAL names.
    Substituted,
    /// An older valid state served in place of a newer one.
    Rollback,
    /// Not there.
    Missing,
    /// Written by an older pgdr in a format this one does not read.
    Legacy,
    /// Sealed with a key this destination does not have.
    Key,
}

impl std::fmt::Display for Trouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trouble::Corrupt => "corrupt",
            Trouble::Substituted => "substituted",
            Trouble::Rollback => "rollback",
            Trouble::Missing => "missing",
            Trouble::Legacy => "legacy",
            Trouble::Key => "key",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {key} is not valid JSON of a format {FORMAT} manifest: {source}")]
    Json { key: String, source: serde_json::Error },
    #[error("manifest {key} is {size} bytes, more than any manifest ({MAX_MANIFEST}): not read")]
    TooLarge { key: String, size: u64 },
    #[error(
        "manifest {key} is format {format}, written by a pgdr from before manifests were authenticated (issue 15): this pgdr does not trust it; take a new backup"
    )]
    Legacy { key: String, format: u32 },
    #[error("manifest {key} is format {format}, newer than this pgdr understands ({FORMAT})")]
    Version { key: String, format: u32 },
    #[error(
        "manifest {key} names key id {key_id:?}, which is not configured for this destination (configured: {known})"
    )]
    UnknownKey { key: String, key_id: String, known: String },
    #[error(
        "manifest {key} does not authenticate with key id {key_id:?}: it was altered or corrupted after it was written (or forged by someone without the key)"
    )]
    Unauthentic { key: String, key_id: String },
    #[error(
        "SUBSTITUTED: manifest {key} is authentic but belongs to backup {found_id:?} of cluster {found_cluster:?}: it was copied here from another backup's or cluster's path"
    )]
    Misplaced { key: String, found_cluster: String, found_id: String },
    #[error("{key} is not a manifest path (<cluster>/backups/<id>/manifest.json)")]
    Path { key: String },
}

impl ManifestError {
    /// How `verify` and `list` classify this problem.
    pub fn trouble(&self) -> Trouble {
        match self {
            ManifestError::Json { .. }
            | ManifestError::TooLarge { .. }
            | ManifestError::Unauthentic { .. }
            | ManifestError::Path { .. } => Trouble::Corrupt,
            ManifestError::Legacy { .. } | ManifestError::Version { .. } => Trouble::Legacy,
            ManifestError::UnknownKey { .. } => Trouble::Key,
            ManifestError::Misplaced { .. } => Trouble::Substituted,
        }
    }
}

/// The cluster and backup id a manifest path names.
pub fn parse_manifest_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_suffix("/manifest.json")?;
    let (cluster, id) = rest.split_once("/backups/")?;
    (!cluster.is_empty() && !cluster.contains('/') && !id.is_empty() && !id.contains('/')).then_some((cluster, id))
}

impl Manifest {
    /// The canonical bytes the MAC covers: this manifest's compact JSON with
    /// `mac` empty (field order is the struct's).
    fn body(&self) -> Vec<u8> {
        let mut m = self.clone();
        m.mac = String::new();
        // Serializing a plain struct cannot fail.
        serde_json::to_vec(&m).unwrap_or_default()
    }

    /// Authenticates the manifest with `key` (which becomes its `key_id`)
    /// and returns the JSON to store.
    pub fn seal(&mut self, key: &Key) -> Vec<u8> {
        self.format = FORMAT;
        self.key_id = key.id.clone();
        self.mac = key.mac(&self.body()).to_hex().to_string();
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses a stored manifest read from `key` and checks that it is
    /// authentic (its MAC under the destination's key named by `key_id`) and
    /// in its place (the cluster and id of `key`). Never panics, whatever the bytes.
    pub fn parse(key: &str, bytes: &[u8], keys: &Keyring) -> Result<Manifest, ManifestError> {
        if bytes.len() as u64 > MAX_MANIFEST {
            return Err(ManifestError::TooLarge { key: key.to_owned(), size: bytes.len() as u64 });
        }
        let (want_cluster, want_id) =
            parse_manifest_key(key).ok_or_else(|| ManifestError::Path { key: key.to_owned() })?;
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let v: Version =
            serde_json::from_slice(bytes).map_err(|source| ManifestError::Json { key: key.to_owned(), source })?;
        if v.format < OLDEST_READ {
            return Err(ManifestError::Legacy { key: key.to_owned(), format: v.format });
        }
        if v.format > FORMAT {
            return Err(ManifestError::Version { key: key.to_owned(), format: v.format });
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|source| ManifestError::Json { key: key.to_owned(), source })?;
        let k = keys.get(&m.key_id).ok_or_else(|| ManifestError::UnknownKey {
            key: key.to_owned(),
            key_id: m.key_id.clone(),
            known: keys.ids().join(", "),
        })?;
        // Only the canonical (lower-case) spelling: `from_hex` also takes
        // upper case, which would let an edited manifest pass as authentic.
        let claimed = blake3::Hash::from_hex(&m.mac)
            .ok()
            .filter(|h| h.to_hex().as_str() == m.mac)
            .ok_or_else(|| ManifestError::Unauthentic { key: key.to_owned(), key_id: m.key_id.clone() })?;
        // blake3::Hash equality is constant-time.
        if k.mac(&m.body()) != claimed {
            return Err(ManifestError::Unauthentic { key: key.to_owned(), key_id: m.key_id.clone() });
        }
        if m.cluster != want_cluster || m.id != want_id {
            return Err(ManifestError::Misplaced { key: key.to_owned(), found_cluster: m.cluster, found_id: m.id });
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
pub(crate) mod tests {
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

    pub(crate) fn sample(cluster: &str, id: &str) -> Manifest {
        Manifest {
            format: FORMAT,
            id: id.into(),
            cluster: cluster.into(),
            seq: 1,
            previous: None,
            source_node: "n".into(),
            from_replica: false,
            created_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:00:01Z".into(),
            pg_version: 150000,
            timeline: 1,
            start_lsn: Lsn(1),
            stop_lsn: Lsn(2),
            start_wal: "000000010000000000000001".into(),
            key_id: String::new(),
            compression: "zstd".into(),
            compression_level: 3,
            wal_included: true,
            plain_bytes: 0,
            stored_bytes: 0,
            objects: vec![],
            copied_from: None,
            mac: String::new(),
            files: vec![],
        }
    }

    #[test]
    fn manifest_authentication() {
        let keys = Keyring::new("k1", [1; 32], vec![]);
        let mut m = sample("c", "x");
        let bytes = m.seal(keys.current());
        let at = manifest_key("c", "x");
        assert_eq!(Manifest::parse(&at, &bytes, &keys).expect("parse"), m);
        // Tampered: a changed field fails authentication.
        let tampered = String::from_utf8(bytes.clone()).expect("utf8").replace("\"n\"", "\"m\"");
        let err = Manifest::parse(&at, tampered.as_bytes(), &keys).expect_err("tampered");
        assert!(matches!(err, ManifestError::Unauthentic { .. }) && err.trouble() == Trouble::Corrupt, "{err}");
        // Another key (another destination) does not authenticate it.
        let other = Keyring::new("k1", [2; 32], vec![]);
        assert!(matches!(Manifest::parse(&at, &bytes, &other), Err(ManifestError::Unauthentic { .. })));
        // Authentic but moved to another backup's or cluster's path: substitution.
        for wrong in [manifest_key("c", "y"), manifest_key("d", "x")] {
            let err = Manifest::parse(&wrong, &bytes, &keys).expect_err("moved");
            assert_eq!(err.trouble(), Trouble::Substituted, "{err}");
        }
        // An extra field is not silently ignored.
        let extra = String::from_utf8(bytes.clone()).expect("utf8").replacen('{', "{\"evil\": 1,", 1);
        assert!(Manifest::parse(&at, extra.as_bytes(), &keys).is_err());
        // The old format: a clear "legacy" error.
        let old = br#"{"format": 1, "id": "x", "checksum": "00"}"#;
        assert_eq!(Manifest::parse(&at, old, &keys).expect_err("v1").trouble(), Trouble::Legacy);
        // Oversized input is refused before parsing.
        let big = vec![b' '; MAX_MANIFEST as usize + 1];
        assert!(matches!(Manifest::parse(&at, &big, &keys), Err(ManifestError::TooLarge { .. })));
        assert!(parse_manifest_key("c/backups/x/manifest.json") == Some(("c", "x")));
        assert!(parse_manifest_key("c/backups/x/y/manifest.json").is_none());
    }

    #[test]
    fn format_2_manifests_still_read_and_file_lists_are_authenticated() {
        let keys = Keyring::new("k1", [1; 32], vec![]);
        let at = manifest_key("c", "x");
        // A format 2 manifest as an older pgdr sealed it: no `files` in its JSON.
        let mut old = sample("c", "x");
        old.format = 2;
        old.key_id = "k1".into();
        old.mac = keys.current().mac(&old.body()).to_hex().to_string();
        let bytes = serde_json::to_vec_pretty(&old).expect("json");
        assert!(!String::from_utf8_lossy(&bytes).contains("files"));
        let parsed = Manifest::parse(&at, &bytes, &keys).expect("format 2 reads");
        assert!(parsed.files.is_empty() && parsed.format == 2);
        // Format 3 with a file list: an edited entry fails authentication.
        let mut m = sample("c", "x");
        m.files = vec![FileEntry {
            path: "base/1/1259".into(),
            kind: FileKind::File,
            mode: 0o600,
            size: 8192,
            offset: 1536,
            blake3: "ab".repeat(32),
            target: None,
        }];
        let bytes = m.seal(keys.current());
        assert_eq!(Manifest::parse(&at, &bytes, &keys).expect("format 3").files, m.files);
        let edited = String::from_utf8(bytes).expect("utf8").replace("8192", "8193");
        assert!(matches!(Manifest::parse(&at, edited.as_bytes(), &keys), Err(ManifestError::Unauthentic { .. })));
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

            /// Any bytes at any path are an error or a manifest, never a panic.
            #[test]
            fn any_bytes_parse_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..2048), path in ".{0,60}") {
                let keys = Keyring::new("k1", [3; 32], vec![]);
                let _ = Manifest::parse(&path, &bytes, &keys);
            }

            /// A sealed manifest with any one byte changed, cut short or grown
            /// never parses as authentic unless the change is JSON whitespace;
            /// and it never panics.
            #[test]
            fn any_edit_of_a_sealed_manifest_is_refused(at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
                let keys = Keyring::new("k1", [3; 32], vec![]);
                let mut m = sample("c", "x");
                let good = m.seal(keys.current());
                let i = at.index(good.len());
                let mut bad = good.clone();
                if cut { bad.truncate(i) } else { bad[i] = byte }
                let path = manifest_key("c", "x");
                if let Ok(parsed) = Manifest::parse(&path, &bad, &keys) {
                    prop_assert_eq!(parsed, m, "an edited manifest parsed as another one");
                }
            }
        }
    }
}
