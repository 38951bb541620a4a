//! Backend and frontend messages rotagate writes itself (errors, startup replies, internal
//! queries). Everything is appended to a caller-owned buffer.

use bytes::{BufMut, Bytes, BytesMut};

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
    error_detail(buf, severity, code, message, None);
}

/// ErrorResponse with a DETAIL field too.
pub fn error_detail(
    buf: &mut BytesMut,
    severity: &str,
    code: &str,
    message: &str,
    detail: Option<&str>,
) {
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
    if let Some(d) = detail {
        buf.put_u8(b'D');
        put_cstr(buf, d);
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
    query_bytes(buf, sql.as_bytes());
}

/// Query ('Q') of text in the client's encoding, which need not be UTF-8.
pub fn query_bytes(buf: &mut BytesMut, sql: &[u8]) {
    let at = begin(buf, b'Q');
    buf.put_slice(sql);
    buf.put_u8(0);
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

/// A message of `tag` with `body` as it is (a server message rotagate held and sends on).
pub fn message(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    let at = begin(buf, tag);
    buf.put_slice(body);
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

/// The fields of an ErrorResponse/NoticeResponse body: (type byte, value), up to the
/// terminating NUL.
pub fn fields(body: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = body;
    std::iter::from_fn(move || {
        let (&field, tail) = rest.split_first()?;
        if field == 0 {
            return None;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        rest = tail.get(end + 1..).unwrap_or(&[]);
        Some((field, &tail[..end]))
    })
}

/// Whether an ErrorResponse/NoticeResponse body is whole: it ends with its terminator (a
/// body cut short ends inside a field, or right after one without the terminator).
pub fn complete(body: &[u8]) -> bool {
    body == [0] || body.ends_with(&[0, 0])
}

/// The head of an ErrorResponse/NoticeResponse body made whole: its fields (the last one as
/// far as it goes), each NUL-terminated, and the terminator.
pub fn whole_body(head: &[u8]) -> Bytes {
    if complete(head) {
        return Bytes::copy_from_slice(head);
    }
    let mut b = BytesMut::with_capacity(head.len() + 2);
    for (field, value) in fields(head) {
        b.put_u8(field);
        b.extend_from_slice(value);
        b.put_u8(0);
    }
    b.put_u8(0);
    b.freeze()
}

/// An ErrorResponse with a body's fields, `change` deciding each value (None: as it is).
fn error_from(buf: &mut BytesMut, body: &[u8], mut change: impl FnMut(u8) -> Option<String>) {
    let at = begin(buf, b'E');
    for (field, value) in fields(body) {
        buf.put_u8(field);
        match change(field) {
            Some(v) => put_cstr(buf, &v),
            None => {
                buf.put_slice(value);
                buf.put_u8(0);
            }
        }
    }
    buf.put_u8(0);
    finish(buf, at);
}

/// An ErrorResponse body's fields with the severity (both `S` and `V`) replaced: the server's
/// FATAL becomes an ERROR when the client's session outlives the upstream connection.
pub fn error_with_severity(buf: &mut BytesMut, body: &[u8], severity: &str) {
    error_from(buf, body, |f| {
        matches!(f, b'S' | b'V').then(|| severity.to_owned())
    });
}

/// An ErrorResponse body's fields with the message (`M`) replaced.
pub fn error_with_message(buf: &mut BytesMut, body: &[u8], message: &str) {
    error_from(buf, body, |f| (f == b'M').then(|| message.to_owned()));
}

/// The value of field `which` of an ErrorResponse/NoticeResponse body (empty when absent).
pub fn field(body: &[u8], which: u8) -> &[u8] {
    fields(body)
        .find(|(f, _)| *f == which)
        .map_or(&[][..], |(_, v)| v)
}

/// The non-localized severity of an ErrorResponse/NoticeResponse body (`V`, else `S`).
pub fn severity(body: &[u8]) -> &[u8] {
    match field(body, b'V') {
        b"" => field(body, b'S'),
        v => v,
    }
}

/// The SQLSTATE (`C`) of an ErrorResponse/NoticeResponse body.
pub fn code(body: &[u8]) -> &[u8] {
    field(body, b'C')
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
    let text = |f| String::from_utf8_lossy(field(body, f)).into_owned();
    (text(b'C'), text(b'M'))
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
        let mut renamed = BytesMut::new();
        error_with_message(&mut renamed, &out[5..], "another");
        assert_eq!(parse_error_fields(&renamed[5..]).1, "another");
        assert_eq!(severity(&renamed[5..]), b"ERROR");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }
}
