//! The management API (axum): `/healthz`, `/metrics`, `/api/v1/...`.
//!
//! Errors are JSON `{"error": {"code", "message"}}` with a fitting status, mapped in [`ApiError`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use ironhub_raft::{partition_of, MembershipChange, Proposal, ProposeError, RaftNode};
use ironhub_storage::codec;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::state::{retained_key, Command, Response as CmdResponse, Retained};

/// Shared state of the API handlers.
pub struct ApiState {
    /// The raft node.
    pub node: RaftNode,
    /// The admin bearer token.
    pub admin_token: String,
    /// The Prometheus registry served on /metrics.
    pub registry: prometheus::Registry,
    /// Longest topic name accepted (`mqtt.max_topic_len`, the same limit as over MQTT).
    pub max_topic_len: usize,
}

/// An API error: becomes a JSON error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": {"code": self.code, "message": self.message}}))).into_response()
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        let (status, code) = match &e {
            ProposeError::Busy { .. } => (StatusCode::TOO_MANY_REQUESTS, "busy"),
            ProposeError::NoLeader { .. } | ProposeError::NotLeader { .. } | ProposeError::Forward { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            ProposeError::Unknown { .. } => (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"),
            ProposeError::NoSuchGroup(_) => (StatusCode::NOT_FOUND, "no_such_group"),
            ProposeError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ProposeError::Fatal { .. } | ProposeError::Codec { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<ironhub_storage::StorageError> for ApiError {
    fn from(e: ironhub_storage::StorageError) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string())
    }
}

type Shared = Arc<ApiState>;

/// Builds the router.
pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/cluster/nodes", axum::routing::post(add_node))
        .route("/api/v1/cluster/nodes/{id}", axum::routing::delete(remove_node))
        .route("/api/v1/cluster/plan", axum::routing::delete(cancel_plan))
        .route("/api/v1/retained/{*topic}", get(get_retained).put(put_retained).delete(delete_retained))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API path; see docs/")
        })
        .with_state(state)
}

