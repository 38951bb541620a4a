//! Server messages in transaction mode, matched in order against the replies owed
//! ([`super::replies`]): replies to injected messages are hidden, refused messages get
//! rotagate's error instead of the server's, replies rotagate gives itself go out in their
//! turn, descriptions are captured where asked ([`super::checks`]), and what an entry changed
//! ahead of time is undone when the server fails or skips it.

use super::checks;
use super::errnames;
use super::flow::{ClientState, Flow};
use super::replies::{Effect, Entry, Expect, Local, Note, Outcome};
use super::unnamed;
use crate::backend::prepared::{Known, Prepared};
use crate::frontend::relay::lane::{ERROR_HEAD, Need};
use crate::wire::msg;
use bytes::{Bytes, BytesMut};

/// What becomes of one server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    Forward,
    Hide,
    /// Send this ErrorResponse instead.
    Replace(Bytes),
    /// A FATAL error: the upstream session is ending (kept in `Signals::fatal`).
    Fatal,
}

/// What a decision reads and changes.
pub struct Rx<'a> {
    pub client: &'a mut ClientState,
    pub prepared: &'a mut Prepared,
    pub flow: &'a mut Flow,
    pub tx_status: &'a mut u8,
    pub known: &'a Known,
}

/// How much of a server message is needed to decide on it (`captures`: a Describe's replies
/// are being captured). An error is decided on its head: a huge one streams through.
pub fn need(tag: u8, captures: bool) -> Need {
    if tag == b'E' {
        Need::Head(ERROR_HEAD)
    } else if matches!(tag, b'Z' | b'S' | b'1' | b'3') || (captures && matches!(tag, b't' | b'T')) {
        Need::Whole
    } else {
        Need::Nothing
    }
}

