//! The list of files in a base backup's tar stream, built while the stream
//! goes by: each entry's path, kind, mode, size, where its bytes start in
//! the stream and their blake3. A delta restore compares a data directory
//! against it and fetches only the parts holding files that differ.
//!
//! `pg_basebackup -F tar` writes ustar headers; pax (`x`) and GNU long-name
//! (`L`, `K`) headers are understood too. Anything else (hard links,
//! devices, a malformed header) makes the list unusable: [`Indexer::finish`]
//! returns why, and the backup is stored without a list (it restores in
//! full, never partly).

use crate::manifest::{FileEntry, FileKind};

const BLOCK: u64 = 512;
/// Longest path or link target taken from a pax or GNU header.
const MAX_NAME: u64 = 64 * 1024;

enum State {
    /// Collecting a 512-byte header.
    Header,
    /// A file's bytes: `left` to go, then `pad` bytes of padding.
    Data { left: u64, pad: u64 },
    /// A pax or GNU long-name header's bytes, collected into `meta`.
    Meta { left: u64, pad: u64, kind: u8 },
    /// Padding after data.
    Pad { left: u64 },
    /// After the two zero blocks (or an error): the rest is ignored.
    Done,
}

/// Feeds on the tar stream in order, in pieces of any size.
pub struct Indexer {
    state: State,
    /// Bytes of the stream consumed so far.
    pos: u64,
    header: Vec<u8>,
    meta: Vec<u8>,
    /// Overrides from a pax or GNU header for the next entry.
    next_path: Option<String>,
    next_target: Option<String>,
    next_size: Option<u64>,
    hasher: Option<blake3::Hasher>,
    zero_blocks: u32,
    files: Vec<FileEntry>,
    error: Option<String>,
}

impl Default for Indexer {
    fn default() -> Self {
        Self::new()
    }
}

impl Indexer {
    pub fn new() -> Indexer {
        Indexer {
            state: State::Header,
            pos: 0,
            header: Vec::with_capacity(BLOCK as usize),
            meta: Vec::new(),
            next_path: None,
            next_target: None,
            next_size: None,
            hasher: None,
            zero_blocks: 0,
            files: Vec::new(),
            error: None,
        }
    }

    fn fail(&mut self, why: String) {
        if self.error.is_none() {
            self.error = Some(why);
        }
        self.state = State::Done;
        self.hasher = None;
    }

