//! Splits the byte stream a PostgreSQL server sends into backend messages:
//! a one-byte type tag, an `Int32` length that counts itself but not the tag,
//! and the body.
//!
//! Invariants: a frame is returned only once all of it is buffered; its body
//! is split off the caller's `BytesMut` and frozen, so it shares the receive
//! buffer instead of being copied. A length below 4 or above the configured
//! maximum means the stream is desynchronised or hostile; the decoder then
//! reports the absolute stream offset of the bad header and refuses to go on
//! (the error repeats on every later call), because no later byte can be
//! trusted to be a message boundary.
//!
//! PostgreSQL reference: "Message Formats" (protocol-message-formats) and
//! "Messaging Overview" (protocol-overview).

use bytes::{Buf, Bytes, BytesMut};

/// One backend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Message type, e.g. `b'd'` for CopyData, `b'E'` for ErrorResponse.
    pub tag: u8,
    /// Everything after the length field.
    pub body: Bytes,
}

/// Why the stream cannot be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameErrorKind {
    /// The length field is smaller than itself.
    #[error("message length {length} is below the minimum of 4")]
    LengthTooShort {
        /// The length as sent.
        length: i32,
    },
    /// The length field exceeds the configured maximum.
    #[error("message length {length} exceeds the configured maximum of {max} bytes")]
    LengthTooLong {
        /// The length as sent.
        length: u64,
        /// The configured limit.
        max: usize,
    },
}

/// A framing failure; always fatal for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot frame the server's byte stream: message {tag:?} at stream byte {offset}: {kind}; \
     the connection is out of sync (or not talking to PostgreSQL): close it and reconnect, \
     and if a legitimate message is that large raise the frame size limit"
)]
pub struct FrameError {
    /// Absolute offset, from the first byte ever fed to this decoder, of the
    /// message's tag byte.
    pub offset: u64,
    /// The tag byte of the offending message, as a char for readability.
    pub tag: char,
    /// What was wrong.
    pub kind: FrameErrorKind,
}

impl FrameError {
    /// A desynchronised stream does not heal by retrying on it; a new
    /// connection is required, so this is fatal for the connection.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// Incremental backend message splitter.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_message_len: usize,
    consumed: u64,
    failed: Option<FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// The default limit on a message's length field: 1 GiB plus headroom,
    /// because a single CopyData can carry a row with a 1 GB field (the
    /// largest `varlena`) and the server never sends anything larger.
    pub const DEFAULT_MAX_MESSAGE_LEN: usize = (1 << 30) + (1 << 20);

    /// A decoder with [`DEFAULT_MAX_MESSAGE_LEN`](Self::DEFAULT_MAX_MESSAGE_LEN).
    pub fn new() -> Self {
        Self::with_max_message_len(Self::DEFAULT_MAX_MESSAGE_LEN)
    }

    /// A decoder that rejects length fields above `max` (minimum 4).
    pub fn with_max_message_len(max: usize) -> Self {
        FrameDecoder {
            max_message_len: max.max(4),
            consumed: 0,
            failed: None,
        }
    }

    /// Bytes consumed so far, i.e. the stream offset of the next frame.
    pub fn stream_offset(&self) -> u64 {
        self.consumed
    }

