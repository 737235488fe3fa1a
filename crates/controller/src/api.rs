//! The controller's HTTP API (see `pgdr_api::controller` for the routes and
//! types) and `/metrics`.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pgdr_api::controller::{ApproveRequest, LeaseReply, LeaseRequest, RoleChangeRequest, error_body};
use pgdr_model::ClusterName;
use serde::Deserialize;

use crate::controller::{Controller, ControllerError};
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

pub fn router(ctl: Controller) -> Router {
    Router::new()
        .route("/v1/clusters", get(clusters))
        .route("/v1/clusters/{name}", get(cluster))
        .route("/v1/clusters/{name}/lease", post(lease))
        .route("/v1/clusters/{name}/{kind}", post(role_change))
        .route("/v1/workflows", get(workflows))
        .route("/v1/workflows/{id}", get(workflow))
        .route("/v1/workflows/{id}/approve", post(approve))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics))
        .merge(crate::page::router(ctl.clone())) // the status page: `/`, `/status`, `/v1/snapshot`
        .with_state(ctl)
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
    Path((name, kind)): Path<(String, String)>,
    axum::Json(req): axum::Json<RoleChangeRequest>,
) -> Result<Response, ControllerError> {
    Ok(axum::Json(ctl.role_change(&name, &kind, req).await?).into_response())
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
    }
}

async fn workflows(State(ctl): State<Controller>) -> Result<Response, ControllerError> {
    Ok(axum::Json(ctl.workflows().await?).into_response())
}

async fn workflow(State(ctl): State<Controller>, Path(id): Path<String>) -> Result<Response, ControllerError> {
    Ok(axum::Json(ctl.workflow_view(&id).await?).into_response())
}

async fn approve(
    State(ctl): State<Controller>,
    Path(id): Path<String>,
    body: Option<axum::Json<ApproveRequest>>,
) -> Result<Response, ControllerError> {
    let by = body.and_then(|b| b.0.by).unwrap_or_else(|| "api".into());
    let wid = pgdr_workflow::WorkflowId::parse(&id).map_err(ControllerError::BadRequest)?;
    ctl.engine.approve(&wid, &by).await?;
    Ok(axum::Json(ctl.workflow_view(&id).await?).into_response())
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
