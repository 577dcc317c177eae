//! The streaming-replication sub-protocol carried in CopyData ('d') bodies
//! during `START_REPLICATION`: XLogData ('w') and Primary keepalive ('k')
//! from the server, Standby status update ('r') and Hot standby feedback
//! ('h') from the client.
//!
//! Invariants: decoding is exact (fixed-size messages must have exactly their
//! size; boolean bytes must be 0 or 1) so a desynchronised stream is noticed
//! at the first odd byte rather than misread as plausible LSNs. XLogData's
//! payload is a slice of the CopyData body. Encoders append the CopyData
//! body only; wrap it with [`crate::copy_data`] to send it.
//!
//! PostgreSQL reference: "Streaming Replication Protocol"
//! (protocol-replication), the XLogData, Primary keepalive message, Standby
//! status update and Hot standby feedback message sections.

use bytes::{BufMut, Bytes, BytesMut};
use pgrelay_types::{Lsn, PgTimestamp, Xid};

use crate::cursor::{Cursor, CursorError};

/// A WAL data chunk; for logical replication, exactly one output plugin
/// message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// WAL position where `data` starts (for pgoutput: the LSN the message
    /// is attributed to, e.g. a transaction's first LSN at Begin).
    pub wal_start: Lsn,
    /// Current end of WAL on the server.
    pub wal_end: Lsn,
    /// Server clock at transmission.
    pub send_time: PgTimestamp,
    /// The payload, a slice of the received frame.
    pub data: Bytes,
}

/// Server heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// Current end of WAL on the server.
    pub wal_end: Lsn,
    /// Server clock at transmission.
    pub send_time: PgTimestamp,
    /// The server will disconnect us unless we answer with a status update
    /// soon (`wal_sender_timeout`).
    pub reply_requested: bool,
}

/// A server-to-client CopyData message during replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// 'w'.
    XLogData(XLogData),
    /// 'k'.
    PrimaryKeepalive(PrimaryKeepalive),
}

/// Why a replication CopyData body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationDecodeError {
    /// A field was cut short, or bytes followed a fixed-size message.
    #[error(
        "malformed replication message {tag:?}: {source}; the replication stream is out of sync: \
         reconnect and restart from the last confirmed LSN"
    )]
    Malformed {
        /// Message type byte.
        tag: char,
        /// Where and what.
        #[source]
        source: CursorError,
    },
    /// Neither 'w' nor 'k'.
    #[error(
        "unknown replication message type {tag:?} (byte 0x{byte:02x}) at byte 0; expected 'w' \
         (XLogData) or 'k' (keepalive): the server speaks a newer protocol or the stream is out of \
         sync: reconnect, and upgrade pgrelay if it persists"
    )]
    UnknownTag {
        /// The byte as a char.
        tag: char,
        /// The byte.
        byte: u8,
    },
    /// The reply-requested flag was neither 0 nor 1.
    #[error(
        "keepalive reply flag at byte {offset} is {value}, expected 0 or 1; the replication \
         stream is out of sync: reconnect"
    )]
    InvalidFlag {
        /// Where.
        offset: usize,
        /// What was there.
        value: u8,
    },
    /// The CopyData body was empty.
    #[error("empty replication CopyData message at byte 0; reconnect")]
    Empty,
}

impl ReplicationDecodeError {
    /// Decode errors are deterministic for the bytes received: fatal.
    pub fn is_transient(&self) -> bool {
        false
    }

    /// Byte offset in the CopyData body where decoding failed.
    pub fn offset(&self) -> usize {
        match self {
            Self::Malformed { source, .. } => source.offset,
            Self::InvalidFlag { offset, .. } => *offset,
            Self::UnknownTag { .. } | Self::Empty => 0,
        }
    }
}

impl ReplicationMessage {
    /// Decodes a CopyData body received during `START_REPLICATION`.
    pub fn decode(body: &Bytes) -> Result<Self, ReplicationDecodeError> {
        let mut c = Cursor::new(body);
        let byte = c
            .u8("message type")
            .map_err(|_| ReplicationDecodeError::Empty)?;
        let tag = char::from(byte);
        let malformed = |source| ReplicationDecodeError::Malformed { tag, source };
        match byte {
            b'w' => {
                let wal_start = Lsn(c.u64("WAL start").map_err(malformed)?);
                let wal_end = Lsn(c.u64("WAL end").map_err(malformed)?);
                let send_time = PgTimestamp(c.i64("send time").map_err(malformed)?);
                Ok(Self::XLogData(XLogData {
                    wal_start,
                    wal_end,
                    send_time,
                    data: c.rest(),
                }))
            }
            b'k' => {
                let wal_end = Lsn(c.u64("WAL end").map_err(malformed)?);
                let send_time = PgTimestamp(c.i64("send time").map_err(malformed)?);
                let offset = c.position();
                let reply_requested = match c.u8("reply flag").map_err(malformed)? {
                    0 => false,
                    1 => true,
                    value => return Err(ReplicationDecodeError::InvalidFlag { offset, value }),
                };
                c.finish().map_err(malformed)?;
                Ok(Self::PrimaryKeepalive(PrimaryKeepalive {
                    wal_end,
                    send_time,
                    reply_requested,
                }))
            }
            _ => Err(ReplicationDecodeError::UnknownTag { tag, byte }),
        }
    }
}

