//! What rotagate answers for a transaction-mode client that holds no upstream connection:
//! the error owed for a transaction whose connection went (then, as the server would after an
//! error, extended-protocol messages are dropped up to the next Sync), a lone Sync, and a
//! DEALLOCATE of the client's own statements (psycopg's cache sends these). Everything else
//! needs a connection: a Parse too, since what the server makes of a statement now is what the
//! client's statement is (`super::checks`).

use super::allowlist::Names;
use super::classify::{PinReason, Sole, classify};
use super::flow::ClientState;
use crate::backend::prepared::Known;
use crate::frontend::error::FrontendError;
use crate::frontend::relay::side::ClientSide;
use crate::wire::{msg, scan};
use bytes::{Buf, BytesMut};

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
    /// The largest message a client may send.
    pub max_message: usize,
    pub statement_bytes: usize,
    /// The statements known to prepare, when every connection is busy now.
    pub busy: &'a (dyn Fn() -> Option<&'a Known> + Sync),
}

/// Answers what it can from the front of the client's buffer into `out`.
pub fn answer(
    buf: &mut BytesMut,
    state: &mut ClientState,
    l: &Limits<'_>,
    out: &mut BytesMut,
) -> Result<Next, FrontendError> {
    loop {
        if state.drop_left > 0 {
            let n = state.drop_left.min(buf.len());
            buf.advance(n);
            state.drop_left -= n;
            if state.drop_left > 0 {
                return Ok(Next::Read(0));
            }
        }
        let Some(h) = scan::header(buf, l.max_message)? else {
            return Ok(Next::Read(0));
        };
        if h.tag == b'X' {
            return Ok(Next::Terminate);
        }
        if state.skip_until_sync || state.failure.is_some() {
            owed(buf, state, h, out);
            continue;
        }
        let Some(body) = scan::whole(buf, h) else {
            return Ok(Next::Read(h.total() - buf.len()));
        };
        let done = match h.tag {
            b'S' => {
                msg::ready_for_query(out, b'I');
                true
            }
            b'Q' => deallocate(state, body, out),
            b'P' => parse(state, body, l, out),
            _ => false,
        };
        if !done {
            return Ok(Next::Connect);
        }
        buf.advance(h.total());
    }
}

/// Drops the message at the front, answering it as the server does after an error.
fn owed(buf: &mut BytesMut, state: &mut ClientState, h: scan::Header, out: &mut BytesMut) {
    let here = h.total().min(buf.len());
    buf.advance(here);
    state.drop_left = h.total() - here;
    if state.skip_until_sync {
        if h.tag == b'S' {
            state.skip_until_sync = false;
            msg::ready_for_query(out, b'I');
        }
        return;
    }
    match h.tag {
        // COPY data after a failed COPY: the server ignores it too.
        b'd' | b'c' | b'f' | b'H' => {}
        b'Q' | b'F' | b'S' => {
            out.extend_from_slice(&state.failure.take().expect("checked"));
            msg::ready_for_query(out, b'I');
        }
        _ => {
            out.extend_from_slice(&state.failure.take().expect("checked"));
            state.skip_until_sync = true;
        }
    }
}

/// `DEALLOCATE name` of the client's own statement, or `DEALLOCATE ALL` without SQL-prepared
/// ones upstream: answered as PostgreSQL answers it. Only texts starting with D are looked at.
fn deallocate(state: &mut ClientState, body: &[u8], out: &mut BytesMut) -> bool {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if !matches!(first, Some(b'D' | b'd')) || body.len() > 256 {
        return false;
    }
    let sql = body.strip_suffix(&[0]).unwrap_or(body);
    match classify(sql, &Names::catalog()).sole {
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
    // A simple Query drops the session's unnamed statement.
    state.unnamed = None;
    msg::ready_for_query(out, b'I');
    true
}

/// A named Parse of a statement known to prepare upstream, while every connection is busy: the
/// client's name is registered and ParseComplete answered ([`Known`] says why). What the server
/// makes of it is learned where it is first used.
fn parse(state: &mut ClientState, body: &[u8], l: &Limits<'_>, out: &mut BytesMut) -> bool {
    let Some(known) = (l.busy)() else {
        return false;
    };
    let Some((name, tail, class)) = answerable(state, body, known) else {
        return false;
    };
    let stmt = super::statements::Statement::new(bytes::Bytes::copy_from_slice(tail), class);
    if state
        .statements
        .insert(name, std::sync::Arc::new(stmt), l.statement_bytes)
        .is_err()
    {
        return false;
    }
    msg::empty(out, b'1');
    true
}

/// A Parse `body` rotagate may answer while every connection is kept: a new client name, a
/// plain statement known to prepare. Its name, text and class.
fn answerable<'b>(
    state: &ClientState,
    body: &'b [u8],
    known: &Known,
) -> Option<(&'b [u8], &'b [u8], super::classify::Class)> {
    let name_end = scan::cstr_end(body, 1)?;
    let (name, tail) = (&body[..name_end - 1], &body[name_end..]);
    if name.is_empty() || state.statements.contains(name) || name.starts_with(b"rotagate_") {
        return None;
    }
    if !known.contains(super::statements::key(tail)) {
        return None;
    }
    let sql = tail.split(|b| *b == 0).next().unwrap_or(tail);
    let names = super::flow::names(&state.settings, state.shadowed.as_deref());
    let class = classify(sql, &names);
    class.is_plain().then_some((name, tail, class))
}

/// Whether the client's next message is a Parse [`answer`] would answer once every connection
/// is kept: then waiting for a connection may end when that happens.
pub fn parse_first(buf: &[u8], state: &ClientState, known: &Known) -> bool {
    let Ok(Some(h)) = scan::header(buf, usize::MAX) else {
        return false;
    };
    h.tag == b'P'
        && buf
            .get(crate::wire::HEADER_LEN..h.total())
            .is_some_and(|body| answerable(state, body, known).is_some())
}

