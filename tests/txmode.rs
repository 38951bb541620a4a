//! Transaction mode with a one- or two-connection pool, so that clients share connections:
//! each client's session settings hold for it and nobody else; state that cannot move pins its
//! client (or is refused with `on_pin = "error"`); a pinned connection is closed when its
//! client leaves.

mod common;

use common::*;
use std::time::Duration;

const PROBE: &str = "SELECT current_setting('work_mem') || ' ' || current_user || ' ' || \
     current_setting('search_path') || ' ' || current_setting('lock_timeout') || ' ' || \
     coalesce(current_setting('app.tenant', true), '-')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_keeps_its_own_settings_on_a_shared_connection() {
    let pg = app_cluster();
    pg.sql(&format!(
        "CREATE ROLE role_a NOLOGIN; CREATE ROLE role_b NOLOGIN; GRANT role_a, role_b TO {APP_USER}"
    ));
    let proxy = TestProxy::builder(&pg).pool_size(1).start().await;
    let (a, b) = (proxy.client().await, proxy.client().await);
    let fresh = one(&b, PROBE).await;
    assert_eq!(fresh, format!("4MB {APP_USER} \"$user\", public 0 -"));
    a.batch_execute(
        "SET work_mem = '7MB'; SET ROLE role_a; SET search_path TO s_a, public; \
         SELECT set_config('lock_timeout', '4321', false); SET app.tenant = 'a'",
    )
    .await
    .unwrap();
    assert_eq!(one(&b, PROBE).await, fresh, "B must not see A's settings");
    b.batch_execute(
        "SET work_mem = '3MB'; SET ROLE role_b; SELECT set_config('app.tenant', 'b', false)",
    )
    .await
    .unwrap();
    for _ in 0..3 {
        assert_eq!(one(&a, PROBE).await, "7MB role_a s_a, public 4321ms a");
        assert_eq!(
            one(&b, PROBE).await,
            format!("3MB role_b \"$user\", public 0 b")
        );
    }
    // Undone by ROLLBACK, or local to a transaction: not carried. RESET is.
    a.batch_execute("BEGIN; SET work_mem = '9MB'; ROLLBACK; BEGIN; SET LOCAL lock_timeout = 5; COMMIT; RESET search_path")
        .await
        .unwrap();
    assert_eq!(one(&b, "SELECT 1").await, "1");
    assert_eq!(
        one(&a, PROBE).await,
        "7MB role_a \"$user\", public 4321ms a"
    );
    // DISCARD ALL returns A to what it had at login.
    a.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(one(&b, "SELECT 1").await, "1");
    assert_eq!(
        one(&a, PROBE).await,
        format!("4MB {APP_USER} \"$user\", public 0 ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_settings_are_each_clients_own() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).pool_size(1).start().await;
    let a = proxy
        .connect(&format!("{} application_name=alpha", proxy.url()))
        .await
        .unwrap();
    let b = proxy.client().await;
    let zone = one(&b, "SHOW TimeZone").await;
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'German'")
        .await
        .unwrap();
    assert_eq!(one(&b, "SHOW TimeZone").await, zone);
    assert_eq!(one(&b, "SHOW application_name").await, "");
    assert_eq!(one(&a, "SHOW TimeZone").await, "Asia/Tokyo");
    assert_eq!(one(&a, "SHOW DateStyle").await, "German, DMY");
    a.batch_execute("RESET application_name").await.unwrap();
    assert_eq!(one(&b, "SHOW application_name").await, "");
    assert_eq!(
        one(&a, "SHOW application_name").await,
        "alpha",
        "RESET returns to the startup value, as in PostgreSQL"
    );
}

async fn pinned(proxy: &impl Endpoints) -> f64 {
    proxy.metric("rotagate_pinned_clients", "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_pins_its_client_and_the_connection_closes_after() {
    let pg = app_cluster();
    let r = TestProxy::builder(&pg).pool_size(2).spawn().await;
    r.ready().await;
    for (setup, mine, theirs, reason) in [
        (
            "CREATE TEMP TABLE t_pin (x int)",
            "SELECT (to_regclass('t_pin') IS NOT NULL)::int",
            "SELECT (to_regclass('t_pin') IS NOT NULL)::int",
            "temp_table",
        ),
        (
            "PREPARE q_pin AS SELECT 1",
            "EXECUTE q_pin",
            "SELECT count(*) FROM pg_prepared_statements WHERE name = 'q_pin'",
            "sql_prepare",
        ),
        (
            "DECLARE c_pin CURSOR WITH HOLD FOR SELECT 1 FROM generate_series(1, 10)",
            "FETCH 1 FROM c_pin",
            "SELECT count(*) FROM pg_cursors WHERE name = 'c_pin'",
            "with_hold",
        ),
        (
            "SELECT pg_advisory_lock(77)",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 77 AND pid = pg_backend_pid()",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 77 AND pid = pg_backend_pid()",
            "advisory_lock",
        ),
    ] {
        let (a, b) = (r.client().await, r.client().await);
        a.batch_execute(setup).await.unwrap();
        let pid = one(&a, "SELECT pg_backend_pid()").await;
        for _ in 0..3 {
            assert_eq!(one(&a, mine).await, "1", "{reason}: A's own state");
            assert_eq!(one(&b, theirs).await, "0", "{reason}: B sees A's state");
            assert_eq!(one(&a, "SELECT pg_backend_pid()").await, pid, "{reason}");
        }
        assert_eq!(pinned(&r).await, 1.0, "{reason}");
        let label = format!("reason=\"{reason}\"");
        assert_eq!(r.metric("rotagate_pins_total", &label).await, 1.0);
        drop(a);
        wait_until(10, "the pinned connection to close", || async {
            pg.sql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
            )) == "0"
        })
        .await;
        assert_eq!(pinned(&r).await, 0.0, "{reason}");
        assert_eq!(one(&b, theirs).await, "0", "{reason}: after A left");
    }
    assert!(
        r.stop()
            .await
            .contains("client pinned to its upstream connection")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_listener_gets_notifications_while_idle_and_nobody_else_does() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).pool_size(2).start().await;
    let (client, mut conn) = tokio_postgres::connect(&proxy.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        use futures::StreamExt;
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client.batch_execute("LISTEN ch_pin").await.unwrap();
    let b = proxy.client().await;
    b.batch_execute("NOTIFY ch_pin, 'from-b'").await.unwrap();
    pg.sql_in("appdb", "NOTIFY ch_pin, 'from-outside'");
    for want in ["from-b", "from-outside"] {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert_eq!(got.ok().flatten().as_deref(), Some(want));
    }
    // B never listened: nothing arrives for it, whatever connection it used.
    let (b2, mut conn2) = tokio_postgres::connect(&proxy.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let leaked = tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| conn2.poll_message(cx));
        use futures::StreamExt;
        stream.next().await.is_some_and(|m| m.is_ok())
    });
    for _ in 0..5 {
        b2.batch_execute("SELECT 1").await.unwrap();
    }
    pg.sql_in("appdb", "NOTIFY ch_pin, 'again'");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .ok()
            .flatten()
            .as_deref(),
        Some("again")
    );
    drop(b2);
    assert!(
        !leaked.await.unwrap(),
        "a client that never listened got a notification"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_pin_error_refuses_the_statement_and_the_session_goes_on() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg)
        .pool_size(1)
        .pool("on_pin = \"error\"")
        .start()
        .await;
    let a = proxy.client().await;
    for (sql, word) in [
        ("CREATE TEMP TABLE t_refused (x int)", "temporary table"),
        ("LISTEN ch_refused", "LISTEN"),
        ("SELECT pg_advisory_lock(1)", "advisory lock"),
    ] {
        let e = a.batch_execute(sql).await.unwrap_err();
        let db = e.as_db_error().expect("an error response");
        assert_eq!(db.code().code(), "0A000", "{sql}");
        assert!(db.message().contains(word), "{sql}: {}", db.message());
        assert_eq!(one(&a, "SELECT 42").await, "42");
    }
    // In a transaction the refusal aborts it, as any error would.
    a.batch_execute("BEGIN").await.unwrap();
    assert!(
        a.batch_execute("CREATE TEMP TABLE t_in_tx (x int)")
            .await
            .is_err()
    );
    let e = a.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("25P02"));
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        one(
            &a,
            "SELECT count(*) FROM pg_class WHERE relname LIKE 't_refused%' OR relname = 't_in_tx'"
        )
        .await,
        "0"
    );
}

