//! Queries of `pg_prepared_statements` (design 9.1). Upstream the view lists the connection's
//! statements: rotagate's names for statements every client on the connection shares. A
//! client's own session would list its statements under its own names. So where a text reads
//! the view, it reads instead, in its place:
//!
//! - the connection's SQL-level statements (`from_sql`), which only a client pinned by its own
//!   `PREPARE` has;
//! - the client's protocol-level statements as rotagate keeps them: each name, text, parameter
//!   types (as the server resolved them) and the time the client prepared it, in the order it
//!   prepared them. Plan counts are 0, and a statement whose result type changed is listed as
//!   the client prepared it.
//!
//! The list is taken when the text is sent: a named statement that reads the view keeps the
//! list it was prepared with.

use super::flow::ClientState;
use super::lexer::{Token, spans};
use super::tx::Tx;
use std::ops::Range;

/// Where `tokens` name the view as a relation, and whether an alias follows each.
pub fn references(tokens: &[(Token, Range<usize>)]) -> Vec<(Range<usize>, bool)> {
    let mut out = Vec::new();
    for (i, (t, span)) in tokens.iter().enumerate() {
        let Token::Ident { name, .. } = t else {
            continue;
        };
        if name != b"pg_prepared_statements" {
            continue;
        }
        let next = tokens.get(i + 1).map(|(t, _)| t);
        // `pg_prepared_statements.name`: a column's qualifier, which the alias keeps valid.
        if next.is_some_and(|t| t.is_op(".")) {
            continue;
        }
        let mut start = span.start;
        if i >= 1 && tokens[i - 1].0.is_op(".") {
            // Only the catalog's own view, qualified.
            match tokens.get(i.wrapping_sub(2)) {
                Some((q, s)) if i >= 2 && q.is_keyword("pg_catalog") => start = s.start,
                _ => continue,
            }
        }
        out.push((start..span.end, next.is_some_and(is_alias)));
    }
    out
}

/// Words that may follow a relation in FROM and are no alias of it.
const AFTER_RELATION: &[&str] = &[
    "where",
    "group",
    "having",
    "window",
    "order",
    "limit",
    "offset",
    "fetch",
    "for",
    "union",
    "intersect",
    "except",
    "join",
    "inner",
    "left",
    "right",
    "full",
    "cross",
    "natural",
    "on",
    "using",
    "returning",
    "into",
    "tablesample",
];

fn is_alias(t: &Token) -> bool {
    match t {
        Token::Ident { quoted: true, .. } => true,
        Token::Ident { name, .. } => !AFTER_RELATION.iter().any(|w| name == w.as_bytes()),
        _ => false,
    }
}

/// What stands in for the view in the client's text (`aliased`: an alias follows already).
pub fn replacement(client: &ClientState, aliased: bool) -> String {
    let rows = serde_json::Value::Array(rows(client));
    let json = rows.to_string();
    let mut tag = String::from("$rotagate$");
    let mut n = 0;
    while json.contains(&tag) {
        n += 1;
        tag = format!("$rotagate{n}$");
    }
    let mut sql = format!(
        "(SELECT * FROM pg_catalog.pg_prepared_statements WHERE from_sql UNION ALL \
         SELECT * FROM pg_catalog.jsonb_populate_recordset(\
         NULL::pg_catalog.pg_prepared_statements, {tag}{json}{tag}::pg_catalog.jsonb))"
    );
    if !aliased {
        sql.push_str(" AS pg_prepared_statements");
    }
    sql
}

