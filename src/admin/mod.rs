//! The admin HTTP listener: `/healthz`, `/readyz`, `/metrics`, `/status` read status handles
//! built in `app.rs`; `POST /rotate` asks the rotation engine for an attempt (with a bearer
//! token when `admin.token_file` is set). Nothing here ever holds a credential's secret.

pub mod listener;
pub mod metrics;

use crate::pool::Pools;
use crate::rotation::{Outcome, RotationHandle, RotationStatus};
use crate::secrets::SecretString;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub ready: Arc<AtomicBool>,
    pub shutdown: CancellationToken,
    pub prometheus: PrometheusHandle,
    pub pools: Arc<Pools>,
    pub status: Arc<RotationStatus>,
    pub rotation: RotationHandle,
    pub token: Option<SecretString>,
    pub started: SystemTime,
    /// `admin.max_connections`.
    pub max_connections: usize,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
        .route("/rotate", post(rotate))
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.ready.load(Ordering::Acquire) && !s.shutdown.is_cancelled() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics_text(State(s): State<AdminState>) -> Response {
    refresh_gauges(&s.pools);
    if let Some(at) = s.status.view().validated_at {
        let age = SystemTime::now().duration_since(at).unwrap_or_default();
        ::metrics::gauge!("rotagate_credential_age_seconds").set(age.as_secs_f64());
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.prometheus.render(),
    )
        .into_response()
}

/// Gauges derived from pool state are set at scrape time rather than on the hot path.
fn refresh_gauges(pools: &Pools) {
    let (mut total, mut idle) = (0u32, 0u32);
    for g in pools.counts() {
        total += g.connections;
        idle += g.idle;
    }
    ::metrics::gauge!("rotagate_server_connections", "state" => "idle").set(f64::from(idle));
    ::metrics::gauge!("rotagate_server_connections", "state" => "active")
        .set(f64::from(total - idle));
    ::metrics::gauge!("rotagate_credential_generation").set(pools.generation() as f64);
}

async fn status(State(s): State<AdminState>) -> Response {
    let rotation = s.status.view();
    let body = serde_json::json!({
        "ready": s.ready.load(Ordering::Acquire) && !s.shutdown.is_cancelled(),
        "generation": s.pools.generation(),
        "credential": {
            "source": rotation.source,
            "version": rotation.version,
            "username": rotation.username,
            "validated_at": rotation.validated_at_unix(),
        },
        "breaker": {
            "state": rotation.breaker,
            "consecutive_failures": rotation.consecutive_failures,
        },
        "last_attempt": rotation.last_attempt,
        "pools": s.pools.counts(),
        "uptime_seconds": s.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
    });
    axum::Json(body).into_response()
}

/// One rotation attempt now; the answer is the attempt's report.
async fn rotate(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(token) = &s.token {
        if !bearer_matches(&headers, token) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "unauthorized\n",
            )
                .into_response();
        }
    }
    let Some(report) = s.rotation.rotate_now().await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the rotation engine has stopped\n",
        )
            .into_response();
    };
    let code = match report.outcome {
        Outcome::Applied | Outcome::Validated | Outcome::Unchanged | Outcome::Reconfigured => {
            StatusCode::OK
        }
        Outcome::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
        Outcome::Failed => StatusCode::BAD_GATEWAY,
        Outcome::BreakerOpen => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, axum::Json(report)).into_response()
}

/// Compares digests, so the time taken does not depend on how much of the token matched.
fn bearer_matches(headers: &HeaderMap, token: &SecretString) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let digest = |b: &[u8]| {
        ring::digest::digest(&ring::digest::SHA256, b)
            .as_ref()
            .to_vec()
    };
    given.is_some_and(|g| digest(g.trim().as_bytes()) == digest(token.expose().as_bytes()))
}
