//! The hot path: bytes between one client and one upstream connection. A [`Protocol`] (one per
//! pool mode) decides per message; this file moves the bytes. Reads and writes of both
//! directions are polled together in one future, so neither direction can block the other;
//! each direction is written with one vectored write from rotagate's own bytes and the read
//! buffer. The relay ends at rest (when the protocol releases there), when the client leaves,
//! when the server goes, at shutdown between transactions, or when its credential generation is
//! retired; every end that is not at rest closes the upstream connection and counts why.

pub mod budget;
pub mod lane;
pub mod limits;
pub mod side;

use super::error::FrontendError;
use super::stream::ClientStream;
use crate::backend::ServerConn;
use crate::pool::Pooled;
use bytes::{Bytes, BytesMut};
use pgwire::tokio::server::MaybeTls;
use side::ClientSide;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;

/// Bytes queued in one direction above which it stops reading (backpressure).
const MAX_READY: usize = 256 * 1024;
/// Free space a read wants in its buffer.
const READ_ROOM: usize = 8 * 1024;

/// What both pool modes' decisions tell the relay.
#[derive(Debug, Default)]
pub struct Signals {
    /// The client sent Terminate.
    pub terminate: bool,
    /// The upstream session ended with this FATAL ErrorResponse (transaction mode keeps it
    /// from the client and owes it an error for the transaction in flight instead).
    pub fatal: Option<Bytes>,
    /// The server said it is read-only (25006): it may have become a standby.
    pub read_only: bool,
    /// What rotagate knows of the connection's state may be wrong: close it at the end.
    pub unsure: bool,
}

/// A pool mode's decisions on the messages of both directions.
pub trait Protocol {
    /// Decides on what the client sent (`c.buf`, queued on `c.up`); returns how many more bytes
    /// the message at the front needs.
    fn client(&mut self, c: &mut ClientSide, s: &mut ServerConn) -> Result<usize, FrontendError>;
    /// Decides on what the server sent (`s.rbuf`, queued on `c.down`).
    fn server(&mut self, c: &mut ClientSide, s: &mut ServerConn) -> Result<usize, FrontendError>;
    fn signals(&self) -> &Signals;
    /// Nothing owed either way and no extended-protocol message waits for its Sync.
    fn settled(&self) -> bool;
    /// The relay ends as soon as the connection is at rest (transaction mode, not pinned).
    fn releases(&self) -> bool;
    /// The client's session is its upstream session: the connection closes when it leaves.
    fn pinned(&self) -> bool;
    /// A client walk that stopped to wait for replies may go on (they came).
    fn resume(&mut self) -> bool {
        false
    }
    /// Replies are owed by the server (for `pool.query_timeout`; modes that do not track
    /// replies say false).
    fn owed(&self) -> bool {
        false
    }
}

/// How a relay ended.
#[derive(Debug)]
pub enum End {
    /// Transaction mode: the transaction ended and the connection is at rest.
    Released,
    /// The client hung up or sent Terminate.
    ClientGone,
    /// The upstream connection ended under the client: its FATAL error, if it sent one.
    ServerGone(Option<Bytes>),
    /// Shutdown was requested and the session is between transactions.
    Shutdown,
    /// The connection's credential generation was retired `pool.drain_timeout` ago.
    Retired,
    /// The client sent nothing inside a transaction for `pool.idle_transaction_timeout`; the
    /// connection is left as it is (the caller rolls back or closes it).
    IdleInTransaction,
    /// The client sent nothing at rest for `listen.client_idle_timeout`.
    ClientIdle,
}

/// Why rotagate closed an upstream connection (`rotagate_server_connections_closed_total`).
pub fn close(s: &mut ServerConn, reason: &'static str) {
    if !s.broken {
        s.broken = true;
        metrics::counter!("rotagate_server_connections_closed_total", "reason" => reason, "database" => s.database.to_string())
            .increment(1);
    }
}

