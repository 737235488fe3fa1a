//! The proxy's admin HTTP API: `POST /v1/clusters/{cluster}/pause`
//! (`?drain_ms=N&hold_ms=M`), `POST /v1/clusters/{cluster}/resume`, `POST
//! /v1/clusters/{cluster}/users/refresh`, `POST
//! /v1/clusters/{cluster}/route` (a controller's route, never of an older
//! epoch: 409), `GET /v1/status`, `GET /metrics`.
//! Every route needs the proxy's `api_token` as a bearer token (config
//! validation refuses a non-loopback `api` address without one).
//!
//! [`ROUTES`] lists the routes; the router is built from it, so the tests
//! that walk it cover every route.

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{ProxyError, ProxyHandle};

/// One route of the admin API; every one needs the token.
#[derive(Clone)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    handler: fn() -> MethodRouter<ProxyHandle>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Every route of the admin API.
pub const ROUTES: &[Route] = &[
    Route { method: Method::POST, path: "/v1/clusters/{cluster}/pause", handler: || post(pause) },
    Route { method: Method::POST, path: "/v1/clusters/{cluster}/resume", handler: || post(resume) },
    Route { method: Method::POST, path: "/v1/clusters/{cluster}/users/refresh", handler: || post(refresh_users) },
    Route { method: Method::POST, path: "/v1/clusters/{cluster}/route", handler: || post(route) },
    Route { method: Method::GET, path: "/v1/status", handler: || get(status) },
    Route { method: Method::GET, path: "/metrics", handler: || get(metrics) },
];

pub fn router(handle: ProxyHandle) -> Router {
    let mut r: Router<ProxyHandle> = Router::new();
    for route in ROUTES {
        r = r.route(route.path, (route.handler)());
    }
    r.route_layer(axum::middleware::from_fn_with_state(handle.clone(), guard)).with_state(handle)
}

async fn guard(State(h): State<ProxyHandle>, req: Request, next: Next) -> Response {
    let given = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    match h.inner.api_tokens.authorize(given, None) {
        Ok(_) => next.run(req).await,
        Err(d) => {
            let code = StatusCode::from_u16(d.status()).unwrap_or(StatusCode::UNAUTHORIZED);
            (code, axum::Json(serde_json::json!({ "error": d.to_string(), "kind": d.kind() }))).into_response()
        }
    }
}

fn error(e: ProxyError) -> Response {
    let code = match e {
        ProxyError::UnknownCluster(_) => StatusCode::NOT_FOUND,
        ProxyError::OlderEpoch(_) | ProxyError::NotPublishable(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, axum::Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

/// `?drain_ms=N`: wait at most N ms for running transactions (at most the
/// configured drain timeout). `&hold_ms=M`: the pause ends by itself M ms
/// later unless resumed or paused again first.
#[derive(Debug, serde::Deserialize)]
struct PauseQuery {
    drain_ms: Option<u64>,
    hold_ms: Option<u64>,
}

async fn pause(
    State(h): State<ProxyHandle>,
    Path(cluster): Path<String>,
    axum::extract::Query(q): axum::extract::Query<PauseQuery>,
) -> Response {
    let ms = std::time::Duration::from_millis;
    match h.pause_held(&cluster, q.drain_ms.map(ms), q.hold_ms.map(ms)).await {
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

async fn refresh_users(State(h): State<ProxyHandle>, Path(cluster): Path<String>) -> Response {
    match h.refresh_users(&cluster).await {
        Ok(users) => axum::Json(serde_json::json!({ "users": users })).into_response(),
        Err(e) => error(e),
    }
}

async fn route(
    State(h): State<ProxyHandle>,
    Path(cluster): Path<String>,
    axum::Json(r): axum::Json<crate::Routing>,
) -> Response {
    match h.publish(&cluster, r) {
        Ok(taken) => axum::Json(serde_json::json!({ "taken": taken })).into_response(),
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
    let listener = pgdr_tls::ApiListener::new(listener, handle.inner.api_tls.clone());
    let r = axum::serve(listener, router(handle)).with_graceful_shutdown(token.cancelled_owned()).await;
    if let Err(e) = r {
        tracing::error!(error = %e, "proxy admin API stopped");
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::ProxySpec;

    /// One HTTP/1.1 request; the status code of the answer.
    async fn status_of(addr: std::net::SocketAddr, method: &Method, path: &str, auth: Option<&str>) -> u16 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        let req =
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        let text = String::from_utf8_lossy(&out);
        text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    /// Every admin route, from the table the router is built from: 401
    /// without the token or with a wrong one, through with it.
    #[tokio::test]
    async fn every_admin_route_needs_the_token() {
        let spec = ProxySpec { api_token: Some("admin-secret".into()), ..ProxySpec::default() };
        let handle = ProxyHandle::new(spec).expect("proxy");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(handle, listener, cancel.clone()));
        for r in ROUTES {
            let path = r.path.replace("{cluster}", "main");
            for auth in [None, Some("Bearer wrong"), Some("admin-secret")] {
                assert_eq!(status_of(addr, &r.method, &path, auth).await, 401, "{r:?} with {auth:?}");
            }
            let ok = status_of(addr, &r.method, &path, Some("Bearer admin-secret")).await;
            // No cluster "main" in this proxy: 404 from the handler itself;
            // the route's handler answers 415 first (no JSON body sent).
            let handler_answer = if r.path.ends_with("/route") { ok == 415 } else { ok == 200 || ok == 404 };
            assert!(handler_answer, "{r:?} with the token: {ok}");
        }
        cancel.cancel();
        let _ = task.await;
    }
}
