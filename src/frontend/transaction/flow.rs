//! Protocol state: what a client keeps for its whole session ([`ClientState`]), and where the
//! protocol stands while it holds an upstream connection ([`Flow`]).

use super::allowlist::Names;
use super::pins::Pins;
use super::replies::Replies;
use super::settings::Settings;
use super::statements::{Desc, Statement, Statements};
use crate::frontend::relay::Signals;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;

/// What executing a statement does to prepared statements, known when it is parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acts {
    /// `DEALLOCATE name` of this client statement.
    Deallocate(Vec<u8>),
    /// DEALLOCATE ALL, or DISCARD ALL (which also unpins).
    DropsAll { discard_all: bool },
}

impl Acts {
    /// What executing a statement of this class does to prepared statements.
    pub fn of(class: &super::classify::Class) -> Option<Acts> {
        use super::classify::Sole;
        match &class.sole {
            Some(Sole::Deallocate(name)) => Some(Acts::Deallocate(name.clone())),
            Some(Sole::DiscardAll) => Some(Acts::DropsAll { discard_all: true }),
            _ if class.drops_statements => Some(Acts::DropsAll { discard_all: false }),
            _ => None,
        }
    }
}

/// What a client keeps between transactions.
#[derive(Debug, Default)]
pub struct ClientState {
    /// Tells this client's unnamed statement from other clients' on a shared connection.
    pub id: u64,
    /// Names the client in log lines: `user@peer`.
    pub who: String,
    pub settings: Settings,
    pub statements: Statements,
    /// The client's unnamed statement, as the server has confirmed it.
    pub unnamed: Option<Unnamed>,
    /// Numbers the client's unnamed Parses.
    pub serials: u64,
    pub pins: Pins,
    /// The last plain statement text, to skip classifying it again.
    pub recent: super::classify::Recent,
    /// The database's functions that share a built-in's name (see `allowlist.rs`).
    pub shadowed: Option<std::sync::Arc<super::allowlist::Shadowed>>,
    /// What the client's unnamed statement does to prepared statements when executed.
    pub unnamed_acts: Option<Acts>,
    /// An error owed for the client's next request: its transaction ended with the upstream
    /// connection (the server terminated it, or a cancel ended its wait).
    pub failure: Option<Bytes>,
    /// Extended-protocol messages are dropped until the next Sync, which gets ReadyForQuery:
    /// what the server does after an error, done by rotagate when no server is attached.
    pub skip_until_sync: bool,
    /// The body of a message the client was sending when its upstream connection went, still
    /// to be dropped.
    pub drop_left: usize,
}

/// Where this client's unqualified calls go: its search_path, and the database's functions
/// that share a built-in's name.
pub fn names(settings: &Settings, shadowed: Option<&super::allowlist::Shadowed>) -> Names {
    Names {
        catalog_first: settings.builtins(),
        shadowed: shadowed.map(|s| s.load()).unwrap_or_default(),
    }
}