/// The error and ReadyForQuery owed for every request in flight when the upstream connection
/// went; `error` is the first one's. What those requests changed ahead of their replies is
/// undone. A request not yet ended by its Sync gets the rest of its messages dropped until
/// then; with nothing in flight, the client's next request gets the error.
pub fn fail_in_flight(
    c: &mut ClientSide,
    state: &mut ClientState,
    s: &mut crate::backend::ServerConn,
    f: &mut super::flow::Flow,
    known: &Known,
    error: bytes::Bytes,
    out: &mut BytesMut,
) {
    use super::replies::{Expect, Local, Outcome};
    let mut owed = false;
    let mut any = false;
    let mut ended = Vec::new();
    for e in f.replies.drain() {
        any = true;
        if !owed {
            out.extend_from_slice(&error);
            owed = true;
        }
        if matches!(
            e.expect,
            Expect::Sync
                | Expect::Query
                | Expect::Tagged(_)
                | Expect::Local(Local::Deallocate { .. })
        ) {
            msg::ready_for_query(out, b'I');
            owed = false;
        }
        ended.push((e, Outcome::Failed));
    }
    let mut rx = super::incoming::Rx {
        client: state,
        prepared: &mut s.prepared,
        flow: f,
        tx_status: &mut s.tx_status,
        known,
    };
    super::incoming::undo(ended, &mut rx);
    if owed {
        state.skip_until_sync = true;
    } else if !any || f.unsynced {
        state.failure = Some(error);
    }
    state.drop_left = c.up.abandon(&mut c.buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::transaction::statements::Statement;
    use bytes::Bytes;
    use std::sync::Arc;

    fn limits() -> Limits<'static> {
        Limits {
            max_message: 1 << 20,
            statement_bytes: 1 << 20,
            busy: &|| None,
        }
    }

    fn tags(out: &[u8]) -> String {
        let mut tags = String::new();
        let mut rest = out;
        while rest.len() >= 5 {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            tags.push(rest[0] as char);
            rest = &rest[len + 1..];
        }
        tags
    }

    fn parse_msg(name: &str, sql: &str) -> BytesMut {
        let mut tail = sql.as_bytes().to_vec();
        tail.extend_from_slice(&[0, 0, 0]);
        let mut b = BytesMut::new();
        msg::parse(&mut b, name.as_bytes(), &tail);
        b
    }

    #[test]
    fn an_owed_error_answers_the_next_request_then_skips_to_its_sync() {
        let mut state = ClientState {
            failure: Some(Bytes::from_static(b"E\0\0\0\x04")),
            ..ClientState::default()
        };
        let mut buf = parse_msg("", "SELECT 1");
        msg::empty(&mut buf, b'H');
        let mut out = BytesMut::new();
        assert_eq!(
            answer(&mut buf, &mut state, &limits(), &mut out).unwrap(),
            Next::Read(0)
        );
        assert_eq!(tags(&out), "E", "the error, then nothing until the Sync");
        msg::empty(&mut buf, b'S');
        msg::query(&mut buf, "SELECT 2");
        out.clear();
        let next = answer(&mut buf, &mut state, &limits(), &mut out).unwrap();
        assert_eq!((next, tags(&out)), (Next::Connect, "Z".to_owned()));
        assert_eq!(&buf[..1], b"Q", "the next request waits for a connection");
    }

    #[test]
    fn a_lone_sync_and_a_deallocate_need_no_connection_and_terminate_ends() {
        let mut state = ClientState::default();
        let stmt = std::sync::Arc::new(Statement::new(
            Bytes::from_static(b"SELECT 1\0\0\0"),
            Default::default(),
        ));
        state.statements.insert(b"s1", stmt, 1 << 20).unwrap();
        let mut buf = BytesMut::new();
        msg::empty(&mut buf, b'S');
        msg::query(&mut buf, "DEALLOCATE s1");
        msg::query(&mut buf, "DEALLOCATE s1");
        let mut out = BytesMut::new();
        let next = answer(&mut buf, &mut state, &limits(), &mut out).unwrap();
        assert_eq!((next, tags(&out)), (Next::Connect, "ZCZ".to_owned()));
        assert!(state.statements.is_empty());
        let mut buf = BytesMut::new();
        msg::empty(&mut buf, b'X');
        assert_eq!(
            answer(&mut buf, &mut state, &limits(), &mut out).unwrap(),
            Next::Terminate
        );
    }

    #[test]
    fn a_parse_needs_the_server_and_a_local_deallocate_drops_the_unnamed_statement() {
        let mut state = ClientState::default();
        let mut buf = parse_msg("s1", "SELECT 1");
        let mut out = BytesMut::new();
        assert_eq!(
            answer(&mut buf, &mut state, &limits(), &mut out).unwrap(),
            Next::Connect
        );
        let stmt = Arc::new(Statement::new(
            Bytes::from_static(b"SELECT 1\0\0\0"),
            Default::default(),
        ));
        state
            .statements
            .insert(b"s1", stmt.clone(), 1 << 20)
            .unwrap();
        state.unnamed = Some(super::super::flow::Unnamed {
            stmt,
            serial: 1,
            desc: None,
            upstream: None,
        });
        let mut buf = BytesMut::new();
        msg::query(&mut buf, "DEALLOCATE s1");
        answer(&mut buf, &mut state, &limits(), &mut out).unwrap();
        assert!(
            state.unnamed.is_none(),
            "a simple Query drops it, as in PostgreSQL"
        );
    }
}