/// Decides on one server message; `body` is whole when [`need`] says so (an error's, as far
/// as its head). An error is a message rotagate cannot place: the connection must close.
pub fn decide(tag: u8, body: &[u8], rx: &mut Rx<'_>) -> Result<Out, &'static str> {
    use Expect::*;
    let front = rx.flow.replies.front().map(|e| (e.expect, e.note));
    match (tag, front) {
        (b'S' | b'N' | b'A', _) => Ok(Out::Forward),
        (b'E', _) => Ok(error(body, rx)),
        (b'Z', Some((Tagged(tag), _))) => Ok(tagged_ready(tag, body, rx)),
        (b'T' | b'D' | b'C' | b'I', Some((Tagged(_), _))) => Ok(Out::Hide),
        (b'Z', Some((Sync | Query, _))) => {
            let (hidden, _) = ready(body, rx);
            Ok(if hidden { Out::Hide } else { Out::Forward })
        }
        (b'1', Some((Parse, _))) | (b'2', Some((Bind, _))) | (b'3', Some((Close, _))) => {
            Ok(complete(rx))
        }
        (b'n' | b'T', Some((DescribeStatement, Note::Capture))) => {
            let rows = (tag == b'T').then_some(body);
            checks::described(rows, rx.flow, rx.prepared, rx.client, rx.known);
            Ok(complete(rx))
        }
        (b'n', Some((DescribeStatement | DescribePortal, _)))
        | (b'T', Some((DescribeStatement | DescribePortal, _)))
        | (b'C' | b'I' | b's', Some((Execute, _))) => Ok(complete(rx)),
        (b't', Some((DescribeStatement, Note::Probe))) => Ok(Out::Forward),
        (b't', Some((DescribeStatement, note))) => {
            if note == Note::Capture {
                checks::params(body, rx.flow);
            }
            let hidden = rx.flow.replies.front().is_some_and(|e| e.hidden);
            Ok(if hidden { Out::Hide } else { Out::Forward })
        }
        (b'D' | b'd' | b'c' | b'G' | b'H' | b'W', Some((Execute | Query, _)))
        | (b'T' | b'C' | b'I' | b'V', Some((Query, _))) => Ok(Out::Forward),
        (_, None) => Err("a message the client did not ask for"),
        _ => Err("a reply out of order"),
    }
}

/// A ReadyForQuery ends the front entry: the transaction status is taken, the entry finished.
/// Returns whether it was hidden and whether it failed.
fn ready(body: &[u8], rx: &mut Rx<'_>) -> (bool, bool) {
    *rx.tx_status = body.first().copied().unwrap_or(b'E');
    let e = rx.flow.replies.pop().expect("front exists");
    let (hidden, failed) = (e.hidden, e.failed);
    let outcome = if failed && !e.ran {
        Outcome::Failed
    } else {
        Outcome::Done
    };
    finish(e, outcome, rx);
    (hidden, failed)
}

/// The end of a statement rotagate ran in place of the client's (`DISCARD ALL` in parts): the
/// client sees the tag it sent, or the error.
fn tagged_ready(tag: &'static str, body: &[u8], rx: &mut Rx<'_>) -> Out {
    if ready(body, rx).1 {
        return Out::Forward;
    }
    let mut b = BytesMut::new();
    msg::command_complete(&mut b, tag);
    msg::ready_for_query(&mut b, *rx.tx_status);
    Out::Replace(b.freeze())
}

/// The front entry is complete and succeeded.
fn complete(rx: &mut Rx<'_>) -> Out {
    let e = rx.flow.replies.pop().expect("front exists");
    let hidden = e.hidden;
    finish(e, Outcome::Done, rx);
    if hidden { Out::Hide } else { Out::Forward }
}

fn error(body: &[u8], rx: &mut Rx<'_>) -> Out {
    let severity = msg::severity(body);
    if severity == b"FATAL" || severity == b"PANIC" {
        rx.flow.signals.fatal = Some(msg::whole_body(body));
        return Out::Fatal;
    }
    // Only an error's head came (it is huge): it passes as it is, never rewritten.
    let whole = msg::complete(body);
    if msg::code(body) == b"25006" {
        rx.flow.signals.read_only = true;
    }
    let Some(front) = rx.flow.replies.front_mut() else {
        return Out::Forward;
    };
    // A Query's error, or one sent in reply to Sync (a deferred constraint or a serialization
    // failure at the implicit commit): ReadyForQuery still follows.
    if front.expect.is_sync_point() {
        if front.quiet {
            front.failed = true;
            return Out::Hide;
        }
        let first = !front.failed;
        front.failed = true;
        // rotagate's stand-in statement (a DEALLOCATE of a throwaway) fails only as aborted
        // or canceled: an integrity or transaction-rollback error is the implicit commit's,
        // after it ran (the long run's seed 1000914).
        let code = msg::code(body);
        front.ran = matches!(front.expect, Expect::Tagged(_))
            && (code.starts_with(b"23") || code.starts_with(b"40"));
        if let (Some(r), true) = (front.refusal(), first) {
            return Out::Replace(r.clone());
        }
        if !whole {
            return Out::Forward;
        }
        return errnames::client_names_in_error(body, None, rx.client, rx.prepared, rx.flow)
            .map_or(Out::Forward, Out::Replace);
    }
    // An extended-protocol message failed: the server skips the rest up to Sync.
    let failed = rx.flow.replies.pop().expect("front exists");
    if let Some(n) = failed
        .shared_name()
        .filter(|_| super::shared::stale_error(msg::code(body)))
    {
        // A shared statement went stale: it is prepared anew next time.
        rx.prepared.unshare(n);
    }
    if failed.quiet && failed.expect == Expect::Parse && rx.flow.quiet_error.is_none() {
        let mut b = BytesMut::new();
        msg::error_with_severity(&mut b, body, "ERROR");
        rx.flow.quiet_error = Some(b.freeze());
    }
    let out = match failed.refusal() {
        _ if failed.quiet => Out::Hide,
        Some(r) => Out::Replace(r.clone()),
        None if !whole => Out::Forward,
        None => errnames::client_names_in_error(
            body,
            failed.client_name(),
            rx.client,
            rx.prepared,
            rx.flow,
        )
        .map_or(Out::Forward, Out::Replace),
    };
    // A Describe of a shared statement: what came before the error goes first (`shared.rs`).
    let held = std::mem::take(&mut rx.flow.shared_params) && failed.shared_name().is_some();
    let out = match out {
        Out::Replace(e) if held && whole => Out::Replace(super::shared::after_params(rx.flow, &e)),
        Out::Forward if held && whole => {
            let mut e = BytesMut::new();
            msg::message(&mut e, b'E', body);
            Out::Replace(super::shared::after_params(rx.flow, &e))
        }
        other => other,
    };
    let mut ended = vec![(failed, Outcome::Failed)];
    while let Some(skipped) = rx.flow.replies.pop_skipped() {
        ended.push((skipped, Outcome::Skipped));
    }
    undo(ended, rx);
    if rx.flow.replies.front().is_none() {
        rx.flow.skipping = true;
    }
    out
}

/// Entries that failed or were skipped, in queue order: their notes are confirmed in order,
/// and what they changed ahead of time is undone last change first.
pub fn undo(ended: Vec<(Entry, Outcome)>, rx: &mut Rx<'_>) {
    for (e, outcome) in &ended {
        confirm(e.note, *outcome, rx);
    }
    for (e, outcome) in ended.into_iter().rev() {
        settle(e, outcome, rx);
    }
}

/// What a finished entry's outcome does to the client's names and the connection's
/// statements.
pub fn finish(e: Entry, outcome: Outcome, rx: &mut Rx<'_>) {
    confirm(e.note, outcome, rx);
    settle(e, outcome, rx);
}

/// What the outcome of an entry's message tells the state kept beside the queue.
fn confirm(note: Note, outcome: Outcome, rx: &mut Rx<'_>) {
    match note {
        Note::None => {}
        Note::Capture if outcome != Outcome::Done => checks::lost(rx.flow),
        Note::Capture => {}
        note => unnamed::confirm(note, outcome, rx.client, rx.prepared, rx.flow),
    }
}

/// Applies or undoes what an entry changed ahead of its reply.
fn settle(e: Entry, outcome: Outcome, rx: &mut Rx<'_>) {
    if !e.has_effect() {
        return;
    }
    let ok = outcome == Outcome::Done;
    match (e.into_effect(), ok) {
        (Effect::Prepare { upstream, client }, false) => {
            rx.prepared.remove(&upstream);
            if let Some(name) = client {
                rx.client.statements.remove(&name);
            }
        }
        (Effect::Unprepare(name, slot), false) => rx.prepared.restore(name, slot),
        (Effect::ClientClose(name, stmt), false) => rx.client.statements.restore(&name, stmt),
        (Effect::Deallocate(taken), false) => rx.client.statements.restore_all(*taken),
        (
            Effect::Drops {
                discard_all: true, ..
            },
            true,
        ) => rx.client.pins.unpin(),
        (Effect::Drops { sole: false, .. }, false) => rx.flow.signals.unsure = true,
        (
            Effect::Drops {
                client, upstream, ..
            },
            false,
        ) => {
            rx.client.statements.restore_all(*client);
            rx.prepared.restore_all(*upstream);
        }
        _ => {}
    }
}

/// Writes the replies rotagate owes at the front of the queue (they need no server message).
/// A shared statement's ParseComplete waits for the reply to the next message unless `now`
/// (that reply came) or nothing follows it.
pub fn locals(rx: &mut Rx<'_>, out: &mut BytesMut, mut now: bool) {
    while let Some(Expect::Local(local)) = rx.flow.replies.front().map(|e| e.expect) {
        if local == Local::SharedParse && !std::mem::take(&mut now) && rx.flow.replies.len() > 1 {
            return;
        }
        let e = rx.flow.replies.pop().expect("front exists");
        match local {
            Local::ParseComplete => msg::empty(out, b'1'),
            Local::SharedParse => {
                // The client has its ParseComplete: the request cannot be decided again.
                rx.flow.replay = None;
                msg::empty(out, b'1');
            }
            Local::Bytes => out.extend_from_slice(e.refusal().map_or(&[][..], |b| &b[..])),
            Local::CloseComplete => msg::empty(out, b'3'),
            Local::Deallocate { all } => {
                let status = *rx.tx_status;
                if status == b'E' {
                    out.extend_from_slice(&super::tx::aborted());
                    finish(e, Outcome::Failed, rx);
                } else {
                    msg::command_complete(out, if all { "DEALLOCATE ALL" } else { "DEALLOCATE" });
                    finish(e, Outcome::Done, rx);
                }
                msg::ready_for_query(out, status);
                continue;
            }
        }
        finish(e, Outcome::Done, rx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::transaction::statements::{Statement, Statements};
    use std::sync::Arc;

    struct World {
        client: ClientState,
        prepared: Prepared,
        flow: Flow,
        status: u8,
        known: Known,
    }

    impl World {
        fn new() -> Self {
            Self {
                client: ClientState::default(),
                prepared: Prepared::default(),
                flow: Flow::default(),
                status: b'I',
                known: Known::default(),
            }
        }
        fn rx(&mut self) -> Rx<'_> {
            Rx {
                client: &mut self.client,
                prepared: &mut self.prepared,
                flow: &mut self.flow,
                tx_status: &mut self.status,
                known: &self.known,
            }
        }
    }

    fn err(code: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        msg::error(&mut b, "ERROR", code, "boom");
        b[5..].to_vec()
    }

    #[test]
    fn hidden_parse_then_the_clients_replies() {
        let mut w = World::new();
        w.flow.replies.push(Entry::new(Expect::Parse).hidden());
        w.flow.replies.push(Entry::new(Expect::Bind));
        w.flow.replies.push(Entry::new(Expect::Execute));
        w.flow.replies.push(Entry::new(Expect::Sync));
        let mut rx = w.rx();
        assert_eq!(decide(b'1', b"", &mut rx), Ok(Out::Hide));
        assert_eq!(decide(b'2', b"", &mut rx), Ok(Out::Forward));
        assert_eq!(decide(b'D', b"", &mut rx), Ok(Out::Forward));
        assert_eq!(decide(b'C', b"", &mut rx), Ok(Out::Forward));
        assert_eq!(decide(b'Z', b"T", &mut rx), Ok(Out::Forward));
        assert!(w.flow.replies.is_empty());
        assert_eq!(w.status, b'T');
    }

    #[test]
    fn an_error_undoes_what_the_skipped_messages_did() {
        let mut w = World::new();
        let stmt = Arc::new(Statement::new(
            Bytes::from_static(b"SELECT 1\0\0\0"),
            Default::default(),
        ));
        w.client
            .statements
            .insert(b"s1", stmt.clone(), 1 << 20)
            .unwrap();
        let upstream = w.prepared.fresh(stmt.key);
        w.flow
            .replies
            .push(Entry::new(Expect::Parse).effect(Effect::Prepare {
                upstream,
                client: Some(b"s1"[..].into()),
            }));
        let closed = Arc::new(Statement::new(
            Bytes::from_static(b"SELECT 2\0\0\0"),
            Default::default(),
        ));
        w.flow.replies.push(
            Entry::new(Expect::Local(Local::CloseComplete))
                .effect(Effect::ClientClose(b"s2"[..].into(), closed)),
        );
        w.flow.replies.push(Entry::new(Expect::Sync));
        let mut rx = w.rx();
        assert_eq!(decide(b'E', &err("42601"), &mut rx), Ok(Out::Forward));
        let mut out = BytesMut::new();
        locals(&mut rx, &mut out, false);
        assert!(out.is_empty(), "the skipped Close gets no CloseComplete");
        assert_eq!(decide(b'Z', b"I", &mut rx), Ok(Out::Forward));
        assert!(!w.client.statements.contains(b"s1"), "its Parse failed");
        assert!(w.client.statements.contains(b"s2"), "its Close was skipped");
        assert!(w.prepared.is_empty());
        assert!(!w.flow.skipping);
    }

    #[test]
    fn an_error_in_reply_to_sync_is_relayed_and_ready_for_query_follows() {
        let mut w = World::new();
        for e in [Expect::Bind, Expect::Execute, Expect::Sync] {
            w.flow.replies.push(Entry::new(e));
        }
        let mut rx = w.rx();
        assert_eq!(decide(b'2', b"", &mut rx), Ok(Out::Forward));
        assert_eq!(decide(b'C', b"UPDATE 1\0", &mut rx), Ok(Out::Forward));
        assert_eq!(decide(b'E', &err("23505"), &mut rx), Ok(Out::Forward));
        assert_eq!(decide(b'N', b"", &mut rx), Ok(Out::Forward));
        assert_eq!(decide(b'Z', b"I", &mut rx), Ok(Out::Forward));
        assert!(w.flow.replies.is_empty() && !w.flow.skipping);
    }

    #[test]
    fn a_query_after_a_failed_message_before_sync_is_skipped_too() {
        let mut w = World::new();
        for e in [Expect::Parse, Expect::Query, Expect::Bind, Expect::Sync] {
            w.flow.replies.push(Entry::new(e));
        }
        let mut rx = w.rx();
        assert_eq!(decide(b'E', &err("42601"), &mut rx), Ok(Out::Forward));
        assert_eq!(
            rx.flow.replies.front().map(|e| e.expect),
            Some(Expect::Sync)
        );
        assert_eq!(decide(b'Z', b"I", &mut rx), Ok(Out::Forward));
    }

    #[test]
    fn an_error_before_the_sync_is_sent_makes_the_server_skip() {
        let mut w = World::new();
        w.flow.replies.push(Entry::new(Expect::Bind));
        let mut rx = w.rx();
        assert_eq!(decide(b'E', &err("26000"), &mut rx), Ok(Out::Forward));
        assert!(w.flow.skipping);
    }

    #[test]
    fn refusals_replace_the_servers_error_once() {
        let mut w = World::new();
        let ours = Bytes::from_static(b"E ours");
        w.flow
            .replies
            .push(Entry::new(Expect::Query).refused(ours.clone()));
        let mut rx = w.rx();
        assert_eq!(decide(b'E', &err("42601"), &mut rx), Ok(Out::Replace(ours)));
        assert_eq!(decide(b'Z', b"I", &mut rx), Ok(Out::Forward));
    }

    #[test]
    fn fatal_errors_end_the_session_and_strays_are_refused() {
        let mut w = World::new();
        let mut b = BytesMut::new();
        msg::error(&mut b, "FATAL", "57P01", "terminating connection");
        let mut rx = w.rx();
        assert_eq!(decide(b'E', &b[5..], &mut rx), Ok(Out::Fatal));
        assert!(decide(b'1', b"", &mut rx).is_err());
        assert_eq!(decide(b'A', b"", &mut rx), Ok(Out::Forward));
    }

    #[test]
    fn local_deallocate_answers_in_turn_and_fails_in_an_aborted_transaction() {
        let mut w = World::new();
        let mut taken = Statements::default();
        let stmt = Arc::new(Statement::new(
            Bytes::from_static(b"SELECT 1\0\0\0"),
            Default::default(),
        ));
        taken.restore(b"s1", stmt);
        w.flow.replies.push(
            Entry::new(Expect::Local(Local::Deallocate { all: false }))
                .effect(Effect::Deallocate(Box::new(taken))),
        );
        w.status = b'E';
        let mut out = BytesMut::new();
        locals(&mut w.rx(), &mut out, false);
        assert_eq!(out[0], b'E');
        assert_eq!(&out[out.len() - 6..], b"Z\0\0\0\x05E");
        assert!(w.client.statements.contains(b"s1"));
    }
}
