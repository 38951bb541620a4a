//! The reader check (design 9.3): for a reader entry, every `replica_check_interval` (and at
//! once when a host looks gone) each host is asked its role, its WAL position and its replay
//! age, on a probe session kept open per host for the serving credential ([`super::probes`]);
//! [`super::lag`] turns the answers into the hosts in rotation, which the pools spread
//! transactions over. A host that returns to the rotation passes `upstream.parity_query`
//! first, when one is set.

use super::checks::health_check;
use super::lag::{self, Lag, Reading, WalClock};
use super::probes::Kept;
use super::status::{HostView, RotationStatus, unix};
use super::writer::Role;
use crate::backend::UpstreamTarget;
use crate::config::{HostPort, ReadersConfig, UpstreamConfig};
use crate::pool::{Pools, Spread};
use crate::secrets::Credentials;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a validation waits for replicas that refuse a new password to replay it.
const REPLAY_WAIT: Duration = Duration::from_secs(2);
const REPLAY_RETRY: Duration = Duration::from_millis(100);
/// A host whose `parity_query` value differed is asked again after this long.
const PARITY_RETRY: Duration = Duration::from_secs(5);
/// A host that looks gone is looked at again after this pause (one failover, one check).
const DEBOUNCE: Duration = Duration::from_millis(50);

/// The reader check of one database entry.
pub struct Readers {
    database: String,
    pools: Arc<Pools>,
    endpoint: UpstreamConfig,
    cfg: ReadersConfig,
    targets: Vec<Option<UpstreamTarget>>,
    kept: Kept,
    /// When each host last failed `parity_query` (it is asked again after [`PARITY_RETRY`]).
    parity_failed: Vec<Option<Instant>>,
    clock: WalClock,
    /// Each standby's received WAL over time, for lag when no primary is among the hosts.
    received: Vec<WalClock>,
    status: Arc<RotationStatus>,
}

impl Readers {
    pub fn new(
        database: &str,
        pools: Arc<Pools>,
        endpoint: UpstreamConfig,
        status: Arc<RotationStatus>,
    ) -> Option<Self> {
        let cfg = endpoint.readers.clone()?;
        let base = pools.target();
        let targets = endpoint.hosts.iter().map(|h| base.at(h).ok()).collect();
        Some(Self {
            database: database.to_owned(),
            pools,
            endpoint,
            cfg,
            targets,
            kept: Kept::default(),
            parity_failed: Vec::new(),
            clock: WalClock::default(),
            received: Vec::new(),
            status,
        })
    }

    /// Checks at once, then every interval and whenever a host looks gone, until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let doubt = self.pools.writer_doubt.clone();
        loop {
            self.check().await;
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.cfg.check_interval) => {}
                () = doubt.notified() => tokio::time::sleep(DEBOUNCE).await,
            }
        }
    }

    /// One round: every host asked at once, the rotation set, the metrics and `/status`.
    async fn check(&mut self) {
        let (checked, creds) = self.pools.current_login();
        // One host that does not answer (a black hole) must not hold up the others' lag for
        // long: a fresh login gets `connect_timeout`, but at most twice the interval (2 s at
        // least).
        let most = (self.cfg.check_interval * 2).max(Duration::from_secs(2));
        let timeout = self.endpoint.connect_timeout.min(most);
        let readings = self.kept.ask_all(&self.targets, &creds, timeout).await;
        let now = Instant::now();
        let primary = (readings.iter())
            .find(|r| r.role == Ok(Role::Primary))
            .and_then(|r| r.lsn);
        if let Some(lsn) = primary {
            self.clock.record(now, lsn);
        }
        self.received.resize_with(readings.len(), WalClock::default);
        let with_lag: Vec<(Reading, Lag)> = (readings.into_iter())
            .zip(self.received.iter_mut())
            .map(|(r, received)| {
                let l = match (r.role.clone(), primary, r.received) {
                    (Ok(Role::Standby), Some(_), _) => lag::lag(primary, &self.clock, &r, now),
                    // No primary among the hosts: against what this standby has received.
                    (Ok(Role::Standby), None, Some(got)) => {
                        received.record(now, got);
                        lag::lag(Some(got), received, &r, now)
                    }
                    _ => Lag::default(),
                };
                (r, l)
            })
            .collect();
        let mut on = lag::choose(self.endpoint.target_session_attrs, &self.cfg, &with_lag);
        self.hold_back_on_parity(&mut on).await;
        self.apply(&on, &with_lag, checked);
    }

    /// A host that would join the rotation must give the serving side's
    /// `upstream.parity_query` value first (on its probe session).
    async fn hold_back_on_parity(&mut self, on: &mut [bool]) {
        let Some(q) = self.endpoint.parity_query.clone() else {
            return;
        };
        let Some(spread) = self.pools.spread().cloned() else {
            return;
        };
        self.parity_failed.resize(on.len(), None);
        for (i, on) in on.iter_mut().enumerate() {
            if !*on || spread.is_in(i) {
                continue;
            }
            // A host that disagreed is asked again after a pause, not at every check.
            let failed = self.parity_failed[i];
            if failed.is_some_and(|t| t.elapsed() < PARITY_RETRY) {
                *on = false;
                continue;
            }
            let Some(conn) = self.kept.conn(i) else {
                continue;
            };
            let timeout = self.endpoint.connect_timeout;
            match super::parity::check(&self.pools, conn, &q, timeout).await {
                Ok(()) => self.parity_failed[i] = None,
                Err(e) => {
                    tracing::warn!(database = %self.database, host = %self.endpoint.hosts[i], error = %e, "a reader stays out of rotation");
                    self.parity_failed[i] = Some(Instant::now());
                    *on = false;
                }
            }
        }
    }

    /// Publishes the rotation, and logs each host that joins or leaves it.
    fn apply(&self, on: &[bool], readings: &[(Reading, Lag)], checked: u64) {
        let Some(spread) = self.pools.spread() else {
            return;
        };
        let hosts = &self.endpoint.hosts;
        let was: Vec<bool> = (0..hosts.len()).map(|i| spread.is_in(i)).collect();
        spread.set(on, checked);
        let now: Vec<bool> = (0..hosts.len()).map(|i| spread.is_in(i)).collect();
        for (i, (host, (r, l))) in hosts.iter().zip(readings).enumerate() {
            if was[i] != now[i] {
                let why = reason(r, l);
                match now[i] {
                    true => {
                        tracing::info!(database = %self.database, host = %host, "reader host joins the rotation: {why}")
                    }
                    false => {
                        tracing::warn!(database = %self.database, host = %host, "reader host leaves the rotation: {why}")
                    }
                }
            }
            self.gauges(host, now[i], l);
        }
        self.show(&now, readings);
    }

    fn gauges(&self, host: &HostPort, on: bool, l: &Lag) {
        let (db, h) = (self.database.clone(), host.to_string());
        metrics::gauge!("rotagate_host_in_rotation", "database" => db.clone(), "host" => h.clone())
            .set(if on { 1.0 } else { 0.0 });
        if let Some(s) = l.seconds {
            metrics::gauge!("rotagate_replica_lag_seconds", "database" => db.clone(), "host" => h.clone())
                .set(s);
        }
        if let Some(b) = l.bytes {
            metrics::gauge!("rotagate_replica_lag_bytes", "database" => db, "host" => h)
                .set(b as f64);
        }
    }

    fn show(&self, on: &[bool], readings: &[(Reading, Lag)]) {
        let at = unix(SystemTime::now());
        let hosts = (self.endpoint.hosts.iter())
            .zip(readings)
            .zip(on)
            .map(|((h, (r, l)), on)| HostView {
                host: h.to_string(),
                role: r.role.as_ref().ok().copied(),
                error: r.role.as_ref().err().cloned(),
                serving: *on,
                checked_at: at,
                lag_seconds: l.seconds,
                lag_bytes: l.bytes,
            })
            .collect();
        let serving = self.pools.spread().map(|s| s.in_rotation());
        self.status.update(|s| {
            s.hosts = hosts;
            s.writer = serving.filter(|v| !v.is_empty()).map(|v| {
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            });
        });
    }
}

