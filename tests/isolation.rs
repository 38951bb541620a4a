//! Transaction-mode isolation that SQL cannot talk its way around (design 9.2): what client A
//! sends, however it is quoted, commented, escaped or hidden in a function, procedure, DO block
//! or EXPLAIN, ends carried (A's settings follow A), pinned (A keeps its connection) or refused
//! (0A000), and client B, on the same upstream connection, never sees it.

mod common;

use common::pg::Pg;
use common::wire::Raw;
use common::*;

/// Functions and a procedure that change the session out of sight of the statement text.
const SETUP: &str = "
CREATE ROLE lowpriv NOLOGIN;
GRANT lowpriv TO app_owner;
CREATE FUNCTION public.sets_path() RETURNS int LANGUAGE plpgsql AS
  $$ BEGIN SET search_path = pg_catalog, public, a_path; RETURN 1; END $$;
CREATE FUNCTION public.makes_temp() RETURNS int LANGUAGE plpgsql AS
  $$ BEGIN CREATE TEMP TABLE f_tmp (v text); RETURN 1; END $$;
CREATE FUNCTION public.upper(int) RETURNS int LANGUAGE plpgsql AS
  $$ BEGIN EXECUTE 'LISTEN shadow'; RETURN $1; END $$;
CREATE PROCEDURE public.locks() LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_advisory_lock(4343); END $$;
";

/// What B reads: its role, search_path, temporary tables, channels, SQL statements, locks and
/// holdable cursors. A fresh session reads `app_owner|"$user", public|0|0|0|0|0`.
const SEEN: &str = "SELECT current_user || '|' || current_setting('search_path') || '|' || \
     (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) || '|' || \
     (SELECT count(*) FROM pg_listening_channels()) || '|' || \
     (SELECT count(*) FROM pg_prepared_statements WHERE from_sql) || '|' || \
     (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) || '|' || \
     (SELECT count(*) FROM pg_cursors WHERE is_holdable)";

const FRESH: &str = "app_owner|\"$user\", public|0|0|0|0|0";

