//! HTTP: `/metrics` (OpenMetrics text), `/healthz` (process alive),
//! `/readyz` (WAL open and drivers started; 503 before that, while
//! shutting down, while a sink's server refuses its credentials and while
//! the PostgreSQL store cannot write), `/api/v1/status` (JSON) and
//! `POST /api/v1/devices/{device}/tags/{tag}/write` with `{"value": …}`
//! (a tag write, see [`crate::commands`]), `POST /api/v1/reload` (the
//! same reload as SIGHUP, answering with what changed or the configuration
//! errors). Both are recorded in the audit trail ([`crate::audit`]). When `[http] token` is set,
//! `/api/*` requires `Authorization: Bearer <token>`; metrics and health
//! stay open (bind to loopback, the default, to keep them local).
//!
//! Alerts (always need a token; 403 while `[http] token` is unset):
//! `GET /api/v1/alerts` (open alerts), `GET /api/v1/alerts/rules` (each
//! rule's state), `POST /api/v1/alerts/{id}/ack` with `{"by": "…"}`,
//! `POST /api/v1/alerts/rules/{rule}/suppress` with `{"by": "…",
//! "duration": "2h", "reason": "…"}` (duration and reason optional) and
//! `POST /api/v1/alerts/rules/{rule}/unsuppress` with `{"by": "…"}`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::HeaderMap;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use frame_bus::FrameBus;

use crate::alerts::{self, RequestError};
use crate::audit::Actor;
use crate::commands::{self, CommandError, Writers};
use crate::metrics::Metrics;
use crate::runtime::ReloadRequest;
use crate::status::Status;

#[derive(Clone)]
pub struct AppState {
    pub gateway_id: String,
    pub bus: FrameBus,
    pub metrics: Arc<Metrics>,
    pub status: Arc<Status>,
    pub token: Option<Arc<str>>,
    pub writers: Arc<Writers>,
    /// Reload requests to the runtime's main loop.
    pub reload: tokio::sync::mpsc::Sender<ReloadRequest>,
    /// Requests to the alert engine.
    pub alerts: alerts::Handle,
}

pub fn router(state: AppState) -> Router {
    let alert_api = Router::new()
        .route("/api/v1/alerts", get(list_alerts))
        .route("/api/v1/alerts/rules", get(list_rules))
        .route("/api/v1/alerts/{id}/ack", post(ack))
        .route("/api/v1/alerts/rules/{rule}/suppress", post(suppress))
        .route("/api/v1/alerts/rules/{rule}/unsuppress", post(unsuppress))
        .route_layer(middleware::from_fn_with_state(state.clone(), token_configured));
    let api = Router::new()
        .merge(alert_api)
        .route("/api/v1/status", get(status))
        .route("/api/v1/devices/{device}/tags/{tag}/write", post(write))
        .route("/api/v1/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(api)
        .with_state(state)
}

async fn metrics(State(s): State<AppState>) -> Response {
    let body = s.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    if !s.status.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response();
    }
    match s.status.unhealthy_sink() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some((sink, why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: sink {sink}: {why}\n"),
        )
            .into_response(),
    }
}

async fn status(State(s): State<AppState>) -> Response {
    Json(s.status.to_json(&s.gateway_id, &s.bus)).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteBody {
    value: serde_json::Value,
}

fn proto_value(v: &serde_json::Value) -> Option<proto::Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Bool(b) => proto::Value::bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => proto::Value::int(i),
            (None, Some(u), _) => proto::Value::uint(u),
            (None, None, Some(f)) => proto::Value::float(f),
            _ => return None,
        },
        J::String(s) => proto::Value::string(s.clone()),
        _ => return None,
    })
}

/// The HTTP client as the audit trail names it.
fn actor(peer: SocketAddr, headers: &HeaderMap) -> Actor {
    Actor {
        origin: "http".into(),
        client_ip: Some(peer.ip()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(512).collect()),
    }
}

async fn reload(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = ReloadRequest {
        actor: actor(peer, &headers),
        reply,
    };
    let unavailable = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": "the gateway is shutting down"})),
        )
            .into_response()
    };
    if s.reload.send(request).await.is_err() {
        return unavailable();
    }
    match answer.await {
        Ok(Ok(changed)) => Json(serde_json::json!({"status": "ok", "changed": changed})).into_response(),
        Ok(Err(errors)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({"status": "error", "errors": errors,
                "message": "the configuration has errors; the gateway keeps running the previous one"})),
        )
            .into_response(),
        Err(_) => unavailable(),
    }
}

