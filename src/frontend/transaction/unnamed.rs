//! Each client's unnamed statement is its own (design 9.1): a client that parses its unnamed
//! statement under one Sync and binds it under a later one runs its own text, whatever other
//! clients parsed on the connection in between.
//!
//! The client's unnamed statement, as the server confirmed it, lives in its state
//! ([`Unnamed`]); the connection remembers whose Parse its unnamed statement came from
//! (`Prepared::unnamed`). A Bind or Describe of the unnamed statement passes through when the
//! client parsed it earlier in the same run of messages up to a Sync, or when the connection's
//! unnamed statement is the client's; otherwise rotagate parses the client's text again first
//! (checked against its description, when the client described it: [`super::checks`]). A client
//! without one gets `26000`, as from PostgreSQL. Replies confirm each step in order: a Parse
//! that succeeds makes the statement, one that fails drops it, one the server skips changes
//! nothing; a simple Query drops it; a Close of it drops it.

use super::classify::Class;
use super::flow::{Capture, ClientState, Flow, Hold, PendingUnnamed, Spec, Unnamed};
use super::replies::{Entry, Expect, Local, Note, Outcome};
use super::statements::Statement;
use super::tx::{Tx, error};
use crate::backend::prepared::Prepared;
use crate::wire::msg;
use bytes::Bytes;
use std::sync::Arc;

/// The client's Parse of its unnamed statement.
pub fn parse(tail: &[u8], class: Class, tx: &mut Tx<'_>) {
    let last = tx.flow.unnamed_parses.back().map(|p| &p.stmt).or(tx
        .client
        .unnamed
        .as_ref()
        .map(|u| &u.stmt));
    let stmt = match last {
        // Drivers parse the same text over and over: keep one copy (not a shared statement's,
        // whose description is that statement's).
        Some(s) if s.key == 0 && s.tail[..] == *tail => s.clone(),
        _ => Arc::new(Statement::unnamed(Bytes::copy_from_slice(tail), class)),
    };
    tx.client.serials += 1;
    let serial = tx.client.serials;
    tx.flow.unnamed_parses.push_back(PendingUnnamed {
        stmt,
        serial,
        again: false,
        shared: None,
    });
    tx.flow.mapped = None;
    tx.flow.unnamed_spec = Spec::Parsed(tx.flow.segment);
    tx.flow.unnamed_unconfirmed += 1;
    tx.flow
        .replies
        .push(Entry::new(Expect::Parse).note(Note::UnnamedParse));
}

/// The client's Close of its unnamed statement: answered by rotagate (CloseComplete).
pub fn close(tx: &mut Tx<'_>) {
    tx.flow.unnamed_dropped();
    tx.flow
        .replies
        .push(Entry::new(Expect::Local(Local::CloseComplete)).note(Note::UnnamedClose));
}

/// What a Bind or Describe of the unnamed statement needs first.
pub enum Use {
    /// Nothing (rotagate's Parse of it may be in the output, before the message).
    Pass,
    /// To wait (what it waits for is in the output, with a Flush).
    Hold,
    /// To fail with this error, as PostgreSQL's would.
    Refuse(Bytes),
    /// To go to the shared statement of this name (`shared.rs`).
    Shared(Arc<str>),
}

/// Decides on a Bind or Describe (`describe`) of the unnamed statement. Parsed again for a Describe, it
/// is parsed as the client wrote it, and quietly (see `named::Mode::Describe`).
pub fn use_it(tx: &mut Tx<'_>, describe: bool) -> Use {
    match tx.flow.unnamed_spec {
        Spec::Parsed(seg) if seg == tx.flow.segment => {
            return match &tx.flow.mapped {
                Some(n) => Use::Shared(n.clone()),
                None => Use::Pass,
            };
        }
        _ if tx.flow.unnamed_unconfirmed > 0 => {
            tx.flow.hold = Some(Hold::Unnamed);
            msg::empty(tx.out, b'H');
            return Use::Hold;
        }
        _ => {}
    }
    let Some(u) = tx.client.unnamed.clone() else {
        return Use::Refuse(error("26000", "unnamed prepared statement does not exist"));
    };
    if tx.prepared.unnamed == Some((tx.client.id, u.serial)) {
        return Use::Pass;
    }
    if let Some(n) = here(&u, tx.prepared) {
        return Use::Shared(n);
    }
    reparse(&u, describe, tx)
}

/// The shared statement on this connection that the client's unnamed statement is.
fn here(u: &Unnamed, prepared: &Prepared) -> Option<Arc<str>> {
    let name = u.upstream.as_ref()?;
    let s = prepared.shared(super::statements::fast_key(&u.stmt.tail))?;
    (s.name == *name && std::ptr::addr_eq(Arc::as_ptr(&s.stmt), Arc::as_ptr(&u.stmt)))
        .then(|| name.clone())
}

