//! The hot path: bytes between one client and one upstream connection. Frame-aware but not
//! decoding: the scanners find message boundaries, watch ReadyForQuery's status byte and
//! ParameterStatus, and count what the client still waits for. Reads and writes are polled
//! together in one future, so neither direction can block the other; bytes are forwarded
//! straight from the buffer they were read into.

use super::error::FrontendError;
use super::params::Expected;
use super::startup::ClientStream;
use crate::backend::ServerConn;
use crate::config::PoolMode;
use crate::wire::scan::{Scanner, Step};
use bytes::{Buf, BytesMut};
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;

/// Scanned-but-unwritten bytes above which a direction stops reading (backpressure).
const MAX_READY: usize = 256 * 1024;
/// The largest message rotagate accepts from the upstream server.
const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// The client half: its stream, the bytes it sent that are not yet forwarded, and what it
/// expects of a session.
pub struct ClientSide {
    pub stream: ClientStream,
    pub buf: BytesMut,
    pub ready: usize,
    pub scan: Scanner,
    pub expected: Expected,
    /// `expected.fingerprint()`, kept current.
    pub fingerprint: u64,
}

/// How a relay ended.
#[derive(Debug)]
pub enum End {
    /// Transaction mode: the transaction ended and the connection is clean to return.
    Released,
    /// The client hung up or sent Terminate.
    ClientGone,
    /// The upstream connection failed under the client.
    ServerGone(String),
    /// Shutdown was requested and the session is between transactions.
    Shutdown,
    /// The connection's credential generation was retired `pool.drain_timeout` ago.
    Retired,
}

pub struct RelayCtx<'a> {
    pub mode: PoolMode,
    pub pools: &'a crate::pool::Pools,
    pub max_client_message: usize,
    pub shutdown: &'a CancellationToken,
    pub transactions: &'a metrics::Counter,
}

/// Where the protocol stands for the current attachment.
#[derive(Debug, Default)]
struct Flow {
    /// Queries, function calls and Syncs sent whose ReadyForQuery has not come back.
    pending: u32,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    terminate: bool,
    refused: Option<&'static str>,
    server_ready: usize,
    server_scan: Scanner,
    flush_server: bool,
    flush_client: bool,
}

enum Io {
    WroteServer(usize),
    WroteClient(usize),
    FlushedServer,
    FlushedClient,
    ReadClient(usize),
    ReadServer(usize),
    ClientFailed,
    ServerFailed(io::Error),
    Shutdown,
    Retired,
}

/// Relays until the transaction ends (transaction mode), the client leaves, the server fails
/// or shutdown finds the session idle. Marks `server` broken when it is not left clean.
pub async fn relay(
    c: &mut ClientSide,
    s: &mut ServerConn,
    ctx: &RelayCtx<'_>,
) -> Result<End, FrontendError> {
    let mut f = Flow::default();
    let mut shutdown = pin!(ctx.shutdown.cancelled());
    let mut retired = pin!(ctx.pools.retirement(s.generation));
    loop {
        scan_client(c, &mut f, ctx)?;
        scan_server(c, s, &mut f, ctx)?;
        let drained = c.ready == 0 && f.server_ready == 0 && !f.flush_server && !f.flush_client;
        let rest = drained && at_rest(c, s, &f);
        if drained {
            if let Some(why) = f.refused {
                s.broken |= !rest;
                return Err(FrontendError::Unsupported(why.into()));
            }
            if f.terminate {
                s.broken |= !rest;
                return Ok(End::ClientGone);
            }
            if rest && ctx.mode == PoolMode::Transaction {
                return Ok(End::Released);
            }
            if rest && ctx.shutdown.is_cancelled() {
                return Ok(End::Shutdown);
            }
        }
        let io = poll_fn(|cx| {
            if retired.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Io::Retired);
            }
            poll_io(cx, c, s, &f, rest, shutdown.as_mut())
        })
        .await;
        if let Some(end) = progress(io, c, s, &mut f, drained) {
            return Ok(end);
        }
    }
}

/// Books one I/O step; the end of the relay when the step ends it.
fn progress(
    io: Io,
    c: &mut ClientSide,
    s: &mut ServerConn,
    f: &mut Flow,
    drained: bool,
) -> Option<End> {
    match io {
        Io::WroteServer(n) => {
            c.buf.advance(n);
            c.ready -= n;
            f.flush_server = c.ready == 0;
        }
        Io::WroteClient(n) => {
            s.rbuf.advance(n);
            f.server_ready -= n;
            f.flush_client = f.server_ready == 0;
        }
        Io::FlushedServer => f.flush_server = false,
        Io::FlushedClient => f.flush_client = false,
        Io::ReadClient(0) | Io::ClientFailed => {
            s.broken |= !(drained && at_rest(c, s, f));
            return Some(End::ClientGone);
        }
        Io::ReadServer(0) => {
            return Some(server_gone(
                s,
                "the upstream server closed the connection".into(),
            ));
        }
        Io::ServerFailed(e) => return Some(server_gone(s, e.to_string())),
        Io::Retired => {
            s.broken = true;
            return Some(End::Retired);
        }
        Io::ReadClient(_) | Io::ReadServer(_) | Io::Shutdown => {}
    }
    None
}