async fn write(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((device, tag)): Path<(String, String)>,
    body: Result<Json<WriteBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let reply = |code: StatusCode, body: serde_json::Value| (code, Json(body)).into_response();
    let value = match body.as_ref().map(|b| proto_value(&b.value)) {
        Ok(Some(v)) => v,
        Ok(None) => {
            return reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "`value` must be a boolean, a number or a string"}),
            )
        }
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": format!("expected {{\"value\": …}}: {e}")}),
            )
        }
    };
    let actor = actor(peer, &headers);
    match commands::execute(&s.bus, &s.writers, &s.metrics, &device, &tag, value, &actor).await {
        Err(e) => {
            let code = match e {
                CommandError::UnknownDevice(_) | CommandError::UnknownTag { .. } => StatusCode::NOT_FOUND,
                CommandError::Busy(..) => StatusCode::TOO_MANY_REQUESTS,
                CommandError::Bus(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            reply(code, serde_json::json!({"error": e.to_string()}))
        }
        Ok(commands::Outcome {
            command_id,
            result: None,
        }) => reply(
            StatusCode::ACCEPTED,
            serde_json::json!({"command_id": command_id, "status": "pending",
                "message": "sent to the device; the result will be recorded on the bus as a COMMAND_RESULT event"}),
        ),
        Ok(commands::Outcome {
            command_id,
            result: Some(r),
        }) => {
            use drivers::write::WriteStatus as W;
            let code = match r.status {
                W::Ok => StatusCode::OK,
                W::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
                W::Exception | W::Protocol | W::Connection => StatusCode::BAD_GATEWAY,
                W::Timeout => StatusCode::GATEWAY_TIMEOUT,
                W::Unsupported => StatusCode::CONFLICT,
            };
            reply(
                code,
                serde_json::json!({"command_id": command_id, "status": r.status.as_str(),
                    "code": r.code, "message": r.message}),
            )
        }
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = &s.token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    match given {
        Some(g) if same(g.trim().as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
            "missing or wrong bearer token\n",
        )
            .into_response(),
    }
}

/// Alert actions need a configured token: an open API must not let anyone
/// on the network silence alarms.
async fn token_configured(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if s.token.is_none() {
        return (
            StatusCode::FORBIDDEN,
            Json(
                serde_json::json!({"error": "alert endpoints need `[http] token` to be set in gateway.toml"}),
            ),
        )
            .into_response();
    }
    next.run(req).await
}

fn engine_down() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"error": "the alert engine is not running (starting, restarting or shutting down)"})),
    )
        .into_response()
}

async fn list_alerts(State(s): State<AppState>) -> Response {
    match s.alerts.ask(alerts::Request::List).await {
        Some(list) => Json(serde_json::json!({"alerts": list})).into_response(),
        None => engine_down(),
    }
}

async fn list_rules(State(s): State<AppState>) -> Response {
    match s.alerts.ask(alerts::Request::Rules).await {
        Some(list) => Json(serde_json::json!({"rules": list})).into_response(),
        None => engine_down(),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ByBody {
    by: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SuppressBody {
    by: String,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": msg}))).into_response()
}

/// `by` names a person or system: 1..=255 characters, no control
/// characters. `Err` is the 400 answer's message.
fn check_by(by: &str) -> Result<String, String> {
    let by = by.trim();
    if by.is_empty() || by.chars().count() > 255 || by.chars().any(char::is_control) {
        return Err("`by` must name who acts: 1 to 255 characters, no control characters".into());
    }
    Ok(by.to_string())
}

/// `by` from a `{"by": …}` body; `Err` is the 400 answer's message.
fn by_body(body: Result<Json<ByBody>, axum::extract::rejection::JsonRejection>) -> Result<String, String> {
    match body {
        Ok(Json(b)) => check_by(&b.by),
        Err(e) => Err(format!("expected {{\"by\": \"who\"}}: {e}")),
    }
}

/// The answer to an alert request: 503 if the engine did not answer, the
/// error's status, or 200 with `ok(value)`.
fn answer<T>(r: Option<Result<T, RequestError>>, ok: impl FnOnce(T) -> serde_json::Value) -> Response {
    match r {
        None => engine_down(),
        Some(Ok(v)) => Json(ok(v)).into_response(),
        Some(Err(e)) => action_error(e),
    }
}

fn action_error(e: RequestError) -> Response {
    use crate::alerts::engine::ActionError as A;
    let code = match &e {
        RequestError::Action(A::UnknownAlert(_) | A::UnknownRule(_)) => StatusCode::NOT_FOUND,
        RequestError::Action(A::AlreadyAcknowledged { .. }) => StatusCode::CONFLICT,
        RequestError::Bus(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(serde_json::json!({"error": e.to_string()}))).into_response()
}

async fn ack(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<ByBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let by = match by_body(body) {
        Ok(by) => by,
        Err(m) => return bad_request(m),
    };
    let actor = actor(peer, &headers);
    let r = s
        .alerts
        .ask(|reply| alerts::Request::Acknowledge { id, by, actor, reply })
        .await;
    answer(
        r,
        |alert| serde_json::json!({"status": "acknowledged", "alert": alert}),
    )
}

async fn suppress(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(rule): Path<String>,
    body: Result<Json<SuppressBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let b = match body {
        Ok(Json(b)) => b,
        Err(e) => {
            return bad_request(format!(
                "expected {{\"by\": \"who\", \"duration\": \"2h\", \"reason\": \"…\"}}: {e}"
            ))
        }
    };
    let by = match check_by(&b.by) {
        Ok(by) => by,
        Err(m) => return bad_request(m),
    };
    let duration = match b.duration.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) if !d.is_zero() => Some(d),
        Some(_) => {
            return bad_request("`duration` must be a positive duration such as \"30m\" or \"2h\"".into())
        }
    };
    let reason = b
        .reason
        .map(|r| r.chars().filter(|c| !c.is_control()).take(1000).collect());
    let actor = actor(peer, &headers);
    let r = s
        .alerts
        .ask(|reply| alerts::Request::Suppress {
            rule,
            by,
            duration,
            reason,
            actor,
            reply,
        })
        .await;
    answer(
        r,
        |closed| serde_json::json!({"status": "suppressed", "closed_alerts": closed}),
    )
}

async fn unsuppress(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(rule): Path<String>,
    body: Result<Json<ByBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let by = match by_body(body) {
        Ok(by) => by,
        Err(m) => return bad_request(m),
    };
    let actor = actor(peer, &headers);
    let r = s
        .alerts
        .ask(|reply| alerts::Request::Unsuppress {
            rule,
            by,
            actor,
            reply,
        })
        .await;
    answer(
        r,
        |was| serde_json::json!({"status": "active", "was_suppressed": was}),
    )
}