/// A credential for a reader entry (a rotation, or the first one): validated on every host in
/// rotation (on every host when none is yet), at once. A login refused as a bad password is
/// tried again for up to [`REPLAY_WAIT`]: a replica refuses a new password until it has
/// replayed the `ALTER ROLE` from the primary, milliseconds behind. A host that still refuses
/// it leaves the rotation, logged, and comes back once the reader check's login with it
/// succeeds; the validation fails only when every host refuses. The proof is the first host's
/// connection that passed.
pub(super) async fn validate(
    pools: &Pools,
    spread: &Spread,
    creds: &Credentials,
    generation: u64,
) -> Result<super::upstream::ReaderProof, String> {
    let mut pending = spread.in_rotation();
    if pending.is_empty() {
        pending = spread.hosts().to_vec();
    }
    let base = pools.target();
    let give_up = Instant::now() + REPLAY_WAIT;
    let mut proof = None;
    let mut refused = Vec::new();
    loop {
        let tries = pending.iter().map(|h| async {
            let target = Arc::new(base.at(h).map_err(|e| (false, e.to_string()))?);
            let conn = health_check(&target, creds, generation, pools.database())
                .await
                .map_err(|e| (e.is_auth_failure(), e.to_string()))?;
            Ok::<_, (bool, String)>((conn, target))
        });
        let results = futures::future::join_all(tries).await;
        let mut again = Vec::new();
        for (h, r) in pending.iter().zip(results) {
            match r {
                Ok(ok) if proof.is_none() => proof = Some(ok),
                Ok(_) => {}
                Err((true, _)) if Instant::now() < give_up => again.push(h.clone()),
                Err((_, e)) => refused.push((h.clone(), e)),
            }
        }
        if again.is_empty() {
            break;
        }
        pending = again;
        tokio::time::sleep(REPLAY_RETRY).await;
    }
    let Some((mut conn, target)) = proof else {
        // Every host refuses: the rotation fails and the serving hosts stay as they are.
        let all: Vec<String> = refused.iter().map(|(h, e)| format!("{h}: {e}")).collect();
        return Err(all.join("; "));
    };
    if let Some(q) = target.parity_query.clone() {
        super::parity::check(pools, &mut conn, &q, target.connect_timeout).await?;
    }
    // Validated: the publish follows at once.
    for (h, e) in refused {
        if spread.take_out(&h, generation) {
            tracing::warn!(database = %pools.database(), host = %h, error = %e, "reader host refuses the credential being validated; out of rotation until it accepts it");
        }
    }
    Ok((conn, target, None))
}

/// Why a host is in or out, for the log.
fn reason(r: &Reading, l: &Lag) -> String {
    let role = match &r.role {
        Ok(role) => role.name().to_owned(),
        Err(e) => return e.clone(),
    };
    match (l.seconds, l.bytes) {
        (Some(s), Some(b)) => format!("{role}, {s:.1} s and {b} bytes behind the primary"),
        _ => role,
    }
}
