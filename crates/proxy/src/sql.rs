//! What the proxy reads in a query's SQL text, in one pass over its bytes:
//! the statements of a simple query (split at semicolons outside quotes,
//! dollar quotes and comments), the first word of each, and the words and
//! phrases that matter to pooling (state that pins a session, statements
//! that change prepared statements, channels or settings where the text
//! does not show it). Pure, no IO, no allocation for a query of one
//! statement.
//!
//! The phrases are found as before this scanner existed, with the same
//! answers (a property test checks it against the old substring searches):
//! anywhere in the text, quotes and comments included, ASCII case ignored.
//! It is a cheap look, not a SQL parser: what it cannot know is asked of
//! the backend (see `session::state`).

/// The phrase bits of [`Statement::hits`] and [`Scan::hits`].
pub mod hit {
    /// `create temp`, `create local temp`, `into temp`.
    pub const TEMP: u16 = 1;
    /// `advisory_lock` (a session advisory lock function).
    pub const ADVISORY: u16 = 1 << 1;
    /// `with hold`.
    pub const HOLD: u16 = 1 << 2;
    /// `listen` followed by a space or a tab (`unlisten ` included).
    pub const LISTEN_SP: u16 = 1 << 3;
    /// `unlisten` anywhere.
    pub const UNLISTEN: u16 = 1 << 4;
    /// `listen` anywhere not right after `un`.
    pub const LISTEN_BARE: u16 = 1 << 5;
    /// The whole word `prepare`.
    pub const W_PREPARE: u16 = 1 << 6;
    /// The whole word `listen`.
    pub const W_LISTEN: u16 = 1 << 7;
    /// The whole word `deallocate`.
    pub const W_DEALLOCATE: u16 = 1 << 8;
    /// `set_config` anywhere.
    pub const SET_CONFIG: u16 = 1 << 9;
    /// `session characteristics`.
    pub const SESSION_CHARACTERISTICS: u16 = 1 << 10;
    /// `deallocate` anywhere.
    pub const DEALLOCATE: u16 = 1 << 11;
    /// `discard` anywhere.
    pub const DISCARD: u16 = 1 << 12;
}

/// The first word of a statement, when it is one the proxy follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    Other,
    Set,
    Reset,
    Prepare,
    Deallocate,
    Listen,
    Unlisten,
    Discard,
    /// Starts with a byte `str::trim` may take as white space (non-ASCII,
    /// vertical tab): look at the text itself.
    Unusual,
}

/// One statement of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statement<'a> {
    pub text: &'a [u8],
    pub first: First,
    pub hits: u16,
}

/// A query's statements and the phrases found in all of them.
#[derive(Debug, Default)]
pub struct Scan<'a> {
    one: Option<Statement<'a>>,
    more: Vec<Statement<'a>>,
    pub hits: u16,
}

impl<'a> Scan<'a> {
    /// The statements in order (empty ones left out).
    pub fn statements(&self) -> impl Iterator<Item = &Statement<'a>> {
        self.one.iter().chain(self.more.iter())
    }

    /// Session state that cannot move to another backend (see
    /// [`unmovable`]).
    pub fn unmovable(&self) -> Option<&'static str> {
        unmovable(self.hits)
    }

    fn push(&mut self, s: Statement<'a>) {
        self.hits |= s.hits;
        if self.one.is_none() {
            self.one = Some(s);
        } else {
            self.more.push(s);
        }
    }
}

/// Session state that cannot move to another backend, from a scan's
/// phrases: the first kind found in this order (temporary table, advisory
/// lock, WITH HOLD cursor, LISTEN).
pub fn unmovable(hits: u16) -> Option<&'static str> {
    if hits & hit::TEMP != 0 {
        Some("a temporary table")
    } else if hits & hit::ADVISORY != 0 {
        Some("a session advisory lock")
    } else if hits & hit::HOLD != 0 {
        Some("a WITH HOLD cursor")
    } else if hits & hit::LISTEN_SP != 0 && (hits & hit::UNLISTEN == 0 || hits & hit::LISTEN_BARE != 0) {
        Some("LISTEN")
    } else {
        None
    }
}

