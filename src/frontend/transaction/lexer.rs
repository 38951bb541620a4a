//! SQL read with PostgreSQL's lexical rules (`src/backend/parser/scan.l`), for the classifier
//! and for names: whitespace and comments (`--` to the end of the line, nested `/* */`),
//! identifiers (unquoted ones folded to lower case; `"..."` with `""`; `U&"..."` with Unicode
//! escapes and `UESCAPE`), string constants (`'...'` with `''`, where backslashes are literal
//! under `standard_conforming_strings` and escapes otherwise; `E'...'` with backslash escapes;
//! `U&'...'`; `N'...'`, `B'...'`, `X'...'`; adjacent constants separated by a newline are one),
//! dollar-quoted strings with or without a tag, parameters (`$1`), numbers and operators.
//!
//! It never fails: what it cannot read (an unterminated quote or comment, an escape it cannot
//! decode) ends the text with [`Token::Unreadable`], and the classifier treats that as what it
//! cannot prove plain.

/// One token. Names and strings are decoded; keywords are identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// An identifier or keyword: unquoted ones folded to lower case. `quoted` tells `"select"`
    /// (a name) from `select` (a keyword).
    Ident {
        name: Vec<u8>,
        quoted: bool,
    },
    /// A string constant's value (bit strings and dollar quotes too).
    Str(Vec<u8>),
    /// A string constant longer than [`STR_CAP`]: its value is not kept (a 60 MiB literal
    /// would be copied whole). Only names are looked for in strings, and no name is that long.
    LongStr,
    /// `$n`.
    Param,
    Number,
    /// An operator or punctuation: `;`, `(`, `)`, `,`, `.`, `::`, `=`, ...
    Op(Vec<u8>),
    /// What follows could not be read.
    Unreadable,
}

impl Token {
    /// An unquoted word equal to `keyword` (lower case).
    pub fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self, Token::Ident { name, quoted: false } if name == keyword.as_bytes())
    }

    pub fn is_op(&self, op: &str) -> bool {
        matches!(self, Token::Op(o) if o == op.as_bytes())
    }
}

/// The longest string constant whose value a token keeps.
pub const STR_CAP: usize = 4096;

/// A string token for `value`, which holds at most `STR_CAP + 1` bytes of it.
fn str_token(value: Vec<u8>) -> Token {
    if value.len() > STR_CAP {
        Token::LongStr
    } else {
        Token::Str(value)
    }
}

/// Appends `b` to a quoted run's value while it is short enough to keep.
fn keep(out: &mut Vec<u8>, b: u8, cap: bool) {
    if !cap || out.len() <= STR_CAP {
        out.push(b);
    }
}

