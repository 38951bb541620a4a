//! Upstream connections: bounded by the pool, never reused dirty, replaced when the server
//! goes away, drained on shutdown.

mod common;

use common::*;
use std::time::Duration;

fn upstream_count(pg: &common::pg::Pg) -> usize {
    pg.sql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{APP_USER}'"
    ))
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_clients_than_the_pool_are_all_served() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).pool_size(2).start().await;
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(proxy.client().await);
    }
    let work = clients.iter().map(|c| async move {
        for _ in 0..5 {
            assert_eq!(one(c, "SELECT count(*) FROM pg_sleep(0.01)").await, "1");
        }
    });
    let run = futures::future::join_all(work);
    tokio::pin!(run);
    let mut peak = 0;
    loop {
        tokio::select! {
            _ = &mut run => break,
            _ = tokio::time::sleep(Duration::from_millis(20)) => peak = peak.max(upstream_count(&pg)),
        }
    }
    assert!(peak <= 2, "{peak} upstream connections for a pool of 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_does_not_leak_between_clients() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg)
        .mode("session")
        .pool_size(1)
        .start()
        .await;
    let a = proxy.client().await;
    let pid = one(&a, "SELECT pg_backend_pid()").await;
    a.batch_execute("SET statement_timeout = '7s'; CREATE TEMP TABLE t_a (x int); PREPARE p AS SELECT 1; LISTEN ch_a")
        .await
        .unwrap();
    drop(a);
    wait_until(10, "the connection to return", || async {
        proxy.connect(&proxy.url()).await.is_ok()
    })
    .await;
    let b = proxy.client().await;
    assert_eq!(
        one(&b, "SELECT pg_backend_pid()").await,
        pid,
        "the pool reuses its one connection"
    );
    assert_eq!(one(&b, "SHOW statement_timeout").await, "0");
    assert_eq!(
        one(&b, "SELECT count(*) FROM pg_tables WHERE tablename = 't_a'").await,
        "0"
    );
    assert_eq!(
        one(&b, "SELECT count(*) FROM pg_prepared_statements").await,
        "0"
    );
    assert_eq!(
        one(&b, "SELECT count(*) FROM pg_listening_channels()").await,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_transaction_does_not_leave_a_dirty_connection() {
    let pg = app_cluster();
    for mode in ["transaction", "session"] {
        let proxy = TestProxy::builder(&pg)
            .mode(mode)
            .pool_size(1)
            .start()
            .await;
        let a = proxy.client().await;
        a.simple_query("BEGIN").await.unwrap();
        a.simple_query("CREATE TABLE half_done (x int)")
            .await
            .unwrap();
        let pid = one(&a, "SELECT pg_backend_pid()").await;
        drop(a); // the socket closes without COMMIT, ROLLBACK or Terminate handling
        let b = proxy.client().await;
        let pid_b = one(&b, "SELECT pg_backend_pid()").await;
        assert_ne!(
            pid_b, pid,
            "{mode}: the mid-transaction connection must be closed, not reused"
        );
        assert_eq!(
            one(
                &b,
                "SELECT count(*) FROM pg_tables WHERE tablename = 'half_done'"
            )
            .await,
            "0"
        );
        wait_until(10, "the old backend to go", || async {
            pg.sql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
            )) == "0"
        })
        .await;
        proxy.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_clients_are_served_after_postgres_restarts() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).pool_size(2).start().await;
    let idle = proxy.client().await;
    assert_eq!(one(&idle, "SELECT 1").await, "1");
    pg.restart();
    // The pool's idle connections died with the server; checkout notices and replaces them.
    assert_eq!(one(&idle, "SELECT 2").await, "2");
    let fresh = proxy.client().await;
    assert_eq!(one(&fresh, "SELECT 3").await, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_client_learns_at_once_when_its_upstream_dies() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).mode("session").start().await;
    let client = proxy.client().await;
    let pid = one(&client, "SELECT pg_backend_pid()").await;
    pg.sql(&format!("SELECT pg_terminate_backend({pid})"));
    let result =
        tokio::time::timeout(Duration::from_secs(20), client.simple_query("SELECT 1")).await;
    assert!(result.expect("an error, not a hang").is_err());
    let other = proxy.client().await;
    assert_eq!(one(&other, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_open_transactions_finish_then_closes() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).start().await;
    let busy = proxy.client().await;
    let idle = proxy.client().await;
    busy.simple_query("BEGIN").await.unwrap();
    busy.simple_query("CREATE TABLE committed_late (x int)")
        .await
        .unwrap();
    proxy.shutdown.cancel();
    wait_until(10, "/readyz to turn 503", || async {
        proxy.get("/readyz").await.0 == 503
    })
    .await;
    let e = idle.simple_query("SELECT 1").await.unwrap_err();
    assert!(e.code().is_none_or(|c| c.code() == "57P01"), "{e}");
    busy.simple_query("COMMIT").await.unwrap();
    assert_eq!(
        pg.sql_in(
            "appdb",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'committed_late'"
        ),
        "1"
    );
    assert!(
        proxy.connect(&proxy.url()).await.is_err(),
        "no new clients during shutdown"
    );
    proxy.stop().await.unwrap();
}
