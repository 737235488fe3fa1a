//! What can go wrong calling a pgdr HTTP API, classified so callers can tell
//! "the server is not there" (and how) from "the server said no".

use std::fmt;

use pgdr_model::Epoch;
use serde::{Deserialize, Serialize};

/// Why a server could not be reached. Failure detection needs the
/// difference: a refused connection means the host answers but nothing
/// listens; a timeout means the host (or the network to it) is silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreachable {
    /// The connection was actively refused (RST): the host is up, the
    /// server is not listening.
    Refused,
    /// Connecting or waiting for the answer took longer than the timeout.
    TimedOut,
    /// Any other transport failure (reset mid-answer, no route, DNS).
    Other(String),
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreachable::Refused => f.write_str("connection refused"),
            Unreachable::TimedOut => f.write_str("timed out"),
            Unreachable::Other(s) => f.write_str(s),
        }
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// A stable machine-readable kind: `unauthorized`, `stale_epoch`,
    /// `bad_request`, `postgres_down`, `rewind_impossible`, `failed`.
    pub kind: String,
    /// For `stale_epoch`: the highest epoch the server has seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_epoch: Option<Epoch>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: Unreachable },
    #[error("{addr} refused our credentials (check the bearer token)")]
    Unauthorized { addr: String },
    #[error("{addr} refused a stale epoch: {message}")]
    StaleEpoch { addr: String, seen: Epoch, message: String },
    /// The server understood the request and the action failed.
    #[error("{addr}: {message}")]
    Failed {
        addr: String,
        status: u16,
        /// The server's `kind` (see [`ErrorBody::kind`]).
        kind: String,
        message: String,
    },
    #[error("{addr} answered something unexpected: {detail}")]
    Protocol { addr: String, detail: String },
    #[error("cannot build an HTTP client: {0}")]
    Client(String),
}

impl ApiError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ApiError::Unreachable { .. })
    }

    /// Connection refused: the host answers, nothing listens.
    pub fn is_refused(&self) -> bool {
        matches!(self, ApiError::Unreachable { reason: Unreachable::Refused, .. })
    }

    /// No answer within the timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ApiError::Unreachable { reason: Unreachable::TimedOut, .. })
    }

    /// The server's error kind when it answered with an error.
    pub fn kind(&self) -> &str {
        match self {
            ApiError::Unreachable { reason: Unreachable::Refused, .. } => "refused",
            ApiError::Unreachable { reason: Unreachable::TimedOut, .. } => "timeout",
            ApiError::Unreachable { .. } => "unreachable",
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::StaleEpoch { .. } => "stale_epoch",
            ApiError::Failed { kind, .. } => kind,
            ApiError::Protocol { .. } => "protocol",
            ApiError::Client(_) => "client",
        }
    }

    /// Classifies a transport error from reqwest.
    pub(crate) fn transport(addr: &str, err: reqwest::Error) -> ApiError {
        let reason = match io_kind(&err) {
            _ if err.is_timeout() => Unreachable::TimedOut,
            Some(std::io::ErrorKind::ConnectionRefused) => Unreachable::Refused,
            Some(std::io::ErrorKind::TimedOut) => Unreachable::TimedOut,
            _ => Unreachable::Other(chain(&err)),
        };
        ApiError::Unreachable { addr: addr.to_owned(), reason }
    }
}

/// The kind of the first IO error in the chain, if any.
fn io_kind(err: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = e.source();
    }
    None
}

fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}
