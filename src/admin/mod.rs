//! The admin HTTP listener: `/healthz`, `/readyz`, `/metrics`, `/status`. Reads status handles
//! built in `app.rs`; changes nothing (rotation endpoints arrive with the rotation engine).

pub mod metrics;

use crate::pool::Pools;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
    pub source: &'static str,
    pub started: SystemTime,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
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
    let current = s.pools.current();
    let body = serde_json::json!({
        "ready": s.ready.load(Ordering::Acquire) && !s.shutdown.is_cancelled(),
        "generation": current.id,
        "credential": {
            "source": s.source,
            "version": current.creds.version,
            "username": current.creds.username,
        },
        "pools": s.pools.counts(),
        "uptime_seconds": s.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
    });
    axum::Json(body).into_response()
}