/// A byte of a word for the phrases: ASCII letters, digits, `_`.
fn word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// A byte of an identifier for splitting (dollar-quote tags, `E'...'`).
fn ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

fn starts_ci(s: &[u8], p: &[u8]) -> bool {
    s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p)
}

fn ends_ci(s: &[u8], p: &[u8]) -> bool {
    s.len() >= p.len() && s[s.len() - p.len()..].eq_ignore_ascii_case(p)
}

#[derive(Clone, Copy)]
enum Mode {
    Code,
    Quote { escapes: bool },
    Ident,
    Line,
    Block(u32),
    Dollar { start: usize, len: usize },
}

/// The statement being scanned.
struct Cur {
    hits: u16,
    first: First,
    /// Only white space so far.
    blank: bool,
    /// Where the statement's first word starts, when its text starts with one.
    first_at: Option<usize>,
}

impl Cur {
    fn new() -> Cur {
        Cur { hits: 0, first: First::Other, blank: true, first_at: None }
    }
}

/// Scans `sql` once (see the module's words).
pub fn scan(sql: &[u8]) -> Scan<'_> {
    let mut out = Scan::default();
    let mut mode = Mode::Code;
    let mut skip = 0usize;
    let mut start = 0usize;
    let mut cur = Cur::new();
    let mut run: Option<usize> = None;
    // The last two words (start, end) for the phrases of several words.
    let mut prev = (usize::MAX - 1, usize::MAX - 1);
    let mut prev2 = prev;
    let mut i = 0;
    loop {
        let c = sql.get(i).copied();
        match (c, run) {
            (Some(c), None) if word_byte(c) && skip == 0 => {
                // A whole word at once: none of its bytes changes the mode
                // (quotes, comments and separators are not word bytes).
                let e = sql[i..].iter().position(|&c| !word_byte(c)).map_or(sql.len(), |p| i + p);
                if cur.blank {
                    cur.blank = false;
                    cur.first_at = Some(i);
                }
                on_word(sql, i, e, prev, prev2, &mut cur);
                prev2 = prev;
                prev = (i, e);
                i = e;
                continue;
            }
            (Some(c), None) if word_byte(c) => run = Some(i),
            (Some(c), Some(_)) if word_byte(c) => {}
            (_, Some(s)) => {
                run = None;
                on_word(sql, s, i, prev, prev2, &mut cur);
                prev2 = prev;
                prev = (s, i);
            }
            _ => {}
        }
        let Some(c) = c else { break };
        let splits = matches!(mode, Mode::Code) && c == b';' && skip == 0;
        if cur.blank && !c.is_ascii_whitespace() && !splits {
            cur.blank = false;
            if word_byte(c) {
                cur.first_at = Some(i);
            } else if c >= 0x80 || c == 0x0b {
                cur.first = First::Unusual;
            }
        }
        if skip > 0 {
            skip -= 1;
            i += 1;
            continue;
        }
        match mode {
            Mode::Code => match c {
                b'\'' => {
                    // E'...' strings take backslash escapes.
                    let escapes = i > 0 && sql[i - 1].eq_ignore_ascii_case(&b'e') && (i < 2 || !ident_byte(sql[i - 2]));
                    mode = Mode::Quote { escapes };
                }
                b'"' => mode = Mode::Ident,
                b'-' if sql.get(i + 1) == Some(&b'-') => mode = Mode::Line,
                b'/' if sql.get(i + 1) == Some(&b'*') => {
                    mode = Mode::Block(1);
                    skip = 1;
                }
                b'$' if i == 0 || !ident_byte(sql[i - 1]) => {
                    // $tag$ ... $tag$ ($1, a parameter, is not a tag).
                    let end = sql[i + 1..].iter().position(|&c| !ident_byte(c)).map(|p| i + 1 + p);
                    if let Some(e) = end
                        && sql[e] == b'$'
                        && !sql.get(i + 1).is_some_and(u8::is_ascii_digit)
                    {
                        mode = Mode::Dollar { start: i, len: e - i + 1 };
                        skip = e - i;
                    }
                }
                b';' => {
                    if !cur.blank {
                        out.push(Statement { text: &sql[start..i], first: cur.first, hits: cur.hits });
                    }
                    start = i + 1;
                    cur = Cur::new();
                }
                _ => {}
            },
            Mode::Quote { escapes } => match c {
                b'\\' if escapes => skip = 1,
                b'\'' if sql.get(i + 1) == Some(&b'\'') => skip = 1,
                b'\'' => mode = Mode::Code,
                _ => {}
            },
            Mode::Ident => {
                if c == b'"' {
                    mode = Mode::Code;
                }
            }
            Mode::Line => {
                if c == b'\n' {
                    mode = Mode::Code;
                }
            }
            Mode::Block(depth) => {
                if sql[i..].starts_with(b"/*") {
                    mode = Mode::Block(depth + 1);
                    skip = 1;
                } else if sql[i..].starts_with(b"*/") {
                    skip = 1;
                    mode = if depth == 1 { Mode::Code } else { Mode::Block(depth - 1) };
                }
            }
            Mode::Dollar { start: t, len } => {
                if c == b'$' && sql[i..].starts_with(&sql[t..t + len]) {
                    skip = len - 1;
                    mode = Mode::Code;
                }
            }
        }
        i += 1;
    }
    if !cur.blank {
        out.push(Statement { text: &sql[start..], first: cur.first, hits: cur.hits });
    }
    out
}

