//! Following the writer, in paused time against the fake pools: hosts are up as a role or
//! down, and a test moves them as a failover would.

use super::engine_tests::{Harness, Setup};
use super::status::{Outcome, Trigger};
use super::upstream::Upstream;
use super::writer::Role;
use crate::config::TargetSessionAttrs;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

async fn two_hosts(a: Option<Role>, b: Option<Role>, check: Duration) -> Harness {
    Setup {
        hosts: vec![("a", a), ("b", b)],
        attrs: TargetSessionAttrs::ReadWrite,
        writer_check: check,
        ..Setup::default()
    }
    .start("v1", Some("v1"))
    .await
}

fn ready(h: &Harness) -> bool {
    h.ready.load(Ordering::Acquire)
}

/// Waits (in paused time) until `cond` holds; returns how long that took.
async fn until(h: &Harness, limit: Duration, cond: impl Fn(&Harness) -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond(h) {
        assert!(t0.elapsed() < limit, "not within {limit:?}");
        h.settle().await;
    }
    t0.elapsed()
}

#[tokio::test(start_paused = true)]
async fn the_writer_is_served_when_a_standby_is_listed_first() {
    let h = two_hosts(
        Some(Role::Standby),
        Some(Role::Primary),
        Duration::from_secs(3600),
    )
    .await;
    assert_eq!(h.pools.on(), "b");
    assert!(ready(&h));
    let view = h.status.view();
    assert_eq!(view.writer.as_deref(), Some("b:5432"));
    let roles: Vec<_> = view.hosts.iter().map(|x| x.role).collect();
    assert_eq!(roles, [Some(Role::Standby), Some(Role::Primary)]);
    assert!(
        view.last_failover.is_none(),
        "choosing at start is no failover"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_writer_makes_one_search_not_ready_until_the_standby_is_promoted() {
    let h = two_hosts(
        Some(Role::Standby),
        Some(Role::Primary),
        Duration::from_secs(3600),
    )
    .await;
    let generation = h.pools.published().len();
    // The primary dies; many connections notice at once.
    h.pools.set_role("b", None);
    let lost = Instant::now();
    for _ in 0..20 {
        h.pools.doubt.notify_one();
    }
    until(&h, Duration::from_secs(1), |h| !ready(h)).await;
    assert!(h.status.view().writer.is_none());
    // Promoted a second later: found on the next retry, within a second of the promotion.
    tokio::time::sleep_until(lost + Duration::from_secs(1)).await;
    h.pools.set_role("a", Some(Role::Primary));
    let took = until(&h, Duration::from_secs(2), |h| h.pools.on() == "a").await;
    assert!(took <= Duration::from_millis(600), "{took:?}");
    assert!(ready(&h));
    assert_eq!(
        h.pools.published().len(),
        generation + 1,
        "one new generation"
    );
    let f = h.status.view().last_failover.expect("a failover recorded");
    assert_eq!((f.from.as_str(), f.to.as_str()), ("b:5432", "a:5432"));
    assert_eq!(f.trigger, Trigger::UpstreamLost);
    assert!(f.detection_to_serving_ms >= 1000, "{f:?}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_promotion_is_found_by_the_periodic_check() {
    let every = Duration::from_secs(5);
    let h = two_hosts(Some(Role::Standby), Some(Role::Primary), every).await;
    // `a` promoted while `b` still accepts writes: libpq's order says `a`.
    h.pools.set_role("a", Some(Role::Primary));
    let took = until(&h, every * 2, |h| h.pools.on() == "a").await;
    assert!(took <= every + Duration::from_millis(100), "{took:?}");
    assert_eq!(
        h.status.view().last_failover.unwrap().trigger,
        Trigger::WriterCheck
    );
}

#[tokio::test(start_paused = true)]
async fn with_no_writer_it_is_never_ready_and_keeps_looking() {
    let h = two_hosts(Some(Role::Standby), None, Duration::from_secs(3600)).await;
    assert!(!ready(&h), "a standby is no writer");
    assert_eq!(
        h.last(),
        Some((Outcome::Validated, Trigger::Start)),
        "the credential is fine"
    );
    let report = h.handle.failover_now().await.unwrap();
    assert_eq!(report.outcome, Outcome::Failed);
    let reason = report.reason.unwrap();
    assert!(
        reason.contains("no host is writable") && reason.contains("a:5432 is a standby"),
        "{reason}"
    );
    // Retries come on a short backoff; the first that finds a writer makes it ready.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!ready(&h));
    h.pools.set_role("b", Some(Role::Primary));
    let took = until(&h, Duration::from_secs(2), ready).await;
    assert!(took <= Duration::from_millis(350), "{took:?}");
    // Half a minute on, the retries slow to writer_check_interval (here an hour).
    h.pools.set_role("b", None);
    h.pools.doubt.notify_one();
    until(&h, Duration::from_secs(1), |h| !ready(h)).await;
    tokio::time::sleep(Duration::from_secs(40)).await;
    h.pools.set_role("b", Some(Role::Primary));
    let took = until(&h, Duration::from_secs(300), ready).await;
    assert!(
        took > Duration::from_secs(1),
        "the retries have slowed: {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn any_serves_the_first_host_that_answers() {
    let h = Setup {
        hosts: vec![("a", None), ("b", Some(Role::Standby))],
        attrs: TargetSessionAttrs::Any,
        ..Setup::default()
    }
    .start("v1", Some("v1"))
    .await;
    assert!(ready(&h));
    assert_eq!(h.pools.on(), "b");
}

/// Serving from `b` (the primary) with `v1`; then `b` goes, `a` is promoted and the source
/// serves `v2` (`v1` revoked when `revoke`).
async fn moved_and_rotated(revoke: bool) -> Harness {
    let h = two_hosts(
        Some(Role::Standby),
        Some(Role::Primary),
        Duration::from_secs(3600),
    )
    .await;
    h.pools.set_role("b", None);
    h.pools.set_role("a", Some(Role::Primary));
    if revoke {
        h.pools.forget("v1");
    }
    h.pools.accept("v2");
    h.source.serve(Some("v2"));
    h
}

#[tokio::test(start_paused = true)]
async fn a_rotation_during_a_failover_ends_on_the_new_writer_with_the_new_credential() {
    // The writer moves, and before any search the secret changes.
    let h = moved_and_rotated(false).await;
    assert_eq!(h.rotate().await, Outcome::Applied);
    assert_eq!(h.pools.on(), "a");
    assert_eq!(h.pools.published().last().unwrap().1, "v2");
    assert_eq!(h.status.view().last_failover.unwrap().to, "a:5432");
    assert!(ready(&h));
}

#[tokio::test(start_paused = true)]
async fn a_failover_during_a_rotation_ends_with_the_new_credential_on_the_new_writer() {
    // The old credential is revoked and the writer moves: the search's logins are refused,
    // so the credential is fetched again, and the rotation finds the writer.
    let h = moved_and_rotated(true).await;
    h.pools.doubt.notify_one();
    until(&h, Duration::from_secs(3), |h| h.pools.on() == "a").await;
    assert_eq!(h.pools.current().version, "v2");
    until(&h, Duration::from_secs(1), ready).await;
}

#[tokio::test(start_paused = true)]
async fn a_read_only_error_renews_the_pool_on_the_same_name_at_most_every_5_s() {
    let h = Setup {
        hosts: vec![("cluster-endpoint", Some(Role::Primary))],
        attrs: TargetSessionAttrs::ReadWrite,
        ..Setup::default()
    }
    .start("v1", Some("v1"))
    .await;
    let before = h.pools.published().len();
    let read_only = || {
        h.pools.read_only.store(true, Ordering::SeqCst);
        h.pools.doubt.notify_one();
    };
    // The same server behind the name: nothing to renew.
    read_only();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.pools.published().len(), before);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // A failover behind the name: the pool is renewed.
    h.pools.moved_behind("cluster-endpoint", "instance-2");
    read_only();
    until(&h, Duration::from_secs(1), |h| {
        h.pools.published().len() == before + 1
    })
    .await;
    assert_eq!(
        h.pools.on(),
        "cluster-endpoint",
        "a new pool on the same name"
    );
    // Again at once: a search, but no second pool within 5 s.
    read_only();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.pools.published().len(), before + 1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    h.pools.moved_behind("cluster-endpoint", "instance-3");
    read_only();
    until(&h, Duration::from_secs(1), |h| {
        h.pools.published().len() == before + 2
    })
    .await;
    assert!(ready(&h));
}

#[tokio::test(start_paused = true)]
async fn an_rds_event_renews_the_pool_only_when_another_server_answers_behind_the_name() {
    use crate::secrets::provider::{Change, Note};
    let h = Setup {
        hosts: vec![("cluster-endpoint", Some(Role::Primary))],
        attrs: TargetSessionAttrs::ReadWrite,
        ..Setup::default()
    }
    .start("v1", Some("v1"))
    .await;
    let before = h.pools.published().len();
    let event = || Note {
        origin: "sqs",
        change: Change::Failover,
        version: None,
        counted: true,
    };
    // A forged (or repeated) failover event: the writer is the same server, so nothing is
    // published and nothing drains.
    for _ in 0..3 {
        h.events.send(event()).await.unwrap();
        h.settle().await;
    }
    assert_eq!(h.pools.published().len(), before);
    assert!(h.status.view().last_failover.is_none());
    // A real one: another server answers behind the name.
    h.pools.moved_behind("cluster-endpoint", "instance-2");
    h.events.send(event()).await.unwrap();
    until(&h, Duration::from_secs(3), |h| {
        h.pools.published().len() == before + 1
    })
    .await;
    assert_eq!(h.pools.on(), "cluster-endpoint");
}
