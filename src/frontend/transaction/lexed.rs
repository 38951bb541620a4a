//! What a statement does to the session, read from its tokens (`lexer.rs`): names are compared
//! after PostgreSQL's normalising (unquoted names folded, quoted and `U&` names decoded, a
//! `pg_catalog.` qualification understood), and strings, comments and dollar quotes hide
//! nothing. Still no parser: each statement's leading keywords say its kind, and every name
//! followed by `(` is a call.
//!
//! A statement is plain only when its kind cannot change the session and every function it
//! calls is on the allow-list (`allowlist.rs`). What it is not proven plain (DO, CALL, EXPLAIN
//! ANALYZE of anything but a plain statement, DDL, any other function, an operator rotagate
//! does not know, what the lexer cannot read) gets `check`: the session is read on the server
//! at rest, before its connection serves another client.

use super::allowlist::{self, Names};
use super::class::{Class, PinReason, Sole};
use super::lexer::{Token, lex};

/// Classifies `sql` lexed under `standard_conforming_strings = standard`; `names` says where
/// unqualified calls go.
pub fn classify(sql: &[u8], standard: bool, names: &Names) -> Class {
    let tokens = lex(sql, standard);
    let mut class = Class::default();
    let mut statements = 0;
    for st in tokens.split(|t| t.is_op(";")) {
        if st.is_empty() {
            continue;
        }
        statements += 1;
        statement(st, &mut class);
        self::names(st, names, &mut class);
    }
    if tokens.last() == Some(&Token::Unreadable) {
        class.check = true;
    }
    if statements != 1 {
        class.sole = None;
    }
    class
}

fn keyword(t: Option<&Token>) -> &[u8] {
    match t {
        Some(Token::Ident {
            name,
            quoted: false,
        }) => name,
        _ => b"",
    }
}

fn name(t: Option<&Token>) -> Option<&[u8]> {
    match t {
        Some(Token::Ident { name, .. }) => Some(name),
        _ => None,
    }
}

/// Statement kinds that cannot change the session by themselves (the calls in them are looked
/// at separately).
const PLAIN: &[&str] = &[
    "select",
    "values",
    "table",
    "with",
    "insert",
    "update",
    "delete",
    "merge",
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
    "show",
    "fetch",
    "move",
    "close",
    "lock",
    "copy",
    "truncate",
    "notify",
    "unlisten",
    "execute",
];

/// One statement's kind, from its leading keywords.
fn statement(st: &[Token], class: &mut Class) {
    if st[0].is_op("(") {
        // `(SELECT ...) UNION ...`
        return into(st, class);
    }
    let first = keyword(st.first());
    let rest = &st[1..];
    match first {
        b"set" => set(rest, class),
        b"reset" => {
            class.settings = true;
            custom(dotted(rest).as_deref(), class);
        }
        b"discard" => {
            class.settings = true;
            if keyword(rest.first()) == b"all" {
                class.drops_statements = true;
                class.sole = Some(Sole::DiscardAll);
            }
        }
        b"listen" => class.pin(PinReason::Listen),
        b"prepare" if keyword(rest.first()) == b"transaction" => {}
        b"prepare" => class.pin(PinReason::SqlPrepare),
        b"deallocate" => deallocate(rest, class),
        b"declare" => {
            if rest
                .windows(2)
                .any(|w| w[0].is_keyword("with") && w[1].is_keyword("hold"))
            {
                class.pin(PinReason::WithHold);
            }
        }
        b"explain" => explain(rest, class),
        b"create" => create(rest, class),
        b"load" => class.pin(PinReason::Other),
        b"do" | b"call" => {
            class.check = true;
            class.settings = true;
        }
        k if PLAIN.iter().any(|p| p.as_bytes() == k) => into(st, class),
        _ => class.check = true,
    }
}

