//! The replies to requests a shared statement serves (`shared.rs`, `pool.prepare_unnamed`):
//! rotagate's ParseComplete waits at the front until the statement's first use shows it is not
//! stale; a Describe's ParameterDescription waits with it; and a request whose first use
//! failed is decided again when nothing of it has run or reached the client.

use super::flow::Capture;
use super::incoming::{Rx, finish, undo};
use super::replies::{Expect, Note, Outcome};
use crate::wire::msg;
use bytes::Bytes;

/// Whether a server message `tag` completes a client's Describe of a shared statement.
pub fn completes_describe(tag: u8, rx: &Rx<'_>) -> bool {
    matches!(tag, b'T' | b'n')
        && matches!(rx.flow.captures.front(), Some(Capture::Shared))
        && rx.flow.replies.front().map(|e| (e.expect, e.note))
            == Some((Expect::DescribeStatement, Note::Capture))
}

/// The RowDescription or NoData (`tag`, `body`) that completes a client's Describe of a shared
/// statement: its ParameterDescription (held until now) and this, for the client.
pub fn described(tag: u8, body: &[u8], rx: &mut Rx<'_>) -> Bytes {
    rx.flow.captures.pop_front();
    rx.flow.shared_params = false;
    let mut b = bytes::BytesMut::new();
    msg::message(&mut b, b't', &rx.flow.capture_params);
    msg::message(&mut b, tag, body);
    let e = rx.flow.replies.pop().expect("front exists");
    finish(e, Outcome::Done, rx);
    b.freeze()
}

/// An error came while rotagate's ParseComplete for a shared statement waits at the front.
/// When it is that statement's first Bind or Describe failing and the request can be decided
/// again, the error and what the server skipped are hidden, the Sync's ReadyForQuery too, and
/// the request's bytes wait in `flow.retry`: true. The statement is dropped either way.
pub fn retry(rx: &mut Rx<'_>, body: &[u8]) -> bool {
    let Some(local) = rx.flow.replies.pop() else {
        return false;
    };
    let stale = rx
        .flow
        .replies
        .front()
        .and_then(|e| e.shared_name().cloned());
    let failed_shared = stale.is_some();
    if let Some(n) = stale.filter(|_| super::shared::stale_error(msg::code(body))) {
        rx.prepared.unshare(&n);
    }
    let eligible = failed_shared
        && rx.flow.can_retry
        && rx.flow.replay.as_ref().is_some_and(|r| r.complete)
        && msg::severity(body) == b"ERROR";
    if !eligible {
        // A probe's error is what a Parse of the text now gives: the client's Parse fails
        // with it, unless the statement merely changed result type or uses a type made again
        // (a fresh Parse would succeed: the client sees a named statement's error).
        let probe = rx
            .flow
            .replies
            .front()
            .is_some_and(|e| e.hidden && failed_shared);
        // A first Bind or Describe that fails because something the text names is gone (a
        // table, column, function, type or schema) failed re-analysing it: the Parse's error,
        // as directly (the long run's seed 1030042). A Bind's own errors (42P03, a portal
        // that exists; 08P01; class 22) are its own.
        let code = msg::code(body);
        let reanalysed = probe || (failed_shared && super::shared::stale_error(code));
        if reanalysed && code != b"0A000" && code != b"XX000" {
            // The Parse fails: nothing of the Describe reaches the client.
            rx.flow.shared_params = false;
            undo(vec![(local, Outcome::Failed)], rx);
        } else {
            rx.flow.replies.push_front(local);
        }
        return false;
    }
    let failed = rx.flow.replies.pop().expect("checked");
    let mut ended = vec![(local, Outcome::Skipped), (failed, Outcome::Failed)];
    while let Some(skipped) = rx.flow.replies.pop_skipped() {
        ended.push((skipped, Outcome::Skipped));
    }
    undo(ended, rx);
    let alone = rx.flow.replies.len() == 1;
    match rx.flow.replies.front_mut() {
        Some(sync) if alone => {
            sync.hidden = true;
            sync.quiet = true;
        }
        // Not reached: the request ended with its Sync and nothing came after it.
        _ => {
            rx.flow.protocol = Some("a retried request that did not end with its Sync");
            return true;
        }
    }
    let replay = rx.flow.replay.take().expect("checked");
    rx.flow.retry = Some(Bytes::from(replay.bytes));
    rx.flow.replaying = true;
    rx.flow.mapped = None;
    true
}
