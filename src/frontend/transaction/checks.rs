//! Descriptions captured from the server, and the check that keeps a statement prepared again
//! the client's own (design 9.1).
//!
//! A client's new named statement is prepared upstream with a hidden Describe after it, so its
//! [`Desc`] is known as it was when the client prepared it. On a connection that lacks it,
//! rotagate prepares it again with a hidden Describe and a Flush, and the client's message
//! waits ([`Hold`]): the same description means it is the client's statement; another means a
//! schema change came in between, and the client gets the error PostgreSQL would have given its
//! own, older statement (`0A000 cached plan must not change result type`). A type dropped since
//! fails the Parse itself, as it would fail the client's statement.

use super::flow::{Capture, ClientState, Flow, Hold, Verdict};
use super::statements::Desc;
use super::tx::{Tx, error, refuse};
use crate::backend::prepared::{Known, Prepared};
use crate::frontend::relay::lane::Decision;
use crate::wire::msg;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// Where the message at the front stands with respect to a hold.
pub enum Waiting {
    No,
    Yes,
    /// With the name of the statement prepared again (None: the unnamed one).
    Verdict(Verdict, Option<Arc<str>>),
}

/// A check said no and the message it held is still to be decided.
pub fn changed(flow: &Flow) -> bool {
    matches!(
        flow.hold,
        Some(Hold::Check {
            verdict: Some(Verdict::Changed),
            ..
        })
    )
}

pub fn waiting(flow: &mut Flow) -> Waiting {
    match &mut flow.hold {
        None => Waiting::No,
        Some(Hold::Unnamed) if flow.unnamed_unconfirmed > 0 => Waiting::Yes,
        Some(Hold::Unnamed) => {
            flow.hold = None;
            Waiting::No
        }
        Some(Hold::Check { verdict: None, .. }) => Waiting::Yes,
        Some(Hold::Check {
            verdict: Some(v),
            upstream,
        }) => {
            let w = Waiting::Verdict(*v, upstream.take());
            flow.hold = None;
            w
        }
    }
}

/// The error PostgreSQL gives for a statement whose result type changed since it was
/// prepared. A Bind or Describe of such a statement first goes to the one prepared again (its
/// parameter types are the client's): whatever PostgreSQL checks before it revalidates the
/// plan (the number of parameters, their values, an aborted transaction) fails there as it
/// would have; what the client's statement would not have returned is hidden, and a message
/// that fails follows with this error.
pub fn stale() -> Bytes {
    let mut b = BytesMut::new();
    msg::error(
        &mut b,
        "ERROR",
        "0A000",
        "cached plan must not change result type",
    );
    b.freeze()
}

/// The ParameterDescription (the client's types) and the error a Describe of a statement whose
/// result type changed gets from PostgreSQL.
pub fn stale_described(desc: Option<&Desc>) -> Bytes {
    let mut b = BytesMut::new();
    if let Some(d) = desc {
        d.parameter_description(&mut b);
    }
    b.extend_from_slice(&stale());
    b.freeze()
}

/// A check for the message at the front failed, and that message is a Describe it answers.
pub fn failed(flow: &Flow) -> bool {
    matches!(
        flow.hold,
        Some(Hold::Check {
            verdict: Some(Verdict::Failed),
            ..
        })
    )
}

/// A ParameterDescription of the capture at the front.
pub fn params(body: &[u8], flow: &mut Flow) {
    flow.capture_params.clear();
    flow.capture_params.extend_from_slice(body);
    flow.shared_params = matches!(flow.captures.front(), Some(Capture::Shared));
}

/// The RowDescription (None: NoData) that completes the capture at the front.
pub fn described(
    rows: Option<&[u8]>,
    flow: &mut Flow,
    prepared: &mut Prepared,
    client: &mut ClientState,
    known: &Known,
) {
    let Some(capture) = flow.captures.pop_front() else {
        return;
    };
    let desc = Desc::new(&flow.capture_params, rows);
    match capture {
        Capture::Learn {
            stmt,
            upstream,
            held,
        } => {
            if let Some(d) = desc {
                known.insert(stmt.key);
                prepared.learned(&upstream, d.digest);
                let _ = stmt.desc.set(d);
            }
            if held {
                flow.fresh.push((stmt, upstream));
                verdict(flow, Verdict::Same);
            }
        }
        Capture::Shared => {}
        Capture::LearnUnnamed => {
            // The connection's unnamed statement, when it is the client's (which Parse of the
            // client's made it is known only now: an earlier error may have made the server
            // skip later ones).
            let Some(u) = client.unnamed.as_mut() else {
                return;
            };
            if prepared.unnamed == Some((client.id, u.serial)) {
                u.desc = u.desc.take().or(desc);
            }
        }
        Capture::Check {
            stmt,
            upstream,
            want,
        } => {
            let v = match &desc {
                Some(d) if d.digest == want.digest => Verdict::Same,
                Some(d) if d.columns() == want.columns() => Verdict::Params,
                _ => Verdict::Changed,
            };
            if let (Some(n), Some(d)) = (&upstream, &desc) {
                prepared.learned(n, d.digest);
            }
            // The unnamed statement parsed again is a newer one than the client's.
            if upstream.is_none() && v != Verdict::Same {
                prepared.unnamed = None;
            }
            if let (Verdict::Same, Some(n)) = (v, upstream) {
                flow.fresh.push((stmt, n));
            }
            verdict(flow, v);
        }
    }
}

/// The capture at the front will not complete: its Describe failed or was skipped.
pub fn lost(flow: &mut Flow) {
    if let Some(Capture::Check { .. } | Capture::Learn { held: true, .. }) =
        flow.captures.pop_front()
    {
        verdict(flow, Verdict::Failed);
    }
}

fn verdict(flow: &mut Flow, v: Verdict) {
    if let Some(Hold::Check { verdict, .. }) = &mut flow.hold {
        *verdict = Some(v);
        flow.resumed = true;
    }
}

/// A Bind's first checks, as PostgreSQL makes them: None when they pass, else the decision
/// (more of the message needed, or the client's `08P01`).
pub fn bind_counts(
    body: &[u8],
    names_end: usize,
    wanted: Option<usize>,
    name: &[u8],
    tx: &mut Tx<'_>,
) -> Option<Decision> {
    match miscounted(body, names_end, wanted, name) {
        Counted::NeedMore => Some(Decision::NeedMore),
        Counted::Wrong(e) => Some(refuse(tx, false, e)),
        Counted::Right => None,
    }
}

enum Counted {
    NeedMore,
    Wrong(Bytes),
    Right,
}

/// PostgreSQL's first checks of a Bind (its parameter formats against its parameters, those
/// against the statement's `wanted`), on a Bind `body` whose names end at `names_end`.
fn miscounted(body: &[u8], names_end: usize, wanted: Option<usize>, name: &[u8]) -> Counted {
    let count = |at: usize| {
        body.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    };
    let Some(formats) = count(names_end) else {
        return Counted::NeedMore;
    };
    let Some(params) = count(names_end + 2 + 2 * formats) else {
        return Counted::NeedMore;
    };
    let m = if formats > 1 && formats != params {
        format!("bind message has {formats} parameter formats but {params} parameters")
    } else if wanted.is_some_and(|w| w != params) {
        format!(
            "bind message supplies {params} parameters, but prepared statement \"{}\" requires {}",
            String::from_utf8_lossy(name),
            wanted.unwrap_or_default()
        )
    } else {
        return Counted::Right;
    };
    Counted::Wrong(error("08P01", &m))
}