/// `INTO` that makes a table (`SELECT ... INTO [TEMP] t`, not `INSERT INTO` or `MERGE INTO`):
/// a temporary one pins; any other is checked (a `search_path` led by `pg_temp` makes it one).
fn into(st: &[Token], class: &mut Class) {
    for (i, t) in st.iter().enumerate() {
        if !t.is_keyword("into") {
            continue;
        }
        let before = keyword(i.checked_sub(1).and_then(|j| st.get(j)));
        if before == b"insert" || before == b"merge" {
            continue;
        }
        match keyword(st.get(i + 1)) {
            b"temp" | b"temporary" => class.pin(PinReason::TempTable),
            _ => class.check = true,
        }
    }
}

fn set(rest: &[Token], class: &mut Class) {
    match keyword(rest.first()) {
        b"local" | b"transaction" | b"constraints" => {}
        b"session" => {
            class.settings = true;
            custom(dotted(&rest[1..]).as_deref(), class);
        }
        _ => {
            class.settings = true;
            custom(dotted(rest).as_deref(), class);
        }
    }
}

/// The dotted name at the start of `t` (`a.b`), as PostgreSQL normalises it.
fn dotted(t: &[Token]) -> Option<Vec<u8>> {
    let mut out = name(t.first())?.to_vec();
    let mut i = 1;
    while t.get(i).is_some_and(|d| d.is_op(".")) {
        out.push(b'.');
        out.extend_from_slice(name(t.get(i + 1))?);
        i += 2;
    }
    Some(out)
}

/// Notes a custom (dotted) setting name.
fn custom(name: Option<&[u8]>, class: &mut Class) {
    let Some(name) = name.filter(|n| n.contains(&b'.')) else {
        return;
    };
    if let Ok(name) = String::from_utf8(name.to_vec()) {
        if !class.custom.contains(&name) {
            class.custom.push(name);
        }
    }
}

fn deallocate(rest: &[Token], class: &mut Class) {
    let rest = match keyword(rest.first()) {
        b"prepare" => &rest[1..],
        _ => rest,
    };
    match rest {
        [t] if t.is_keyword("all") => {
            class.drops_statements = true;
            class.sole = Some(Sole::DeallocateAll);
        }
        [Token::Ident { name, .. }] => class.sole = Some(Sole::Deallocate(name.clone())),
        // DEALLOCATE ALL followed by something odd, or a name we cannot read: assume the worst.
        _ => class.drops_statements = true,
    }
}

/// `EXPLAIN [ANALYZE] [VERBOSE] stmt` or `EXPLAIN (options) stmt`: the statement inside is
/// classified as if it ran (with ANALYZE it does).
fn explain(rest: &[Token], class: &mut Class) {
    let mut i = 0;
    if rest.first().is_some_and(|t| t.is_op("(")) {
        let close = rest.iter().position(|t| t.is_op(")"));
        i = close.map_or(rest.len(), |c| c + 1);
    } else {
        while matches!(keyword(rest.get(i)), b"analyze" | b"analyse" | b"verbose") {
            i += 1;
        }
    }
    match rest.get(i..) {
        Some(inner) if !inner.is_empty() => statement(inner, class),
        _ => class.check = true,
    }
}

fn create(rest: &[Token], class: &mut Class) {
    for t in rest.iter().take(4) {
        match keyword(Some(t)) {
            b"temp" | b"temporary" => return class.pin(PinReason::TempTable),
            b"or" | b"replace" | b"global" | b"local" => {}
            _ => break,
        }
    }
    // Other DDL: checked (a `search_path` led by `pg_temp` makes its objects temporary).
    class.check = true;
}

/// Names that matter wherever they are: `pg_temp`, the view of prepared statements, and every
/// call (a name followed by `(`).
fn names(st: &[Token], resolve: &Names, class: &mut Class) {
    for (i, t) in st.iter().enumerate() {
        match t {
            Token::Ident { name, .. } => {
                if name == b"pg_temp" || name.starts_with(b"pg_temp_") {
                    class.pin(PinReason::TempTable);
                } else if name == b"pg_prepared_statements" {
                    class.reads_view = true;
                }
                if st.get(i + 1).is_some_and(|n| n.is_op("(")) {
                    call(st, i, resolve, class);
                }
            }
            Token::Op(op) if !known_operator(op) => class.check = true,
            _ => {}
        }
    }
}

