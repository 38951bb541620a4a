//! SQL that names a client's protocol-level statement (design 9.1): `EXECUTE name` (and so
//! `EXPLAIN EXECUTE name`, `CREATE TABLE ... AS EXECUTE name`), `PREPARE name` (which must then
//! fail as taken), or a query of `pg_prepared_statements` by name. Upstream, a client's
//! statements go by names of the connection's own. So, in a Query that names one of the
//! client's statements (an identifier or a string constant, as [`super::lexer`] reads them):
//!
//! - the name after `EXECUTE` becomes the connection's statement for it, found or prepared
//!   and checked as for a Bind ([`super::named`]), so that a statement whose result type
//!   changed fails as the client's own would;
//! - for any other mention, the client's statement is prepared under the client's own name
//!   before the Query and closed after it, each followed by a Sync of its own, all unseen by
//!   the client.
//!
//! A query of `pg_prepared_statements` reads the client's statements instead ([`view`]).
//!
//! (`DEALLOCATE name` alone is answered by rotagate without the server.)

use super::lexer::{Token, spans};
use super::replies::{Entry, Expect};
use super::statements::Statement;
use super::tx::Tx;
use super::view;
use crate::wire::msg;
use std::ops::Range;
use std::sync::Arc;

/// A name right after `EXECUTE`.
pub struct Executed {
    /// Where it is in the text.
    pub span: Range<usize>,
    pub stmt: Arc<Statement>,
    /// As the client wrote it (folded, or quoted).
    pub name: Vec<u8>,
    /// How many arguments follow it.
    pub args: usize,
}

/// The client's statements a Query names.
#[derive(Default)]
pub struct Mentions {
    pub executed: Vec<Executed>,
    /// Every other mention, once each.
    pub named: Vec<(Box<[u8]>, Arc<Statement>)>,
    /// Where it reads `pg_prepared_statements`, and whether an alias follows ([`view`]).
    pub views: Vec<(Range<usize>, bool)>,
}

impl Mentions {
    pub fn is_empty(&self) -> bool {
        self.executed.is_empty() && self.named.is_empty() && self.views.is_empty()
    }
}

/// What `sql` names of the client's statements (none in a COPY, whose data must follow it);
/// `reads_view`: the classifier saw `pg_prepared`.
pub fn mentions(sql: &[u8], reads_view: bool, tx: &Tx<'_>) -> Mentions {
    let mut m = Mentions::default();
    if tx.client.statements.is_empty() && !reads_view {
        return m;
    }
    let standard = tx.client.settings.list.get("standard_conforming_strings") != Some("off");
    let tokens = spans(sql, standard);
    if tokens.first().is_some_and(|(t, _)| t.is_keyword("copy")) {
        return m;
    }
    if reads_view {
        m.views = view::references(&tokens);
    }
    let mut after_execute = false;
    for (i, (t, span)) in tokens.iter().enumerate() {
        let was_execute = std::mem::replace(&mut after_execute, t.is_keyword("execute"));
        let (name, ident) = match t {
            Token::Ident { name, .. } => (name, true),
            // A name in a string is looked up in the view, which lists the client's names.
            Token::Str(name) if m.views.is_empty() => (name, false),
            _ => continue,
        };
        let Some(stmt) = tx.client.statements.get(name) else {
            continue;
        };
        if was_execute && ident {
            m.executed.push(Executed {
                span: span.clone(),
                stmt: stmt.clone(),
                name: name.clone(),
                args: arguments(&tokens[i + 1..]),
            });
        } else if !m.named.iter().any(|(n, _)| **n == **name) {
            m.named.push((name.clone().into(), stmt.clone()));
        }
    }
    m
}

