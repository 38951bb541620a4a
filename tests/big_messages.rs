//! No message size wedges the relay: statements with 1,500 to 20,000 parameters (unnamed and
//! named), Binds, Queries and results up to `listen.max_message_size`, in both modes, and
//! messages that arrive a byte at a time. The one-byte-over message is refused with 54000.

mod common;

use bytes::{BufMut, BytesMut};
use common::wire::{Ext, Msg, Raw, first_column, tags};
use common::*;
use rotagate::wire::msg;
use tokio::io::AsyncWriteExt;

const LIMIT: usize = 2 << 20;

async fn proxies(pg: &pg::Pg) -> Vec<(&'static str, TestProxy)> {
    let mut out = Vec::new();
    for mode in ["session", "transaction"] {
        let p = TestProxy::builder(pg)
            .mode(mode)
            .pool_size(2)
            .listen(&format!("max_message_size = {LIMIT}"))
            .start()
            .await;
        out.push((mode, p));
    }
    out
}

/// Parse with `n` int4 parameters, Bind of 0..n, Execute, Sync: the array comes back.
fn many_params(name: &str, n: usize) -> BytesMut {
    let sql = format!(
        "SELECT array_length(ARRAY[{}]::int[], 1)",
        (1..=n)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut tail = BytesMut::new();
    tail.put_slice(sql.as_bytes());
    tail.put_u8(0);
    tail.put_i16(n as i16);
    for _ in 0..n {
        tail.put_u32(23);
    }
    let mut out = BytesMut::new();
    msg::parse(&mut out, name.as_bytes(), &tail);
    let mut body = BytesMut::new();
    body.put_u8(0);
    body.put_slice(name.as_bytes());
    body.put_u8(0);
    body.put_i16(0);
    body.put_i16(n as i16);
    for i in 0..n {
        let v = i.to_string();
        body.put_i32(v.len() as i32);
        body.put_slice(v.as_bytes());
    }
    body.put_i16(0);
    out.put_u8(b'B');
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(&body);
    out.extend_from_slice(&Ext::new().execute().sync().0);
    out
}

fn last_code(got: &[Msg]) -> String {
    got.iter()
        .rev()
        .find(|m| m.tag == b'E')
        .map(|m| m.code())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_with_thousands_of_parameters_pass() {
    let pg = app_cluster();
    for (mode, proxy) in proxies(&pg).await {
        let mut c = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
        for n in [1500, 2000, 5000, 20000] {
            for name in ["", "many"] {
                c.send(&many_params(name, n)).await;
                let got = c.until_ready().await;
                assert_eq!(
                    first_column(&got),
                    [n.to_string()],
                    "{mode} {n} {name:?}: {got:?}"
                );
                if !name.is_empty() {
                    assert_eq!(tags(&c.query("DEALLOCATE many").await), "CZ");
                }
            }
        }
        assert_eq!(proxy.get("/readyz").await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_binds_and_results_up_to_the_limit_pass_and_one_byte_more_is_refused() {
    let pg = app_cluster();
    for (mode, proxy) in proxies(&pg).await {
        let mut c = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
        for size in [8191, 8192, 8193, 65537, 1 << 20] {
            let value = vec![b'x'; size];
            let e = Ext::new()
                .parse("", "SELECT length($1::text)")
                .bind("", &[&value])
                .execute()
                .sync();
            c.send(&e.0).await;
            assert_eq!(
                first_column(&c.until_ready().await),
                [size.to_string()],
                "{mode} Bind {size}"
            );
            let q = format!("SELECT {size} /*{}*/", "y".repeat(size));
            assert_eq!(
                first_column(&c.query(&q).await),
                [size.to_string()],
                "{mode} Query {size}"
            );
        }
        let rows = c.query(&format!("SELECT repeat('z', {})", LIMIT)).await;
        assert_eq!(
            first_column(&rows)[0].len(),
            LIMIT,
            "{mode}: a result of the limit's size"
        );
        // A Query message whose length field (body + 4) is exactly the limit passes.
        let exact = format!("SELECT 1 --{}", "q".repeat(LIMIT - 16));
        assert_eq!(
            first_column(&c.query(&exact).await),
            ["1"],
            "{mode}: exactly the limit"
        );
        let over = format!("SELECT 1 --{}", "q".repeat(LIMIT - 15));
        let mut q = BytesMut::new();
        msg::query(&mut q, &over);
        c.send_refused(&q).await;
        let got = c.until_closed().await;
        assert_eq!(last_code(&got), "54000", "{mode}: one byte over");
        let mut fresh = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
        assert_eq!(
            first_column(&fresh.query("SELECT 'still'").await),
            ["still"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arriving_a_byte_at_a_time_pass() {
    let pg = app_cluster();
    for (mode, proxy) in proxies(&pg).await {
        let mut c = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
        let mut all = BytesMut::new();
        msg::query(&mut all, "SELECT 'simple'");
        all.extend_from_slice(
            &Ext::new()
                .parse("s1", "SELECT $1::text")
                .bind("s1", &[b"named"])
                .execute()
                .sync()
                .0,
        );
        for b in all.iter() {
            c.stream.write_all(&[*b]).await.unwrap();
            c.stream.flush().await.unwrap();
        }
        let mut got = c.until_ready().await;
        got.extend(c.until_ready().await);
        assert_eq!(first_column(&got), ["simple", "named"], "{mode}: {got:?}");
    }
}

/// A 60 MB error message from the server (a short `RAISE EXCEPTION`) reaches the client, and
/// the memory it took goes back once the connection is idle again: the pooled connection's read
/// buffer returns to its usual size (before, it kept its largest size for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_server_error_leaves_no_memory_behind() {
    let pg = app_cluster();
    let r = TestProxy::builder(&pg).pool_size(1).spawn().await;
    r.ready().await;
    let client = r.client().await;
    assert_eq!(one(&client, "SELECT 1").await, "1");
    let baseline = r.rss_kib();
    let huge = "DO $$ BEGIN RAISE EXCEPTION '%', repeat('x', 60000000); END $$";
    for _ in 0..2 {
        let e = client.batch_execute(huge).await.unwrap_err();
        let message = e.as_db_error().map_or(0, |d| d.message().len());
        assert_eq!(message, 60_000_000, "the whole message reached the client");
        assert_eq!(one(&client, "SELECT 2").await, "2");
    }
    let after = r.rss_kib();
    assert!(
        after < baseline + 16 * 1024,
        "RSS {baseline} KiB before, {after} KiB after two 60 MB errors"
    );
    r.stop().await;
}
