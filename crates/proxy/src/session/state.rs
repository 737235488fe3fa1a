//! What a client session carries that is not tied to one backend: tracked
//! session-level SETs, the settings the client was told about
//! (ParameterStatus), its named statements, and whether it holds state that
//! cannot move. Pure, no IO: the relay feeds it what it sees, the mover asks
//! it what to replay where the session lands.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::{protocol, sql};

/// Settings PostgreSQL reports with ParameterStatus that a client may have
/// changed and that are restored where a session lands.
pub(super) const RESTORABLE: [&str; 8] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
    "search_path",
    "default_transaction_read_only",
];
const MAX_TRACKED_SETS: usize = 1000;

/// Kinds of state that keep a session on its backend (bits).
pub(super) const PIN_TEMP: u8 = 1;
pub(super) const PIN_ADVISORY: u8 = 2;
pub(super) const PIN_LISTEN: u8 = 4;
pub(super) const PIN_HOLD_CURSOR: u8 = 8;
/// A SQL prepared statement made where the proxy could not see its text
/// (dynamic SQL, a function): it cannot be prepared anywhere else.
pub(super) const PIN_UNTRACKED_PREPARE: u8 = 16;
/// Every pin reason with its metrics label and its words for people.
pub(super) const PINS: [(u8, &str, &str); 5] = [
    (PIN_TEMP, "temp_table", "a temporary table"),
    (PIN_ADVISORY, "advisory_lock", "a session advisory lock"),
    (PIN_LISTEN, "listen", "LISTEN"),
    (PIN_HOLD_CURSOR, "with_hold_cursor", "a WITH HOLD cursor"),
    (
        PIN_UNTRACKED_PREPARE,
        "untracked_prepare",
        "a prepared statement made by dynamic SQL or a function, whose text the proxy cannot know",
    ),
];

/// Asks a backend which pinning state it holds (one row: advisory locks,
/// channels listened to, holdable cursors, temporary relations).
pub(super) const PIN_CHECK: &str = "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), (SELECT count(*) FROM pg_listening_channels()), (SELECT count(*) FROM pg_cursors WHERE is_holdable), (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())";

/// Asks a backend for the session state the proxy follows, when a
/// statement may have changed it in a way the text did not show (PREPARE
/// or LISTEN in dynamic SQL, `set_config`): SQL prepared statements,
/// channels listened to, session-level settings.
pub(super) const STATE_CHECK: &str = "SELECT 'p', name, NULL FROM pg_prepared_statements WHERE from_sql UNION ALL SELECT 'l', c, NULL FROM pg_listening_channels() c UNION ALL SELECT 's', name, setting FROM pg_settings WHERE source = 'session'";

/// A change to session state that counts once its statement succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Set(String),
    Prepare(String, String),
    Deallocate(String),
    DeallocateAll,
    Listen(String),
    Unlisten(String),
    UnlistenAll,
    DiscardAll,
}

/// A named statement of the client.
#[derive(Debug, Clone)]
pub(super) struct Statement {
    /// The client's Parse message, whole.
    pub parse: Bytes,
    /// Hash of its query and parameter types: the proxy-side name when
    /// pooling, shared by every client preparing the same statement.
    pub hash: u64,
}

#[derive(Debug, Default)]
pub(super) struct Tracked {
    /// Session-level SET/RESET statements, in the order first run (shared
    /// with the backend the session left them on).
    pub sets: Arc<Vec<String>>,
    /// ParameterStatus values the client has been told (shared with
    /// backends reporting the same, see `backend::same_shared`).
    pub params: Arc<Vec<(String, String)>>,
    /// Named statements: client name → statement.
    pub prepared: HashMap<Bytes, Statement>,
    /// Named statements not yet prepared on the current backend (session
    /// mode, where the client's own names are used).
    pub unprepared: HashSet<Bytes>,
    /// SQL-level prepared statements: name → PREPARE text.
    pub sql_prepared: Vec<(String, String)>,
    /// Channels listened to (known when every LISTEN was a plain one).
    pub listening: Vec<String>,
    /// A LISTEN the proxy could not follow: it cannot be replayed.
    pub listen_unknown: bool,
    /// `PIN_*` bits: state that cannot follow the session.
    pub pins: u8,
    /// A statement that may have ended a pin ran: ask the backend.
    pub recheck: bool,
    /// A statement may have changed prepared statements or channels in a
    /// way its text did not show: ask the backend (`STATE_CHECK`).
    pub sync: bool,
    /// ... and settings (`set_config`, `SET SESSION CHARACTERISTICS`).
    pub sync_settings: bool,
    /// Changes of the statements in flight with the number of the batch
    /// (Sync or Query) they belong to, kept once it succeeds.
    pending: Vec<(u64, Change)>,
    /// The batch being answered (or the transaction) failed.
    pending_failed: bool,
    /// The batch the next message belongs to (set by the relay).
    pub batch: u64,
}

