//! Unnamed statements served by statements prepared once per connection
//! (`pool.prepare_unnamed`). Drivers parse the same unnamed statement for every query;
//! PostgreSQL then parses and analyses it each time. With this setting on, the second unnamed
//! Parse of a text and parameter types on a connection prepares it there under a name of
//! rotagate's, and later ones are answered by rotagate (ParseComplete) and bound to that
//! statement: a Bind or Describe of the client's unnamed statement is renamed to it.
//!
//! A named statement can go stale where a fresh Parse would not: a schema change can make its
//! plan fail revalidation (`0A000 cached plan must not change result type`, or an object it
//! uses is gone). So rotagate's ParseComplete waits for the reply to the next message. When a
//! request opens an implicit transaction with such a Parse and its first Bind or Describe of
//! the statement fails, nothing of the request has run and the client has seen nothing of
//! it: the error and what the server skipped are hidden, and the request is decided again
//! from its bytes, this time with an unnamed Parse upstream, as without the setting. Elsewhere
//! (inside a transaction block, after other messages of the request, or a Parse sent apart
//! from the rest) the client gets the error, as pgx or JDBC would with server-side statements
//! (README, "Transaction mode"). Either way the statement is closed and prepared anew next time.
//! This file makes the requests; `stale.rs` deals with their replies.

use super::classify::Class;
use super::flow::{Capture, PendingUnnamed, Replay, Spec};
use super::named::{describe_hidden, evict};
use super::replies::{Effect, Entry, Expect, Local, Note};
use super::statements::{Statement, fast_key};
use super::tx::Tx;
use crate::frontend::relay::lane::Decision;
use crate::wire::scan::cstr_end;
use crate::wire::{HEADER_LEN, msg};
use bytes::{BufMut, Bytes};
use std::sync::Arc;

/// The longest request kept for a retry.
const MAX_REPLAY: usize = 16 * 1024;

/// The client's unnamed Parse (`tail`: text, NUL, parameter types), when a shared statement
/// serves it: None leaves it to [`super::unnamed`].
pub fn parse(tail: &[u8], class: &Class, tx: &mut Tx<'_>) -> Option<Decision> {
    // In an aborted block PostgreSQL refuses a Parse; after a Query queued in this hand-over
    // the status it leaves is not known yet.
    // After an Execute in the same pipeline, PostgreSQL's own Parse runs between portal
    // executions (and makes the earlier one's changes visible to the next: seed 1042463);
    // only a real Parse does the same.
    if !tx.cfg.prepare_unnamed
        || tx.flow.replaying
        || tx.flow.executed
        || !class.is_plain()
        || tx.status == b'E'
        || tx.flow.replies.has_sync_point()
    {
        tx.flow.replaying = false;
        return None;
    }
    let k = fast_key(tail);
    let found = tx
        .prepared
        .shared(k)
        .and_then(|s| Some((s.stmt.clone().downcast::<Statement>().ok()?, s.name.clone())))
        .filter(|(stmt, _)| stmt.tail[..] == *tail);
    let (stmt, upstream) = match found {
        Some((stmt, name)) => {
            tx.prepared.touch(&name);
            tx.flow
                .replies
                .push(Entry::new(Expect::Local(Local::SharedParse)).note(Note::UnnamedParse));
            if tx.flow.opening && tx.status == b'I' {
                let mut bytes = Vec::with_capacity(64);
                bytes.put_u8(b'P');
                bytes.put_u32((4 + 1 + tail.len()) as u32);
                bytes.put_u8(0);
                bytes.extend_from_slice(tail);
                tx.flow.replay = Some(Replay {
                    bytes,
                    complete: false,
                });
            }
            (stmt, name)
        }
        None if tx.prepared.seen(k) => prepare(tail, class, k, tx),
        None => return None,
    };
    tx.client.serials += 1;
    tx.flow.unnamed_parses.push_back(PendingUnnamed {
        stmt,
        serial: tx.client.serials,
        again: false,
        shared: Some(upstream.clone()),
    });
    tx.flow.mapped = Some(upstream);
    tx.flow.unnamed_spec = Spec::Parsed(tx.flow.segment);
    tx.flow.unnamed_unconfirmed += 1;
    Some(Decision::Replace)
}

/// Whether an error from a shared statement's Bind or Describe says it is stale (a result
/// type changed, a type made again) or that something its text names is gone (a table,
/// column, function, type or schema): a Parse of the text now would differ. A Bind's own
/// errors (a parameter count, a value, a portal that exists) say nothing of the statement.
pub fn stale_error(code: &[u8]) -> bool {
    const CODES: [&[u8]; 8] = [
        b"0A000", b"XX000", b"42P01", b"42703", b"42883", b"42704", b"3F000", b"42809",
    ];
    CODES.contains(&code)
}

