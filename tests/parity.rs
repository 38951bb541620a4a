//! Schema parity (`upstream.parity_query`): a host whose value differs from the serving side's
//! is not published, and is once it agrees. Two independent primaries stand for a new writer
//! that has not caught up with a migration.

mod common;

use common::*;

/// The port of the server that answered through `client`.
async fn served_by(client: &tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
    let row = client.query_one("SELECT inet_server_port()", &[]).await?;
    Ok(row.get(0))
}

fn migrated_to(pg: &common::pg::Pg, version: &str) {
    pg.sql_in(
        "appdb",
        &format!(
            "CREATE TABLE IF NOT EXISTS migrations (version text); DELETE FROM migrations; \
             INSERT INTO migrations VALUES ('{version}'); \
             GRANT SELECT ON migrations TO {APP_USER}"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_behind_on_migrations_is_not_published_until_it_catches_up() {
    let (a, b) = (app_cluster(), app_cluster());
    migrated_to(&a, "20261207");
    migrated_to(&b, "20261130");
    let lines = format!(
        "hosts = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\nwriter_check_interval = \"1h\"\n\
         parity_query = \"SELECT max(version) FROM migrations\"\n",
        a.port, b.port
    );
    let proxy = TestProxy::builder(&a).upstream_hosts(&lines).start().await;
    let client = proxy.client().await;
    assert_eq!(served_by(&client).await.unwrap(), i32::from(a.port));
    let before = proxy
        .metric_or_zero("rotagate_parity_mismatches_total", "")
        .await;

    a.stop();
    let (_, body) = proxy.post("/failover", "").await;
    assert!(
        !body.contains(&format!("now serving from 127.0.0.1:{}", b.port)),
        "a host behind on migrations was published: {body}"
    );
    assert!(
        body.contains("20261207") && body.contains("20261130"),
        "the outcome names both values: {body}"
    );
    assert_eq!(
        proxy
            .metric("rotagate_parity_mismatches_total", "database=\"appdb\"")
            .await,
        before + 1.0
    );

    migrated_to(&b, "20261207");
    let (code, body) = proxy.post("/failover", "").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(&format!("now serving from 127.0.0.1:{}", b.port)),
        "{body}"
    );
    let client = proxy.client().await;
    assert_eq!(served_by(&client).await.unwrap(), i32::from(b.port));
    proxy.stop().await.unwrap();
}
