//! One direction of the relay: bytes read from one socket on their way to the other. Messages
//! that pass unchanged are written from the buffer they were read into (`ready` bytes at its
//! front); messages rotagate writes, rewrites or injects go into `built`, which is always
//! written first. Rewriting a message therefore first moves the ready bytes before it into
//! `built` (a short copy), so order is kept without a second write. [`walk`] drives a
//! [`Policy`] over the messages of a direction, however the bytes were cut into reads.

use crate::wire::WireError;
use crate::wire::scan::{self, Header};
use bytes::{Buf, BytesMut};

/// Ready bytes up to this size are copied into `built` to make room for a rewritten message;
/// above it the relay writes them out first.
pub const COPY_LIMIT: usize = 16 * 1024;

/// What rotagate reads of a server error before deciding on it: its severity, code and the
/// start of its message; the rest of a larger one streams through unread.
pub const ERROR_HEAD: usize = 64 * 1024;

/// A server message's body as far as [`Policy::need`] asked for it: whole, or an error's head
/// (empty when it was not asked for and did not all come).
pub fn head_or_whole(h: Header, msg: &[u8]) -> &[u8] {
    match msg.get(crate::wire::HEADER_LEN..) {
        Some(body) if msg.len() == h.total() => body,
        Some(body) if h.tag == b'E' && msg.len() >= ERROR_HEAD => body,
        _ => &[][..],
    }
}

/// How much of a message's body a decision needs before it is made.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Need {
    Nothing,
    Whole,
    /// Bind: the portal and statement names at its start.
    Names,
    /// The first this many bytes (the whole message when it is shorter); the rest streams
    /// through, so a huge message is never held whole.
    Head(usize),
}

/// What becomes of one message. Bytes to send instead of or before it are in the scratch
/// buffer the policy was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Pass,
    /// Send the scratch bytes instead (none: drop it).
    Replace,
    /// Send the scratch bytes, then the message.
    Inject,
    /// Send the scratch bytes instead of the first `n` bytes; the rest passes.
    RewriteHead(usize),
    /// More of the message is needed first (the names at the start of a Bind).
    NeedMore,
    /// Stop before this message (Terminate, or the session is ending).
    Stop,
    /// Send the scratch bytes and stop before this message: it is decided again once the
    /// replies it waits for have come.
    Hold,
    /// Send the message (whole: a Sync), then the scratch bytes.
    Append,
}

/// Decides on the messages of one direction.
pub trait Policy {
    fn need(&self, tag: u8) -> Need;
    /// `msg` is the message from its header on: whole when [`Policy::need`] said so, else as
    /// much as has arrived (`h.total()` in all).
    fn decide(&mut self, h: Header, msg: &[u8], out: &mut BytesMut) -> Decision;
}

