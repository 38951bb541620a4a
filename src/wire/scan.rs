//! Finds message boundaries in a byte stream that is being relayed. Bodies are skipped, not
//! decoded; only messages the caller asks for whole (a few tiny ones such as ReadyForQuery and
//! ParameterStatus) are held until complete. The scanner never copies or allocates.

use super::{HEADER_LEN, WireError};

/// What the caller does with a message the scanner found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Pass it on and keep scanning.
    Forward,
    /// Stop before this message: it is not forwarded and the scan position stays in front of it.
    Stop,
}

/// Scan state carried across reads: how much of the current message body is still to pass.
#[derive(Debug, Default)]
pub struct Scanner {
    left: usize,
}

impl Scanner {
    /// True when the scan is between messages (no body partly passed).
    pub fn at_boundary(&self) -> bool {
        self.left == 0
    }

    /// Scans `buf` and returns how many bytes from its start may be forwarded. For each message
    /// start, `on(tag, body)` decides; `body` is the whole body when `whole(tag)` is true and
    /// empty otherwise. Bytes of a header not yet complete stay unscanned.
    pub fn scan(
        &mut self,
        buf: &[u8],
        max_len: usize,
        whole: impl Fn(u8) -> bool,
        mut on: impl FnMut(u8, &[u8]) -> Step,
    ) -> Result<usize, WireError> {
        let mut pos = 0;
        loop {
            if self.left > 0 {
                let n = self.left.min(buf.len() - pos);
                pos += n;
                self.left -= n;
                if self.left > 0 {
                    return Ok(pos);
                }
            }
            if buf.len() - pos < HEADER_LEN {
                return Ok(pos);
            }
            let tag = buf[pos];
            let len = u32::from_be_bytes([buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]])
                as usize;
            if len < 4 {
                return Err(WireError::Malformed("length below 4"));
            }
            if len > max_len {
                return Err(WireError::TooLarge(len));
            }
            if whole(tag) {
                let end = pos + 1 + len;
                if buf.len() < end {
                    return Ok(pos);
                }
                if on(tag, &buf[pos + HEADER_LEN..end]) == Step::Stop {
                    return Ok(pos);
                }
                pos = end;
            } else {
                if on(tag, &[]) == Step::Stop {
                    return Ok(pos);
                }
                pos += HEADER_LEN;
                self.left = len - 4;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<u8> {
        let mut v = b"D\0\0\0\x0aabcdef".to_vec();
        v.extend_from_slice(b"C\0\0\0\x05x");
        v.extend_from_slice(b"Z\0\0\0\x05I");
        v
    }

    #[test]
    fn finds_every_boundary_whatever_the_split() {
        let all = msgs();
        for split in 0..=all.len() {
            let mut s = Scanner::default();
            let mut seen = Vec::new();
            let mut fwd = 0;
            let mut held: Vec<u8> = Vec::new();
            for chunk in [&all[..split], &all[split..]] {
                held.extend_from_slice(chunk);
                let n = s
                    .scan(
                        &held,
                        1 << 20,
                        |t| t == b'Z',
                        |t, body| {
                            seen.push((t, body.to_vec()));
                            Step::Forward
                        },
                    )
                    .unwrap();
                fwd += n;
                held.drain(..n);
            }
            assert_eq!(fwd, all.len(), "split at {split}");
            assert_eq!(seen.iter().map(|m| m.0).collect::<Vec<_>>(), b"DCZ");
            assert_eq!(seen[2].1, b"I");
            assert!(s.at_boundary());
        }
    }

    #[test]
    fn stop_leaves_the_message_unscanned() {
        let all = msgs();
        let mut s = Scanner::default();
        let n = s
            .scan(
                &all,
                1 << 20,
                |_| false,
                |t, _| if t == b'C' { Step::Stop } else { Step::Forward },
            )
            .unwrap();
        assert_eq!(n, 11);
        assert!(s.at_boundary());
    }

    #[test]
    fn refuses_oversized_and_malformed_lengths() {
        let mut s = Scanner::default();
        assert!(matches!(
            s.scan(b"Q\x40\0\0\0", 1024, |_| false, |_, _| Step::Forward),
            Err(WireError::TooLarge(_))
        ));
        assert!(matches!(
            s.scan(b"Q\0\0\0\x02", 1024, |_| false, |_, _| Step::Forward),
            Err(WireError::Malformed(_))
        ));
    }
}
