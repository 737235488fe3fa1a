//! The controller's HTTP API (see `pgdr_api::controller` for the routes and
//! types), `/metrics` and the status page, with who may call what.
//!
//! [`ROUTES`] is the one list of routes: the router is built from it and
//! the auth guard reads each request's requirement from it, so a route
//! cannot exist without a stated requirement (and the tests walk the same
//! list). Every route but the page's static files needs a bearer token of
//! a role that allows it (see [`pgdr_config::Access`]).

use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, FromRef, MatchedPath, Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use pgdr_api::controller::{FreezeRequest, LeaseReply, LeaseRequest, RoleChangeRequest, RotateRequest, error_body};
use pgdr_config::Access;
use pgdr_config::auth::Caller;
use pgdr_model::ClusterName;
use serde::Deserialize;

use crate::controller::{Controller, ControllerError};
use crate::page::PageState;
use crate::runtime::LeaseRefused;

impl IntoResponse for ControllerError {
    fn into_response(self) -> Response {
        let status = match self.kind() {
            "conflict" => StatusCode::CONFLICT,
            "not_found" => StatusCode::NOT_FOUND,
            "bad_request" => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, axum::Json(error_body(self.kind(), self.to_string()))).into_response()
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone: the status page's static files, which hold no data.
    Public,
    /// A token whose role grants this.
    Role(Access),
}

/// One route: method, path (axum syntax), who may call it, its handler.
#[derive(Clone)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub need: Need,
    handler: fn() -> MethodRouter<App>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({:?})", self.method, self.path, self.need)
    }
}

const fn route(method: Method, path: &'static str, need: Need, handler: fn() -> MethodRouter<App>) -> Route {
    Route { method, path, need, handler }
}

const VIEW: Need = Need::Role(Access::Viewer);
const OPERATE: Need = Need::Role(Access::Operator);

/// Every route the controller serves.
pub const ROUTES: &[Route] = &[
    route(Method::GET, "/v1/clusters", VIEW, || get(clusters)),
    route(Method::GET, "/v1/clusters/{name}", VIEW, || get(cluster)),
    route(Method::POST, "/v1/clusters/{name}/lease", Need::Role(Access::Agent), || post(lease)),
    // switchover, failover, failback
    route(Method::POST, "/v1/clusters/{name}/{kind}", OPERATE, || post(role_change)),
    // Secret rotation (issue 16): start or plan one; the rotation state.
    route(Method::POST, "/v1/clusters/{name}/secrets/rotate", OPERATE, || post(rotate_secrets)),
    route(Method::GET, "/v1/clusters/{name}/secrets", VIEW, || get(secrets)),
    route(Method::GET, "/v1/workflows", VIEW, || get(workflows)),
    route(Method::GET, "/v1/workflows/{id}", VIEW, || get(workflow)),
    route(Method::POST, "/v1/workflows/{id}/approve", OPERATE, || post(approve)),
    route(Method::GET, "/v1/events", VIEW, || get(events)),
    // The safety rules; freezing gates automatic role changes.
    route(Method::GET, "/v1/rules", VIEW, || get(rules)),
    route(Method::POST, "/v1/rules/freeze", OPERATE, || post(freeze)),
    route(Method::POST, "/v1/rules/unfreeze", OPERATE, || post(unfreeze)),
    route(Method::GET, "/metrics", VIEW, || get(metrics)),
    // The status page: the page and its two files are public, its data is not.
    route(Method::GET, "/", Need::Public, || get(crate::page::page)),
    route(Method::GET, "/status", Need::Public, || get(crate::page::page)),
    route(Method::GET, "/status/page.css", Need::Public, || get(crate::page::css)),
    route(Method::GET, "/status/page.js", Need::Public, || get(crate::page::js)),
    route(Method::GET, "/v1/snapshot", VIEW, || get(crate::page::snapshot)),
];

/// What the handlers share: the controller and the page's state.
#[derive(Debug, Clone)]
pub struct App {
    ctl: Controller,
    page: PageState,
}

impl FromRef<App> for Controller {
    fn from_ref(app: &App) -> Controller {
        app.ctl.clone()
    }
}

impl FromRef<App> for PageState {
    fn from_ref(app: &App) -> PageState {
        app.page.clone()
    }
}

/// The router, built from [`ROUTES`] behind the auth guard.
pub fn router(ctl: Controller) -> Router {
    let app = App { page: PageState::new(ctl.clone()), ctl };
    let mut r: Router<App> = Router::new();
    for route in ROUTES {
        r = r.route(route.path, (route.handler)());
    }
    r.route_layer(axum::middleware::from_fn_with_state(app.clone(), guard)).with_state(app)
}

/// The requirement of `method path`, as the router matched it.
pub fn need_of(method: &Method, path: &str) -> Option<Need> {
    ROUTES.iter().find(|r| r.method == method && r.path == path).map(|r| r.need)
}

/// Lets a request through to its handler only with a token that allows it;
/// the caller goes along as a request extension. A matched path without a
/// row in [`ROUTES`] for its method is refused (nothing runs unlisted).
async fn guard(State(app): State<App>, matched: Option<MatchedPath>, mut req: Request, next: Next) -> Response {
    let need = matched.as_ref().and_then(|m| need_of(req.method(), m.as_str()));
    let need = match need {
        Some(Need::Public) => return next.run(req).await,
        Some(Need::Role(a)) => a,
        None => {
            return (StatusCode::METHOD_NOT_ALLOWED, axum::Json(error_body("bad_request", "method not allowed")))
                .into_response();
        }
    };
    let given = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    match app.ctl.sh.tokens.authorize(given, Some(need)) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(denied) => {
            let status = StatusCode::from_u16(denied.status()).unwrap_or(StatusCode::UNAUTHORIZED);
            let mut resp = (status, axum::Json(error_body(denied.kind(), denied.to_string()))).into_response();
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            }
            resp
        }
    }
}

