//! Following the writer (design 8.4). With several `upstream.hosts`, or a
//! `target_session_attrs` other than `any`, the engine looks for the host to serve from: at
//! start; at once when the serving host looks gone or changed role (a connection lost,
//! 57P01/02/03, a read-only error, a login refused as "starting up"); on an RDS failover event;
//! on `POST /failover`; and every `upstream.writer_check_interval`, so a silent promotion is
//! found too. A host other than the serving one is validated like a new credential and
//! published as a new generation there; the old generation drains. The credential does not
//! change, so nothing is retired at the source.
//!
//! With no host to serve from, the database is not ready and the search is retried on a short
//! backoff; clients between transactions keep waiting (up to `pool.acquire_timeout`) in the
//! old generation's queue and move to the new one when it is published.

use super::engine::Engine;
use super::status::{FailoverView, HostView, Outcome, Report, Trigger, name_of, unix};
use super::upstream::Upstream;
use super::writer::{FAST_FOR, Probe, RETRY_FIRST, RETRY_MAX};
use crate::config::{HostPort, TargetSessionAttrs};
use crate::secrets::Credentials;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// A read-only error renews the pool on the same host name at most this often.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// While no host is found, the warning is repeated at most this often.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// What one search decided.
enum Found {
    /// The serving host is still the one.
    Same,
    /// Now serving `to` (from the generation's previous host).
    Moved { from: HostPort, to: HostPort },
    /// No host to serve from, or the chosen one failed its health check.
    Nothing(String),
}

