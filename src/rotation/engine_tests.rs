//! The rotation engine in paused time, against a fake pool set and a fake source: no real
//! time passes, so every deadline is checked to the instant.

use super::breaker::Breaker;
use super::engine::{Engine, EngineParts};
use super::engine_fakes::{DRAIN, FakeEvents, FakePools, FakeSource, LOGIN, host};
use super::status::{Outcome, RotationStatus};
use super::upstream::Upstream;
use super::writer::Role;
use super::{Request, RotationHandle, Trigger};
use crate::config::TargetSessionAttrs;
use crate::secrets::provider::{Change, Note};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const COOLDOWN: Duration = Duration::from_secs(30);

pub(super) struct Harness {
    pub pools: Arc<FakePools>,
    pub source: Arc<FakeSource>,
    pub status: Arc<RotationStatus>,
    pub ready: Arc<AtomicBool>,
    pub handle: RotationHandle,
    pub events: mpsc::Sender<Note>,
    pub stop: CancellationToken,
}

/// An engine serving `serving` (which logs in), with the source at `source`, started: its
/// first attempt is done when this returns.
async fn start(serving: &str, source: Option<&str>) -> Harness {
    Setup::default().start(serving, source).await
}

pub(super) struct Setup {
    /// Whether the credential served at start logs in.
    pub serving_works: bool,
    pub breaker_failures: u32,
    /// `upstream.hosts` and each one's role (None: down); the pools start on the first.
    pub hosts: Vec<(&'static str, Option<Role>)>,
    pub attrs: TargetSessionAttrs,
    pub writer_check: Duration,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            serving_works: true,
            breaker_failures: 3,
            hosts: vec![("db", Some(Role::Primary))],
            attrs: TargetSessionAttrs::Any,
            writer_check: Duration::from_secs(3600),
        }
    }
}

impl Setup {
    pub async fn start(self, serving: &str, source: Option<&str>) -> Harness {
        let pools = FakePools::serving(serving);
        if self.serving_works {
            pools.accept(serving);
        }
        pools.set_role("db", None);
        for (name, role) in &self.hosts {
            pools.set_role(name, *role);
        }
        pools.start_on(self.hosts[0].0);
        let provider = Arc::new(FakeSource::default());
        provider.serve(source);
        let (events, rx) = mpsc::channel(8);
        let status = Arc::new(RotationStatus::new("fake", serving.into(), "app".into()));
        let ready = Arc::new(AtomicBool::new(false));
        let parts = EngineParts {
            database: "app".into(),
            provider: provider.clone(),
            events: vec![Box::new(FakeEvents(rx))],
            pools: pools.clone(),
            endpoint: crate::config::UpstreamConfig {
                host: "db".into(),
                port: 5432,
                database: "app".into(),
                tls: crate::config::UpstreamTls::Disable,
                ca_file: None,
                connect_timeout: Duration::from_secs(5),
                channel_binding: crate::config::ChannelBinding::Prefer,
                allow_md5: false,
                parity_query: None,
                readers: None,
                tls_explicit: true,
                hosts: self.hosts.iter().map(|(name, _)| host(name)).collect(),
                target_session_attrs: self.attrs,
                writer_check_interval: self.writer_check,
                rds_cluster_id: None,
                rds_instance_id: None,
            },
            allow_endpoint_change: false,
            refresh_interval: Duration::from_secs(3600),
            breaker: Breaker::new(self.breaker_failures, COOLDOWN),
            cache: None,
            status: status.clone(),
            ready: ready.clone(),
        };
        let (tx, requests) = mpsc::channel::<Request>(8);
        let stop = CancellationToken::new();
        tokio::spawn(Engine::new(parts).run(requests, stop.clone(), TaskTracker::new()));
        let h = Harness {
            pools,
            source: provider,
            status,
            ready,
            handle: RotationHandle::new(tx),
            events,
            stop,
        };
        while h.last().is_none() {
            h.settle().await;
        }
        h
    }
}