/// Client progress report ('r').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// Last WAL byte + 1 received and written.
    pub write: Lsn,
    /// Last WAL byte + 1 durably applied; the slot's `confirmed_flush_lsn`
    /// follows this, so it must only cover transactions applied on targets.
    pub flush: Lsn,
    /// Last WAL byte + 1 applied.
    pub apply: Lsn,
    /// Client clock at transmission.
    pub client_time: PgTimestamp,
    /// Ask the server to answer immediately (with a keepalive).
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// Encoded size of the CopyData body.
    pub const LEN: usize = 34;

    /// Appends the CopyData body.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(Self::LEN);
        dst.put_u8(b'r');
        dst.put_u64(self.write.0);
        dst.put_u64(self.flush.0);
        dst.put_u64(self.apply.0);
        dst.put_i64(self.client_time.0);
        dst.put_u8(u8::from(self.reply_requested));
    }
}

/// Client xmin report ('h'), for physical standbys; a logical client only
/// sends it to clear a previously reported xmin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotStandbyFeedback {
    /// Client clock at transmission.
    pub client_time: PgTimestamp,
    /// Oldest xmin still needed; `Xid::INVALID` to clear.
    pub xmin: Xid,
    /// Epoch of `xmin`.
    pub xmin_epoch: u32,
    /// Oldest catalog_xmin still needed; `Xid::INVALID` to clear.
    pub catalog_xmin: Xid,
    /// Epoch of `catalog_xmin`.
    pub catalog_xmin_epoch: u32,
}

impl HotStandbyFeedback {
    /// Encoded size of the CopyData body.
    pub const LEN: usize = 25;

    /// Appends the CopyData body.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(Self::LEN);
        dst.put_u8(b'h');
        dst.put_i64(self.client_time.0);
        dst.put_u32(self.xmin.0);
        dst.put_u32(self.xmin_epoch);
        dst.put_u32(self.catalog_xmin.0);
        dst.put_u32(self.catalog_xmin_epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::CursorErrorKind;

    fn decode(b: &'static [u8]) -> Result<ReplicationMessage, ReplicationDecodeError> {
        ReplicationMessage::decode(&Bytes::from_static(b))
    }

    #[test]
    fn xlogdata() {
        let body = Bytes::from_static(
            b"w\x00\x00\x00\x16\xb3\x74\xd8\x48\x00\x00\x00\x16\xb3\x74\xd9\x00\
              \x00\x02\xb5\x4a\x3c\x1f\x00\x00BEGIN",
        );
        let ReplicationMessage::XLogData(x) = ReplicationMessage::decode(&body).expect("ok") else {
            panic!("not xlogdata")
        };
        assert_eq!(x.wal_start.to_string(), "16/B374D848");
        assert_eq!(x.wal_end.to_string(), "16/B374D900");
        assert_eq!(x.send_time, PgTimestamp(0x0002_b54a_3c1f_0000));
        assert_eq!(&x.data[..], b"BEGIN");
        assert_eq!(x.data.as_ptr(), body[25..].as_ptr());
        // An XLogData with no payload is legal.
        assert!(decode(&[b'w'; 25]).is_ok());
    }

    #[test]
    fn keepalive() {
        let m = decode(b"k\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02\x01")
            .expect("ok");
        assert_eq!(
            m,
            ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end: Lsn(0x100),
                send_time: PgTimestamp(2),
                reply_requested: true,
            })
        );
    }

    #[test]
    fn malformed() {
        let err = decode(b"").expect_err("empty");
        assert_eq!(err, ReplicationDecodeError::Empty);
        let err = decode(b"w\x00\x00").expect_err("short");
        assert_eq!(err.offset(), 1);
        assert!(matches!(
            err,
            ReplicationDecodeError::Malformed {
                tag: 'w',
                source: CursorError {
                    kind: CursorErrorKind::UnexpectedEnd {
                        field: "WAL start",
                        ..
                    },
                    ..
                }
            }
        ));
        let err = decode(b"k\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02")
            .expect_err("no flag");
        assert_eq!(err.offset(), 17);
        let err = decode(b"k\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02\x02")
            .expect_err("bad flag");
        assert_eq!(
            err,
            ReplicationDecodeError::InvalidFlag {
                offset: 17,
                value: 2
            }
        );
        let err =
            decode(b"k\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00")
                .expect_err("trailing");
        assert_eq!(err.offset(), 18);
        assert!(matches!(
            err,
            ReplicationDecodeError::Malformed {
                source: CursorError {
                    kind: CursorErrorKind::TrailingBytes { count: 1 },
                    ..
                },
                ..
            }
        ));
        let err = decode(b"r").expect_err("client message");
        assert_eq!(
            err,
            ReplicationDecodeError::UnknownTag {
                tag: 'r',
                byte: b'r'
            }
        );
        assert!(!err.is_transient());
        assert!(err.to_string().contains("reconnect"));
    }

    #[test]
    fn encoders() {
        let mut dst = BytesMut::new();
        StandbyStatusUpdate {
            write: Lsn(0x0102_0304_0506_0708),
            flush: Lsn(1),
            apply: Lsn(2),
            client_time: PgTimestamp(-1),
            reply_requested: true,
        }
        .encode(&mut dst);
        assert_eq!(
            &dst[..],
            b"r\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00\x00\x00\x00\x00\x00\x01\
              \x00\x00\x00\x00\x00\x00\x00\x02\xff\xff\xff\xff\xff\xff\xff\xff\x01"
        );
        assert_eq!(dst.len(), StandbyStatusUpdate::LEN);
        let mut dst = BytesMut::new();
        HotStandbyFeedback {
            client_time: PgTimestamp(1),
            xmin: Xid(2),
            xmin_epoch: 3,
            catalog_xmin: Xid(4),
            catalog_xmin_epoch: 5,
        }
        .encode(&mut dst);
        assert_eq!(
            &dst[..],
            b"h\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x04\x00\x00\x00\x05"
        );
        assert_eq!(dst.len(), HotStandbyFeedback::LEN);
    }
}
