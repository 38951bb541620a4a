//! `pool.prepare_unnamed`: a repeated unnamed statement is prepared once per upstream
//! connection, and the client still sees what a session of its own would show it, a schema
//! change included, except inside a transaction block (the documented residual). Each program
//! runs straight against PostgreSQL and through rotagate, and the replies are compared.

mod common;

use common::wire::{Ext, Msg, Raw, first_column};
use common::*;

/// Tags (a RowDescription with its column count) and SQLSTATEs: "1 2 T2 D C ZI".
fn outline(msgs: &[Msg]) -> String {
    common::wire::outline(msgs, true)
}

/// One request as drivers send it: Parse, Bind, Describe, Execute, Sync of `sql`, unnamed.
async fn request(raw: &mut Raw, sql: &str) -> String {
    let e = Ext::new()
        .parse("", sql)
        .bind("", &[])
        .describe_portal("")
        .execute()
        .sync();
    raw.send(&e.0).await;
    outline(&raw.until_ready().await)
}

/// pgx's way: Parse and Describe under one Sync, Bind and Execute under the next.
async fn described_then_run(raw: &mut Raw, sql: &str) -> String {
    let e = Ext::new().parse("", sql).describe_statement("").sync();
    raw.send(&e.0).await;
    let first = outline(&raw.until_ready().await);
    raw.send(&Ext::new().bind("", &[]).execute().sync().0).await;
    format!("{first} | {}", outline(&raw.until_ready().await))
}

/// The program: the same statement again and again, the table changed under it (from another
/// session), and inside a transaction block.
async fn program(raw: &mut Raw, pg: &common::pg::Pg, db: &str) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(request(raw, "SELECT * FROM pu").await);
    }
    got.push(described_then_run(raw, "SELECT * FROM pu").await);
    pg.sql_in(db, "ALTER TABLE pu ADD COLUMN b int");
    // Stale upstream: retried, unseen.
    got.push(request(raw, "SELECT * FROM pu").await);
    got.push(request(raw, "SELECT * FROM pu").await);
    pg.sql_in(db, "ALTER TABLE pu ADD COLUMN c int");
    got.push(described_then_run(raw, "SELECT * FROM pu").await);
    got.push(request(raw, "SELECT * FROM pu").await);
    got
}

