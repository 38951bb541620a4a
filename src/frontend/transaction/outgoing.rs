//! Client messages in transaction mode, one at a time: each gets its reply entries, and some
//! are rewritten. A client's named statement travels under rotagate's upstream name and is
//! prepared first on a connection that lacks it; a Close of a client name and a DEALLOCATE of
//! one are answered by rotagate; statements that change settings mark the transaction for a
//! re-read; statements that pin do so (or are refused with `on_pin = "error"`). A message
//! rotagate refuses still goes upstream as one that fails (Describe of a name no client can
//! have, or an unparseable Query), so the server's transaction state moves exactly as it
//! would have; the server's error is then replaced by rotagate's.

use super::classify::{Class, PinReason, Sole};
use super::flow::{Acts, ClientState, Flow};
use super::replies::{Effect, Entry, Expect, Local};
use super::statements::{Statement, UPSTREAM_PREFIX};
use crate::backend::prepared::Prepared;
use crate::config::{OnPin, PoolConfig};
use crate::frontend::relay::lane::{Decision, Need};
use crate::wire::{HEADER_LEN, msg, scan::cstr_end};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;

/// A Describe of this statement name always fails upstream: no upstream name has a `-`.
const NO_SUCH_STATEMENT: &[u8] = b"rotagate_-";
/// The statement an unnamed `DEALLOCATE name` deallocates upstream.
const THROWAWAY: &str = "rotagate_deallocate";

pub fn need(tag: u8) -> Need {
    match tag {
        b'Q' | b'P' | b'D' | b'C' => Need::Whole,
        b'B' => Need::Names,
        _ => Need::Nothing,
    }
}

/// What a decision reads and changes.
pub struct Tx<'a> {
    pub client: &'a mut ClientState,
    pub prepared: &'a mut Prepared,
    pub flow: &'a mut Flow,
    pub cfg: &'a PoolConfig,
    pub out: &'a mut BytesMut,
}

/// Decides on the message at the front of `msg` (its header included). `msg` holds the whole
/// message when [`need`] says so; for a Bind, as much of it as has arrived (`len` in all).
pub fn decide(tag: u8, msg: &[u8], len: usize, tx: &mut Tx<'_>) -> Decision {
    let body = &msg[HEADER_LEN..];
    if matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'H') {
        tx.flow.unsynced = true;
    }
    // After an error the server skips everything up to Sync, a Query or FunctionCall too;
    // nothing is owed for what it skips.
    if tx.flow.skipping && matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'Q' | b'F') {
        return Decision::Replace;
    }
    match tag {
        b'Q' => query(body, tx),
        b'P' => parse(body, tx),
        b'B' => bind(body, len, tx),
        b'D' => describe(body, tx),
        b'C' => close(body, tx),
        b'E' => {
            let effect = match tx.flow.portal_drops.take() {
                Some(discard_all) => drops(discard_all, true, tx),
                None => Effect::None,
            };
            push(tx, Entry::new(Expect::Execute).effect(effect))
        }
        b'S' => {
            tx.flow.unsynced = false;
            tx.flow.skipping = false;
            tx.prepared.new_pipeline();
            push(tx, Entry::new(Expect::Sync))
        }
        b'F' => {
            tx.flow.reread = true;
            push(tx, Entry::new(Expect::Query))
        }
        b'X' => Decision::Stop,
        _ => Decision::Pass,
    }
}

fn push(tx: &mut Tx<'_>, e: Entry) -> Decision {
    tx.flow.replies.push(e);
    Decision::Pass
}

/// The string at the start of `bytes`, up to its NUL.
fn text(bytes: &[u8]) -> &[u8] {
    match memchr::memchr(0, bytes) {
        Some(i) => &bytes[..i],
        None => bytes,
    }
}

