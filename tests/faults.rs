//! Network faults between rotagate and PostgreSQL under load, short enough to run as tests (the
//! long runs, and the secret-source and cache faults, are `cargo bench --bench faults`): a cut
//! of every upstream connection mid-transaction, a black hole, refused connections. In each,
//! only transactions in flight may fail, no client loses its connection (transaction mode),
//! and every client is served again once the fault ends.

mod common;

use common::fault::{FaultProxy, Load, Mode};
use common::*;
use std::time::{Duration, Instant};

const CLIENTS: usize = 4;

async fn setup(pg: &common::pg::Pg) -> (TestProxy, FaultProxy, Load) {
    let fault = FaultProxy::start(pg.port);
    let proxy = TestProxy::builder(pg)
        .upstream_port(fault.port)
        .pool_size(4)
        .pool("acquire_timeout = \"30s\"")
        .start()
        .await;
    let load = Load::running(&proxy.url(), CLIENTS).await;
    (proxy, fault, load)
}

/// After the fault: every client served again, only in-flight transactions failed, no client
/// reconnected, and the proxy still answers.
async fn check(proxy: &TestProxy, load: Load, ended: Instant, what: &str) {
    let recovery = load.recovered_after(ended, Duration::from_secs(60)).await;
    let cost = load.stop().await;
    assert!(
        recovery.is_some(),
        "{what}: the clients were not served again: {cost:?}"
    );
    assert!(
        cost.failed <= CLIENTS as u64,
        "{what}: more than the in-flight failed: {cost:?}"
    );
    assert_eq!(
        cost.reconnects, 0,
        "{what}: a client lost its connection: {cost:?}"
    );
    assert_eq!(proxy.get("/healthz").await.0, 200);
    assert_eq!(one(&proxy.client().await, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_connection_cut_mid_transaction() {
    let pg = app_cluster();
    let (proxy, fault, load) = setup(&pg).await;
    fault.cut();
    check(&proxy, load, Instant::now(), "cut").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_then_the_network_back() {
    let pg = app_cluster();
    let (proxy, fault, load) = setup(&pg).await;
    fault.set(Mode::BlackHole);
    // The fault's length, not a wait for something to happen.
    tokio::time::sleep(Duration::from_secs(2)).await;
    fault.set(Mode::Pass);
    check(&proxy, load, Instant::now(), "black hole").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_and_refused_then_accepted_again() {
    let pg = app_cluster();
    let (proxy, fault, load) = setup(&pg).await;
    fault.set(Mode::Refuse);
    fault.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    fault.set(Mode::Pass);
    check(&proxy, load, Instant::now(), "refused").await;
}