/// A word `sql[s..e]` ends: its phrases into the statement's hits.
fn on_word(sql: &[u8], s: usize, e: usize, prev: (usize, usize), prev2: (usize, usize), cur: &mut Cur) {
    use hit::*;
    let w = &sql[s..e];
    if cur.first_at == Some(s) {
        cur.first = match w.len() {
            3 if w.eq_ignore_ascii_case(b"set") => First::Set,
            5 if w.eq_ignore_ascii_case(b"reset") => First::Reset,
            6 if w.eq_ignore_ascii_case(b"listen") => First::Listen,
            7 if w.eq_ignore_ascii_case(b"prepare") => First::Prepare,
            7 if w.eq_ignore_ascii_case(b"discard") => First::Discard,
            8 if w.eq_ignore_ascii_case(b"unlisten") => First::Unlisten,
            10 if w.eq_ignore_ascii_case(b"deallocate") => First::Deallocate,
            _ => First::Other,
        };
    }
    if w.len() < 4 {
        return;
    }
    let mut h = 0;
    match w.len() {
        6 if w.eq_ignore_ascii_case(b"listen") => h |= W_LISTEN,
        7 if w.eq_ignore_ascii_case(b"prepare") => h |= W_PREPARE,
        10 if w.eq_ignore_ascii_case(b"deallocate") => h |= W_DEALLOCATE,
        _ => {}
    }
    if w.len() >= 6 {
        for j in 0..=w.len() - 6 {
            let r = &w[j..];
            match w[j] | 0x20 {
                b'l' if starts_ci(r, b"listen") => {
                    h |= if j >= 2 && w[j - 2..j].eq_ignore_ascii_case(b"un") { UNLISTEN } else { LISTEN_BARE };
                }
                b'a' if starts_ci(r, b"advisory_lock") => h |= ADVISORY,
                b's' if starts_ci(r, b"set_config") => h |= SET_CONFIG,
                b'd' if starts_ci(r, b"deallocate") => h |= DEALLOCATE,
                b'd' if starts_ci(r, b"discard") => h |= DISCARD,
                _ => {}
            }
        }
        if matches!(sql.get(e), Some(b' ' | b'\t')) && ends_ci(w, b"listen") {
            h |= LISTEN_SP;
        }
    }
    // Phrases of two or three words, one space apart.
    if prev.1.wrapping_add(1) == s && sql[prev.1] == b' ' {
        let p = &sql[prev.0..prev.1];
        if starts_ci(w, b"temp") {
            let local_after_create = p.eq_ignore_ascii_case(b"local")
                && prev2.1.wrapping_add(1) == prev.0
                && sql[prev2.1] == b' '
                && ends_ci(&sql[prev2.0..prev2.1], b"create");
            if ends_ci(p, b"create") || ends_ci(p, b"into") || local_after_create {
                h |= TEMP;
            }
        } else if starts_ci(w, b"hold") && ends_ci(p, b"with") {
            h |= HOLD;
        } else if starts_ci(w, b"characteristics") && ends_ci(p, b"session") {
            h |= SESSION_CHARACTERISTICS;
        }
    }
    cur.hits |= h;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The searches this scanner replaced, kept as its oracle.
    mod old {
        pub fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
            hay.len() >= needle.len() && hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
        }

        pub fn unmovable_state(sql: &[u8]) -> Option<&'static str> {
            const PATTERNS: [(&[u8], &str); 7] = [
                (b"create temp", "a temporary table"),
                (b"create local temp", "a temporary table"),
                (b"into temp", "a temporary table"),
                (b"advisory_lock", "a session advisory lock"),
                (b"with hold", "a WITH HOLD cursor"),
                (b"listen ", "LISTEN"),
                (b"listen\t", "LISTEN"),
            ];
            for (p, what) in PATTERNS {
                if contains_ci(sql, p) {
                    if p.starts_with(b"listen") && contains_ci(sql, b"unlisten") && !listen_outside_unlisten(sql) {
                        continue;
                    }
                    return Some(what);
                }
            }
            None
        }

        pub fn listen_outside_unlisten(sql: &[u8]) -> bool {
            (0..sql.len()).any(|i| {
                sql[i..].len() >= 6
                    && sql[i..i + 6].eq_ignore_ascii_case(b"listen")
                    && (i < 2 || !sql[i - 2..i].eq_ignore_ascii_case(b"un"))
            })
        }

        pub fn contains_word(sql: &[u8], word: &[u8]) -> bool {
            let ident = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
            sql.windows(word.len()).enumerate().any(|(i, w)| {
                w.eq_ignore_ascii_case(word)
                    && (i == 0 || !ident(&sql[i - 1]))
                    && !sql.get(i + word.len()).is_some_and(ident)
            })
        }
    }

    fn hits_by_old(sql: &[u8]) -> u16 {
        use hit::*;
        let mut h = 0;
        let mut set = |b: bool, bit: u16| {
            if b {
                h |= bit;
            }
        };
        set(
            old::contains_ci(sql, b"create temp")
                || old::contains_ci(sql, b"create local temp")
                || old::contains_ci(sql, b"into temp"),
            TEMP,
        );
        set(old::contains_ci(sql, b"advisory_lock"), ADVISORY);
        set(old::contains_ci(sql, b"with hold"), HOLD);
        set(old::contains_ci(sql, b"listen ") || old::contains_ci(sql, b"listen\t"), LISTEN_SP);
        set(old::contains_ci(sql, b"unlisten"), UNLISTEN);
        set(old::listen_outside_unlisten(sql), LISTEN_BARE);
        set(old::contains_word(sql, b"prepare"), W_PREPARE);
        set(old::contains_word(sql, b"listen"), W_LISTEN);
        set(old::contains_word(sql, b"deallocate"), W_DEALLOCATE);
        set(old::contains_ci(sql, b"set_config"), SET_CONFIG);
        set(old::contains_ci(sql, b"session characteristics"), SESSION_CHARACTERISTICS);
        set(old::contains_ci(sql, b"deallocate"), DEALLOCATE);
        set(old::contains_ci(sql, b"discard"), DISCARD);
        h
    }

    fn texts(sql: &[u8]) -> Vec<&[u8]> {
        scan(sql).statements().map(|s| s.text).collect()
    }

    #[test]
    fn splits_statements_outside_quotes_and_comments() {
        let sql =
            b"SELECT 'a;b', E'c\\';d', \"e;f\"; -- g;h\nPREPARE q AS SELECT $x$;$x$ /* i; /* j; */ k; */ ;; SET x = 1";
        let got: Vec<_> = texts(sql).into_iter().map(|s| String::from_utf8_lossy(s).trim().to_owned()).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[1].ends_with("$x$;$x$ /* i; /* j; */ k; */"), "{got:?}");
        assert_eq!(got[2], "SET x = 1");
        assert_eq!(texts(b"SELECT $1; SELECT $2").len(), 2);
        assert!(texts(b" ; \n;").is_empty());
        let s = scan(b"  set search_path = a; PREPARE q AS SELECT 1;\tDISCARD ALL; SELECT 1");
        let firsts: Vec<_> = s.statements().map(|s| s.first).collect();
        assert_eq!(firsts, vec![First::Set, First::Prepare, First::Discard, First::Other]);
    }

    #[test]
    fn finds_what_pins() {
        let u = |s: &[u8]| scan(s).unmovable();
        assert_eq!(u(b"CREATE TEMP TABLE t(a int)"), Some("a temporary table"));
        assert_eq!(u(b"create local temporary table t()"), Some("a temporary table"));
        assert_eq!(u(b"SELECT 1 INTO TEMP t"), Some("a temporary table"));
        assert_eq!(u(b"select pg_advisory_lock(1)"), Some("a session advisory lock"));
        assert_eq!(u(b"select pg_advisory_xact_lock(1)"), None);
        assert_eq!(u(b"DECLARE c CURSOR WITH HOLD FOR SELECT 1"), Some("a WITH HOLD cursor"));
        assert_eq!(u(b"LISTEN chan"), Some("LISTEN"));
        assert_eq!(u(b"UNLISTEN chan"), None);
        assert_eq!(u(b"UNLISTEN a; LISTEN b"), Some("LISTEN"));
        assert_eq!(u(b"select * from listeners"), None);
        let s = scan(b"DO $$ BEGIN EXECUTE 'PREPARE dyn AS SELECT 1'; END $$");
        assert_eq!(s.statements().count(), 1);
        assert_ne!(s.hits & hit::W_PREPARE, 0, "words inside quotes count");
    }

    /// Words and phrases SQL-ish text is made of, to meet the phrases often.
    fn sqlish() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(&b"create"[..]),
            Just(&b"CREATE"[..]),
            Just(&b"temp"[..]),
            Just(&b"Temporary"[..]),
            Just(&b"local"[..]),
            Just(&b"into"[..]),
            Just(&b"pg_advisory_lock"[..]),
            Just(&b"advisory_xact_lock"[..]),
            Just(&b"with"[..]),
            Just(&b"HOLD"[..]),
            Just(&b"listen"[..]),
            Just(&b"UNLISTEN"[..]),
            Just(&b"listening"[..]),
            Just(&b"prepare"[..]),
            Just(&b"prepared"[..]),
            Just(&b"deallocate"[..]),
            Just(&b"DISCARD"[..]),
            Just(&b"set_config"[..]),
            Just(&b"session"[..]),
            Just(&b"characteristics"[..]),
            Just(&b"set"[..]),
            Just(&b"reset"[..]),
            Just(&b"un"[..]),
            Just(&b"x"[..]),
            Just(&b"_"[..]),
            Just(&b"1"[..]),
            Just(&b" "[..]),
            Just(&b" "[..]),
            Just(&b"  "[..]),
            Just(&b"\t"[..]),
            Just(&b"\n"[..]),
            Just(&b"\x0b"[..]),
            Just(&b";"[..]),
            Just(&b"'"[..]),
            Just(&b"E'"[..]),
            Just(&b"\\"[..]),
            Just(&b"\""[..]),
            Just(&b"$$"[..]),
            Just(&b"$t$"[..]),
            Just(&b"$1"[..]),
            Just(&b"--"[..]),
            Just(&b"/*"[..]),
            Just(&b"*/"[..]),
            Just(&b"("[..]),
            Just(&b"\xc2\xa0"[..]),
            Just(&b"\xc3"[..]),
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    /// The statements as the splitter before this scanner found them.
    fn old_split(sql: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let (mut start, mut i) = (0, 0);
        let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
        while i < sql.len() {
            match sql[i] {
                b'\'' => {
                    let escapes = i > 0 && sql[i - 1].eq_ignore_ascii_case(&b'e') && (i < 2 || !ident(sql[i - 2]));
                    i += 1;
                    while i < sql.len() {
                        match sql[i] {
                            b'\\' if escapes => i += 1,
                            b'\'' if sql.get(i + 1) == Some(&b'\'') => i += 1,
                            b'\'' => break,
                            _ => {}
                        }
                        i += 1;
                    }
                }
                b'"' => {
                    i += 1;
                    while i < sql.len() && sql[i] != b'"' {
                        i += 1;
                    }
                }
                b'-' if sql.get(i + 1) == Some(&b'-') => {
                    while i < sql.len() && sql[i] != b'\n' {
                        i += 1;
                    }
                }
                b'/' if sql.get(i + 1) == Some(&b'*') => {
                    let mut depth = 0;
                    while i < sql.len() {
                        if sql[i..].starts_with(b"/*") {
                            depth += 1;
                            i += 1;
                        } else if sql[i..].starts_with(b"*/") {
                            depth -= 1;
                            i += 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        i += 1;
                    }
                }
                b'$' if i == 0 || !ident(sql[i - 1]) => {
                    let end = sql[i + 1..].iter().position(|&c| !ident(c)).map(|p| i + 1 + p);
                    if let Some(e) = end
                        && sql[e] == b'$'
                        && !sql.get(i + 1).is_some_and(u8::is_ascii_digit)
                    {
                        let tag = &sql[i..=e];
                        match sql[e + 1..].windows(tag.len()).position(|w| w == tag) {
                            Some(p) => i = e + p + tag.len(),
                            None => i = sql.len(),
                        }
                    }
                }
                b';' => {
                    if sql[start..i].iter().any(|c| !c.is_ascii_whitespace()) {
                        out.push(&sql[start..i]);
                    }
                    start = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        if sql.get(start..).is_some_and(|r| r.iter().any(|c| !c.is_ascii_whitespace())) {
            out.push(&sql[start..]);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// One pass finds what the old searches found, statement by
        /// statement and for the whole text, and splits as before.
        #[test]
        fn same_answers_as_the_old_searches(sql in sqlish()) {
            let s = scan(&sql);
            let stmts: Vec<_> = s.statements().copied().collect();
            let old_stmts = old_split(&sql);
            prop_assert_eq!(stmts.iter().map(|s| s.text).collect::<Vec<_>>(), old_stmts);
            prop_assert_eq!(s.unmovable(), old::unmovable_state(&sql));
            let whole = hits_by_old(&sql);
            for st in &stmts {
                prop_assert_eq!(st.hits, hits_by_old(st.text), "{:?}", String::from_utf8_lossy(st.text));
                prop_assert_eq!(unmovable(st.hits), old::unmovable_state(st.text));
                let lead = st.text.iter().position(|c| !c.is_ascii_whitespace()).map(|p| &st.text[p..]).unwrap_or(&[]);
                let word_end = lead.iter().position(|c| !(c.is_ascii_alphanumeric() || *c == b'_')).unwrap_or(lead.len());
                let w = String::from_utf8_lossy(&lead[..word_end]).to_ascii_lowercase();
                if st.first != First::Unusual {
                    let want = match w.as_str() {
                        "set" => First::Set,
                        "reset" => First::Reset,
                        "prepare" => First::Prepare,
                        "deallocate" => First::Deallocate,
                        "listen" => First::Listen,
                        "unlisten" => First::Unlisten,
                        "discard" => First::Discard,
                        _ => First::Other,
                    };
                    prop_assert_eq!(st.first, want);
                } else {
                    prop_assert!(lead.first().is_some_and(|&c| c >= 0x80 || c == 0x0b));
                }
            }
            // Phrases of the whole text are those of its statements (the
            // text between them is only semicolons and white space).
            prop_assert_eq!(s.hits, stmts.iter().fold(0, |h, s| h | s.hits));
            prop_assert_eq!(s.hits, whole);
        }

        #[test]
        fn any_bytes(sql in proptest::collection::vec(any::<u8>(), 0..200)) {
            let s = scan(&sql);
            prop_assert_eq!(s.statements().map(|s| s.text).collect::<Vec<_>>(), old_split(&sql));
        }
    }
}
