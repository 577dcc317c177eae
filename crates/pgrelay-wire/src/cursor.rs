//! A bounds-checked reader over a `Bytes` buffer for PostgreSQL's
//! big-endian message data types, shared by every decoder in pgrelay.
//!
//! Invariants: no method panics or reads past the end; every failure carries
//! the offset (from the start of the buffer) of the field that could not be
//! read; length fields are signed on the wire and negative values are
//! rejected here rather than cast; byte strings come back as `Bytes` slices
//! of the input (`Bytes::slice`), never copies.
//!
//! PostgreSQL reference: "Message Data Types" (protocol-message-types).

use bytes::Bytes;

/// What went wrong reading a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CursorErrorKind {
    /// The buffer ended inside a field.
    #[error("the message ends early: {needed} more bytes needed for {field}, {available} left")]
    UnexpectedEnd {
        /// Field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A length prefix was negative where a length is required.
    #[error("{field} has negative length {length}")]
    NegativeLength {
        /// Field being read.
        field: &'static str,
        /// The length as sent.
        length: i64,
    },
    /// A NUL-terminated string had no terminator.
    #[error("{field} is not NUL-terminated")]
    MissingNul {
        /// Field being read.
        field: &'static str,
    },
    /// A string was not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Field being read.
        field: &'static str,
    },
    /// Bytes were left after the last field.
    #[error("{count} unexpected bytes after the end of the message")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

/// A field that could not be read, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {kind}")]
pub struct CursorError {
    /// Offset from the start of the buffer where the field starts (or, for
    /// invalid UTF-8, where the first invalid byte is).
    pub offset: usize,
    /// What was wrong.
    pub kind: CursorErrorKind,
}

impl CursorError {
    /// Malformed bytes stay malformed: fatal.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// Reads fields front to back from a shared buffer.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Starts at offset 0 of `buf`.
    #[inline]
    pub fn new(buf: &'a Bytes) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// Offset of the next unread byte.
    #[inline]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// An error of `kind` at `offset`.
    pub fn error_at(offset: usize, kind: CursorErrorKind) -> CursorError {
        CursorError { offset, kind }
    }

    #[inline]
    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CursorError> {
        let bytes = self
            .pos
            .checked_add(N)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or(CursorError {
                offset: self.pos,
                kind: CursorErrorKind::UnexpectedEnd {
                    field,
                    needed: N,
                    available: self.remaining(),
                },
            })?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        self.pos += N;
        Ok(out)
    }

    /// `Byte1` / `Int8`.
    #[inline]
    pub fn u8(&mut self, field: &'static str) -> Result<u8, CursorError> {
        self.take::<1>(field).map(|[b]| b)
    }

    /// Unsigned big-endian `Int16`.
    #[inline]
    pub fn u16(&mut self, field: &'static str) -> Result<u16, CursorError> {
        self.take(field).map(u16::from_be_bytes)
    }

    /// Signed big-endian `Int16`.
    #[inline]
    pub fn i16(&mut self, field: &'static str) -> Result<i16, CursorError> {
        self.take(field).map(i16::from_be_bytes)
    }

    /// Unsigned big-endian `Int32` (OIDs, xids).
    #[inline]
    pub fn u32(&mut self, field: &'static str) -> Result<u32, CursorError> {
        self.take(field).map(u32::from_be_bytes)
    }

    /// Signed big-endian `Int32`.
    #[inline]
    pub fn i32(&mut self, field: &'static str) -> Result<i32, CursorError> {
        self.take(field).map(i32::from_be_bytes)
    }

    /// Unsigned big-endian `Int64` (LSNs).
    #[inline]
    pub fn u64(&mut self, field: &'static str) -> Result<u64, CursorError> {
        self.take(field).map(u64::from_be_bytes)
    }

    /// Signed big-endian `Int64` (timestamps).
    #[inline]
    pub fn i64(&mut self, field: &'static str) -> Result<i64, CursorError> {
        self.take(field).map(i64::from_be_bytes)
    }

    /// A signed `Int16` count that must not be negative.
    #[inline]
    pub fn count_i16(&mut self, field: &'static str) -> Result<usize, CursorError> {
        let offset = self.pos;
        let n = self.i16(field)?;
        usize::try_from(n).map_err(|_| CursorError {
            offset,
            kind: CursorErrorKind::NegativeLength {
                field,
                length: i64::from(n),
            },
        })
    }

    /// A signed `Int32` length or count that must not be negative.
    #[inline]
    pub fn len_i32(&mut self, field: &'static str) -> Result<usize, CursorError> {
        let offset = self.pos;
        let n = self.i32(field)?;
        usize::try_from(n).map_err(|_| CursorError {
            offset,
            kind: CursorErrorKind::NegativeLength {
                field,
                length: i64::from(n),
            },
        })
    }

    /// The next `len` bytes as a slice of the input.
    #[inline]
    pub fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, CursorError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.buf.len())
            .ok_or(CursorError {
                offset: self.pos,
                kind: CursorErrorKind::UnexpectedEnd {
                    field,
                    needed: len,
                    available: self.remaining(),
                },
            })?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    /// Everything that is left, as a slice of the input.
    #[inline]
    pub fn rest(&mut self) -> Bytes {
        let out = self.buf.slice(self.pos.min(self.buf.len())..);
        self.pos = self.buf.len();
        out
    }

