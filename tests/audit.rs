//! The audit events the README promises: one JSON line per rotation attempt with target
//! `rotagate::audit` and the fields source, trigger, version, username, outcome, reason and
//! duration, with the values the README lists, and never a password.

mod common;

use common::*;

/// The audit lines of a JSON log, parsed.
fn audit_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "rotagate::audit")
        .collect()
}

fn field<'a>(line: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    &line["fields"][name]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rotation_attempt_is_one_audit_line_with_the_promised_fields() {
    let pg = app_cluster();
    let r = TestProxy::builder(&pg).spawn().await;
    r.ready().await;
    // Unchanged (debug level: the test runs with rotagate=debug), then a rejected candidate,
    // then a new password applied, each by POST /rotate.
    assert_eq!(r.post("/rotate", "").await.0, 200);
    write_secret(&r.secret_path(), &pg, APP_USER, "not-the-password");
    assert_eq!(r.post("/rotate", "").await.0, 422);
    pg.sql(&format!("ALTER ROLE {APP_USER} PASSWORD 'audited-pw'"));
    write_secret(&r.secret_path(), &pg, APP_USER, "audited-pw");
    assert_eq!(r.post("/rotate", "").await.0, 200);
    let log = r.stop().await;
    let lines = audit_lines(&log);
    let seen: Vec<(String, String)> = lines
        .iter()
        .filter(|l| field(l, "event") == "rotation")
        .map(|l| {
            let s = |n| field(l, n).as_str().unwrap_or_default().to_owned();
            (s("trigger"), s("outcome"))
        })
        .collect();
    let want = [
        ("start", "validated"),
        ("manual", "unchanged"),
        ("manual", "rejected"),
        ("manual", "applied"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(t, o)| (t.to_string(), o.to_string()))
        .collect();
    assert_eq!(seen, want, "{log}");
    for line in &lines {
        for name in ["database", "source", "version", "username", "reason"] {
            assert!(field(line, name).is_string(), "{name} in {line}");
        }
        assert!(field(line, "duration_ms").is_u64(), "duration_ms in {line}");
        assert_eq!(field(line, "source"), "file");
        assert_eq!(field(line, "username"), APP_USER);
    }
    let rejected = lines
        .iter()
        .find(|l| field(l, "outcome") == "rejected")
        .unwrap();
    assert!(
        !field(rejected, "reason").as_str().unwrap().is_empty(),
        "a rejection says why: {rejected}"
    );
    for secret in ["not-the-password", "audited-pw", APP_PASSWORD] {
        assert!(!log.contains(secret), "a password in the log");
    }
}
