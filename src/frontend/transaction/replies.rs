//! The replies a client is owed while it holds an upstream connection (transaction mode), in
//! the order the server sends them. Each message sent upstream that the server answers has an
//! [`Entry`]; so does each reply rotagate gives itself (`Local`), kept in line so that it goes
//! out in order. Entries say whether the client sees the reply (an injected Parse's does not),
//! whether rotagate's error replaces the server's (a statement refused on purpose), and what to
//! undo when the server skips or fails the message.

use super::statements::{Statement, Statements};
use crate::backend::prepared::{Slot, Taken};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;

/// What the server sends for one message, up to the reply that completes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// ParseComplete.
    Parse,
    /// BindComplete.
    Bind,
    /// ParameterDescription, then RowDescription or NoData.
    DescribeStatement,
    /// RowDescription or NoData.
    DescribePortal,
    /// DataRows (or COPY), then CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    /// CloseComplete.
    Close,
    /// ReadyForQuery.
    Sync,
    /// A simple Query or a FunctionCall: anything, up to ReadyForQuery.
    Query,
    /// A Query rotagate sends in place of the client's: its replies but errors are hidden,
    /// and the client gets this CommandComplete tag before the ReadyForQuery.
    Tagged(&'static str),
    /// Nothing: rotagate answers when this entry reaches the front.
    Local(Local),
}

impl Expect {
    pub fn is_sync_point(self) -> bool {
        matches!(self, Expect::Query | Expect::Sync | Expect::Tagged(_))
    }
}

/// A reply rotagate gives without the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    ParseComplete,
    /// ParseComplete for a Parse a shared statement serves: it waits for the reply to the
    /// next message (`shared.rs`), unless nothing follows it.
    SharedParse,
    CloseComplete,
    /// The bytes kept as the entry's refusal (a Describe rotagate answers itself).
    Bytes,
    /// CommandComplete `DEALLOCATE` (or `DEALLOCATE ALL`) and ReadyForQuery.
    Deallocate {
        all: bool,
    },
}

/// What an entry changed ahead of its reply, undone if the server fails or skips it, or what
/// its success changes.
#[derive(Debug, Default)]
pub enum Effect {
    #[default]
    None,
    /// A Parse of an upstream statement (injected, or a client's renamed one, then with the
    /// client's name): on failure the connection lacks it and the client name is gone.
    Prepare {
        upstream: Arc<str>,
        client: Option<Box<[u8]>>,
    },
    /// An injected Close: the connection still has the statement if it is skipped.
    Unprepare(Arc<str>, Slot),
    /// A client's Close of a statement: the name comes back if the Close is skipped.
    ClientClose(Box<[u8]>, Arc<Statement>),
    /// A DEALLOCATE rotagate answered: the names come back if it fails.
    Deallocate(Box<Statements>),
    /// A statement that drops every prepared statement (DISCARD ALL, DEALLOCATE ALL): the
    /// client's names and the connection's statements were taken when it was sent, and come
    /// back if it fails. When it was not the sole statement of its Query and failed, what ran
    /// is unknown. DISCARD ALL's success unpins the client.
    Drops {
        client: Box<Statements>,
        upstream: Box<Taken>,
        discard_all: bool,
        sole: bool,
    },
}

/// What an entry does to state kept beside the queue, in the queue's order: the client's
/// unnamed statement (each Query drops it) and the descriptions
/// captured from hidden Describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    None,
    /// The client's Parse of its unnamed statement (`Flow::unnamed_parses` holds it).
    UnnamedParse,
    /// rotagate's Parse of the client's unnamed statement again, on a connection another
    /// client's unnamed statement had replaced it on.
    UnnamedReparse,
    /// Something the server runs as a simple Query: it drops the unnamed statement.
    UnnamedDrop,
    /// The client's Close of its unnamed statement (answered by rotagate).
    UnnamedClose,
    /// A Describe whose replies are captured (`Flow::captures` holds what for).
    Capture,
    /// A Describe whose ParameterDescription the client sees and whose row description it
    /// does not (`checks::stale`).
    Probe,
}

/// How the server dealt with the message an entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// It failed with an ErrorResponse (a Query or Sync that failed still ran).
    Failed,
    /// The server skipped it after an earlier error.
    Skipped,
}

/// One reply owed. Small (most entries need neither a refusal nor an effect), since one is
/// queued for nearly every message.
#[derive(Debug)]
pub struct Entry {
    pub expect: Expect,
    /// The client must not see the reply (an injected Parse or Close).
    pub hidden: bool,
    /// Not even an error from it: rotagate's own Parse, Close or Sync around a Query.
    pub quiet: bool,
    /// An ErrorResponse came for this Query (it goes on to ReadyForQuery).
    pub failed: bool,
    /// The error came after rotagate's statement ran, from the commit of the implicit
    /// transaction it ended (a deferred constraint, a serialization failure): what it did
    /// outside the transaction (a DEALLOCATE) stays, as directly.
    pub ran: bool,
    pub note: Note,
    extra: Option<Box<Extra>>,
}