    /// A NUL-terminated `String` field without the terminator, as raw bytes.
    #[inline]
    pub fn cstr_bytes(&mut self, field: &'static str) -> Result<Bytes, CursorError> {
        let start = self.pos;
        let rest = self.buf.get(start..).unwrap_or_default();
        let len = rest.iter().position(|b| *b == 0).ok_or(CursorError {
            offset: start,
            kind: CursorErrorKind::MissingNul { field },
        })?;
        let out = self.buf.slice(start..start + len);
        self.pos = start + len + 1;
        Ok(out)
    }

    /// A NUL-terminated `String` field that must be UTF-8.
    #[inline]
    pub fn cstr(&mut self, field: &'static str) -> Result<pgrelay_types::ByteStr, CursorError> {
        let start = self.pos;
        let raw = self.cstr_bytes(field)?;
        pgrelay_types::ByteStr::from_utf8(raw).map_err(|e| CursorError {
            offset: start + e.valid_up_to(),
            kind: CursorErrorKind::InvalidUtf8 { field },
        })
    }

    /// Fails unless every byte has been consumed.
    #[inline]
    pub fn finish(&self) -> Result<(), CursorError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(CursorError {
                offset: self.pos,
                kind: CursorErrorKind::TrailingBytes { count },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_fields() {
        let buf = Bytes::from_static(
            b"\x01\x00\x02\xff\xff\xff\xfe\x00\x00\x00\x00\x00\x00\x00\x03ab\0rest",
        );
        let mut c = Cursor::new(&buf);
        assert_eq!(c.u8("a"), Ok(1));
        assert_eq!(c.u16("b"), Ok(2));
        assert_eq!(c.i32("c"), Ok(-2));
        assert_eq!(c.u64("d"), Ok(3));
        assert_eq!(c.cstr("e").map(|s| s.to_string()), Ok("ab".to_owned()));
        assert_eq!(c.position(), 18);
        let rest = c.rest();
        assert_eq!(&rest[..], b"rest");
        assert_eq!(rest.as_ptr(), buf[18..].as_ptr());
        assert_eq!(c.finish(), Ok(()));
        assert_eq!(c.rest().len(), 0);
    }

    #[test]
    fn short_buffer() {
        let buf = Bytes::from_static(b"\x00\x01\x02");
        let mut c = Cursor::new(&buf);
        assert_eq!(c.u8("x"), Ok(0));
        let err = c.u32("oid").expect_err("short");
        assert_eq!(err.offset, 1);
        assert_eq!(
            err.kind,
            CursorErrorKind::UnexpectedEnd {
                field: "oid",
                needed: 4,
                available: 2
            }
        );
        // A failed read consumes nothing.
        assert_eq!(c.position(), 1);
        assert!(c.bytes(3, "data").is_err());
        assert!(c.bytes(usize::MAX, "data").is_err());
        assert_eq!(c.bytes(2, "data").map(|b| b.len()), Ok(2));
    }

    #[test]
    fn negative_lengths() {
        let buf = Bytes::from_static(b"\xff\xff\xff\xff\x80\x00");
        let mut c = Cursor::new(&buf);
        let err = c.len_i32("len").expect_err("negative");
        assert_eq!(err.offset, 0);
        assert_eq!(
            err.kind,
            CursorErrorKind::NegativeLength {
                field: "len",
                length: -1
            }
        );
        let err = c.count_i16("n").expect_err("negative");
        assert_eq!(err.offset, 4);
    }

    #[test]
    fn strings() {
        let buf = Bytes::from_static(b"ok\0a\xffb\0");
        let mut c = Cursor::new(&buf);
        assert!(c.cstr("x").is_ok());
        let err = c.cstr("name").expect_err("bad utf8");
        assert_eq!(err.offset, 4);
        assert_eq!(err.kind, CursorErrorKind::InvalidUtf8 { field: "name" });
        let buf = Bytes::from_static(b"abc");
        let err = Cursor::new(&buf).cstr("name").expect_err("no nul");
        assert_eq!(err.kind, CursorErrorKind::MissingNul { field: "name" });
        let buf = Bytes::from_static(b"\0x");
        let mut c = Cursor::new(&buf);
        assert_eq!(c.cstr_bytes("s").map(|b| b.len()), Ok(0));
        assert_eq!(
            c.finish(),
            Err(CursorError {
                offset: 1,
                kind: CursorErrorKind::TrailingBytes { count: 1 }
            })
        );
    }
}
