//! The request plumbing both clients share: the bearer token and turning an
//! HTTP answer into a typed value or an [`ApiError`].

use pgdr_model::Redacted;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorBody};

/// What an HTTP 409 means for the server being called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum On409 {
    /// The agent's epoch fence: the request carried an older epoch.
    StaleEpoch,
    /// An ordinary refusal (the controller's `conflict` kind).
    Failed,
}

pub(crate) fn with_token(req: reqwest::RequestBuilder, token: Option<&Redacted>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => req.bearer_auth(t.expose()),
        None => req,
    }
}

pub(crate) async fn send<T: DeserializeOwned>(
    addr: &str,
    req: reqwest::RequestBuilder,
    on_409: On409,
) -> Result<T, ApiError> {
    let resp = req.send().await.map_err(|e| ApiError::transport(addr, e))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| ApiError::transport(addr, e))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::Protocol { addr: addr.to_owned(), detail: e.to_string() });
    }
    let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
    let message =
        body.as_ref().map(|b| b.error.clone()).unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
    Err(match status.as_u16() {
        401 | 403 => ApiError::Unauthorized { addr: addr.to_owned() },
        409 if on_409 == On409::StaleEpoch => ApiError::StaleEpoch {
            addr: addr.to_owned(),
            seen: body.as_ref().and_then(|b| b.seen_epoch).unwrap_or_default(),
            message,
        },
        code => ApiError::Failed {
            addr: addr.to_owned(),
            status: code,
            kind: body.map(|b| b.kind).unwrap_or_else(|| "failed".to_owned()),
            message,
        },
    })
}
