//! What a statement does to the session, told cheaply (transaction mode): whether it may change
//! session settings (rotagate then re-reads them when the transaction ends), whether it makes
//! state that cannot move to another upstream connection (the client is then pinned), and
//! whether it acts on prepared statements. It looks only at the leading keywords of each
//! statement (the text's start and after every `;`) and, in one pass over the bytes, at the
//! words around each `_` (`set_config`, `pg_advisory_lock` and its session-level family,
//! `pg_temp`) and after each `INTO`. It never parses a statement. Quotes and comments are not
//! understood, so a keyword inside a string can only make it err toward re-reading or pinning.

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
}

impl PinReason {
    pub const ALL: [PinReason; 6] = [
        PinReason::TempTable,
        PinReason::Listen,
        PinReason::SqlPrepare,
        PinReason::WithHold,
        PinReason::AdvisoryLock,
        PinReason::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            PinReason::TempTable => "temp_table",
            PinReason::Listen => "listen",
            PinReason::SqlPrepare => "sql_prepare",
            PinReason::WithHold => "with_hold",
            PinReason::AdvisoryLock => "advisory_lock",
            PinReason::Other => "other",
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
}

impl Class {
    /// Nothing to do for this statement.
    pub fn is_plain(&self) -> bool {
        !self.settings
            && self.pin.is_none()
            && self.sole.is_none()
            && !self.drops_statements
            && !self.reads_view
    }

