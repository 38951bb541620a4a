//! The admin HTTP listener: `/healthz`, `/readyz`, `/metrics`, `/status` read status handles
//! built in `app.rs`; `POST /rotate` asks the rotation engine for an attempt (with a bearer
//! token when `admin.token_file` is set). Nothing here ever holds a credential's secret.

pub mod listener;
pub mod metrics;

use crate::databases::{Database, Databases};
use crate::rotation::Outcome;
use crate::secrets::SecretString;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub databases: Arc<Databases>,
    pub shutdown: CancellationToken,
    pub prometheus: PrometheusHandle,
    pub token: Option<SecretString>,
    pub started: SystemTime,
    /// `admin.max_connections`.
    pub max_connections: usize,
    /// `admin.metrics_require_token`.
    pub metrics_require_token: bool,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
        .route("/rotate", post(rotate))
        .route("/failover", post(failover))
        .with_state(state)
}

/// Ready when every database has a validated credential (and not shutting down).
fn ready(s: &AdminState) -> bool {
    !s.shutdown.is_cancelled() && s.databases.all().iter().all(|d| d.is_ready())
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if ready(&s) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics_text(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if s.metrics_require_token {
        if let Some(refused) = unauthorized(&s, &headers) {
            return refused;
        }
    }
    for db in s.databases.all().iter() {
        refresh_gauges(db);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.prometheus.render(),
    )
        .into_response()
}

/// Gauges derived from pool state are set at scrape time rather than on the hot path.
fn refresh_gauges(db: &Database) {
    let (mut total, mut idle) = (0u32, 0u32);
    for g in db.pools.counts() {
        total += g.connections;
        idle += g.idle;
    }
    let name = db.name().to_owned();
    ::metrics::gauge!("rotagate_server_connections", "state" => "idle", "database" => name.clone())
        .set(f64::from(idle));
    ::metrics::gauge!("rotagate_server_connections", "state" => "active", "database" => name.clone())
        .set(f64::from(total - idle));
    ::metrics::gauge!("rotagate_credential_generation", "database" => name.clone())
        .set(db.pools.generation() as f64);
    for (host, open) in db.pools.host_connections() {
        ::metrics::gauge!("rotagate_host_connections", "database" => name.clone(), "host" => host.to_string())
            .set(f64::from(open));
    }
    if let Some(at) = db.status.view().validated_at {
        let age = SystemTime::now().duration_since(at).unwrap_or_default();
        ::metrics::gauge!("rotagate_credential_age_seconds", "database" => name)
            .set(age.as_secs_f64());
    }
}

/// One database's part of `/status`.
fn database_status(db: &Database) -> serde_json::Value {
    let rotation = db.status.view();
    serde_json::json!({
        "ready": db.is_ready(),
        "generation": db.pools.generation(),
        "mode": db.route.mode,
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
        "upstream": {
            "writer": rotation.writer,
            "hosts": rotation.hosts,
            "last_failover": rotation.last_failover,
        },
        "pools": db.pools.counts(),
        "token": token_status(db),
    })
}

/// For a token source (RDS IAM): when the token in use was signed, its age and its expiry;
/// never the token. Null otherwise.
fn token_status(db: &Database) -> serde_json::Value {
    let creds = db.pools.current_creds();
    let Some(status) = creds.token.as_ref().and_then(|t| t.0.status()) else {
        return serde_json::Value::Null;
    };
    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let age = SystemTime::now()
        .duration_since(status.signed_at)
        .unwrap_or_default();
    serde_json::json!({
        "signed_at": unix(status.signed_at),
        "age_seconds": age.as_secs(),
        "valid_until": unix(status.valid_until),
    })
}

/// `"databases": {name: {...}}`; with one database its fields are at the top level too (as
/// before there were several).
async fn status(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(refused) = unauthorized(&s, &headers) {
        return refused;
    }
    let all = s.databases.all();
    let mut body = serde_json::Map::new();
    if let [only] = all.as_slice() {
        if let serde_json::Value::Object(fields) = database_status(only) {
            body.extend(fields);
        }
    }
    let databases: serde_json::Map<String, serde_json::Value> = all
        .iter()
        .map(|d| (d.name().to_owned(), database_status(d)))
        .collect();
    body.insert("ready".into(), ready(&s).into());
    body.insert("databases".into(), databases.into());
    let uptime = s.started.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    body.insert("uptime_seconds".into(), uptime.into());
    axum::Json(serde_json::Value::Object(body)).into_response()
}

/// One rotation attempt now, for `?database=NAME` or for every database. With one database
/// (or the parameter) the answer is the attempt's report; otherwise `{"databases": {name:
/// report}}`, with the status of the first attempt that did not succeed.
async fn rotate(State(s): State<AdminState>, uri: Uri, headers: HeaderMap) -> Response {
    ask_engines(&s, &uri, &headers, Ask::Rotate).await
}

/// `POST /failover[?database=NAME]`: look for the host to serve from now; answered like
/// `/rotate` (200 with the report when a host is served, 502 when none is found).
async fn failover(State(s): State<AdminState>, uri: Uri, headers: HeaderMap) -> Response {
    ask_engines(&s, &uri, &headers, Ask::Failover).await
}

#[derive(Clone, Copy)]
enum Ask {
    Rotate,
    Failover,
}

/// 401 when a token is configured and the request does not carry it.
fn unauthorized(s: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let token = s.token.as_ref()?;
    if bearer_matches(headers, token) {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "unauthorized\n",
        )
            .into_response(),
    )
}

async fn ask_engines(s: &AdminState, uri: &Uri, headers: &HeaderMap, ask: Ask) -> Response {
    if let Some(refused) = unauthorized(s, headers) {
        return refused;
    }
    let targets = match query_param(uri, "database") {
        Some(name) => match s.databases.get(&name) {
            Some(db) => vec![db],
            None => return (StatusCode::NOT_FOUND, "no such database\n").into_response(),
        },
        None => s.databases.all().to_vec(),
    };
    let mut reports = serde_json::Map::new();
    let mut code = StatusCode::OK;
    for db in &targets {
        let report = match ask {
            Ask::Rotate => db.rotation.rotate_now().await,
            Ask::Failover => db.rotation.failover_now().await,
        };
        let Some(report) = report else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the rotation engine has stopped\n",
            )
                .into_response();
        };
        let this = outcome_code(report.outcome);
        if code == StatusCode::OK {
            code = this;
        }
        let report = serde_json::to_value(&report).unwrap_or_default();
        if targets.len() == 1 {
            return (this, axum::Json(report)).into_response();
        }
        reports.insert(db.name().to_owned(), report);
    }
    let body = serde_json::json!({ "databases": reports });
    (code, axum::Json(body)).into_response()
}

fn outcome_code(outcome: Outcome) -> StatusCode {
    match outcome {
        Outcome::Applied | Outcome::Validated | Outcome::Unchanged | Outcome::Reconfigured => {
            StatusCode::OK
        }
        Outcome::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
        Outcome::Failed => StatusCode::BAD_GATEWAY,
        Outcome::BreakerOpen => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A query parameter's value, percent-decoded.
fn query_param(uri: &Uri, name: &str) -> Option<String> {
    let query = uri.query()?;
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
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
