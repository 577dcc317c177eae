//! A committed source transaction as the apply layer receives it: identity,
//! commit position, origin and the ordered list of changes.
//!
//! Invariants: transactions are produced in source commit order, and
//! `end_lsn` is the position to confirm as flushed once the transaction is
//! durably applied (confirming it tells the server never to send this
//! transaction again). Changes are in the order the source made them, with
//! rolled-back subtransactions already removed.
//!
//! PostgreSQL reference: "Logical Replication Message Formats"
//! (protocol-logicalrep-message-formats): Begin/Commit, Stream Commit,
//! Begin Prepare/Prepare/Commit Prepared and Origin.

use crate::{ByteStr, Change, Lsn, PgTimestamp, Xid};

/// Set when the source transaction was itself replayed from another node
/// (`pg_replication_origin_session_setup`); lets the apply layer break
/// replication loops.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Replication origin name on the source.
    pub name: ByteStr,
    /// Commit LSN on the origin server.
    pub lsn: Lsn,
}

/// The prepare half of a two-phase transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PrepareInfo {
    /// `PREPARE TRANSACTION` identifier.
    pub gid: ByteStr,
    /// LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// End LSN of the prepared transaction.
    pub prepare_end_lsn: Lsn,
    /// When it was prepared.
    pub prepare_ts: PgTimestamp,
    /// The server streamed it in chunks before preparing (Stream Prepare).
    pub streamed: bool,
}

/// How the server delivered the transaction; useful for metrics and for
/// deciding whether to apply it in one target transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TransactionKind {
    /// Begin .. Commit.
    Plain,
    /// Stream Start/Stop blocks, then Stream Commit.
    Streamed,
    /// Prepared (possibly streamed), then COMMIT PREPARED.
    TwoPhase(PrepareInfo),
}

/// Everything about a transaction except its changes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TransactionInfo {
    /// Top-level transaction id on the source.
    pub xid: Xid,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: confirm this as flushed once applied.
    pub end_lsn: Lsn,
    /// Commit time on the source.
    pub commit_ts: PgTimestamp,
    /// Replication origin, if the source transaction came from elsewhere.
    pub origin: Option<Origin>,
    /// How it was delivered.
    pub kind: TransactionKind,
}

/// A committed transaction with all its changes in memory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Transaction {
    /// Identity and commit position.
    pub info: TransactionInfo,
    /// Changes in source order.
    pub changes: Vec<Change>,
}
