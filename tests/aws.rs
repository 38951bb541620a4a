//! AWS Secrets Manager and its events, against moto's server: the real binary reads its
//! credential from Secrets Manager and hears of rotations over SQS, fed by EventBridge or an
//! SNS topic, with the periodic check as the safety net.

mod common;

use common::aws::{Aws, Moto, fixture_event, rds_json};
use common::pg::Pg;
use common::process::Rotagate;
use common::*;

const SECRET: &str = "app/db/upstream";

struct World {
    pg: Pg,
    moto: Moto,
    aws: Aws,
    arn: String,
}

async fn world() -> World {
    let pg = app_cluster();
    let moto = Moto::start().await;
    let aws = moto.clients().await;
    let arn = aws
        .create_secret(SECRET, rds_json(&pg, APP_USER, APP_PASSWORD))
        .await;
    World { pg, moto, aws, arn }
}

impl World {
    /// rotagate with `source = "aws"` for `secret_id`, reading `queue` when given.
    async fn rotagate(&self, secret_id: &str, queue: Option<&str>, refresh: &str) -> Rotagate {
        let mut b = TestProxy::builder(&self.pg)
            .source("aws", &self.moto.section(secret_id, queue))
            .credentials(&format!("refresh_interval = \"{refresh}\""));
        for (k, v) in self.moto.env() {
            b = b.var(&k, &v);
        }
        let r = b.spawn().await;
        r.ready().await;
        r
    }

    /// A rotation to a fresh password; returns the new version id.
    async fn rotate(&self, n: usize) -> String {
        self.aws
            .rotate(&self.pg, SECRET, APP_USER, &format!("rotated-pw-{n}"))
            .await
    }
}

async fn generation_above(r: &Rotagate, before: u64, what: &str) {
    wait_until(10, what, || async { r.generation().await > before }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_from_secrets_manager_and_every_event_shape_rotates_through_eventbridge() {
    let w = world().await;
    let queue = w.aws.create_queue("rotagate-events").await;
    w.aws.route(&queue).await;
    // An hour between periodic checks: only the events can bring these rotations in time.
    let r = w.rotagate(SECRET, Some(&queue), "1h").await;
    assert_eq!(
        one(&r.client().await, "SELECT current_user").await,
        APP_USER
    );
    let shapes = [
        "label-updated",
        "rotation-succeeded-additional",
        "rotation-succeeded-service-details",
        "rotation-succeeded-resources",
        "update-stage-secret-id",
        "update-stage-arn",
        "update-stage-arn-upper",
    ];
    for (n, shape) in shapes.iter().enumerate() {
        let before = r.generation().await;
        let version = w.rotate(n).await;
        w.aws
            .put_event(&fixture_event(shape, &w.arn, &version))
            .await;
        generation_above(&r, before, &format!("a rotation announced by {shape}")).await;
    }
    assert!(
        r.metric("rotagate_events_total", "outcome=\"applied\"")
            .await
            >= 7.0
    );
    // New upstream logins use the newest password.
    w.pg.sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{APP_USER}'"
    ));
    wait_until(10, "a fresh upstream login", || async {
        match r.connect(&r.url()).await {
            Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    let log = r.stop().await;
    for n in 0..shapes.len() {
        assert!(
            !log.contains(&format!("rotated-pw-{n}")),
            "a password in the log"
        );
    }
    assert!(!log.contains(APP_PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_version_is_prefetched_then_swapped_in_when_its_label_moves() {
    let w = world().await;
    let queue = w.aws.create_queue("rotagate-prefetch").await;
    w.aws.route(&queue).await;
    let r = w.rotagate(SECRET, Some(&queue), "1h").await;
    let g = r.generation().await;
    let version = w
        .aws
        .put_pending(SECRET, rds_json(&w.pg, APP_USER, "staged-pw"))
        .await;
    w.aws
        .put_event(&fixture_event("put-pending", &w.arn, &version))
        .await;
    wait_until(10, "the prefetch", || async {
        r.log().contains("prefetched the pending credential")
    })
    .await;
    assert_eq!(r.generation().await, g, "a prefetch never swaps");
    w.pg.sql(&format!("ALTER ROLE {APP_USER} PASSWORD 'staged-pw'"));
    w.aws.promote(SECRET, &version).await;
    w.aws
        .put_event(&fixture_event("label-updated", &w.arn, &version))
        .await;
    generation_above(&r, g, "the swap to the prefetched version").await;
    let status: serde_json::Value = serde_json::from_str(&r.get("/status").await.1).unwrap();
    assert_eq!(
        status["credential"]["version"],
        version.as_str(),
        "{status}"
    );
    // The same event again (SQS delivers at least once) changes nothing.
    let g = r.generation().await;
    w.aws
        .put_event(&fixture_event("label-updated", &w.arn, &version))
        .await;
    wait_until(10, "the repeat to be counted as ignored", || async {
        r.metric("rotagate_events_total", "outcome=\"ignored\"")
            .await
            >= 1.0
    })
    .await;
    assert_eq!(r.generation().await, g);
}
