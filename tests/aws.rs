//! AWS Secrets Manager and its events, against moto's server: the real binary reads its
//! credential from Secrets Manager and hears of rotations over SQS, fed by EventBridge or an
//! SNS topic, with the periodic check as the safety net.

mod common;

use common::aws::{Aws, Moto, fixture_event, rds_json};
use common::pg::{Pg, free_port};
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

    /// A queue fed by the EventBridge rule, and rotagate reading it (no periodic check to
    /// speak of: only events can bring rotations in time).
    async fn routed(&self, queue_name: &str) -> Rotagate {
        let queue = self.aws.create_queue(queue_name).await;
        self.aws.route(&queue).await;
        self.rotagate(SECRET, Some(&queue), "1h").await
    }

    /// Ends every upstream session of the application role.
    fn cut_upstream(&self) {
        self.pg.sql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{APP_USER}'"
        ));
    }

    /// A rotation to a fresh password; returns the new version id.
    async fn rotate(&self, n: usize) -> String {
        self.aws
            .rotate(&self.pg, SECRET, APP_USER, &format!("rotated-pw-{n}"))
            .await
    }
}

/// The version /status says is served.
async fn served_version(r: &Rotagate) -> String {
    let status: serde_json::Value = serde_json::from_str(&r.get("/status").await.1).unwrap();
    status["credential"]["version"].as_str().unwrap().to_owned()
}