impl Tracked {
    /// A simple Query's text (with or without its NUL), or a Parse's; a
    /// query of several statements is followed statement by statement.
    /// The text is scanned once ([`sql::scan`]); returns the phrases found.
    pub fn on_query(&mut self, sql: &[u8]) -> u16 {
        let sql = sql.strip_suffix(&[0]).unwrap_or(sql);
        let scan = sql::scan(sql);
        self.note_pins(sql, &scan);
        for stmt in scan.statements() {
            self.on_statement(stmt);
        }
        scan.hits
    }

    fn on_statement(&mut self, stmt: &sql::Statement<'_>) {
        use sql::{First, hit};
        let text = stmt.text;
        if matches!(stmt.first, First::Set | First::Reset) && protocol::is_session_set(text) {
            if self.sets.len() < MAX_TRACKED_SETS {
                self.pending.push((self.batch, Change::Set(String::from_utf8_lossy(text).trim().to_owned())));
            }
            return;
        }
        let change = match stmt.first {
            First::Prepare | First::Deallocate | First::Listen | First::Unlisten | First::Discard | First::Unusual => {
                sql_change(text)
            }
            _ => None,
        };
        match change {
            Some(c) => self.pending.push((self.batch, c)),
            None => {
                // State changed where the text does not show it: the
                // backend is asked once the batch is over.
                if self.pins & PIN_LISTEN != 0 && sql::unmovable(stmt.hits) == Some("LISTEN") {
                    self.listen_unknown = true;
                }
                if stmt.hits & (hit::W_PREPARE | hit::W_LISTEN) != 0
                    || self.pins & PIN_UNTRACKED_PREPARE != 0 && stmt.hits & hit::W_DEALLOCATE != 0
                {
                    self.sync = true;
                }
                if stmt.hits & (hit::SET_CONFIG | hit::SESSION_CHARACTERISTICS) != 0 {
                    self.sync = true;
                    self.sync_settings = true;
                }
            }
        }
    }

    fn note_pins(&mut self, sql: &[u8], scan: &sql::Scan<'_>) {
        if let Some(what) = scan.unmovable() {
            self.pins |= PINS.iter().find(|p| p.2 == what).map(|p| p.0).unwrap_or(0);
        }
        if self.pins != 0 {
            const ENDS: [&[u8]; 7] = [b"discard", b"unlisten", b"unlock", b"close", b"drop", b"rollback", b"abort"];
            if ENDS.iter().any(|w| protocol::contains_ci(sql, w)) {
                self.recheck = true;
            }
        }
    }

    /// A Parse message (`msg` whole, `body` its body); returns the
    /// statement's hash when it is named.
    pub fn on_parse(&mut self, msg: &[u8], body: &[u8]) -> Option<u64> {
        self.on_query(protocol::parse_query_text(body).unwrap_or(&[]));
        let name = protocol::parse_statement_name(body).unwrap_or(&[]);
        if name.is_empty() {
            return None;
        }
        let hash = statement_hash(&body[name.len() + 1..]);
        let name = Bytes::copy_from_slice(name);
        self.unprepared.remove(&name);
        self.prepared.insert(name, Statement { parse: Bytes::copy_from_slice(msg), hash });
        Some(hash)
    }

    /// A Close of the named statement `name`.
    pub fn on_close_statement(&mut self, name: &[u8]) {
        if !name.is_empty() {
            self.prepared.remove(name);
            self.unprepared.remove(name);
        }
    }