/// The tokens of `sql`. `standard_strings`: the session's `standard_conforming_strings`.
pub fn lex(sql: &[u8], standard_strings: bool) -> Vec<Token> {
    spans(sql, standard_strings)
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

/// The tokens of `sql`, each with where it is in the text.
pub fn spans(sql: &[u8], standard_strings: bool) -> Vec<(Token, std::ops::Range<usize>)> {
    let mut lx = Lexer {
        s: sql,
        at: 0,
        standard_strings,
    };
    let mut out = Vec::new();
    loop {
        if !lx.blank() {
            out.push((Token::Unreadable, lx.at..sql.len()));
            break;
        }
        let from = lx.at;
        let Some(t) = lx.next() else { break };
        let end = t == Token::Unreadable;
        out.push((t, from..lx.at));
        if end {
            break;
        }
    }
    out
}

struct Lexer<'a> {
    s: &'a [u8],
    at: usize,
    standard_strings: bool,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'\x0b')
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn ident_cont(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Characters PostgreSQL's operators are made of.
fn op_char(b: u8) -> bool {
    b"~!@#^&|`?+-*/%<>=".contains(&b)
}

impl Lexer<'_> {
    fn peek(&self, k: usize) -> Option<u8> {
        self.s.get(self.at + k).copied()
    }

    fn starts(&self, p: &[u8]) -> bool {
        self.s[self.at..].starts_with(p)
    }

    fn starts_ci(&self, p: &[u8]) -> bool {
        self.s
            .get(self.at..self.at + p.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(p))
    }

    /// Skips whitespace and comments; false when a block comment never ends.
    fn blank(&mut self) -> bool {
        loop {
            while self.peek(0).is_some_and(is_space) {
                self.at += 1;
            }
            if self.starts(b"--") {
                while self.peek(0).is_some_and(|b| b != b'\n' && b != b'\r') {
                    self.at += 1;
                }
            } else if self.starts(b"/*") {
                let mut depth = 0;
                loop {
                    if self.starts(b"/*") {
                        depth += 1;
                        self.at += 2;
                    } else if self.starts(b"*/") {
                        depth -= 1;
                        self.at += 2;
                        if depth == 0 {
                            break;
                        }
                    } else if self.peek(0).is_some() {
                        self.at += 1;
                    } else {
                        return false;
                    }
                }
            } else {
                return true;
            }
        }
    }

    fn next(&mut self) -> Option<Token> {
        if !self.blank() {
            return Some(Token::Unreadable);
        }
        let b = self.peek(0)?;
        Some(match b {
            b'\'' => self.string(false),
            b'"' => self.quoted_ident(),
            b'$' => self.dollar(),
            b'0'..=b'9' => self.number(),
            b'.' if self.peek(1).is_some_and(|c| c.is_ascii_digit()) => self.number(),
            b'U' | b'u'
                if self.peek(1) == Some(b'&') && matches!(self.peek(2), Some(b'\'' | b'"')) =>
            {
                self.at += 2;
                self.unicode()
            }
            b'E' | b'e' if self.peek(1) == Some(b'\'') => {
                self.at += 1;
                self.string(true)
            }
            b'N' | b'n' | b'B' | b'b' | b'X' | b'x' if self.peek(1) == Some(b'\'') => {
                self.at += 1;
                self.string(false)
            }
            _ if ident_start(b) => self.word(),
            _ => self.op(),
        })
    }

    fn word(&mut self) -> Token {
        let from = self.at;
        while self.peek(0).is_some_and(ident_cont) {
            self.at += 1;
        }
        Token::Ident {
            name: self.s[from..self.at].to_ascii_lowercase(),
            quoted: false,
        }
    }

    fn number(&mut self) -> Token {
        while self
            .peek(0)
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
        {
            // `1..10` is two numbers and an operator in PostgreSQL; the classifier does not care.
            self.at += 1;
        }
        Token::Number
    }

    fn op(&mut self) -> Token {
        let from = self.at;
        let b = self.s[self.at];
        self.at += 1;
        if b == b':' && self.peek(0) == Some(b':') {
            self.at += 1;
        } else if op_char(b) {
            // An operator runs on, but a comment start ends it.
            while self
                .peek(0)
                .is_some_and(|c| op_char(c) && !self.starts(b"--") && !self.starts(b"/*"))
            {
                self.at += 1;
            }
        }
        Token::Op(self.s[from..self.at].to_vec())
    }

    /// `"..."` with `""` for a quote; an empty one is an error in PostgreSQL.
    fn quoted_ident(&mut self) -> Token {
        match self.quoted(b'"') {
            Some(name) if !name.is_empty() => Token::Ident { name, quoted: true },
            _ => Token::Unreadable,
        }
    }

    /// The body of a quoted run starting at the opening `q`, with doubled quotes undone.
    /// A string's value (`q` is `'`) is kept only up to `STR_CAP + 1` bytes.
    fn quoted(&mut self, q: u8) -> Option<Vec<u8>> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let b = self.peek(0)?;
            self.at += 1;
            if b == q {
                if self.peek(0) == Some(q) {
                    self.at += 1;
                } else {
                    return Some(out);
                }
            }
            keep(&mut out, b, q == b'\'');
        }
    }

    /// A string constant at its quote: `escapes` for `E'...'` (or any under
    /// `standard_conforming_strings = off`). Constants separated by whitespace holding a
    /// newline continue it.
    fn string(&mut self, escapes: bool) -> Token {
        let escapes = escapes || !self.standard_strings;
        let mut value = Vec::new();
        loop {
            let Some(part) = self.string_part(escapes) else {
                return Token::Unreadable;
            };
            if value.len() <= STR_CAP {
                value.extend_from_slice(&part);
            }
            let save = self.at;
            let mut newline = false;
            while let Some(b) = self.peek(0).filter(|b| is_space(*b)) {
                newline |= b == b'\n' || b == b'\r';
                self.at += 1;
            }
            if !(newline && self.peek(0) == Some(b'\'')) {
                self.at = save;
                return str_token(value);
            }
        }
    }

    fn string_part(&mut self, escapes: bool) -> Option<Vec<u8>> {
        if !escapes {
            return self.quoted(b'\'');
        }
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let b = self.peek(0)?;
            self.at += 1;
            match b {
                b'\'' if self.peek(0) == Some(b'\'') => {
                    self.at += 1;
                    keep(&mut out, b'\'', true);
                }
                b'\'' => return Some(out),
                b'\\' => {
                    self.escape(&mut out)?;
                    out.truncate(STR_CAP + 1);
                }
                _ => keep(&mut out, b, true),
            }
        }
    }

    /// One backslash escape of an `E'...'` string, after the backslash.
    fn escape(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let b = self.peek(0)?;
        self.at += 1;
        match b {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'0'..=b'7' => {
                let mut v = u32::from(b - b'0');
                for _ in 0..2 {
                    match self.peek(0) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            self.at += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if self.peek(0).is_some_and(|d| d.is_ascii_hexdigit()) => {
                let v = self.hex(2, false)?;
                out.push(v as u8);
            }
            b'u' => push_char(out, self.hex(4, true)?)?,
            b'U' => push_char(out, self.hex(8, true)?)?,
            other => out.push(other),
        }
        Some(())
    }

    /// Up to `n` hex digits (exactly `n` when `exact`).
    fn hex(&mut self, n: usize, exact: bool) -> Option<u32> {
        let mut v = 0u32;
        let mut got = 0;
        while got < n {
            match self.peek(0).and_then(|d| (d as char).to_digit(16)) {
                Some(d) => {
                    v = v.checked_mul(16)? + d;
                    self.at += 1;
                    got += 1;
                }
                None => break,
            }
        }
        (got == n || (!exact && got > 0)).then_some(v)
    }

    /// `U&'...'` or `U&"..."` (the `U&` read), with an optional `UESCAPE 'c'` after it.
    fn unicode(&mut self) -> Token {
        let ident = self.peek(0) == Some(b'"');
        let Some(raw) = self.quoted(if ident { b'"' } else { b'\'' }) else {
            return Token::Unreadable;
        };
        let save = self.at;
        let mut escape = b'\\';
        if self.blank() && self.starts_ci(b"uescape") {
            self.at += 7;
            if !self.blank() || self.peek(0) != Some(b'\'') {
                return Token::Unreadable;
            }
            match self.quoted(b'\'') {
                Some(c)
                    if c.len() == 1
                        && !c[0].is_ascii_hexdigit()
                        && !b"+'\" \t\n\r".contains(&c[0]) =>
                {
                    escape = c[0]
                }
                _ => return Token::Unreadable,
            }
        } else {
            self.at = save;
        }
        if !ident && raw.len() > STR_CAP {
            return Token::LongStr;
        }
        match decode_unicode(&raw, escape) {
            Some(v) if ident && v.is_empty() => Token::Unreadable,
            Some(v) if ident => Token::Ident {
                name: v,
                quoted: true,
            },
            Some(v) => str_token(v),
            None => Token::Unreadable,
        }
    }

    /// `$n`, or a dollar-quoted string `$tag$...$tag$`.
    fn dollar(&mut self) -> Token {
        if self.peek(1).is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
            while self.peek(0).is_some_and(|b| b.is_ascii_digit()) {
                self.at += 1;
            }
            return Token::Param;
        }
        let from = self.at;
        let mut end = self.at + 1;
        if self.s.get(end).is_some_and(|b| ident_start(*b)) {
            while self
                .s
                .get(end)
                .is_some_and(|b| ident_cont(*b) && *b != b'$')
            {
                end += 1;
            }
        }
        if self.s.get(end) != Some(&b'$') {
            self.at += 1;
            return Token::Op(b"$".to_vec());
        }
        let tag = &self.s[from..=end];
        let body = end + 1;
        match memchr::memmem::find(&self.s[body..], tag) {
            Some(len) => {
                self.at = body + len + tag.len();
                if len > STR_CAP {
                    Token::LongStr
                } else {
                    Token::Str(self.s[body..body + len].to_vec())
                }
            }
            None => {
                self.at = self.s.len();
                Token::Unreadable
            }
        }
    }
}

/// Encodes code point `c` as UTF-8.
fn push_char(out: &mut Vec<u8>, c: u32) -> Option<()> {
    let ch = char::from_u32(c)?;
    let mut buf = [0u8; 4];
    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    Some(())
}

/// The value of a `U&` string or identifier body: `<esc>XXXX`, `<esc>+XXXXXX`, `<esc><esc>`.
fn decode_unicode(raw: &[u8], escape: u8) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != escape {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        if raw.get(i + 1) == Some(&escape) {
            out.push(escape);
            i += 2;
            continue;
        }
        let (start, n) = if raw.get(i + 1) == Some(&b'+') {
            (i + 2, 6)
        } else {
            (i + 1, 4)
        };
        let digits = raw.get(start..start + n)?;
        let text = std::str::from_utf8(digits).ok()?;
        let c = u32::from_str_radix(text, 16).ok()?;
        push_char(&mut out, c)?;
        i = start + n;
    }
    Some(out)
}

#[cfg(test)]
#[path = "lexer_tests.rs"]
mod tests;