/// rotagate with one upstream connection (and `pool_line`), and a client of it.
async fn through_one_connection(pg: &common::pg::Pg, pool_line: &str) -> (TestProxy, Raw) {
    let proxy = TestProxy::builder(pg)
        .pool_size(1)
        .pool(pool_line)
        .start()
        .await;
    let raw = Raw::connect(proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await;
    (proxy, raw)
}

fn prepare_table(pg: &common::pg::Pg, db: &str) {
    pg.sql_in(
        db,
        &format!(
            "DROP TABLE IF EXISTS pu; CREATE TABLE pu (a int); INSERT INTO pu VALUES (1); \
             ALTER TABLE pu OWNER TO {APP_USER}"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_unnamed_statement_is_prepared_once_and_schema_changes_stay_unseen() {
    let pg = app_cluster();
    pg.sql(&format!("CREATE DATABASE direct OWNER {APP_USER}"));
    prepare_table(&pg, "direct");
    prepare_table(&pg, "appdb");
    let addr = ([127, 0, 0, 1], pg.port).into();
    let mut direct = Raw::connect_to(addr, APP_USER, APP_PASSWORD, "direct").await;
    let want = program(&mut direct, &pg, "direct").await;

    let (_proxy, mut raw) = through_one_connection(&pg, "prepare_unnamed = true").await;
    let got = program(&mut raw, &pg, "appdb").await;
    assert_eq!(got, want, "through rotagate as directly");
    assert_eq!(
        want[4], "1 2 T2 D C ZI",
        "the new column shows after the change"
    );

    // One statement upstream serves the text (pool.size 1: the same connection answers).
    let shared = raw
        .query("SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT * FROM pu'")
        .await;
    assert_eq!(first_column(&shared), vec!["1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_a_transaction_block_a_stale_statement_fails_as_a_named_one_would() {
    let pg = app_cluster();
    prepare_table(&pg, "appdb");
    let (_proxy, mut raw) = through_one_connection(&pg, "prepare_unnamed = true").await;
    for _ in 0..2 {
        assert_eq!(request(&mut raw, "SELECT * FROM pu").await, "1 2 T1 D C ZI");
    }
    raw.query("BEGIN").await;
    pg.sql_in("appdb", "ALTER TABLE pu ADD COLUMN b int");
    // Directly: "1 2 T2 D C ZT". The block cannot be run again: the client gets the error
    // PostgreSQL gives a named statement (README, "Transaction mode").
    assert_eq!(request(&mut raw, "SELECT * FROM pu").await, "1 E:0A000 ZE");
    raw.query("ROLLBACK").await;
    // The statement was prepared anew.
    assert_eq!(request(&mut raw, "SELECT * FROM pu").await, "1 2 T2 D C ZI");
    assert_eq!(request(&mut raw, "SELECT * FROM pu").await, "1 2 T2 D C ZI");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turned_off_every_unnamed_parse_goes_upstream() {
    let pg = app_cluster();
    prepare_table(&pg, "appdb");
    let (_proxy, mut raw) = through_one_connection(&pg, "prepare_unnamed = false").await;
    for _ in 0..3 {
        assert_eq!(request(&mut raw, "SELECT * FROM pu").await, "1 2 T1 D C ZI");
    }
    let shared = raw
        .query("SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT * FROM pu'")
        .await;
    assert_eq!(first_column(&shared), vec!["0"]);
}

/// pgconn's TestConnExecBatchHuge: one pipeline of many unnamed Parse, Bind, Describe,
/// Execute, then one Sync; rotagate's ParseCompletes go in between the server's replies, which
/// arrive in reads that split messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_pipeline_of_one_unnamed_statement_gets_every_reply_in_order() {
    let pg = app_cluster();
    let (_proxy, mut raw) = through_one_connection(&pg, "prepare_unnamed = true").await;
    let n = 20_000;
    let mut e = Ext::new();
    for i in 0..n {
        e = e
            .parse("", "select $1::text")
            .bind("", &[i.to_string().as_bytes()])
            .describe_portal("")
            .execute();
    }
    let bytes = e.sync().0;
    // Written while the replies are read: neither side's buffers hold it all.
    let (mut rd, mut wr) = raw.stream.split();
    let write = tokio::io::AsyncWriteExt::write_all(&mut wr, &bytes);
    let read = async {
        use tokio::io::AsyncReadExt;
        let mut got: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut buf = bytes::BytesMut::new();
        loop {
            while buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf.len() <= len {
                    break;
                }
                let m = buf.split_to(len + 1);
                got.push((m[0], m[5..].to_vec()));
                if m[0] == b'Z' {
                    return got;
                }
            }
            assert!(
                rd.read_buf(&mut buf).await.unwrap() > 0,
                "connection closed"
            );
        }
    };
    let (written, sender) = tokio::join!(write, read);
    written.unwrap();
    let sender: Vec<Msg> = sender
        .into_iter()
        .map(|(tag, body)| Msg { tag, body })
        .collect();
    let rows: Vec<String> = sender
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| String::from_utf8_lossy(&m.body[6..]).into_owned())
        .collect();
    assert_eq!(rows.len(), n, "one row per query");
    assert!(rows.iter().enumerate().all(|(i, r)| *r == i.to_string()));
    let parses = sender.iter().filter(|m| m.tag == b'1').count();
    assert_eq!(parses, n, "one ParseComplete per Parse");
    assert_eq!(sender.last().map(|m| m.tag), Some(b'Z'));
    assert_eq!(request(&mut raw, "SELECT 1").await, "1 2 T1 D C ZI");
}
