//! Credential rotation against a real PostgreSQL: under load in both pool modes, across an
//! open transaction, to another user, rejected secrets, the breaker, `POST /rotate`, and a
//! restart from the encrypted cache.

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

async fn rejected(proxy: &TestProxy) -> u64 {
    let metrics = proxy.get("/metrics").await.1;
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("rotagate_rotations_total{result=\"rejected\",database=\"appdb\"} ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn rotate(proxy: &TestProxy) -> serde_json::Value {
    let (code, body) = proxy.post("/rotate", "").await;
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{code}: {body}"));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_under_load_are_invisible_to_clients_in_both_modes() {
    let pg = app_cluster();
    for mode in ["transaction", "session"] {
        let proxy = TestProxy::builder(&pg)
            .mode(mode)
            .pool_size(8)
            .pool("max_lifetime = \"1s\"")
            .start()
            .await;
        let stop = Arc::new(AtomicBool::new(false));
        let (done, errors) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut workers = Vec::new();
        for _ in 0..6 {
            let client = proxy.client().await;
            let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.simple_query("SELECT count(*) FROM pg_class").await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("client error: {e:?}");
                            errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
        let g0 = proxy.generation().await;
        for i in 0..4 {
            proxy
                .rotate_to(&pg, APP_USER, &format!("{mode}-rotated-{i}"))
                .await;
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.await.unwrap();
        }
        assert_eq!(
            errors.load(Ordering::Relaxed),
            0,
            "{mode}: clients saw the rotations"
        );
        assert!(done.load(Ordering::Relaxed) > 0);
        assert_eq!(proxy.generation().await, g0 + 4, "{mode}");
        proxy.stop().await.unwrap();
        pg.sql(&format!("ALTER ROLE {APP_USER} PASSWORD '{APP_PASSWORD}'"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_commits_on_its_old_connection_after_a_rotation() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).start().await;
    let client = proxy.client().await;
    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query("CREATE TABLE spans_rotation (x int)")
        .await
        .unwrap();
    let old_pid = one(&client, "SELECT pg_backend_pid()").await;
    proxy
        .rotate_to(&pg, APP_USER, "rotated-mid-transaction")
        .await;
    assert_eq!(
        one(&client, "SELECT pg_backend_pid()").await,
        old_pid,
        "still on its connection"
    );
    client.simple_query("COMMIT").await.unwrap();
    assert_eq!(
        pg.sql_in(
            "appdb",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'spans_rotation'"
        ),
        "1"
    );
    // Checked in after its generation was retired, the old connection is closed.
    wait_until(10, "the old-generation connection to close", || async {
        pg.sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {old_pid}"
        )) == "0"
    })
    .await;
    assert_ne!(one(&client, "SELECT pg_backend_pid()").await, old_pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_naming_another_user_switches_users() {
    let pg = app_cluster();
    pg.sql(&format!(
        "CREATE ROLE app_b LOGIN PASSWORD 'pw-b' IN ROLE {APP_USER}"
    ));
    let proxy = TestProxy::builder(&pg).start().await;
    let client = proxy.client().await;
    assert_eq!(one(&client, "SELECT current_user").await, APP_USER);
    let g = proxy.generation().await;
    write_secret(&proxy.secret, &pg, "app_b", "pw-b");
    wait_until(20, "the switch", || async { proxy.generation().await > g }).await;
    assert_eq!(one(&client, "SELECT current_user").await, "app_b");
    let status: serde_json::Value = serde_json::from_str(&proxy.get("/status").await.1).unwrap();
    assert_eq!(status["credential"]["username"], "app_b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_secrets_are_rejected_and_the_breaker_opens_then_recovers() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg)
        .credentials("breaker_failures = 2\nbreaker_cooldown = \"1500ms\"")
        .start()
        .await;
    let client = proxy.client().await;
    let g = proxy.generation().await;
    // The file watcher picks each bad secret up; the attempts are counted as rejected.
    write_secret(&proxy.secret, &pg, APP_USER, "not-the-password");
    wait_until(20, "the first rejection", || async {
        rejected(&proxy).await == 1
    })
    .await;
    let last: serde_json::Value = serde_json::from_str(&proxy.get("/status").await.1).unwrap();
    let reason = last["last_attempt"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("password authentication failed"), "{last}");
    std::fs::write(&proxy.secret, r#"{"username": "x"}"#).unwrap();
    wait_until(20, "the second rejection", || async {
        rejected(&proxy).await == 2
    })
    .await;
    // Two failures in a row: open. Nothing is attempted, clients are still served.
    assert!(
        proxy
            .get("/metrics")
            .await
            .1
            .contains("rotagate_breaker_open{database=\"appdb\"} 1")
    );
    let r = rotate(&proxy).await;
    assert_eq!(r["outcome"], "breaker_open", "{r}");
    assert_eq!(one(&client, "SELECT 1").await, "1");
    assert_eq!(proxy.generation().await, g);
    // A good secret while open is held back, then applied once the cool-down ends (half-open).
    pg.sql(&format!("ALTER ROLE {APP_USER} PASSWORD 'good-again'"));
    write_secret(&proxy.secret, &pg, APP_USER, "good-again");
    wait_until(20, "the half-open attempt to apply it", || async {
        proxy.generation().await > g
    })
    .await;
    // The new pool is published before the attempt's report is recorded: wait for the report.
    wait_until(20, "the half-open attempt's report", || async {
        let status: serde_json::Value =
            serde_json::from_str(&proxy.get("/status").await.1).unwrap();
        status["last_attempt"]["trigger"] == "half_open"
    })
    .await;
    let status: serde_json::Value = serde_json::from_str(&proxy.get("/status").await.1).unwrap();
    assert_eq!(status["breaker"]["state"], "closed", "{status}");
    assert_eq!(status["breaker"]["consecutive_failures"], 0);
    let metrics = proxy.get("/metrics").await.1;
    assert!(
        metrics.contains("rotagate_rotations_total{result=\"rejected\",database=\"appdb\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("rotagate_breaker_open{database=\"appdb\"} 0"));
    pg.sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{APP_USER}'"
    ));
    assert_eq!(one(&proxy.client().await, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_the_token_too() {
    use std::os::unix::fs::PermissionsExt;
    let pg = app_cluster();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "m3trics-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let proxy = TestProxy::builder(&pg)
        .admin(&format!(
            "token_file = \"{}\"\nmetrics_require_token = true",
            token.display()
        ))
        .start()
        .await;
    assert_eq!(http(proxy.admin, "GET", "/metrics").await.0, 401);
    let bearer = "Authorization: Bearer m3trics-token\r\n";
    let (code, body) = http_with(proxy.admin, "GET", "/metrics", bearer).await;
    assert_eq!(code, 200);
    assert!(body.contains("rotagate_"), "{body}");
    // Health and readiness stay open for the orchestrator's probes.
    assert_eq!(http(proxy.admin, "GET", "/readyz").await.0, 200);
    assert_eq!(http(proxy.admin, "GET", "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_rotate_and_post_failover_need_the_token_when_one_is_configured() {
    let pg = app_cluster();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-admin-token\n").unwrap();
    // Key files others can read are refused at start (tests/cli.rs).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let proxy = TestProxy::builder(&pg)
        .admin(&format!(
            "token_file = \"{}\"",
            dir.path().join("token").display()
        ))
        .start()
        .await;
    for path in ["/rotate", "/failover"] {
        assert_eq!(proxy.post(path, "").await.0, 401, "{path}");
        let wrong = proxy.post(path, "Authorization: Bearer wrong\r\n").await;
        assert_eq!(wrong.0, 401, "{path}");
    }
    // /status needs it too; /metrics stays open unless admin.metrics_require_token.
    let bearer = "Authorization: Bearer s3cret-admin-token\r\n";
    assert_eq!(http(proxy.admin, "GET", "/status").await.0, 401);
    let wrong = http_with(proxy.admin, "GET", "/status", "Authorization: Bearer x\r\n").await;
    assert_eq!(wrong.0, 401);
    let (code, body) = http_with(proxy.admin, "GET", "/status", bearer).await;
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains("s3cret-admin-token"));
    assert_eq!(http(proxy.admin, "GET", "/metrics").await.0, 200);
    // One host, `any`: a search finds the host it serves from.
    let (code, body) = proxy
        .post("/failover", "Authorization: Bearer s3cret-admin-token\r\n")
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"trigger\":\"failover\""), "{body}");
    let (code, body) = proxy
        .post("/rotate", "Authorization: Bearer s3cret-admin-token\r\n")
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"outcome\":\"unchanged\""), "{body}");
    pg.sql(&format!("ALTER ROLE {APP_USER} PASSWORD 'via-post'"));
    write_secret(&proxy.secret, &pg, APP_USER, "via-post");
    // The watcher may get there first; either way the new credential ends up served.
    let (code, body) = proxy
        .post("/rotate", "Authorization: Bearer s3cret-admin-token\r\n")
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"outcome\":\"applied\"") || body.contains("\"outcome\":\"unchanged\""),
        "{body}"
    );
    let status = http_with(proxy.admin, "GET", "/status", bearer).await.1;
    assert!(status.contains("\"generation\":2"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_the_source_serves_from_the_encrypted_cache() {
    let pg = app_cluster();
    let dir = tempfile::tempdir().unwrap();
    let (secret, cache) = (dir.path().join("secret.json"), dir.path().join("lkg.bin"));
    write_secret(&secret, &pg, APP_USER, APP_PASSWORD);
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let cache_line = format!("cache_file = \"{}\"", cache.display());
    let cached = || {
        TestProxy::builder(&pg)
            .secret_at(&secret)
            .credentials(&cache_line)
            .var("ROTAGATE_CACHE_KEY", key)
    };
    let proxy = cached().start().await;
    proxy.rotate_to(&pg, APP_USER, "cached-pw").await;
    proxy.stop().await.unwrap();
    let raw = std::fs::read(&cache).unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("cached-pw"));

    std::fs::remove_file(&secret).unwrap();
    let proxy = cached().start().await;
    assert_eq!(
        one(&proxy.client().await, "SELECT current_user").await,
        APP_USER
    );
    proxy.stop().await.unwrap();

    let other_key = "HxscGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQAfHh0=";
    let cfg_text = cached().config_text(&secret);
    let cfg = rotagate::config::parse(
        &cfg_text,
        [("ROTAGATE_CACHE_KEY".to_owned(), other_key.to_owned())],
    )
    .unwrap();
    let app = rotagate::app::App::bind(cfg).await.unwrap();
    let e = app
        .run(tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("does not decrypt"), "{e:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_clients_of_a_retired_generation_are_closed_at_drain_timeout() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg)
        .mode("session")
        .pool("drain_timeout = \"300ms\"")
        .start()
        .await;
    let old = proxy.client().await;
    let old_pid = one(&old, "SELECT pg_backend_pid()").await;
    proxy.rotate_to(&pg, APP_USER, "drained-pw").await;
    wait_until(20, "the old-generation connection to be closed", || async {
        pg.sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {old_pid}"
        )) == "0"
    })
    .await;
    assert!(
        old.simple_query("SELECT 1").await.is_err(),
        "the retired session is closed"
    );
    let status: serde_json::Value = serde_json::from_str(&proxy.get("/status").await.1).unwrap();
    assert_eq!(
        status["pools"].as_array().unwrap().len(),
        1,
        "nothing left draining: {status}"
    );
    assert_eq!(one(&proxy.client().await, "SELECT 1").await, "1");
}
