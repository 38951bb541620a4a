//! The admin listener: health, readiness, metrics and status.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_status() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).pool_size(3).start().await;
    assert_eq!(proxy.get("/healthz").await.0, 200);
    assert_eq!(proxy.get("/readyz").await.0, 200);
    let client = proxy.client().await;
    for _ in 0..5 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    let (status, metrics) = proxy.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "rotagate_client_connections",
        "rotagate_server_connections{state=\"idle\",database=\"appdb\"}",
        "rotagate_server_connections{state=\"active\",database=\"appdb\"}",
        "rotagate_transactions_total",
        "rotagate_pool_wait_seconds_bucket",
        "rotagate_credential_generation{database=\"appdb\"} 1",
        "# HELP rotagate_transactions_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let (status, body) = proxy.get("/status").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["generation"], 1);
    assert_eq!(json["credential"]["source"], "file");
    assert_eq!(json["credential"]["username"], APP_USER);
    assert!(json["pools"][0]["connections"].as_u64().unwrap() >= 1);
    assert_eq!(proxy.get("/nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_the_upstream_refuses_the_credential() {
    let pg = app_cluster();
    pg.sql(&format!("ALTER ROLE {APP_USER} PASSWORD 'something-else'"));
    let proxy = TestProxy::builder(&pg)
        .pool("acquire_timeout = \"1s\"")
        .start_unready()
        .await;
    assert_eq!(proxy.get("/healthz").await.0, 200);
    wait_until(20, "an auth failure to be counted", || async {
        proxy
            .metric("rotagate_backend_auth_failures_total", "")
            .await
            >= 1.0
    })
    .await;
    assert_eq!(proxy.get("/readyz").await.0, 503);
    pg.sql(&format!("ALTER ROLE {APP_USER} PASSWORD '{APP_PASSWORD}'"));
    wait_until(30, "readiness once the password matches again", || async {
        proxy.get("/readyz").await.0 == 200
    })
    .await;
}

/// Every metric of the contract (design.md section 5) is served with its HELP text once a
/// rotation has happened, and labels stay within their bounded sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_contract_metric_has_help_text_and_bounded_labels() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).start().await;
    proxy.client().await.simple_query("SELECT 1").await.unwrap();
    proxy.rotate_to(&pg, APP_USER, "rotated-for-metrics").await;
    let metrics = proxy.get("/metrics").await.1;
    for name in [
        "rotagate_credential_generation",
        "rotagate_rotations_total",
        "rotagate_breaker_open",
        "rotagate_events_total",
        "rotagate_client_connections",
        "rotagate_server_connections",
        "rotagate_backend_auth_failures_total",
        "rotagate_transactions_total",
        "rotagate_pool_wait_seconds",
        "rotagate_rotation_duration_seconds",
        "rotagate_credential_age_seconds",
        "rotagate_failovers_total",
        "rotagate_upstream_writer",
    ] {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "no HELP for {name} in:\n{metrics}"
        );
    }
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("rotagate_rotations_total{"))
    {
        assert!(
            ["success", "rejected", "failed"]
                .iter()
                .any(|r| line.contains(&format!("result=\"{r}\""))),
            "{line}"
        );
    }
    assert!(
        metrics.contains(
            "rotagate_events_total{source=\"file\",outcome=\"applied\",database=\"appdb\"}"
        )
    );
    // Every per-database series names its database, in the single-database form too.
    for name in [
        "rotagate_credential_generation",
        "rotagate_credential_age_seconds",
        "rotagate_rotations_total",
        "rotagate_rotation_duration_seconds",
        "rotagate_breaker_open",
        "rotagate_events_total",
        "rotagate_server_connections",
        "rotagate_backend_auth_failures_total",
        "rotagate_transactions_total",
        "rotagate_pool_wait_seconds",
        "rotagate_cache_write_failures_total",
        "rotagate_pinned_clients",
        "rotagate_prepared_statements",
        "rotagate_statement_prepares_total",
    ] {
        let series: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .collect();
        assert!(!series.is_empty(), "no {name} series");
        for line in series {
            assert!(line.contains("database=\"appdb\""), "{line}");
        }
    }
    assert!(!metrics.contains("rotated-for-metrics"));
}

/// The Grafana dashboard in config/ only charts metrics rotagate serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_charts_only_served_metrics() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg).start().await;
    proxy.client().await.simple_query("SELECT 1").await.unwrap();
    proxy
        .rotate_to(&pg, APP_USER, "rotated-for-dashboard")
        .await;
    let metrics = proxy.get("/metrics").await.1;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana-dashboard.json");
    let dashboard = std::fs::read_to_string(path).unwrap();
    let mut charted = 0;
    for (i, _) in dashboard.match_indices("rotagate_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        charted += 1;
        // A reader entry's per-host series: tests/readers.rs checks those on a reader entry.
        if READER_SERIES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        assert!(
            metrics.contains(&format!("\n{name}")) || metrics.contains(&format!("\n{name}{{")),
            "the dashboard charts {name}, which /metrics does not serve"
        );
    }
    assert!(charted >= 10, "{charted}");
}

/// Series only a reader entry (`load_balance_hosts = "random"`) serves.
const READER_SERIES: [&str; 2] = ["rotagate_host_", "rotagate_replica_"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_has_limits_no_client_gets_around() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg)
        .admin("max_connections = 4")
        .start()
        .await;
    let addr = proxy.admin_addr();
    // A body over the limit is refused from its Content-Length, before it is read.
    let big = "a".repeat(8 * 1024);
    let (code, _) = http_body(addr, "POST", "/rotate", "", &big).await;
    assert_eq!(code, 413);
    // Twenty idle connections, five times the cap: the oldest are dropped for newer ones, and
    // a real request still gets its answer.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    for _ in 0..3 {
        assert_eq!(proxy.get("/metrics").await.0, 200);
    }
    let mut closed = 0;
    for s in &mut idle {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut b)).await
        {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 20,
        "every idle connection is closed: evicted or out of header time"
    );
    // Headers that never finish are cut off (hyper's header_read_timeout).
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        slow.read_to_end(&mut rest),
    )
    .await;
    assert!(matches!(read, Ok(Ok(_))), "the connection was closed");
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
}
