//! What each attempt leaves behind: the rotation metrics, the status `/status` reads, and one
//! audit event. Never a password.

use super::engine::Engine;
use super::status::{Outcome, Report, name_of};
use super::upstream::Upstream;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

impl<U: Upstream> Engine<U> {
    pub(super) fn record(&self, r: &Report, took: Duration) {
        if let Some(result) = r.outcome.metric_result() {
            let db = self.p.database.clone();
            metrics::counter!("rotagate_rotations_total", "result" => result, "database" => db.clone())
                .increment(1);
            metrics::histogram!("rotagate_rotation_duration_seconds", "database" => db)
                .record(took.as_secs_f64());
        }
        let breaker = self.p.breaker.state(Instant::now().into_std());
        metrics::gauge!("rotagate_breaker_open", "database" => self.p.database.clone()).set(
            if breaker == super::breaker::BreakerState::Open {
                1.0
            } else {
                0.0
            },
        );
        let current = self.p.pools.current();
        self.p.status.update(|s| {
            if matches!(r.outcome, Outcome::Applied | Outcome::Validated) {
                s.validated = true;
                s.validated_at = Some(SystemTime::now());
            }
            s.version = current.version.clone();
            s.username = current.username.clone();
            s.breaker = breaker;
            s.consecutive_failures = self.p.breaker.consecutive_failures();
            s.last_attempt = Some(r.clone());
        });
        audit(&self.p.database, r);
    }
}

/// One structured event per attempt. Never a password: only database, source, trigger,
/// version, user.
fn audit(database: &str, r: &Report) {
    let (version, username, reason) = (
        r.version.as_deref().unwrap_or(""),
        r.username.as_deref().unwrap_or(""),
        r.reason.as_deref().unwrap_or(""),
    );
    macro_rules! event {
        ($level:ident) => {
            tracing::$level!(target: "rotagate::audit", event = "rotation", database, source = r.source, trigger = %name_of(&r.trigger),
                version, username, outcome = %name_of(&r.outcome), reason, generation = r.generation, duration_ms = r.duration_ms,
                "rotation attempt")
        };
    }
    match r.outcome {
        Outcome::Rejected | Outcome::Failed => event!(warn),
        Outcome::Unchanged | Outcome::BreakerOpen => event!(debug),
        Outcome::Applied | Outcome::Validated | Outcome::Reconfigured => event!(info),
    }
}
