//! The pool in paused time (tokio's clock, which the pool reads): connections opened through an
//! injected dial (loopback sockets, nothing upstream), a dial that fails first, and the
//! reaper's expiry of idle connections past `idle_timeout` and `max_lifetime`, `min_idle`
//! kept, and a retired generation's drain deadline. Time moves only when a test moves it.

use super::connector::Dial;
use super::core_tests::generations_with;
use super::generation::{Generation, Limits};
use crate::backend::{BackendError, ServerConn};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{Instant, advance};

/// Counts its calls; the first `fail` of them are refused.
#[derive(Default)]
struct Dialer {
    calls: AtomicU32,
    fail: u32,
    peers: Mutex<Vec<std::net::TcpStream>>,
}

impl Dialer {
    fn failing(fail: u32) -> Arc<Self> {
        Arc::new(Self {
            fail,
            ..Self::default()
        })
    }

    fn dial(self: &Arc<Self>) -> Dial {
        let me = self.clone();
        Arc::new(move |_, _, id| {
            let me = me.clone();
            Box::pin(async move {
                let n = me.calls.fetch_add(1, Ordering::SeqCst);
                if n < me.fail {
                    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
                    return Err(BackendError::Io(refused));
                }
                Ok(me.loopback(100 + n as i32, id))
            })
        })
    }

    /// A connection on a loopback socket, made without waiting on the event loop (a blocking
    /// connect to a listening socket completes at once), so paused time cannot jump meanwhile.
    fn loopback(&self, pid: i32, generation: u64) -> ServerConn {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        self.peers
            .lock()
            .unwrap()
            .push(listener.accept().unwrap().0);
        stream.set_nonblocking(true).unwrap();
        let stream = tokio::net::TcpStream::from_std(stream).unwrap();
        let mut conn = ServerConn::on(crate::backend::stream::Stream::Plain(stream), generation);
        conn.pid = pid;
        conn
    }
}

fn limits(min_idle: u32, idle: u64, lifetime: u64) -> Limits {
    Limits {
        min_idle,
        idle_timeout: Duration::from_secs(idle),
        max_lifetime: Duration::from_secs(lifetime),
    }
}

fn one(size: u32, limits: Limits, dialer: &Arc<Dialer>) -> Arc<Generation> {
    generations_with(size, 1, limits, dialer.dial()).remove(0)
}

/// Lets spawned tasks run until `done` holds (no time passes: the tasks need none).
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the pool's tasks did not get there");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gets_a_connection_opened_for_it_after_refused_attempts() {
    let dialer = Dialer::failing(2);
    let g = one(1, limits(0, 600, 3600), &dialer);
    let start = Instant::now();
    let Ok(Err(rx)) = g.take_or_wait() else {
        panic!("nothing idle: the client queues and a connection opens for it")
    };
    let conn = rx.await.expect("served once a dial succeeds");
    assert_eq!(
        dialer.calls.load(Ordering::SeqCst),
        3,
        "two refusals, then a login"
    );
    assert_eq!(conn.pid, 102);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(150),
        "paused 50 ms, then 100 ms, between attempts"
    );
    g.put(conn);
    assert_eq!(g.counts(), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn an_open_that_fails_with_no_one_waiting_gives_its_place_back() {
    let dialer = Dialer::failing(u32::MAX);
    let g = one(1, limits(0, 600, 3600), &dialer);
    let Ok(Err(rx)) = g.take_or_wait() else {
        panic!("a place in the queue")
    };
    assert_eq!(g.counts().0, 1, "the place being opened is counted");
    drop(rx);
    until(|| g.counts() == (0, 0)).await;
    assert!(dialer.calls.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_past_idle_timeout_close_down_to_min_idle() {
    let dialer = Dialer::failing(0);
    let g = one(4, limits(1, 10, 3600), &dialer);
    for pid in 1..=3 {
        g.adopt(Box::new(dialer.loopback(pid, 1)));
    }
    assert_eq!(g.reap(), 0, "nothing stale yet, min_idle met");
    assert_eq!(g.counts(), (3, 3));
    advance(Duration::from_secs(9)).await;
    assert_eq!(g.reap(), 0);
    assert_eq!(g.counts(), (3, 3), "9 s idle: kept");
    advance(Duration::from_secs(2)).await;
    assert_eq!(g.reap(), 0, "min_idle still met");
    assert_eq!(
        g.counts(),
        (1, 1),
        "11 s idle: the two coldest closed, min_idle kept"
    );
    let kept = g.take_idle().unwrap();
    assert_eq!(kept.pid, 3, "the warmest one stays");
}

#[tokio::test(start_paused = true)]
async fn a_connection_past_max_lifetime_closes_and_min_idle_is_opened_again() {
    let dialer = Dialer::failing(0);
    let g = one(2, limits(1, 600, 30), &dialer);
    g.adopt(Box::new(dialer.loopback(1, 1)));
    advance(Duration::from_secs(31)).await;
    let want = g.reap();
    assert_eq!(
        want, 1,
        "the old one closed even below min_idle; one to open"
    );
    assert_eq!(g.counts(), (1, 0), "its replacement's place is counted");
    g.connector.open(g.clone());
    until(|| g.counts() == (1, 1)).await;
    assert_eq!(dialer.calls.load(Ordering::SeqCst), 1);
    assert_eq!(g.take_idle().unwrap().pid, 100, "the new connection");
}

#[tokio::test(start_paused = true)]
async fn a_connection_in_use_is_expired_at_the_drain_deadline() {
    let dialer = Dialer::failing(0);
    let g = one(1, limits(0, 600, 3600), &dialer);
    g.adopt(Box::new(dialer.loopback(1, 1)));
    let in_use = g.take_idle().unwrap();
    g.retire(Duration::from_secs(60));
    tokio::task::yield_now().await;
    advance(Duration::from_secs(59)).await;
    assert!(
        !g.is_expired(),
        "59 s into the drain: a transaction may still finish"
    );
    advance(Duration::from_secs(2)).await;
    until(|| g.is_expired()).await;
    drop(in_use);
    assert_eq!(g.counts(), (0, 0), "closed when given back");
}
