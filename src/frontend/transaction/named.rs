//! A client's named statements in transaction mode (design 8.1 and 9.1). Each client Parse is
//! prepared upstream afresh under a name of the connection's own, with a hidden Describe that
//! records what the server made of it; statements of the same text and description are then
//! shared by every client on the connection (a duplicate is closed at the next hand-over). A
//! Bind or Describe of a statement the connection lacks prepares it there first, checked
//! against the client's description ([`super::checks`]); a Close of a client name is answered by
//! rotagate, as is a name no client may use.

use super::checks::{self, Waiting};
use super::classify::Class;
use super::flow::Acts;
use super::flow::{Capture, Hold, Verdict};
use super::replies::{Effect, Entry, Expect, Local, Note};
use super::statements::{Desc, Statement, UPSTREAM_PREFIX};
use super::tx::{Tx, effects, error, push, refuse};
use crate::frontend::relay::lane::Decision;
use crate::wire::{HEADER_LEN, msg};
use bytes::{BufMut, Bytes};
use std::sync::Arc;

pub fn parse(name: &[u8], tail: &[u8], class: Class, tx: &mut Tx<'_>) -> Decision {
    if tx.client.statements.contains(name) {
        return duplicate(name, tail, tx);
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
    let upstream = prepare(&stmt, &stmt.tail, Some(name), tx);
    describe_hidden(
        &upstream,
        Capture::Learn {
            stmt: stmt.clone(),
            upstream: upstream.clone(),
            held: false,
        },
        tx,
    );
    tx.flow.fresh.push((stmt, upstream));
    Decision::Replace
}

/// A Parse of a name the client has: PostgreSQL parses and analyses the text first (its
/// errors, `25P02` in an aborted transaction among them, come first) and only then finds the
/// name taken. So the text is parsed upstream under a throwaway name, and a message that fails
/// follows it, whose error becomes `42P05`.
fn duplicate(name: &[u8], tail: &[u8], tx: &mut Tx<'_>) -> Decision {
    let stmt = Statement::new(Bytes::copy_from_slice(tail), Class::default());
    let upstream = prepare(&stmt, tail, None, tx);
    tx.prepared.discard(&upstream);
    let m = format!(
        "prepared statement \"{}\" already exists",
        String::from_utf8_lossy(name)
    );
    refuse(tx, false, error("42P05", &m))
}

/// Sends a Parse of `stmt` (with `tail`) under a fresh name of the connection's, closing the
/// least recently used statement first when it has `max_prepared_statements`: the client's
/// own Parse (its reply is the client's), or one rotagate needs (hidden).
fn prepare(stmt: &Statement, tail: &[u8], client: Option<&[u8]>, tx: &mut Tx<'_>) -> Arc<str> {
    evict(tx);
    let upstream = tx.prepared.fresh(stmt.key);
    msg::parse(tx.out, upstream.as_bytes(), tail);
    let entry = Entry::new(Expect::Parse).effect(Effect::Prepare {
        upstream: upstream.clone(),
        client: client.map(Into::into),
    });
    tx.flow.replies.push(if client.is_some() {
        entry
    } else {
        entry.hidden()
    });
    upstream
}

/// A Describe of `upstream` whose replies the client does not see, captured for `capture`.
pub(super) fn describe_hidden(upstream: &str, capture: Capture, tx: &mut Tx<'_>) {
    msg::describe_or_close(tx.out, b'D', b'S', upstream.as_bytes());
    tx.flow.replies.push(
        Entry::new(Expect::DescribeStatement)
            .hidden()
            .note(Note::Capture),
    );
    tx.flow.captures.push_back(capture);
}

/// Closes the least recently used statement when the connection has `max_prepared_statements`
/// (not inside a transaction block: closing a statement closes the portals made from it, and
/// one may still be open there).
pub(super) fn evict(tx: &mut Tx<'_>) {
    if tx.status != b'I' {
        return;
    }
    let Some(victim) = tx.prepared.victim(tx.cfg.max_prepared_statements) else {
        return;
    };
    msg::describe_or_close(tx.out, b'C', b'S', victim.as_bytes());
    if let Some(slot) = tx.prepared.remove(&victim) {
        tx.flow.replies.push(
            Entry::new(Expect::Close)
                .hidden()
                .effect(Effect::Unprepare(victim, slot)),
        );
    }
}

/// Where a client's statement is on this connection.
pub enum Found {
    Here(Arc<str>),
    /// Prepared again and being checked: the message waits.
    Checking,
}

/// The connection's statement for the client's `stmt`, prepared here first when it lacks one.
/// What a statement is found for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bind,
    /// A Describe: prepared again as the client first wrote it (a type it took that was
    /// dropped since changes only its parameters then), its Parse's error kept for the client.
    Describe,
    /// An EXECUTE in a Query: rotagate's messages are quiet and end with a Sync of their own,
    /// so that a failure there cannot make the server skip the Query (its error is kept).
    Query,
}

