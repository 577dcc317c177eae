//! `RelationInfo`: what the apply layer needs to know about a published table
//! to apply a row change to it: its identity, its replica identity, and its
//! columns in the order tuple values are sent.
//!
//! Invariants: `columns` lists exactly the columns the server sends values for
//! (dropped and generated columns are never sent, and since PostgreSQL 15 a
//! publication column list may narrow it further), in attribute-number
//! order, so `columns[i]` describes `tuple[i]` of every row change decoded
//! against this `RelationInfo`. A relation's definition can change mid-stream
//! (e.g. `ALTER TABLE .. ADD COLUMN`); each definition is a separate
//! immutable value shared as `Arc<RelationInfo>`, and every change points at
//! the definition it was decoded with.
//!
//! PostgreSQL reference: "Logical Replication Message Formats"
//! (protocol-logicalrep-message-formats), the Relation message; `relreplident`
//! in "pg_class" (catalog-pg-class).

use std::fmt;

use crate::{ByteStr, Oid};

/// `pg_class.relreplident`: which old-row columns the server sends for
/// updates and deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key, if any.
    Default,
    /// `n`: nothing, so updates and deletes cannot be replicated.
    Nothing,
    /// `f`: all columns.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// From the `relreplident` character; `None` if unknown.
    pub const fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'd' => Some(Self::Default),
            b'n' => Some(Self::Nothing),
            b'f' => Some(Self::Full),
            b'i' => Some(Self::Index),
            _ => None,
        }
    }

    /// The `relreplident` character.
    pub const fn as_byte(self) -> u8 {
        match self {
            Self::Default => b'd',
            Self::Nothing => b'n',
            Self::Full => b'f',
            Self::Index => b'i',
        }
    }
}

/// One replicated column.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Column {
    /// Column name.
    pub name: ByteStr,
    /// `pg_type` oid of the column's type.
    pub type_oid: Oid,
    /// `atttypmod` (e.g. varchar length + 4, numeric precision), -1 if none.
    pub type_modifier: i32,
    /// Part of the replica identity key.
    pub is_key: bool,
}

/// A published table as described by the server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RelationInfo {
    /// The table's oid on the source; stable across renames, not across
    /// dump/restore.
    pub oid: Oid,
    /// Schema name. The protocol sends an empty string for `pg_catalog`; it
    /// is kept as sent, use [`schema_name`](Self::schema_name) to resolve it.
    pub schema: ByteStr,
    /// Table name.
    pub name: ByteStr,
    /// Which old-row values updates and deletes carry.
    pub replica_identity: ReplicaIdentity,
    /// Replicated columns in wire order.
    pub columns: Vec<Column>,
}

impl RelationInfo {
    /// The schema name with the protocol's empty-means-`pg_catalog`
    /// convention resolved.
    pub fn schema_name(&self) -> &str {
        if self.schema.is_empty() {
            "pg_catalog"
        } else {
            &self.schema
        }
    }

    /// Positions and descriptions of the replica identity key columns.
    pub fn key_columns(&self) -> impl Iterator<Item = (usize, &Column)> {
        self.columns.iter().enumerate().filter(|(_, c)| c.is_key)
    }

    /// Position of the column called `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// `schema.table`, unquoted, for logs and error messages.
impl fmt::Display for RelationInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema_name(), self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel() -> RelationInfo {
        RelationInfo {
            oid: Oid(16385),
            schema: ByteStr::from_static(""),
            name: ByteStr::from_static("t"),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                Column {
                    name: ByteStr::from_static("id"),
                    type_oid: Oid(23),
                    type_modifier: -1,
                    is_key: true,
                },
                Column {
                    name: ByteStr::from_static("v"),
                    type_oid: Oid(25),
                    type_modifier: -1,
                    is_key: false,
                },
            ],
        }
    }

    #[test]
    fn helpers() {
        let r = rel();
        assert_eq!(r.to_string(), "pg_catalog.t");
        assert_eq!(r.key_columns().map(|(i, _)| i).collect::<Vec<_>>(), vec![0]);
        assert_eq!(r.column_index("v"), Some(1));
        assert_eq!(r.column_index("nope"), None);
        for b in *b"dnfi" {
            let ri = ReplicaIdentity::from_byte(b).expect("known");
            assert_eq!(ri.as_byte(), b);
        }
        assert_eq!(ReplicaIdentity::from_byte(b'x'), None);
    }
}
