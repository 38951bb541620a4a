//! Named prepared statements in transaction mode: each client's names are its own, statements
//! are prepared on whichever connection serves the client (of any credential generation), the
//! client sees exactly what PostgreSQL would have sent it, and what is kept is bounded.

mod common;

use common::wire::{Ext, Msg, Raw, first_column};
use common::*;
use rotagate::wire::msg;

fn outline(msgs: &[Msg]) -> String {
    common::wire::outline(msgs, false)
}

async fn run(raw: &mut Raw, ext: Ext) -> String {
    raw.send(&ext.0).await;
    outline(&raw.until_ready().await)
}

async fn query(raw: &mut Raw, sql: &str) -> String {
    outline(&raw.query(sql).await)
}

/// A pipeline that waits for its replies after a Flush, before its Sync.
async fn flush_then_sync(a: &mut Raw) -> String {
    let e = Ext::new()
        .parse("s2", "SELECT 'two'")
        .bind("s2", &[])
        .execute()
        .flush();
    a.send(&e.0).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.extend(a.next().await);
    }
    a.send(&Ext::new().sync().0).await;
    got.extend(a.until_ready().await);
    outline(&got)
}

/// One client's statement life, step by step; `other` runs between the steps that end at rest
/// on the same pool (and prepares the same texts under its own names), or nothing when None.
async fn life(a: &mut Raw, mut other: Option<&mut Raw>) -> Vec<String> {
    let mut got = Vec::new();
    macro_rules! step {
        ($e:expr) => {{
            let outline: String = $e;
            // Only at rest: in a transaction A keeps the one connection.
            let at_rest = outline.ends_with("ZI");
            got.push(outline);
            if let Some(o) = other.as_deref_mut().filter(|_| at_rest) {
                let e = Ext::new()
                    .parse("", "SELECT 'other'")
                    .bind("", &[])
                    .execute()
                    .sync();
                o.send(&e.0).await;
                o.until_ready().await;
                let e = Ext::new().parse("o1", "SELECT $1::int + 1").sync();
                o.send(&e.0).await;
                o.until_ready().await;
                o.query("DEALLOCATE o1").await;
            }
        }};
    }
    let s1 = || Ext::new().parse("s1", "SELECT $1::int + 1");
    step!(run(a, s1().bind("s1", &[b"41"]).execute().sync()).await);
    step!(run(a, s1().sync()).await);
    step!(run(a, Ext::new().describe_statement("s1").sync()).await);
    step!(run(a, Ext::new().bind("s1", &[b"1"]).execute().sync()).await);
    step!(
        run(
            a,
            Ext::new()
                .close_statement("s1")
                .close_statement("nope")
                .sync()
        )
        .await
    );
    step!(run(a, Ext::new().bind("s1", &[b"1"]).execute().sync()).await);
    step!(
        run(
            a,
            Ext::new()
                .parse("bad", "SELEC 1")
                .bind("bad", &[])
                .execute()
                .close_statement("x")
                .sync()
        )
        .await
    );
    step!(run(a, Ext::new().bind("bad", &[]).execute().sync()).await);
    step!(
        run(
            a,
            s1().bind("s1", &[b"2"])
                .execute()
                .parse("s1", "SELECT 2")
                .bind("s1", &[b"3"])
                .execute()
                .sync()
        )
        .await
    );
    step!(run(a, Ext::new().bind("s1", &[b"4"]).execute().sync()).await);
    step!(query(a, "DEALLOCATE s1").await);
    step!(query(a, "DEALLOCATE s1").await);
    step!(flush_then_sync(a).await);
    step!(
        run(
            a,
            Ext::new()
                .parse("", "DEALLOCATE s2")
                .bind("", &[])
                .execute()
                .sync()
        )
        .await
    );
    step!(run(a, Ext::new().bind("s2", &[]).execute().sync()).await);
    step!(flush_then_sync(a).await);
    step!(query(a, "BEGIN").await);
    step!(run(a, Ext::new().parse("s3", "SELECT 3").sync()).await);
    step!(query(a, "DEALLOCATE s3").await);
    step!(query(a, "SELECT 1/0").await);
    step!(query(a, "DEALLOCATE ALL").await);
    step!(query(a, "ROLLBACK").await);
    step!(query(a, "DEALLOCATE ALL").await);
    step!(run(a, Ext::new().bind("s2", &[]).execute().sync()).await);
    step!(
        run(
            a,
            Ext::new()
                .parse("rotagate_x", "SELECT 'mine'")
                .bind("rotagate_x", &[])
                .execute()
                .sync()
        )
        .await
    );
    step!(run(a, Ext::new().bind("rotagate_0123", &[]).execute().sync()).await);
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_statements_get_exactly_what_postgresql_sends() {
    let pg = app_cluster();
    let direct: std::net::SocketAddr = format!("127.0.0.1:{}", pg.port).parse().unwrap();
    let mut alone = Raw::connect(direct, APP_USER, APP_PASSWORD).await;
    let want = life(&mut alone, None).await;
    let proxy = TestProxy::builder(&pg).pool_size(1).start().await;
    let mut a = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    let mut b = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    let got = life(&mut a, Some(&mut b)).await;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g,
            w,
            "step {}: through rotagate {g:?}, PostgreSQL {w:?}",
            i + 1
        );
    }
    assert_eq!(got.len(), want.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_with_one_name_stay_apart() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).pool_size(1).start().await;
    let mut a = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    let mut b = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    run(&mut a, Ext::new().parse("s1", "SELECT 'from-a'").sync()).await;
    run(&mut b, Ext::new().parse("s1", "SELECT 'from-b', 2").sync()).await;
    for _ in 0..3 {
        let e = Ext::new().bind("s1", &[]).execute().sync();
        a.send(&e.0).await;
        assert_eq!(first_column(&a.until_ready().await), ["from-a"]);
        b.send(&e.0).await;
        assert_eq!(first_column(&b.until_ready().await), ["from-b"]);
    }
    run(&mut a, Ext::new().close_statement("s1").sync()).await;
    let e = Ext::new().bind("s1", &[]).execute().sync();
    b.send(&e.0).await;
    assert_eq!(first_column(&b.until_ready().await), ["from-b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_survive_rotations_on_new_connections() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).pool_size(2).start().await;
    let client = proxy.client().await;
    let stmt = client
        .prepare("SELECT $1::int * 3, pg_backend_pid()")
        .await
        .unwrap();
    let mut pids = Vec::new();
    for round in 1..=3i32 {
        let row = client.query_one(&stmt, &[&round]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), round * 3);
        pids.push(row.get::<_, i32>(1));
        proxy
            .rotate_to(&pg, APP_USER, &format!("rotated-{round}"))
            .await;
    }
    let row = client.query_one(&stmt, &[&4i32]).await.unwrap();
    pids.push(row.get::<_, i32>(1));
    let distinct: std::collections::BTreeSet<_> = pids.iter().collect();
    assert_eq!(
        distinct.len(),
        4,
        "a new connection after each rotation: {pids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_per_connection_are_bounded_and_reused() {
    let pg = app_cluster();
    let r = TestProxy::builder(&pg)
        .pool_size(1)
        .pool("max_prepared_statements = 2")
        .spawn()
        .await;
    r.ready().await;
    let client = r.client().await;
    let mut stmts = Vec::new();
    for k in 0..5 {
        stmts.push(
            client
                .prepare(&format!("SELECT {k} + $1::int"))
                .await
                .unwrap(),
        );
    }
    for round in 0..4i32 {
        for (k, s) in stmts.iter().enumerate() {
            let row = client.query_one(s, &[&round]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), k as i32 + round);
            // The function under the view: what the connection holds, not what the client has.
            let held = one(&client, "SELECT count(*) FROM pg_prepared_statement()").await;
            assert!(
                held.parse::<u32>().unwrap() <= 2,
                "{held} statements upstream"
            );
        }
    }
    assert!(r.metric("rotagate_prepared_statements", "").await <= 2.0);
    let other = r.client().await;
    let same = other.prepare("SELECT 0 + $1::int").await.unwrap();
    let before = r.metric("rotagate_statement_prepares_total", "").await;
    for _ in 0..3 {
        other.query_one(&same, &[&1i32]).await.unwrap();
    }
    let after = r.metric("rotagate_statement_prepares_total", "").await;
    assert!(
        after - before <= 1.0,
        "the upstream statement is shared and kept: {before} -> {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_client_keeps_is_bounded() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg)
        .pool_size(1)
        .pool("max_client_statement_bytes = 2048")
        .start()
        .await;
    let mut a = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    let big = format!("SELECT '{}'", "x".repeat(1500));
    assert_eq!(
        run(&mut a, Ext::new().parse("big1", &big).sync()).await,
        "1 ZI"
    );
    let refused = Ext::new().parse("big2", &big).sync();
    a.send(&refused.0).await;
    let got = a.until_ready().await;
    assert_eq!(outline(&got), "E:53400 ZI");
    assert!(got[0].text().contains("max_client_statement_bytes"));
    assert_eq!(query(&mut a, "DEALLOCATE big1").await, "C ZI");
    assert_eq!(
        run(&mut a, Ext::new().parse("big2", &big).sync()).await,
        "1 ZI"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_runs_clean_over_a_small_pool() {
    let pg = app_cluster();
    pg.pgbench_init(APP_USER, APP_PASSWORD);
    let proxy = TestProxy::builder(&pg).pool_size(2).start().await;
    for script in [&["-S"][..], &[]] {
        let mut args = vec!["-n", "-M", "prepared", "-c", "8", "-j", "2", "-t", "100"];
        args.extend_from_slice(script);
        let (ok, out) = pgbench(&proxy, &args).await;
        assert!(ok && pgbench_clean(&out), "{out}");
    }
    let mut q = bytes::BytesMut::new();
    msg::query(&mut q, "SELECT 1");
    let mut a = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    assert_eq!(query(&mut a, "SELECT 1").await, "T D C ZI");
}

/// A Parse of a statement rotagate knows is answered without a connection only while every
/// connection is kept by a client between its messages (a transaction block), and a client
/// that waits for a connection when that comes to pass gets its answer then. A connection that
/// is merely running a query is waited for: the Parse goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parse_is_answered_without_a_connection_only_when_every_connection_is_kept() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).pool_size(1).start().await;
    let addr = ([127, 0, 0, 1], pg.port).into();
    let mut holder = Raw::connect(addr, APP_USER, APP_PASSWORD).await;
    let mut a = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    let mut b = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    let known = "SELECT 'known'::text";
    assert_eq!(
        run(&mut a, Ext::new().parse("k", known).sync()).await,
        "1 ZI"
    );
    let prepares = || proxy.metric("rotagate_statement_prepares_total", "");
    // A's connection runs a query outside a transaction block: B's Parse waits and goes up.
    assert_eq!(
        query(&mut holder, "SELECT pg_advisory_lock(7)").await,
        "T D C ZI"
    );
    let mut q = bytes::BytesMut::new();
    msg::query(&mut q, "SELECT pg_advisory_xact_lock(7), 'busy-not-kept'");
    a.send(&q).await;
    wait_running(&pg, "busy-not-kept").await;
    let before = prepares().await;
    b.send(&Ext::new().parse("k", known).sync().0).await;
    query(&mut holder, "SELECT pg_advisory_unlock(7)").await;
    assert_eq!(outline(&a.until_ready().await), "T D C ZI");
    assert_eq!(outline(&b.until_ready().await), "1 ZI");
    assert!(prepares().await > before, "B's Parse went upstream");
    // Now A runs into a transaction block and keeps the connection: B's Parse, sent while A's
    // query still runs, is answered once A's transaction block is open, before A ends it.
    query(&mut holder, "SELECT pg_advisory_lock(7)").await;
    q.clear();
    msg::query(
        &mut q,
        "BEGIN; SELECT pg_advisory_xact_lock(7), 'kept-soon'",
    );
    a.send(&q).await;
    wait_running(&pg, "kept-soon").await;
    let before = prepares().await;
    b.send(&Ext::new().parse("k2", known).sync().0).await;
    query(&mut holder, "SELECT pg_advisory_unlock(7)").await;
    assert_eq!(outline(&a.until_ready().await), "C T D C ZT");
    assert_eq!(outline(&b.until_ready().await), "1 ZI");
    assert_eq!(prepares().await, before, "answered without the server");
    assert_eq!(query(&mut a, "COMMIT").await, "C ZI");
    assert_eq!(
        run(&mut b, Ext::new().bind("k2", &[]).execute().sync()).await,
        "2 D C ZI"
    );
}

/// Extended messages not yet synced, then a Query naming the client's statement, which the
/// connection no longer has (`max_prepared_statements` 1 closed it): the Query ends their
/// implicit transaction, as it does directly (an error at its commit is the Query's), whether
/// the statement prepares again or fails to.
async fn unsynced_then_execute(a: &mut Raw) -> Vec<String> {
    let mut got = vec![
        query(
            a,
            "CREATE TABLE dq (n int UNIQUE DEFERRABLE INITIALLY DEFERRED)",
        )
        .await,
    ];
    got.push(query(a, "INSERT INTO dq VALUES (1); CREATE TABLE dq_gone (x int)").await);
    got.push(run(a, Ext::new().parse("s1", "SELECT 1").sync()).await);
    got.push(run(a, Ext::new().parse("s3", "SELECT * FROM dq_gone").sync()).await);
    got.push(query(a, "DROP TABLE dq_gone").await);
    for (statement, n) in [("s1", b"1"), ("s3", b"2")] {
        got.push(run(a, Ext::new().parse("s2", "SELECT 2").sync()).await);
        got.push(run(a, Ext::new().close_statement("s2").sync()).await);
        let insert = Ext::new()
            .parse("", "INSERT INTO dq VALUES ($1::int)")
            .bind("", &[n])
            .execute()
            .flush();
        a.send(&insert.0).await;
        let mut replies = Vec::new();
        for _ in 0..3 {
            replies.extend(a.next().await);
        }
        got.push(outline(&replies));
        got.push(query(a, &format!("EXECUTE {statement}")).await);
        got.push(run(a, Ext::new().sync()).await);
    }
    got.push(outline(&a.query("SELECT count(*) FROM dq").await));
    got.push(query(a, "DROP TABLE dq").await);
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_after_unsynced_messages_ends_their_transaction_as_directly() {
    let pg = app_cluster();
    let direct: std::net::SocketAddr = format!("127.0.0.1:{}", pg.port).parse().unwrap();
    let want = unsynced_then_execute(&mut Raw::connect(direct, APP_USER, APP_PASSWORD).await).await;
    let proxy = TestProxy::builder(&pg)
        .pool_size(1)
        .pool("max_prepared_statements = 1")
        .start()
        .await;
    let mut a = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    let got = unsynced_then_execute(&mut a).await;
    assert_eq!(got, want, "through rotagate, then directly");
    assert!(want.iter().any(|o| o.contains("E:23505")), "{want:?}");
}
