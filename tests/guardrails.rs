//! Guardrails so that one client cannot hold the pool: `pool.idle_transaction_timeout`,
//! `pool.query_timeout` and `listen.client_idle_timeout` (`[[clients]] max_connections` is in
//! tests/client_auth.rs).

mod common;

use common::wire::{Raw, first_column};
use common::*;
use std::time::{Duration, Instant};

/// The FATAL a silent client finds when its session was ended for it.
async fn ended_with(a: &mut Raw) -> (String, String) {
    let msgs = a.until_closed().await;
    let e = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .unwrap_or_else(|| panic!("no error before the close: {}", wire::tags(&msgs)));
    (e.severity(), e.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_in_a_transaction_is_ended_and_its_transaction_rolled_back() {
    let pg = app_cluster();
    pg.sql_in(
        "appdb",
        "CREATE TABLE guard_t (v int); GRANT ALL ON guard_t TO app_owner",
    );
    let proxy = TestProxy::builder(&pg)
        .pool_size(1)
        .pool("idle_transaction_timeout = \"1s\"")
        .start()
        .await;
    let mut a = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    a.query("BEGIN").await;
    let pid = first_column(
        &a.query("INSERT INTO guard_t VALUES (1); SELECT pg_backend_pid()")
            .await,
    );
    // A goes quiet holding the only connection; B waits, then gets it.
    let b = proxy.client().await;
    let started = Instant::now();
    assert_eq!(one(&b, "SELECT pg_backend_pid()::text").await, pid[0]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        ended_with(&mut a).await,
        ("FATAL".to_owned(), "25P03".to_owned())
    );
    // Rolled back, and the connection went back to the pool (B got the same backend).
    assert_eq!(one(&b, "SELECT count(*) FROM guard_t").await, "0");
    let counted = proxy
        .metric("rotagate_idle_transaction_timeouts_total", "")
        .await;
    assert_eq!(counted, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_query_timeout_is_cancelled_and_the_session_goes_on() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg)
        .pool_size(2)
        .pool("query_timeout = \"1s\"")
        .start()
        .await;
    let a = proxy.client().await;
    let started = Instant::now();
    let e = a.simple_query("SELECT pg_sleep(60)").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(one(&a, "SELECT 5").await, "5");
    assert_eq!(proxy.metric("rotagate_query_timeouts_total", "").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_disconnected_in_either_mode() {
    let pg = app_cluster();
    for mode in ["transaction", "session"] {
        let proxy = TestProxy::builder(&pg)
            .mode(mode)
            .listen("client_idle_timeout = \"1s\"")
            .start()
            .await;
        // The metrics registry is the test process's: count from here.
        let before = proxy
            .metric_or_zero("rotagate_client_idle_timeouts_total", "")
            .await;
        let mut a = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
        assert_eq!(first_column(&a.query("SELECT 1").await), ["1"]);
        assert_eq!(
            ended_with(&mut a).await,
            ("FATAL".to_owned(), "57P05".to_owned()),
            "{mode}"
        );
        let counted = proxy
            .metric("rotagate_client_idle_timeouts_total", "")
            .await;
        assert_eq!(counted, before + 1.0, "{mode}");
        // A client that keeps talking stays.
        let b = proxy.client().await;
        for _ in 0..3 {
            assert_eq!(one(&b, "SELECT 2").await, "2");
        }
        proxy.stop().await.unwrap();
    }
}