impl<U: Upstream> Engine<U> {
    /// Looks for the host to serve from and moves there when it is another one (or, for an RDS
    /// failover event, republishes on the same name so new connections resolve it again).
    pub(super) async fn search(&mut self, trigger: Trigger) -> Report {
        if self.p.endpoint.readers.is_some() {
            return self.recheck_readers(trigger);
        }
        let started = Instant::now();
        let creds = self.p.pools.current();
        let periodic = trigger == Trigger::WriterCheck;
        let looked = self.writer.look(&*self.p.pools, &creds, periodic).await;
        let probes = looked.probes;
        if probes.iter().any(|p| p.refused_login) {
            // The credential, not the host: refetch it (a rotation may be under way).
            self.p.pools.auth_failed().notify_one();
        }
        // A failover event, or a server that said it is read-only: the name may point at a new
        // writer while the pool's connections still reach the old one. A new pool then, even
        // on the same host name (its connections resolve the name again).
        // Unless the probe shows the very server the pool was made on (a forged or repeated
        // event must not cut sessions).
        let force = looked.fresh && (self.renew_on_read_only() || trigger == Trigger::RdsEvent);
        let known = &self.writer.server;
        let same_server = |h: &HostPort| {
            let p = probes.iter().find(|p| p.host == *h);
            p.is_some_and(|p| p.identity.is_some() && p.identity == *known)
        };
        let attrs = self.p.endpoint.target_session_attrs;
        let found = match looked.chosen {
            None => Found::Nothing(no_match(attrs, &probes)),
            Some(h) if h == self.p.pools.serving() && (!force || same_server(&h)) => Found::Same,
            Some(h) => self.move_to(&h, &creds).await,
        };
        let (outcome, reason) = self.settle(trigger, found, started);
        self.show(&probes);
        Report {
            outcome,
            trigger,
            source: self.p.provider.kind(),
            generation: self.p.pools.generation(),
            version: Some(creds.version.clone()),
            username: Some(creds.username.clone()),
            reason: Some(reason),
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// A reader entry's hosts are chosen by its reader check (`readers.rs`): a search (an RDS
    /// failover event, `POST /failover`) asks it to look again now.
    fn recheck_readers(&self, trigger: Trigger) -> Report {
        self.p.pools.writer_doubt().notify_one();
        let creds = self.p.pools.current();
        Report {
            outcome: Outcome::Unchanged,
            trigger,
            source: self.p.provider.kind(),
            generation: self.p.pools.generation(),
            version: Some(creds.version.clone()),
            username: Some(creds.username.clone()),
            reason: Some("a reader entry: its hosts are checked again now".into()),
            duration_ms: 0,
        }
    }

    /// A read-only error renews the pool on the same host when that host is a name (an
    /// address cannot have moved), at most once per [`RENEW_EVERY`]: a client that sets
    /// `default_transaction_read_only` itself must not churn the pool.
    fn renew_on_read_only(&mut self) -> bool {
        let seen = self.p.pools.take_read_only();
        let name = self
            .p
            .pools
            .serving()
            .host
            .parse::<std::net::IpAddr>()
            .is_err();
        let due = self
            .writer
            .renewed
            .is_none_or(|t| t.elapsed() >= RENEW_EVERY);
        if seen && name && due {
            self.writer.renewed = Some(Instant::now());
            return true;
        }
        false
    }

    /// Validates the serving credential on `host` and publishes it there.
    async fn move_to(&mut self, host: &HostPort, creds: &Credentials) -> Found {
        let next = self.p.pools.generation() + 1;
        match self.p.pools.validate(creds, next, host).await {
            Ok(proof) => {
                let from = self.p.pools.serving();
                self.writer.server = self.p.pools.server_of(&proof);
                self.p.pools.publish(creds.clone(), proof);
                Found::Moved {
                    from,
                    to: host.clone(),
                }
            }
            Err(e) => Found::Nothing(format!("{host} failed its health check: {e}")),
        }
    }

    /// A rotation whose candidate failed on the serving host: the candidate, on the host to
    /// serve from now, if that is another one that takes it.
    pub(super) async fn validate_elsewhere(
        &mut self,
        candidate: &Credentials,
        generation: u64,
    ) -> Option<(HostPort, U::Proof)> {
        let looked = self.writer.probe_with(&*self.p.pools, candidate).await;
        self.show(&looked.probes);
        let host = looked.chosen?;
        if host == self.p.pools.serving() {
            return None;
        }
        let proof = self
            .p
            .pools
            .validate(candidate, generation, &host)
            .await
            .ok()?;
        Some((host, proof))
    }

    /// Records a move made by a rotation (see [`Engine::validate_elsewhere`]).
    pub(super) fn moved_by_rotation(&mut self, from: HostPort, to: HostPort, started: Instant) {
        self.writer.detected.get_or_insert(started);
        self.settle(Trigger::AuthFailure, Found::Moved { from, to }, started);
    }

    /// Readiness, retries, metrics, status and the audit line for what a search found.
    fn settle(&mut self, trigger: Trigger, found: Found, started: Instant) -> (Outcome, String) {
        let now = Instant::now();
        self.writer.next_check = Some(now + self.writer.every);
        match found {
            Found::Nothing(why) => {
                self.lost(trigger, &why, now);
                (Outcome::Failed, why)
            }
            Found::Same => {
                let serving = self.p.pools.serving();
                if !self.writer.found {
                    tracing::info!(database = %self.p.database, host = %serving, "serving from {serving} again");
                }
                self.found(&serving);
                (Outcome::Unchanged, format!("serving from {serving}"))
            }
            Found::Moved { from, to } => {
                let detected = self.writer.detected.unwrap_or(started);
                self.record_move(trigger, &from, &to, detected, started);
                self.found(&to);
                (
                    Outcome::Applied,
                    format!("now serving from {to} (was {from})"),
                )
            }
        }
    }

    pub(super) fn found(&mut self, host: &HostPort) {
        self.writer.found = true;
        self.writer.retry = RETRY_FIRST;
        self.writer.detected = None;
        self.writer.warned = None;
        if self.validated {
            self.p.ready.store(true, Ordering::Release);
        }
        if self.p.endpoint.readers.is_some() {
            // The reader check shows the hosts in rotation.
            return;
        }
        self.p.status.update(|s| s.writer = Some(host.to_string()));
        self.writer_gauges(Some(host));
    }

    /// No host to serve from: not ready, a warning, another search soon.
    fn lost(&mut self, trigger: Trigger, why: &str, now: Instant) {
        self.writer.found = false;
        self.p.ready.store(false, Ordering::Release);
        let began = *self.writer.detected.get_or_insert(now);
        let most = match now - began < FAST_FOR {
            true => RETRY_MAX,
            false => self.writer.every.max(RETRY_MAX),
        };
        let pause = self.writer.retry.min(most);
        self.writer.retry = (pause * 2).min(most);
        let cause = match trigger {
            Trigger::Start | Trigger::AuthFailure => Trigger::UpstreamLost,
            t => t,
        };
        self.writer.retry_at = Some((now + pause, cause));
        self.p.status.update(|s| s.writer = None);
        self.writer_gauges(None);
        if self.writer.warned.is_none_or(|t| now - t >= WARN_EVERY) {
            self.writer.warned = Some(now);
            tracing::warn!(database = %self.p.database, reason = %why, "no upstream host to serve from; not ready, looking again");
        }
    }

    fn record_move(
        &self,
        trigger: Trigger,
        from: &HostPort,
        to: &HostPort,
        detected: Instant,
        started: Instant,
    ) {
        let db = self.p.database.clone();
        if trigger == Trigger::Start {
            // Choosing among the hosts at start is no failover.
            tracing::info!(database = %db, host = %to, "serving from {to}, the first host that is {}", self.p.endpoint.target_session_attrs.wanted());
            return;
        }
        let took = detected.elapsed();
        metrics::counter!("rotagate_failovers_total", "database" => db.clone()).increment(1);
        metrics::histogram!("rotagate_failover_seconds", "database" => db.clone())
            .record(took.as_secs_f64());
        let (from, to) = (from.to_string(), to.to_string());
        let (detection_ms, search_ms) = (
            took.as_millis() as u64,
            started.elapsed().as_millis() as u64,
        );
        tracing::info!(target: "rotagate::audit", event = "failover", database = %db, trigger = %name_of(&trigger),
            from = %from, to = %to, detection_to_serving_ms = detection_ms, search_ms,
            generation = self.p.pools.generation(), "serving from another upstream host");
        self.p.status.update(|s| {
            s.last_failover = Some(FailoverView {
                from,
                to,
                trigger,
                at: unix(SystemTime::now()),
                detection_to_serving_ms: detection_ms,
            })
        });
    }

    /// `rotagate_upstream_writer{host}`: 1 for the serving host, 0 for the others.
    fn writer_gauges(&self, serving: Option<&HostPort>) {
        for h in &self.p.endpoint.hosts {
            let on = serving == Some(h);
            metrics::gauge!("rotagate_upstream_writer", "database" => self.p.database.clone(), "host" => h.to_string())
                .set(if on { 1.0 } else { 0.0 });
        }
    }

    /// Every host's role and last check, for `/status`.
    fn show(&self, probes: &[Probe]) {
        let serving = self.p.pools.serving();
        let hosts = probes
            .iter()
            .map(|p| HostView {
                host: p.host.to_string(),
                role: p.role.as_ref().ok().copied(),
                error: p.role.as_ref().err().cloned(),
                serving: p.host == serving,
                checked_at: unix(p.checked),
                lag_seconds: None,
                lag_bytes: None,
            })
            .collect();
        self.p.status.update(|s| s.hosts = hosts);
    }
}

/// Why no host was chosen, naming each host's answer (never a credential).
fn no_match(attrs: TargetSessionAttrs, probes: &[Probe]) -> String {
    let answers: Vec<String> = probes
        .iter()
        .map(|p| match &p.role {
            Ok(role) => format!("{} is {}", p.host, role.name()),
            Err(e) => format!("{}: {e}", p.host),
        })
        .collect();
    format!(
        "no host is {} (target_session_attrs): {}",
        attrs.wanted(),
        answers.join("; ")
    )
}
