//! The hand-over core on its own: connections are real loopback sockets (no PostgreSQL behind
//! them, nothing is sent), adopted into a generation as the rotation engine adopts its proof,
//! so nothing here opens a connection upstream. Take (LIFO), put, wait (FIFO), steal from
//! another worker, retire, a broken connection closed on put, a grown buffer given back.

use super::connector::{Connector, Dial, upstream_dial};
use super::generation::{Generation, Limits};
use super::shared::Shared;
use crate::backend::{ServerConn, UpstreamTarget};
use crate::secrets::Credentials;
use std::sync::Arc;
use std::time::Duration;

/// A connection on a loopback socket, told apart by `pid`; the peer end is kept open (a
/// closed peer would make the connection look dead when taken).
async fn conn(pid: i32, peers: &mut Vec<tokio::net::TcpStream>) -> Box<ServerConn> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stream, accepted) = tokio::join!(
        tokio::net::TcpStream::connect(listener.local_addr().unwrap()),
        listener.accept()
    );
    peers.push(accepted.unwrap().0);
    let mut conn = ServerConn::on(crate::backend::stream::Stream::Plain(stream.unwrap()), 1);
    conn.pid = pid;
    Box::new(conn)
}

pub(super) fn target() -> Arc<UpstreamTarget> {
    let text = "[[clients]]\nuser = \"app\"\npassword = \"pw\"\n[credentials]\n\
                source = \"file\"\n[credentials.file]\npath = \"/s.json\"\n[upstream]\n\
                database = \"app\"\nhost = \"127.0.0.1\"\ntls = \"disable\"\n";
    let cfg = crate::config::parse(text, []).unwrap();
    Arc::new(UpstreamTarget::from_config(&cfg.databases[0].upstream).unwrap())
}

/// `workers` generations (one per worker) sharing one `pool.size` of `size`; nothing dials
/// (a dial would try 127.0.0.1:5432).
fn generations(size: u32, workers: usize) -> Vec<Arc<Generation>> {
    let limits = Limits {
        min_idle: 0,
        idle_timeout: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(3600),
    };
    generations_with(size, workers, limits, upstream_dial())
}

/// [`generations`] with its limits and its way of opening connections.
pub(super) fn generations_with(
    size: u32,
    workers: usize,
    limits: Limits,
    dial: Dial,
) -> Vec<Arc<Generation>> {
    let shared = Arc::new(Shared::new(size));
    let creds = Arc::new(Credentials {
        username: "app".into(),
        password: crate::crypto::SecretString::new("pw".into()),
        host: None,
        port: None,
        dbname: None,
        version: "v1".into(),
        token: None,
    });
    let all: Vec<_> = (0..workers)
        .map(|_| {
            let connector = Arc::new(Connector {
                auth_failed: Default::default(),
                writer_doubt: Default::default(),
                read_only_seen: Default::default(),
                runtime: tokio::runtime::Handle::current(),
                database: "db".into(),
                dial: dial.clone(),
            });
            Arc::new(Generation::new(
                1,
                (creds.clone(), target()),
                limits,
                shared.clone(),
                connector,
            ))
        })
        .collect();
    shared.set_siblings(&all);
    all
}

#[tokio::test]
async fn the_warmest_idle_connection_is_taken_first() {
    let mut peers = Vec::new();
    let g = generations(2, 1).remove(0);
    g.adopt(conn(1, &mut peers).await);
    g.adopt(conn(2, &mut peers).await);
    assert_eq!(g.counts(), (2, 2));
    let a = g.take_idle().unwrap();
    assert_eq!(a.pid, 2, "LIFO: the one given back last");
    let b = g.take_idle().unwrap();
    assert_eq!(b.pid, 1);
    assert!(g.take_idle().is_none());
    drop((a, b));
    assert_eq!(g.counts(), (2, 2), "both back on the stack");
}

#[tokio::test]
async fn a_connection_given_back_goes_to_the_first_waiter() {
    let mut peers = Vec::new();
    let g = generations(1, 1).remove(0);
    g.adopt(conn(7, &mut peers).await);
    let held = g.take_idle().unwrap();
    // At pool.size: the next client queues (nothing opens, nothing to steal).
    let Ok(Err(first)) = g.take_or_wait() else {
        panic!("expected a place in the queue")
    };
    let Ok(Err(second)) = g.take_or_wait() else {
        panic!("expected a place in the queue")
    };
    assert!(g.has_waiters());
    drop(held);
    let got = first.await.expect("the first waiter is served");
    assert_eq!(got.pid, 7);
    g.put(got);
    assert_eq!(second.await.unwrap().pid, 7, "then the second");
}

#[tokio::test]
async fn a_worker_at_the_limit_takes_another_workers_idle_connection() {
    let mut peers = Vec::new();
    let gs = generations(1, 2);
    gs[1].adopt(conn(9, &mut peers).await);
    let Ok(Err(rx)) = gs[0].take_or_wait() else {
        panic!("worker 0 has nothing idle and pool.size is reached")
    };
    assert_eq!(rx.await.unwrap().pid, 9, "worker 1's idle connection");
    assert_eq!(gs[1].counts(), (0, 0));
}

#[tokio::test]
async fn retired_and_broken_connections_close_when_given_back() {
    let mut peers = Vec::new();
    let g = generations(2, 1).remove(0);
    g.adopt(conn(1, &mut peers).await);
    g.adopt(conn(2, &mut peers).await);
    let mut broken = g.take_idle().unwrap();
    broken.broken = true;
    drop(broken);
    assert_eq!(g.counts(), (1, 1), "the broken one closed, its place freed");
    let in_use = g.take_idle().unwrap();
    g.retire(Duration::from_secs(60));
    assert!(g.is_retired());
    assert!(
        g.take_or_wait().is_err(),
        "a retired generation takes no one"
    );
    drop(in_use);
    assert_eq!(g.counts(), (0, 0), "given back after retirement: closed");
    tokio::time::timeout(Duration::from_secs(5), g.gone())
        .await
        .expect("the last connection's close is told");
}

#[tokio::test]
async fn a_read_buffer_grown_by_a_large_reply_is_given_back() {
    let mut peers = Vec::new();
    let g = generations(1, 1).remove(0);
    g.adopt(conn(1, &mut peers).await);
    let mut c = g.take_idle().unwrap();
    c.rbuf.reserve(50 << 20);
    drop(c);
    let c = g.take_idle().unwrap();
    assert!(c.rbuf.capacity() <= 64 * 1024, "{}", c.rbuf.capacity());
}
