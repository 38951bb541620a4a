//! Transaction mode's [`Protocol`]: each client message goes to [`outgoing`], each server
//! message to [`incoming`], and the replies rotagate owes itself are written in their turn.

use super::flow::{ClientState, Flow};
use super::incoming::{self, Out, Rx};
use super::outgoing::{self, Tx};
use crate::backend::prepared::{Known, Prepared};
use crate::backend::{ServerConn, ServerParams};
use crate::config::PoolConfig;
use crate::frontend::error::FrontendError;
use crate::frontend::relay::lane::{Decision, Need, Policy, head_or_whole, walk};
use crate::frontend::relay::side::ClientSide;
use crate::frontend::relay::{Protocol, Signals};
use crate::wire::scan::Header;
use bytes::BytesMut;

/// The largest message rotagate accepts from the upstream server.
pub const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// What transaction mode's decisions read and change while a client holds a connection.
pub struct Transaction<'a> {
    pub state: &'a mut ClientState,
    pub flow: &'a mut Flow,
    pub cfg: &'a PoolConfig,
    pub max_client_message: usize,
    pub transactions: &'a metrics::Counter,
    pub known: &'a Known,
}

impl Protocol for Transaction<'_> {
    fn client(&mut self, c: &mut ClientSide, s: &mut ServerConn) -> Result<usize, FrontendError> {
        let mut policy = ClientPolicy {
            status: s.tx_status,
            client: self.state,
            prepared: &mut s.prepared,
            flow: self.flow,
            cfg: self.cfg,
        };
        Ok(walk(
            &mut c.buf,
            &mut c.up,
            self.max_client_message,
            &mut c.scratch,
            &mut policy,
        )?)
    }

    fn server(&mut self, c: &mut ClientSide, s: &mut ServerConn) -> Result<usize, FrontendError> {
        let mut policy = ServerPolicy {
            rx: Rx {
                client: self.state,
                prepared: &mut s.prepared,
                flow: self.flow,
                tx_status: &mut s.tx_status,
                known: self.known,
            },
            params: &mut s.params,
            transactions: self.transactions,
        };
        // A retry goes in front of the client's bytes not decided yet.
        policy.rx.flow.can_retry = c.up.ready == 0 && c.up.at_boundary();
        // Replies rotagate owes with no server message to follow (a DEALLOCATE it answered),
        // before the server's messages and after the last of them.
        if !owed_locals(&mut policy, c, &mut s.rbuf) {
            return Ok(0);
        }
        let walked = walk(
            &mut s.rbuf,
            &mut c.down,
            MAX_SERVER_MESSAGE,
            &mut c.scratch,
            &mut policy,
        );
        if c.down.at_boundary() {
            owed_locals(&mut policy, c, &mut s.rbuf);
        }
        s.kept
            .set(s.tx_status != b'I' || self.state.pins.is_pinned());
        if let Some(retry) = self.flow.retry.take() {
            retry_request(c, retry);
            self.flow.resumed = true;
        }
        if let Some(why) = self.flow.protocol {
            return Err(FrontendError::ServerProtocol(why.to_owned()));
        }
        walked.map_err(|e| FrontendError::ServerProtocol(e.to_string()))
    }

    fn signals(&self) -> &Signals {
        &self.flow.signals
    }

    fn settled(&self) -> bool {
        self.flow.settled()
    }

    fn owed(&self) -> bool {
        !self.flow.replies.is_empty()
    }

    fn releases(&self) -> bool {
        !self.state.pins.is_pinned()
    }

    fn pinned(&self) -> bool {
        self.state.pins.is_pinned()
    }

    fn resume(&mut self) -> bool {
        std::mem::take(&mut self.flow.resumed)
    }
}

/// Puts a request to decide again in front of the client's bytes not decided yet.
fn retry_request(c: &mut ClientSide, request: bytes::Bytes) {
    if c.buf.is_empty() {
        c.buf.extend_from_slice(&request);
        return;
    }
    let mut buf = BytesMut::with_capacity(request.len() + c.buf.len());
    buf.extend_from_slice(&request);
    buf.extend_from_slice(&c.buf);
    c.buf = buf;
}

