//! Routing that clients outside the proxy can follow: a cluster's writer
//! name in DNS, moved with RFC 2136 dynamic updates signed with TSIG
//! (RFC 8945) when the primary's region changes.
//!
//! The proxy stays the primary path (it checks the epoch); a DNS name is
//! for clients that connect straight to a region's endpoint. This crate
//! builds and signs the messages with `hickory-proto` and sends each one
//! over a single TCP exchange (RFC 1035 4.2.2 framing): no resolver, no
//! client crate. It knows nothing of clusters, workflows or the config
//! file; `pgdr-controller` gives it a server, a record and a key.
//!
//! **Secrets.** The TSIG secret lives only in [`TsigKey`], whose `Debug`
//! prints `<redacted>`; no error of this crate carries it.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod testing;

/// How far apart the signer's and the server's clocks may be (RFC 8945
/// recommends 300 s).
const FUDGE_SECONDS: u16 = 300;

/// The TSIG algorithms pgdr signs with (the ones `hickory-proto` computes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    #[default]
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl Algorithm {
    pub const ALL: [Algorithm; 3] = [Algorithm::HmacSha256, Algorithm::HmacSha384, Algorithm::HmacSha512];

    /// The name BIND's `algorithm` clause and `tsig-keygen -a` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::HmacSha384 => "hmac-sha384",
            Algorithm::HmacSha512 => "hmac-sha512",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str().eq_ignore_ascii_case(s))
    }

    fn hickory(self) -> TsigAlgorithm {
        match self {
            Algorithm::HmacSha256 => TsigAlgorithm::HmacSha256,
            Algorithm::HmacSha384 => TsigAlgorithm::HmacSha384,
            Algorithm::HmacSha512 => TsigAlgorithm::HmacSha512,
        }
    }
}

/// Why a TSIG secret could not be used. Never carries the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "expected the key's secret in base64 (the `secret \"...\"` of `tsig-keygen` output, or that whole key file)"
    )]
    NotBase64,
    #[error("the secret is empty")]
    Empty,
    #[error("the key name {0:?} is not a DNS name")]
    BadName(String),
}

/// A TSIG key: its name as the server knows it, its algorithm and secret.
#[derive(Clone)]
pub struct TsigKey {
    name: String,
    algorithm: Algorithm,
    secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TsigKey {
    /// `secret` is the base64 secret, or a BIND key file holding one
    /// (`key "name" { algorithm hmac-sha256; secret "..."; };`, as
    /// `tsig-keygen` prints it).
    pub fn new(name: &str, algorithm: Algorithm, secret: &str) -> Result<TsigKey, KeyError> {
        fqdn(name).map_err(|_| KeyError::BadName(name.to_owned()))?;
        let text = match secret.find("secret") {
            Some(i) => {
                let rest = &secret[i + "secret".len()..];
                rest.split('"').nth(1).ok_or(KeyError::NotBase64)?
            }
            None => secret,
        };
        let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        let secret = base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| KeyError::NotBase64)?;
        Ok(TsigKey { name: name.to_owned(), algorithm, secret })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    fn signer(&self) -> Result<TSigner, DnsError> {
        let name = fqdn(&self.name)?;
        TSigner::new(self.secret.clone(), self.algorithm.hickory(), name, FUDGE_SECONDS)
            .map_err(|e| DnsError::Malformed { server: None, reason: format!("cannot sign with {}: {e}", self.name) })
    }
}

/// What the writer name points at in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A and AAAA records.
    Addresses(Vec<IpAddr>),
    /// A CNAME to the region's endpoint name.
    Alias(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addresses(a) => {
                let a: Vec<String> = a.iter().map(IpAddr::to_string).collect();
                f.write_str(&a.join(", "))
            }
            Target::Alias(n) => write!(f, "CNAME {n}"),
        }
    }
}

/// The writer record: `name` in `zone` with `ttl`, pointing at `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterRecord {
    pub zone: String,
    pub name: String,
    pub ttl: u32,
    pub target: Target,
}

/// Why an update or a lookup failed. Never carries the TSIG secret.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot reach the DNS server {server}: {source}")]
    Unreachable {
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the DNS server {server} did not answer within {}", pgdr_model::format_duration(*timeout))]
    Timeout { server: SocketAddr, timeout: Duration },
    /// The server answered with an error. `tsig` is the TSIG error of the
    /// answer: `BADKEY` (the server has no key of that name and
    /// algorithm), `BADSIG` (the secret differs), `BADTIME` (clocks apart).
    #[error("the DNS server {server} refused the update: {rcode}{}", tsig.as_ref().map(|t| format!(" (TSIG error {t}: {})", tsig_hint(t))).unwrap_or_default())]
    Refused { server: SocketAddr, rcode: String, tsig: Option<String> },
    /// A successful answer not signed by the key: it did not come from
    /// the server that holds the key.
    #[error("the answer of {server} is not signed with key {key}: {reason}")]
    BadSignature { server: SocketAddr, key: String, reason: String },
    #[error("{}{reason}", server.map(|s| format!("DNS server {s}: ")).unwrap_or_default())]
    Malformed { server: Option<SocketAddr>, reason: String },
    #[error("{name:?} is not a DNS name: {reason}")]
    BadName { name: String, reason: String },
}