    /// An ErrorResponse from the backend.
    pub fn on_error(&mut self) {
        if !self.pending.is_empty() {
            self.pending_failed = true;
        }
    }

    /// A CommandComplete tag from the backend.
    pub fn on_command_complete(&mut self, tag: &[u8]) {
        if !self.pending.is_empty() && tag.starts_with(b"ROLLBACK") {
            self.pending_failed = true;
        }
    }

    /// ReadyForQuery with `status` ending batch `done`: changes of a
    /// transaction that committed (or of statements that succeeded outside
    /// one) count.
    pub fn on_ready(&mut self, status: u8, done: u64) {
        if status == b'T' {
            return;
        }
        let failed = std::mem::take(&mut self.pending_failed) || status == b'E';
        if self.pending.is_empty() {
            return;
        }
        let (now, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.pending).into_iter().partition(|(b, _)| *b <= done);
        self.pending = later;
        if failed {
            return;
        }
        for (_, c) in now {
            self.apply(c);
        }
    }

    fn apply(&mut self, c: Change) {
        match c {
            Change::Set(sql) => {
                // The last run counts: an earlier equal SET moves to the end.
                let sets = Arc::make_mut(&mut self.sets);
                sets.retain(|s| *s != sql);
                sets.push(sql);
            }
            Change::Prepare(name, text) => {
                self.sql_prepared.retain(|(n, _)| *n != name);
                self.sql_prepared.push((name, text));
            }
            Change::Deallocate(name) => self.sql_prepared.retain(|(n, _)| *n != name),
            Change::DeallocateAll => {
                self.pins &= !PIN_UNTRACKED_PREPARE;
                self.sql_prepared.clear();
                self.prepared.clear();
                self.unprepared.clear();
            }
            Change::Listen(ch) => {
                if !self.listening.contains(&ch) {
                    self.listening.push(ch);
                }
            }
            Change::Unlisten(ch) => self.listening.retain(|c| *c != ch),
            Change::UnlistenAll => {
                self.listening.clear();
                self.listen_unknown = false;
            }
            Change::DiscardAll => {
                self.sets = Arc::default();
                self.sql_prepared.clear();
                self.prepared.clear();
                self.unprepared.clear();
                self.listening.clear();
                self.listen_unknown = false;
                self.pins = 0;
            }
        }
    }

    /// A ParameterStatus relayed to the client.
    pub fn on_parameter_status(&mut self, k: &[u8], v: &[u8]) {
        crate::backend::set_param(&mut self.params, k, v);
    }

    /// If `name` (from a Bind or Describe) is not prepared on this backend
    /// yet, the Parse that prepares it (it is then counted as prepared).
    pub fn take_unprepared(&mut self, name: &[u8]) -> Option<Bytes> {
        let n = self.unprepared.take(name)?;
        self.prepared.get(&n).map(|s| s.parse.clone())
    }

    /// The pin check's answer (counts per kind): pins that still hold.
    pub fn on_pin_check(&mut self, advisory: i64, listen: i64, hold: i64, temp: i64) {
        let mut pins = 0;
        for (n, bit) in [(advisory, PIN_ADVISORY), (listen, PIN_LISTEN), (hold, PIN_HOLD_CURSOR), (temp, PIN_TEMP)] {
            if n > 0 {
                pins |= bit;
            }
        }
        if listen == 0 {
            self.listening.clear();
            self.listen_unknown = false;
        }
        self.pins = pins | (self.pins & PIN_UNTRACKED_PREPARE);
        self.recheck = false;
    }