/// `error` (a whole message) for the client after the ParameterDescription held for its
/// Describe of a shared statement, which came first (`stale.rs`), as PostgreSQL sends both.
pub fn after_params(flow: &super::flow::Flow, error: &[u8]) -> Bytes {
    let mut b = bytes::BytesMut::with_capacity(5 + flow.capture_params.len() + error.len());
    msg::message(&mut b, b't', &flow.capture_params);
    b.extend_from_slice(error);
    b.freeze()
}

/// Prepares the statement for `key` on this connection; its ParseComplete is the client's.
fn prepare(tail: &[u8], class: &Class, k: u64, tx: &mut Tx<'_>) -> (Arc<Statement>, Arc<str>) {
    evict(tx);
    let stmt = Arc::new(Statement::new(Bytes::copy_from_slice(tail), class.clone()));
    let upstream = tx.prepared.fresh(stmt.key);
    msg::parse(tx.out, upstream.as_bytes(), tail);
    tx.flow.replies.push(
        Entry::new(Expect::Parse)
            .effect(Effect::Prepare {
                upstream: upstream.clone(),
                client: None,
            })
            .note(Note::UnnamedParse),
    );
    tx.prepared.share(k, upstream.clone(), stmt.clone());
    let capture = Capture::Learn {
        stmt: stmt.clone(),
        upstream: upstream.clone(),
        held: false,
    };
    describe_hidden(&upstream, capture, tx);
    (stmt, upstream)
}

/// A Bind of the client's unnamed statement, sent to `upstream`.
pub fn bind(
    body: &[u8],
    len: usize,
    portal_end: usize,
    upstream: Arc<str>,
    tx: &mut Tx<'_>,
) -> Decision {
    let names_end = portal_end + 1;
    let new_len = len - HEADER_LEN + 4 + upstream.len();
    tx.out.put_u8(b'B');
    tx.out.put_u32(new_len as u32);
    tx.out.put_slice(&body[..portal_end]);
    tx.out.put_slice(upstream.as_bytes());
    tx.out.put_u8(0);
    let entry = Entry::new(Expect::Bind).named(b"").shared(upstream);
    tx.flow.replies.push(entry);
    Decision::RewriteHead(HEADER_LEN + names_end)
}

/// A Describe of the client's unnamed statement, sent to `upstream`.
pub fn describe(upstream: Arc<str>, tx: &mut Tx<'_>) -> Decision {
    msg::describe_or_close(tx.out, b'D', b'S', upstream.as_bytes());
    let entry = Entry::new(Expect::DescribeStatement)
        .hidden()
        .note(Note::Capture)
        .named(b"")
        .shared(upstream);
    tx.flow.replies.push(entry);
    tx.flow.captures.push_back(Capture::Shared);
    Decision::Replace
}

/// Keeps the client's message (`msg`, `len` bytes in all) with the request being kept for a
/// retry (any message: the server skipped everything after the failure, and what the skipped
/// messages changed ahead of their replies is undone); one not whole here, or too many bytes
/// in all, ends the keeping.
pub fn keep(tag: u8, msg: &[u8], len: usize, tx: &mut Tx<'_>) {
    let Some(r) = tx.flow.replay.as_mut() else {
        return;
    };
    let repeatable =
        !r.complete && msg.len() == len && r.bytes.len() + len <= MAX_REPLAY && tag != b'X';
    if !repeatable {
        tx.flow.replay = None;
        return;
    }
    r.bytes.extend_from_slice(msg);
    r.complete = tag == b'S';
}

/// Before the client's next message after a Parse a shared statement serves, unless it is the
/// statement's first use (a Bind or Describe of the unnamed statement, which shows whether the
/// statement is stale): a Describe of it, unseen, that does.
pub fn probe_before(tag: u8, msg: &[u8], tx: &mut Tx<'_>) {
    let waits = tx.flow.replies.last().map(|e| e.expect) == Some(Expect::Local(Local::SharedParse));
    let Some(upstream) = tx.flow.mapped.clone().filter(|_| waits) else {
        return;
    };
    let first_use = match tag {
        // Bind: the portal's name, then the statement's (""). Until both are here the Bind is
        // decided again (`Decision::NeedMore`): nothing yet.
        b'B' => {
            let body = &msg[HEADER_LEN..];
            let (Some(portal_end), Some(_)) = (cstr_end(body, 1), cstr_end(body, 2)) else {
                return;
            };
            body[portal_end] == 0
        }
        b'D' => msg.get(HEADER_LEN..HEADER_LEN + 2) == Some(&b"S\0"[..]),
        _ => false,
    };
    if first_use {
        return;
    }
    msg::describe_or_close(tx.out, b'D', b'S', upstream.as_bytes());
    let entry = Entry::new(Expect::DescribeStatement)
        .hidden()
        .shared(upstream);
    tx.flow.replies.push(entry);
}