fn tsig_hint(t: &str) -> &'static str {
    match t {
        "BADKEY" => "the server knows no key of this name and algorithm",
        "BADSIG" => "the secret is not the server's",
        "BADTIME" => "this host's clock and the server's are more than 5 minutes apart",
        _ => "see RFC 8945",
    }
}

impl DnsError {
    /// Worth trying again as it is: the server was unreachable, slow, or
    /// failed for a moment (SERVFAIL). A refused key or update is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            DnsError::Unreachable { .. } | DnsError::Timeout { .. } => true,
            DnsError::Refused { rcode, tsig, .. } => tsig.is_none() && rcode == ResponseCode::ServFail.to_str(),
            _ => false,
        }
    }

    /// A short label for metrics and events.
    pub fn kind(&self) -> &'static str {
        match self {
            DnsError::Unreachable { .. } => "unreachable",
            DnsError::Timeout { .. } => "timeout",
            DnsError::Refused { tsig: Some(_), .. } => "tsig_refused",
            DnsError::Refused { .. } => "refused",
            DnsError::BadSignature { .. } => "bad_signature",
            DnsError::Malformed { .. } => "malformed",
            DnsError::BadName { .. } => "bad_name",
        }
    }
}

fn fqdn(s: &str) -> Result<Name, DnsError> {
    let mut n = Name::from_ascii(s).map_err(|e| DnsError::BadName { name: s.to_owned(), reason: e.to_string() })?;
    n.set_fqdn(true);
    Ok(n)
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The update message: in `zone`, delete the name's A, AAAA and CNAME
/// records and add the target's (one message, applied atomically by the
/// server; RFC 2136 3.4.2: deletions before additions).
pub fn update_message(record: &WriterRecord) -> Result<Message, DnsError> {
    let zone = fqdn(&record.zone)?;
    let name = fqdn(&record.name)?;
    if !zone.zone_of(&name) {
        return Err(DnsError::BadName {
            name: record.name.clone(),
            reason: format!("it is not inside the zone {}", record.zone),
        });
    }
    let mut m = Message::query();
    m.metadata.op_code = OpCode::Update;
    m.metadata.recursion_desired = false;
    m.add_zone(Query::query(zone, RecordType::SOA));
    for t in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
        let mut del = Record::update0(name.clone(), 0, t).into_record_of_rdata();
        del.dns_class = DNSClass::ANY;
        m.add_update(del);
    }
    match &record.target {
        Target::Addresses(addrs) => {
            for a in addrs {
                let data = match a {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                };
                m.add_update(Record::from_rdata(name.clone(), record.ttl, data));
            }
        }
        Target::Alias(alias) => {
            m.add_update(Record::from_rdata(name.clone(), record.ttl, RData::CNAME(CNAME(fqdn(alias)?))));
        }
    }
    Ok(m)
}

/// Sends the update signed with `key` and checks the server's answer:
/// `NOERROR` signed with the same key. One attempt; the caller retries
/// what [`DnsError::is_retryable`] says it may.
pub async fn replace(
    server: SocketAddr,
    record: &WriterRecord,
    key: &TsigKey,
    timeout: Duration,
) -> Result<(), DnsError> {
    let mut m = update_message(record)?;
    let signer = key.signer()?;
    let verifier = m
        .finalize(&signer, now_unix())
        .map_err(|e| DnsError::Malformed { server: Some(server), reason: format!("cannot sign the update: {e}") })?;
    let bytes = m
        .to_vec()
        .map_err(|e| DnsError::Malformed { server: Some(server), reason: format!("cannot encode the update: {e}") })?;
    let answer = exchange(server, &bytes, timeout).await?;
    let reply = decode(server, &answer, m.metadata.id)?;
    if reply.metadata.response_code != ResponseCode::NoError {
        let tsig = reply.signature().and_then(|s| s.data.error).map(|e| format!("{e:?}").to_uppercase());
        return Err(DnsError::Refused { server, rcode: reply.metadata.response_code.to_string(), tsig });
    }
    let Some(mut verifier) = verifier else {
        return Err(DnsError::Malformed { server: Some(server), reason: "the update was not signed".into() });
    };
    verifier.verify(&answer).map_err(|e| DnsError::BadSignature {
        server,
        key: key.name.clone(),
        reason: e.to_string(),
    })?;
    Ok(())
}