    /// The state check's answer (rows of kind `p` prepared statement name,
    /// `l` channel, `s` setting name and value): the backend's word
    /// replaces what the text suggested. A SQL prepared statement the
    /// proxy has no text for pins the session (and cannot move); channels
    /// are taken as listed; settings made by `set_config` become tracked
    /// `set_config` calls.
    pub fn on_state_check(&mut self, rows: &[(u8, String, Option<String>)]) {
        let prepared: Vec<&str> = rows.iter().filter(|r| r.0 == b'p').map(|r| r.1.as_str()).collect();
        self.sql_prepared.retain(|(n, _)| prepared.contains(&n.as_str()));
        if prepared.iter().any(|p| !self.sql_prepared.iter().any(|(n, _)| n == p)) {
            self.pins |= PIN_UNTRACKED_PREPARE;
        } else {
            self.pins &= !PIN_UNTRACKED_PREPARE;
        }
        self.listening = rows.iter().filter(|r| r.0 == b'l').map(|r| r.1.clone()).collect();
        self.listen_unknown = false;
        if self.listening.is_empty() {
            self.pins &= !PIN_LISTEN;
        } else {
            self.pins |= PIN_LISTEN;
        }
        if std::mem::take(&mut self.sync_settings) {
            for (_, name, value) in rows.iter().filter(|r| r.0 == b's') {
                let sql = format!(
                    "SELECT set_config('{}', '{}', false)",
                    name.replace('\'', "''"),
                    value.as_deref().unwrap_or("").replace('\'', "''")
                );
                if !self.sets.contains(&sql) && self.sets.len() < MAX_TRACKED_SETS {
                    let prefix = format!("SELECT set_config('{}',", name.replace('\'', "''"));
                    let sets = Arc::make_mut(&mut self.sets);
                    sets.retain(|s| !s.starts_with(&prefix));
                    sets.push(sql);
                }
            }
        }
        self.sync = false;
    }

    /// Why the session cannot move to another backend, if it cannot: a
    /// LISTEN whose channels are known moves (replayed), the rest not.
    pub fn unmovable(&self) -> Option<&'static str> {
        let movable = if self.listen_unknown { 0 } else { PIN_LISTEN };
        PINS.iter().find(|p| self.pins & p.0 != 0 && p.0 & movable == 0).map(|p| p.2)
    }

    /// Writes the SET queries (and `RESET ALL` first when the backend
    /// carries another session's SETs) for a backend whose last session
    /// left `backend_sets`; returns how many queries were written.
    pub fn set_queries(&mut self, backend_sets: &mut Arc<Vec<String>>, out: &mut BytesMut) -> usize {
        if crate::backend::same_shared(backend_sets, &mut self.sets) {
            return 0;
        }
        let mut n = 0;
        if !backend_sets.is_empty() {
            protocol::put_query(out, "RESET ALL");
            n += 1;
        }
        for s in self.sets.iter() {
            protocol::put_query(out, s);
            n += 1;
        }
        n
    }

    /// Writes the queries that give SQL-level prepared statements their
    /// state: others' dropped, ours prepared where missing.
    pub fn prepare_queries(&self, backend: &HashMap<String, String>, out: &mut BytesMut) -> usize {
        let mut n = 0;
        for (name, text) in backend {
            if !self.sql_prepared.iter().any(|(n, t)| n == name && t == text) {
                protocol::put_query(out, &format!("DEALLOCATE {}", quote_ident(name)));
                n += 1;
            }
        }
        for (name, text) in &self.sql_prepared {
            if backend.get(name) != Some(text) {
                protocol::put_query(out, text);
                n += 1;
            }
        }
        n
    }

    /// Writes the SETs for reported settings the client was told about
    /// that differ on a backend reporting `backend`.
    pub fn restore_queries(&self, backend: &[(String, String)], out: &mut BytesMut) -> usize {
        let mut n = 0;
        for (k, v) in self.params.iter() {
            if RESTORABLE.contains(&k.as_str()) && backend.iter().find(|(ck, _)| ck == k).map(|(_, cv)| cv) != Some(v) {
                let sql = format!("SET {} = '{}'", quote_ident(k), v.replace('\'', "''"));
                protocol::put_query(out, &sql);
                n += 1;
            }
        }
        n
    }

    /// Records on `backend` (the SQL prepared statements of a backend the
    /// session leaves or lands on) the session's; nothing is copied when
    /// they are already the same.
    pub fn left_sql_prepared(&self, backend: &mut HashMap<String, String>) {
        if backend.len() != self.sql_prepared.len() || self.sql_prepared.iter().any(|(n, t)| backend.get(n) != Some(t))
        {
            *backend = self.sql_prepared.iter().cloned().collect();
        }
    }

    /// Writes the LISTENs to replay; returns how many.
    pub fn listen_queries(&self, out: &mut BytesMut) -> usize {
        for ch in &self.listening {
            protocol::put_query(out, &format!("LISTEN {}", quote_ident(ch)));
        }
        self.listening.len()
    }

    /// After landing on a backend reporting `backend`: the client is told
    /// (ParameterStatus into `out`) about values that now differ.
    pub fn adopt_reported(&mut self, backend: &[(String, String)], out: &mut BytesMut) {
        let params = Arc::make_mut(&mut self.params);
        for (k, v) in backend {
            match params.iter_mut().find(|(ck, _)| ck == k) {
                Some(p) if p.1 == *v => {}
                Some(p) => {
                    p.1 = v.clone();
                    protocol::put_parameter_status(out, k, v);
                }
                None => {
                    params.push((k.clone(), v.clone()));
                    protocol::put_parameter_status(out, k, v);
                }
            }
        }
    }

    /// The session landed on a new backend: every named statement must be
    /// prepared again before use (session mode).
    pub fn unprepare_all(&mut self) {
        self.unprepared = self.prepared.keys().cloned().collect();
    }

    /// Whether the session carries anything a new backend must be given.
    pub fn carries_state(&self) -> bool {
        !self.prepared.is_empty() || !self.sets.is_empty() || !self.sql_prepared.is_empty()
    }

    /// The startup parameters a pooled backend does not share with this
    /// client, as SETs to replay (`options` with `-c name=value` items).
    /// None when the startup asks for something a SET cannot give.
    pub fn startup_sets(startup: &protocol::Startup) -> Option<Vec<String>> {
        let mut sets = Vec::new();
        let mut put = |k: &str, v: &str| sets.push(format!("SET {} = '{}'", quote_ident(k), v.replace('\'', "''")));
        for (k, v) in &startup.params {
            match k.as_str() {
                "user" | "database" => {}
                "replication" => return None,
                "options" => {
                    let mut words = v.split_ascii_whitespace();
                    while let Some(w) = words.next() {
                        let item = match w {
                            "-c" => words.next()?,
                            w if w.starts_with("-c") => &w[2..],
                            w if w.starts_with("--") => &w[2..],
                            _ => return None,
                        };
                        let (k, v) = item.split_once('=')?;
                        put(&k.replace('-', "_"), v);
                    }
                }
                k => put(k, v),
            }
        }
        Some(sets)
    }
}