/// Writes the replies rotagate owes at the front of the queue; false when they must wait (the
/// bytes before them are too many to copy now).
fn owed_locals(
    policy: &mut ServerPolicy<'_>,
    c: &mut ClientSide,
    rbuf: &mut bytes::BytesMut,
) -> bool {
    // Not in the middle of a message still passing (a CommandComplete whose entry ended
    // before its last bytes came): they are written after it.
    if !policy.owes_locals() || !c.down.at_boundary() {
        return true;
    }
    if !c.down.can_rewrite() {
        return false;
    }
    c.scratch.clear();
    incoming::locals(&mut policy.rx, &mut c.scratch, false);
    c.down.append(rbuf, &c.scratch);
    true
}

/// Client messages, decided by [`outgoing`].
pub struct ClientPolicy<'a> {
    pub status: u8,
    pub client: &'a mut ClientState,
    pub prepared: &'a mut Prepared,
    pub flow: &'a mut Flow,
    pub cfg: &'a PoolConfig,
}

impl Policy for ClientPolicy<'_> {
    fn need(&self, tag: u8) -> Need {
        // A request kept for a retry is kept whole.
        if matches!(tag, b'B' | b'E') && self.flow.replay.is_some() {
            return Need::Whole;
        }
        outgoing::need(tag)
    }

    fn decide(&mut self, h: Header, msg: &[u8], out: &mut BytesMut) -> Decision {
        if self.flow.signals.terminate || h.tag == b'X' {
            self.flow.signals.terminate = true;
            return Decision::Stop;
        }
        let mut tx = Tx {
            status: self.status,
            client: self.client,
            prepared: self.prepared,
            flow: self.flow,
            cfg: self.cfg,
            out,
        };
        outgoing::decide(h.tag, msg, h.total(), &mut tx)
    }
}

/// Server messages, matched against the replies owed by [`incoming`].
pub struct ServerPolicy<'a> {
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

    /// A shared statement's ParseComplete waits at the front.
    fn waits_on_shared(&self) -> bool {
        self.rx.flow.replies.front().map(|e| e.expect)
            == Some(super::replies::Expect::Local(
                super::replies::Local::SharedParse,
            ))
    }

    /// ReadyForQuery counts transactions; ParameterStatus updates the connection's values.
    fn watch(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'Z' if body.first() == Some(&b'I') => self.transactions.increment(1),
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
        match incoming::need(tag, !self.rx.flow.captures.is_empty()) {
            Need::Nothing if self.owes_locals() => Need::Whole,
            need => need,
        }
    }

    fn decide(&mut self, h: Header, msg: &[u8], out: &mut BytesMut) -> Decision {
        if self.rx.flow.signals.fatal.is_some() {
            return Decision::Stop;
        }
        let body = head_or_whole(h, msg);
        if matches!(h.tag, b'Z' | b'S') {
            self.watch(h.tag, body);
        }
        // A shared statement's ParseComplete waiting at the front, set aside while the
        // ParameterDescription of a Describe of it is held (`shared::described`).
        let mut waiting = None;
        if self.owes_locals() {
            // The replies before a waiting ParseComplete first; then this message is the reply
            // to the message after that one (the long run's seed 1031216).
            incoming::locals(&mut self.rx, out, false);
            let shared = self.waits_on_shared();
            // Its first use failed: the request may be decided again.
            if h.tag == b'E' && shared && super::stale::retry(&mut self.rx, body) {
                return Decision::Replace;
            }
            if h.tag == b't' && shared {
                waiting = self.rx.flow.replies.pop();
            } else {
                incoming::locals(&mut self.rx, out, true);
            }
        }
        let owed = !out.is_empty();
        let decided = if super::stale::completes_describe(h.tag, &self.rx) {
            Ok(Out::Replace(super::stale::described(
                h.tag,
                body,
                &mut self.rx,
            )))
        } else {
            incoming::decide(h.tag, body, &mut self.rx)
        };
        if let Some(local) = waiting {
            self.rx.flow.replies.push_front(local);
        }
        match decided {
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

/// A ParameterStatus body's name and value.
pub fn split_param(body: &[u8]) -> Option<(&str, &str)> {
    let mut parts = body.split(|b| *b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name, value))
}
