//! The PostgreSQL wire format as rotagate needs it: building the few backend messages rotagate
//! itself sends ([`msg`]), reading whole messages during startup ([`read_message`]), and the
//! hot-path [`scan`]ner that finds message boundaries in relayed bytes without decoding bodies.
//! No sockets are owned here; no policy lives here.

pub mod msg;
pub mod scan;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Type byte plus length field.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("message of {0} bytes is larger than the limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

/// One whole message: its type byte and body (without the length field).
pub struct Message {
    pub tag: u8,
    pub body: BytesMut,
}

/// Reads one complete typed message into `buf` (which may already hold bytes) and splits it off.
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Message, WireError> {
    loop {
        if buf.len() >= HEADER_LEN {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if len < 4 {
                return Err(WireError::Malformed("length below 4"));
            }
            if len > max {
                return Err(WireError::TooLarge(len));
            }
            if buf.len() > len {
                let mut frame = buf.split_to(len + 1);
                let tag = frame[0];
                frame.advance(HEADER_LEN);
                return Ok(Message { tag, body: frame });
            }
            buf.reserve(len + 1 - buf.len());
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(WireError::Closed);
        }
    }
}

/// Reads a NUL-terminated string from the front of `body`.
pub fn get_cstr(body: &mut BytesMut) -> Result<String, WireError> {
    let end = body
        .iter()
        .position(|b| *b == 0)
        .ok_or(WireError::Malformed("unterminated string"))?;
    let s = String::from_utf8_lossy(&body[..end]).into_owned();
    body.advance(end + 1);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_split_messages_and_refuses_oversized() {
        let mut data: &[u8] = b"Z\0\0\0\x05IQ\0\0\0\x08abcd";
        let mut buf = BytesMut::new();
        let m = read_message(&mut data, &mut buf, 1024).await.unwrap();
        assert_eq!((m.tag, &m.body[..]), (b'Z', &b"I"[..]));
        let m = read_message(&mut data, &mut buf, 1024).await.unwrap();
        assert_eq!((m.tag, &m.body[..]), (b'Q', &b"abcd"[..]));
        assert!(matches!(
            read_message(&mut data, &mut buf, 1024).await,
            Err(WireError::Closed)
        ));
        let mut big: &[u8] = b"Q\x7f\0\0\0";
        assert!(matches!(
            read_message(&mut big, &mut BytesMut::new(), 1024).await,
            Err(WireError::TooLarge(_))
        ));
    }
}
