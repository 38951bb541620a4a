//! The binary as users run it: check-config, hash-password, and a whole run whose logs,
//! metrics and status must never contain a password.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rotagate"))
}

#[test]
fn check_config_lists_every_bad_field_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[listen]\naddr = \"nowhere\"\n[pool]\nmode = \"sometimes\"\nsize = 0\n",
    )
    .unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for field in [
        "listen.addr",
        "pool.mode",
        "pool.size",
        "upstream",
        "clients",
        "credentials.source",
    ] {
        assert!(err.contains(field), "{field} not named in:\n{err}");
    }
}

#[test]
fn run_refuses_a_token_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "s3cret-admin-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\
             [[clients]]\nuser = \"a\"\npassword = \"p\"\n[upstream]\nhost = \"db\"\ndatabase = \"d\"\n\
             [credentials]\nsource = \"file\"\n[credentials.file]\npath = \"/x\"\n",
            token.display()
        ),
    )
    .unwrap();
    let out = bin().args(["run", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("admin.token_file") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!err.contains("s3cret-admin-token"));
}

#[test]
fn check_config_reads_rotagate_config_and_env_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.toml");
    std::fs::write(
        &path,
        "[[clients]]\nuser = \"a\"\npassword = \"p\"\n[upstream]\nhost = \"db\"\ndatabase = \"d\"\n\
         [credentials]\nsource = \"file\"\n[credentials.file]\npath = \"/x\"\n",
    )
    .unwrap();
    let ok = bin()
        .arg("check-config")
        .env("ROTAGATE_CONFIG", &path)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = bin()
        .arg("check-config")
        .env("ROTAGATE_CONFIG", &path)
        .env("ROTAGATE_POOL__SIZE", "-3")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("pool.size"));
}

#[test]
fn hash_password_prints_a_verifier_and_hides_nothing_else() {
    let mut child = bin()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret-input\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("SCRAM-SHA-256$4096:"), "{text}");
    assert!(!text.contains("s3cret-input"));
    assert!(rotagate::frontend::scram::parse_verifier(text.trim()).is_some());
}

/// Runs the real binary through logins (good and bad), queries and a shutdown, then searches
/// everything it printed and served for every password involved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_reaches_logs_metrics_or_status() {
    let pg = app_cluster();
    let r = TestProxy::builder(&pg)
        .pool_size(2)
        .pool("acquire_timeout = \"2s\"")
        .var("RUST_LOG", "debug")
        .spawn()
        .await;
    r.ready().await;
    let (port, admin_addr, secret) = (r.proxy_addr().port(), r.admin_addr(), r.secret_path());
    let url = |pw: &str| {
        format!("host=127.0.0.1 port={port} user={CLIENT_USER} password={pw} dbname=appdb")
    };
    let (client, conn) = tokio_postgres::connect(&url(CLIENT_PASSWORD), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();
    assert!(
        tokio_postgres::connect(&url("wrong-guess-pw"), tokio_postgres::NoTls)
            .await
            .is_err()
    );
    // A rotation, then a secret whose password the database refuses.
    pg.sql(&format!("ALTER ROLE {APP_USER} PASSWORD 'rotated-in-pw'"));
    write_secret(&secret, &pg, APP_USER, "rotated-in-pw");
    let status = || async { http(admin_addr, "GET", "/status").await.1 };
    wait_until(20, "the rotation", || async {
        status().await.contains("\"generation\":2")
    })
    .await;
    write_secret(&secret, &pg, APP_USER, "rejected-pw-xyz");
    wait_until(20, "the rejection", || async {
        status().await.contains("\"outcome\":\"rejected\"")
    })
    .await;
    // A broken upstream password: logins fail upstream and are logged.
    pg.sql(&format!("ALTER ROLE {APP_USER} PASSWORD 'rotated-away-pw'"));
    pg.sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{APP_USER}'"
    ));
    let _ = client.simple_query("SELECT 1").await;
    let served = [
        http(admin_addr, "GET", "/metrics").await.1,
        http(admin_addr, "GET", "/status").await.1,
    ]
    .join("\n");
    assert!(served.contains("rotagate_"), "{served}");
    let logs = r.stop().await;
    assert!(
        logs.contains("upstream login failed"),
        "the failure path was exercised:\n{logs}"
    );
    // Every secret rotagate was given: the first upstream password, the client's, the one it
    // rotated to and served, and the candidate it rejected. (A client's wrong guess never
    // reaches it, SCRAM sends a proof; the password set behind its back was never given.)
    for pw in [
        APP_PASSWORD,
        CLIENT_PASSWORD,
        "rotated-in-pw",
        "rejected-pw-xyz",
    ] {
        assert!(!logs.contains(pw), "{pw} in logs:\n{logs}");
        assert!(!served.contains(pw), "{pw} served by the admin listener");
    }
}

/// `rotagate healthcheck` is the container's HEALTHCHECK: 0 for a live admin listener, 1 for
/// none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_for_a_live_admin_listener_and_1_otherwise() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).start().await;
    let run = |addr: String| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_rotagate"))
            .args(["healthcheck", "--addr", &addr])
            .output()
    };
    let live = run(proxy.admin.to_string()).await.unwrap();
    assert!(live.status.success(), "{live:?}");
    let dead = run(format!("127.0.0.1:{}", pg::free_port())).await.unwrap();
    assert_eq!(dead.status.code(), Some(1));
}