    /// Takes the next piece of the stream.
    pub fn feed(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            match self.state {
                State::Done => return,
                State::Header => {
                    let want = BLOCK as usize - self.header.len();
                    let n = want.min(buf.len());
                    self.header.extend_from_slice(&buf[..n]);
                    buf = &buf[n..];
                    self.pos += n as u64;
                    if self.header.len() == BLOCK as usize {
                        let h = std::mem::take(&mut self.header);
                        self.on_header(&h);
                        self.header = h;
                        self.header.clear();
                    }
                }
                State::Data { left, pad } => {
                    let n = (left.min(buf.len() as u64)) as usize;
                    if let Some(h) = self.hasher.as_mut() {
                        h.update(&buf[..n]);
                    }
                    buf = &buf[n..];
                    self.pos += n as u64;
                    let left = left - n as u64;
                    if left == 0 {
                        if let (Some(h), Some(last)) = (self.hasher.take(), self.files.last_mut()) {
                            last.blake3 = h.finalize().to_hex().to_string();
                        }
                        self.state = if pad > 0 { State::Pad { left: pad } } else { State::Header };
                    } else {
                        self.state = State::Data { left, pad };
                    }
                }
                State::Meta { left, pad, kind } => {
                    let n = (left.min(buf.len() as u64)) as usize;
                    self.meta.extend_from_slice(&buf[..n]);
                    buf = &buf[n..];
                    self.pos += n as u64;
                    let left = left - n as u64;
                    if left == 0 {
                        let meta = std::mem::take(&mut self.meta);
                        self.on_meta(kind, &meta);
                        if matches!(self.state, State::Done) {
                            return;
                        }
                        self.state = if pad > 0 { State::Pad { left: pad } } else { State::Header };
                    } else {
                        self.state = State::Meta { left, pad, kind };
                    }
                }
                State::Pad { left } => {
                    let n = left.min(buf.len() as u64);
                    buf = &buf[n as usize..];
                    self.pos += n;
                    let left = left - n;
                    self.state = if left == 0 { State::Header } else { State::Pad { left } };
                }
            }
        }
    }

    fn on_header(&mut self, h: &[u8]) {
        if h.iter().all(|b| *b == 0) {
            self.zero_blocks += 1;
            if self.zero_blocks >= 2 {
                self.state = State::Done;
            }
            return;
        }
        if self.zero_blocks > 0 {
            return self.fail(format!("a zero block inside the tar stream before offset {}", self.pos));
        }
        // The checksum: the header's bytes summed with the checksum field as spaces.
        let stored = match parse_number(&h[148..156]) {
            Some(n) => n,
            None => return self.fail(format!("unreadable tar header checksum at offset {}", self.pos - BLOCK)),
        };
        let sum: u64 = h.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { *b as u64 }).sum();
        if sum != stored {
            return self.fail(format!("bad tar header checksum at offset {}", self.pos - BLOCK));
        }
        let kind = h[156];
        let Some(size) = self.next_size.take().or_else(|| parse_number(&h[124..136])) else {
            return self.fail(format!("unreadable size in the tar header at offset {}", self.pos - BLOCK));
        };
        let pad = (BLOCK - size % BLOCK) % BLOCK;
        match kind {
            b'x' | b'L' | b'K' => {
                if size > MAX_NAME {
                    return self.fail(format!("a {size}-byte extended header at offset {}", self.pos - BLOCK));
                }
                self.meta.clear();
                self.state = if size == 0 { State::Header } else { State::Meta { left: size, pad, kind } };
                return;
            }
            b'g' => {
                // Global pax header: nothing pg_basebackup writes; skipped.
                self.state = if size + pad == 0 { State::Header } else { State::Pad { left: size + pad } };
                return;
            }
            _ => {}
        }
        let raw = match self.next_path.take() {
            Some(p) => p,
            None => {
                let name = cstr(&h[0..100]);
                let ustar = &h[257..262] == b"ustar";
                let prefix = if ustar { cstr(&h[345..500]) } else { String::new() };
                if prefix.is_empty() { name } else { format!("{prefix}/{name}") }
            }
        };
        let target = self.next_target.take().unwrap_or_else(|| cstr(&h[157..257]));
        let Some(path) = clean_path(&raw) else {
            return self.fail(format!("unsafe or empty path {raw:?} in the tar stream"));
        };
        let mode = parse_number(&h[100..108]).unwrap_or(0o600) as u32 & 0o7777;
        let (entry_kind, has_data) = match kind {
            b'0' | 0 | b'7' => (FileKind::File, true),
            b'5' => (FileKind::Dir, false),
            b'2' => (FileKind::Link, false),
            other => {
                return self
                    .fail(format!("tar entry {path:?} is of type {:?}, which a restore cannot index", other as char));
            }
        };
        let entry = FileEntry {
            path,
            kind: entry_kind,
            mode,
            size: if has_data { size } else { 0 },
            offset: if has_data && size > 0 { self.pos } else { 0 },
            blake3: if has_data { blake3::hash(b"").to_hex().to_string() } else { String::new() },
            target: (entry_kind == FileKind::Link).then_some(target),
        };
        self.files.push(entry);
        if has_data && size > 0 {
            self.hasher = Some(blake3::Hasher::new());
            self.state = State::Data { left: size, pad };
        } else if size + pad > 0 && !has_data {
            // Directories and links carry no data; a size on one is skipped.
            self.state = State::Pad { left: size + pad };
        } else {
            self.state = State::Header;
        }
    }

    fn on_meta(&mut self, kind: u8, meta: &[u8]) {
        match kind {
            b'L' => self.next_path = Some(cstr(meta)),
            b'K' => self.next_target = Some(cstr(meta)),
            _ => {
                // pax records: "<len> <key>=<value>\n"
                let mut rest = meta;
                while !rest.is_empty() {
                    let Some(sp) = rest.iter().position(|b| *b == b' ') else { break };
                    let Some(len) = std::str::from_utf8(&rest[..sp]).ok().and_then(|s| s.parse::<usize>().ok()) else {
                        return self.fail("malformed pax header".into());
                    };
                    if len <= sp + 1 || len > rest.len() {
                        return self.fail("malformed pax header".into());
                    }
                    let rec = &rest[sp + 1..len];
                    let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
                    if let Some(eq) = rec.iter().position(|b| *b == b'=') {
                        let (k, v) = (&rec[..eq], String::from_utf8_lossy(&rec[eq + 1..]).into_owned());
                        match k {
                            b"path" => self.next_path = Some(v),
                            b"linkpath" => self.next_target = Some(v),
                            b"size" => match v.parse() {
                                Ok(n) => self.next_size = Some(n),
                                Err(_) => return self.fail("malformed size in a pax header".into()),
                            },
                            _ => {}
                        }
                    }
                    rest = &rest[len..];
                }
            }
        }
    }

    /// The list, or why there is none.
    pub fn finish(self) -> Result<Vec<FileEntry>, String> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !matches!(self.state, State::Done) {
            return Err(format!("the tar stream ended without its end marker (at offset {})", self.pos));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.files {
            if !seen.insert(f.path.as_str()) {
                return Err(format!("{:?} appears twice in the tar stream", f.path));
            }
        }
        Ok(self.files)
    }
}

