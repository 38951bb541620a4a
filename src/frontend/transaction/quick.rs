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

/// Where the run of bytes in the classes of `mask` that starts at `i` ends.
#[inline]
fn run_end(s: &[u8], mut i: usize, mask: u8) -> usize {
    while i < s.len() && class(s[i]) & mask != 0 {
        i += 1;
    }
    i
}

/// `word` (at least 3 bytes of letters, digits and `_`) starts with `pg_`, in any case.
#[inline]
fn starts_pg(word: &[u8]) -> bool {
    (word[0] | 0x20) == b'p' && (word[1] | 0x20) == b'g' && word[2] == b'_'
}

/// `word` (4 bytes of letters, digits and `_`) is `into`, in any case. Setting bit 5 lowers
/// a letter and changes no digit; `_` becomes 0x7f, which is no letter.
#[inline]
fn is_into(word: &[u8]) -> bool {
    let w = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
    w | 0x2020_2020 == u32::from_le_bytes(*b"into")
}

/// True when `sql` is proven plain; false means "ask the lexer", not "not plain".
pub fn plain(sql: &[u8]) -> bool {
    let n = sql.len();
    let mut i = 0;
    // The next word starts a statement; the statement is an INSERT.
    let mut first = true;
    let mut insert = false;
    while i < n {
        let c = class(sql[i]);
        let end = match c {
            WORD => {
                let end = run_end(sql, i + 1, WORD | DIGIT);
                if end < n && sql[end] == b'$' {
                    // `$` continues an identifier (`a$1` is one name).
                    return false;
                }
                let word = &sql[i..end];
                if first {
                    first = false;
                    match kind(word) {
                        Some(is_insert) => insert = is_insert,
                        None => return false,
                    }
                } else if (word.len() == 4 && !insert && is_into(word))
                    || (word.len() >= 3 && starts_pg(word))
                {
                    return false;
                }
                end
            }
            // A number (`1e5` and `0x1F` run on as one).
            DIGIT if !first => run_end(sql, i + 1, WORD | DIGIT),
            SPACE => run_end(sql, i + 1, SPACE),
            PUNCT if !first => i + 1,
            OP if !first => {
                let end = run_end(sql, i + 1, OP);
                if !matches!(&sql[i..end], [_] | b"<=" | b">=" | b"<>") {
                    return false;
                }
                end
            }
            SEMI => {
                first = true;
                i + 1
            }
            DOLLAR if !first && i + 1 < n && sql[i + 1].is_ascii_digit() => {
                let end = run_end(sql, i + 1, DIGIT);
                if end < n && class(sql[end]) == WORD {
                    return false;
                }
                end
            }
            _ => return false,
        };
        i = end;
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
            "SELECT _nto, int0, inta, pg FROM p_g",
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
            "SELECT 1 iNtO t",
            "SELECT * FROM PG_class",
            "SELECT * FROM Pg_x",
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
