//! Backend and frontend messages rotagate writes itself (errors, startup replies, internal
//! queries). Everything is appended to a caller-owned buffer.

use bytes::{BufMut, BytesMut};

fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    at
}

fn finish(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

/// ErrorResponse with severity, SQLSTATE and message, as PostgreSQL writes them.
pub fn error(buf: &mut BytesMut, severity: &str, code: &str, message: &str) {
    let at = begin(buf, b'E');
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        buf.put_u8(field);
        put_cstr(buf, value);
    }
    buf.put_u8(0);
    finish(buf, at);
}

pub fn auth_ok(buf: &mut BytesMut) {
    let at = begin(buf, b'R');
    buf.put_u32(0);
    finish(buf, at);
}

/// AuthenticationSASL offering SCRAM-SHA-256.
pub fn auth_sasl(buf: &mut BytesMut) {
    let at = begin(buf, b'R');
    buf.put_u32(10);
    put_cstr(buf, "SCRAM-SHA-256");
    buf.put_u8(0);
    finish(buf, at);
}

/// AuthenticationSASLContinue (11) or AuthenticationSASLFinal (12) with its data.
pub fn auth_sasl_data(buf: &mut BytesMut, kind: u32, data: &[u8]) {
    let at = begin(buf, b'R');
    buf.put_u32(kind);
    buf.put_slice(data);
    finish(buf, at);
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let at = begin(buf, b'S');
    put_cstr(buf, name);
    put_cstr(buf, value);
    finish(buf, at);
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, key: i32) {
    let at = begin(buf, b'K');
    buf.put_i32(pid);
    buf.put_i32(key);
    finish(buf, at);
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    let at = begin(buf, b'Z');
    buf.put_u8(status);
    finish(buf, at);
}

/// A simple-protocol Query ('Q').
pub fn query(buf: &mut BytesMut, sql: &str) {
    let at = begin(buf, b'Q');
    put_cstr(buf, sql);
    finish(buf, at);
}

/// Parse ('P'): `name`, then the rest of a Parse body as a client sent it (query text, NUL,
/// parameter type count and OIDs).
pub fn parse(buf: &mut BytesMut, name: &[u8], tail: &[u8]) {
    let at = begin(buf, b'P');
    buf.put_slice(name);
    buf.put_u8(0);
    buf.put_slice(tail);
    finish(buf, at);
}

/// Describe ('D') or Close ('C') of a statement (`kind` b'S') or portal (b'P').
pub fn describe_or_close(buf: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    let at = begin(buf, tag);
    buf.put_u8(kind);
    buf.put_slice(name);
    buf.put_u8(0);
    finish(buf, at);
}

/// A message with an empty body: ParseComplete ('1'), CloseComplete ('3'), Sync ('S'), ...
pub fn empty(buf: &mut BytesMut, tag: u8) {
    let at = begin(buf, tag);
    finish(buf, at);
}

/// CommandComplete ('C') with its tag, such as `DEALLOCATE`.
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let at = begin(buf, b'C');
    put_cstr(buf, tag);
    finish(buf, at);
}

/// An ErrorResponse body's fields with the severity (both `S` and `V`) replaced: the server's
/// FATAL becomes an ERROR when the client's session outlives the upstream connection.
pub fn error_with_severity(buf: &mut BytesMut, body: &[u8], severity: &str) {
    let at = begin(buf, b'E');
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        buf.put_u8(field);
        match field {
            b'S' | b'V' => put_cstr(buf, severity),
            _ => {
                buf.put_slice(&tail[..end]);
                buf.put_u8(0);
            }
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    buf.put_u8(0);
    finish(buf, at);
}

/// The non-localized severity of an ErrorResponse/NoticeResponse body (`V`, else `S`).
pub fn severity(body: &[u8]) -> &[u8] {
    let mut found: &[u8] = b"";
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        match field {
            b'V' => return &tail[..end],
            b'S' => found = &tail[..end],
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    found
}

/// The SQLSTATE (`C`) of an ErrorResponse/NoticeResponse body.
pub fn code(body: &[u8]) -> &[u8] {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        if field == b'C' {
            return &tail[..end];
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    b""
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'value'` with embedded quotes doubled; backslashes are literal (standard_conforming_strings).
pub fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// Reads the SQLSTATE and message of an ErrorResponse/NoticeResponse body.
pub fn parse_error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match field {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_round_trips_through_the_field_parser() {
        let mut b = BytesMut::new();
        error(
            &mut b,
            "FATAL",
            "28P01",
            "password authentication failed for user \"app\"",
        );
        assert_eq!(b[0], b'E');
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert_eq!(len + 1, b.len());
        let (code, msg) = parse_error_fields(&b[5..]);
        assert_eq!(code, "28P01");
        assert!(msg.starts_with("password authentication failed"));
    }

    #[test]
    fn severity_is_read_and_replaced() {
        let mut b = BytesMut::new();
        error(&mut b, "FATAL", "57P01", "terminating connection");
        assert_eq!(severity(&b[5..]), b"FATAL");
        let mut out = BytesMut::new();
        error_with_severity(&mut out, &b[5..], "ERROR");
        assert_eq!(severity(&out[5..]), b"ERROR");
        let (code, msg) = parse_error_fields(&out[5..]);
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("57P01", "terminating connection")
        );
        let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }
}
