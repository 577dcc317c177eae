//! The relation cache: the latest definition of each relation, by oid, as
//! announced by Relation messages.
//!
//! Invariants: definitions are immutable `Arc<RelationInfo>` values; a new
//! Relation message replaces the entry, and changes already decoded keep
//! pointing at the definition they were decoded with. Definitions sent
//! inside a Stream Start/Stop block belong to that in-progress transaction
//! only (its DDL is not committed yet, and pgoutput resends definitions per
//! streamed transaction): they live in a per-transaction overlay that is
//! merged into the committed map at Stream Commit/Stream Prepare and dropped
//! at Stream Abort of the top-level transaction. That mirrors how
//! PostgreSQL's own subscriber applies Relation messages of streamed
//! transactions only when replaying them at commit.
//!
//! PostgreSQL reference: "Logical Replication Message Formats"
//! (protocol-logicalrep-message-formats), Relation and Stream messages;
//! "Logical Streaming Replication Protocol" (protocol-logical-replication).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use pgrelay_types::{Oid, RelationInfo, Xid};

/// Oids and xids are small dense integers chosen by the server, not by an
/// attacker able to aim at hash collisions, and are looked up once per row:
/// a multiplicative hash is plenty and several times cheaper than SipHash.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Relation definitions by oid, with per-streamed-transaction overlays.
#[derive(Debug, Clone, Default)]
pub struct RelationCache {
    committed: IdMap<Oid, Arc<RelationInfo>>,
    streamed: IdMap<Xid, IdMap<Oid, Arc<RelationInfo>>>,
}

impl RelationCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The definition visible to a message outside any stream block
    /// (`stream == None`) or inside the block of top-level transaction
    /// `stream`.
    pub fn get(&self, oid: Oid, stream: Option<Xid>) -> Option<&Arc<RelationInfo>> {
        stream
            .and_then(|xid| self.streamed.get(&xid))
            .and_then(|overlay| overlay.get(&oid))
            .or_else(|| self.committed.get(&oid))
    }

    /// Records a definition, in the overlay of `stream` if given.
    pub fn insert(&mut self, relation: Arc<RelationInfo>, stream: Option<Xid>) {
        match stream {
            Some(xid) => {
                self.streamed
                    .entry(xid)
                    .or_default()
                    .insert(relation.oid, relation);
            }
            None => {
                self.committed.insert(relation.oid, relation);
            }
        }
    }

    /// The streamed transaction committed (or prepared): its definitions
    /// become everyone's.
    pub fn commit_stream(&mut self, xid: Xid) {
        if let Some(overlay) = self.streamed.remove(&xid) {
            self.committed.extend(overlay);
        }
    }

    /// The streamed transaction aborted: forget its definitions.
    pub fn abort_stream(&mut self, xid: Xid) {
        self.streamed.remove(&xid);
    }

    /// Number of committed definitions.
    pub fn len(&self) -> usize {
        self.committed.len()
    }

    /// Whether no committed definition is known.
    pub fn is_empty(&self) -> bool {
        self.committed.is_empty()
    }

    /// All committed definitions.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<RelationInfo>> {
        self.committed.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgrelay_types::{ByteStr, ReplicaIdentity};

    fn rel(oid: u32, name: &'static str) -> Arc<RelationInfo> {
        Arc::new(RelationInfo {
            oid: Oid(oid),
            schema: ByteStr::from_static("public"),
            name: ByteStr::from_static(name),
            replica_identity: ReplicaIdentity::Default,
            columns: Vec::new(),
        })
    }

    #[test]
    fn overlay_lifecycle() {
        let mut c = RelationCache::new();
        c.insert(rel(1, "v1"), None);
        c.insert(rel(1, "v2"), Some(Xid(10)));
        assert_eq!(
            c.get(Oid(1), None).map(|r| r.name.to_string()),
            Some("v1".into())
        );
        assert_eq!(
            c.get(Oid(1), Some(Xid(10))).map(|r| r.name.to_string()),
            Some("v2".into())
        );
        assert_eq!(
            c.get(Oid(1), Some(Xid(11))).map(|r| r.name.to_string()),
            Some("v1".into())
        );
        c.abort_stream(Xid(10));
        assert_eq!(
            c.get(Oid(1), Some(Xid(10))).map(|r| r.name.to_string()),
            Some("v1".into())
        );
        c.insert(rel(1, "v3"), Some(Xid(12)));
        c.insert(rel(2, "other"), Some(Xid(12)));
        assert!(c.get(Oid(2), None).is_none());
        c.commit_stream(Xid(12));
        assert_eq!(
            c.get(Oid(1), None).map(|r| r.name.to_string()),
            Some("v3".into())
        );
        assert_eq!(c.len(), 2);
        assert!(!c.is_empty());
        assert_eq!(c.iter().count(), 2);
    }
}
