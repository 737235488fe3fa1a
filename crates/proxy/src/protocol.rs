//! PostgreSQL v3 wire-protocol framing and the few messages the proxy
//! understands, as pure functions over byte buffers (no IO).
//!
//! Framing returns `Ok(None)` until a whole message (or header) is there and
//! rejects lengths below 4 or above a cap. Everything the proxy does not need
//! to understand is forwarded as raw bytes after its tag and length are read;
//! only startup, authentication, ParameterStatus, ReadyForQuery,
//! ErrorResponse, BackendKeyData, Parse/Bind/Describe/Close (statement
//! tracking), CancelRequest, SSLRequest and GSSENCRequest are decoded.
//!
//! Hand-written rather than `pgwire`: the hot path needs only "tag, length,
//! is it one of five tags", which is a few instructions over the read buffer,
//! while decoding into owned message structs allocates per message.

use bytes::{BufMut, BytesMut};

/// Largest regular message accepted in either direction (PostgreSQL's own
/// limit for a field is 1 GiB).
pub const MAX_MESSAGE: usize = 1 << 30;
/// Largest startup packet (PostgreSQL uses 10000 bytes).
pub const MAX_STARTUP: usize = 10_240;
/// Largest message the proxy decodes itself (errors, parameter status, ...).
pub const MAX_DECODED: usize = 1 << 20;

pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
pub const PROTOCOL_3: i32 = 196_608;

/// Bad bytes from a peer. Ends that one session only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: i64 },
    #[error("invalid startup packet length {0}")]
    BadStartupLength(i64),
    #[error("unsupported frontend protocol {major}.{minor}")]
    UnsupportedProtocol { major: i32, minor: i32 },
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// A message header: its tag and total length on the wire (tag byte + the
/// length field's value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Bytes on the wire including the tag byte.
    pub total: usize,
}

/// Reads the header of the regular message at the start of `buf`.
pub fn header(buf: &[u8], cap: usize) -> Result<Option<Header>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as i64;
    if len < 4 || len as u64 > cap as u64 {
        return Err(ProtocolError::BadLength { tag: buf[0] as char, len });
    }
    Ok(Some(Header { tag: buf[0], total: len as usize + 1 }))
}

/// Splits one complete regular message off `buf`, if there is one.
pub fn split_message(buf: &mut BytesMut, cap: usize) -> Result<Option<BytesMut>, ProtocolError> {
    match header(buf, cap)? {
        Some(h) if buf.len() >= h.total => Ok(Some(buf.split_to(h.total))),
        _ => Ok(None),
    }
}

/// The first packet a client sends (it has no tag byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    Ssl,
    GssEnc,
    Cancel { pid: i32, secret: i32 },
    Startup(Startup),
}

/// A StartupMessage's parameters, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Startup {
    pub params: Vec<(String, String)>,
}

impl Startup {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn user(&self) -> &str {
        self.get("user").unwrap_or("")
    }

    pub fn database(&self) -> &str {
        self.get("database").unwrap_or_else(|| self.user())
    }

    /// Encodes the StartupMessage to send to a backend.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_i32(0);
        out.put_i32(PROTOCOL_3);
        for (k, v) in &self.params {
            put_cstr(out, k);
            put_cstr(out, v);
        }
        out.put_u8(0);
        let len = (out.len() - start) as i32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// Decodes the startup packet at the start of `buf`, consuming it.
pub fn split_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as i64;
    if !(8..=MAX_STARTUP as i64).contains(&len) {
        return Err(ProtocolError::BadStartupLength(len));
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let pkt = buf.split_to(len);
    let code = i32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
    match code {
        SSL_REQUEST if len == 8 => Ok(Some(StartupPacket::Ssl)),
        GSSENC_REQUEST if len == 8 => Ok(Some(StartupPacket::GssEnc)),
        CANCEL_REQUEST if len == 16 => Ok(Some(StartupPacket::Cancel {
            pid: i32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]),
            secret: i32::from_be_bytes([pkt[12], pkt[13], pkt[14], pkt[15]]),
        })),
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(ProtocolError::Malformed("startup")),
        code if code >> 16 == 3 => {
            let mut params = Vec::new();
            let mut rest = &pkt[8..];
            loop {
                let (k, r) = take_cstr(rest).ok_or(ProtocolError::Malformed("startup"))?;
                if k.is_empty() {
                    if !r.is_empty() {
                        return Err(ProtocolError::Malformed("startup"));
                    }
                    break;
                }
                let (v, r) = take_cstr(r).ok_or(ProtocolError::Malformed("startup"))?;
                params.push((utf8(k)?, utf8(v)?));
                rest = r;
            }
            if !params.iter().any(|(k, _)| k == "user") {
                return Err(ProtocolError::Malformed("startup (no user)"));
            }
            Ok(Some(StartupPacket::Startup(Startup { params })))
        }
        code => Err(ProtocolError::UnsupportedProtocol { major: code >> 16, minor: code & 0xffff }),
    }
}