/// Applies what a statement does to the session; Some(refusal) when `on_pin = "error"` refuses
/// it.
fn effects(class: &Class, tx: &mut Tx<'_>) -> Option<Bytes> {
    if let Some(reason) = class.pin {
        if tx.cfg.on_pin == OnPin::Error {
            return Some(error(
                "0A000",
                &format!(
                    "{} is not supported in transaction pool mode (pool.on_pin = \"error\"): \
                     it would tie the session to one upstream connection",
                    reason.statement()
                ),
            ));
        }
        tx.client.pins.pin(reason, &tx.client.who);
    }
    if class.settings {
        tx.flow.reread = true;
        if !tx.client.settings.note_custom(&class.custom) {
            tx.client.pins.pin(PinReason::Other, &tx.client.who);
        }
    }
    None
}

fn error(code: &str, message: &str) -> Bytes {
    let mut b = BytesMut::new();
    msg::error(&mut b, "ERROR", code, message);
    b.freeze()
}

/// Sends a message that fails upstream in place of the refused one; `refusal` replaces the
/// server's error.
fn refuse(tx: &mut Tx<'_>, simple: bool, refusal: Bytes) -> Decision {
    if simple {
        msg::query(tx.out, "rotagate");
        tx.flow
            .replies
            .push(Entry::new(Expect::Query).refused(refusal));
    } else {
        msg::describe_or_close(tx.out, b'D', b'S', NO_SUCH_STATEMENT);
        tx.flow
            .replies
            .push(Entry::new(Expect::DescribeStatement).refused(refusal));
    }
    Decision::Replace
}

fn query(body: &[u8], tx: &mut Tx<'_>) -> Decision {
    // A Query's body is its text and a NUL.
    let class = tx
        .client
        .recent
        .classify(body.strip_suffix(&[0]).unwrap_or(body));
    if class.is_plain() {
        return push(tx, Entry::new(Expect::Query));
    }
    if let Some(refusal) = effects(&class, tx) {
        return refuse(tx, true, refusal);
    }
    let sql_prepared = tx.client.pins.has(PinReason::SqlPrepare);
    match class.sole {
        Some(Sole::Deallocate(name)) if tx.client.statements.contains(&name) => {
            let mut taken = super::statements::Statements::default();
            if let Some(stmt) = tx.client.statements.remove(&name) {
                taken.restore(&name, stmt);
            }
            tx.flow.replies.push(
                Entry::new(Expect::Local(Local::Deallocate { all: false }))
                    .effect(Effect::Deallocate(Box::new(taken))),
            );
            Decision::Replace
        }
        Some(Sole::DeallocateAll) if !sql_prepared => {
            let taken = tx.client.statements.take_all();
            tx.flow.replies.push(
                Entry::new(Expect::Local(Local::Deallocate { all: true }))
                    .effect(Effect::Deallocate(Box::new(taken))),
            );
            Decision::Replace
        }
        sole => {
            let effect = if class.drops_statements {
                drops(sole == Some(Sole::DiscardAll), sole.is_some(), tx)
            } else {
                Effect::None
            };
            push(tx, Entry::new(Expect::Query).effect(effect))
        }
    }
}

/// A statement that drops every prepared statement is on its way: the client's names and the
/// connection's statements go now (later messages of the pipeline make new ones), and come
/// back if it fails.
fn drops(discard_all: bool, sole: bool, tx: &mut Tx<'_>) -> Effect {
    Effect::Drops {
        client: Box::new(tx.client.statements.take_all()),
        upstream: tx.prepared.take_all(),
        discard_all,
        sole,
    }
}

/// What executing a statement of this class does to prepared statements.
fn acts(class: &Class) -> Option<Acts> {
    match &class.sole {
        Some(Sole::Deallocate(name)) => Some(Acts::Deallocate(name.clone())),
        Some(Sole::DiscardAll) => Some(Acts::DropsAll { discard_all: true }),
        _ if class.drops_statements => Some(Acts::DropsAll { discard_all: false }),
        _ => None,
    }
}

