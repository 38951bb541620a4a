//! The lexer against PostgreSQL's lexical rules, case by case, and on random token soup.

use super::*;
use proptest::prelude::*;

fn lx(sql: &str) -> Vec<Token> {
    lex(sql.as_bytes(), true)
}

fn ident(name: &str, quoted: bool) -> Token {
    Token::Ident {
        name: name.as_bytes().to_vec(),
        quoted,
    }
}

fn s(v: &str) -> Token {
    Token::Str(v.as_bytes().to_vec())
}

fn op(o: &str) -> Token {
    Token::Op(o.as_bytes().to_vec())
}

#[test]
fn words_fold_and_quoted_names_do_not() {
    assert_eq!(
        lx("SELECT Set_Config, \"Set_Config\", \"a\"\"b\""),
        vec![
            ident("select", false),
            ident("set_config", false),
            op(","),
            ident("Set_Config", true),
            op(","),
            ident("a\"b", true),
        ]
    );
    assert_eq!(lx("\"\""), vec![Token::Unreadable], "a zero-length name");
    assert_eq!(
        lx("a$b _x1"),
        vec![ident("a$b", false), ident("_x1", false)]
    );
}

#[test]
fn comments_nest_and_end_lines() {
    assert_eq!(
        lx("se/* a /* b */ c */t -- set\nx"),
        vec![ident("se", false), ident("t", false), ident("x", false)]
    );
    assert_eq!(lx("/* never ends"), vec![Token::Unreadable]);
    assert_eq!(lx("a--b"), vec![ident("a", false)]);
    assert_eq!(lx("1+--x\n2"), vec![Token::Number, op("+"), Token::Number]);
}

#[test]
fn strings_and_their_escapes() {
    assert_eq!(lx("'it''s'"), vec![s("it's")]);
    assert_eq!(lx(r"'a\b'"), vec![s(r"a\b")], "standard_conforming_strings");
    assert_eq!(lex(br"'a\'b'", false), vec![s("a'b")]);
    assert_eq!(lx(r"E'a\'b\n\x41\101\u0042'"), vec![s("a'b\nAAB")]);
    assert_eq!(lx("e'\\\\'"), vec![s("\\")]);
    assert_eq!(
        lx("'a'\n  'b' 'c'"),
        vec![s("ab"), s("c")],
        "a newline joins constants"
    );
    assert_eq!(lx("N'x' B'101' X'ff'"), vec![s("x"), s("101"), s("ff")]);
    assert_eq!(lx("'open"), vec![Token::Unreadable]);
    assert_eq!(lx(r"E'\u12'"), vec![Token::Unreadable]);
}

#[test]
fn unicode_escapes_in_names_and_strings() {
    assert_eq!(lx(r#"U&"set\005fconfig""#), vec![ident("set_config", true)]);
    assert_eq!(
        lx(r#"u&"d!0061t!+000061" UESCAPE '!'"#),
        vec![ident("data", true)]
    );
    assert_eq!(lx(r"U&'\0041\\'"), vec![s("A\\")]);
    assert_eq!(
        lx("U&'x' uescape\n'*'"),
        vec![s("x")],
        "UESCAPE after whitespace"
    );
    assert_eq!(
        lx("U&'x' UESCAPE 'a'"),
        vec![Token::Unreadable],
        "a hex digit"
    );
    assert_eq!(lx(r"U&'\zzzz'"), vec![Token::Unreadable]);
    assert_eq!(lx("U & 'x'"), vec![ident("u", false), op("&"), s("x")]);
}

#[test]
fn dollar_quotes_parameters_and_operators() {
    assert_eq!(
        lx("$$ it's; $x$ $$ $f$SET a$f$ $1::int"),
        vec![
            s(" it's; $x$ "),
            s("SET a"),
            Token::Param,
            op("::"),
            ident("int", false),
        ]
    );
    assert_eq!(lx("$a$ open"), vec![Token::Unreadable]);
    assert_eq!(
        lx("a.b(1.5e3, .5) >= x;"),
        vec![
            ident("a", false),
            op("."),
            ident("b", false),
            op("("),
            Token::Number,
            op(","),
            Token::Number,
            op(")"),
            op(">="),
            ident("x", false),
            op(";"),
        ]
    );
    assert_eq!(
        lx("é"),
        vec![ident("é", false)],
        "non-ASCII letters start names"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any soup of SQL's lexical pieces lexes without panicking, and a text cut anywhere still
    /// lexes.
    #[test]
    fn token_soup_never_panics(
        parts in prop::collection::vec(prop::sample::select(vec![
            "SELECT", " ", "\n", "'", "''", "\"", "\"\"", "$$", "$a$", "$1", "/*", "*/", "--",
            "E'", "U&'", "U&\"", "UESCAPE", "\\", "\\u00", "+", "0041", ";", "(", ")", "é", "x",
            "\t", "::", ".", "1e5", "N'", "B'", "X'",
        ]), 0..40),
        cut in any::<prop::sample::Index>(),
    ) {
        let text: String = parts.concat();
        let _ = lex(text.as_bytes(), true);
        let _ = lex(text.as_bytes(), false);
        let bytes = text.as_bytes();
        let _ = lex(&bytes[..cut.index(bytes.len() + 1)], true);
    }
}

#[test]
fn a_long_string_keeps_no_value() {
    let long = "x".repeat(STR_CAP + 1);
    let short = "x".repeat(STR_CAP);
    for (sql, standard) in [
        (format!("SELECT '{long}', 1"), true),
        (format!("SELECT E'{long}', 1"), true),
        (format!("SELECT '{long}', 1"), false),
        (format!("SELECT $q${long}$q$, 1"), true),
        (format!("SELECT U&'{long}', 1"), true),
        (format!("SELECT 'x'\n'{long}', 1"), true),
    ] {
        let t = lex(sql.as_bytes(), standard);
        assert_eq!(t[1], Token::LongStr, "{}", &sql[..20]);
        assert!(
            t[2].is_op(",") && t[3] == Token::Number,
            "the text after it is read"
        );
    }
    let t = lex(format!("SELECT '{short}'").as_bytes(), true);
    assert_eq!(
        t[1],
        Token::Str(short.into_bytes()),
        "at the cap the value is kept"
    );
}