/// What a client's reads of `pg_prepared_statements` show, by Query and by the extended
/// protocol, outside and inside a transaction block, after a DEALLOCATE.
async fn view_reads(a: &mut common::wire::Raw) -> Vec<String> {
    use common::wire::{Ext, first_column};
    const LIST: &str = "SELECT coalesce(string_agg(name || ':' || statement || ':' || \
         parameter_types::text || ':' || from_sql, ' | ' ORDER BY prepare_time), '-') \
         FROM pg_prepared_statements";
    const COUNT: &str = "SELECT count(*) FROM pg_catalog.pg_prepared_statements AS p \
         WHERE p.name = 's1'";
    let mut got = Vec::new();
    let read = async |a: &mut common::wire::Raw, got: &mut Vec<String>| {
        got.push(first_column(&a.query(LIST).await).join(","));
        let e = Ext::new().parse("", COUNT).bind("", &[]).execute().sync();
        a.send(&e.0).await;
        got.push(first_column(&a.until_ready().await).join(","));
    };
    read(a, &mut got).await;
    for (name, sql) in [("s1", "SELECT $1::int"), ("s2", "SELECT $1::date, 'it''s'")] {
        a.send(&Ext::new().parse(name, sql).sync().0).await;
        a.until_ready().await;
    }
    read(a, &mut got).await;
    a.query("BEGIN").await;
    read(a, &mut got).await;
    a.query("COMMIT").await;
    a.query("DEALLOCATE s1").await;
    read(a, &mut got).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_own_statements_in_pg_prepared_statements() {
    use common::wire::{Ext, Raw};
    let pg = app_cluster();
    let direct: std::net::SocketAddr = format!("127.0.0.1:{}", pg.port).parse().unwrap();
    let want = view_reads(&mut Raw::connect(direct, APP_USER, APP_PASSWORD).await).await;
    assert!(
        want[2].starts_with("s1:SELECT $1::int:{integer}:false | s2:"),
        "{want:?}"
    );
    let proxy = TestProxy::builder(&pg)
        .pool_size(1)
        .pool("prepared_statements_view = \"client\"")
        .start()
        .await;
    // Another client's statements share the connection; they are not the reader's.
    let mut other = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    other
        .send(&Ext::new().parse("o1", "SELECT $1::int").sync().0)
        .await;
    other.until_ready().await;
    let mut a = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    let got = view_reads(&mut a).await;
    assert_eq!(got, want, "through rotagate, then directly");
    // By default the view is the upstream connection's: rotagate's names, every client's.
    let proxy = TestProxy::builder(&pg).pool_size(1).start().await;
    let mut a = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    a.send(&Ext::new().parse("s1", "SELECT $1::int").sync().0)
        .await;
    a.until_ready().await;
    let names = common::wire::first_column(
        &a.query("SELECT string_agg(name, ',') FROM pg_prepared_statements")
            .await,
    );
    assert!(
        names.len() == 1 && names[0].starts_with("rotagate_"),
        "{names:?}"
    );
}
