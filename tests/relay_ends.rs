//! Every way a relay can end. A connection goes back to the pool only at rest; every other end
//! closes it, counts why in `rotagate_server_connections_closed_total{reason}`, and never hands
//! a busy connection to the next client. Each test runs the real binary, so that its metrics
//! are its own.

mod common;

use common::wire::{Ext, FakeUpstream, Raw, first_column, sole_error, tags};
use common::*;
use std::collections::BTreeSet;

async fn start(b: Builder<'_>) -> process::Rotagate {
    let r = b.spawn().await;
    r.ready().await;
    r
}

async fn closed(proxy: &impl Endpoints, reason: &str) -> f64 {
    proxy
        .metric(
            "rotagate_server_connections_closed_total",
            &format!("reason=\"{reason}\""),
        )
        .await
}

/// B, on the same one-connection pool, gets exactly its own rows, twice; returns the pid of
/// the upstream connection that served it.
async fn b_gets_its_own(proxy: &impl Endpoints) -> String {
    let b = proxy.client().await;
    for i in 1..=2 {
        assert_eq!(one(&b, &format!("SELECT 'B-{i}'")).await, format!("B-{i}"));
    }
    one(&b, "SELECT pg_backend_pid()").await
}

/// The pid of the upstream connection running the query marked `marker`.
fn running(pg: &pg::Pg, marker: &str) -> String {
    pg.sql(&format!(
        "SELECT pid FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_rest_the_connection_is_reused_and_nothing_is_closed() {
    let pg = app_cluster();
    let proxy = start(TestProxy::builder(&pg).pool_size(1)).await;
    let mut a = Raw::connect(proxy.proxy_addr(), CLIENT_USER, CLIENT_PASSWORD).await;
    let mut pids = BTreeSet::new();
    for _ in 0..3 {
        pids.extend(first_column(&a.query("SELECT pg_backend_pid()").await));
        let ext = Ext::new()
            .parse("", "SELECT pg_backend_pid()")
            .bind("", &[])
            .execute()
            .sync();
        a.send(&ext.0).await;
        pids.extend(first_column(&a.until_ready().await));
    }
    assert_eq!(pids.len(), 1, "one connection served all of it: {pids:?}");
    // Absent counts as none closed here: the test below shows the series appears, with the
    // reason, once a connection is closed.
    let total = proxy
        .metric_or_zero("rotagate_server_connections_closed_total", "")
        .await;
    assert_eq!(total, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_mid_query_closes_that_connection() {
    let pg = app_cluster();
    let proxy = start(TestProxy::builder(&pg).pool_size(1)).await;
    let mut a = Raw::connect(proxy.proxy_addr(), CLIENT_USER, CLIENT_PASSWORD).await;
    a.start("SELECT 'A-ROWS', pg_sleep(1)").await;
    wait_running(&pg, "A-ROWS").await;
    let busy = running(&pg, "A-ROWS");
    a.send(b"P\0\0\0\x01").await;
    let got = a.until_closed().await;
    assert_eq!(
        got.iter()
            .filter(|m| m.tag == b'E')
            .map(|m| m.code())
            .collect::<Vec<_>>(),
        ["08P01"],
        "{got:?}"
    );
    assert_ne!(
        b_gets_its_own(&proxy).await,
        busy,
        "the busy connection was reused"
    );
    assert_eq!(closed(&proxy, "malformed").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_in_a_transaction_closes_that_connection() {
    let pg = app_cluster();
    let proxy = start(
        TestProxy::builder(&pg)
            .pool_size(1)
            .listen("max_message_size = 4096"),
    )
    .await;
    let mut a = Raw::connect(proxy.proxy_addr(), CLIENT_USER, CLIENT_PASSWORD).await;
    assert_eq!(tags(&a.query("BEGIN").await), "CZ");
    let busy = first_column(&a.query("SELECT pg_backend_pid()").await);
    let big = format!("SELECT '{}'", "x".repeat(5000));
    let mut q = bytes::BytesMut::new();
    rotagate::wire::msg::query(&mut q, &big);
    a.send_refused(&q).await;
    let got = a.until_closed().await;
    assert_eq!(
        got.last().map(|m| m.code()).as_deref(),
        Some("54000"),
        "{got:?}"
    );
    assert_ne!([b_gets_its_own(&proxy).await], busy.as_slice());
    assert_eq!(closed(&proxy, "too_large").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_query_closes_that_connection() {
    let pg = app_cluster();
    let proxy = start(TestProxy::builder(&pg).pool_size(1)).await;
    let mut a = Raw::connect(proxy.proxy_addr(), CLIENT_USER, CLIENT_PASSWORD).await;
    a.start("SELECT 'A-LEFT', pg_sleep(1)").await;
    wait_running(&pg, "A-LEFT").await;
    let busy = running(&pg, "A-LEFT");
    drop(a);
    assert_ne!(b_gets_its_own(&proxy).await, busy);
    assert_eq!(closed(&proxy, "client_left").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminate_before_the_reply_closes_that_connection_in_session_mode_too() {
    let pg = app_cluster();
    for mode in ["session", "transaction"] {
        let proxy = start(TestProxy::builder(&pg).mode(mode).pool_size(1)).await;
        let mut a = Raw::connect(proxy.proxy_addr(), CLIENT_USER, CLIENT_PASSWORD).await;
        let mut q = bytes::BytesMut::new();
        rotagate::wire::msg::query(&mut q, "SELECT 'A-STALE', pg_sleep(0.3)");
        rotagate::wire::msg::empty(&mut q, b'X');
        a.send(&q).await;
        // Session mode would otherwise run DISCARD ALL while A's query is still owed.
        b_gets_its_own(&proxy).await;
        assert_eq!(closed(&proxy, "client_left").await, 1.0, "{mode}");
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sending_a_bad_frame_closes_that_connection() {
    let pg = app_cluster();
    let fake = FakeUpstream::start().await;
    let proxy = start(
        TestProxy::builder(&pg)
            .upstream_port(fake.port)
            .pool_size(1),
    )
    .await;
    let mut a = Raw::connect(proxy.proxy_addr(), CLIENT_USER, CLIENT_PASSWORD).await;
    assert_eq!(tags(&a.query("SELECT 1").await), "CZ");
    let got = a.query("SELECT garbage").await;
    assert_eq!(
        got.last().map(|m| m.code()).as_deref(),
        Some("08006"),
        "{got:?}"
    );
    assert_eq!(closed(&proxy, "server_protocol").await, 1.0);
    let mut b = Raw::connect(proxy.proxy_addr(), CLIENT_USER, CLIENT_PASSWORD).await;
    assert_eq!(tags(&b.query("SELECT 1").await), "CZ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_ends_the_transaction_not_the_client() {
    let pg = app_cluster();
    let proxy = start(
        TestProxy::builder(&pg)
            .pool_size(2)
            .pool("drain_timeout = \"1s\""),
    )
    .await;
    let mut a = Raw::connect(proxy.proxy_addr(), CLIENT_USER, CLIENT_PASSWORD).await;
    assert_eq!(tags(&a.query("BEGIN").await), "CZ");
    let before = proxy.generation().await;
    pg.sql(&format!("ALTER ROLE {APP_USER} PASSWORD 'upstream-pw-2'"));
    write_secret(&proxy.secret_path(), &pg, APP_USER, "upstream-pw-2");
    wait_until(20, "the new generation", || async {
        proxy.generation().await > before
    })
    .await;
    wait_until(10, "the retired connection to close", || async {
        closed(&proxy, "drain_timeout").await == 1.0
    })
    .await;
    let got = a.query("SELECT 1").await;
    assert_eq!(sole_error(&got), ("57P01".into(), "ERROR".into()));
    assert_eq!(got.last().map(|m| m.body.clone()), Some(b"I".to_vec()));
    assert_eq!(first_column(&a.query("SELECT 'after'").await), ["after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_settings_sync_closes_that_connection() {
    let pg = app_cluster();
    pg.sql(&format!(
        "CREATE ROLE gone_role NOLOGIN; GRANT gone_role TO {APP_USER}"
    ));
    let proxy = start(TestProxy::builder(&pg).pool_size(1)).await;
    let a = proxy.client().await;
    a.simple_query("SET ROLE gone_role").await.unwrap();
    let b = proxy.client().await;
    assert_eq!(one(&b, "SELECT current_user").await, APP_USER);
    pg.sql("DROP ROLE gone_role");
    let e = a.simple_query("SELECT current_user").await.unwrap_err();
    let db = e.as_db_error().expect("an error from the proxy");
    assert!(db.message().contains("gone_role"), "{db:?}");
    assert_eq!(closed(&proxy, "reset_failed").await, 1.0);
    assert_eq!(one(&b, "SELECT current_user").await, APP_USER);
}
