//! Unit tests of the statement classifier.

use super::*;

fn elsewhere() -> Names {
    Names {
        catalog_first: false,
        ..Names::catalog()
    }
}

fn class(sql: &str) -> Class {
    classify(sql.as_bytes(), &Names::catalog())
}

fn pin(sql: &str) -> Option<PinReason> {
    class(sql).pin
}

#[test]
fn plain_statements_cost_nothing() {
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
        "select 1",
        "BEGIN; UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = 3; END;",
        "SELECT pg_advisory_xact_lock(1)",
        "INSERT INTO t VALUES (1)",
        "INSERT INTO s.t (a, b) VALUES ($1, lower($2)) RETURNING id",
        "SET LOCAL work_mem = '1MB'",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
        "DECLARE c CURSOR FOR SELECT threshold FROM t",
        "PREPARE TRANSACTION 'x'",
        "SELECT count(*), max(x)::numeric(10, 2), CAST(y AS varchar(9)) FROM t WHERE z IN (1, 2)",
        "SELECT n FROM generate_series(1, 3) AS g(n) JOIN lateral (SELECT 1) x ON (true)",
        "SELECT coalesce(a, 'x'), pg_catalog.format_type(t.oid, NULL) FROM pg_catalog.pg_type t",
        "WITH RECURSIVE r AS (SELECT 1) SELECT * FROM r -- a comment with SET ROLE x; in it",
        "SELECT '; SET ROLE x', $$ LISTEN c $$, E'\\' ; DO $x$' /* SET x */",
        "SELECT x INTO y FROM z WHERE false",
        "",
    ] {
        let c = class(sql);
        let plain = c.is_plain() || (sql.contains(" INTO y") && c.check && c.pin.is_none());
        assert!(plain, "{sql}: {c:?}");
    }
}

#[test]
fn settings_changes_are_noticed_wherever_they_are() {
    for sql in [
        "SET work_mem = '7MB'",
        "set search_path to a, b",
        "SET ROLE acc_role_a",
        "SET SESSION AUTHORIZATION u",
        "SELECT set_config('lock_timeout', '4321', false)",
        "select 1; SET statement_timeout = 5",
        "/* hi */ -- there\n RESET ALL",
        "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
        "DISCARD ALL",
        "DO $$ BEGIN PERFORM 1; END $$",
        "SELECT SET_CONFIG ( 'a', 'b', false )",
        "SELECT U&\"set\\005fconfig\"('role', 'lowpriv', false)",
        "SELECT \"set_config\"('role', 'lowpriv', false)",
        "SELECT pg_catalog . set_config /* c */ ('role', 'x', false)",
        "SELECT U&\"set!005fconfig\" UESCAPE '!' ('role', 'x', false)",
    ] {
        let c = class(sql);
        assert!(c.settings && c.pin.is_none(), "{sql}: {c:?}");
    }
}

#[test]
fn custom_names_are_collected() {
    let c =
        class("SET app.tenant_id = '42'; RESET \"My\".x; SELECT set_config('Rls.User', $1, false)");
    assert_eq!(c.custom, ["app.tenant_id", "My.x", "rls.user"]);
    assert_eq!(
        pin("SELECT set_config($1, $2, false)"),
        Some(PinReason::Other)
    );
}

#[test]
fn state_that_cannot_move_pins() {
    use PinReason::*;
    for (sql, reason) in [
        ("CREATE TEMP TABLE t (x int)", TempTable),
        ("create temporary table t as select 1", TempTable),
        ("CREATE GLOBAL TEMPORARY TABLE t (x int)", TempTable),
        ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", TempTable),
        ("SELECT 1 INTO TEMP t", TempTable),
        ("CREATE TABLE pg_temp.t (x int)", TempTable),
        ("CREATE TABLE U&\"pg\\005ftemp\".t (x int)", TempTable),
        ("CREATE TABLE \"pg_temp\".t (x int)", TempTable),
        ("EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1", TempTable),
        (
            "EXPLAIN (ANALYZE, COSTS OFF) CREATE TEMP TABLE t AS SELECT 1",
            TempTable,
        ),
        ("LISTEN ch", Listen),
        ("select 1; listen ch", Listen),
        ("/* x */ LISTEN \"Ch\"", Listen),
        ("PREPARE q AS SELECT 1", SqlPrepare),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", WithHold),
        ("SELECT pg_advisory_lock(4242)", AdvisoryLock),
        ("SELECT pg_try_advisory_lock_shared(1, 2)", AdvisoryLock),
        ("SELECT U&\"pg\\005fadvisory\\005flock\"(7)", AdvisoryLock),
        ("SELECT \"pg_advisory_lock\"(7)", AdvisoryLock),
        ("SELECT pg_catalog.pg_advisory_lock(7)", AdvisoryLock),
        ("LOAD 'auto_explain'", Other),
    ] {
        assert_eq!(pin(sql), Some(reason), "{sql}");
    }
}