/// The client's protocol-level statements, oldest first, as the view's rows.
fn rows(client: &ClientState) -> Vec<serde_json::Value> {
    let mut stmts: Vec<_> = client.statements.iter().collect();
    stmts.sort_by_key(|(_, s)| s.born);
    stmts
        .into_iter()
        .map(|(name, s)| {
            let text_end = memchr::memchr(0, &s.tail).unwrap_or(s.tail.len());
            let params: Vec<String> = match s.desc.get() {
                Some(d) => d.param_types().map(|t| t.to_string()).collect(),
                None => declared(&s.tail[text_end..]),
            };
            serde_json::json!({
                "name": String::from_utf8_lossy(name),
                "statement": String::from_utf8_lossy(&s.tail[..text_end]),
                "prepare_time": humantime::format_rfc3339_micros(s.prepared).to_string(),
                "parameter_types": params,
                "from_sql": false,
                "generic_plans": 0,
                "custom_plans": 0,
            })
        })
        .collect()
}

/// The parameter types a Parse declared (its NUL, count and OIDs), where no description came.
fn declared(types: &[u8]) -> Vec<String> {
    types
        .get(3..)
        .unwrap_or_default()
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]).to_string())
        .collect()
}

/// A Parse body after the name (text, NUL, types) whose text reads the view, with the client's
/// list in its place; None when it does not read it.
pub fn tail(tail: &[u8], tx: &Tx<'_>) -> Option<Vec<u8>> {
    let text_end = memchr::memchr(0, tail).unwrap_or(tail.len());
    let standard = tx.client.settings.list.get("standard_conforming_strings") != Some("off");
    let refs = references(&spans(&tail[..text_end], standard));
    if refs.is_empty() {
        return None;
    }
    let edits: Vec<_> = refs
        .into_iter()
        .map(|(span, aliased)| (span, replacement(tx.client, aliased)))
        .collect();
    let mut out = edit(&tail[..text_end], &edits);
    out.extend_from_slice(&tail[text_end..]);
    Some(out)
}

/// `sql` with each span in `edits` (in order, apart) replaced by its text.
pub fn edit(sql: &[u8], edits: &[(Range<usize>, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sql.len() + edits.iter().map(|(_, t)| t.len()).sum::<usize>());
    let mut at = 0;
    for (span, text) in edits {
        out.extend_from_slice(&sql[at..span.start]);
        out.extend_from_slice(text.as_bytes());
        at = span.end;
    }
    out.extend_from_slice(&sql[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(sql: &str) -> Vec<(String, bool)> {
        references(&spans(sql.as_bytes(), true))
            .into_iter()
            .map(|(r, a)| (sql[r].to_owned(), a))
            .collect()
    }

    #[test]
    fn the_view_is_found_as_a_relation_qualified_or_not_with_or_without_an_alias() {
        assert_eq!(
            refs("select * from pg_prepared_statements where name = 'x'"),
            [("pg_prepared_statements".to_owned(), false)]
        );
        assert_eq!(
            refs("SELECT p.name FROM PG_CATALOG.Pg_Prepared_Statements p"),
            [("PG_CATALOG.Pg_Prepared_Statements".to_owned(), true)]
        );
        assert_eq!(
            refs("select count(*) from pg_prepared_statements AS s"),
            [("pg_prepared_statements".to_owned(), true)]
        );
        assert_eq!(
            refs("select pg_prepared_statements.name from pg_prepared_statements"),
            [("pg_prepared_statements".to_owned(), false)]
        );
        assert!(refs("select 'pg_prepared_statements', other.pg_prepared_statements").is_empty());
        assert_eq!(
            refs("select 1 from \"pg_prepared_statements\";"),
            [("\"pg_prepared_statements\"".to_owned(), false)]
        );
    }

    #[test]
    fn edits_replace_spans_in_order() {
        let sql = b"ab cd ef";
        let out = edit(sql, &[(0..2, "X".into()), (6..8, "YZ".into())]);
        assert_eq!(out, b"X cd YZ");
    }

    #[test]
    fn declared_types_are_read_after_the_count() {
        assert_eq!(declared(&[0, 0, 2, 0, 0, 0, 25, 0, 0, 0, 0]), ["25", "0"]);
        assert!(declared(&[0]).is_empty());
    }
}
