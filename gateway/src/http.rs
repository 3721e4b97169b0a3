//! HTTP: `/metrics` (OpenMetrics text), `/healthz` (process alive),
//! `/readyz` (WAL open and drivers started; 503 before that and while
//! shutting down) and `/api/v1/status` (JSON). When `[http] token` is set,
//! `/api/*` requires `Authorization: Bearer <token>`; metrics and health
//! stay open (bind to loopback, the default, to keep them local).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use frame_bus::FrameBus;

use crate::metrics::Metrics;
use crate::status::Status;

#[derive(Clone)]
pub struct AppState {
    pub gateway_id: String,
    pub bus: FrameBus,
    pub metrics: Arc<Metrics>,
    pub status: Arc<Status>,
    pub token: Option<Arc<str>>,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/v1/status", get(status))
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
    if s.status.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn status(State(s): State<AppState>) -> Response {
    Json(s.status.to_json(&s.gateway_id, &s.bus)).into_response()
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