/// Words followed by `(` that are syntax, not calls.
const SYNTAX: &[&str] = &[
    "all",
    "and",
    "any",
    "array",
    "as",
    "at",
    "between",
    "by",
    "case",
    "cast",
    "check",
    "coalesce",
    "collate",
    "collation",
    "columns",
    "conflict",
    "cube",
    "current_time",
    "current_timestamp",
    "default",
    "distinct",
    "do",
    "else",
    "escape",
    "except",
    "exists",
    "extract",
    "filter",
    "for",
    "from",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "include",
    "intersect",
    "into",
    "is",
    "join",
    "key",
    "lateral",
    "least",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "not",
    "nullif",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "over",
    "overlay",
    "partition",
    "position",
    "primary",
    "recursive",
    "references",
    "returning",
    "rollup",
    "row",
    "rows",
    "select",
    "set",
    "sets",
    "similar",
    "some",
    "substring",
    "tablesample",
    "then",
    "treat",
    "trim",
    "union",
    "unique",
    "using",
    "values",
    "when",
    "where",
    "window",
    "with",
    "within",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

/// The call whose name ends at `st[i]` (followed by `(`).
fn call(st: &[Token], i: usize, resolve: &Names, class: &mut Class) {
    let Token::Ident { name, quoted } = &st[i] else {
        return;
    };
    // The qualification, and where the whole name starts.
    let mut start = i;
    let mut schema: Option<&[u8]> = None;
    while start >= 2 && st[start - 1].is_op(".") {
        let Some(part) = self::name(st.get(start - 2)) else {
            break;
        };
        schema.get_or_insert(part);
        start -= 2;
    }
    let before = start.checked_sub(1).and_then(|j| st.get(j));
    // A type's modifiers (`::numeric(10, 2)`, `AS varchar(9)`), a table's column list
    // (`INSERT INTO t (a)`) or an alias's (`f() AS g(x)`, `f() g(x)`).
    if before.is_some_and(|b| b.is_op("::") || b.is_op(")"))
        || matches!(keyword(before), b"as" | b"into")
    {
        return;
    }
    if schema.is_none() && !quoted && SYNTAX.iter().any(|s| s.as_bytes() == name.as_slice()) {
        return;
    }
    match name.as_slice() {
        b"set_config" => set_config(&st[i + 1..], class),
        b"pg_advisory_lock"
        | b"pg_advisory_lock_shared"
        | b"pg_try_advisory_lock"
        | b"pg_try_advisory_lock_shared" => class.pin(PinReason::AdvisoryLock),
        n if schema == Some(&b"pg_catalog"[..]) && allowlist::allowed(n) => {}
        n if schema.is_none() && resolve.builtin(n) => class.trusts_names = true,
        _ => class.check = true,
    }
    // Whatever it is called, a function of another schema is not one rotagate knows.
    if schema.is_some_and(|s| s != b"pg_catalog") {
        class.check = true;
    }
}

/// `set_config('name', ...)`: a literal name is noted; a computed one pins, as its setting could
/// be a custom one rotagate cannot list.
fn set_config(args: &[Token], class: &mut Class) {
    class.settings = true;
    match (args.get(1), args.get(2)) {
        (Some(Token::Str(n)), Some(comma)) if comma.is_op(",") => {
            custom(Some(&n.to_ascii_lowercase()), class)
        }
        _ => class.pin(PinReason::Other),
    }
}

/// Operators (and punctuation) of PostgreSQL's own that call no user code on built-in types.
fn known_operator(op: &[u8]) -> bool {
    const KNOWN: &[&str] = &[
        ";", ",", "(", ")", "[", "]", ".", ":", "::", "=", "<>", "!=", "<", ">", "<=", ">=", "+",
        "-", "*", "/", "%", "^", "||", "~~", "!~~", "~~*", "!~~*", "~", "~*", "!~", "!~*", "@>",
        "<@", "&&", "->", "->>", "#>", "#>>", "?", "?|", "?&", "@@", "|", "&", "#", "<<", ">>",
        "=>", "@", "$", "-|-",
    ];
    KNOWN.iter().any(|k| k.as_bytes() == op)
}
