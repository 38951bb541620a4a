//! Finding message boundaries in relayed bytes. [`header`] reads the 5-byte header at the front
//! of a buffer (type byte and length) without touching the body; callers decide per type whether
//! they need the whole body, a prefix of it, or none. Nothing here copies or allocates.

use super::{HEADER_LEN, WireError};

/// A message header: its type byte and the length of its body (the length field excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    pub body: usize,
}

impl Header {
    /// Header plus body.
    pub fn total(&self) -> usize {
        HEADER_LEN + self.body
    }
}

/// The header at the front of `buf`, or None while fewer than 5 bytes are there. A length field
/// below 4 is malformed; a message longer than `max` bytes (length field included, as
/// PostgreSQL counts it) is refused.
pub fn header(buf: &[u8], max: usize) -> Result<Option<Header>, WireError> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len < 4 {
        return Err(WireError::Malformed("length below 4"));
    }
    if len > max {
        return Err(WireError::TooLarge(len));
    }
    Ok(Some(Header {
        tag: h[0],
        body: len - 4,
    }))
}

/// The body of the message at the front of `buf` when it is all there.
pub fn whole(buf: &[u8], h: Header) -> Option<&[u8]> {
    buf.get(HEADER_LEN..h.total())
}

/// The end of the `n`th NUL-terminated string of `body` (the index just past its NUL), or None
/// when `body` does not hold that many.
pub fn cstr_end(body: &[u8], n: usize) -> Option<usize> {
    let mut at = 0;
    for _ in 0..n {
        at += body.get(at..)?.iter().position(|b| *b == 0)? + 1;
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_need_five_bytes_and_a_sane_length() {
        assert_eq!(header(b"Z\0\0\0", 100).unwrap(), None);
        let h = header(b"Z\0\0\0\x05I", 100).unwrap().unwrap();
        assert_eq!((h.tag, h.body, h.total()), (b'Z', 1, 6));
        assert_eq!(whole(b"Z\0\0\0\x05I", h), Some(&b"I"[..]));
        assert_eq!(whole(b"Z\0\0\0\x05", h), None);
        assert!(matches!(
            header(b"Q\x40\0\0\0", 1024),
            Err(WireError::TooLarge(_))
        ));
        assert!(matches!(
            header(b"Q\0\0\0\x02", 1024),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn finds_string_ends() {
        assert_eq!(cstr_end(b"ab\0c\0rest", 1), Some(3));
        assert_eq!(cstr_end(b"ab\0c\0rest", 2), Some(5));
        assert_eq!(cstr_end(b"ab\0c", 2), None);
        assert_eq!(cstr_end(b"", 0), Some(0));
    }
}