/// Hash of a Parse body after the statement name (query and parameter
/// types): equal statements get equal proxy-side names.
pub(super) fn statement_hash(rest: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rest.hash(&mut h);
    h.finish()
}

/// The proxy-side name of a pooled statement: `pgdr_` and the hash in 16
/// hex digits, made on the stack (it is written at every Bind).
pub(super) fn backend_name(hash: u64) -> BackendName {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut name = *b"pgdr_0000000000000000";
    for (i, b) in name[5..].iter_mut().enumerate() {
        *b = HEX[(hash >> (60 - 4 * i)) as usize & 0xf];
    }
    BackendName(name)
}

/// See [`backend_name`].
pub(super) struct BackendName([u8; 21]);

impl std::ops::Deref for BackendName {
    type Target = str;

    fn deref(&self) -> &str {
        // ASCII only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A SQL-level change the proxy follows: PREPARE, DEALLOCATE, LISTEN,
/// UNLISTEN, DISCARD ALL (one statement).
fn sql_change(sql: &[u8]) -> Option<Change> {
    let text = std::str::from_utf8(sql).ok()?.trim().trim_end_matches(';').trim();
    let (first, rest) = ident_at(text)?;
    match first.0.as_str() {
        "prepare" if !first.1 => {
            let (name, rest) = ident_at(rest)?;
            if !rest.starts_with(|c: char| c.is_whitespace() || c == '(') {
                return None;
            }
            Some(Change::Prepare(name.0, text.to_owned()))
        }
        "deallocate" if !first.1 => {
            let (mut w, mut rest) = ident_at(rest)?;
            if w == ("prepare".to_owned(), false) {
                (w, rest) = ident_at(rest)?;
            }
            if !rest.trim().is_empty() {
                return None;
            }
            if w == ("all".to_owned(), false) { Some(Change::DeallocateAll) } else { Some(Change::Deallocate(w.0)) }
        }
        "listen" if !first.1 => {
            let (ch, rest) = ident_at(rest)?;
            rest.trim().is_empty().then_some(Change::Listen(ch.0))
        }
        "unlisten" if !first.1 => {
            if rest.trim() == "*" {
                return Some(Change::UnlistenAll);
            }
            let (ch, rest) = ident_at(rest)?;
            rest.trim().is_empty().then_some(Change::Unlisten(ch.0))
        }
        "discard" if !first.1 => {
            let (w, rest) = ident_at(rest)?;
            (w == ("all".to_owned(), false) && rest.trim().is_empty()).then_some(Change::DiscardAll)
        }
        _ => None,
    }
}

/// The identifier at the start of `s` (after blanks): its name as
/// PostgreSQL folds it and whether it was quoted, and the text after it.
fn ident_at(s: &str) -> Option<((String, bool), &str)> {
    let s = s.trim_start();
    if let Some(q) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = q.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if q[i + 1..].starts_with('"') {
                    name.push('"');
                    chars.next();
                    continue;
                }
                return (!name.is_empty()).then(|| ((name, true), &q[i + 1..]));
            }
            name.push(c);
        }
        return None;
    }
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')).unwrap_or(s.len());
    if end == 0 || s.starts_with(|c: char| c.is_ascii_digit() || c == '$') {
        return None;
    }
    Some(((s[..end].to_ascii_lowercase(), false), &s[end..]))
}