#[test]
fn what_is_not_proven_plain_is_checked() {
    for sql in [
        "SELECT public.f()",
        "SELECT f()",
        "SELECT \"lower\"(x) FROM t; SELECT my_func(1)",
        "SELECT nextval('s')",
        "DO $$ BEGIN CREATE TEMP TABLE audit (v text); END $$",
        "DO $$ BEGIN EXECUTE 'LISTEN c'; END $$",
        "CALL p()",
        "EXPLAIN ANALYZE SELECT f()",
        "CREATE TABLE t (x int)",
        "ALTER TABLE t ADD COLUMN y int",
        "SELECT 1 +++ 2",
        "SELECT 'unterminated",
        "SELECT $$ unterminated",
        "SELECT /* unterminated",
        "VACUUM t",
        "SELECT x INTO t FROM y",
        "SELECT evil.lower('x')",
    ] {
        assert!(class(sql).check, "{sql}: {:?}", class(sql));
    }
    // Allow-listed names reach pg_catalog only while the search_path does not lead elsewhere.
    assert!(!classify(b"SELECT lower('x')", &Names::catalog()).check);
    assert!(classify(b"SELECT lower('x')", &elsewhere()).check);
    assert!(!classify(b"SELECT pg_catalog.lower('x')", &elsewhere()).check);
}

#[test]
fn a_backslash_is_read_both_ways() {
    // With standard_conforming_strings off, the string ends at the second quote, and the SET is
    // a statement of its own; with it on, the first string ends at the backslash.
    let c = class("SELECT 'a\\'; SET ROLE x; --'");
    assert!(c.settings, "{c:?}");
    let c = class("SELECT E'a\\''; SELECT 'b\\'; LISTEN c; --'");
    assert_eq!(c.pin, Some(PinReason::Listen), "{c:?}");
}

#[test]
fn sole_statements_about_prepared_statements() {
    assert_eq!(
        class("DEALLOCATE _pg3_0").sole,
        Some(Sole::Deallocate(b"_pg3_0".to_vec()))
    );
    assert_eq!(
        class("deallocate prepare \"Q1\";").sole,
        Some(Sole::Deallocate(b"Q1".to_vec()))
    );
    let all = class("DEALLOCATE ALL");
    assert_eq!(all.sole, Some(Sole::DeallocateAll));
    assert!(all.drops_statements);
    assert_eq!(class("DISCARD ALL").sole, Some(Sole::DiscardAll));
    let two = class("DISCARD ALL; SELECT 1");
    assert_eq!(two.sole, None);
    assert!(two.drops_statements);
    assert_eq!(class("DEALLOCATE a; DEALLOCATE b").sole, None);
}

const SOUP: &[&str] = &[
    "SELECT",
    "select",
    " ",
    ";",
    "_",
    "INTO",
    "into",
    "TEMP",
    "temp",
    "set",
    "config",
    "(",
    ")",
    "set_config('a.b', '1', false)",
    "pg_advisory_lock(1)",
    "pg_temp.t",
    "advisory",
    "lock",
    "DEALLOCATE",
    "ALL",
    "DISCARD",
    "LISTEN",
    "x",
    "i",
    "--",
    "\n",
    "/*",
    "*/",
    "'",
    "\"",
    "SET",
    "work_mem",
    "=",
    "1",
    "CREATE",
    "TABLE",
    "t",
    "PREPARE",
    "WITH HOLD",
    "LOAD",
    "RESET",
    "$$",
    "$a$",
    "$1",
    "U&",
    "E'",
    "\\",
    "UESCAPE",
    "'!'",
    "::",
    ".",
    ",",
    "+",
    "<>",
    "é",
    "\u{0}",
    "DO",
    "EXPLAIN",
    "ANALYZE",
    "lower",
    "count(*)",
    "INSERT",
    "BEGIN",
    "COMMIT",
];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
    /// What the cheap pass proves plain, the lexer proves plain too; and nothing panics.
    #[test]
    fn the_quick_pass_never_proves_more_than_the_lexer(
        words in proptest::collection::vec(proptest::sample::select(SOUP.to_vec()), 0..24)
    ) {
        let sql = words.concat();
        let lexed = super::lexed_both(sql.as_bytes(), &Names::catalog());
        if super::quick::plain(sql.as_bytes()) {
            proptest::prop_assert!(lexed.is_plain(), "{}: {:?}", sql, lexed);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        let _ = classify(&bytes, &Names::catalog());
        let _ = classify(&bytes, &elsewhere());
    }
}
