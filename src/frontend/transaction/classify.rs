//! What a statement does to the session, told cheaply (transaction mode): whether it may change
//! session settings (rotagate then re-reads them when the transaction ends), whether it makes
//! state that cannot move to another upstream connection (the client is then pinned), whether
//! it acts on prepared statements, and whether it is proven plain at all (if not, the session
//! is checked on the server at rest: `check`).
//!
//! Two readers, neither a parser: a pass over the bytes that proves the usual statements plain
//! with no lexer (`quick.rs`), and for everything else PostgreSQL's lexical rules
//! (`lexer.rs`, `lexed.rs`). A text holding a backslash is read both with and without
//! `standard_conforming_strings` (the session's value may have changed in the transaction), and
//! what either reading finds counts.

use super::allowlist::Names;
pub use super::class::{Class, PinReason, Sole};
use super::{lexed, quick};

/// The last text classified as plain, remembered per client: drivers send the same statement
/// text over and over (every unnamed Parse of pgbench `-M extended`, `BEGIN`, `COMMIT`), and a
/// compare is cheaper than a pass.
#[derive(Debug, Default)]
pub struct Recent {
    plain: Vec<u8>,
}

impl Recent {
    /// `names`: see [`classify`]; asked only when the text needs the lexer.
    pub fn classify(&mut self, sql: &[u8], names: impl FnOnce() -> Names) -> Class {
        if sql == self.plain.as_slice() || quick::plain(sql) {
            return Class::default();
        }
        let class = lexed_both(sql, &names());
        // Remembered only when plain whatever the names resolve to later.
        if class.always_plain() && sql.len() <= 4096 {
            self.plain.clear();
            self.plain.extend_from_slice(sql);
        }
        class
    }

    /// Forgets the remembered text (the client's search_path changed).
    pub fn forget(&mut self) {
        self.plain.clear();
    }
}

/// Classifies SQL text (a Query message's, or a Parse's query). `names`: where unqualified
/// calls go for this client (its search_path; functions that share a built-in's name).
pub fn classify(sql: &[u8], names: &Names) -> Class {
    if quick::plain(sql) {
        return Class::default();
    }
    lexed_both(sql, names)
}

fn lexed_both(sql: &[u8], names: &Names) -> Class {
    let mut class = lexed::classify(sql, true, names);
    if memchr::memchr(b'\\', sql).is_some() {
        class.merge(lexed::classify(sql, false, names));
    }
    class
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