/// Relays until an end (see the module comment). The connection is closed unless the end
/// left it at rest.
pub async fn relay(
    c: &mut ClientSide,
    s: &mut Pooled,
    p: &mut impl Protocol,
    shutdown: &CancellationToken,
    limits: limits::Limits,
) -> Result<End, FrontendError> {
    let end = run(c, s, p, shutdown, limits).await;
    // Lost, or told it is read-only: the host may have failed over (rotation looks).
    if p.signals().read_only {
        s.generation().doubt_read_only();
    } else if matches!(end, Ok(End::ServerGone(_))) {
        s.generation().doubt();
    }
    let pinned_left = matches!(end, Ok(End::ClientGone | End::ClientIdle)) && p.pinned();
    let rolled_back_later = matches!(end, Ok(End::IdleInTransaction));
    if (!at_rest(c, s, p) && !rolled_back_later) || pinned_left || p.signals().unsure {
        close(s, reason(&end, p));
    }
    end
}

fn reason(end: &Result<End, FrontendError>, p: &impl Protocol) -> &'static str {
    match end {
        Ok(End::ClientGone | End::ClientIdle) if p.pinned() => "pinned",
        _ if p.signals().unsure => "unsure",
        Ok(End::Released | End::Shutdown) => "busy",
        Ok(End::ClientGone) => "client_left",
        Ok(End::ServerGone(_)) => "server_lost",
        Ok(End::Retired) => "drain_timeout",
        Ok(End::IdleInTransaction) => "idle_in_transaction",
        Ok(End::ClientIdle) => "client_idle",
        Err(FrontendError::Wire(crate::wire::WireError::TooLarge(_))) => "too_large",
        Err(FrontendError::Wire(crate::wire::WireError::Malformed(_))) => "malformed",
        Err(FrontendError::ServerProtocol(_)) => "server_protocol",
        Err(_) => "client_error",
    }
}

/// Nothing in flight either way, nothing owed, and the server idle outside a transaction.
pub fn at_rest(c: &ClientSide, s: &ServerConn, p: &impl Protocol) -> bool {
    p.settled()
        && p.signals().fatal.is_none()
        && !s.broken
        && s.tx_status == b'I'
        && c.up.queued() == 0
        && c.down.queued() == 0
        && c.up.at_boundary()
        && c.down.at_boundary()
        && s.rbuf.is_empty()
}

enum Io {
    WroteServer(usize),
    WroteClient(usize),
    FlushedServer,
    FlushedClient,
    ReadClient(usize),
    ReadServer(usize),
    ClientFailed,
    ServerFailed,
    Shutdown,
    Retired,
    /// A limit of [`limits::Limits`] ran out.
    Waited(limits::Wait),
}

/// What the next turn of the loop must do.
struct Wants {
    /// Bytes the message at the front of each direction still needs.
    client: usize,
    server: usize,
    flush_server: bool,
    flush_client: bool,
    /// Something changed that a walk of that direction may act on (bytes read, or bytes
    /// written that let a rewrite wait no longer); client decisions can also owe replies.
    scan_client: bool,
    scan_server: bool,
}

impl Default for Wants {
    fn default() -> Self {
        Self {
            client: 0,
            server: 0,
            flush_server: false,
            flush_client: false,
            scan_client: true,
            scan_server: true,
        }
    }
}