pub fn resolve(stmt: &Arc<Statement>, tx: &mut Tx<'_>, mode: Mode) -> Found {
    let query = mode == Mode::Query;
    if let Some(name) = tx.flow.fresh_name(stmt) {
        tx.prepared.touch(&name);
        return Found::Here(name);
    }
    let desc = stmt.desc.get();
    if let Some(name) = desc.and_then(|d| tx.prepared.find(stmt.key, d.digest, stmt.born)) {
        return Found::Here(name);
    }
    let tail = match mode {
        Mode::Describe => stmt.tail.clone(),
        _ => stmt.tail_as_prepared(desc),
    };
    let upstream = prepare(stmt, &tail, None, tx);
    quiet_if(mode != Mode::Bind, tx);
    tx.flow.quiet_error = None;
    // A Query's statement is made with a Sync of rotagate's after it, so that a failure
    // cannot make the server skip the Query; with extended messages unsynced, whose implicit
    // transaction the client's Query ends, the Query waits for the outcome instead.
    let wait = query && tx.flow.unsynced;
    let Some(desc) = desc else {
        // Its description never came (its first Describe was skipped): learn it now.
        let capture = Capture::Learn {
            stmt: stmt.clone(),
            upstream: upstream.clone(),
            held: wait,
        };
        describe_hidden(&upstream, capture, tx);
        quiet_if(query, tx);
        if wait {
            msg::empty(tx.out, b'H');
            return hold_for(upstream, tx);
        }
        if query {
            sync_quietly(tx);
        }
        tx.flow.fresh.push((stmt.clone(), upstream.clone()));
        return Found::Here(upstream);
    };
    let capture = Capture::Check {
        stmt: stmt.clone(),
        upstream: Some(upstream.clone()),
        want: Box::new(desc.clone()),
    };
    describe_hidden(&upstream, capture, tx);
    quiet_if(query, tx);
    if query && !wait {
        sync_quietly(tx);
    } else {
        msg::empty(tx.out, b'H');
    }
    hold_for(upstream, tx)
}

/// The message waits for what the server makes of `upstream`.
fn hold_for(upstream: Arc<str>, tx: &mut Tx<'_>) -> Found {
    tx.flow.hold = Some(Hold::Check {
        verdict: None,
        upstream: Some(upstream),
    });
    Found::Checking
}

fn quiet_if(query: bool, tx: &mut Tx<'_>) {
    if query {
        if let Some(e) = tx.flow.replies.last_mut() {
            e.hidden = true;
            e.quiet = true;
        }
    }
}

/// A Sync of rotagate's, unseen.
pub fn sync_quietly(tx: &mut Tx<'_>) {
    msg::empty(tx.out, b'S');
    tx.flow.replies.push(Entry::new(Expect::Sync).quiet());
}

/// In an aborted transaction PostgreSQL describes a statement that returns no rows without
/// revalidating it (and nothing can be prepared there): the description kept answers.
pub fn aborted_no_result(desc: Option<&Desc>, tx: &Tx<'_>) -> bool {
    tx.status == b'E' && desc.is_some_and(|d| d.no_data())
}

