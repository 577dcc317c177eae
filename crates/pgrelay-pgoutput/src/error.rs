//! Errors raised while decoding pgoutput messages.
//!
//! Invariants: every error names the message type being decoded and the byte
//! offset (from the start of the XLogData payload) where decoding stopped,
//! and every error is fatal: the same bytes will fail the same way, so the
//! only remedy is operator action or restarting replication from the last
//! confirmed LSN with the right options.
//!
//! PostgreSQL reference: "Logical Replication Message Formats"
//! (protocol-logicalrep-message-formats).

use pgrelay_types::{Oid, Xid};
use pgrelay_wire::{CursorError, CursorErrorKind};

/// What was wrong with a pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    /// A field was cut short, had a negative length, lacked its NUL, was not
    /// UTF-8, or bytes followed the last field.
    #[error("{0}")]
    Field(CursorErrorKind),
    /// The payload was empty.
    #[error("empty message")]
    Empty,
    /// The first byte is not a pgoutput message type.
    #[error(
        "unknown message type {tag:?} (byte 0x{byte:02x}); the server speaks a newer protocol \
         version than configured, or the stream is not pgoutput: check proto_version and the \
         slot's output plugin"
    )]
    UnknownTag {
        /// The byte as a char.
        tag: char,
        /// The byte.
        byte: u8,
    },
    /// The message exists only in a later protocol version than configured.
    #[error(
        "{message} messages need protocol version {required} but the decoder was configured for \
         version {configured}; configure the decoder with the proto_version passed to \
         START_REPLICATION"
    )]
    NotInProtocolVersion {
        /// Message type name.
        message: &'static str,
        /// Minimum version that defines it.
        required: u8,
        /// Configured version.
        configured: u8,
    },
    /// An enumerated byte had an undefined value.
    #[error("{field} has undefined value {value:#04x}")]
    InvalidByte {
        /// Field name.
        field: &'static str,
        /// The byte.
        value: u8,
    },
    /// Row data referenced a relation no Relation message described.
    #[error(
        "relation {oid} was never described by a Relation message; the server sends one before \
         first use, so messages were lost: restart replication from the last confirmed LSN"
    )]
    UnknownRelation {
        /// The relation's oid.
        oid: Oid,
    },
    /// A tuple's column count differs from its relation's.
    #[error(
        "tuple has {found} columns but relation {relation} ({oid}) has {expected}; the table \
         changed without a Relation message reaching us: restart replication from the last \
         confirmed LSN so the server resends the definition"
    )]
    ColumnCountMismatch {
        /// `schema.table`.
        relation: String,
        /// The relation's oid.
        oid: Oid,
        /// Columns in the Relation message.
        expected: usize,
        /// Values in the tuple.
        found: usize,
    },
    /// A message appeared where the stream framing forbids it (e.g. Begin
    /// inside a Stream Start/Stop block).
    #[error(
        "{message} is not allowed {context}; the message sequence is corrupt: restart \
         replication from the last confirmed LSN"
    )]
    UnexpectedMessage {
        /// Message type name.
        message: &'static str,
        /// Where it appeared.
        context: &'static str,
    },
    /// Stream Start while another stream block was open.
    #[error(
        "Stream Start for transaction {xid} while the block for {open} is still open; the \
         message sequence is corrupt: restart replication from the last confirmed LSN"
    )]
    NestedStream {
        /// The new stream's xid.
        xid: Xid,
        /// The open stream's xid.
        open: Xid,
    },
}

/// A pgoutput message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode pgoutput {message} message at byte {offset}: {kind}")]
pub struct DecodeError {
    /// Message type name ("Insert", "Relation", ... or "unknown").
    pub message: &'static str,
    /// Offset in the XLogData payload where decoding stopped.
    pub offset: usize,
    /// What was wrong.
    pub kind: DecodeErrorKind,
}

impl DecodeError {
    pub(crate) fn new(message: &'static str, offset: usize, kind: DecodeErrorKind) -> Self {
        DecodeError {
            message,
            offset,
            kind,
        }
    }

    pub(crate) fn field(message: &'static str, e: CursorError) -> Self {
        DecodeError::new(message, e.offset, DecodeErrorKind::Field(e.kind))
    }

    /// Always false: decoding is deterministic, so retrying on the same bytes
    /// fails the same way.
    pub fn is_transient(&self) -> bool {
        false
    }
}
