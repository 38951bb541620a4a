//! `listen.workers = 2`: two event loops, each with its own listener (SO_REUSEPORT), clients
//! and connections. Rotation reaches both; `pool.size` holds across them, and a client is never
//! stuck behind its own worker while the other has connections to spare.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_pool_and_both_follow_rotations() {
    let pg = app_cluster();
    let proxy = TestProxy::builder(&pg)
        .listen("workers = 2")
        .pool_size(4)
        .start()
        .await;
    let load = fault::Load::start(&proxy.url(), 16).await;
    let mut both_used = false;
    let mut most = 0;
    for i in 0..3 {
        proxy
            .rotate_to(&pg, APP_USER, &format!("workers-rotated-{i}"))
            .await;
        for _ in 0..20 {
            let status: serde_json::Value =
                serde_json::from_str(&proxy.get("/status").await.1).unwrap();
            let current = status["pools"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["current"] == true)
                .unwrap()
                .clone();
            let by_worker: Vec<u64> = current["by_worker"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_u64().unwrap())
                .collect();
            assert_eq!(by_worker.len(), 2, "{current}");
            most = most.max(current["connections"].as_u64().unwrap());
            both_used |= by_worker.iter().all(|n| *n > 0);
            tokio::task::yield_now().await;
        }
    }
    let cost = load.stop().await;
    assert_eq!(
        (cost.failed, cost.reconnects),
        (0, 0),
        "clients saw the rotations"
    );
    assert!(cost.ok > 0);
    assert!(most <= 4, "pool.size holds across workers: {most}");
    assert!(both_used, "16 clients landed on both workers");
    assert_eq!(proxy.generation().await, 4);
    proxy.stop().await.unwrap();
    pg.sql(&format!("ALTER ROLE {APP_USER} PASSWORD '{APP_PASSWORD}'"));
}

/// Session mode holds a connection per client, and the kernel does not spread clients evenly
/// over the workers' listeners: every client must still get one of the pool's connections,
/// even when all of them land on one worker. The test makes that case happen whatever the
/// kernel does: it keeps only the clients worker 0 accepted (told by its accept counter) and
/// lets the others go, until worker 0 serves all 8 (the others' connections left idle on worker
/// 1, to be taken over). A pool split per worker (4 each) fails at the fifth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_clients_get_every_pool_connection_whichever_worker_they_land_on() {
    let pg = app_cluster();
    // A process of its own: its accept counters are its own.
    let r = TestProxy::builder(&pg)
        .mode("session")
        .listen("workers = 2")
        .pool_size(8)
        .pool("acquire_timeout = \"5s\"")
        .spawn()
        .await;
    r.ready().await;
    let accepted = |w: u32| {
        let labels = format!("worker=\"{w}\"");
        let r = &r;
        async move {
            r.metric_or_zero("rotagate_client_connections_accepted_total", &labels)
                .await
        }
    };
    let mut kept = Vec::new();
    for _ in 0..400 {
        if kept.len() == 8 {
            break;
        }
        let before = accepted(0).await;
        let client = r.client().await;
        assert_eq!(one(&client, "SELECT 1").await, "1", "client {}", kept.len());
        if accepted(0).await > before {
            kept.push(client);
        }
    }
    assert_eq!(kept.len(), 8, "the kernel put 8 of 400 clients on worker 0");
    let status: serde_json::Value = serde_json::from_str(&r.get("/status").await.1).unwrap();
    assert!(
        status["pools"][0]["connections"].as_u64().unwrap() <= 8,
        "pool.size holds: {status}"
    );
    drop(kept);
    r.stop().await;
}