/// Whether the connection has nothing for the client's `stmt` yet.
fn lacks(stmt: &Arc<Statement>, tx: &Tx<'_>) -> bool {
    tx.flow.fresh_name(stmt).is_none()
        && stmt.desc.get().is_none_or(|d| {
            tx.prepared
                .index_of(stmt.key, d.digest, stmt.born)
                .is_none()
        })
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

/// Where a message that may have waited for a check stands.
pub enum Held {
    /// It still waits.
    Wait,
    /// Its check failed: the server skips it.
    Drop,
    /// Its statement changed since the client prepared it: the one prepared again.
    Stale(Option<Arc<str>>),
    /// Only the types it takes changed: a Describe answers as it did.
    Cached,
    Go,
}

pub fn held(tx: &mut Tx<'_>) -> Held {
    match checks::waiting(tx.flow) {
        Waiting::Yes => Held::Wait,
        Waiting::Verdict(Verdict::Changed, upstream) => Held::Stale(upstream),
        Waiting::Verdict(Verdict::Failed, _) => Held::Drop,
        Waiting::Verdict(Verdict::Params, _) => Held::Cached,
        Waiting::Verdict(Verdict::Same, _) | Waiting::No => Held::Go,
    }
}

/// A Bind of a statement whose result type changed since the client prepared it (see
/// [`checks::stale`]): the whole Bind goes to `upstream` ("" for the unnamed statement), its
/// success unseen, then a message that fails with the client's error.
pub fn stale_bind(
    body: &[u8],
    portal_end: usize,
    names_end: usize,
    upstream: &str,
    tx: &mut Tx<'_>,
) -> Decision {
    let len = 4 + portal_end + upstream.len() + 1 + body.len() - names_end;
    tx.out.put_u8(b'B');
    tx.out.put_u32(len as u32);
    tx.out.put_slice(&body[..portal_end]);
    tx.out.put_slice(upstream.as_bytes());
    tx.out.put_u8(0);
    tx.out.put_slice(&body[names_end..]);
    tx.flow.replies.push(Entry::new(Expect::Bind).hidden());
    refuse(tx, false, checks::stale())
}

/// rotagate's own answer to a Describe of a statement: what the server described when the
/// client prepared it, or (`error`: preparing it again failed, and the server now skips to
/// Sync) its ParameterDescription and that error.
pub fn answer(desc: Option<&Desc>, error: Option<Bytes>, tx: &mut Tx<'_>) -> Decision {
    let mut b = bytes::BytesMut::new();
    match (desc, error) {
        (Some(d), None) => d.answer(&mut b),
        // In an aborted transaction PostgreSQL refuses before the ParameterDescription.
        (Some(_), Some(e)) if e.get(5..).is_some_and(|body| msg::code(body) == b"25P02") => {
            b.extend_from_slice(&e)
        }
        (Some(d), Some(e)) => {
            d.parameter_description(&mut b);
            b.extend_from_slice(&e);
        }
        (None, Some(e)) => b.extend_from_slice(&e),
        (None, None) => return Decision::Replace,
    }
    tx.flow
        .replies
        .push(Entry::new(Expect::Local(Local::Bytes)).refused(b.freeze()));
    Decision::Replace
}

pub fn bind(
    body: &[u8],
    len: usize,
    portal_end: usize,
    names_end: usize,
    tx: &mut Tx<'_>,
) -> Decision {
    let name = &body[portal_end..names_end - 1];
    let stmt = match lookup(name, tx) {
        Ok(Some(stmt)) => stmt,
        Ok(None) => {
            // Upstream only a client pinned by its SQL PREPARE has statements under client
            // names: otherwise this Bind surely fails, as PostgreSQL's would.
            return push(tx, Entry::new(Expect::Bind));
        }
        Err(refusal) => return refuse(tx, false, refusal),
    };
    if checks::changed(tx.flow) && HEADER_LEN + body.len() < len {
        return Decision::NeedMore;
    }
    match held(tx) {
        Held::Wait => return Decision::Hold,
        Held::Drop => return Decision::Replace,
        Held::Stale(upstream) => {
            let upstream = upstream.expect("a named statement's");
            tx.flow.aliases.push((upstream.clone(), name.into()));
            return stale_bind(body, portal_end, names_end, &upstream, tx);
        }
        Held::Cached => return refuse(tx, false, checks::stale()),
        Held::Go => {}
    }
    if let Some(refusal) = effects(&stmt.class, tx) {
        return refuse(tx, false, refusal);
    }
    if let Some(decision) = count_first(body, names_end, name, &stmt, tx) {
        return decision;
    }
    let upstream = match resolve(&stmt, tx, Mode::Bind) {
        Found::Here(name) => name,
        Found::Checking => return Decision::Hold,
    };
    if let Some(Acts::DropsAll { discard_all }) = Acts::of(&stmt.class) {
        tx.flow.portal_drops = Some(discard_all);
    }
    let new_len = len - HEADER_LEN + 4 - name.len() + upstream.len();
    tx.out.put_u8(b'B');
    tx.out.put_u32(new_len as u32);
    tx.out.put_slice(&body[..portal_end]);
    tx.out.put_slice(upstream.as_bytes());
    tx.out.put_u8(0);
    let entry = Entry::new(Expect::Bind);
    // The error names the client's statement: say which when the client has several names
    // for it, or when another name of it stands for the upstream one in this hand-over (an
    // `EXECUTE` of a name since closed: the long run's seed 1004127).
    let aliased = || tx.flow.aliases.iter().any(|(n, _)| *n == upstream);
    tx.flow
        .replies
        .push(if tx.client.statements.shared(&stmt) || aliased() {
            entry.named(name)
        } else {
            entry
        });
    Decision::RewriteHead(HEADER_LEN + names_end)
}

/// PostgreSQL checks a Bind's counts before anything that preparing the statement here again
/// could fail on first (an aborted transaction, a type dropped since).
fn count_first(
    body: &[u8],
    names_end: usize,
    name: &[u8],
    stmt: &Arc<Statement>,
    tx: &mut Tx<'_>,
) -> Option<Decision> {
    let desc = stmt.desc.get()?;
    if !lacks(stmt, tx) {
        return None;
    }
    checks::bind_counts(body, names_end, Some(desc.param_count()), name, tx)
}

pub fn describe(name: &[u8], tx: &mut Tx<'_>) -> Decision {
    let stmt = match lookup(name, tx) {
        Ok(Some(stmt)) => stmt,
        Ok(None) => {
            return push(tx, Entry::new(Expect::DescribeStatement));
        }
        Err(refusal) => return refuse(tx, false, refusal),
    };
    match held(tx) {
        Held::Wait => return Decision::Hold,
        // Preparing it again failed: PostgreSQL sends the ParameterDescription, then fails.
        Held::Drop => {
            return match tx.flow.quiet_error.take() {
                Some(e) => answer(stmt.desc.get(), Some(e), tx),
                None => Decision::Replace,
            };
        }
        Held::Stale(_) => return refuse(tx, false, checks::stale_described(stmt.desc.get())),
        Held::Cached => return answer(stmt.desc.get(), None, tx),
        Held::Go => {}
    }
    if aborted_no_result(stmt.desc.get(), tx) && lacks(&stmt, tx) {
        return answer(stmt.desc.get(), None, tx);
    }
    match resolve(&stmt, tx, Mode::Describe) {
        Found::Here(upstream) => {
            msg::describe_or_close(tx.out, b'D', b'S', upstream.as_bytes());
            tx.flow.replies.push(Entry::new(Expect::DescribeStatement));
            Decision::Replace
        }
        Found::Checking => Decision::Hold,
    }
}

pub fn close(name: &[u8], tx: &mut Tx<'_>) -> Decision {
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