fn server_gone(s: &mut ServerConn, why: String) -> End {
    s.broken = true;
    End::ServerGone(why)
}

/// Nothing in flight in either direction and the server idle outside a transaction.
fn at_rest(c: &ClientSide, s: &ServerConn, f: &Flow) -> bool {
    f.pending == 0
        && !f.unsynced
        && s.tx_status == b'I'
        && c.scan.at_boundary()
        && f.server_scan.at_boundary()
        && s.rbuf.is_empty()
}

fn scan_client(c: &mut ClientSide, f: &mut Flow, ctx: &RelayCtx<'_>) -> Result<(), FrontendError> {
    if c.ready == c.buf.len() || f.terminate || f.refused.is_some() {
        return Ok(());
    }
    let tx_mode = ctx.mode == PoolMode::Transaction;
    let n = c.scan.scan(
        &c.buf[c.ready..],
        ctx.max_client_message,
        |t| tx_mode && t == b'P',
        |tag, body| client_message(f, tag, body),
    )?;
    c.ready += n;
    Ok(())
}

fn client_message(f: &mut Flow, tag: u8, body: &[u8]) -> Step {
    match tag {
        b'Q' | b'F' => f.pending += 1,
        b'S' => {
            f.pending += 1;
            f.unsynced = false;
        }
        // Only transaction mode asks for Parse bodies: a named statement would outlive the
        // upstream connection it was prepared on.
        b'P' if body.first().is_some_and(|b| *b != 0) => {
            f.refused = Some(
                "named prepared statements are not supported in transaction pool mode; \
                 use unnamed statements (for pgbench: -M extended) or pool.mode = \"session\"",
            );
            return Step::Stop;
        }
        b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => f.unsynced = true,
        b'X' => {
            f.terminate = true;
            return Step::Stop;
        }
        _ => {}
    }
    Step::Forward
}

fn scan_server(
    c: &mut ClientSide,
    s: &mut ServerConn,
    f: &mut Flow,
    ctx: &RelayCtx<'_>,
) -> Result<(), FrontendError> {
    if f.server_ready == s.rbuf.len() {
        return Ok(());
    }
    let (params, tx_status, pending) = (&mut s.params, &mut s.tx_status, &mut f.pending);
    let n = f
        .server_scan
        .scan(
            &s.rbuf[f.server_ready..],
            MAX_SERVER_MESSAGE,
            |t| t == b'Z' || t == b'S',
            |tag, body| {
                match tag {
                    b'Z' => {
                        *pending = pending.saturating_sub(1);
                        *tx_status = body.first().copied().unwrap_or(b'E');
                        if *tx_status == b'I' {
                            ctx.transactions.increment(1);
                        }
                    }
                    b'S' => {
                        if let Some((name, value)) = split_param(body) {
                            params.report(name, value);
                            c.expected.observe(name, value);
                        }
                    }
                    _ => {}
                }
                Step::Forward
            },
        )
        .map_err(|_| FrontendError::UpstreamLost)?;
    f.server_ready += n;
    Ok(())
}

fn split_param(body: &[u8]) -> Option<(&str, &str)> {
    let mut parts = body.split(|b| *b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name, value))
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(8192);
    }
}

/// One step of I/O in whichever direction is ready first: writes, then flushes, then reads.
fn poll_io(
    cx: &mut Context<'_>,
    c: &mut ClientSide,
    s: &mut ServerConn,
    f: &Flow,
    idle: bool,
    shutdown: Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
) -> Poll<Io> {
    if c.ready > 0 {
        if let Poll::Ready(r) = Pin::new(&mut s.stream).poll_write(cx, &c.buf[..c.ready]) {
            return Poll::Ready(r.map_or_else(Io::ServerFailed, Io::WroteServer));
        }
    } else if f.flush_server {
        if let Poll::Ready(r) = Pin::new(&mut s.stream).poll_flush(cx) {
            return Poll::Ready(r.map_or_else(Io::ServerFailed, |_| Io::FlushedServer));
        }
    }
    if f.server_ready > 0 {
        if let Poll::Ready(r) = Pin::new(&mut c.stream).poll_write(cx, &s.rbuf[..f.server_ready]) {
            return Poll::Ready(r.map_or(Io::ClientFailed, Io::WroteClient));
        }
    } else if f.flush_client {
        if let Poll::Ready(r) = Pin::new(&mut c.stream).poll_flush(cx) {
            return Poll::Ready(r.map_or(Io::ClientFailed, |_| Io::FlushedClient));
        }
    }
    if !f.terminate && f.refused.is_none() && c.ready < MAX_READY {
        reserve(&mut c.buf);
        if let Poll::Ready(r) = poll_read_buf(Pin::new(&mut c.stream), cx, &mut c.buf) {
            return Poll::Ready(r.map_or(Io::ClientFailed, Io::ReadClient));
        }
    }
    if f.server_ready < MAX_READY {
        reserve(&mut s.rbuf);
        if let Poll::Ready(r) = poll_read_buf(Pin::new(&mut s.stream), cx, &mut s.rbuf) {
            return Poll::Ready(r.map_or_else(Io::ServerFailed, Io::ReadServer));
        }
    }
    if idle && shutdown.poll(cx).is_ready() {
        return Poll::Ready(Io::Shutdown);
    }
    Poll::Pending
}
