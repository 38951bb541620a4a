//! Health and shutdown never depend on one connection: `/healthz` and `/readyz` answer while
//! clients misbehave (one trickling a huge message, one flooding pipelined queries, one holding
//! a transaction open), and SIGTERM ends the process within `listen.shutdown_timeout` plus a
//! second.

mod common;

use bytes::BytesMut;
use common::wire::Raw;
use common::*;
use rotagate::wire::msg;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Three clients that keep the relay busy or stuck; they run until dropped.
async fn misbehave(proxy: &impl Endpoints) -> Vec<tokio::task::JoinHandle<()>> {
    let addr = proxy.proxy_addr();
    let mut tasks = Vec::new();
    // A Query whose header promises 60 MB and whose bytes come slowly.
    let mut slow = Raw::connect(addr, CLIENT_USER, CLIENT_PASSWORD).await;
    tasks.push(tokio::spawn(async move {
        let mut head = BytesMut::from(&b"Q"[..]);
        head.extend_from_slice(&(60u32 << 20).to_be_bytes());
        slow.send(&head).await;
        loop {
            if slow.stream.write_all(&[b'x'; 1024]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }));
    // Pipelined queries, as fast as the proxy takes them.
    let mut flood = Raw::connect(addr, CLIENT_USER, CLIENT_PASSWORD).await;
    tasks.push(tokio::spawn(async move {
        let mut batch = BytesMut::new();
        for _ in 0..200 {
            msg::query(&mut batch, "SELECT 1");
        }
        loop {
            flood.send(&batch).await;
            for _ in 0..200 {
                flood.until_ready().await;
            }
        }
    }));
    // A transaction left open.
    let mut open = Raw::connect(addr, CLIENT_USER, CLIENT_PASSWORD).await;
    open.query("BEGIN").await;
    tasks.push(tokio::spawn(async move {
        let _keep = open;
        std::future::pending::<()>().await;
    }));
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_clients_misbehave() {
    let pg = app_cluster();
    let r = TestProxy::builder(&pg).pool_size(4).spawn().await;
    r.ready().await;
    let tasks = misbehave(&r).await;
    for _ in 0..20 {
        assert_eq!(r.get("/healthz").await.0, 200);
        assert_eq!(r.get("/readyz").await.0, 200);
        let c = r.client().await;
        assert_eq!(one(&c, "SELECT 42").await, "42");
    }
    for t in tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_process_within_the_shutdown_timeout() {
    let pg = app_cluster();
    let r = TestProxy::builder(&pg)
        .pool_size(4)
        .listen("shutdown_timeout = \"2s\"")
        .spawn()
        .await;
    r.ready().await;
    let tasks = misbehave(&r).await;
    let (took, code, log) = r.terminate().await;
    // The process keeps time itself; the margin is for a busy test machine, not for it.
    assert!(
        took < Duration::from_secs(2 + 1 + 3),
        "SIGTERM took {took:?} (shutdown_timeout 2s); log:\n{log}"
    );
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("sessions still open at the shutdown deadline"),
        "the open transaction held the shutdown until its deadline:\n{log}"
    );
    for t in tasks {
        t.abort();
    }
}
