//! Memory held for messages is bounded process-wide (issue 23, item 4): 8 clients each send a
//! 60 MiB Query slowly while other clients get 100 MB error messages. The Queries are held
//! whole one at a time (`listen.message_memory`), the errors stream through without being held,
//! and rotagate's RSS grows by less than 64 MiB and goes back to its baseline afterwards.

mod common;

use bytes::{BufMut, BytesMut};
use common::wire::{Raw, first_column};
use common::*;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

const QUERY: usize = 60 << 20;
const ERROR: usize = 100_000_000;

/// `SELECT length('xxx…')`, `QUERY` bytes in all.
fn big_query() -> BytesMut {
    let head = b"SELECT length('";
    let tail = b"')\0";
    let fill = QUERY - 5 - head.len() - tail.len();
    let mut m = BytesMut::with_capacity(QUERY);
    m.put_u8(b'Q');
    m.put_u32((QUERY - 1) as u32);
    m.extend_from_slice(head);
    m.resize(m.len() + fill, b'x');
    m.extend_from_slice(tail);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_huge_queries_and_huge_errors_stay_within_the_budget() {
    let pg = app_cluster();
    let limit = QUERY + (1 << 20);
    let r = TestProxy::builder(&pg)
        .pool_size(4)
        .listen(&format!("max_message_size = {limit}"))
        .listen(&format!("message_memory = {limit}"))
        .spawn()
        .await;
    r.ready().await;
    let client = r.client().await;
    assert_eq!(one(&client, "SELECT 1").await, "1");
    let baseline = r.rss_kib();
    r.reset_peak();

    let query = Arc::new(big_query());
    let fill = QUERY - 5 - "SELECT length('".len() - "')\0".len();
    let mut senders = Vec::new();
    for _ in 0..8 {
        let (query, addr) = (query.clone(), r.proxy_addr());
        senders.push(tokio::spawn(async move {
            let mut c = Raw::connect(addr, CLIENT_USER, CLIENT_PASSWORD).await;
            // Slowly: 1 MiB at a time, each write waiting for the socket to take it.
            for chunk in query.chunks(1 << 20) {
                c.stream.write_all(chunk).await.unwrap();
                c.stream.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            first_column(&c.until_ready().await)
        }));
    }
    let raise = format!("DO $$ BEGIN RAISE EXCEPTION '%', repeat('x', {ERROR}); END $$");
    let mut errors = Vec::new();
    for _ in 0..2 {
        let (c, raise) = (r.client().await, raise.clone());
        errors.push(tokio::spawn(async move {
            let mut lengths = Vec::new();
            for _ in 0..2 {
                let e = c.batch_execute(&raise).await.unwrap_err();
                lengths.push(e.as_db_error().map_or(0, |d| d.message().len()));
            }
            lengths
        }));
    }
    for s in senders {
        assert_eq!(s.await.unwrap(), [fill.to_string()], "each Query ran whole");
    }
    for e in errors {
        assert_eq!(
            e.await.unwrap(),
            [ERROR, ERROR],
            "each error reached its client whole"
        );
    }
    let peak = r.peak_kib();
    assert_eq!(one(&client, "SELECT 2").await, "2");
    let after = r.rss_kib();
    println!("RSS baseline {baseline} KiB, peak {peak} KiB, after {after} KiB");
    assert!(
        peak < baseline + 64 * 1024,
        "peak RSS {peak} KiB against a baseline of {baseline} KiB: more than 64 MiB held"
    );
    assert!(
        after < baseline + 16 * 1024,
        "RSS {baseline} KiB before, {after} KiB after: the memory did not go back"
    );
    assert!(
        r.metric("rotagate_message_memory_waits_total", "").await >= 1.0,
        "some Query waited for the budget"
    );
    r.stop().await;
}
