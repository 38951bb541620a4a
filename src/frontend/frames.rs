//! The policies each direction is walked with ([`super::lane::walk`]). Session mode only
//! counts what is owed (each Query, FunctionCall and Sync owes a ReadyForQuery) and watches
//! ReadyForQuery, ParameterStatus and FATAL errors. Transaction mode hands each message to
//! [`outgoing`] or [`incoming`], and writes the replies rotagate owes itself in their turn.

use super::error::FrontendError;
use super::flow::{ClientState, Flow};
use super::incoming::{self, Out, Rx};
use super::lane::{Decision, Need, Policy, walk};
use super::outgoing::{self, Tx};
use super::relay::{ClientSide, RelayCtx};
use crate::backend::prepared::Prepared;
use crate::backend::{ServerConn, ServerParams};
use crate::config::{PoolConfig, PoolMode};
use crate::wire::scan::Header;
use crate::wire::{HEADER_LEN, msg};
use bytes::BytesMut;

/// The largest message rotagate accepts from the upstream server.
const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// Walks what the client sent; returns how many more bytes the message at the front needs.
pub fn client(
    c: &mut ClientSide,
    s: &mut ServerConn,
    f: &mut Flow,
    ctx: &RelayCtx<'_>,
) -> Result<usize, FrontendError> {
    let mut policy = ClientPolicy {
        tx_mode: ctx.mode == PoolMode::Transaction,
        client: &mut c.state,
        prepared: &mut s.prepared,
        flow: f,
        cfg: ctx.cfg,
    };
    let max = ctx.max_client_message;
    Ok(walk(
        &mut c.buf,
        &mut c.up,
        max,
        &mut c.scratch,
        &mut policy,
    )?)
}

/// Client messages: counted (session mode) or decided by [`outgoing`] (transaction mode).
pub struct ClientPolicy<'a> {
    pub tx_mode: bool,
    pub client: &'a mut ClientState,
    pub prepared: &'a mut Prepared,
    pub flow: &'a mut Flow,
    pub cfg: &'a PoolConfig,
}

impl Policy for ClientPolicy<'_> {
    fn need(&self, tag: u8) -> Need {
        if self.tx_mode {
            outgoing::need(tag)
        } else {
            Need::Nothing
        }
    }

    fn decide(&mut self, h: Header, msg: &[u8], out: &mut BytesMut) -> Decision {
        if self.flow.terminate || h.tag == b'X' {
            self.flow.terminate = true;
            return Decision::Stop;
        }
        if !self.tx_mode {
            session_client(h.tag, self.flow);
            return Decision::Pass;
        }
        let mut tx = Tx {
            client: self.client,
            prepared: self.prepared,
            flow: self.flow,
            cfg: self.cfg,
            out,
        };
        outgoing::decide(h.tag, msg, h.total(), &mut tx)
    }
}

/// Session mode: counts what the message owes.
fn session_client(tag: u8, f: &mut Flow) {
    match tag {
        b'Q' | b'F' => f.pending += 1,
        b'S' => {
            f.pending += 1;
            f.unsynced = false;
        }
        b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => f.unsynced = true,
        _ => {}
    }
}

/// Walks what the server sent; returns how many more bytes the message at the front needs.
pub fn server(
    c: &mut ClientSide,
    s: &mut ServerConn,
    f: &mut Flow,
    ctx: &RelayCtx<'_>,
) -> Result<usize, FrontendError> {
    let tx_mode = ctx.mode == PoolMode::Transaction;
    let mut policy = ServerPolicy {
        tx_mode,
        rx: Rx {
            client: &mut c.state,
            prepared: &mut s.prepared,
            flow: f,
            tx_status: &mut s.tx_status,
            known: ctx.known,
        },
        params: &mut s.params,
        transactions: ctx.transactions,
    };
    // Replies rotagate owes with no server message to follow (a DEALLOCATE it answered).
    if tx_mode && policy.owes_locals() {
        if !c.down.can_rewrite() {
            return Ok(0);
        }
        c.scratch.clear();
        incoming::locals(&mut policy.rx, &mut c.scratch);
        c.down.append(&mut s.rbuf, &c.scratch);
    }
    let walked = walk(
        &mut s.rbuf,
        &mut c.down,
        MAX_SERVER_MESSAGE,
        &mut c.scratch,
        &mut policy,
    );
    if let Some(why) = f.protocol {
        return Err(FrontendError::ServerProtocol(why.to_owned()));
    }
    walked.map_err(|e| FrontendError::ServerProtocol(e.to_string()))
}

