//! The rotation engine: one task that turns triggers into attempts, in order, and is the only
//! caller of [`Upstream::publish`]. It sees the pools only through that seam.

use super::Request;
use super::breaker::Breaker;
use super::checks::check_endpoint;
use super::status::{Outcome, Report, RotationStatus, Trigger};
use super::upstream::Upstream;
use super::writer::Writer;
use crate::config::UpstreamConfig;
use crate::secrets::Credentials;
use crate::secrets::backoff::Backoff;
use crate::secrets::cache::Cache;
use crate::secrets::provider::{Change, EventSource, Note, SecretProvider, SourceError, Stage};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A refused upstream login triggers at most one refetch per this interval.
const AUTH_REFETCH_EVERY: Duration = Duration::from_secs(1);
/// How long after `drain_timeout` the source is told a generation is gone, at the latest.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Everything the engine is built from (see `app.rs`).
pub struct EngineParts<U> {
    /// The configured database this engine rotates for (its metrics' `database` label).
    pub database: String,
    pub provider: Arc<dyn SecretProvider>,
    pub events: Vec<Box<dyn EventSource>>,
    pub pools: Arc<U>,
    pub endpoint: UpstreamConfig,
    pub allow_endpoint_change: bool,
    pub refresh_interval: Duration,
    pub breaker: Breaker,
    pub cache: Option<Arc<Cache>>,
    pub status: Arc<RotationStatus>,
    pub ready: Arc<AtomicBool>,
}

pub struct Engine<U: Upstream> {
    pub(super) p: EngineParts<U>,
    backoff: Backoff,
    retry_at: Option<Instant>,
    last_auth_refetch: Option<Instant>,
    pub(super) validated: bool,
    /// Which host to serve from (`writer.rs`; the engine's side is `failover.rs`).
    pub(super) writer: Writer<U::Probes>,
    persisted: u64,
    /// The last cache write, finished before the engine stops (nothing validated is lost).
    persisting: Option<tokio::task::JoinHandle<()>>,
    /// A version fetched when it was staged (AWSPENDING), used when it becomes current.
    prefetched: Option<Credentials>,
}

/// What one attempt produced, before it becomes a [`Report`].
struct Step {
    outcome: Outcome,
    version: Option<String>,
    username: Option<String>,
    reason: Option<String>,
}