/// Decides once on every message of `src` not decided yet whose needed bytes are there, and
/// queues the result on `lane`. Returns how many more bytes the message at the front needs
/// (0: none, or unknown).
pub fn walk(
    src: &mut BytesMut,
    lane: &mut Lane,
    max: usize,
    scratch: &mut BytesMut,
    policy: &mut impl Policy,
) -> Result<usize, WireError> {
    loop {
        if !lane.settle(src) {
            return Ok(0);
        }
        let avail = &src[lane.ready..];
        let Some(h) = scan::header(avail, max)? else {
            return Ok(0);
        };
        let need = policy.need(h.tag);
        if need != Need::Nothing && !lane.can_rewrite() {
            return Ok(0);
        }
        let (total, have) = (h.total(), avail.len().min(h.total()));
        let want = match need {
            Need::Whole => total,
            Need::Head(n) => total.min(n),
            Need::Nothing | Need::Names => 0,
        };
        if have < want {
            return Ok(want - have);
        }
        scratch.clear();
        match policy.decide(h, &avail[..have], scratch) {
            Decision::Pass => lane.pass(src, total),
            Decision::Replace => lane.replace(src, scratch, total),
            Decision::Inject => lane.inject(src, scratch, total),
            Decision::RewriteHead(n) => lane.rewrite_head(src, n, scratch, total),
            Decision::NeedMore => return Ok((total - have).min(4096)),
            Decision::Stop => return Ok(0),
            Decision::Hold => {
                lane.append(src, scratch);
                return Ok(0);
            }
            Decision::Append => {
                lane.pass(src, total);
                lane.append(src, scratch);
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Lane {
    /// Bytes rotagate wrote; they go out before `ready`.
    pub built: BytesMut,
    /// Bytes at the front of the source buffer that go out as they are.
    pub ready: usize,
    /// Body bytes of the current message still to pass in place.
    pub body: usize,
    /// Bytes of the current message still to drop from the source.
    pub drop: usize,
}

impl Lane {
    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.built.len() + self.ready
    }

    /// No partly passed or dropped message: the next byte of the source starts a message.
    pub fn at_boundary(&self) -> bool {
        self.body == 0 && self.drop == 0
    }

    /// Passes or drops what is already decided of the current message, as far as `src` holds
    /// it. True when the next message's header is next.
    pub fn settle(&mut self, src: &mut BytesMut) -> bool {
        if self.body > 0 {
            let n = self.body.min(src.len() - self.ready);
            self.ready += n;
            self.body -= n;
        }
        if self.drop > 0 && self.ready == 0 {
            let n = self.drop.min(src.len());
            src.advance(n);
            self.drop -= n;
        }
        self.at_boundary()
    }

    /// Whether a message at `ready` may be rewritten now: the ready bytes before it are few
    /// enough to copy.
    pub fn can_rewrite(&self) -> bool {
        self.ready <= COPY_LIMIT
    }

    /// Moves the ready bytes into `built`, so that what comes next in `src` is at its front.
    fn clear_ready(&mut self, src: &mut BytesMut) {
        if self.ready > 0 {
            self.built.extend_from_slice(&src[..self.ready]);
            src.advance(self.ready);
            self.ready = 0;
        }
    }

    /// The message at the front of the unforwarded bytes (`len` bytes long) passes as it is.
    pub fn pass(&mut self, src: &BytesMut, len: usize) {
        let here = len.min(src.len() - self.ready);
        self.ready += here;
        self.body = len - here;
    }

    /// Writes `bytes` before the message at the front, which then passes as it is.
    pub fn inject(&mut self, src: &mut BytesMut, bytes: &[u8], len: usize) {
        self.clear_ready(src);
        self.built.extend_from_slice(bytes);
        self.pass(src, len);
    }

    /// Replaces the first `head` bytes of the message at the front (`len` long) with `bytes`;
    /// the rest of it passes. `head` bytes must be in `src`.
    pub fn rewrite_head(&mut self, src: &mut BytesMut, head: usize, bytes: &[u8], len: usize) {
        self.clear_ready(src);
        src.advance(head);
        self.built.extend_from_slice(bytes);
        self.pass(src, len - head);
    }

    /// Drops the message at the front (`len` long), with `bytes` written in its place.
    pub fn replace(&mut self, src: &mut BytesMut, bytes: &[u8], len: usize) {
        self.clear_ready(src);
        self.built.extend_from_slice(bytes);
        let here = len.min(src.len());
        src.advance(here);
        self.drop = len - here;
    }

    /// Writes `bytes` after everything queued so far.
    pub fn append(&mut self, src: &mut BytesMut, bytes: &[u8]) {
        self.clear_ready(src);
        self.built.extend_from_slice(bytes);
    }

    /// `n` bytes were written: they came from `built` first, then from the front of `src`.
    pub fn wrote(&mut self, src: &mut BytesMut, n: usize) {
        let from_built = n.min(self.built.len());
        self.built.advance(from_built);
        let rest = n - from_built;
        if rest > 0 {
            src.advance(rest);
            self.ready -= rest;
        }
        if self.built.is_empty() && self.built.capacity() > COPY_LIMIT * 4 {
            self.built = BytesMut::new();
        }
    }

    /// Forgets everything queued (its destination is gone); returns the body bytes of a
    /// partly passed message still to come from the source, which the caller must drop.
    pub fn abandon(&mut self, src: &mut BytesMut) -> usize {
        self.built.clear();
        src.advance(self.ready);
        self.ready = 0;
        let rest = self.body + self.drop;
        self.body = 0;
        self.drop = 0;
        rest
    }

    /// The two slices to write, in order.
    pub fn slices<'a>(&'a self, src: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        (&self.built, &src[..self.ready])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(lane: &mut Lane, src: &mut BytesMut) -> Vec<u8> {
        let (a, b) = lane.slices(src);
        let v = [a, b].concat();
        let n = v.len();
        lane.wrote(src, n);
        v
    }

    #[test]
    fn rewrites_keep_order_with_one_write() {
        let mut src = BytesMut::from(&b"aaaBBBcc"[..]);
        let mut lane = Lane::default();
        lane.pass(&src, 3);
        lane.replace(&mut src, b"XY", 3);
        lane.pass(&src, 2);
        assert_eq!(out(&mut lane, &mut src), b"aaaXYcc");
        assert!(src.is_empty());
    }

    #[test]
    fn partial_messages_pass_and_drop_as_bytes_arrive() {
        let mut src = BytesMut::from(&b"hhhb"[..]);
        let mut lane = Lane::default();
        lane.rewrite_head(&mut src, 3, b"HH", 6);
        assert_eq!(lane.body, 2);
        assert!(!lane.settle(&mut src));
        assert_eq!(out(&mut lane, &mut src), b"HHb");
        src.extend_from_slice(b"bbNEXT");
        assert!(lane.settle(&mut src));
        assert_eq!(lane.ready, 2);
        lane.replace(&mut src, b"!", 10);
        assert_eq!(lane.drop, 6);
        src.extend_from_slice(b"0123456789");
        assert!(lane.settle(&mut src));
        assert_eq!(&src[..], b"6789");
        assert_eq!(out(&mut lane, &mut src), b"bb!");
    }
}
