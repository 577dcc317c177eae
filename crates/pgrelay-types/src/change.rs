//! The row-level change model: what happened to which relation, with column
//! values still in the server's text or binary output format.
//!
//! Invariants: every row-carrying `Change` holds the `Arc<RelationInfo>` it
//! was decoded against and its tuples have exactly `relation.columns.len()`
//! values (the decoders that build changes enforce this), so the apply layer
//! can zip values with columns without checking. Values are `Bytes` slices of
//! the received frame; nothing here copies them.
//!
//! PostgreSQL reference: "Logical Replication Message Formats"
//! (protocol-logicalrep-message-formats): Insert, Update, Delete, Truncate,
//! Message and TupleData.

use std::sync::Arc;

use bytes::Bytes;

use crate::{ByteStr, Lsn, RelationInfo};

/// One column value of a row.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A TOASTed value the server did not resend because the UPDATE did not
    /// change it; the target must keep its current value.
    UnchangedToast,
    /// The type's text output (`typoutput`), in the connection's encoding.
    Text(Bytes),
    /// The type's binary send format (`typsend`), only with the `binary`
    /// pgoutput option.
    Binary(Bytes),
}

impl Value {
    /// The payload of a text or binary value.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Text(b) | Value::Binary(b) => Some(b),
            Value::Null | Value::UnchangedToast => None,
        }
    }

    /// Whether the value is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// The values of one row, one per column of the relation, in column order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuple(pub Vec<Value>);

impl Tuple {
    /// The values in column order.
    pub fn values(&self) -> &[Value] {
        &self.0
    }

    /// Value of column `index`.
    pub fn get(&self, index: usize) -> Option<&Value> {
        self.0.get(index)
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the tuple has no values (a relation with no replicated columns).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sum of the payload lengths, for memory accounting.
    pub fn payload_len(&self) -> usize {
        self.0.iter().map(|v| v.bytes().map_or(0, Bytes::len)).sum()
    }
}

/// The old row an UPDATE or DELETE carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OldTuple {
    /// `K`: only the replica identity key columns are set; every other
    /// column is `Value::Null` regardless of its real value.
    Key(Tuple),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(Tuple),
}

impl OldTuple {
    /// The values, whichever kind this is.
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// Options of a replicated `TRUNCATE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TruncateOptions {
    /// `TRUNCATE .. CASCADE`.
    pub cascade: bool,
    /// `TRUNCATE .. RESTART IDENTITY`.
    pub restart_identity: bool,
}

/// A message written with `pg_logical_emit_message()`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LogicalMessage {
    /// Decoded as part of its transaction (true) or immediately (false).
    pub transactional: bool,
    /// LSN of the message record.
    pub lsn: Lsn,
    /// The prefix that identifies the message's producer.
    pub prefix: ByteStr,
    /// Arbitrary content.
    pub content: Bytes,
}

/// One change inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// A row was inserted.
    Insert {
        /// The table, as defined when the row was decoded.
        relation: Arc<RelationInfo>,
        /// The new row.
        new: Tuple,
    },
    /// A row was updated.
    Update {
        /// The table, as defined when the row was decoded.
        relation: Arc<RelationInfo>,
        /// Present when the key changed (`Key`) or the table has
        /// `REPLICA IDENTITY FULL` (`Full`); otherwise the key is in `new`.
        old: Option<OldTuple>,
        /// The new row; may contain `Value::UnchangedToast`.
        new: Tuple,
    },
    /// A row was deleted.
    Delete {
        /// The table, as defined when the row was decoded.
        relation: Arc<RelationInfo>,
        /// The key or the full old row.
        old: OldTuple,
    },
    /// One or more tables were truncated together.
    Truncate {
        /// The tables, in the order the server listed them.
        relations: Vec<Arc<RelationInfo>>,
        /// CASCADE / RESTART IDENTITY.
        options: TruncateOptions,
    },
    /// A transactional `pg_logical_emit_message()`.
    Message(LogicalMessage),
}

impl Change {
    /// The relation of a row change; `None` for truncates and messages.
    pub fn relation(&self) -> Option<&Arc<RelationInfo>> {
        match self {
            Change::Insert { relation, .. }
            | Change::Update { relation, .. }
            | Change::Delete { relation, .. } => Some(relation),
            Change::Truncate { .. } | Change::Message(_) => None,
        }
    }

    /// Approximate bytes this change keeps alive in memory: the struct, the
    /// value vectors and the payloads. Used for memory budgets, so it errs
    /// on the side of counting.
    pub fn approx_size(&self) -> usize {
        let tuple = |t: &Tuple| t.0.len() * std::mem::size_of::<Value>() + t.payload_len();
        std::mem::size_of::<Change>()
            + match self {
                Change::Insert { new, .. } => tuple(new),
                Change::Update { old, new, .. } => {
                    tuple(new) + old.as_ref().map_or(0, |o| tuple(o.tuple()))
                }
                Change::Delete { old, .. } => tuple(old.tuple()),
                Change::Truncate { relations, .. } => {
                    relations.len() * std::mem::size_of::<Arc<RelationInfo>>()
                }
                Change::Message(m) => m.prefix.len() + m.content.len(),
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Oid, ReplicaIdentity};

    #[test]
    fn accessors_and_sizes() {
        let rel = Arc::new(RelationInfo {
            oid: Oid(1),
            schema: ByteStr::from_static("public"),
            name: ByteStr::from_static("t"),
            replica_identity: ReplicaIdentity::Full,
            columns: Vec::new(),
        });
        let new = Tuple(vec![
            Value::Text(Bytes::from_static(b"abc")),
            Value::Null,
            Value::UnchangedToast,
            Value::Binary(Bytes::from_static(b"\x00\x01")),
        ]);
        assert_eq!(new.payload_len(), 5);
        assert_eq!(new.len(), 4);
        assert!(!new.is_empty());
        assert!(new.get(1).is_some_and(Value::is_null));
        let ins = Change::Insert {
            relation: rel.clone(),
            new: new.clone(),
        };
        assert_eq!(ins.relation().map(|r| r.oid), Some(Oid(1)));
        let upd = Change::Update {
            relation: rel,
            old: Some(OldTuple::Full(new.clone())),
            new,
        };
        assert!(upd.approx_size() > ins.approx_size());
        let msg = Change::Message(LogicalMessage {
            transactional: true,
            lsn: Lsn(1),
            prefix: ByteStr::from_static("p"),
            content: Bytes::from_static(b"c"),
        });
        assert!(msg.relation().is_none());
    }
}
