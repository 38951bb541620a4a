//! What rotagate answers for a transaction-mode client that holds no upstream connection:
//! the error owed for a transaction whose connection went (then, as the server would after an
//! error, extended-protocol messages are dropped up to the next Sync), a lone Sync, and a
//! DEALLOCATE of the client's own statements (psycopg's cache sends these). Everything else
//! needs a connection.

use super::classify::{PinReason, Sole, classify};
use super::error::FrontendError;
use super::flow::ClientState;
use super::relay::ClientSide;
use super::statements::{Statement, upstream_name};
use crate::backend::prepared::Known;
use crate::wire::{msg, scan};
use bytes::{Buf, Bytes, BytesMut};
use std::sync::Arc;

/// Where the client's input stands after the local answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// The message at the front needs an upstream connection; it is all here.
    Connect,
    /// More input is needed (`n` more bytes for the message at the front, when known).
    Read(usize),
    /// The client sent Terminate.
    Terminate,
}

/// What the answers read besides the client.
pub struct Limits<'a> {
    pub max_message: usize,
    pub statement_bytes: usize,
    pub known: &'a Known,
}

/// Answers what it can from the front of the client's buffer into `out`.
pub fn answer(
    c: &mut ClientSide,
    l: &Limits<'_>,
    out: &mut BytesMut,
) -> Result<Next, FrontendError> {
    loop {
        if c.state.drop_left > 0 {
            let n = c.state.drop_left.min(c.buf.len());
            c.buf.advance(n);
            c.state.drop_left -= n;
            if c.state.drop_left > 0 {
                return Ok(Next::Read(0));
            }
        }
        let Some(h) = scan::header(&c.buf, l.max_message)? else {
            return Ok(Next::Read(0));
        };
        if h.tag == b'X' {
            return Ok(Next::Terminate);
        }
        if c.state.skip_until_sync || c.state.failure.is_some() {
            owed(c, h, out);
            continue;
        }
        let Some(body) = scan::whole(&c.buf, h) else {
            return Ok(Next::Read(h.total() - c.buf.len()));
        };
        let done = match h.tag {
            b'S' => {
                msg::ready_for_query(out, b'I');
                true
            }
            b'Q' => deallocate(&mut c.state, body, out),
            b'P' => parse(&mut c.state, body, l, out),
            _ => false,
        };
        if !done {
            return Ok(Next::Connect);
        }
        c.buf.advance(h.total());
    }
}

/// Drops the message at the front, answering it as the server does after an error.
fn owed(c: &mut ClientSide, h: scan::Header, out: &mut BytesMut) {
    let here = h.total().min(c.buf.len());
    c.buf.advance(here);
    c.state.drop_left = h.total() - here;
    if c.state.skip_until_sync {
        if h.tag == b'S' {
            c.state.skip_until_sync = false;
            msg::ready_for_query(out, b'I');
        }
        return;
    }
    match h.tag {
        // COPY data after a failed COPY: the server ignores it too.
        b'd' | b'c' | b'f' | b'H' => {}
        b'Q' | b'F' | b'S' => {
            out.extend_from_slice(&c.state.failure.take().expect("checked"));
            msg::ready_for_query(out, b'I');
        }
        _ => {
            out.extend_from_slice(&c.state.failure.take().expect("checked"));
            c.state.skip_until_sync = true;
        }
    }
}

/// `DEALLOCATE name` of the client's own statement, or `DEALLOCATE ALL` without SQL-prepared
/// ones upstream: answered as PostgreSQL answers it. Only texts starting with D are looked at.
fn deallocate(state: &mut ClientState, body: &[u8], out: &mut BytesMut) -> bool {
    let sql = body.split(|b| *b == 0).next().unwrap_or(body);
    let first = sql.iter().find(|b| !b.is_ascii_whitespace());
    if !matches!(first, Some(b'D' | b'd')) || sql.len() > 256 {
        return false;
    }
    match classify(sql).sole {
        Some(Sole::Deallocate(name)) if state.statements.contains(&name) => {
            state.statements.remove(&name);
            msg::command_complete(out, "DEALLOCATE");
        }
        Some(Sole::DeallocateAll) if !state.pins.has(PinReason::SqlPrepare) => {
            state.statements.take_all();
            msg::command_complete(out, "DEALLOCATE ALL");
        }
        _ => return false,
    }
    msg::ready_for_query(out, b'I');
    true
}

/// A named Parse of a statement known to prepare upstream: the client's name is registered and
/// ParseComplete answered; the connection that needs it is prepared when it is used.
fn parse(state: &mut ClientState, body: &[u8], l: &Limits<'_>, out: &mut BytesMut) -> bool {
    let Some(name_end) = scan::cstr_end(body, 1) else {
        return false;
    };
    let (name, tail) = (&body[..name_end - 1], &body[name_end..]);
    if name.is_empty() || state.statements.contains(name) {
        return false;
    }
    let upstream = upstream_name(tail);
    if !l.known.contains(&upstream) {
        return false;
    }
    let class = classify(tail.split(|b| *b == 0).next().unwrap_or(tail));
    if !class.is_plain() {
        return false;
    }
    let stmt = Statement {
        upstream,
        tail: Bytes::copy_from_slice(tail),
        class,
    };
    if state
        .statements
        .insert(name, Arc::new(stmt), l.statement_bytes)
        .is_err()
    {
        return false;
    }
    msg::empty(out, b'1');
    true
}

/// The error and ReadyForQuery owed for every request in flight when the upstream connection
/// went; `error` is the first one's. What those requests changed ahead of their replies is
/// undone. A request not yet ended by its Sync gets the rest of its messages dropped until
/// then; with nothing in flight, the client's next request gets the error.
pub fn fail_in_flight(
    c: &mut ClientSide,
    s: &mut crate::backend::ServerConn,
    f: &mut super::flow::Flow,
    known: &Known,
    error: bytes::Bytes,
    out: &mut BytesMut,
) {
    use super::replies::{Expect, Local};
    let mut owed = false;
    let mut any = false;
    let entries: Vec<_> = f.replies.drain().collect();
    let mut rx = super::incoming::Rx {
        client: &mut c.state,
        prepared: &mut s.prepared,
        flow: f,
        tx_status: &mut s.tx_status,
        known,
    };
    for e in entries {
        any = true;
        if !owed {
            out.extend_from_slice(&error);
            owed = true;
        }
        if matches!(
            e.expect,
            Expect::Sync | Expect::Query | Expect::Local(Local::Deallocate { .. })
        ) {
            msg::ready_for_query(out, b'I');
            owed = false;
        }
        super::incoming::abandon(e, &mut rx);
    }
    if owed {
        c.state.skip_until_sync = true;
    } else if !any || f.unsynced {
        c.state.failure = Some(error);
    }
    c.state.drop_left = c.up.abandon(&mut c.buf);
}