/// How many arguments an `EXECUTE name` has: its parenthesised list's top-level commas.
fn arguments(after: &[(Token, Range<usize>)]) -> usize {
    if !after.first().is_some_and(|(t, _)| t.is_op("(")) {
        return 0;
    }
    let (mut depth, mut args, mut empty) = (0usize, 1usize, true);
    for (t, _) in after {
        if t.is_op("(") || t.is_op("[") {
            depth += 1;
            if depth == 1 {
                continue;
            }
        } else if t.is_op(")") || t.is_op("]") {
            depth -= 1;
            if depth == 0 {
                break;
            }
        } else if depth == 1 && t.is_op(",") {
            args += 1;
        }
        empty = false;
    }
    if empty { 0 } else { args }
}

/// Prepares each statement under the client's name, then a Sync (so that a failure there
/// cannot make the server skip the Query). Where no transaction of the client's, explicit or
/// implicit, could be aborted by a failure, it is the client's text (and, when that no longer
/// prepares, an empty statement stands in under its name: a second Parse, which fails when the
/// first did not); inside one, it is an empty statement, which cannot fail. After extended
/// messages not yet synced there is no Sync: it would end their implicit transaction ahead of
/// the client's Query, and an error at its commit (a deferred constraint) belongs to the Query
/// (the long run's seed 1001418).
pub fn before(named: &[(Box<[u8]>, Arc<Statement>)], tx: &mut Tx<'_>) {
    let may_fail = tx.status == b'I' && !tx.flow.unsynced;
    for (name, stmt) in named {
        if may_fail {
            msg::parse(tx.out, name, &stmt.tail_as_prepared(stmt.desc.get()));
            tx.flow.replies.push(Entry::new(Expect::Parse).quiet());
            msg::empty(tx.out, b'S');
            tx.flow.replies.push(Entry::new(Expect::Sync).quiet());
        }
        msg::parse(tx.out, name, b"\0\0\0");
        tx.flow.replies.push(Entry::new(Expect::Parse).quiet());
    }
    if !tx.flow.unsynced {
        msg::empty(tx.out, b'S');
        tx.flow.replies.push(Entry::new(Expect::Sync).quiet());
    }
}

/// Closes what [`before`] prepared, then a Sync.
pub fn after(named: &[(Box<[u8]>, Arc<Statement>)], tx: &mut Tx<'_>) {
    for (name, _) in named {
        msg::describe_or_close(tx.out, b'C', b'S', name);
        tx.flow.replies.push(Entry::new(Expect::Close).quiet());
    }
    msg::empty(tx.out, b'S');
    tx.flow.replies.push(Entry::new(Expect::Sync).quiet());
}

/// `sql` with each executed name replaced by its upstream name (`upstream`, in order) and each
/// reading of `pg_prepared_statements` by the client's list.
pub fn rewritten(sql: &[u8], m: &Mentions, upstream: &[Arc<str>], tx: &Tx<'_>) -> Vec<u8> {
    let mut edits: Vec<(Range<usize>, String)> = m
        .executed
        .iter()
        .zip(upstream)
        .map(|(e, name)| (e.span.clone(), name.to_string()))
        .collect();
    for (span, aliased) in &m.views {
        edits.push((span.clone(), view::replacement(tx.client, *aliased)));
    }
    edits.sort_by_key(|(span, _)| span.start);
    view::edit(sql, &edits)
}

/// What PostgreSQL says when an EXECUTE of a statement that no longer works as prepared is
/// run (`error`: what revalidating it says): the number of arguments is checked first.
pub fn failed_execute(e: &Executed, error: bytes::Bytes) -> bytes::Bytes {
    let want = e.stmt.desc.get().map_or(e.args, |d| d.param_count());
    // In an aborted transaction the Query fails before anything is looked at.
    let aborted = error
        .get(5..)
        .is_some_and(|body| msg::code(body) == b"25P02");
    if want == e.args || aborted {
        return error;
    }
    let mut b = bytes::BytesMut::new();
    msg::error_detail(
        &mut b,
        "ERROR",
        "42601",
        &format!(
            "wrong number of parameters for prepared statement \"{}\"",
            String::from_utf8_lossy(&e.name)
        ),
        Some(&format!("Expected {want} parameters but got {}.", e.args)),
    );
    b.freeze()
}
