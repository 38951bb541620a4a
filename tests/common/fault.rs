//! Faults between rotagate and what it depends on, and a load that counts what they cost.
//!
//! [`FaultProxy`] is a TCP proxy of our own, on its own threads, between rotagate and
//! PostgreSQL (or an HTTP secret source): it passes bytes, cuts every open connection, holds
//! them and new ones silent (a black hole), refuses connections (its port closed), or answers
//! every HTTP request with 500. [`Load`] is `clients` connections through rotagate running
//! transactions back to back, counting failures and reconnects, and the time each client
//! took to succeed again after a fault ended.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Pass = 0,
    /// Nothing is forwarded, in either direction, on old or new connections.
    BlackHole = 1,
    /// The port is closed: connecting is refused.
    Refuse = 2,
    /// Every request is answered `500 Internal Server Error` (HTTP upstreams).
    Http500 = 3,
}

struct Shared {
    mode: AtomicU8,
    open: Mutex<Vec<TcpStream>>,
}

pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// A proxy on a free port in front of `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(Mode::Pass as u8),
            open: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        std::thread::spawn(move || accept_loop(listener, port, upstream, s));
        FaultProxy { port, shared }
    }

    pub fn set(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Cuts every connection open now, both ways (the server's side sees its client vanish,
    /// rotagate sees the server close mid-transaction).
    pub fn cut(&self) {
        for s in self.shared.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn mode(s: &Shared) -> Mode {
    match s.mode.load(Ordering::SeqCst) {
        1 => Mode::BlackHole,
        2 => Mode::Refuse,
        3 => Mode::Http500,
        _ => Mode::Pass,
    }
}

fn accept_loop(listener: TcpListener, port: u16, upstream: u16, s: Arc<Shared>) {
    let mut listener = Some(listener);
    loop {
        if mode(&s) == Mode::Refuse {
            listener = None;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => listener.insert(l),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        l.set_nonblocking(true).unwrap();
        match l.accept() {
            Ok((client, _)) => {
                client.set_nonblocking(false).unwrap();
                let s = s.clone();
                std::thread::spawn(move || serve(client, upstream, s));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve(client: TcpStream, upstream: u16, s: Arc<Shared>) {
    if mode(&s) == Mode::Http500 {
        return answer_500(client);
    }
    // A connection opened into a black hole hangs, as a SYN into a lossy network is sent again
    // and again: nothing reaches the upstream until the hole ends.
    while mode(&s) == Mode::BlackHole {
        std::thread::sleep(Duration::from_millis(10));
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    {
        let mut open = s.open.lock().unwrap();
        open.push(client.try_clone().unwrap());
        open.push(server.try_clone().unwrap());
    }
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let shared = s.clone();
    std::thread::spawn(move || pump(c2, s2, shared));
    pump(server, client, s);
}

/// Copies `from` to `to`, holding bytes while the proxy is a black hole: what TCP does over a
/// network that loses every packet for less than its retransmission timeout (the sender sends
/// again until they get through). Dropping them here instead would not be a harsher fault but a
/// different one no TCP stack produces: this proxy has already acknowledged them.
fn pump(mut from: TcpStream, mut to: TcpStream, s: Arc<Shared>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while mode(&s) == Mode::BlackHole {
            std::thread::sleep(Duration::from_millis(10));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn answer_500(mut client: TcpStream) {
    let mut buf = [0u8; 8192];
    client.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let _ = client.read(&mut buf);
    let _ = client.write_all(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/x-amz-json-1.1\r\n\
          Content-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
}

/// What a fault cost the load.
#[derive(Debug, Default, Clone)]
pub struct Cost {
    pub ok: u64,
    pub failed: u64,
    pub reconnects: u64,
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    reconnects: AtomicU64,
}

/// `clients` sessions through a proxy, each running `SELECT 1` transactions back to back.
pub struct Load {
    tally: Arc<Tally>,
    /// Per client, when it last succeeded.
    last_ok: Arc<Mutex<Vec<Instant>>>,
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub async fn start(url: &str, clients: usize) -> Load {
        let tally = Arc::new(Tally::default());
        let last_ok = Arc::new(Mutex::new(vec![Instant::now(); clients]));
        let stop = tokio_util::sync::CancellationToken::new();
        let mut tasks = Vec::new();
        for i in 0..clients {
            let (url, tally, last_ok, stop) =
                (url.to_owned(), tally.clone(), last_ok.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                client_loop(i, &url, &tally, &last_ok, &stop).await
            }));
        }
        Load {
            tally,
            last_ok,
            stop,
            tasks,
        }
    }

    /// [`Load::start`], once more than 50 transactions have gone through (at most 30 s).
    pub async fn running(url: &str, clients: usize) -> Load {
        let load = Load::start(url, clients).await;
        super::wait_until(30, "the load to run", || async { load.snapshot().ok > 50 }).await;
        load
    }

    /// Counts so far.
    pub fn snapshot(&self) -> Cost {
        let t = &self.tally;
        Cost {
            ok: t.ok.load(Ordering::Relaxed),
            failed: t.failed.load(Ordering::Relaxed),
            reconnects: t.reconnects.load(Ordering::Relaxed),
        }
    }

    /// Waits (up to `within`) until every client has succeeded after `ended`; the wait is the
    /// recovery time.
    pub async fn recovered_after(&self, ended: Instant, within: Duration) -> Option<Duration> {
        let deadline = Instant::now() + within;
        loop {
            let last = self.last_ok.lock().unwrap().iter().min().copied()?;
            if last > ended {
                return Some(Instant::now().saturating_duration_since(ended));
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop(mut self) -> Cost {
        self.stop.cancel();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        self.snapshot()
    }
}

async fn client_loop(
    i: usize,
    url: &str,
    tally: &Tally,
    last_ok: &Mutex<Vec<Instant>>,
    stop: &tokio_util::sync::CancellationToken,
) {
    let mut client = None;
    while !stop.is_cancelled() {
        let c = match &client {
            Some(c) => c,
            None => match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    client.insert(c)
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let step = tokio::time::timeout(Duration::from_secs(60), c.simple_query("SELECT 1"));
        match tokio::select! { r = step => r, _ = stop.cancelled() => break } {
            Ok(Ok(_)) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                last_ok.lock().unwrap()[i] = Instant::now();
            }
            _ => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                if c.is_closed() {
                    tally.reconnects.fetch_add(1, Ordering::Relaxed);
                    client = None;
                }
            }
        }
    }
}