/// An unnamed `DEALLOCATE name` of one of the client's statements (psycopg's pipeline mode
/// sends these): upstream it deallocates a throwaway statement made for it, so that the server
/// answers it as it would have; the client's name goes when it is bound.
fn deallocate_unnamed(tx: &mut Tx<'_>) -> Decision {
    msg::describe_or_close(tx.out, b'C', b'S', THROWAWAY.as_bytes());
    tx.flow.replies.push(Entry::new(Expect::Close).hidden());
    msg::parse(tx.out, THROWAWAY.as_bytes(), b"SELECT\0\0\0");
    tx.flow.replies.push(Entry::new(Expect::Parse).hidden());
    let text = format!("DEALLOCATE {THROWAWAY}\0\0\0");
    msg::parse(tx.out, b"", text.as_bytes());
    tx.flow.replies.push(Entry::new(Expect::Parse));
    Decision::Replace
}

fn parse(body: &[u8], tx: &mut Tx<'_>) -> Decision {
    let Some(name_end) = cstr_end(body, 1) else {
        return push(tx, Entry::new(Expect::Parse));
    };
    let (name, tail) = (&body[..name_end - 1], &body[name_end..]);
    let class = tx.client.recent.classify(text(tail));
    if let Some(refusal) = effects(&class, tx) {
        return refuse(tx, false, refusal);
    }
    if name.is_empty() {
        tx.client.unnamed = acts(&class);
        if let Some(Acts::Deallocate(target)) = &tx.client.unnamed {
            if tx.client.statements.contains(target) {
                return deallocate_unnamed(tx);
            }
            tx.client.unnamed = None;
        }
        return push(tx, Entry::new(Expect::Parse));
    }
    if tx.client.statements.contains(name) {
        let m = format!(
            "prepared statement \"{}\" already exists",
            String::from_utf8_lossy(name)
        );
        return refuse(tx, false, error("42P05", &m));
    }
    let stmt = Arc::new(Statement::new(Bytes::copy_from_slice(tail), class));
    let limit = tx.cfg.max_client_statement_bytes;
    if tx
        .client
        .statements
        .insert(name, stmt.clone(), limit)
        .is_err()
    {
        let m = format!(
            "rotagate keeps at most {limit} bytes of prepared statements per client in \
             transaction mode (pool.max_client_statement_bytes); close statements you no longer use"
        );
        return refuse(tx, false, error("53400", &m));
    }
    if tx.prepared.touch(&stmt.upstream) {
        tx.flow.replies.push(
            Entry::new(Expect::Local(Local::ParseComplete))
                .effect(Effect::ClientParse(name.into())),
        );
        return Decision::Replace;
    }
    prepare(&stmt, Some(name), tx);
    Decision::Replace
}

/// Prepares `stmt` on the connection (closing the least recently used one first when it has
/// `max_prepared_statements`): the client's own Parse, renamed, or one rotagate injects (hidden)
/// for a statement the client uses.
fn prepare(stmt: &Statement, client: Option<&[u8]>, tx: &mut Tx<'_>) {
    evict(tx);
    msg::parse(tx.out, stmt.upstream.as_bytes(), &stmt.tail);
    tx.prepared.insert(stmt.upstream.clone());
    tx.prepared.count_prepare();
    let entry = Entry::new(Expect::Parse).effect(Effect::Prepare {
        upstream: stmt.upstream.clone(),
        client: client.map(Into::into),
    });
    tx.flow.replies.push(if client.is_some() {
        entry
    } else {
        entry.hidden()
    });
}

/// Closes the least recently used statement when the connection has `max_prepared_statements`.
fn evict(tx: &mut Tx<'_>) {
    if let Some(victim) = tx.prepared.victim(tx.cfg.max_prepared_statements) {
        msg::describe_or_close(tx.out, b'C', b'S', victim.as_bytes());
        tx.prepared.remove(&victim);
        tx.flow.replies.push(
            Entry::new(Expect::Close)
                .hidden()
                .effect(Effect::Unprepare(victim)),
        );
    }
}

/// Makes sure the connection has `stmt`, writing the Parse (and Close) that takes into `out`.
fn ensure(stmt: &Statement, tx: &mut Tx<'_>) {
    if !tx.prepared.touch(&stmt.upstream) {
        prepare(stmt, None, tx);
    }
}