    fn pin(&mut self, reason: PinReason) {
        self.pin.get_or_insert(reason);
    }
}

/// The last text classified as plain, remembered per client: drivers send the same statement
/// text over and over (every unnamed Parse of pgbench `-M extended`, `BEGIN`, `COMMIT`), and a
/// compare is cheaper than a pass.
#[derive(Debug, Default)]
pub struct Recent {
    plain: Vec<u8>,
}

impl Recent {
    pub fn classify(&mut self, sql: &[u8]) -> Class {
        if sql == self.plain.as_slice() {
            return Class::default();
        }
        let class = classify(sql);
        if class.is_plain() && sql.len() <= 4096 {
            self.plain.clear();
            self.plain.extend_from_slice(sql);
        }
        class
    }
}

/// Classifies SQL text (a Query message's, or a Parse's query) in one pass over its bytes.
/// The pass visits only the bytes it stops at (statement ends, and the starts of what it looks
/// for), found with memchr's vectorised search, in text order.
pub fn classify(sql: &[u8]) -> Class {
    let mut class = Class::default();
    let mut statements = 0;
    let mut start = 0;
    for i in stops(sql) {
        match sql[i] {
            b';' => {
                statements += one_statement(sql, start, i, &mut class);
                start = i + 1;
            }
            b'_' => underscore(sql, i, &mut class),
            _ if (i == 0 || !is_ident(sql[i - 1])) && into_temp(sql, i) => {
                class.pin(PinReason::TempTable)
            }
            _ => {}
        }
    }
    statements += one_statement(sql, start, sql.len(), &mut class);
    if statements != 1 {
        class.sole = None;
    }
    class
}

/// Positions of `;`, `_`, `i` and `I` in `sql`, in order.
fn stops(sql: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut lower = memchr::memchr3_iter(b';', b'_', b'i', sql).peekable();
    let mut upper = memchr::memchr_iter(b'I', sql).peekable();
    std::iter::from_fn(move || match (lower.peek(), upper.peek()) {
        (Some(a), Some(b)) if b < a => upper.next(),
        (Some(_), _) => lower.next(),
        (None, _) => upper.next(),
    })
}

/// The statement in `sql[start..end]`, if it is not blank: 1 when there is one.
fn one_statement(sql: &[u8], start: usize, end: usize, class: &mut Class) -> usize {
    let at = skip_blank(&sql[..end], start);
    if at < end {
        statement(&sql[at..end], class);
        1
    } else {
        0
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    memchr::memchr(needle, hay)
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

/// Skips whitespace and comments from `at`.
fn skip_blank(s: &[u8], mut at: usize) -> usize {
    loop {
        while at < s.len() && s[at].is_ascii_whitespace() {
            at += 1;
        }
        if s[at..].starts_with(b"--") {
            at += memchr(b'\n', &s[at..]).map_or(s.len() - at, |i| i + 1);
        } else if s[at..].starts_with(b"/*") {
            at = skip_block_comment(s, at);
        } else {
            return at;
        }
    }
}

fn skip_block_comment(s: &[u8], mut at: usize) -> usize {
    let mut depth = 0;
    while at < s.len() {
        if s[at..].starts_with(b"/*") {
            depth += 1;
            at += 2;
        } else if s[at..].starts_with(b"*/") {
            depth -= 1;
            at += 2;
            if depth == 0 {
                return at;
            }
        } else {
            at += 1;
        }
    }
    at
}

/// The words of a statement's start, lowercased, as needed.
struct Words<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Words<'a> {
    /// The next plain word (letters, digits, `_`), or an empty slice.
    fn next(&mut self) -> &'a [u8] {
        self.at = skip_blank(self.s, self.at);
        let from = self.at;
        while self.at < self.s.len() && is_ident(self.s[self.at]) {
            self.at += 1;
        }
        &self.s[from..self.at]
    }

    /// The next name: words joined by dots, each plain (folded to lowercase) or double-quoted.
    fn name(&mut self) -> Vec<u8> {
        self.at = skip_blank(self.s, self.at);
        let mut out = Vec::new();
        loop {
            if self.s.get(self.at) == Some(&b'"') {
                self.at += 1;
                while let Some(&b) = self.s.get(self.at) {
                    self.at += 1;
                    if b == b'"' {
                        if self.s.get(self.at) == Some(&b'"') {
                            self.at += 1;
                        } else {
                            break;
                        }
                    }
                    out.push(b);
                }
                if out.last() == Some(&b'"') {
                    out.pop();
                }
            } else {
                while let Some(&b) = self.s.get(self.at).filter(|b| is_ident(**b)) {
                    out.push(b.to_ascii_lowercase());
                    self.at += 1;
                }
            }
            if self.s.get(self.at) == Some(&b'.') {
                out.push(b'.');
                self.at += 1;
            } else {
                return out;
            }
        }
    }
}

fn is(word: &[u8], keyword: &str) -> bool {
    word.eq_ignore_ascii_case(keyword.as_bytes())
}

/// One statement's leading keywords.
fn statement(s: &[u8], class: &mut Class) {
    let mut w = Words { s, at: 0 };
    let first = w.next();
    match first.len() {
        2 if is(first, "do") => class.settings = true,
        3 if is(first, "set") => set(&mut w, class),
        4 if is(first, "call") => class.settings = true,
        4 if is(first, "load") => class.pin(PinReason::Other),
        5 if is(first, "reset") => {
            class.settings = true;
            custom(w.name(), class);
        }
        6 if is(first, "listen") => class.pin(PinReason::Listen),
        6 if is(first, "create") => create(&mut w, class),
        7 if is(first, "discard") => {
            class.settings = true;
            if is(w.next(), "all") {
                class.drops_statements = true;
                class.sole = Some(Sole::DiscardAll);
            }
        }
        7 if is(first, "prepare") && !is(w.next(), "transaction") => {
            class.pin(PinReason::SqlPrepare)
        }
        7 if is(first, "declare") && with_hold(s) => class.pin(PinReason::WithHold),
        10 if is(first, "deallocate") => deallocate(&mut w, class),
        _ => {}
    }
}

fn set(w: &mut Words<'_>, class: &mut Class) {
    let save = w.at;
    let next = w.next();
    if is(next, "local") || is(next, "transaction") || is(next, "constraints") {
        return;
    }
    class.settings = true;
    if !is(next, "session") {
        w.at = save;
    }
    custom(w.name(), class);
}

fn custom(name: Vec<u8>, class: &mut Class) {
    if name.contains(&b'.') {
        if let Ok(name) = String::from_utf8(name) {
            if !class.custom.contains(&name) {
                class.custom.push(name);
            }
        }
    }
}

fn create(w: &mut Words<'_>, class: &mut Class) {
    for _ in 0..4 {
        let word = w.next();
        if is(word, "temp") || is(word, "temporary") {
            return class.pin(PinReason::TempTable);
        }
        if !(is(word, "or") || is(word, "replace") || is(word, "global") || is(word, "local")) {
            return;
        }
    }
}

fn deallocate(w: &mut Words<'_>, class: &mut Class) {
    let save = w.at;
    if !is(w.next(), "prepare") {
        w.at = save;
    }
    let save = w.at;
    if is(w.next(), "all") && skip_blank(w.s, w.at) == w.s.len() {
        class.drops_statements = true;
        class.sole = Some(Sole::DeallocateAll);
        return;
    }
    w.at = save;
    let name = w.name();
    if !name.is_empty() && skip_blank(w.s, w.at) == w.s.len() {
        class.sole = Some(Sole::Deallocate(name));
    } else {
        // DEALLOCATE ALL followed by something odd, or a name we cannot read: assume the worst.
        class.drops_statements = true;
    }
}

/// `WITH HOLD` as two words in a DECLARE statement (not `WITHOUT HOLD`).
fn with_hold(s: &[u8]) -> bool {
    let mut w = Words { s, at: 0 };
    let mut prev_with = false;
    loop {
        let word = w.next();
        if word.is_empty() {
            if w.at >= s.len() {
                return false;
            }
            w.at += 1;
            prev_with = false;
            continue;
        }
        if prev_with && is(word, "hold") {
            return true;
        }
        prev_with = is(word, "with");
    }
}

fn word_before(s: &[u8], i: usize) -> &[u8] {
    let mut from = i;
    while from > 0 && s[from - 1].is_ascii_alphanumeric() {
        from -= 1;
    }
    &s[from..i]
}

fn word_after(s: &[u8], i: usize) -> &[u8] {
    let mut to = i;
    while to < s.len() && s[to].is_ascii_alphanumeric() {
        to += 1;
    }
    &s[i..to]
}

fn underscore(s: &[u8], i: usize, class: &mut Class) {
    let before = word_before(s, i);
    let after = word_after(s, i + 1);
    if is(before, "set") && is(after, "config") {
        class.settings = true;
        set_config_name(s, i + 1 + after.len(), class);
    } else if is(before, "advisory") && is(after, "lock") {
        class.pin(PinReason::AdvisoryLock);
    } else if is(before, "pg") && is(after, "temp") {
        class.pin(PinReason::TempTable);
    } else if is(before, "pg") && is(after, "prepared") {
        class.reads_view = true;
    }
}

/// The first argument of `set_config(`: a dotted literal name is recorded; a computed one pins,
/// as its setting could be a custom one rotagate cannot list.
fn set_config_name(s: &[u8], at: usize, class: &mut Class) {
    let at = skip_blank(s, at);
    if s.get(at) != Some(&b'(') {
        return;
    }
    let at = skip_blank(s, at + 1);
    if s.get(at) != Some(&b'\'') {
        return class.pin(PinReason::Other);
    }
    let Some(len) = memchr(b'\'', &s[at + 1..]) else {
        return;
    };
    let name = s[at + 1..at + 1 + len].to_ascii_lowercase();
    custom(name, class);
}

fn into_temp(s: &[u8], i: usize) -> bool {
    let Some(word) = s.get(i..i + 4) else {
        return false;
    };
    if !is(word, "into") || s.get(i + 4).is_some_and(|b| is_ident(*b)) {
        return false;
    }
    let mut w = Words { s, at: i + 4 };
    let next = w.next();
    is(next, "temp") || is(next, "temporary")
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
