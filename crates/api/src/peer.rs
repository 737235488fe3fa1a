//! Agent-to-agent support for a primary whose lease lapsed, and how the
//! controller withdraws it (see `docs/failover-math.md`).
//!
//! | method | path | body → answer |
//! | --- | --- | --- |
//! | POST | `/v1/peer/support` | [`SupportRequest`] → [`SupportReply`] |
//! | POST | `/v1/peer/withdraw` | [`WithdrawRequest`] → [`SupportReply`] |
//!
//! A primary's agent that cannot renew its lease keeps PostgreSQL writable
//! only while a majority of its cluster's agents (itself included) answer
//! `support: true`. The controller, before relying on the old primary's
//! lease having expired, asks every agent it reaches to withdraw.

use std::time::Duration;

use pgdr_model::{ClusterName, Epoch, NodeName, Redacted};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupportRequest {
    pub cluster: ClusterName,
    pub primary: NodeName,
    pub epoch: Epoch,
    /// A digest of the requester's view of the cluster's members
    /// (`pgdr_decide::support::members_digest`): a peer whose view differs
    /// refuses (a majority of another member list is not a majority).
    #[serde(default)]
    pub members: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithdrawRequest {
    pub cluster: ClusterName,
    /// The primary losing support.
    pub primary: NodeName,
    /// Support is withdrawn from `primary` at this epoch and older.
    pub epoch: Epoch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupportReply {
    pub node: NodeName,
    pub support: bool,
    pub message: String,
}

/// Calls the peer endpoints of one agent.
#[derive(Debug, Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    scheme: &'static str,
    addr: String,
    token: Option<Redacted>,
    timeout: Duration,
}

impl PeerClient {
    pub fn new(addr: &str, token: Option<Redacted>, timeout: Duration) -> Result<PeerClient, ApiError> {
        Self::new_with(addr, token, timeout, &crate::HttpTls::plain())
    }

    /// [`PeerClient::new`] over `tls` (HTTPS when the agents serve it).
    pub fn new_with(
        addr: &str,
        token: Option<Redacted>,
        timeout: Duration,
        tls: &crate::HttpTls,
    ) -> Result<PeerClient, ApiError> {
        Ok(PeerClient { http: tls.client(timeout)?, scheme: tls.scheme(), addr: addr.to_owned(), token, timeout })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Opens the connection (TLS handshake included) ahead of the first
    /// support round, with a deadline of its own: `GET /v1/health`, the
    /// answer ignored. A round then pays only its request.
    pub async fn warm(&self, within: Duration) {
        let _ = self.http.get(format!("{}://{}/v1/health", self.scheme, self.addr)).timeout(within).send().await;
    }

    pub async fn support(&self, req: &SupportRequest) -> Result<SupportReply, ApiError> {
        self.post("/v1/peer/support", req).await
    }

    pub async fn withdraw(&self, req: &WithdrawRequest) -> Result<SupportReply, ApiError> {
        self.post("/v1/peer/withdraw", req).await
    }

    async fn post<B: Serialize>(&self, path: &str, body: &B) -> Result<SupportReply, ApiError> {
        let mut req =
            self.http.post(format!("{}://{}{}", self.scheme, self.addr, path)).json(body).timeout(self.timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        let resp = req.send().await.map_err(|e| ApiError::transport(&self.addr, e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ApiError::transport(&self.addr, e))?;
        if matches!(status.as_u16(), 401 | 403) {
            return Err(ApiError::Unauthorized { addr: self.addr.clone() });
        }
        if !status.is_success() {
            return Err(ApiError::Failed {
                addr: self.addr.clone(),
                status: status.as_u16(),
                kind: "failed".into(),
                message: String::from_utf8_lossy(&bytes).trim().to_owned(),
            });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::Protocol { addr: self.addr.clone(), detail: e.to_string() })
    }
}
