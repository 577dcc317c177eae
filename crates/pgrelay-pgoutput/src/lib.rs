//! pgrelay's pgoutput implementation: decoding the messages PostgreSQL's
//! built-in logical decoding output plugin sends (protocol versions 1 to 4)
//! and reassembling them into committed transactions of protocol-independent
//! [`pgrelay_types::Change`]s, with a pluggable spill store for transactions
//! that do not fit a memory budget.
//!
//! Invariants: no I/O (spilling goes through the [`SpillStore`] trait), no
//! panics on any input, payloads stay `Bytes` slices of the XLogData frame
//! they arrived in. Usage: feed each XLogData payload to
//! [`Decoder::decode`], pass the [`Message`] to [`Reassembler::push`], and
//! apply the [`Committed`] transactions it returns in order.
//!
//! PostgreSQL reference: "Logical Streaming Replication Protocol"
//! (protocol-logical-replication) and "Logical Replication Message Formats"
//! (protocol-logicalrep-message-formats).

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod decoder;
mod error;
mod message;
mod reassembler;
mod relation_cache;
pub mod spill;

pub use decoder::Decoder;
pub use error::{DecodeError, DecodeErrorKind};
pub use message::{
    Begin, BeginPrepare, Commit, CommitPrepared, DecoderConfig, Delete, EmittedMessage, Insert,
    Message, Prepare, ProtocolVersion, RelationMessage, RollbackPrepared, StreamAbort,
    StreamCommit, StreamStart, Streaming, Truncate, TypeMessage, Update,
};
pub use reassembler::{Committed, ReassembleError, Reassembled, Reassembler, ReassemblerStats};
pub use relation_cache::RelationCache;
pub use spill::{MemorySpillStore, SpillId, SpillStore, SpillStoreError};