/// A client's statement name: its statement, or a refusal for a name in rotagate's own space.
fn lookup(name: &[u8], tx: &Tx<'_>) -> Result<Option<Arc<Statement>>, Bytes> {
    if let Some(stmt) = tx.client.statements.get(name) {
        return Ok(Some(stmt.clone()));
    }
    if name.starts_with(UPSTREAM_PREFIX.as_bytes()) {
        let m = format!(
            "prepared statement \"{}\" does not exist",
            String::from_utf8_lossy(name)
        );
        return Err(error("26000", &m));
    }
    Ok(None)
}

fn bind(body: &[u8], len: usize, tx: &mut Tx<'_>) -> Decision {
    let Some(names_end) = cstr_end(body, 2) else {
        if HEADER_LEN + body.len() < len {
            return Decision::NeedMore;
        }
        return push(tx, Entry::new(Expect::Bind));
    };
    let portal_end = cstr_end(body, 1).expect("two strings hold one");
    let name = &body[portal_end..names_end - 1];
    if name.is_empty() {
        let effect = match tx.client.unnamed.clone() {
            None => Effect::None,
            Some(Acts::Deallocate(target)) => {
                let mut taken = super::statements::Statements::default();
                if let Some(stmt) = tx.client.statements.remove(&target) {
                    taken.restore(&target, stmt);
                }
                Effect::Deallocate(Box::new(taken))
            }
            Some(Acts::DropsAll { discard_all }) => {
                tx.flow.portal_drops = Some(discard_all);
                Effect::None
            }
        };
        return push(tx, Entry::new(Expect::Bind).effect(effect));
    }
    let stmt = match lookup(name, tx) {
        Ok(Some(stmt)) => stmt,
        Ok(None) => return push(tx, Entry::new(Expect::Bind)),
        Err(refusal) => return refuse(tx, false, refusal),
    };
    if let Some(refusal) = effects(&stmt.class, tx) {
        return refuse(tx, false, refusal);
    }
    if let Some(Acts::DropsAll { discard_all }) = acts(&stmt.class) {
        tx.flow.portal_drops = Some(discard_all);
    }
    ensure(&stmt, tx);
    let new_len = len - HEADER_LEN + 4 - name.len() + stmt.upstream.len();
    tx.out.put_u8(b'B');
    tx.out.put_u32(new_len as u32);
    tx.out.put_slice(&body[..portal_end]);
    tx.out.put_slice(stmt.upstream.as_bytes());
    tx.out.put_u8(0);
    tx.flow.replies.push(Entry::new(Expect::Bind));
    Decision::RewriteHead(HEADER_LEN + names_end)
}

fn describe(body: &[u8], tx: &mut Tx<'_>) -> Decision {
    let (kind, name) = (body.first().copied(), text(body.get(1..).unwrap_or(&[])));
    if kind != Some(b'S') {
        return push(tx, Entry::new(Expect::DescribePortal));
    }
    if name.is_empty() {
        return push(tx, Entry::new(Expect::DescribeStatement));
    }
    match lookup(name, tx) {
        Ok(Some(stmt)) => {
            ensure(&stmt, tx);
            msg::describe_or_close(tx.out, b'D', b'S', stmt.upstream.as_bytes());
            tx.flow.replies.push(Entry::new(Expect::DescribeStatement));
            Decision::Replace
        }
        Ok(None) => push(tx, Entry::new(Expect::DescribeStatement)),
        Err(refusal) => refuse(tx, false, refusal),
    }
}

fn close(body: &[u8], tx: &mut Tx<'_>) -> Decision {
    let (kind, name) = (body.first().copied(), text(body.get(1..).unwrap_or(&[])));
    if kind != Some(b'S') || name.is_empty() {
        return push(tx, Entry::new(Expect::Close));
    }
    // The upstream statement stays for other clients (and the LRU); only the name goes.
    let effect = match tx.client.statements.remove(name) {
        Some(stmt) => Effect::ClientClose(name.into(), stmt),
        None => Effect::None,
    };
    tx.flow
        .replies
        .push(Entry::new(Expect::Local(Local::CloseComplete)).effect(effect));
    Decision::Replace
}
