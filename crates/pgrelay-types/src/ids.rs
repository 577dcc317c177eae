//! `Xid` and `Oid`: the 32-bit transaction and object identifiers that
//! logical replication messages carry.
//!
//! Invariants: both are plain 32-bit values exactly as sent; no epoch is
//! attached to `Xid` because pgoutput does not send one, so xids must only be
//! compared for equality (they wrap around), never ordered.
//!
//! PostgreSQL reference: "Object Identifier Types" (datatype-oid) and
//! "Logical Replication Message Formats" (protocol-logicalrep-message-formats).

use std::fmt;

/// A 32-bit transaction id as sent by pgoutput. Deliberately not `Ord`:
/// xids wrap around, so "smaller" does not mean "older".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Xid(pub u32);

impl Xid {
    /// `InvalidTransactionId`.
    pub const INVALID: Xid = Xid(0);

    /// Whether this is a real transaction id rather than 0.
    pub const fn is_valid(self) -> bool {
        self.0 != 0
    }
}

impl fmt::Display for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Xid({})", self.0)
    }
}

/// A PostgreSQL object id (relation, type, ...).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Oid(pub u32);

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Oid({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(Xid(742).to_string(), "742");
        assert_eq!(format!("{:?}", Xid(742)), "Xid(742)");
        assert_eq!(Oid(16384).to_string(), "16384");
        assert_eq!(format!("{:?}", Oid(16384)), "Oid(16384)");
        assert!(!Xid::INVALID.is_valid());
        assert!(Xid(3).is_valid());
    }
}