async fn clusters(State(ctl): State<Controller>) -> Result<Response, ControllerError> {
    let mut out = Vec::new();
    for c in &ctl.sh.config.clusters {
        out.push(ctl.cluster_view(c.name.as_str()).await?);
    }
    Ok(axum::Json(out).into_response())
}

async fn cluster(State(ctl): State<Controller>, Path(name): Path<String>) -> Result<Response, ControllerError> {
    Ok(axum::Json(ctl.cluster_view(&name).await?).into_response())
}

async fn role_change(
    State(ctl): State<Controller>,
    Extension(caller): Extension<Caller>,
    Path((name, kind)): Path<(String, String)>,
    axum::Json(mut req): axum::Json<RoleChangeRequest>,
) -> Result<Response, ControllerError> {
    // Journalled as the token's holder; the client's own words follow.
    req.requested_by = Some(match req.requested_by.take() {
        Some(said) if said != caller.name => format!("{} ({said})", caller.name),
        _ => caller.name,
    });
    Ok(axum::Json(ctl.role_change(&name, &kind, req).await?).into_response())
}

async fn rotate_secrets(
    State(ctl): State<Controller>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    axum::Json(mut req): axum::Json<RotateRequest>,
) -> Result<Response, ControllerError> {
    req.requested_by = Some(match req.requested_by.take() {
        Some(said) if said != caller.name => format!("{} ({said})", caller.name),
        _ => caller.name,
    });
    Ok(axum::Json(crate::rotation::start(&ctl, &name, req).await?).into_response())
}

async fn secrets(State(ctl): State<Controller>, Path(name): Path<String>) -> Result<Response, ControllerError> {
    Ok(axum::Json(crate::rotation::view(&ctl, &name).await?).into_response())
}

async fn lease(
    State(ctl): State<Controller>,
    Path(name): Path<String>,
    axum::Json(req): axum::Json<LeaseRequest>,
) -> Response {
    let cluster = ClusterName::new(name);
    let ttl: Duration = ctl.sh.config.timing.lease_ttl;
    let ttl_ms = ttl.as_millis() as u64;
    match ctl.sh.leases.renew(&ctl.sh.clusters, &cluster, &req.node, ttl).await {
        Ok(epoch) => axum::Json(LeaseReply { granted: true, node: req.node, epoch, ttl_ms, message: "granted".into() })
            .into_response(),
        Err(LeaseRefused::Refused(m)) => {
            tracing::warn!(cluster = %cluster, node = %req.node, "lease refused: {m}");
            (
                StatusCode::CONFLICT,
                axum::Json(LeaseReply { granted: false, node: req.node, epoch: req.epoch, ttl_ms, message: m }),
            )
                .into_response()
        }
        Err(LeaseRefused::NotReady(m)) => {
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(error_body("not_ready", m))).into_response()
        }
        Err(LeaseRefused::NotLeader(m)) => {
            tracing::warn!(cluster = %cluster, node = %req.node, "lease not renewed here: {m}");
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(error_body(pgdr_api::controller::NOT_LEADER, m)))
                .into_response()
        }
    }
}

async fn workflows(State(ctl): State<Controller>) -> Result<Response, ControllerError> {
    Ok(axum::Json(ctl.workflows().await?).into_response())
}

async fn workflow(State(ctl): State<Controller>, Path(id): Path<String>) -> Result<Response, ControllerError> {
    Ok(axum::Json(ctl.workflow_view(&id).await?).into_response())
}

/// The approval is recorded under the token's name, never a name the
/// client writes.
async fn approve(
    State(ctl): State<Controller>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ControllerError> {
    let wid = pgdr_workflow::WorkflowId::parse(&id).map_err(ControllerError::BadRequest)?;
    tracing::info!(workflow = %id, by = %caller.name, "workflow approved");
    ctl.engine.approve(&wid, &caller.name).await?;
    Ok(axum::Json(ctl.workflow_view(&id).await?).into_response())
}

async fn rules(State(ctl): State<Controller>) -> Result<Response, ControllerError> {
    Ok(axum::Json(ctl.rules_view().await?).into_response())
}

/// Recorded under the token's name, never a name the client writes.
async fn freeze(
    State(ctl): State<Controller>,
    Extension(caller): Extension<Caller>,
    axum::Json(req): axum::Json<FreezeRequest>,
) -> Result<Response, ControllerError> {
    Ok(axum::Json(ctl.freeze(&req, &caller.name).await?).into_response())
}

async fn unfreeze(
    State(ctl): State<Controller>,
    Extension(caller): Extension<Caller>,
    axum::Json(req): axum::Json<FreezeRequest>,
) -> Result<Response, ControllerError> {
    Ok(axum::Json(ctl.unfreeze(&req, &caller.name).await?).into_response())
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn events(State(ctl): State<Controller>, Query(q): Query<EventsQuery>) -> Result<Response, ControllerError> {
    let limit = q.limit.unwrap_or(500).min(10_000);
    let list = match q.after {
        Some(a) => ctl.sh.events.list(Some(a), limit).await?,
        None => ctl.sh.events.tail(limit).await?,
    };
    Ok(axum::Json(list).into_response())
}

async fn metrics(State(ctl): State<Controller>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], ctl.sh.metrics.encode()).into_response()
}