pub(super) fn quote_ident(s: &str) -> String {
    if s.bytes().all(|c| c.is_ascii_lowercase() || c == b'_') {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_sets_once_when_they_succeed() {
        let mut t = Tracked::default();
        t.on_query(b"SET search_path = a\0");
        t.on_ready(b'I', t.batch);
        t.batch += 1;
        t.on_query(b"SET search_path = a\0");
        t.on_ready(b'I', t.batch);
        t.batch += 1;
        t.on_query(b"SET LOCAL work_mem = '1MB'\0");
        t.on_ready(b'I', t.batch);
        t.batch += 1;
        t.on_query(b"SET nosuch = 1\0");
        t.on_error();
        t.on_ready(b'I', t.batch);
        t.batch += 1;
        t.on_query(b"SET work_mem = '2MB'\0");
        t.on_command_complete(b"SET");
        t.on_ready(b'T', t.batch);
        t.batch += 1;
        t.on_command_complete(b"ROLLBACK");
        t.on_ready(b'I', t.batch);
        t.batch += 1;
        assert_eq!(*t.sets, vec!["SET search_path = a".to_owned()]);
        assert_eq!(t.pins, 0);
    }

    #[test]
    fn pins_and_asks_when_a_pin_may_end() {
        let mut t = Tracked::default();
        t.on_query(b"CREATE TEMP TABLE x (i int)\0");
        assert_eq!(t.unmovable(), Some("a temporary table"));
        assert!(!t.recheck);
        t.on_query(b"DROP TABLE x\0");
        assert!(t.recheck);
        t.on_pin_check(0, 0, 0, 0);
        assert_eq!((t.pins, t.recheck), (0, false));
        t.on_query(b"LISTEN jobs\0");
        t.on_ready(b'I', t.batch);
        t.batch += 1;
        assert_eq!(t.pins, PIN_LISTEN);
        assert_eq!(t.unmovable(), None, "a plain LISTEN is replayed");
        assert_eq!(t.listening, vec!["jobs".to_owned()]);
    }

    #[test]
    fn follows_sql_prepare() {
        let mut t = Tracked::default();
        t.on_query(b"PREPARE q (int) AS SELECT $1\0");
        t.on_ready(b'I', t.batch);
        t.batch += 1;
        t.on_query(b"PREPARE \"Q2\" AS SELECT 2;\0");
        t.on_ready(b'I', t.batch);
        t.batch += 1;
        assert_eq!(t.sql_prepared.len(), 2);
        assert_eq!(t.sql_prepared[1].0, "Q2");
        let mut out = BytesMut::new();
        let backend = HashMap::from([("other".to_owned(), "PREPARE other AS SELECT 3".to_owned())]);
        assert_eq!(t.prepare_queries(&backend, &mut out), 3);
        t.on_query(b"DEALLOCATE PREPARE q\0");
        t.on_ready(b'I', t.batch);
        t.batch += 1;
        assert_eq!(t.sql_prepared.len(), 1);
    }

    #[test]
    fn follows_state_in_queries_of_several_statements() {
        let mut t = Tracked::default();
        t.on_query(b"SELECT 1; PREPARE q AS SELECT ';'; SET a.b = 1; SET a.b = 2; SET a.b = 1; LISTEN ch\0");
        t.on_ready(b'I', t.batch);
        assert_eq!(t.sql_prepared, vec![("q".to_owned(), "PREPARE q AS SELECT ';'".to_owned())]);
        assert_eq!(*t.sets, vec!["SET a.b = 2".to_owned(), "SET a.b = 1".to_owned()], "the last SET wins");
        assert_eq!(t.listening, vec!["ch".to_owned()]);
        assert!(!t.sync);
        t.on_query(b"LISTEN \"Other \"\"Ch\"; PREPARE \"My Q\"(int) AS SELECT $1; DEALLOCATE PREPARE q\0");
        t.on_ready(b'I', t.batch);
        assert_eq!(t.listening, vec!["ch".to_owned(), "Other \"Ch".to_owned()]);
        assert_eq!(t.sql_prepared[0].0, "My Q");
        assert_eq!(t.sql_prepared.len(), 1);
    }

    #[test]
    fn asks_the_backend_when_the_text_does_not_show_the_state() {
        let mut t = Tracked::default();
        t.on_query(b"SELECT * FROM prepared_orders\0");
        assert!(!t.sync, "a word inside a name is not PREPARE");
        t.on_query(b"DO $$ BEGIN EXECUTE 'PREPARE dyn AS SELECT 1'; END $$\0");
        assert!(t.sync);
        t.on_state_check(&[(b'p', "dyn".into(), None), (b'l', "Ch".into(), None)]);
        assert!(!t.sync);
        assert_eq!(t.pins, PIN_UNTRACKED_PREPARE | PIN_LISTEN);
        assert!(t.unmovable().is_some_and(|w| w.contains("dynamic SQL")));
        assert_eq!(t.listening, vec!["Ch".to_owned()]);
        t.on_query(b"SELECT set_config('work_mem', '1MB', false)\0");
        assert!(t.sync && t.sync_settings);
        t.on_state_check(&[(b's', "work_mem".into(), Some("1024".into()))]);
        assert_eq!(*t.sets, vec!["SELECT set_config('work_mem', '1024', false)".to_owned()]);
        assert_eq!(t.pins, 0);
    }

    #[test]
    fn restores_only_what_differs() {
        let mut t = Tracked::default();
        t.on_parameter_status(b"TimeZone", b"UTC");
        t.on_parameter_status(b"server_version", b"15");
        let mut out = BytesMut::new();
        assert_eq!(t.restore_queries(&[("TimeZone".into(), "UTC".into())], &mut out), 0);
        assert_eq!(t.restore_queries(&[("TimeZone".into(), "Europe/Paris".into())], &mut out), 1);
        assert!(protocol::contains_ci(&out, b"set \"timezone\" = 'utc'"));
    }

    #[test]
    fn backend_names_are_the_hash_in_hex() {
        for h in [0, 1, 0xdead_beef, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(&*backend_name(h), format!("pgdr_{h:016x}"));
        }
    }

    #[test]
    fn startup_parameters_become_sets() {
        let s = protocol::Startup {
            params: vec![
                ("user".into(), "u".into()),
                ("application_name".into(), "app".into()),
                ("options".into(), "-c statement_timeout=5s --work-mem=4MB".into()),
            ],
        };
        let sets = Tracked::startup_sets(&s).expect("sets");
        assert_eq!(sets.len(), 3);
        assert_eq!(sets[2], "SET work_mem = '4MB'");
        let s = protocol::Startup { params: vec![("options".into(), "-e".into())] };
        assert!(Tracked::startup_sets(&s).is_none());
    }
}