async fn setup() -> Pg {
    let pg = app_cluster();
    pg.sql_in("appdb", SETUP);
    pg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_settings_are_carried_with_their_client() {
    let pg = setup().await;
    let proxy = TestProxy::builder(&pg).pool_size(1).start().await;
    for (sql, want) in [
        (
            "SELECT U&\"set\\005fconfig\"('role', 'lowpriv', false)",
            "lowpriv|\"$user\", public",
        ),
        (
            "SELECT \"set_config\" /* c */ ('role', 'lowpriv', false)",
            "lowpriv|\"$user\", public",
        ),
        (
            "SELECT U&\"set!005fconfig\" UESCAPE '!' ('role', 'lowpriv', false)",
            "lowpriv|\"$user\", public",
        ),
        (
            "SELECT public.sets_path()",
            "app_owner|pg_catalog, public, a_path",
        ),
        ("SELECT sets_path()", "app_owner|pg_catalog, public, a_path"),
        (
            "DO $d$ BEGIN PERFORM set_config('role', 'lowpriv', false); END $d$",
            "lowpriv|\"$user\", public",
        ),
        (
            "EXPLAIN ANALYZE SELECT public.sets_path()",
            "app_owner|pg_catalog, public, a_path",
        ),
    ] {
        let (a, b) = (proxy.client().await, proxy.client().await);
        a.batch_execute(sql).await.unwrap();
        let mine = "SELECT current_user || '|' || current_setting('search_path')";
        for _ in 0..2 {
            assert_eq!(one(&b, SEEN).await, FRESH, "{sql}: B sees A's settings");
            assert_eq!(one(&a, mine).await, want, "{sql}: A's own settings");
        }
    }
}

/// Each A statement leaves state that cannot be carried; `reason` is how it is found.
const STATE: &[(&str, &str)] = &[
    (
        "DO $$ BEGIN CREATE TEMP TABLE audit (v text); END $$",
        "detected",
    ),
    ("DO $$ BEGIN EXECUTE 'LISTEN c'; END $$", "detected"),
    (
        "DO $$ BEGIN EXECUTE 'PREPARE p AS SELECT 1'; END $$",
        "detected",
    ),
    ("SELECT public.makes_temp()", "detected"),
    ("select MAKES_TEMP() -- a comment", "detected"),
    ("CALL public.locks()", "detected"),
    ("SELECT upper(1)", "detected"),
    (
        "DO $x$ BEGIN EXECUTE $y$DECLARE hc CURSOR WITH HOLD FOR SELECT 1$y$; END $x$",
        "detected",
    ),
    (
        "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
        "temp_table",
    ),
    ("CREATE TABLE U&\"pg\\005ftemp\".t (x int)", "temp_table"),
    ("CREATE TABLE \"pg_temp\" . t (x int)", "temp_table"),
    (
        "SELECT U&\"pg\\005fadvisory\\005flock\"(7)",
        "advisory_lock",
    ),
    ("SELECT pg_catalog.\"pg_advisory_lock\"(7)", "advisory_lock"),
    ("/* */ LISTEN/**/c", "listen"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_state_pins_its_client_and_nobody_else_sees_it() {
    let pg = setup().await;
    let r = TestProxy::builder(&pg).pool_size(2).spawn().await;
    r.ready().await;
    let mut counted = 0.0;
    for (sql, reason) in STATE {
        let (a, b) = (r.client().await, r.client().await);
        a.batch_execute(sql).await.unwrap();
        let pid = one(&a, "SELECT pg_backend_pid()").await;
        for _ in 0..3 {
            assert_eq!(one(&b, SEEN).await, FRESH, "{sql}: B sees A's state");
            assert_eq!(
                one(&a, "SELECT pg_backend_pid()").await,
                pid,
                "{sql}: A keeps its connection"
            );
        }
        assert_ne!(one(&a, SEEN).await, FRESH, "{sql}: A's state is there");
        assert_eq!(r.metric("rotagate_pinned_clients", "").await, 1.0, "{sql}");
        if *reason == "detected" {
            counted += 1.0;
            let got = r.metric("rotagate_pins_total", "reason=\"detected\"").await;
            assert_eq!(got, counted, "{sql}: counted as detected");
        }
        drop(a);
        wait_until(10, "the pinned connection to close", || async {
            pg.sql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
            )) == "0"
        })
        .await;
        assert_eq!(one(&b, SEEN).await, FRESH, "{sql}: after A left");
    }
    let log = r.stop().await;
    assert!(log.contains("the check after the transaction found session state"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_connection_state_is_refused_or_ends_its_session_and_others_go_on() {
    let pg = setup().await;
    let proxy = TestProxy::builder(&pg).pool_size(1).start().await;
    let b = proxy.client().await;
    for (sql, reason) in STATE {
        let mut a = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
        let got = a.query(sql).await;
        if *reason == "detected" {
            // It ran; what it left cannot be kept, so the connection went and A is told.
            let rest = a.until_closed().await;
            let end = rest.iter().chain(&got).find(|m| m.tag == b'E');
            let end = end.unwrap_or_else(|| panic!("{sql}: no error: {}", wire::tags(&got)));
            assert_eq!(
                (end.severity(), end.code()),
                ("FATAL".into(), "0A000".into()),
                "{sql}"
            );
            assert!(end.text().contains("pool.max_pinned = 0"), "{}", end.text());
        } else {
            let (code, _) = wire::sole_error(&got);
            let text = got.iter().find(|m| m.tag == b'E').unwrap().text();
            assert_eq!(code, "0A000", "{sql}: {text}");
            assert!(text.contains("pool.max_pinned"), "{sql}: {text}");
            assert_eq!(wire::first_column(&a.query("SELECT 7").await), ["7"]);
        }
        // B is served on the one connection and never sees A's state.
        assert_eq!(one(&b, SEEN).await, FRESH, "{sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_clients_never_hold_the_last_connection() {
    let pg = setup().await;
    let proxy = TestProxy::builder(&pg)
        .pool_size(2)
        .pool("acquire_timeout = \"3s\"")
        .start()
        .await;
    let a1 = proxy.client().await;
    a1.batch_execute("CREATE TEMP TABLE mine (x int)")
        .await
        .unwrap();
    let a2 = proxy.client().await;
    let e = a2.batch_execute("LISTEN c").await.unwrap_err();
    let db = e.as_db_error().expect("an error response");
    assert_eq!(db.code().code(), "0A000");
    assert!(
        db.message().contains("pool.max_pinned = 1"),
        "{}",
        db.message()
    );
    // The second pin, found after the fact, ends that session rather than starve the pool.
    let e = a2
        .batch_execute("DO $$ BEGIN EXECUTE 'LISTEN c'; END $$")
        .await;
    let next = a2.batch_execute("SELECT 1").await;
    assert!(
        e.is_err() || next.is_err(),
        "the session went on with state it may not keep"
    );
    // Everyone else is served meanwhile.
    let clients: Vec<_> = futures::future::join_all((0..4).map(|_| proxy.client())).await;
    for c in &clients {
        assert_eq!(one(c, SEEN).await, FRESH);
    }
    assert_eq!(one(&a1, "SELECT count(*) FROM mine").await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_pin_error_ends_a_session_whose_state_was_found_after_the_fact() {
    let pg = setup().await;
    let proxy = TestProxy::builder(&pg)
        .pool_size(2)
        .pool("on_pin = \"error\"")
        .start()
        .await;
    let b = proxy.client().await;
    let mut a = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    let mut got = a
        .query("DO $$ BEGIN CREATE TEMP TABLE audit (v text); END $$")
        .await;
    got.extend(a.until_closed().await);
    let end = got.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(
        (end.severity(), end.code()),
        ("FATAL".into(), "0A000".into())
    );
    assert!(end.text().contains("temp_table") && end.text().contains("pool.on_pin"));
    for _ in 0..3 {
        assert_eq!(one(&b, SEEN).await, FRESH);
    }
}

/// Every name of the allow-list is a function in pg_catalog of a real PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_allowed_function_is_in_pg_catalog() {
    let pg = app_cluster();
    let names: Vec<&str> = include_str!("../src/frontend/transaction/allowed_functions.txt")
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert!(names.len() > 200);
    let list = names
        .iter()
        .map(|n| format!("('{n}')"))
        .collect::<Vec<_>>()
        .join(", ");
    let missing = pg.sql(&format!(
        "SELECT coalesce(string_agg(n, ' '), '') FROM (VALUES {list}) AS v(n) \
         WHERE NOT EXISTS (SELECT FROM pg_proc WHERE proname = n \
           AND pronamespace = 'pg_catalog'::regnamespace)"
    ));
    assert_eq!(missing, "", "not functions in pg_catalog");
}
