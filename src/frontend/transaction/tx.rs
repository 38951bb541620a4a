//! What a decision on a client message reads and writes ([`Tx`]), and what many decisions do:
//! queue the replies owed, apply what a statement does to the session (settings, pins), and
//! refuse a message the way PostgreSQL would fail it.

use super::classify::{Class, PinReason};
use super::flow::{ClientState, Flow};
use super::replies::{Entry, Expect, Note};
use crate::backend::prepared::Prepared;
use crate::config::{OnPin, PoolConfig};
use crate::frontend::relay::lane::Decision;
use crate::wire::msg;
use bytes::{Bytes, BytesMut};

/// A Describe of this statement name always fails upstream: no upstream name has a `-`.
const NO_SUCH_STATEMENT: &[u8] = b"rotagate_-";

/// What a decision reads and changes.
pub struct Tx<'a> {
    /// The status of the connection's last ReadyForQuery.
    pub status: u8,
    pub client: &'a mut ClientState,
    pub prepared: &'a mut Prepared,
    pub flow: &'a mut Flow,
    pub cfg: &'a PoolConfig,
    pub out: &'a mut BytesMut,
}

pub fn push(tx: &mut Tx<'_>, e: Entry) -> Decision {
    tx.flow.replies.push(e);
    Decision::Pass
}

/// The string at the start of `bytes`, up to its NUL.
pub fn text(bytes: &[u8]) -> &[u8] {
    match memchr::memchr(0, bytes) {
        Some(i) => &bytes[..i],
        None => bytes,
    }
}

/// Applies what a statement does to the session; Some(refusal) when `on_pin = "error"` refuses
/// it.
pub fn effects(class: &Class, tx: &mut Tx<'_>) -> Option<Bytes> {
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
        if !tx
            .client
            .pins
            .pin(reason, &tx.client.who, tx.cfg.max_pinned())
        {
            return Some(too_many_pinned(reason.statement(), tx.cfg.max_pinned()));
        }
    }
    if class.check {
        tx.flow.reread = true;
    }
    if class.settings {
        tx.flow.reread = true;
        if !tx.client.settings.note_custom(&class.custom) {
            let max = tx.cfg.max_pinned();
            if !tx.client.pins.pin(PinReason::Other, &tx.client.who, max) {
                return Some(too_many_pinned(PinReason::Other.statement(), max));
            }
        }
    }
    None
}

/// The refusal of a pin past `pool.max_pinned`.
pub fn too_many_pinned(statement: &str, max: u32) -> Bytes {
    error(
        "0A000",
        &format!(
            "{statement} would tie this session to one upstream connection, and {max} of this \
             database's clients are tied already (pool.max_pinned = {max}, which keeps \
             connections for everyone else): use session mode for such sessions"
        ),
    )
}

/// PostgreSQL's error for a statement in an aborted transaction block.
pub fn aborted() -> Bytes {
    error(
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

pub fn error(code: &str, message: &str) -> Bytes {
    let mut b = BytesMut::new();
    msg::error(&mut b, "ERROR", code, message);
    b.freeze()
}

/// Sends a message that fails upstream in place of the refused one; `refusal` replaces the
/// server's error.
pub fn refuse(tx: &mut Tx<'_>, simple: bool, refusal: Bytes) -> Decision {
    if simple {
        msg::query(tx.out, "rotagate");
        tx.flow.unnamed_dropped();
        tx.flow.replies.push(
            Entry::new(Expect::Query)
                .refused(refusal)
                .note(Note::UnnamedDrop),
        );
    } else {
        msg::describe_or_close(tx.out, b'D', b'S', NO_SUCH_STATEMENT);
        tx.flow
            .replies
            .push(Entry::new(Expect::DescribeStatement).refused(refusal));
    }
    Decision::Replace
}