/// Server messages: watched (session mode) or matched against the replies owed (transaction
/// mode).
pub struct ServerPolicy<'a> {
    pub tx_mode: bool,
    pub rx: Rx<'a>,
    pub params: &'a mut ServerParams,
    pub transactions: &'a metrics::Counter,
}

impl ServerPolicy<'_> {
    fn owes_locals(&self) -> bool {
        matches!(
            self.rx.flow.replies.front().map(|e| e.expect),
            Some(super::replies::Expect::Local(_))
        )
    }

    /// What every mode watches: ReadyForQuery's status and ParameterStatus.
    fn watch(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'Z' => {
                let status = body.first().copied().unwrap_or(b'E');
                if !self.tx_mode {
                    self.rx.flow.pending = self.rx.flow.pending.saturating_sub(1);
                    *self.rx.tx_status = status;
                }
                if status == b'I' {
                    self.transactions.increment(1);
                }
            }
            b'S' => {
                if let Some((name, value)) = split_param(body) {
                    self.params.report(name, value);
                    self.rx.flow.reread = true;
                }
            }
            _ => {}
        }
    }
}

impl Policy for ServerPolicy<'_> {
    fn need(&self, tag: u8) -> Need {
        let whole = if self.tx_mode {
            incoming::need_whole(tag) || self.owes_locals()
        } else {
            matches!(tag, b'Z' | b'S' | b'E')
        };
        if whole { Need::Whole } else { Need::Nothing }
    }

    fn decide(&mut self, h: Header, msg: &[u8], out: &mut BytesMut) -> Decision {
        if self.rx.flow.fatal.is_some() {
            return Decision::Stop;
        }
        // Whole whenever `need` asked for it (and sometimes when it did not: then unused).
        let body = match msg.get(HEADER_LEN..) {
            Some(body) if msg.len() == h.total() => body,
            _ => &[][..],
        };
        if matches!(h.tag, b'Z' | b'S') {
            self.watch(h.tag, body);
        }
        if !self.tx_mode {
            if h.tag == b'E' && matches!(msg::severity(body), b"FATAL" | b"PANIC") {
                self.rx.flow.fatal = Some(bytes::Bytes::copy_from_slice(body));
            }
            if h.tag == b'E' && msg::code(body) == b"25006" {
                self.rx.flow.read_only = true;
            }
            return Decision::Pass;
        }
        if self.owes_locals() {
            incoming::locals(&mut self.rx, out);
        }
        let owed = !out.is_empty();
        match incoming::decide(h.tag, body, &mut self.rx) {
            Ok(Out::Forward) if owed => Decision::Inject,
            Ok(Out::Forward) => Decision::Pass,
            Ok(Out::Hide) => Decision::Replace,
            Ok(Out::Replace(e)) => {
                out.extend_from_slice(&e);
                Decision::Replace
            }
            // A pinned client's session is the upstream session: it ends as PostgreSQL ends it.
            Ok(Out::Fatal) if self.rx.client.pins.is_pinned() && owed => Decision::Inject,
            Ok(Out::Fatal) if self.rx.client.pins.is_pinned() => Decision::Pass,
            Ok(Out::Fatal) => Decision::Replace,
            Err(why) => {
                self.rx.flow.protocol = Some(why);
                Decision::Stop
            }
        }
    }
}

fn split_param(body: &[u8]) -> Option<(&str, &str)> {
    let mut parts = body.split(|b| *b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name, value))
}
