//! Unit tests of the statement classifier.

use super::*;

fn pin(sql: &str) -> Option<PinReason> {
    classify(sql.as_bytes()).pin
}

#[test]
fn plain_statements_cost_nothing() {
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
        "select 1",
        "BEGIN; UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = 3; END;",
        "SELECT pg_advisory_xact_lock(1)",
        "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;",
        "INSERT INTO t VALUES (1)",
        "SELECT x INTO y FROM z",
        "SET LOCAL work_mem = '1MB'",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
        "DECLARE c CURSOR FOR SELECT threshold FROM t",
        "PREPARE TRANSACTION 'x'",
        "",
    ] {
        assert!(classify(sql.as_bytes()).is_plain(), "{sql}");
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
    ] {
        let c = classify(sql.as_bytes());
        assert!(c.settings && c.pin.is_none(), "{sql}: {c:?}");
    }
}

#[test]
fn custom_names_are_collected() {
    let c = classify(
        b"SET app.tenant_id = '42'; RESET \"My\".x; SELECT set_config('Rls.User', $1, false)",
    );
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
        ("LISTEN ch", Listen),
        ("select 1; listen ch", Listen),
        ("PREPARE q AS SELECT 1", SqlPrepare),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", WithHold),
        ("SELECT pg_advisory_lock(4242)", AdvisoryLock),
        ("SELECT pg_try_advisory_lock_shared(1, 2)", AdvisoryLock),
        ("LOAD 'auto_explain'", Other),
    ] {
        assert_eq!(pin(sql), Some(reason), "{sql}");
    }
}

#[test]
fn sole_statements_about_prepared_statements() {
    assert_eq!(
        classify(b"DEALLOCATE _pg3_0").sole,
        Some(Sole::Deallocate(b"_pg3_0".to_vec()))
    );
    assert_eq!(
        classify(b"deallocate prepare \"Q1\";").sole,
        Some(Sole::Deallocate(b"Q1".to_vec()))
    );
    let all = classify(b"DEALLOCATE ALL");
    assert_eq!(all.sole, Some(Sole::DeallocateAll));
    assert!(all.drops_statements);
    assert_eq!(classify(b"DISCARD ALL").sole, Some(Sole::DiscardAll));
    let two = classify(b"DISCARD ALL; SELECT 1");
    assert_eq!(two.sole, None);
    assert!(two.drops_statements);
    assert_eq!(classify(b"DEALLOCATE a; DEALLOCATE b").sole, None);
}

/// The classifier as it was written first: every byte looked at. The vectorised one must agree.
fn byte_by_byte(sql: &[u8]) -> Class {
    let mut class = Class::default();
    let (mut statements, mut start) = (0, 0);
    for (i, &b) in sql.iter().enumerate() {
        match b {
            b';' => {
                statements += one_statement(sql, start, i, &mut class);
                start = i + 1;
            }
            b'_' => underscore(sql, i, &mut class),
            b'i' | b'I' if (i == 0 || !is_ident(sql[i - 1])) && into_temp(sql, i) => {
                class.pin(PinReason::TempTable)
            }
            _ => {}
        }
    }
    statements += one_statement(sql, start, sql.len(), &mut class);
    if statements != 1 {
        class.sole = None;
    }
    class
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    #[test]
    fn the_vectorised_pass_agrees_with_looking_at_every_byte(
        words in proptest::collection::vec(proptest::sample::select(vec![
            "SELECT", "select", " ", ";", "_", "INTO", "into", "Into", "TEMP", "temp", "set", "config",
            "set_config('a.b', '1', false)", "pg_advisory_lock(1)", "pg_temp.t", "advisory", "lock",
            "DEALLOCATE", "ALL", "DISCARD", "LISTEN", "x", "i", "I", "--", "\n", "/*", "*/", "'", "SET",
            "work_mem", "=", "1", "CREATE", "TABLE", "t", "PREPARE", "WITH HOLD", "LOAD", "RESET",
        ]), 0..24)
    ) {
        let sql = words.concat();
        proptest::prop_assert_eq!(classify(sql.as_bytes()), byte_by_byte(sql.as_bytes()), "{}", sql);
    }
}
