//! One event, one log line. Text logs carry strings a client chose (a user name, a database
//! name, an error's text), and a newline in one of them would start a line of its own that a
//! log reader takes for rotagate's. This writer escapes every control character in an event
//! except the newline that ends it. JSON logs are escaped by their encoder already.

use std::io::{self, Write};

/// A `MakeWriter` for tracing-subscriber: every event is formatted into one buffer and written
/// with one `write_all`, so each write here is one whole event.
#[derive(Clone, Copy, Default)]
pub struct Escaped;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Escaped {
    type Writer = EscapedWriter;

    fn make_writer(&'a self) -> Self::Writer {
        EscapedWriter
    }
}

pub struct EscapedWriter;

impl Write for EscapedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let line = escape_line(buf);
        io::stderr().lock().write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// `buf` with each control character but a final newline written as `\n`, `\r`, `\t` or
/// `\xNN`, so it stays one line.
pub fn escape_line(buf: &[u8]) -> Vec<u8> {
    let (body, end) = match buf.strip_suffix(b"\n") {
        Some(b) => (b, &b"\n"[..]),
        None => (buf, &b""[..]),
    };
    if !body.iter().any(|&b| needs_escape(b)) {
        return buf.to_vec();
    }
    let mut out = Vec::with_capacity(buf.len() + 16);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b if needs_escape(b) => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            b => out.push(b),
        }
    }
    out.extend_from_slice(end);
    out
}

fn needs_escape(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

#[cfg(test)]
mod tests {
    use super::escape_line;

    #[test]
    fn a_newline_inside_an_event_does_not_start_a_line() {
        let out = escape_line(b"login refused user=evil\nFAKE LOG LINE\n");
        assert_eq!(out, b"login refused user=evil\\nFAKE LOG LINE\n");
        assert_eq!(escape_line(b"a\r\x1b[31mb\n"), b"a\\r\\x1b[31mb\n");
        assert_eq!(escape_line(b"plain\tline\n"), b"plain\tline\n");
        assert_eq!(escape_line(b"no end"), b"no end");
    }
}