/// Where the protocol stands while a client holds an upstream connection.
#[derive(Debug, Default)]
pub struct Flow {
    /// The replies owed, in order.
    pub replies: Replies,
    /// Extended-protocol messages sent since the last Sync.
    pub unsynced: bool,
    /// The server skips messages until the next Sync: an error came before one was sent.
    pub skipping: bool,
    /// Settings may have changed: read them back when the transaction ends.
    pub reread: bool,
    /// What the relay reads: Terminate, a FATAL error, 25006, doubt about the connection.
    pub signals: Signals,
    /// The portal just bound drops every prepared statement when executed (true: DISCARD ALL).
    pub portal_drops: Option<bool>,
    /// The server sent a message rotagate cannot place.
    pub protocol: Option<&'static str>,
    /// Sync points (Sync, Query, FunctionCall) decided so far.
    pub segment: u32,
    /// An Execute was decided since the last Sync point: a portal may be suspended, and a
    /// Parse the client sends now is one PostgreSQL runs between portal executions.
    pub executed: bool,
    /// Statements prepared upstream for the client in this hand-over, by statement.
    pub fresh: Vec<(Arc<Statement>, Arc<str>)>,
    /// Upstream names that stand for a client's name in this hand-over's error messages.
    pub aliases: Vec<(Arc<str>, Box<[u8]>)>,
    /// Describes whose replies are captured, in order.
    pub captures: VecDeque<Capture>,
    /// The ParameterDescription of the capture at the front, until its RowDescription comes.
    pub capture_params: Vec<u8>,
    /// The error of rotagate's own quiet Parse that failed, for the Query it was made for.
    pub quiet_error: Option<Bytes>,
    /// The client's messages wait (the message at the front is decided again once it ends).
    pub hold: Option<Hold>,
    /// A hold ended: the client's messages may be walked again.
    pub resumed: bool,
    /// What the messages decided so far do to the client's unnamed statement.
    pub unnamed_spec: Spec,
    /// Parses and Queries decided whose effect on the unnamed statement is not confirmed yet.
    pub unnamed_unconfirmed: u32,
    /// The unnamed Parses among them, in order.
    pub unnamed_parses: VecDeque<PendingUnnamed>,
    /// The shared statement serving the unnamed statement parsed in this run of messages.
    pub mapped: Option<Arc<str>>,
    /// The message being decided opens a request: nothing is owed and nothing unsynced.
    pub opening: bool,
    /// The request a shared statement serves, while it may still be retried.
    pub replay: Option<Replay>,
    /// Its bytes, to be decided again (the shared statement was stale).
    pub retry: Option<Bytes>,
    /// Deciding a request again: its Parse's reply went to the client already.
    pub replaying: bool,
    /// Nothing of the client's waits to be written upstream: a retry can go in front.
    pub can_retry: bool,
    /// The ParameterDescription of a client's Describe of a shared statement came (and is
    /// held in `capture_params`): an error now follows it, as PostgreSQL sends both.
    pub shared_params: bool,
}

impl Flow {
    /// A Query (or a reply rotagate gives to one) drops the unnamed statement.
    pub fn unnamed_dropped(&mut self) {
        self.unnamed_spec = Spec::Dropped;
        self.mapped = None;
        self.unnamed_unconfirmed += 1;
    }

    /// Fresh for the next attachment, in place: the queues keep their memory, and nothing is
    /// built or dropped whole (this runs once per transaction). Every field is named, so a new
    /// one cannot be forgotten.
    pub fn reset(&mut self) {
        let Flow {
            replies,
            unsynced,
            skipping,
            reread,
            signals,
            portal_drops,
            protocol,
            segment,
            executed,
            fresh,
            aliases,
            captures,
            capture_params,
            quiet_error,
            hold,
            resumed,
            unnamed_spec,
            unnamed_unconfirmed,
            unnamed_parses,
            mapped,
            opening,
            replay,
            retry,
            replaying,
            can_retry,
            shared_params,
        } = self;
        // Usually empty already (a transaction ends with nothing owed): no drop loops then.
        if !replies.is_empty() {
            replies.clear();
        }
        if !fresh.is_empty() {
            fresh.clear();
        }
        if !aliases.is_empty() {
            aliases.clear();
        }
        if !captures.is_empty() {
            captures.clear();
        }
        capture_params.clear();
        if !unnamed_parses.is_empty() {
            unnamed_parses.clear();
        }
        if signals.fatal.is_some() || signals.terminate || signals.read_only || signals.unsure {
            *signals = Signals::default();
        }
        (*unsynced, *skipping, *reread, *resumed) = (false, false, false, false);
        (*portal_drops, *protocol, *quiet_error, *hold) = (None, None, None, None);
        (*segment, *unnamed_unconfirmed) = (0, 0);
        *executed = false;
        *unnamed_spec = Spec::Untouched;
        (*mapped, *replay, *retry) = (None, None, None);
        (*opening, *replaying, *can_retry, *shared_params) = (false, false, false, false);
    }

