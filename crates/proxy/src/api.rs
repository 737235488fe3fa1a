//! The proxy's admin HTTP API: `POST /v1/clusters/{cluster}/pause`,
//! `POST /v1/clusters/{cluster}/resume`, `GET /v1/status`, `GET /metrics`.
//! Bind it to loopback or a private network: it has no authentication.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{ProxyError, ProxyHandle};

pub fn router(handle: ProxyHandle) -> Router {
    Router::new()
        .route("/v1/clusters/{cluster}/pause", post(pause))
        .route("/v1/clusters/{cluster}/resume", post(resume))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(handle)
}

fn error(e: ProxyError) -> Response {
    let code = match e {
        ProxyError::UnknownCluster(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, axum::Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

async fn pause(State(h): State<ProxyHandle>, Path(cluster): Path<String>) -> Response {
    match h.pause(&cluster).await {
        Ok(o) => axum::Json(o).into_response(),
        Err(e) => error(e),
    }
}

async fn resume(State(h): State<ProxyHandle>, Path(cluster): Path<String>) -> Response {
    match h.resume(&cluster) {
        Ok(o) => axum::Json(o).into_response(),
        Err(e) => error(e),
    }
}

async fn status(State(h): State<ProxyHandle>) -> Response {
    axum::Json(h.status()).into_response()
}

async fn metrics(State(h): State<ProxyHandle>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], h.metrics_text()).into_response()
}

pub(crate) async fn serve(handle: ProxyHandle, listener: TcpListener, token: CancellationToken) {
    let r = axum::serve(listener, router(handle)).with_graceful_shutdown(token.cancelled_owned()).await;
    if let Err(e) = r {
        tracing::error!(error = %e, "proxy admin API stopped");
    }
}
