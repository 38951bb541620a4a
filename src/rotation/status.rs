//! What the engine reports: one [`Report`] per attempt (also the audit event and the
//! `POST /rotate` answer) and the [`RotationStatus`] that `/status` reads. No secret here.

use super::breaker::BreakerState;
use serde::Serialize;
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Start,
    Event,
    Refresh,
    Manual,
    AuthFailure,
    HalfOpen,
    Retry,
    /// New pool settings (SIGHUP): the serving credential is republished as a new generation.
    Reload,
    /// `POST /failover`: look for the writer now.
    Failover,
    /// The serving host looked gone or changed role: a connection lost, 57P01/02/03, a
    /// read-only error (25006), a login refused as "starting up" (and the retries after).
    UpstreamLost,
    /// The periodic look at every host (`upstream.writer_check_interval`).
    WriterCheck,
    /// An RDS failover event on the SQS queue.
    RdsEvent,
}

/// The name a value serializes to (`start`, `breaker_open`): what `/status`, `POST /rotate`
/// and the audit log lines show.
pub fn name_of<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl Trigger {
    /// A search for the host to serve from, not a credential attempt.
    pub fn is_search(self) -> bool {
        matches!(
            self,
            Trigger::Failover | Trigger::UpstreamLost | Trigger::WriterCheck | Trigger::RdsEvent
        )
    }
}

/// One host of `upstream.hosts`, as last looked at (`/status`).
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    pub host: String,
    /// primary, read_only, standby; null when it could not be asked.
    pub role: Option<super::writer::Role>,
    /// Why it could not be asked (never a credential).
    pub error: Option<String>,
    /// The writer served from; for a reader entry, in rotation.
    pub serving: bool,
    pub checked_at: u64,
    /// A reader entry's standby: how far behind the primary, when that can be told.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
}

/// The last move to another host.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverView {
    pub from: String,
    pub to: String,
    pub trigger: Trigger,
    pub at: u64,
    /// From the first sign of trouble to the new host serving.
    pub detection_to_serving_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A new credential passed its health check and is being served.
    Applied,
    /// The serving credential (at start, or from the cache) passed its health check.
    Validated,
    /// The source holds the credential already being served.
    Unchanged,
    /// The candidate failed validation or its health check; the old one keeps serving.
    Rejected,
    /// The source could not be read.
    Failed,
    /// The breaker is open; no attempt was made.
    BreakerOpen,
    /// The serving credential passed its health check and was republished with new pool
    /// settings (a reload, not a rotation).
    Reconfigured,
}

impl Outcome {
    /// The `result` label of `rotagate_rotations_total`, for outcomes that count as attempts.
    pub fn metric_result(self) -> Option<&'static str> {
        match self {
            Outcome::Applied => Some("success"),
            Outcome::Rejected => Some("rejected"),
            Outcome::Failed => Some("failed"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub outcome: Outcome,
    pub trigger: Trigger,
    pub source: &'static str,
    pub generation: u64,
    pub version: Option<String>,
    pub username: Option<String>,
    pub reason: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone)]
pub struct StatusView {
    pub source: &'static str,
    pub version: String,
    pub username: String,
    pub validated: bool,
    pub validated_at: Option<SystemTime>,
    pub breaker: BreakerState,
    pub consecutive_failures: u32,
    pub last_attempt: Option<Report>,
    /// Every host, as last looked at (empty until the first search).
    pub hosts: Vec<HostView>,
    /// The host being served, when one matching `target_session_attrs` is.
    pub writer: Option<String>,
    pub last_failover: Option<FailoverView>,
}

/// Unix seconds.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl StatusView {
    /// `validated_at` as Unix seconds, for JSON.
    pub fn validated_at_unix(&self) -> Option<u64> {
        self.validated_at?
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    }
}

/// Shared between the engine (writer) and the admin listener (reader).
#[derive(Debug)]
pub struct RotationStatus(Mutex<StatusView>);

impl RotationStatus {
    pub fn new(source: &'static str, version: String, username: String) -> Self {
        Self(Mutex::new(StatusView {
            source,
            version,
            username,
            validated: false,
            validated_at: None,
            breaker: BreakerState::Closed,
            consecutive_failures: 0,
            last_attempt: None,
            hosts: Vec::new(),
            writer: None,
            last_failover: None,
        }))
    }

    pub fn view(&self) -> StatusView {
        self.0.lock().expect("status lock").clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut StatusView)) {
        f(&mut self.0.lock().expect("status lock"));
    }
}