fn utf8(b: &[u8]) -> Result<String, ProtocolError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtocolError::Malformed("startup (not UTF-8)"))
}

/// Splits a NUL-terminated string off the front of `b`.
pub fn take_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == 0)?;
    Some((&b[..i], &b[i + 1..]))
}

pub fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// Writes a message with `tag` whose body is produced by `body`.
pub fn put_message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// An ErrorResponse.
pub fn put_error(out: &mut BytesMut, severity: &str, code: &str, message: &str) {
    put_fields(out, b'E', severity, code, message);
}

/// A NoticeResponse.
pub fn put_notice(out: &mut BytesMut, severity: &str, code: &str, message: &str) {
    put_fields(out, b'N', severity, code, message);
}

fn put_fields(out: &mut BytesMut, tag: u8, severity: &str, code: &str, message: &str) {
    put_message(out, tag, |b| {
        b.put_u8(b'S');
        put_cstr(b, severity);
        b.put_u8(b'V');
        put_cstr(b, severity);
        b.put_u8(b'C');
        put_cstr(b, code);
        b.put_u8(b'M');
        put_cstr(b, message);
        b.put_u8(0);
    });
}

pub fn put_ready(out: &mut BytesMut, status: u8) {
    put_message(out, b'Z', |b| b.put_u8(status));
}

pub fn put_auth(out: &mut BytesMut, code: i32, data: &[u8]) {
    put_message(out, b'R', |b| {
        b.put_i32(code);
        b.put_slice(data);
    });
}

pub fn put_parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    put_message(out, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

pub fn put_backend_key(out: &mut BytesMut, pid: i32, secret: i32) {
    put_message(out, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

pub fn put_query(out: &mut BytesMut, sql: &str) {
    put_message(out, b'Q', |b| put_cstr(b, sql));
}

pub fn cancel_request(pid: i32, secret: i32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&16i32.to_be_bytes());
    b[4..8].copy_from_slice(&CANCEL_REQUEST.to_be_bytes());
    b[8..12].copy_from_slice(&pid.to_be_bytes());
    b[12..].copy_from_slice(&secret.to_be_bytes());
    b
}

/// Authentication request codes (backend `R` messages).
pub mod auth {
    pub const OK: i32 = 0;
    pub const CLEARTEXT: i32 = 3;
    pub const MD5: i32 = 5;
    pub const SASL: i32 = 10;
    pub const SASL_CONTINUE: i32 = 11;
    pub const SASL_FINAL: i32 = 12;
}

/// The body of a whole message (after tag and length).
pub fn body(msg: &[u8]) -> &[u8] {
    msg.get(5..).unwrap_or(&[])
}

/// Fields of an ErrorResponse or NoticeResponse body that the proxy uses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    pub severity: &'a [u8],
    pub code: &'a [u8],
    pub message: &'a [u8],
}

pub fn parse_error(body: &[u8]) -> ErrorFields<'_> {
    let mut f = ErrorFields::default();
    let mut rest = body;
    while let Some((&t, r)) = rest.split_first() {
        if t == 0 {
            break;
        }
        let Some((v, r)) = take_cstr(r) else { break };
        match t {
            b'V' => f.severity = v,
            b'S' if f.severity.is_empty() => f.severity = v,
            b'C' => f.code = v,
            b'M' => f.message = v,
            _ => {}
        }
        rest = r;
    }
    f
}

/// ParameterStatus body: name and value.
pub fn parse_parameter_status(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (k, r) = take_cstr(body)?;
    let (v, _) = take_cstr(r)?;
    Some((k, v))
}

/// DataRow body: each column's value (None for NULL).
pub fn parse_data_row(body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let n = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let mut rest = &body[2..];
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            cols.push(None);
        } else {
            let len = len as usize;
            cols.push(Some(rest.get(..len)?));
            rest = &rest[len..];
        }
    }
    Some(cols)
}

/// Parse body: the statement name (empty for the unnamed statement).
pub fn parse_statement_name(body: &[u8]) -> Option<&[u8]> {
    take_cstr(body).map(|(n, _)| n)
}

/// Parse body: the query text.
pub fn parse_query_text(body: &[u8]) -> Option<&[u8]> {
    let (_, r) = take_cstr(body)?;
    take_cstr(r).map(|(q, _)| q)
}