/// A NUL-terminated header field.
fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// An octal header number (space or NUL terminated), or base-256 when the
/// top bit of the first byte is set (GNU, for sizes of 8 GiB and more).
fn parse_number(b: &[u8]) -> Option<u64> {
    if b.first().is_some_and(|c| c & 0x80 != 0) {
        let mut n: u64 = (b[0] & 0x7f) as u64;
        for c in &b[1..] {
            n = n.checked_mul(256)?.checked_add(*c as u64)?;
        }
        return Some(n);
    }
    let s: String = b.iter().take_while(|c| **c != 0).map(|c| *c as char).collect();
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// A tar path made relative and plain: no leading `./` or `/`, no trailing
/// `/`, no empty, `.` or `..` parts. `None` for a path that would leave the
/// directory or names nothing.
pub fn clean_path(raw: &str) -> Option<String> {
    let mut parts = Vec::new();
    for p in raw.split('/') {
        match p {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    if parts.is_empty() || raw.starts_with('/') {
        return None;
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar header as PostgreSQL writes one.
    fn header(name: &str, kind: u8, mode: u32, size: u64, target: &str) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(format!("{mode:07o}").as_bytes());
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = kind;
        h[157..157 + target.len()].copy_from_slice(target.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| *b as u64).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn entry(out: &mut Vec<u8>, name: &str, kind: u8, data: &[u8], target: &str) {
        out.extend(header(name, kind, if kind == b'5' { 0o700 } else { 0o600 }, data.len() as u64, target));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn sample() -> (Vec<u8>, Vec<u8>) {
        let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut t = Vec::new();
        entry(&mut t, "PG_VERSION", b'0', b"15\n", "");
        entry(&mut t, "base/", b'5', b"", "");
        entry(&mut t, "base/1/1259", b'0', &big, "");
        entry(&mut t, "empty", b'0', b"", "");
        entry(&mut t, "pg_tblspc/16400", b'2', b"", "/srv/ts");
        t.extend([0u8; 1024]);
        (t, big)
    }

    #[test]
    fn indexes_files_in_any_pieces() {
        let (t, big) = sample();
        for piece in [1, 7, 511, 512, 513, 4096, t.len()] {
            let mut ix = Indexer::new();
            for c in t.chunks(piece) {
                ix.feed(c);
            }
            let files = ix.finish().expect("index");
            let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
            assert_eq!(names, ["PG_VERSION", "base", "base/1/1259", "empty", "pg_tblspc/16400"], "piece {piece}");
            let f = &files[2];
            assert_eq!((f.kind, f.size, f.mode), (FileKind::File, 5000, 0o600));
            assert_eq!(&t[f.offset as usize..(f.offset + f.size) as usize], big.as_slice());
            assert_eq!(f.blake3, blake3::hash(&big).to_hex().to_string());
            assert_eq!(files[0].blake3, blake3::hash(b"15\n").to_hex().to_string());
            assert_eq!((files[1].kind, files[1].mode), (FileKind::Dir, 0o700));
            assert_eq!(files[3].blake3, blake3::hash(b"").to_hex().to_string());
            assert_eq!(files[4].target.as_deref(), Some("/srv/ts"));
        }
    }

    #[test]
    fn refuses_what_it_cannot_index() {
        let (t, _) = sample();
        // Cut short: no end marker.
        let mut ix = Indexer::new();
        ix.feed(&t[..t.len() - 1024]);
        assert!(ix.finish().is_err());
        // A damaged header.
        let mut bad = t.clone();
        bad[3] ^= 1;
        let mut ix = Indexer::new();
        ix.feed(&bad);
        assert!(ix.finish().expect_err("checksum").contains("checksum"));
        // A path leaving the directory, a hard link.
        for (name, kind) in [("../etc/passwd", b'0'), ("base/x", b'1')] {
            let mut t = Vec::new();
            entry(&mut t, name, kind, b"x", "");
            t.extend([0u8; 1024]);
            let mut ix = Indexer::new();
            ix.feed(&t);
            assert!(ix.finish().is_err(), "{name}");
        }
    }

    #[test]
    fn pax_long_names() {
        let long = format!("base/{}", "d/".repeat(80)) + "f";
        let rec = format!(" path={long}\n");
        let rec = format!("{}{rec}", rec.len() + (rec.len() + 3).to_string().len());
        let mut t = Vec::new();
        entry(&mut t, "PaxHeader", b'x', rec.as_bytes(), "");
        entry(&mut t, "short", b'0', b"abc", "");
        t.extend([0u8; 1024]);
        let mut ix = Indexer::new();
        ix.feed(&t);
        let files = ix.finish().expect("index");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, long);
    }

    #[test]
    fn clean_paths() {
        assert_eq!(clean_path("./base/1/").as_deref(), Some("base/1"));
        assert_eq!(clean_path("/etc/passwd"), None);
        assert_eq!(clean_path("a/../b"), None);
        assert_eq!(clean_path("./"), None);
    }
}
