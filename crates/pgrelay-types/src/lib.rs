//! Vocabulary shared by every pgrelay crate: the identifiers PostgreSQL puts on
//! the wire (`Lsn`, `Xid`, `Oid`, `PgTimestamp`) and the protocol-independent
//! change model (`RelationInfo`, `Change`, `Transaction`) that the apply layer
//! consumes without knowing anything about pgoutput.
//!
//! Invariants: this crate performs no I/O and owns no protocol parsing beyond
//! the textual forms PostgreSQL itself prints (`16/B374D848` for an LSN).
//! Payloads are `bytes::Bytes` slices of whatever buffer produced them, so a
//! change can be handed from the decoder to the applier without copying.
//! Names are [`ByteStr`], i.e. UTF-8-validated `Bytes`, for the same reason.
//!
//! PostgreSQL references: "pg_lsn Type" (datatype-pg-lsn), "Logical
//! Replication Message Formats" (protocol-logicalrep-message-formats) for the
//! shape of relations, tuples and transactions.

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod change;
mod ids;
mod lsn;
mod relation;
pub mod sql;
mod text;
mod time;
mod transaction;

pub use change::{Change, LogicalMessage, OldTuple, TruncateOptions, Tuple, Value};
pub use ids::{Oid, Xid};
pub use lsn::{Lsn, ParseLsnError};
pub use relation::{Column, RelationInfo, ReplicaIdentity};
pub use text::ByteStr;
pub use time::PgTimestamp;
pub use transaction::{Origin, PrepareInfo, Transaction, TransactionInfo, TransactionKind};
