//! The relay: extended protocol, pipelining, startup parameters, cancel, COPY, notifications,
//! large results, and real clients (psql, pgbench) through the proxy.

mod common;

use common::*;
use futures::future::join_all;
use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::types::Type;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statements_work_in_both_modes() {
    let pg = app_cluster();
    // Transaction mode: both clients share the one upstream connection.
    for (mode, size) in [("session", 2), ("transaction", 1)] {
        let proxy = TestProxy::builder(&pg)
            .mode(mode)
            .pool_size(size)
            .start()
            .await;
        let (a, b) = (proxy.client().await, proxy.client().await);
        let sa = a.prepare("SELECT $1::text || '!'").await.unwrap();
        let sb = b.prepare("SELECT $1::int * 2").await.unwrap();
        for word in ["a", "b"] {
            let row = a.query_one(&sa, &[&word]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), format!("{word}!"), "{mode}");
            let row = b.query_one(&sb, &[&21i32]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), 42, "{mode}");
        }
        // Unnamed statements work too.
        let row = a
            .query_typed_one("SELECT $1::int * 2", &[(&21i32, Type::INT4)])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
        proxy.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_extended_queries_keep_their_order_in_transaction_mode() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).pool_size(2).start().await;
    let client = proxy.client().await;
    let futures = (0..50i32).map(|i| {
        let client = &client;
        async move {
            let row = client
                .query_typed_one("SELECT $1::int", &[(&i, Type::INT4)])
                .await
                .unwrap();
            assert_eq!(row.get::<_, i32>(0), i);
        }
    });
    join_all(futures).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_follow_each_client_across_shared_connections() {
    let pg = app_cluster();
    // One upstream connection, so both clients must share it.
    let proxy = TestProxy::builder(&pg).pool_size(1).start().await;
    let a = proxy
        .connect(&format!(
            "{} application_name=alpha options='-c TimeZone=Asia/Tokyo -c search_path=s_a'",
            proxy.url()
        ))
        .await
        .unwrap();
    let b = proxy
        .connect(&format!("{} application_name=beta", proxy.url()))
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(one(&a, "SHOW application_name").await, "alpha");
        assert_eq!(one(&a, "SHOW TimeZone").await, "Asia/Tokyo");
        assert_eq!(one(&a, "SHOW search_path").await, "s_a");
        assert_eq!(one(&b, "SHOW application_name").await, "beta");
        assert_eq!(
            one(&b, "SHOW TimeZone").await,
            one(
                &b,
                "SELECT reset_val FROM pg_settings WHERE name = 'TimeZone'"
            )
            .await
        );
        assert_eq!(one(&b, "SHOW search_path").await, "\"$user\", public");
    }
    // A SET of a reported parameter follows the client too.
    a.simple_query("SET application_name = 'alpha2'")
        .await
        .unwrap();
    assert_eq!(one(&b, "SHOW application_name").await, "beta");
    assert_eq!(one(&a, "SHOW application_name").await, "alpha2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_status_comes_from_the_server_in_its_spelling() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).start().await;
    let version = pg.sql("SHOW server_version");
    let (ok, out, err) = psql(
        &proxy,
        "",
        &[
            "-qAt",
            "-c",
            "\\echo :SERVER_VERSION_NAME",
            "-c",
            "SHOW client_encoding",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().next(), Some(version.as_str()));
    let out = tokio::process::Command::new("psql")
        .env("PGPASSWORD", CLIENT_PASSWORD)
        .env("PGCLIENTENCODING", "eucjp")
        .arg("-X")
        .arg(format!(
            "host=127.0.0.1 port={} user={CLIENT_USER} dbname=appdb",
            proxy.addr.port()
        ))
        .args([
            "-qAt",
            "-c",
            "SHOW client_encoding",
            "-c",
            "\\echo :ENCODING",
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["EUC_JP", "EUC_JP"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query_in_both_modes() {
    let pg = app_cluster();
    for mode in ["transaction", "session"] {
        let proxy = TestProxy::builder(&pg).mode(mode).start().await;
        let client = proxy.client().await;
        let token = client.cancel_token();
        let running = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
        wait_until(20, "the query to start", || async {
            pg.sql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'") == "1"
        })
        .await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        let e = running.await.unwrap().unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{mode}: {e}");
        proxy.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_both_ways() {
    let pg = app_cluster();
    // tokio-postgres prepares COPY statements by name: session mode.
    let proxy = TestProxy::builder(&pg).mode("session").start().await;
    let client = proxy.client().await;
    client.simple_query("CREATE TABLE c (n int)").await.unwrap();
    let sink = client.copy_in("COPY c FROM STDIN").await.unwrap();
    let data: String = (1..=5000).map(|n| format!("{n}\n")).collect();
    futures::pin_mut!(sink);
    futures::SinkExt::send(&mut sink, bytes::Bytes::from(data))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 5000);
    let stream = client.copy_out("COPY c TO STDOUT").await.unwrap();
    let chunks: Vec<_> = futures::StreamExt::collect::<Vec<_>>(stream).await;
    let total: usize = chunks
        .into_iter()
        .map(|c| c.unwrap().iter().filter(|b| **b == b'\n').count())
        .sum();
    assert_eq!(total, 5000);
    proxy.stop().await.unwrap();

    // psql's \copy uses the simple protocol: transaction mode.
    let proxy = TestProxy::builder(&pg).start().await;
    let (ok, out, err) = psql(
        &proxy,
        "",
        &[
            "-qAt",
            "-c",
            "\\copy (SELECT generate_series(1, 3000)) TO STDOUT",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_a_session_mode_listener() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).mode("session").start().await;
    let (ok, out, err) = psql(
        &proxy,
        "",
        &[
            "-q",
            "-c",
            "LISTEN ch",
            "-c",
            "NOTIFY ch, 'payload'",
            "-c",
            "SELECT 1",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("Asynchronous notification \"ch\" with payload \"payload\""),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_stream_through() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).start().await;
    let client = proxy.client().await;
    let rows = client
        .simple_query("SELECT repeat('x', 2000) FROM generate_series(1, 20000)")
        .await
        .unwrap();
    let n = rows
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(n, 20000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_inside_transactions_leave_the_client_usable() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).start().await;
    let client = proxy.client().await;
    client.simple_query("BEGIN").await.unwrap();
    assert!(client.simple_query("SELECT 1/0").await.is_err());
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "aborted transaction refuses commands"
    );
    client.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(one(&client, "SELECT 42").await, "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_clean_in_both_modes() {
    let pg = app_cluster();
    pg.pgbench_init(APP_USER, APP_PASSWORD);
    let proxy = TestProxy::builder(&pg).pool_size(3).start().await;
    for mode in ["simple", "extended"] {
        let (ok, out) = pgbench(
            &proxy,
            &["-n", "-S", "-M", mode, "-c", "8", "-j", "2", "-t", "200"],
        )
        .await;
        assert!(ok && pgbench_clean(&out), "{mode}: {out}");
    }
    let (ok, out) = pgbench(&proxy, &["-n", "-M", "extended", "-c", "4", "-t", "100"]).await;
    assert!(ok && pgbench_clean(&out), "read-write: {out}");
    proxy.stop().await.unwrap();
    let proxy = TestProxy::builder(&pg)
        .mode("session")
        .pool_size(4)
        .start()
        .await;
    let (ok, out) = pgbench(
        &proxy,
        &["-n", "-S", "-M", "prepared", "-c", "4", "-t", "200"],
    )
    .await;
    assert!(ok && pgbench_clean(&out), "prepared/session: {out}");
}
