//! Walking the frames of each direction, deciding per message, and queueing the result on the
//! direction's [`Lane`]. Session mode only counts what is owed (each Query, FunctionCall and
//! Sync owes a ReadyForQuery) and watches ReadyForQuery, ParameterStatus and FATAL errors.
//! Transaction mode hands each message to [`outgoing`] or [`incoming`]. A decision that may
//! rewrite a message waits until the ready bytes before it are few enough to copy, so every
//! decision is made exactly once.

use super::error::FrontendError;
use super::flow::Flow;
use super::incoming::{self, Out, Rx};
use super::outgoing::{self, Decision, Need, Tx};
use super::relay::{ClientSide, RelayCtx};
use crate::backend::ServerConn;
use crate::config::PoolMode;
use crate::wire::{HEADER_LEN, msg, scan};

/// The largest message rotagate accepts from the upstream server.
const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// Scans what the client sent; returns how many more bytes the message at the front needs
/// before it can be decided (0: none or unknown).
pub fn client(
    c: &mut ClientSide,
    s: &mut ServerConn,
    f: &mut Flow,
    ctx: &RelayCtx<'_>,
) -> Result<usize, FrontendError> {
    loop {
        if f.terminate || !c.up.settle(&mut c.buf) {
            return Ok(0);
        }
        let avail = &c.buf[c.up.ready..];
        let Some(h) = scan::header(avail, ctx.max_client_message)? else {
            return Ok(0);
        };
        if ctx.mode == PoolMode::Session {
            if session_client(h.tag, f) {
                return Ok(0);
            }
            c.up.pass(&c.buf, h.total());
            continue;
        }
        let need = outgoing::need(h.tag);
        if need != Need::Nothing && !c.up.can_rewrite() {
            return Ok(0);
        }
        let have = avail.len().min(h.total());
        if need == Need::Whole && have < h.total() {
            return Ok(h.total() - have);
        }
        c.scratch.clear();
        let mut tx = Tx {
            client: &mut c.state,
            prepared: &mut s.prepared,
            flow: f,
            cfg: ctx.cfg,
            out: &mut c.scratch,
        };
        match outgoing::decide(h.tag, &avail[..have], h.total(), &mut tx) {
            Decision::Pass => c.up.pass(&c.buf, h.total()),
            Decision::Replace => c.up.replace(&mut c.buf, &c.scratch, h.total()),
            Decision::Inject => c.up.inject(&mut c.buf, &c.scratch, h.total()),
            Decision::RewriteHead(n) => c.up.rewrite_head(&mut c.buf, n, &c.scratch, h.total()),
            Decision::NeedMore => return Ok((h.total() - have).min(4096)),
            Decision::Terminate => {
                f.terminate = true;
                return Ok(0);
            }
        }
    }
}

/// Session mode: counts what the message owes. True for Terminate.
fn session_client(tag: u8, f: &mut Flow) -> bool {
    match tag {
        b'Q' | b'F' => f.pending += 1,
        b'S' => {
            f.pending += 1;
            f.unsynced = false;
        }
        b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => f.unsynced = true,
        b'X' => {
            f.terminate = true;
            return true;
        }
        _ => {}
    }
    false
}

/// Scans what the server sent; returns how many more bytes the message at the front needs.
pub fn server(
    c: &mut ClientSide,
    s: &mut ServerConn,
    f: &mut Flow,
    ctx: &RelayCtx<'_>,
) -> Result<usize, FrontendError> {
    let tx_mode = ctx.mode == PoolMode::Transaction;
    loop {
        if tx_mode && !locals(c, s, f, ctx) {
            return Ok(0);
        }
        if f.fatal.is_some() || !c.down.settle(&mut s.rbuf) {
            return Ok(0);
        }
        let avail = &s.rbuf[c.down.ready..];
        let Some(h) = scan::header(avail, MAX_SERVER_MESSAGE).map_err(server_protocol)? else {
            return Ok(0);
        };
        let whole = if tx_mode {
            incoming::need_whole(h.tag)
        } else {
            matches!(h.tag, b'Z' | b'S' | b'E')
        };
        if whole && !c.down.can_rewrite() {
            return Ok(0);
        }
        if whole && avail.len() < h.total() {
            return Ok(h.total() - avail.len());
        }
        let body = if whole {
            &avail[HEADER_LEN..h.total()]
        } else {
            &[][..]
        };
        watch(h.tag, body, &mut s.params, &mut s.tx_status, f, ctx);
        if !tx_mode {
            if h.tag == b'E' && is_fatal(body) {
                f.fatal = Some(bytes::Bytes::copy_from_slice(body));
            }
            c.down.pass(&s.rbuf, h.total());
            continue;
        }
        let mut rx = Rx {
            client: &mut c.state,
            prepared: &mut s.prepared,
            flow: f,
            tx_status: &mut s.tx_status,
            known: ctx.known,
        };
        match incoming::decide(h.tag, body, &mut rx).map_err(server_protocol_msg)? {
            Out::Forward => c.down.pass(&s.rbuf, h.total()),
            Out::Hide => c.down.replace(&mut s.rbuf, &[], h.total()),
            Out::Replace(e) => c.down.replace(&mut s.rbuf, &e, h.total()),
            // A pinned client's session is the upstream session: it ends as PostgreSQL ends it.
            Out::Fatal if c.state.pins.is_pinned() => c.down.pass(&s.rbuf, h.total()),
            Out::Fatal => c.down.replace(&mut s.rbuf, &[], h.total()),
        }
    }
}

/// What every mode watches: ReadyForQuery's status and ParameterStatus.
fn watch(
    tag: u8,
    body: &[u8],
    params: &mut crate::backend::ServerParams,
    tx_status: &mut u8,
    f: &mut Flow,
    ctx: &RelayCtx<'_>,
) {
    match tag {
        b'Z' => {
            let status = body.first().copied().unwrap_or(b'E');
            if ctx.mode == PoolMode::Session {
                f.pending = f.pending.saturating_sub(1);
                *tx_status = status;
            }
            if status == b'I' {
                ctx.transactions.increment(1);
            }
        }
        b'S' => {
            if let Some((name, value)) = split_param(body) {
                params.report(name, value);
                f.reread = true;
            }
        }
        _ => {}
    }
}

fn is_fatal(body: &[u8]) -> bool {
    matches!(msg::severity(body), b"FATAL" | b"PANIC")
}

/// Writes the replies rotagate owes at the front of the queue. False while they must wait
/// for the bytes before them to be written.
fn locals(c: &mut ClientSide, s: &mut ServerConn, f: &mut Flow, ctx: &RelayCtx<'_>) -> bool {
    if !matches!(
        f.replies.front().map(|e| e.expect),
        Some(super::replies::Expect::Local(_))
    ) {
        return true;
    }
    if !c.down.can_rewrite() {
        return false;
    }
    c.scratch.clear();
    let mut rx = Rx {
        client: &mut c.state,
        prepared: &mut s.prepared,
        flow: f,
        tx_status: &mut s.tx_status,
        known: ctx.known,
    };
    incoming::locals(&mut rx, &mut c.scratch);
    c.down.append(&mut s.rbuf, &c.scratch);
    true
}

fn split_param(body: &[u8]) -> Option<(&str, &str)> {
    let mut parts = body.split(|b| *b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name, value))
}

fn server_protocol(e: crate::wire::WireError) -> FrontendError {
    FrontendError::ServerProtocol(e.to_string())
}

fn server_protocol_msg(why: &str) -> FrontendError {
    FrontendError::ServerProtocol(why.to_owned())
}