async fn generation_above(r: &Rotagate, before: u64, what: &str) {
    wait_until(10, what, || async { r.generation().await > before }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_from_secrets_manager_and_every_event_shape_rotates_through_eventbridge() {
    let w = world().await;
    // An hour between periodic checks: only the events can bring these rotations in time.
    let r = w.routed("rotagate-events").await;
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
    w.cut_upstream();
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
    let r = w.routed("rotagate-prefetch").await;
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
    assert_eq!(served_version(&r).await, version);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_fans_one_rotation_out_to_two_proxies_each_with_its_own_queue() {
    let w = world().await;
    let q1 = w.aws.create_queue("rotagate-fan-1").await;
    let q2 = w.aws.create_queue("rotagate-fan-2").await;
    let topic = w.aws.topic("rotagate-secret-rotated", &[&q1, &q2]).await;
    let a = w.rotagate(SECRET, Some(&q1), "1h").await;
    let b = w.rotagate(SECRET, Some(&q2), "1h").await;
    let (ga, gb) = (a.generation().await, b.generation().await);
    let version = w.rotate(1).await;
    w.aws
        .publish(&topic, &fixture_event("label-updated", &w.arn, &version))
        .await;
    generation_above(&a, ga, "the first replica's swap").await;
    generation_above(&b, gb, "the second replica's swap").await;
    for r in [&a, &b] {
        assert_eq!(one(&r.client().await, "SELECT 1").await, "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_queue_the_periodic_check_picks_up_a_rotation() {
    let w = world().await;
    // The secret named by its ARN this time.
    let r = w.rotagate(&w.arn, None, "1s").await;
    let g = r.generation().await;
    w.rotate(1).await;
    generation_above(&r, g, "the periodic check's swap").await;
    let log = r.stop().await;
    assert!(log.contains("periodic check only"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_secrets_repeats_and_garbage_rotate_nothing_and_leave_the_queue() {
    let w = world().await;
    let other = w
        .aws
        .create_secret(&format!("{SECRET}-old"), rds_json(&w.pg, "app_other", "x"))
        .await;
    let queue = w.aws.create_queue("rotagate-noise").await;
    let r = w.rotagate(SECRET, Some(&queue), "1h").await;
    let g = r.generation().await;
    let current = w.aws.current_version(SECRET).await;
    let bodies = [
        fixture_event("label-updated", &other, "v-other").to_string(),
        fixture_event("label-updated", &w.arn, &current).to_string(),
        fixture_event("label-updated", &w.arn, "v-x")
            .to_string()
            .replace("AWSCURRENT", "AWSPREVIOUS"),
        r#"{"this is": "not an event""#.to_owned(),
        r#"{"Type":"Notification","Message":"not json"}"#.to_owned(),
    ];
    for body in &bodies {
        w.aws.send(&queue, body).await;
    }
    wait_until(30, "the queue to drain", || async {
        w.aws.depth(&queue).await == 0
    })
    .await;
    wait_until(10, "every message to be counted", || async {
        let ignored = r
            .metric("rotagate_events_total", "outcome=\"ignored\"")
            .await;
        let invalid = r
            .metric("rotagate_events_total", "outcome=\"invalid\"")
            .await;
        ignored >= 2.0 && invalid >= 2.0
    })
    .await;
    assert_eq!(r.generation().await, g, "nothing rotated");
    assert_eq!(
        one(&r.client().await, "SELECT current_user").await,
        APP_USER
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_queue_does_not_stop_serving_and_is_retried() {
    let w = world().await;
    let nowhere = format!(
        "http://127.0.0.1:{}/123456789012/rotagate-nowhere",
        free_port()
    );
    let r = w.rotagate(SECRET, Some(&nowhere), "1h").await;
    assert_eq!(
        one(&r.client().await, "SELECT current_user").await,
        APP_USER
    );
    wait_until(30, "two failed receives", || async {
        r.log().matches("cannot receive from the SQS queue").count() >= 2
    })
    .await;
    assert!(r.log().contains("retrying with backoff"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_disappears_is_a_loud_failure_and_the_last_good_one_keeps_serving() {
    let w = world().await;
    let r = w.rotagate(SECRET, None, "1h").await;
    w.aws
        .sm
        .delete_secret()
        .secret_id(SECRET)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    let (code, body) = r.post("/rotate", "").await;
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["outcome"], "failed", "{code} {body}");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("ResourceNotFound"),
        "{body}"
    );
    assert_eq!(one(&r.client().await, "SELECT 1").await, "1");
    let log = r.stop().await;
    assert!(
        log.contains("\"level\":\"ERROR\"") && log.contains("refuses"),
        "{log}"
    );
}

/// Single-user rotation as AWS runs it (AWSPENDING, ALTER ROLE, AWSCURRENT, the event), three
/// times under pgbench load: no client sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_user_rotations_under_load_fail_no_transaction() {
    let w = world().await;
    w.pg.pgbench_init(APP_USER, APP_PASSWORD);
    let r = w.routed("rotagate-load").await;
    let g0 = r.generation().await;
    let load = pgbench(&r, &["-n", "-c", "8", "-j", "2", "-T", "8"]);
    let rotations = async {
        for n in 0..3 {
            let g = r.generation().await;
            let version = w.rotate(n).await;
            w.aws
                .put_event(&fixture_event("label-updated", &w.arn, &version))
                .await;
            generation_above(&r, g, "a swap under load").await;
        }
    };
    let ((ok, out), ()) = tokio::join!(load, rotations);
    assert!(ok && pgbench_clean(&out), "{out}");
    assert_eq!(r.generation().await, g0 + 3);
}

/// The single-user window with no event at all: the database has the new password, the
/// secret has it staged as AWSPENDING only. A refused upstream login makes rotagate refetch:
/// AWSCURRENT (still the old one), then AWSPENDING, which works and is swapped in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_tries_awscurrent_then_awspending() {
    let w = world().await;
    let r = w.rotagate(SECRET, None, "1h").await;
    let g = r.generation().await;
    let version = w
        .aws
        .put_pending(SECRET, rds_json(&w.pg, APP_USER, "pending-pw"))
        .await;
    w.pg.sql(&format!("ALTER ROLE {APP_USER} PASSWORD 'pending-pw'"));
    w.cut_upstream();
    // A new client needs a new upstream login, which is refused with the old password.
    let client = r.client().await;
    assert_eq!(one(&client, "SELECT current_user").await, APP_USER);
    generation_above(&r, g, "the swap to AWSPENDING").await;
    assert_eq!(served_version(&r).await, version);
}

/// An event that runs ahead of what Secrets Manager serves (it names a version AWSCURRENT
/// has not reached yet) is not lost: rotagate looks again shortly, with no further event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_ahead_of_the_source_is_looked_at_again() {
    let w = world().await;
    let r = w.routed("rotagate-ahead").await;
    let g = r.generation().await;
    let version = w
        .aws
        .put_pending(SECRET, rds_json(&w.pg, APP_USER, "ahead-pw"))
        .await;
    w.pg.sql(&format!("ALTER ROLE {APP_USER} PASSWORD 'ahead-pw'"));
    w.aws
        .put_event(&fixture_event("label-updated", &w.arn, &version))
        .await;
    wait_until(10, "the early event to be looked at", || async {
        r.log().contains("does not serve version")
    })
    .await;
    w.aws.promote(SECRET, &version).await;
    generation_above(&r, g, "the swap on the second look").await;
}

/// Two databases, each with its own secret, their events on one queue: each event reaches
/// the database whose secret it names and only that one rotates; an event for a secret no
/// database serves is counted without a database and deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_queue_carries_events_for_two_databases() {
    let w = world().await;
    w.pg.sql("CREATE ROLE owner_b LOGIN PASSWORD 'b-pw-1'");
    w.pg.sql("CREATE DATABASE db_b OWNER owner_b");
    let b_json = |pw: &str| {
        format!(
            r#"{{"username":"owner_b","password":"{pw}","host":"127.0.0.1","port":{},"dbname":"db_b"}}"#,
            w.pg.port
        )
    };
    let b_arn = w.aws.create_secret("other/db_b", b_json("b-pw-1")).await;
    let queue = w.aws.create_queue("shared-events").await;
    w.aws.route(&queue).await;
    let entry = |name: &str, secret: &str| {
        format!(
            "[[databases]]\nname = \"{name}\"\n[databases.upstream]\nhost = \"127.0.0.1\"\n\
             port = {}\ndatabase = \"{name}\"\ntls = \"disable\"\n[databases.credentials]\n\
             source = \"aws\"\nrefresh_interval = \"1h\"\n{}",
            w.pg.port,
            w.moto
                .section(secret, Some(&queue))
                .replace("[credentials.aws]", "[databases.credentials.aws]")
        )
    };
    let mut b = TestProxy::builder(&w.pg)
        .databases(&(entry("appdb", SECRET) + &entry("db_b", "other/db_b")));
    for (k, v) in w.moto.env() {
        b = b.var(&k, &v);
    }
    let r = b.spawn().await;
    r.ready().await;
    let generation_of = |db: &'static str| {
        let r = &r;
        async move {
            let s: serde_json::Value = serde_json::from_str(&r.get("/status").await.1).unwrap();
            s["databases"][db]["generation"].as_u64().unwrap_or(0)
        }
    };
    // db_b's rotation: only db_b moves.
    let version = w.aws.put_pending("other/db_b", b_json("b-pw-2")).await;
    w.pg.sql("ALTER ROLE owner_b PASSWORD 'b-pw-2'");
    w.aws.promote("other/db_b", &version).await;
    w.aws
        .put_event(&fixture_event("label-updated", &b_arn, &version))
        .await;
    wait_until(20, "db_b's new generation", || async {
        generation_of("db_b").await == 2
    })
    .await;
    assert_eq!(generation_of("appdb").await, 1);
    // appdb's rotation: only appdb moves.
    let version = w.rotate(1).await;
    w.aws
        .put_event(&fixture_event("label-updated", &w.arn, &version))
        .await;
    wait_until(20, "appdb's new generation", || async {
        generation_of("appdb").await == 2
    })
    .await;
    assert_eq!(generation_of("db_b").await, 2);
    // A secret nobody serves: logged, counted without a database, deleted.
    let stray = w.aws.create_secret("nobody/db", b_json("x")).await;
    w.aws
        .put_event(&fixture_event("label-updated", &stray, "v-stray"))
        .await;
    wait_until(20, "the stray event counted", || async {
        r.metric("rotagate_events_total", "database=\"\"").await >= 1.0
    })
    .await;
    wait_until(20, "the queue emptied", || async {
        w.aws.depth(&queue).await == 0
    })
    .await;
    for db in ["appdb", "db_b"] {
        let applied = format!("outcome=\"applied\",database=\"{db}\"");
        assert_eq!(
            r.metric("rotagate_events_total", &applied).await,
            1.0,
            "{db}"
        );
    }
    let log = r.stop().await;
    assert!(log.contains("no served database"), "{log}");
}