/// The data of `name`'s records of type `kind` (`A`, `AAAA`, `CNAME`) as
/// the server answers a plain query: addresses, or the alias with its
/// trailing dot.
pub async fn lookup(server: SocketAddr, name: &str, kind: &str, timeout: Duration) -> Result<Vec<String>, DnsError> {
    let t = match kind.to_ascii_uppercase().as_str() {
        "A" => RecordType::A,
        "AAAA" => RecordType::AAAA,
        "CNAME" => RecordType::CNAME,
        other => return Err(DnsError::BadName { name: other.to_owned(), reason: "expected A, AAAA or CNAME".into() }),
    };
    let owner = fqdn(name)?;
    let mut m = Message::query();
    m.metadata.recursion_desired = false;
    m.add_query(Query::query(owner.clone(), t));
    let bytes = m
        .to_vec()
        .map_err(|e| DnsError::Malformed { server: Some(server), reason: format!("cannot encode the query: {e}") })?;
    let answer = exchange(server, &bytes, timeout).await?;
    let reply = decode(server, &answer, m.metadata.id)?;
    match reply.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        rcode => return Err(DnsError::Refused { server, rcode: rcode.to_string(), tsig: None }),
    }
    Ok(reply
        .answers
        .iter()
        .filter(|r| r.record_type() == t && r.name == owner)
        .map(|r| match &r.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            RData::CNAME(c) => c.0.to_ascii(),
            other => other.to_string(),
        })
        .collect())
}

fn decode(server: SocketAddr, answer: &[u8], id: u16) -> Result<Message, DnsError> {
    let reply = Message::from_vec(answer)
        .map_err(|e| DnsError::Malformed { server: Some(server), reason: format!("cannot decode the answer: {e}") })?;
    if reply.metadata.id != id || reply.metadata.message_type != MessageType::Response {
        return Err(DnsError::Malformed {
            server: Some(server),
            reason: format!("an answer to another message (id {} instead of {id})", reply.metadata.id),
        });
    }
    Ok(reply)
}

/// One request and its answer over TCP, two-byte length prefixed.
async fn exchange(server: SocketAddr, request: &[u8], timeout: Duration) -> Result<Vec<u8>, DnsError> {
    let len = u16::try_from(request.len())
        .map_err(|_| DnsError::Malformed { server: Some(server), reason: "the message is too long".into() })?;
    let io = async {
        let mut s = tokio::net::TcpStream::connect(server).await?;
        let mut out = Vec::with_capacity(request.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(request);
        s.write_all(&out).await?;
        let mut l = [0u8; 2];
        s.read_exact(&mut l).await?;
        let mut buf = vec![0u8; u16::from_be_bytes(l) as usize];
        s.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(timeout, io).await {
        Ok(Ok(buf)) => Ok(buf),
        Ok(Err(source)) => Err(DnsError::Unreachable { server, source }),
        Err(_) => Err(DnsError::Timeout { server, timeout }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_base64_or_a_bind_key_file_and_never_print() {
        let file = "key \"pgdr\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LWJ5dGVz\";\n};\n";
        let k = TsigKey::new("pgdr", Algorithm::HmacSha256, file).expect("key file");
        assert_eq!(k.secret, b"secret-bytes");
        let k2 = TsigKey::new("pgdr", Algorithm::HmacSha256, "c2VjcmV0LWJ5dGVz\n").expect("base64");
        assert_eq!(k2.secret, b"secret-bytes");
        let dbg = format!("{k:?}");
        assert!(!dbg.contains("c2VjcmV0") && !dbg.contains("secret-bytes"), "{dbg}");
        assert_eq!(
            TsigKey::new("pgdr", Algorithm::HmacSha256, "not base64!").expect_err("refused"),
            KeyError::NotBase64
        );
        assert_eq!(TsigKey::new("pgdr", Algorithm::HmacSha256, "  \n").expect_err("refused"), KeyError::Empty);
        let e = TsigKey::new("pgdr", Algorithm::HmacSha256, "secret \"!!\"").expect_err("refused").to_string();
        assert!(!e.contains("!!"), "{e}");
    }

    #[test]
    fn the_update_replaces_address_and_alias_records_of_the_name_only() {
        let rec = WriterRecord {
            zone: "db.example".into(),
            name: "main-writer.db.example".into(),
            ttl: 30,
            target: Target::Addresses(vec!["10.0.2.20".parse().expect("ip"), "fd00::20".parse().expect("ip")]),
        };
        let m = update_message(&rec).expect("message");
        assert_eq!(m.metadata.op_code, OpCode::Update);
        assert_eq!(m.queries[0].query_type(), RecordType::SOA);
        let deletes: Vec<_> = m.authorities.iter().filter(|r| r.dns_class == DNSClass::ANY).collect();
        assert_eq!(deletes.len(), 3);
        let adds: Vec<String> =
            m.authorities.iter().filter(|r| r.dns_class == DNSClass::IN).map(|r| r.data.to_string()).collect();
        assert_eq!(adds, ["10.0.2.20", "fd00::20"]);
        let outside = WriterRecord { name: "writer.other.example".into(), ..rec };
        assert!(matches!(update_message(&outside), Err(DnsError::BadName { .. })));
    }
}