impl Harness {
    /// Lets the engine finish what it is doing (paused time moves only when all are idle).
    pub async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    pub async fn rotate(&self) -> Outcome {
        self.handle.rotate_now().await.unwrap().outcome
    }

    pub fn last(&self) -> Option<(Outcome, Trigger)> {
        let r = self.status.view().last_attempt?;
        Some((r.outcome, r.trigger))
    }
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_after_three_failures_half_opens_at_the_cooldown_and_closes() {
    let h = start("v1", Some("v1")).await;
    assert_eq!(h.rotate().await, Outcome::Unchanged);
    h.source.serve(Some("bad"));
    for _ in 0..3 {
        assert_eq!(h.rotate().await, Outcome::Rejected);
    }
    let opened = Instant::now();
    assert_eq!(
        h.rotate().await,
        Outcome::BreakerOpen,
        "no attempt while open"
    );
    h.source.serve(Some("v2"));
    h.pools.accept("v2");
    tokio::time::sleep(COOLDOWN + Duration::from_secs(1)).await;
    let published = h.pools.published();
    assert_eq!(published.len(), 1, "the half-open attempt published v2");
    assert_eq!(published[0].1, "v2");
    let at = published[0].2 - opened;
    assert!(at >= COOLDOWN && at < COOLDOWN + LOGIN * 2, "{at:?}");
    assert_eq!(h.last(), Some((Outcome::Applied, Trigger::HalfOpen)));
    assert_eq!(h.rotate().await, Outcome::Unchanged, "closed again");
    h.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_failed_half_open_attempt_reopens_for_another_cooldown() {
    let h = start("v1", Some("v1")).await;
    h.source.serve(Some("bad"));
    for _ in 0..3 {
        h.rotate().await;
    }
    tokio::time::sleep(COOLDOWN + Duration::from_secs(1)).await;
    assert_eq!(h.last(), Some((Outcome::Rejected, Trigger::HalfOpen)));
    assert_eq!(h.rotate().await, Outcome::BreakerOpen);
    let fetched = h.source.fetches().len();
    tokio::time::sleep(COOLDOWN / 2).await;
    assert_eq!(h.source.fetches().len(), fetched, "nothing read while open");
    h.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_source_is_retried_on_the_backoff_schedule_then_reset() {
    // A breaker that stays closed through these failures (it opens at the third by default).
    let setup = Setup {
        breaker_failures: 100,
        ..Setup::default()
    };
    let h = setup.start("v1", Some("v1")).await;
    assert_eq!(h.rotate().await, Outcome::Unchanged);
    h.source.serve(None);
    let before = h.source.fetches().len();
    assert_eq!(h.rotate().await, Outcome::Failed);
    tokio::time::sleep(Duration::from_secs(40)).await;
    let times = h.source.fetches()[before..].to_vec();
    // 2 s base, doubling, jitter in the upper half: [1, 2), [2, 4), [4, 8), [8, 16) ...
    assert!(times.len() >= 4, "{} retries in 40 s", times.len() - 1);
    for (i, pair) in times.windows(2).take(4).enumerate() {
        let gap = pair[1] - pair[0];
        let ceiling = Duration::from_secs(2 << i);
        assert!(
            gap >= ceiling / 2 && gap < ceiling + LOGIN,
            "retry {i}: {gap:?}"
        );
    }
    h.source.serve(Some("v1"));
    let last = *h.source.fetches().last().unwrap();
    tokio::time::sleep(Duration::from_secs(70)).await;
    let after: Vec<_> = h
        .source
        .fetches()
        .into_iter()
        .filter(|t| *t > last)
        .collect();
    assert_eq!(
        after.len(),
        1,
        "one more retry succeeds, then no more: {after:?}"
    );
    h.source.serve(None);
    let n = h.source.fetches().len();
    h.rotate().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gap = h.source.fetches()[n + 1] - h.source.fetches()[n];
    assert!(
        gap < Duration::from_secs(2),
        "the schedule starts over: {gap:?}"
    );
    h.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn the_source_is_told_at_the_drain_deadline_or_when_drained_whichever_is_first() {
    let h = start("v1", Some("v1")).await;
    h.pools.accept("v2");
    h.pools.accept("v3");
    h.source.serve(Some("v2"));
    assert_eq!(h.rotate().await, Outcome::Applied);
    let t2 = h.pools.published()[0].2;
    // Rotation during the drain: v2 goes while v1 still drains.
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.source.serve(Some("v3"));
    assert_eq!(h.rotate().await, Outcome::Applied);
    let t3 = h.pools.published()[1].2;
    assert_eq!(h.pools.generation(), 3);
    let drained = Instant::now();
    h.pools.drain(2);
    h.settle().await;
    assert_eq!(
        h.source.retired(),
        vec![("v2".into(), drained)],
        "v2 drained first"
    );
    tokio::time::sleep(DRAIN + Duration::from_secs(2)).await;
    let retired = h.source.retired();
    assert_eq!(retired.len(), 2);
    assert_eq!(retired[1].0, "v1");
    assert_eq!(
        retired[1].1 - t2,
        DRAIN + Duration::from_secs(1),
        "v1 at its deadline"
    );
    assert!(retired[0].1 < t3 + DRAIN);
    h.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn an_event_naming_the_served_version_is_ignored_without_reading_the_source() {
    let h = start("v1", Some("v1")).await;
    h.rotate().await;
    let reads = h.source.fetches().len();
    let note = |v: &str| Note {
        origin: "fake",
        change: Change::Current,
        version: Some(v.into()),
        counted: true,
    };
    h.events.send(note("v1")).await.unwrap();
    h.settle().await;
    assert_eq!(
        h.source.fetches().len(),
        reads,
        "the served version needs no read"
    );
    assert_eq!(h.last(), Some((Outcome::Unchanged, Trigger::Event)));
    // An event ahead of the source: the source still serves v1, so nothing changes now and
    // the engine looks again shortly.
    h.events.send(note("v9")).await.unwrap();
    h.settle().await;
    assert_eq!(h.last(), Some((Outcome::Unchanged, Trigger::Event)));
    assert!(h.pools.published().is_empty());
    h.source.serve(Some("v9"));
    h.pools.accept("v9");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.pools.published()[0].1, "v9", "found on the retry");
    assert_eq!(h.last(), Some((Outcome::Applied, Trigger::Retry)));
    h.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_cached_credential_is_validated_at_start_while_the_source_is_down() {
    // The app started from the encrypted cache (v1) because the source could not be read.
    let pools = {
        let setup = Setup {
            serving_works: false,
            ..Setup::default()
        };
        let h = setup.start("v1", None).await;
        assert_eq!(
            h.last(),
            Some((Outcome::Rejected, Trigger::Start)),
            "v1 not yet accepted"
        );
        assert!(!h.ready.load(Ordering::SeqCst));
        h.pools.accept("v1");
        // Before the first validation a failure only retries (2 s base).
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            h.ready.load(Ordering::SeqCst),
            "ready once the cached credential logs in"
        );
        assert_eq!(h.last(), Some((Outcome::Validated, Trigger::Retry)));
        assert!(h.pools.published().is_empty(), "nothing new to publish");
        h.stop.cancel();
        h.pools
    };
    assert_eq!(
        pools.adopted.load(Ordering::SeqCst),
        1,
        "the proof joins the pool"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_login_refetches_at_once_but_at_most_once_a_second() {
    let h = start("v1", Some("v1")).await;
    h.pools.accept("v2");
    h.rotate().await;
    h.source.serve(Some("v2"));
    h.pools.auth.notify_one();
    h.settle().await;
    tokio::time::sleep(LOGIN * 2).await;
    assert_eq!(h.pools.published().len(), 1);
    assert_eq!(h.last(), Some((Outcome::Applied, Trigger::AuthFailure)));
    let reads = h.source.fetches().len();
    h.pools.auth.notify_one();
    h.settle().await;
    assert_eq!(
        h.source.fetches().len(),
        reads,
        "within a second of the last refetch"
    );
    h.stop.cancel();
}