    /// Splits one complete message off the front of `buf`, or returns
    /// `Ok(None)` (consuming nothing) if it is not complete yet.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let Some(&[tag, l0, l1, l2, l3]) = buf.get(..5) else {
            return Ok(None);
        };
        let length = i32::from_be_bytes([l0, l1, l2, l3]);
        let fail = |kind| FrameError {
            offset: self.consumed,
            tag: char::from(tag),
            kind,
        };
        let body_len = match usize::try_from(length) {
            Ok(len) if len < 4 => {
                let err = fail(FrameErrorKind::LengthTooShort { length });
                self.failed = Some(err);
                return Err(err);
            }
            Err(_) => {
                let err = fail(FrameErrorKind::LengthTooShort { length });
                self.failed = Some(err);
                return Err(err);
            }
            Ok(len) if len > self.max_message_len => {
                let err = fail(FrameErrorKind::LengthTooLong {
                    length: u64::from(length.unsigned_abs()),
                    max: self.max_message_len,
                });
                self.failed = Some(err);
                return Err(err);
            }
            Ok(len) => len - 4,
        };
        let total = 5 + body_len;
        if buf.len() < total {
            // Make room for the rest once, instead of growing in steps as
            // the socket trickles it in. Capped so a large (but legal)
            // length cannot make us allocate before the bytes exist.
            buf.reserve((total - buf.len()).min(1 << 20));
            return Ok(None);
        }
        buf.advance(5);
        let body = buf.split_to(body_len).freeze();
        self.consumed = self.consumed.saturating_add(total as u64);
        Ok(Some(Frame { tag, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_complete_frames_and_waits_for_partial_ones() {
        let mut dec = FrameDecoder::new();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"Z\x00\x00\x00\x05Id\x00\x00\x00\x07ab");
        let f = dec.decode(&mut buf).expect("ok").expect("frame");
        assert_eq!((f.tag, &f.body[..]), (b'Z', &b"I"[..]));
        assert_eq!(dec.stream_offset(), 6);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert_eq!(buf.len(), 7, "an incomplete frame is left in place");
        buf.extend_from_slice(b"c");
        let f = dec.decode(&mut buf).expect("ok").expect("frame");
        assert_eq!((f.tag, &f.body[..]), (b'd', &b"abc"[..]));
        assert!(buf.is_empty());
        assert_eq!(dec.stream_offset(), 14);
        assert_eq!(dec.decode(&mut buf), Ok(None));
    }

    #[test]
    fn empty_body_and_short_header() {
        let mut dec = FrameDecoder::new();
        let mut buf = BytesMut::from(&b"c\x00\x00\x00"[..]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"\x04");
        let f = dec.decode(&mut buf).expect("ok").expect("frame");
        assert_eq!(
            f,
            Frame {
                tag: b'c',
                body: Bytes::new()
            }
        );
    }

    #[test]
    fn body_shares_the_receive_buffer() {
        let mut dec = FrameDecoder::new();
        let mut buf = BytesMut::from(&b"d\x00\x00\x00\x08wxyz"[..]);
        let base = buf.as_ptr();
        let f = dec.decode(&mut buf).expect("ok").expect("frame");
        assert_eq!(f.body.as_ptr(), base.wrapping_add(5));
    }

    #[test]
    fn rejects_short_and_negative_lengths_with_offset() {
        for (len, bytes) in [
            (3, *b"\x00\x00\x00\x03"),
            (-1, *b"\xff\xff\xff\xff"),
            (0, [0; 4]),
        ] {
            let mut dec = FrameDecoder::new();
            let mut buf = BytesMut::from(&b"Z\x00\x00\x00\x05I"[..]);
            buf.extend_from_slice(b"d");
            buf.extend_from_slice(&bytes);
            assert!(dec.decode(&mut buf).expect("first ok").is_some());
            let err = dec.decode(&mut buf).expect_err("bad length");
            assert_eq!(err.offset, 6);
            assert_eq!(err.tag, 'd');
            assert_eq!(err.kind, FrameErrorKind::LengthTooShort { length: len });
            assert!(!err.is_transient());
            // Poisoned: the same error again, even if more bytes arrive.
            buf.extend_from_slice(b"Z\x00\x00\x00\x05I");
            assert_eq!(dec.decode(&mut buf), Err(err));
        }
    }

    #[test]
    fn rejects_absurd_lengths() {
        let mut dec = FrameDecoder::with_max_message_len(16);
        let mut buf = BytesMut::from(&b"d\x00\x00\x00\x11"[..]);
        let err = dec.decode(&mut buf).expect_err("too long");
        assert_eq!(
            err.kind,
            FrameErrorKind::LengthTooLong {
                length: 17,
                max: 16
            }
        );
        assert!(err.to_string().contains("reconnect"));
        let mut dec = FrameDecoder::with_max_message_len(16);
        let mut buf = BytesMut::from(&b"d\x00\x00\x00\x10"[..]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        let mut dec = FrameDecoder::new();
        let mut buf = BytesMut::from(&b"d\x7f\xff\xff\xff"[..]);
        assert!(dec.decode(&mut buf).is_err());
    }
}
