//! I/O-free pieces of the PostgreSQL frontend/backend protocol that a logical
//! replication client needs: splitting a byte stream into backend messages,
//! reading ErrorResponse/NoticeResponse fields and classifying them as
//! transient or fatal, and the CopyData sub-protocol of streaming replication
//! (XLogData, Primary keepalive, Standby status update, Hot standby feedback).
//!
//! Invariants: nothing here reads a socket or a clock; callers feed bytes in
//! and get `Bytes` slices of those same bytes out (no payload copies).
//! Decoders never panic, reject trailing bytes, and report the byte offset at
//! which input stopped making sense.
//!
//! PostgreSQL reference: "Message Formats" (protocol-message-formats),
//! "Error and Notice Message Fields" (protocol-error-fields) and "Streaming
//! Replication Protocol" (protocol-replication).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cursor;
mod error_response;
mod frame;
mod frontend;
mod replication;

pub use cursor::{Cursor, CursorError, CursorErrorKind};
pub use error_response::{ErrorResponse, ErrorResponseError, Severity, SqlState};
pub use frame::{Frame, FrameDecoder, FrameError, FrameErrorKind};
pub use frontend::{copy_data, copy_done, MessageTooLarge};
pub use replication::{
    HotStandbyFeedback, PrimaryKeepalive, ReplicationDecodeError, ReplicationMessage,
    StandbyStatusUpdate, XLogData,
};
