//! Reader endpoints (design 9.3): a reader entry spreads transactions over the standbys in
//! rotation and holds them within `max_replica_lag`. A primary with two streaming standbys,
//! made by the harness; the failures and rotations are in `readers_faults.rs`.

mod common;

use common::pg::Pg;
use common::readers::*;
use common::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The primary written to, replay paused on `one`: `one` leaves the rotation (to `two` alone)
/// within 2 s of lagging 1 s behind. Returns the writer's stop flag.
async fn pause_until_out(proxy: &TestProxy, primary: &Pg, one: &Pg, two: &Pg) -> Arc<AtomicBool> {
    let writing = keep_writing(primary);
    one.sql("SELECT pg_wal_replay_pause()");
    let paused = Instant::now();
    wait_until(10, "the paused standby out of rotation", || async {
        in_rotation(proxy).await == [at(two)]
    })
    .await;
    let out_after = paused.elapsed();
    eprintln!("paused standby out of rotation {out_after:?} after the pause (bound 1 s)");
    assert!(out_after <= Duration::from_secs(3), "{out_after:?}");
    writing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_spread_over_the_standbys_and_a_lagging_one_leaves_and_returns() {
    let (primary, one, two) = three();
    let proxy = reader_proxy([&primary, &one, &two], "max_replica_lag = \"1s\"").await;
    // Ten checks or more ask the kept probe sessions: no new session on any host.
    let status = || async {
        let s: serde_json::Value = serde_json::from_str(&proxy.get("/status").await.1).unwrap();
        s["upstream"]["hosts"][0]["checked_at"].as_u64().unwrap()
    };
    let first = status().await;
    let before = [sessions(&primary), sessions(&one), sessions(&two)];
    wait_until(10, "two seconds of checks", || async {
        status().await >= first + 2
    })
    .await;
    let after = [sessions(&primary), sessions(&one), sessions(&two)];
    for (b, a) in before.iter().zip(after) {
        assert!(
            a - b <= 2,
            "sessions opened by the checks: {before:?} -> {after:?}"
        );
    }
    let client = proxy.client().await;
    let spread = reads(&client, 1000).await;
    eprintln!("1,000 reads: {spread:?}");
    assert_eq!(
        spread.get(&i32::from(primary.port)),
        None,
        "no read on the primary"
    );
    for pg in [&one, &two] {
        let n = spread.get(&i32::from(pg.port)).copied().unwrap_or(0);
        assert!(n >= 350, "each standby takes at least 35%: {spread:?}");
    }
    let per_host = |pg: &Pg| format!("host=\"{}\"", at(pg));
    assert!(
        proxy
            .metric("rotagate_host_transactions_total", &per_host(&one))
            .await
            >= 350.0
    );
    assert!(
        proxy
            .metric("rotagate_host_connections", &per_host(&one))
            .await
            >= 1.0
    );
    let on_primary = proxy
        .metric("rotagate_host_connections", &per_host(&primary))
        .await;
    assert_eq!(on_primary, 0.0, "no connection to the primary");

    // Replay paused on one standby while the primary writes: it leaves within 2 s of lagging
    // 1 s behind, and comes back after replay resumes.
    let writing = pause_until_out(&proxy, &primary, &one, &two).await;
    assert!(
        proxy
            .metric("rotagate_replica_lag_seconds", &per_host(&one))
            .await
            > 1.0
    );
    let during = reads(&client, 100).await;
    assert_eq!(during.get(&i32::from(two.port)), Some(&100), "{during:?}");
    one.sql("SELECT pg_wal_replay_resume()");
    let resumed = Instant::now();
    wait_until(10, "the standby back in rotation", || async {
        in_rotation(&proxy).await.len() == 2
    })
    .await;
    eprintln!(
        "standby back in rotation {:?} after replay resumed",
        resumed.elapsed()
    );
    writing.store(true, Ordering::Relaxed);
    assert_eq!(
        proxy
            .metric("rotagate_host_in_rotation", &per_host(&one))
            .await,
        1.0
    );
    // The dashboard's reader panels chart series a reader entry serves.
    let metrics = proxy.get("/metrics").await.1;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana-dashboard.json");
    let dashboard = std::fs::read_to_string(path).unwrap();
    for name in [
        "rotagate_host_in_rotation",
        "rotagate_host_transactions_total",
        "rotagate_replica_lag_seconds",
        "rotagate_replica_lag_bytes",
    ] {
        assert!(dashboard.contains(name), "the dashboard charts {name}");
        assert!(
            metrics.contains(&format!("\n{name}{{")),
            "/metrics serves {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_entry_beside_its_writer_entry_shares_the_secret_and_rotates_with_it() {
    let (primary, one, two) = three();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.json");
    write_secret(&secret, &primary, APP_USER, APP_PASSWORD);
    let hosts: Vec<String> = [&primary, &one, &two]
        .iter()
        .map(|pg| format!("\"127.0.0.1:{}\"", pg.port))
        .collect();
    let entry = |name: &str, lines: &str| {
        format!(
            "[[databases]]\nname = \"{name}\"\n[databases.upstream]\nhosts = [{}]\n\
             database = \"appdb\"\ntls = \"disable\"\n{lines}\n[databases.credentials]\n\
             source = \"file\"\n[databases.credentials.file]\npath = \"{}\"\n",
            hosts.join(", "),
            secret.display()
        )
    };
    let text = entry("app", "target_session_attrs = \"read-write\"")
        + &entry(
            "app_ro",
            "target_session_attrs = \"standby\"\nload_balance_hosts = \"random\"\n\
             replica_check_interval = \"200ms\"",
        );
    let proxy = TestProxy::builder(&primary).databases(&text).start().await;
    let writer = proxy
        .connect(&proxy.url_as(CLIENT_USER, CLIENT_PASSWORD, "app"))
        .await
        .unwrap();
    let reader = proxy
        .connect(&proxy.url_as(CLIENT_USER, CLIENT_PASSWORD, "app_ro"))
        .await
        .unwrap();
    assert_eq!(
        port_of_read(&writer).await.unwrap(),
        i32::from(primary.port)
    );
    let standbys = [i32::from(one.port), i32::from(two.port)];
    wait_until(20, "reads on both standbys", || async {
        let spread = reads(&reader, 20).await;
        standbys.iter().all(|p| spread.contains_key(p))
    })
    .await;

    // One change of the secret rotates both entries.
    primary.sql(&format!(
        "ALTER ROLE {APP_USER} PASSWORD 'shared-rotated-1'"
    ));
    write_secret(&secret, &primary, APP_USER, "shared-rotated-1");
    let generation = |name: &'static str| {
        let proxy = &proxy;
        async move {
            let s: serde_json::Value = serde_json::from_str(&proxy.get("/status").await.1).unwrap();
            s["databases"][name]["generation"].as_u64().unwrap_or(0)
        }
    };
    wait_until(20, "both entries on the new credential", || async {
        generation("app").await == 2 && generation("app_ro").await == 2
    })
    .await;
    assert_eq!(
        port_of_read(&writer).await.unwrap(),
        i32::from(primary.port)
    );
    let spread = reads(&reader, 50).await;
    assert!(spread.keys().all(|p| standbys.contains(p)), "{spread:?}");
}

/// Sets the custom setting `rotagate.migration` on `pg` (a stand-in for the newest migration a
/// server has) and reloads.
fn migration(pg: &Pg, version: &str) {
    let path = pg.dir().join("data/postgresql.auto.conf");
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("rotagate.migration"))
        .collect();
    let text = format!("{}\nrotagate.migration = '{version}'\n", kept.join("\n"));
    std::fs::write(&path, text).unwrap();
    common::pg::give_to_pg(&path);
    pg.sql("SELECT pg_reload_conf()");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_whose_parity_value_differs_stays_out_until_it_agrees() {
    let (primary, one, two) = three();
    for pg in [&primary, &one] {
        migration(pg, "41");
    }
    migration(&two, "40");
    let extra = "parity_query = \"SELECT current_setting('rotagate.migration', true)\"";
    let proxy = reader_proxy_with(&[&primary, &one, &two], "standby", extra).await;
    wait_until(10, "the mismatch counted", || async {
        proxy
            .metric_or_zero("rotagate_parity_mismatches_total", "appdb")
            .await
            >= 1.0
    })
    .await;
    assert_eq!(in_rotation(&proxy).await, [at(&one)]);
    migration(&two, "41");
    wait_until(
        20,
        "the standby in rotation once it agrees (asked again after 5 s)",
        || async { in_rotation(&proxy).await.len() == 2 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_replicas_listed_lag_is_read_from_what_each_standby_received() {
    let (primary, one, two) = three();
    let proxy = reader_proxy_with(&[&one, &two], "standby", "max_replica_lag = \"1s\"").await;
    wait_until(20, "both standbys in rotation", || async {
        in_rotation(&proxy).await.len() == 2
    })
    .await;
    let writing = pause_until_out(&proxy, &primary, &one, &two).await;
    one.sql("SELECT pg_wal_replay_resume()");
    wait_until(10, "the standby back in rotation", || async {
        in_rotation(&proxy).await.len() == 2
    })
    .await;
    writing.store(true, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_session_mode_each_session_goes_to_a_standby_in_rotation() {
    let (primary, one, two) = three();
    let list = format!("\"127.0.0.1:{}\", \"127.0.0.1:{}\"", one.port, two.port);
    let proxy = TestProxy::builder(&primary)
        .mode("session")
        .pool_size(40)
        .upstream_hosts(&format!(
            "hosts = [{list}]\ntarget_session_attrs = \"standby\"\nload_balance_hosts = \"random\"\n\
             replica_check_interval = \"200ms\""
        ))
        .start()
        .await;
    wait_until(20, "both standbys in rotation", || async {
        in_rotation(&proxy).await.len() == 2
    })
    .await;
    let mut by_port: HashMap<i32, usize> = HashMap::new();
    for _ in 0..40 {
        let c = proxy.client().await;
        // A session stays on its host.
        let first = port_of_read(&c).await.unwrap();
        assert_eq!(port_of_read(&c).await.unwrap(), first);
        *by_port.entry(first).or_default() += 1;
    }
    eprintln!("40 sessions: {by_port:?}");
    for pg in [&one, &two] {
        assert!(
            by_port.get(&i32::from(pg.port)).copied().unwrap_or(0) >= 5,
            "{by_port:?}"
        );
    }
}