async fn run(
    c: &mut ClientSide,
    s: &mut Pooled,
    p: &mut impl Protocol,
    stop: &CancellationToken,
    limits: limits::Limits,
) -> Result<End, FrontendError> {
    let mut timer = limits::Timer::default();
    let mut shutdown = pin!(stop.cancelled());
    let (home, waker) = (s.generation().clone(), c.waker.clone());
    c.watch(&home);
    let mut w = Wants::default();
    loop {
        if w.scan_client {
            w.client = p.client(c, s)?;
            w.scan_client = false;
            w.scan_server = true;
        }
        if w.scan_server {
            w.server = p.server(c, s)?;
            w.scan_server = false;
            if p.resume() {
                w.scan_client = true;
                continue;
            }
        }
        let drained =
            c.up.queued() == 0 && c.down.queued() == 0 && !w.flush_server && !w.flush_client;
        if drained {
            if let Some(end) = ended(c, s, p, stop) {
                return Ok(end);
            }
        }
        let idle = drained && at_rest(c, s, p);
        if limits.any() {
            let st = limits::State {
                drained,
                at_rest: idle,
                client_silent: c.buf.is_empty() && c.up.queued() == 0,
                owed: p.owed() && c.up.queued() == 0,
            };
            timer.set(limits.applies(&st));
        }
        let io = poll_fn(|cx| {
            waker.register(cx.waker());
            if home.is_expired() {
                return Poll::Ready(Io::Retired);
            }
            if let Some(wait) = timer.poll(cx) {
                return Poll::Ready(Io::Waited(wait));
            }
            poll_io(cx, c, s, p.signals(), &w, idle, shutdown.as_mut())
        })
        .await;
        if let Io::Waited(wait) = io {
            match wait {
                limits::Wait::Server => cancel_slow_query(s),
                limits::Wait::InTransaction => return Ok(End::IdleInTransaction),
                limits::Wait::Client => return Ok(End::ClientIdle),
            }
            continue;
        }
        // Every step is I/O on a tokio socket, which spends the task's budget: a relay that
        // always has bytes to move still lets other tasks run.
        if let Some(end) = progress(io, c, s, &mut w) {
            return Ok(end);
        }
    }
}

/// `pool.query_timeout` ran out: the query is cancelled upstream, on a connection of its own,
/// as a client's cancel is; the server then fails it with 57014, which the client gets.
fn cancel_slow_query(s: &Pooled) {
    let (target, pid, key) = (s.generation().target.clone(), s.pid, s.key);
    let database = s.database.to_string();
    tracing::warn!(database = %database, pid, "a query ran past pool.query_timeout; cancelling it upstream");
    metrics::counter!("rotagate_query_timeouts_total", "database" => database).increment(1);
    tokio::spawn(async move {
        if let Err(e) = crate::backend::cancel(&target, pid, key).await {
            tracing::warn!(error = %e, "could not cancel a query past pool.query_timeout");
        }
    });
}

/// Ends that wait until everything queued is written.
fn ended(
    c: &ClientSide,
    s: &ServerConn,
    p: &impl Protocol,
    stop: &CancellationToken,
) -> Option<End> {
    let signals = p.signals();
    if signals.terminate {
        return Some(End::ClientGone);
    }
    if signals.fatal.is_some() {
        return Some(End::ServerGone(signals.fatal.clone()));
    }
    let rest = at_rest(c, s, p);
    if rest && p.releases() {
        return Some(End::Released);
    }
    if rest && stop.is_cancelled() {
        return Some(End::Shutdown);
    }
    None
}

/// Books one I/O step; the end of the relay when the step ends it.
fn progress(io: Io, c: &mut ClientSide, s: &mut ServerConn, w: &mut Wants) -> Option<End> {
    match io {
        Io::WroteServer(n) => {
            c.up.wrote(&mut c.buf, n);
            c.budget.release(&mut c.buf);
            w.flush_server = c.up.queued() == 0;
            w.scan_client = true;
        }
        Io::WroteClient(n) => {
            c.down.wrote(&mut s.rbuf, n);
            w.flush_client = c.down.queued() == 0;
            w.scan_server = true;
        }
        Io::ReadClient(n) if n > 0 => w.scan_client = true,
        Io::ReadServer(n) if n > 0 => w.scan_server = true,
        Io::FlushedServer => w.flush_server = false,
        Io::FlushedClient => w.flush_client = false,
        Io::ReadClient(0) | Io::ClientFailed => return Some(End::ClientGone),
        Io::ReadServer(0) | Io::ServerFailed => return Some(End::ServerGone(None)),
        Io::Retired => return Some(End::Retired),
        Io::ReadClient(_) | Io::ReadServer(_) | Io::Shutdown | Io::Waited(_) => {}
    }
    None
}

