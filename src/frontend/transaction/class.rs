//! What a statement does to the session, as the classifier (`classify.rs`) tells it.

/// Why a client was pinned to its upstream connection (the `reason` label of
/// `rotagate_pins_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinReason {
    TempTable,
    Listen,
    SqlPrepare,
    WithHold,
    AdvisoryLock,
    Other,
    /// State the check on the server found after a transaction (see `lexed.rs`).
    Detected,
}

impl PinReason {
    pub const ALL: [PinReason; 7] = [
        PinReason::TempTable,
        PinReason::Listen,
        PinReason::SqlPrepare,
        PinReason::WithHold,
        PinReason::AdvisoryLock,
        PinReason::Other,
        PinReason::Detected,
    ];

    pub fn label(self) -> &'static str {
        match self {
            PinReason::TempTable => "temp_table",
            PinReason::Listen => "listen",
            PinReason::SqlPrepare => "sql_prepare",
            PinReason::WithHold => "with_hold",
            PinReason::AdvisoryLock => "advisory_lock",
            PinReason::Other => "other",
            PinReason::Detected => "detected",
        }
    }

    /// The statement, as an operator or a client reads it in a message.
    pub fn statement(self) -> &'static str {
        match self {
            PinReason::TempTable => "a temporary table (CREATE TEMP TABLE)",
            PinReason::Listen => "LISTEN",
            PinReason::SqlPrepare => "SQL PREPARE",
            PinReason::WithHold => "DECLARE ... WITH HOLD",
            PinReason::AdvisoryLock => "a session-level advisory lock",
            PinReason::Other => {
                "session state rotagate cannot carry (LOAD, or set_config with a computed name)"
            }
            PinReason::Detected => "session state found on the server after the transaction",
        }
    }
}

/// A statement that is the whole text and that rotagate answers or watches for itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sole {
    /// `DEALLOCATE [PREPARE] name`, with the name as PostgreSQL folds it.
    Deallocate(Vec<u8>),
    DeallocateAll,
    DiscardAll,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Class {
    /// May change session-level settings: re-read them when the transaction ends.
    pub settings: bool,
    pub pin: Option<PinReason>,
    /// Dotted (custom) setting names it sets or resets; `pg_settings` does not list them.
    pub custom: Vec<String>,
    pub sole: Option<Sole>,
    /// Somewhere it drops every prepared statement (`DEALLOCATE ALL`, `DISCARD ALL`).
    pub drops_statements: bool,
    /// It may read `pg_prepared_statements` (see view.rs).
    pub reads_view: bool,
    /// Not proven plain: read the session on the server at rest, before its connection serves
    /// another client (settings, and the state that cannot be carried).
    pub check: bool,
    /// Proven plain only because unqualified names reach pg_catalog's allowed functions, which
    /// a later search_path or function may change: not remembered as plain.
    pub trusts_names: bool,
}

impl Class {
    /// Nothing to do for this statement.
    pub fn is_plain(&self) -> bool {
        !self.settings
            && self.pin.is_none()
            && self.sole.is_none()
            && !self.drops_statements
            && !self.reads_view
            && !self.check
    }

    /// Plain whatever the names resolve to.
    pub fn always_plain(&self) -> bool {
        self.is_plain() && !self.trusts_names
    }

    /// What either of two readings of one text does (lexed with and without
    /// `standard_conforming_strings`, when the session's value is not certain).
    pub fn merge(&mut self, other: Class) {
        self.settings |= other.settings;
        self.pin = self.pin.or(other.pin);
        for c in other.custom {
            if !self.custom.contains(&c) {
                self.custom.push(c);
            }
        }
        if self.sole != other.sole {
            self.sole = None;
            self.drops_statements = true;
        }
        self.drops_statements |= other.drops_statements;
        self.reads_view |= other.reads_view;
        self.check |= other.check;
        self.trusts_names |= other.trusts_names;
    }

    pub fn pin(&mut self, reason: PinReason) {
        self.pin.get_or_insert(reason);
    }
}