    /// A Sync, Query or FunctionCall was decided.
    pub fn next_segment(&mut self) {
        self.segment += 1;
        self.executed = false;
    }

    /// Nothing owed either way and no extended-protocol message waits for its Sync.
    pub fn settled(&self) -> bool {
        self.replies.is_empty() && !self.unsynced && !self.skipping
    }

    /// The upstream name of a statement prepared for the client in this hand-over.
    pub fn fresh_name(&self, stmt: &Arc<Statement>) -> Option<Arc<str>> {
        self.fresh
            .iter()
            .rev()
            .find(|(s, _)| Arc::ptr_eq(s, stmt))
            .map(|(_, n)| n.clone())
    }
}

/// What the replies of a captured Describe are for.
#[derive(Debug)]
pub enum Capture {
    /// A client's new statement: its description, and its connection's index.
    Learn {
        stmt: Arc<Statement>,
        upstream: Arc<str>,
        /// A message waits for it ([`Hold::Check`]): its outcome is the verdict.
        held: bool,
    },
    /// A Describe of the connection's unnamed statement, which may be the client's.
    LearnUnnamed,
    /// A client's Describe of a shared statement: its replies go to the client together, once
    /// the statement proved not stale (`shared.rs`).
    Shared,
    /// A statement prepared again for a client (None: its unnamed statement).
    Check {
        stmt: Arc<Statement>,
        upstream: Option<Arc<str>>,
        want: Box<Desc>,
    },
}

/// Why the client's messages wait.
#[derive(Debug)]
pub enum Hold {
    /// For the description of a statement prepared again (`upstream`: its name there, when
    /// it is not the client's unnamed statement).
    Check {
        verdict: Option<Verdict>,
        upstream: Option<Arc<str>>,
    },
    /// For the server to confirm what earlier messages did to the unnamed statement.
    Unnamed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Described as the client's statement was: it is the client's.
    Same,
    /// The same result, other parameter types (a type the client's statement takes was
    /// dropped and made again: PostgreSQL does not revalidate such a statement, so a Describe
    /// of it still answers as it did).
    Params,
    /// Described otherwise: the client's statement would fail revalidation.
    Changed,
    /// Its Parse or Describe failed or was skipped (the server now skips to Sync).
    Failed,
}

/// A client's unnamed statement, as the server confirmed it.
#[derive(Debug, Clone)]
pub struct Unnamed {
    pub stmt: Arc<Statement>,
    /// Which of the client's Parses made it.
    pub serial: u64,
    /// What the server described, when the client described it.
    pub desc: Option<Desc>,
    /// The statement prepared for it on the connection where it was parsed, when that Parse
    /// was served by one (`pool.prepare_unnamed`, `shared.rs`).
    pub upstream: Option<Arc<str>>,
}

impl Unnamed {
    /// What the server described for it: from the client's Describe, or the shared
    /// statement's.
    pub fn described(&self) -> Option<&Desc> {
        self.desc.as_ref().or_else(|| self.stmt.desc.get())
    }
}

/// An unnamed Parse sent upstream whose reply has not come.
#[derive(Debug)]
pub struct PendingUnnamed {
    pub stmt: Arc<Statement>,
    pub serial: u64,
    /// rotagate's own Parse of the client's statement again (not a new statement).
    pub again: bool,
    /// The shared statement that serves it (`pool.prepare_unnamed`).
    pub shared: Option<Arc<str>>,
}

/// The client's messages of a request that a shared statement serves, kept so that the
/// request can be decided again if that statement turns out stale (`shared.rs`).
#[derive(Debug, Default)]
pub struct Replay {
    pub bytes: Vec<u8>,
    /// Its Sync is in.
    pub complete: bool,
}

/// What the messages decided in this hand-over do to the unnamed statement, if they all run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    #[default]
    Untouched,
    /// Parsed (by the client, or again by rotagate) in this run of messages up to a Sync.
    Parsed(u32),
    /// Dropped by a Query or closed.
    Dropped,
}
