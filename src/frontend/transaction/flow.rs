//! Protocol state: what a client keeps for its whole session ([`ClientState`]), and where the
//! protocol stands while it holds an upstream connection ([`Flow`]).

use super::pins::Pins;
use super::replies::Replies;
use super::settings::Settings;
use super::statements::Statements;
use crate::frontend::relay::Signals;
use bytes::Bytes;

/// What executing a statement does to prepared statements, known when it is parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acts {
    /// `DEALLOCATE name` of this client statement.
    Deallocate(Vec<u8>),
    /// DEALLOCATE ALL, or DISCARD ALL (which also unpins).
    DropsAll { discard_all: bool },
}

/// What a client keeps between transactions.
#[derive(Debug, Default)]
pub struct ClientState {
    /// Names the client in log lines: `user@peer`.
    pub who: String,
    pub settings: Settings,
    pub statements: Statements,
    pub pins: Pins,
    /// The last plain statement text, to skip classifying it again.
    pub recent: super::classify::Recent,
    /// What the client's unnamed statement does to prepared statements when executed.
    pub unnamed: Option<Acts>,
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
}

impl Flow {
    /// Fresh for the next attachment; the reply queue keeps its memory.
    pub fn reset(&mut self) {
        let mut replies = std::mem::take(&mut self.replies);
        replies.clear();
        *self = Flow {
            replies,
            ..Flow::default()
        };
    }

    /// Nothing owed either way and no extended-protocol message waits for its Sync.
    pub fn settled(&self) -> bool {
        self.replies.is_empty() && !self.unsynced && !self.skipping
    }
}