/// Makes room for a read: `want` more bytes for the message at the front, or a chunk.
fn room(buf: &mut BytesMut, want: usize) {
    let want = want.max(READ_ROOM);
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
    }
}

/// Writes `a` then `b`, in one vectored write where the stream takes one.
fn poll_write_two<W: AsyncWrite + Unpin>(
    w: &mut W,
    cx: &mut Context<'_>,
    a: &[u8],
    b: &[u8],
) -> Poll<io::Result<usize>> {
    if a.is_empty() {
        return Pin::new(w).poll_write(cx, b);
    }
    if b.is_empty() || !w.is_write_vectored() {
        return Pin::new(w).poll_write(cx, a);
    }
    Pin::new(w).poll_write_vectored(cx, &[IoSlice::new(a), IoSlice::new(b)])
}

fn poll_write_client(
    s: &mut ClientStream,
    cx: &mut Context<'_>,
    a: &[u8],
    b: &[u8],
) -> Poll<io::Result<usize>> {
    // pgwire's stream does not pass vectored writes on; plain TCP takes them directly.
    match s {
        MaybeTls::Plain(tcp) => poll_write_two(tcp, cx, a, b),
        other => poll_write_two(other, cx, a, b),
    }
}

/// One step of I/O in whichever direction is ready first: writes, then flushes, then reads.
fn poll_io(
    cx: &mut Context<'_>,
    c: &mut ClientSide,
    s: &mut ServerConn,
    f: &Signals,
    w: &Wants,
    idle: bool,
    shutdown: Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
) -> Poll<Io> {
    if c.up.queued() > 0 {
        let (a, b) = c.up.slices(&c.buf);
        if let Poll::Ready(r) = poll_write_two(&mut s.stream, cx, a, b) {
            return Poll::Ready(r.map_or(Io::ServerFailed, Io::WroteServer));
        }
    } else if w.flush_server {
        if let Poll::Ready(r) = Pin::new(&mut s.stream).poll_flush(cx) {
            return Poll::Ready(r.map_or(Io::ServerFailed, |_| Io::FlushedServer));
        }
    }
    if c.down.queued() > 0 {
        let (a, b) = c.down.slices(&s.rbuf);
        if let Poll::Ready(r) = poll_write_client(&mut c.stream, cx, a, b) {
            return Poll::Ready(r.map_or(Io::ClientFailed, Io::WroteClient));
        }
    } else if w.flush_client {
        if let Poll::Ready(r) = Pin::new(&mut c.stream).poll_flush(cx) {
            return Poll::Ready(r.map_or(Io::ClientFailed, |_| Io::FlushedClient));
        }
    }
    // A message held whole past budget::FREE waits for its share of listen.message_memory.
    if !f.terminate
        && c.up.queued() < MAX_READY
        && c.budget.poll_room(cx, c.buf.len() + w.client).is_ready()
    {
        room(&mut c.buf, w.client);
        if let Poll::Ready(r) = poll_read_buf(Pin::new(&mut c.stream), cx, &mut c.buf) {
            return Poll::Ready(r.map_or(Io::ClientFailed, Io::ReadClient));
        }
    }
    if f.fatal.is_none() && c.down.queued() < MAX_READY {
        room(&mut s.rbuf, w.server);
        if let Poll::Ready(r) = poll_read_buf(Pin::new(&mut s.stream), cx, &mut s.rbuf) {
            return Poll::Ready(r.map_or(Io::ServerFailed, Io::ReadServer));
        }
    }
    if idle && shutdown.poll(cx).is_ready() {
        return Poll::Ready(Io::Shutdown);
    }
    Poll::Pending
}
