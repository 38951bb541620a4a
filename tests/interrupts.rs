//! Cancels and terminations. A cancel reaches the query of the client that sent it, never the
//! next client's on the same connection; it ends a client's wait for a connection; it reaches a
//! pinned client. A terminated upstream session gives the client exactly the one error
//! PostgreSQL would: the server's FATAL in session mode (or for a pinned client), an error for
//! the transaction in flight in transaction mode, after which the client goes on.

mod common;

use common::wire::{Raw, first_column, sole_error, tags};
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_postgres::NoTls;

fn terminate(pg: &pg::Pg, marker: &str) {
    pg.sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_never_reaches_the_next_clients_query() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).pool_size(1).start().await;
    let (a, b) = (proxy.client().await, proxy.client().await);
    let stop = Arc::new(AtomicBool::new(false));
    let token = a.cancel_token();
    // Cancels A's queries until aborted at the end.
    let canceller = tokio::spawn(async move {
        loop {
            let _ = token.cancel_query(NoTls).await;
            tokio::task::yield_now().await;
        }
    });
    let busy_a = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut cancelled = 0;
            // Until B is done and at least one of A's cancels has landed on A's own query.
            while !stop.load(Ordering::Relaxed) || cancelled == 0 {
                match a.simple_query("SELECT pg_sleep(0.002)").await {
                    Err(e) if e.code().map(|c| c.code()) == Some("57014") => cancelled += 1,
                    Err(e) => return Err(e.to_string()),
                    // Between queries A holds nothing; B gets its turn at the connection.
                    Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
            Ok(cancelled)
        })
    };
    for i in 0..40 {
        let r = b.simple_query("SELECT pg_sleep(0.01)").await;
        if let Err(e) = r {
            panic!("B's query {i} failed: {e:?}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    // The canceller keeps going until A has seen a cancel of its own (the bound only keeps a
    // broken build from hanging).
    let cancelled = tokio::time::timeout(Duration::from_secs(60), busy_a)
        .await
        .expect("a cancel reached A's own query")
        .unwrap();
    canceller.abort();
    let cancelled = cancelled.expect("A's own session broke");
    assert!(cancelled >= 1, "no cancel was delivered to A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_ends_a_wait_for_a_connection() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).pool_size(1).start().await;
    let (a, b) = (proxy.client().await, proxy.client().await);
    a.batch_execute("BEGIN").await.unwrap();
    let token = b.cancel_token();
    let waiting = tokio::spawn(async move {
        let r = b.simple_query("SELECT 'never'").await;
        (b, r)
    });
    // B waits for the one connection, which A holds; its cancel ends the wait (a cancel that
    // comes before B waits finds nothing to cancel).
    let mut cancelled = None;
    for _ in 0..100 {
        token.cancel_query(NoTls).await.unwrap();
        if waiting.is_finished() {
            cancelled = Some(waiting);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (b, r) = cancelled.expect("the cancel ended B's wait").await.unwrap();
    assert_eq!(r.unwrap_err().code().map(|c| c.code()), Some("57014"));
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(one(&b, "SELECT 'after'").await, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_a_pinned_client() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).pool_size(2).start().await;
    let a = proxy.client().await;
    a.batch_execute("LISTEN ch_cancel").await.unwrap();
    let token = a.cancel_token();
    let sleeping = tokio::spawn(async move {
        let r = a.simple_query("SELECT pg_sleep(30) -- pinned-sleep").await;
        (a, r)
    });
    wait_running(&pg, "pinned-sleep").await;
    token.cancel_query(NoTls).await.unwrap();
    let (a, r) = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .expect("the cancel reached the pinned client's query")
        .unwrap();
    assert_eq!(r.unwrap_err().code().map(|c| c.code()), Some("57014"));
    assert_eq!(one(&a, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_a_terminated_backend_gives_one_fatal() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).mode("session").start().await;
    let mut a = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    a.start("SELECT pg_sleep(30) -- session-victim").await;
    wait_running(&pg, "session-victim").await;
    terminate(&pg, "session-victim");
    let got = a.until_closed().await;
    assert_eq!(sole_error(&got), ("57P01".into(), "FATAL".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_a_terminated_query_fails_and_the_client_goes_on() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).pool_size(1).start().await;
    let mut a = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    a.start("SELECT pg_sleep(30) -- tx-victim").await;
    wait_running(&pg, "tx-victim").await;
    terminate(&pg, "tx-victim");
    let got = a.until_ready().await;
    assert_eq!(sole_error(&got), ("57P01".into(), "ERROR".into()));
    assert_eq!(got.last().map(|m| m.body.clone()), Some(b"I".to_vec()));
    assert_eq!(first_column(&a.query("SELECT 'next'").await), ["next"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_a_terminated_idle_transaction_fails_the_next_request() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).pool_size(1).start().await;
    let mut a = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    assert_eq!(tags(&a.query("BEGIN").await), "CZ");
    a.query("SELECT 'idle-victim'").await;
    terminate(&pg, "idle-victim");
    let got = a.query("SELECT 1").await;
    assert_eq!(tags(&got), "EZ", "{got:?}");
    assert_eq!(got[0].code(), "57P01");
    assert_eq!(got[1].body, b"I");
    assert_eq!(first_column(&a.query("SELECT 'next'").await), ["next"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_a_pinned_clients_session_ends_with_its_server() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).pool_size(2).start().await;
    let mut a = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    a.query("LISTEN pinned_victim").await;
    terminate(&pg, "pinned_victim");
    let got = a.until_closed().await;
    assert_eq!(sole_error(&got), ("57P01".into(), "FATAL".into()));
}
