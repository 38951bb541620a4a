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
        }))
    }

    pub fn view(&self) -> StatusView {
        self.0.lock().expect("status lock").clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut StatusView)) {
        f(&mut self.0.lock().expect("status lock"));
    }
}