/// Another client's unnamed statement (or none) is on the connection: the client's is parsed
/// again, and checked against its description when it has one.
fn reparse(u: &Unnamed, describe: bool, tx: &mut Tx<'_>) -> Use {
    let tail = match describe {
        true => u.stmt.tail.clone(),
        false => u.stmt.tail_as_prepared(u.described()),
    };
    msg::parse(tx.out, b"", &tail);
    let parse = Entry::new(Expect::Parse).note(Note::UnnamedReparse);
    let quiet = describe && u.described().is_some();
    tx.flow
        .replies
        .push(if quiet { parse.quiet() } else { parse.hidden() });
    if quiet {
        tx.flow.quiet_error = None;
    }
    tx.flow.unnamed_parses.push_back(PendingUnnamed {
        stmt: u.stmt.clone(),
        serial: u.serial,
        again: true,
        shared: None,
    });
    tx.flow.mapped = None;
    tx.flow.unnamed_unconfirmed += 1;
    tx.flow.unnamed_spec = Spec::Parsed(tx.flow.segment);
    let Some(desc) = u.described() else {
        return Use::Pass;
    };
    msg::describe_or_close(tx.out, b'D', b'S', b"");
    tx.flow.replies.push(
        Entry::new(Expect::DescribeStatement)
            .hidden()
            .note(Note::Capture),
    );
    tx.flow.captures.push_back(Capture::Check {
        stmt: u.stmt.clone(),
        upstream: None,
        want: Box::new(desc.clone()),
    });
    msg::empty(tx.out, b'H');
    tx.flow.hold = Some(Hold::Check {
        verdict: None,
        upstream: None,
    });
    Use::Hold
}

/// The client has an unnamed statement, and the connection's is another (or none): it would be
/// parsed again before use.
pub fn elsewhere(tx: &Tx<'_>) -> bool {
    let decided = matches!(tx.flow.unnamed_spec, Spec::Parsed(s) if s == tx.flow.segment)
        || tx.flow.unnamed_unconfirmed > 0;
    !decided
        && tx.client.unnamed.as_ref().is_some_and(|u| {
            tx.prepared.unnamed != Some((tx.client.id, u.serial)) && here(u, tx.prepared).is_none()
        })
}

/// After the client's Parse of its unnamed statement: a Describe of it, unseen, so that what
/// the server makes of it is known if the client binds it later, perhaps on another
/// connection, where it is parsed again and checked against this ([`reparse`]). It goes right
/// after the Parse, where nothing can have changed the statement yet: the Describe cannot fail
/// once the Parse succeeded (a Describe later, after a schema change in the same transaction,
/// would fail on the stale plan and abort the transaction), and is skipped with it when the
/// Parse fails or is skipped. It rides in the same pipeline: no round trip, no transaction of
/// its own upstream.
pub fn learn(tx: &mut Tx<'_>) {
    msg::describe_or_close(tx.out, b'D', b'S', b"");
    tx.flow.replies.push(
        Entry::new(Expect::DescribeStatement)
            .note(Note::Capture)
            .quiet(),
    );
    tx.flow.captures.push_back(Capture::LearnUnnamed);
}

/// What the server did with an entry that touches the unnamed statement.
pub fn confirm(
    note: Note,
    outcome: Outcome,
    client: &mut ClientState,
    prepared: &mut Prepared,
    flow: &mut Flow,
) {
    let ran = outcome != Outcome::Skipped;
    match note {
        Note::UnnamedParse | Note::UnnamedReparse => {
            let Some(p) = flow.unnamed_parses.pop_front() else {
                return;
            };
            // A shared statement's Parse leaves the connection's unnamed statement as it was.
            let mapped = p.shared.is_some();
            match outcome {
                Outcome::Done => {
                    if !mapped {
                        prepared.unnamed = Some((client.id, p.serial));
                    }
                    if !p.again {
                        client.unnamed = Some(Unnamed {
                            stmt: p.stmt,
                            serial: p.serial,
                            desc: None,
                            upstream: p.shared,
                        });
                    }
                }
                // PostgreSQL drops the unnamed statement before it parses the new one.
                Outcome::Failed => {
                    if !mapped {
                        prepared.unnamed = None;
                    }
                    if !p.again {
                        client.unnamed = None;
                    }
                }
                Outcome::Skipped => {}
            }
        }
        Note::UnnamedDrop if ran => {
            prepared.unnamed = None;
            client.unnamed = None;
        }
        Note::UnnamedClose if ran => {
            let serial = client.unnamed.take().map(|u| u.serial);
            if serial.is_some() && prepared.unnamed == serial.map(|s| (client.id, s)) {
                prepared.unnamed = None;
            }
        }
        _ => {}
    }
    flow.unnamed_unconfirmed = flow.unnamed_unconfirmed.saturating_sub(1);
    if flow.unnamed_unconfirmed == 0 && matches!(flow.hold, Some(Hold::Unnamed)) {
        flow.resumed = true;
    }
}
