//! SIGHUP: client users, pool settings and the log filter change without dropping a
//! connection; settings that need a restart are reported and left alone; an invalid file
//! changes nothing.

mod common;

use common::process::Rotagate;
use common::*;

async fn wait_log(r: &Rotagate, what: &str, times: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while r.log().matches(what).count() < times {
        assert!(
            std::time::Instant::now() < deadline,
            "no {what:?} in the log:\n{}",
            r.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_users_pool_and_log_filter_without_dropping_a_transaction() {
    let pg = app_cluster();
    let r = TestProxy::builder(&pg)
        .pool_size(4)
        .var("RUST_LOG", "")
        .spawn()
        .await;
    r.ready().await;
    assert!(!r.log().contains("\"level\":\"DEBUG\""), "info by default");
    let client = r.client().await;
    client.simple_query("BEGIN").await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let g = r.generation().await;
    assert!(
        r.connect(&r.url_as("app2", "second-pw", "appdb"))
            .await
            .is_err()
    );

    // A second client user, a bigger pool, a log filter, and a new listen address (which
    // needs a restart).
    let text = std::fs::read_to_string(r.config_path()).unwrap();
    let port = r.proxy_addr().port();
    let text = text
        .replace(
            "[[clients]]",
            "[log]\nfilter = \"info,rotagate=debug\"\n[[clients]]\nuser = \"app2\"\npassword = \"second-pw\"\n[[clients]]",
        )
        .replace("size = 4", "size = 6")
        .replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{}", pg::free_port()));
    std::fs::write(r.config_path(), text).unwrap();
    r.signal("-HUP");
    wait_log(&r, "pool settings applied", 1).await;

    let second = r
        .connect(&r.url_as("app2", "second-pw", "appdb"))
        .await
        .unwrap();
    assert_eq!(one(&second, "SELECT current_user").await, APP_USER);
    client.simple_query("COMMIT").await.unwrap();
    assert_eq!(one(&client, "SELECT 2").await, "2");
    assert_eq!(r.generation().await, g + 1, "the pool was republished once");
    let log = r.log();
    assert!(
        log.contains("need a restart") && log.contains("listen"),
        "{log}"
    );
    // log.filter now lets debug events through: an unchanged rotation attempt is one.
    assert_eq!(r.post("/rotate", "").await.0, 200);
    wait_log(&r, "\"level\":\"DEBUG\"", 1).await;

    // An invalid file changes nothing.
    std::fs::write(r.config_path(), "[pool]\nsize = -1\n").unwrap();
    r.signal("-HUP");
    wait_log(&r, "the new configuration is invalid", 1).await;
    assert_eq!(one(&second, "SELECT 3").await, "3");
    let log = r.stop().await;
    assert!(!log.contains("second-pw"), "a client password in the log");
}