async fn require_token(
    State(s): State<Shared>,
    headers: HeaderMap,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    let ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), s.admin_token.as_bytes()));
    if !ok {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer <admin token>` (printed at first start, stored in <data-dir>/admin-token)",
        ));
    }
    Ok(next.run(req).await)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz(State(s): State<Shared>) -> Response {
    if !s.node.healthy() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": "a raft group stopped"})),
        )
            .into_response();
    }
    Json(json!({"status": "ok", "node_id": s.node.id()})).into_response()
}

async fn metrics(State(s): State<Shared>) -> Response {
    let mut out = String::new();
    let enc = prometheus::TextEncoder::new();
    match enc.encode_utf8(&s.registry.gather(), &mut out) {
        Ok(()) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "metrics", e.to_string()).into_response(),
    }
}

#[derive(Serialize)]
struct NodeView {
    id: u64,
    cluster_addr: String,
    this_node: bool,
}

fn plan_view(p: &ironhub_raft::MembershipPlan, groups: usize) -> serde_json::Value {
    let change = match &p.change {
        MembershipChange::AddNode { id, addr } => format!("add node {id} at {}", addr.cluster),
        MembershipChange::RemoveNode { id } => format!("remove node {id}"),
    };
    let state = match &p.finished {
        None => "running".to_string(),
        Some(None) => "done".to_string(),
        Some(Some(e)) => format!("failed: {e}"),
    };
    json!({"id": p.id.to_string(), "change": change, "state": state, "groups_done": p.done.len(), "groups_total": groups})
}

async fn cluster(State(s): State<Shared>) -> Json<serde_json::Value> {
    let groups = s.node.status();
    let nodes: Vec<NodeView> = s
        .node
        .cluster_nodes()
        .await
        .into_iter()
        .map(|(id, addr)| NodeView { id, cluster_addr: addr.cluster, this_node: id == s.node.id() })
        .collect();
    let plan = s.node.membership_plan().await.map(|p| plan_view(&p, groups.len()));
    let led = groups.iter().filter(|g| g.leader.is_some()).count();
    Json(json!({
        "cluster_id": s.node.cluster_id(),
        "node_id": s.node.id(),
        "partitions": s.node.partitions(),
        "healthy": s.node.healthy(),
        "groups_led": led,
        "nodes": nodes,
        "groups": groups,
        "plan": plan,
    }))
}

#[derive(Deserialize)]
struct AddNodeBody {
    id: u64,
    addr: String,
}

/// A body that is not the expected JSON: the extractor's status (400, 413 too large, 415 wrong
/// content type, 422 wrong shape) with its explanation, as our JSON error.
fn bad_json(e: axum::extract::rejection::JsonRejection) -> ApiError {
    ApiError::new(e.status(), "bad_json", e.body_text())
}

fn bad_plan(e: String) -> ApiError {
    let status = if e.contains("still running") || e.contains("already") || e.contains("not a member") {
        StatusCode::CONFLICT
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    ApiError::new(status, "membership", e)
}

async fn add_node(
    State(s): State<Shared>,
    body: Result<Json<AddNodeBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Json(b) = body.map_err(bad_json)?;
    if b.id == 0 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_node", "node ids start at 1"));
    }
    crate::config::resolve(&b.addr).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_addr", e))?;
    let plan = s.node.add_node(b.id, b.addr).await.map_err(bad_plan)?;
    Ok((StatusCode::ACCEPTED, Json(plan_view(&plan, s.node.status().len()))))
}

async fn cancel_plan(State(s): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    let plan = s.node.cancel_plan().await.map_err(|e| {
        if e.contains("no membership plan") {
            ApiError::new(StatusCode::NOT_FOUND, "no_plan", e)
        } else {
            bad_plan(e)
        }
    })?;
    Ok(Json(plan_view(&plan, s.node.status().len())))
}

async fn remove_node(
    State(s): State<Shared>,
    Path(id): Path<u64>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let plan = s.node.remove_node(id).await.map_err(bad_plan)?;
    Ok((StatusCode::ACCEPTED, Json(plan_view(&plan, s.node.status().len()))))
}

#[derive(Deserialize)]
struct RetainBody {
    payload: String,
    #[serde(default)]
    qos: u8,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn check_topic(s: &ApiState, topic: &str) -> Result<(), ApiError> {
    if topic.len() > s.max_topic_len || !crate::mqtt::codec::valid_topic(topic) || topic.contains('\0') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_topic",
            format!(
                "a topic name is 1..{} bytes (mqtt.max_topic_len) with no wildcards (+, #) or NUL",
                s.max_topic_len
            ),
        ));
    }
    Ok(())
}

async fn set_retained(s: &ApiState, topic: String, payload: Bytes, qos: u8) -> Result<CmdResponse, ApiError> {
    check_topic(s, &topic)?;
    if qos > 2 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_qos", "qos is 0, 1 or 2"));
    }
    let g = partition_of(topic.as_bytes(), s.node.partitions());
    let cmd =
        Command::SetRetained { topic, payload, qos, at_ms: now_ms(), props: Default::default() }.encode()?;
    let raw = s.node.propose(g, Proposal::app(cmd)).await?;
    Ok(codec::decode(&raw, "command response")?)
}

async fn put_retained(
    State(s): State<Shared>,
    Path(topic): Path<String>,
    body: Result<Json<RetainBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body.map_err(bad_json)?;
    match set_retained(&s, topic, Bytes::from(body.payload.into_bytes()), body.qos).await? {
        CmdResponse::Applied { index, .. } => Ok(Json(json!({"applied_index": index}))),
        CmdResponse::Rejected { reason } => Err(ApiError::new(StatusCode::BAD_REQUEST, "rejected", reason)),
        other => {
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected {other:?}")))
        }
    }
}

async fn delete_retained(State(s): State<Shared>, Path(topic): Path<String>) -> Result<StatusCode, ApiError> {
    set_retained(&s, topic, Bytes::new(), 0).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_retained(
    State(s): State<Shared>,
    Path(topic): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_topic(&s, &topic)?;
    let g = partition_of(topic.as_bytes(), s.node.partitions());
    s.node.read_barrier(g).await?;
    let key = retained_key(&topic);
    let raw = s.node.with_state(g, move |v| v.get(&key)).await?;
    let Some(raw) = raw else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no retained message on `{topic}`"),
        ));
    };
    let r: Retained = codec::decode(&raw, "retained message")?;
    Ok(Json(json!({
        "topic": topic,
        "payload": String::from_utf8_lossy(&r.payload),
        "qos": r.qos,
        "at_ms": r.at_ms,
        "index": r.index,
    })))
}
