//! The cheap proof that a text is plain, for the statements drivers send most (`pgbench -S`,
//! `BEGIN`, `COMMIT`, simple reads and writes), in one pass over its bytes with no lexer and no
//! allocation. It proves only what needs no lexer: a text made of unquoted words, numbers,
//! `$n` parameters, whitespace, `,` `.` `;` and the operators `= < > <= >= <> + *`, whose
//! statements each start with one of a few keywords that cannot change the session, with no
//! `INTO` outside `INSERT INTO` and no word starting with `pg_`. Quotes, comments, parentheses
//! (so no function call), other operators and anything else leave the text to the lexer
//! (`lexed.rs`), which decides exactly. Whatever this proves plain, the lexer proves plain too
//! (a property test holds the two together).

// Byte classes, as bits so that a run of several classes is one mask.
const BAIL: u8 = 0;
const WORD: u8 = 1;
const DIGIT: u8 = 2;
const SPACE: u8 = 4;
const OP: u8 = 8;
const PUNCT: u8 = 16;
const SEMI: u8 = 32;
const DOLLAR: u8 = 64;

const fn classes() -> [u8; 256] {
    let mut t = [BAIL; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if c.is_ascii_alphabetic() || c == b'_' {
            WORD
        } else if c.is_ascii_digit() {
            DIGIT
        } else if c == b' ' || c == b'\t' || c == b'\n' || c == b'\r' {
            SPACE
        } else if c == b'=' || c == b'<' || c == b'>' || c == b'+' || c == b'*' {
            OP
        } else if c == b',' || c == b'.' {
            PUNCT
        } else if c == b';' {
            SEMI
        } else if c == b'$' {
            DOLLAR
        } else {
            BAIL
        };
        b += 1;
    }
    t
}

static CLASS: [u8; 256] = classes();

fn class(b: u8) -> u8 {
    CLASS[usize::from(b)]
}

/// The length of the run at the front of `s` of bytes in the classes of `mask`.
fn run(s: &[u8], mask: u8) -> usize {
    s.iter()
        .position(|&b| class(b) & mask == 0)
        .unwrap_or(s.len())
}

/// True when `sql` is proven plain; false means "ask the lexer", not "not plain".
pub fn plain(sql: &[u8]) -> bool {
    let mut rest = sql;
    // The next word starts a statement; the statement is an INSERT.
    let mut first = true;
    let mut insert = false;
    while let Some(&b) = rest.first() {
        let c = class(b);
        let len = match c {
            WORD => {
                let len = 1 + run(&rest[1..], WORD | DIGIT);
                if rest.get(len) == Some(&b'$') {
                    // `$` continues an identifier (`a$1` is one name).
                    return false;
                }
                let word = &rest[..len];
                if first {
                    first = false;
                    match kind(word) {
                        Some(is_insert) => insert = is_insert,
                        None => return false,
                    }
                } else if (len == 4 && word.eq_ignore_ascii_case(b"into") && !insert)
                    || (len >= 3 && word[..3].eq_ignore_ascii_case(b"pg_"))
                {
                    return false;
                }
                len
            }
            // A number (`1e5` and `0x1F` run on as one).
            DIGIT if !first => run(rest, WORD | DIGIT),
            SPACE => 1 + run(&rest[1..], SPACE),
            PUNCT if !first => 1,
            OP if !first => {
                let len = run(rest, OP);
                if !matches!(&rest[..len], [_] | b"<=" | b">=" | b"<>") {
                    return false;
                }
                len
            }
            SEMI => {
                first = true;
                1
            }
            DOLLAR if !first && rest.get(1).is_some_and(u8::is_ascii_digit) => {
                let len = 1 + run(&rest[1..], DIGIT);
                if rest.get(len).is_some_and(|&b| class(b) == WORD) {
                    return false;
                }
                len
            }
            _ => return false,
        };
        rest = &rest[len..];
    }
    true
}

/// Some(is INSERT) for the statement kinds this pass proves plain.
fn kind(word: &[u8]) -> Option<bool> {
    let is = |k: &[u8]| word.eq_ignore_ascii_case(k);
    match word.len() {
        3 if is(b"end") => Some(false),
        5 if is(b"begin") => Some(false),
        6 if is(b"insert") => Some(true),
        6 if is(b"select") || is(b"update") || is(b"delete") || is(b"commit") => Some(false),
        8 if is(b"rollback") => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::plain;

    #[test]
    fn the_usual_statements_are_proven_plain() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
            "select 1",
            "BEGIN; UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = 3; END;",
            "UPDATE t SET a = $1 WHERE b <= $2 AND c <> 3",
            "INSERT INTO t VALUES",
            "COMMIT",
            "",
            " ; ;",
        ] {
            assert!(plain(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn anything_else_goes_to_the_lexer() {
        for sql in [
            "SELECT set_config('role', 'x', false)",
            "SELECT 1 INTO t",
            "SELECT * FROM pg_temp.t",
            "SET role x",
            "SELECT 1 /* c */",
            "SELECT 1 -- c",
            "SELECT U&\"x\"",
            "SELECT $$x$$",
            "SELECT 1 <<< 2",
            "SELECT 1; LISTEN c",
            "DO x",
            "1 SELECT",
            "SELECT é",
        ] {
            assert!(!plain(sql.as_bytes()), "{sql}");
        }
    }
}