#[derive(Debug, Default)]
struct Extra {
    refusal: Option<Bytes>,
    effect: Effect,
    /// The client's name of the statement a Bind went to, when its errors must name that one
    /// (the client has several names for the same statement).
    named: Option<Box<[u8]>>,
    /// The shared statement a Bind or Describe of the client's unnamed statement went to
    /// (`pool.prepare_unnamed`).
    shared: Option<Arc<str>>,
}

impl Entry {
    pub fn new(expect: Expect) -> Self {
        Self {
            expect,
            hidden: false,
            quiet: false,
            failed: false,
            ran: false,
            note: Note::None,
            extra: None,
        }
    }

    pub fn hidden(mut self) -> Self {
        self.hidden = true;
        self
    }

    /// Hidden, errors included.
    pub fn quiet(mut self) -> Self {
        self.hidden = true;
        self.quiet = true;
        self
    }

    pub fn note(mut self, note: Note) -> Self {
        self.note = note;
        self
    }

    pub fn effect(mut self, effect: Effect) -> Self {
        if !matches!(effect, Effect::None) {
            self.extra.get_or_insert_with(Default::default).effect = effect;
        }
        self
    }

    pub fn refused(mut self, error: Bytes) -> Self {
        self.extra.get_or_insert_with(Default::default).refusal = Some(error);
        self
    }

    pub fn named(mut self, name: &[u8]) -> Self {
        self.extra.get_or_insert_with(Default::default).named = Some(name.into());
        self
    }

    /// Sent to `upstream`, a shared statement standing for the client's unnamed one.
    pub fn shared(mut self, upstream: Arc<str>) -> Self {
        self.extra.get_or_insert_with(Default::default).shared = Some(upstream);
        self
    }

    /// The shared statement that [`Entry::shared`] set.
    pub fn shared_name(&self) -> Option<&Arc<str>> {
        self.extra.as_ref().and_then(|x| x.shared.as_ref())
    }

    /// The client's name that [`Entry::named`] set.
    pub fn client_name(&self) -> Option<&[u8]> {
        self.extra.as_ref().and_then(|x| x.named.as_deref())
    }

    /// rotagate's ErrorResponse, sent instead of the server's.
    pub fn refusal(&self) -> Option<&Bytes> {
        self.extra.as_ref().and_then(|x| x.refusal.as_ref())
    }

    pub fn has_effect(&self) -> bool {
        self.extra.is_some()
    }

    /// What the entry changed ahead of its reply, in place.
    pub fn effect_ref(&self) -> Option<&Effect> {
        self.extra.as_ref().map(|x| &x.effect)
    }

    /// What the entry changed ahead of its reply.
    pub fn into_effect(self) -> Effect {
        self.extra.map(|x| x.effect).unwrap_or_default()
    }
}

/// The entries of one attachment, front first.
#[derive(Debug, Default)]
pub struct Replies {
    entries: VecDeque<Entry>,
}

impl Replies {
    pub fn push(&mut self, e: Entry) {
        self.entries.push_back(e);
    }

    pub fn front(&self) -> Option<&Entry> {
        self.entries.front()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    pub fn front_mut(&mut self) -> Option<&mut Entry> {
        self.entries.front_mut()
    }

    pub fn last(&self) -> Option<&Entry> {
        self.entries.back()
    }

    pub fn last_mut(&mut self) -> Option<&mut Entry> {
        self.entries.back_mut()
    }

    pub fn pop(&mut self) -> Option<Entry> {
        self.entries.pop_front()
    }

    pub fn pop_back(&mut self) -> Option<Entry> {
        self.entries.pop_back()
    }

    pub fn push_front(&mut self, e: Entry) {
        self.entries.push_front(e);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether a Sync (or Query) is queued: after an error, the server skips up to it.
    pub fn has_sync_point(&self) -> bool {
        self.entries.iter().any(|e| e.expect.is_sync_point())
    }

    /// Removes the entries the server skips after an error, up to the next Sync, front first.
    /// A simple Query (or FunctionCall) sent before that Sync is ignored too.
    pub fn pop_skipped(&mut self) -> Option<Entry> {
        match self.entries.front() {
            Some(e) if e.expect != Expect::Sync => self.entries.pop_front(),
            _ => None,
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Drains every entry (the connection is gone).
    pub fn drain(&mut self) -> std::collections::vec_deque::Drain<'_, Entry> {
        self.entries.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_skips_to_the_sync() {
        let mut r = Replies::default();
        for e in [
            Expect::Bind,
            Expect::Local(Local::CloseComplete),
            Expect::Execute,
            Expect::Sync,
        ] {
            r.push(Entry::new(e));
        }
        assert!(r.has_sync_point());
        let mut skipped = 0;
        while r.pop_skipped().is_some() {
            skipped += 1;
        }
        assert_eq!(skipped, 3);
        assert_eq!(r.front().map(|e| e.expect), Some(Expect::Sync));
        assert!(Expect::Query.is_sync_point() && Expect::Sync.is_sync_point());
    }
}