impl Step {
    fn about(outcome: Outcome, creds: &Credentials, reason: Option<String>) -> Self {
        Self {
            outcome,
            version: Some(creds.version.clone()),
            username: Some(creds.username.clone()),
            reason,
        }
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl<U: Upstream> Engine<U> {
    pub fn new(parts: EngineParts<U>) -> Self {
        let writer = Writer::new(&parts.endpoint);
        Self {
            writer,
            p: parts,
            backoff: Backoff::default(),
            retry_at: None,
            last_auth_refetch: None,
            validated: false,
            persisted: 0,
            persisting: None,
            prefetched: None,
        }
    }

    /// Runs until `stop`: validates the starting credential, then serves triggers in order.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        stop: CancellationToken,
        tracker: TaskTracker,
    ) {
        let (note_tx, mut notes) = mpsc::channel(16);
        for source in std::mem::take(&mut self.p.events) {
            tracker.spawn(source.run(note_tx.clone(), stop.clone()));
        }
        drop(note_tx);
        self.start().await;
        let mut next_refresh = Instant::now() + self.p.refresh_interval;
        let auth_failed = self.p.pools.auth_failed();
        let doubt = self.p.pools.writer_doubt();
        loop {
            let reopen = self.p.breaker.reopens_at().map(Instant::from_std);
            let (trigger, reply) = tokio::select! {
                _ = stop.cancelled() => return self.flush().await,
                Some(req) = requests.recv() => (req.trigger, req.reply),
                _ = doubt.notified(), if self.writer.enabled => {
                    let Some(at) = self.writer.doubted(Instant::now()) else { continue };
                    tokio::time::sleep_until(at).await;
                    (Trigger::UpstreamLost, None)
                }
                _ = until(self.writer.next_check), if self.writer.enabled => (Trigger::WriterCheck, None),
                _ = until(self.writer.retry_deadline()) => {
                    let cause = self.writer.retry_at.take().map_or(Trigger::UpstreamLost, |(_, t)| t);
                    (cause, None)
                }
                Some(note) = notes.recv() => {
                    self.on_note(note).await;
                    continue;
                }
                _ = auth_failed.notified() => {
                    if self.last_auth_refetch.is_some_and(|t| t.elapsed() < AUTH_REFETCH_EVERY) {
                        continue;
                    }
                    self.last_auth_refetch = Some(Instant::now());
                    (Trigger::AuthFailure, None)
                }
                _ = tokio::time::sleep_until(next_refresh) => {
                    next_refresh = Instant::now() + self.p.refresh_interval;
                    (Trigger::Refresh, None)
                }
                _ = until(reopen) => (Trigger::HalfOpen, None),
                _ = until(self.retry_at) => {
                    self.retry_at = None;
                    (Trigger::Retry, None)
                }
            };
            self.dispatch(trigger, reply).await;
        }
    }

    /// The host to serve from (when there is a choice), then the starting credential.
    async fn start(&mut self) {
        if self.writer.enabled {
            self.search(Trigger::Start).await;
        } else {
            self.found(&self.p.pools.serving());
        }
        self.handle(Trigger::Start, None, None).await;
    }

    /// A search for the writer, or a credential attempt.
    async fn dispatch(&mut self, trigger: Trigger, reply: Option<oneshot::Sender<Report>>) {
        if trigger.is_search() {
            let report = self.search(trigger).await;
            if let Some(reply) = reply {
                let _ = reply.send(report);
            }
            return;
        }
        self.handle(trigger, None, reply).await;
    }

    /// An event: a staged version is prefetched; a change of the current one is an attempt,
    /// skipped when the event names the version already served (events repeat).
    async fn on_note(&mut self, note: Note) {
        if note.change == Change::Failover {
            self.search(Trigger::RdsEvent).await;
            return;
        }
        if note.change == Change::Pending {
            return self.prefetch(note.version.as_deref()).await;
        }
        let outcome = self.handle(Trigger::Event, note.version, None).await;
        if !note.counted {
            let label = match outcome {
                Outcome::Applied => "applied",
                Outcome::Rejected | Outcome::Failed => "invalid",
                _ => "ignored",
            };
            metrics::counter!("rotagate_events_total", "source" => note.origin, "outcome" => label, "database" => self.p.database.clone())
                .increment(1);
        }
    }

    /// Fetches the pending version so that the swap, when its event comes, needs no fetch.
    async fn prefetch(&mut self, version: Option<&str>) {
        if version.is_some() && self.prefetched.as_ref().map(|c| c.version.as_str()) == version {
            return;
        }
        match self.p.provider.fetch(Stage::Pending).await {
            Ok(c) => {
                tracing::info!(source = self.p.provider.kind(), version = %c.version, username = %c.username, "prefetched the pending credential");
                self.prefetched = Some(c);
            }
            Err(e) => {
                tracing::warn!(source = self.p.provider.kind(), error = %e, "could not prefetch the pending credential")
            }
        }
    }

    /// The prefetched credential, when it is the version wanted (version ids are immutable).
    fn take_prefetched(&mut self, version: &str) -> Option<Credentials> {
        if self.prefetched.as_ref()?.version == version {
            return self.prefetched.take();
        }
        None
    }

    async fn handle(
        &mut self,
        trigger: Trigger,
        expected: Option<String>,
        reply: Option<oneshot::Sender<Report>>,
    ) -> Outcome {
        let started = Instant::now();
        let step = self.attempt(trigger, expected.as_deref()).await;
        let report = Report {
            outcome: step.outcome,
            trigger,
            source: self.p.provider.kind(),
            generation: self.p.pools.generation(),
            version: step.version,
            username: step.username,
            reason: step.reason,
            duration_ms: started.elapsed().as_millis() as u64,
        };
        self.record(&report, started.elapsed());
        let outcome = report.outcome;
        if let Some(reply) = reply {
            let _ = reply.send(report);
        }
        outcome
    }

    async fn attempt(&mut self, trigger: Trigger, expected: Option<&str>) -> Step {
        let now = Instant::now();
        if trigger == Trigger::Reload {
            return self.republish().await;
        }
        if !self.p.breaker.allows(now.into_std()) {
            return Step {
                outcome: Outcome::BreakerOpen,
                version: None,
                username: None,
                reason: Some("circuit breaker open".into()),
            };
        }
        let current = self.p.pools.current();
        if self.validated && expected == Some(current.version.as_str()) {
            return Step::about(Outcome::Unchanged, &current, Some("already served".into()));
        }
        let step = match self.fetch(trigger, expected, &current).await {
            Err(e) if !self.validated && e.is_transient() => self.check_current(&current).await,
            Err(e) => {
                if e.is_transient() {
                    self.retry_at = Some(now + self.backoff.next_delay());
                }
                let outcome = match e {
                    SourceError::Invalid(_) => Outcome::Rejected,
                    SourceError::Refused(_) => {
                        tracing::error!(source = self.p.provider.kind(), error = %e, "the credential source refuses; serving the last good credential until the next event or refresh");
                        Outcome::Failed
                    }
                    SourceError::Unavailable(_) => Outcome::Failed,
                };
                Step {
                    outcome,
                    version: None,
                    username: None,
                    reason: Some(e.to_string()),
                }
            }
            Ok(c) if same(&c, &current) && self.validated => {
                let reason = expected.filter(|v| *v != c.version).map(|v| {
                    // The event ran ahead of what the source serves: look once more, soon.
                    self.retry_at = Some(now + self.backoff.next_delay());
                    format!("the source does not serve version {v} yet; looking again shortly")
                });
                Step::about(Outcome::Unchanged, &c, reason)
            }
            Ok(c) if same(&c, &current) => self.check_current(&current).await,
            Ok(c) => self.rotate(c).await,
        };
        self.account(&step, now);
        step
    }

    /// Breaker and backoff bookkeeping. Before the first validation, failures only retry: the
    /// breaker guards a serving proxy from bad secrets, not a starting one from its upstream.
    fn account(&mut self, step: &Step, now: Instant) {
        match step.outcome {
            Outcome::Applied | Outcome::Validated | Outcome::Unchanged | Outcome::Reconfigured => {
                self.p.breaker.record_success();
                self.backoff.reset();
            }
            Outcome::Rejected | Outcome::Failed if !self.validated => {
                self.retry_at = Some(now + self.backoff.next_delay());
            }
            Outcome::Rejected | Outcome::Failed => {
                if self.p.breaker.record_failure(now.into_std()) {
                    tracing::warn!(
                        failures = self.p.breaker.consecutive_failures(),
                        "circuit breaker opened"
                    );
                }
            }
            Outcome::BreakerOpen => {}
        }
    }

    /// The current version; after a refused login, the pending one too when current is what
    /// is already served. The periodic check first asks the source for the current version id
    /// and fetches only when it moved; a prefetched version is used when it is the one wanted.
    async fn fetch(
        &mut self,
        trigger: Trigger,
        expected: Option<&str>,
        current: &Credentials,
    ) -> Result<Credentials, SourceError> {
        let mut wanted = expected.map(str::to_owned);
        if trigger == Trigger::Refresh && self.validated {
            match self.p.provider.current_version().await? {
                Some(v) if v == current.version => return Ok(current.clone()),
                v => wanted = v,
            }
        }
        if let Some(c) = wanted.as_deref().and_then(|v| self.take_prefetched(v)) {
            return Ok(c);
        }
        let c = self.p.provider.fetch(Stage::Current).await?;
        if trigger == Trigger::AuthFailure && same(&c, current) {
            if let Ok(p) = self.p.provider.fetch(Stage::Pending).await {
                return Ok(p);
            }
        }
        Ok(c)
    }

    /// Validate, then publish, then retire:
    ///
    /// 1. the secret may not move the endpoint unless `allow_endpoint_change`;
    /// 2. log in with it and run `SELECT 1`, within `upstream.connect_timeout`;
    /// 3. publish it as the next generation, with that connection as the pool's first
    ///    (`Pools::publish` swaps atomically and starts draining the old generation);
    /// 4. persist it to the encrypted cache.
    async fn rotate(&mut self, candidate: Credentials) -> Step {
        if let Err(why) = check_endpoint(&candidate, &self.p.endpoint, self.p.allow_endpoint_change)
        {
            return Step::about(Outcome::Rejected, &candidate, Some(why));
        }
        let next = self.p.pools.generation() + 1;
        let started = Instant::now();
        let serving = self.p.pools.serving();
        let mut checked = self.p.pools.validate(&candidate, next, &serving).await;
        let mut moved = None;
        if checked.is_err() && self.writer.enabled {
            // The serving host may be what failed: the writer may have moved meanwhile.
            if let Some((host, proof)) = self.validate_elsewhere(&candidate, next).await {
                moved = Some(host);
                checked = Ok(proof);
            }
        }
        match checked {
            Err(e) => Step::about(
                Outcome::Rejected,
                &candidate,
                Some(format!("health check failed: {e}")),
            ),
            Ok(conn) => {
                let step = Step::about(Outcome::Applied, &candidate, None);
                self.prefetched = None;
                self.persist(&candidate);
                let old = (self.p.pools.generation(), self.p.pools.current());
                self.writer.server = self.p.pools.server_of(&conn);
                self.p.pools.publish(candidate, conn);
                if let Some(to) = moved {
                    self.moved_by_rotation(serving, to, started);
                }
                self.mark_validated();
                self.retire_when_drained(old);
                step
            }
        }
    }

    /// A reload changed the pool settings: the serving credential, health-checked, becomes a
    /// new generation built with them; the old one drains as in a rotation. Nothing is
    /// retired at the source: the credential is the same.
    async fn republish(&mut self) -> Step {
        let current = self.p.pools.current();
        let next = self.p.pools.generation() + 1;
        let serving = self.p.pools.serving();
        match self.p.pools.validate(&current, next, &serving).await {
            Ok(conn) => {
                self.writer.server = self.p.pools.server_of(&conn);
                self.p.pools.publish((*current).clone(), conn);
                Step::about(Outcome::Reconfigured, &current, None)
            }
            Err(e) => Step::about(
                Outcome::Rejected,
                &current,
                Some(format!(
                    "pool settings not applied: health check failed: {e}"
                )),
            ),
        }
    }

    /// The credential being served (from the source at start, or from the cache) must work.
    async fn check_current(&mut self, current: &Credentials) -> Step {
        match self
            .p
            .pools
            .validate(current, self.p.pools.generation(), &self.p.pools.serving())
            .await
        {
            Ok(conn) => {
                self.writer.server = self.p.pools.server_of(&conn);
                self.p.pools.adopt(conn);
                self.persist(current);
                self.mark_validated();
                Step::about(Outcome::Validated, current, None)
            }
            Err(e) => Step::about(
                Outcome::Rejected,
                current,
                Some(format!("health check failed: {e}")),
            ),
        }
    }

    /// Tells the source when the old generation's last connection has closed, or at
    /// `drain_timeout` (when the relays close what is left) plus a moment (Vault revokes its
    /// lease then; other sources hold nothing).
    fn retire_when_drained(&self, (id, creds): (u64, Arc<Credentials>)) {
        let (pools, provider) = (self.p.pools.clone(), self.p.provider.clone());
        let deadline = pools.drain_timeout() + DRAIN_GRACE;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(deadline, pools.drained(id)).await;
            provider.retire(&creds.version).await;
        });
    }

    fn mark_validated(&mut self) {
        self.validated = true;
        if self.writer.found {
            self.p.ready.store(true, Ordering::Release);
        }
    }

    /// Writes the cache off the event loop (it fsyncs); a failure is logged, not fatal.
    fn persist(&mut self, creds: &Credentials) {
        if let Some(cache) = self.p.cache.clone() {
            self.persisted += 1;
            let (seq, creds) = (self.persisted, creds.clone());
            let database = self.p.database.clone();
            self.persisting = Some(tokio::task::spawn_blocking(move || {
                // A read-only or full cache directory costs the cache, never the service.
                if let Err(e) = cache.store_newer(seq, &creds) {
                    tracing::warn!(database = %database, error = %e, "could not update the credential cache");
                    metrics::counter!("rotagate_cache_write_failures_total", "database" => database)
                        .increment(1);
                }
            }));
        }
    }

    /// Waits for the last cache write.
    async fn flush(&mut self) {
        if let Some(write) = self.persisting.take() {
            let _ = write.await;
        }
    }
}

fn same(a: &Credentials, b: &Credentials) -> bool {
    a.version == b.version && a.username == b.username
}