/// Bind body: the statement name it binds.
pub fn bind_statement_name(body: &[u8]) -> Option<&[u8]> {
    let (_, r) = take_cstr(body)?;
    take_cstr(r).map(|(n, _)| n)
}

/// Describe or Close body: `S` or `P`, and the name.
pub fn target(body: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, r) = body.split_first()?;
    take_cstr(r).map(|(n, _)| (kind, n))
}

/// ASCII case-insensitive substring search (`needle` lowercase).
pub fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    let first = needle[0];
    if hay.len() < needle.len() {
        return false;
    }
    for i in 0..=hay.len() - needle.len() {
        if hay[i].to_ascii_lowercase() == first && hay[i..i + needle.len()].eq_ignore_ascii_case(needle) {
            return true;
        }
    }
    false
}

/// Session state that cannot move to another backend, found by a cheap
/// look at a query the proxy already holds (one pass, not SQL parsing; see
/// [`crate::sql`]).
pub fn unmovable_state(sql: &[u8]) -> Option<&'static str> {
    crate::sql::scan(sql).unmovable()
}

/// A simple-query text that changes a session setting the proxy must
/// replay after a move (`SET x = ...`, `RESET ...`), not `SET LOCAL` or
/// transaction-scoped forms.
pub fn is_session_set(sql: &[u8]) -> bool {
    let s = trim_ascii_start(sql);
    let word = |w: &[u8]| s.len() > w.len() && s[..w.len()].eq_ignore_ascii_case(w) && s[w.len()].is_ascii_whitespace();
    if word(b"reset") {
        return true;
    }
    if !word(b"set") {
        return false;
    }
    let rest = trim_ascii_start(&s[3..]);
    let starts = |w: &[u8]| rest.len() >= w.len() && rest[..w.len()].eq_ignore_ascii_case(w);
    !(starts(b"local") || starts(b"transaction") || starts(b"constraints") || starts(b"session characteristics"))
}

fn trim_ascii_start(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    &b[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_waits_and_rejects() {
        assert_eq!(header(b"Q\0\0", MAX_MESSAGE), Ok(None));
        assert!(header(b"Q\0\0\0\x03", MAX_MESSAGE).is_err());
        assert!(header(b"Q\x7f\xff\xff\xff", MAX_MESSAGE).is_err());
        assert!(header(b"Q\xff\xff\xff\xff", MAX_MESSAGE).is_err());
        assert_eq!(header(b"Q\0\0\0\x05x", MAX_MESSAGE), Ok(Some(Header { tag: b'Q', total: 6 })));
    }

    #[test]
    fn startup_roundtrip() {
        let s = Startup { params: vec![("user".into(), "bob".into()), ("database".into(), "db".into())] };
        let mut b = BytesMut::new();
        s.encode(&mut b);
        let mut half = BytesMut::from(&b[..5]);
        assert_eq!(split_startup(&mut half), Ok(None));
        assert_eq!(split_startup(&mut b), Ok(Some(StartupPacket::Startup(s))));
        assert!(b.is_empty());
    }

    #[test]
    fn startup_rejects_garbage() {
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        assert!(split_startup(&mut b).is_err());
        let mut b = BytesMut::from(&[0u8, 0, 0, 9, 0, 3, 0, 0, b'x'][..]);
        assert!(split_startup(&mut b).is_err());
        let mut b = BytesMut::from(&cancel_request(1, 2)[..]);
        assert_eq!(split_startup(&mut b), Ok(Some(StartupPacket::Cancel { pid: 1, secret: 2 })));
    }

    #[test]
    fn error_fields() {
        let mut b = BytesMut::new();
        put_error(&mut b, "FATAL", "57P03", "cannot connect now");
        let f = parse_error(body(&b));
        assert_eq!(f.code, b"57P03");
        assert_eq!(f.severity, b"FATAL");
        assert_eq!(f.message, b"cannot connect now");
    }

    #[test]
    fn scans() {
        assert_eq!(unmovable_state(b"CREATE TEMP TABLE t(a int)"), Some("a temporary table"));
        assert_eq!(unmovable_state(b"select pg_advisory_lock(1)"), Some("a session advisory lock"));
        assert_eq!(unmovable_state(b"select pg_advisory_xact_lock(1)"), None);
        assert_eq!(unmovable_state(b"LISTEN chan"), Some("LISTEN"));
        assert_eq!(unmovable_state(b"UNLISTEN chan"), None);
        assert_eq!(unmovable_state(b"select * from listeners"), None);
        assert!(is_session_set(b"  SET search_path = a"));
        assert!(is_session_set(b"set application_name to 'x'"));
        assert!(!is_session_set(b"SET LOCAL work_mem = '1MB'"));
        assert!(!is_session_set(b"settle"));
        assert!(!is_session_set(b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"));
    }
}
