//! Spilling: where the reassembler puts buffered changes once its memory
//! budget is exceeded, and the byte encoding it writes them in.
//!
//! Invariants: a store is a set of independent, append-only record
//! sequences keyed by [`SpillId`] (one per buffered transaction, never
//! reused). Records are opaque byte strings produced by [`codec`]; a store
//! only has to give them back, in append order, byte for byte. Spill data is
//! disposable: after a crash nothing in it is needed, because the server
//! resends every transaction whose end LSN was not confirmed, so stores need
//! no fsync and should delete leftovers at startup.
//!
//! The design targets a simple file-backed store in an I/O crate: one
//! append-only file per `SpillId`, each record written as a 4-byte
//! big-endian length followed by the record bytes; `take` opens the file,
//! unlinks it, and returns a reader over it; `discard` unlinks it.
//!
//! PostgreSQL reference: none directly; this is the counterpart of the
//! server's own reorder-buffer spilling ("Streaming of Large Transactions
//! for Logical Decoding", logicaldecoding-streaming, explains why a
//! receiver must buffer in-progress transactions).

pub mod codec;

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;

/// Identifies one buffered transaction's spill records; unique for the
/// lifetime of a reassembler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpillId(pub u64);

impl fmt::Display for SpillId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spill-{:016x}", self.0)
    }
}

/// A spill store failure.
#[derive(Debug, thiserror::Error)]
pub enum SpillStoreError {
    /// The store's medium failed.
    #[error(
        "spill store I/O failed for {id}: {source}; check free space and permissions of the \
         spill directory, or raise the memory budget"
    )]
    Io {
        /// Which spill.
        id: SpillId,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `take` or `discard` of an id the store does not hold.
    #[error(
        "spill store has no records for {id}; the spill directory was cleaned while pgrelay was \
         running, or two pgrelay processes share it: give each process its own directory"
    )]
    Unknown {
        /// Which spill.
        id: SpillId,
    },
    /// The store's own framing (e.g. a record length prefix) is damaged.
    #[error(
        "spill data for {id} is damaged at byte {offset}: {reason}; the spill file was modified \
         or the disk is failing: restart pgrelay (spill files are rebuilt from the server)"
    )]
    Corrupt {
        /// Which spill.
        id: SpillId,
        /// Offset in the spill where the damage was found.
        offset: u64,
        /// What was wrong.
        reason: &'static str,
    },
}

impl SpillStoreError {
    /// I/O errors such as a full disk can clear up (and a restart rebuilds
    /// the spill from the server), except those that need someone to fix
    /// permissions or paths. Missing or damaged data is fatal.
    pub fn is_transient(&self) -> bool {
        match self {
            SpillStoreError::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::InvalidData
            ),
            SpillStoreError::Unknown { .. } | SpillStoreError::Corrupt { .. } => false,
        }
    }
}

/// Where buffered changes go when they do not fit in memory.
pub trait SpillStore {
    /// Reads back one spill's records in append order. Owns its data (it
    /// does not borrow the store), so a committed transaction can be
    /// streamed to the apply layer while the reassembler keeps going.
    type Reader: Iterator<Item = Result<Bytes, SpillStoreError>>;

    /// Appends `record` to spill `id`, creating the spill on first use.
    fn append(&mut self, id: SpillId, record: &[u8]) -> Result<(), SpillStoreError>;

    /// Hands over all records of `id` and forgets `id`: the store must not
    /// return them again, and may delete them once the reader is dropped.
    fn take(&mut self, id: SpillId) -> Result<Self::Reader, SpillStoreError>;

    /// Forgets `id` without reading it (its transaction aborted).
    fn discard(&mut self, id: SpillId) -> Result<(), SpillStoreError>;
}

/// A `SpillStore` in memory. For tests only: keeping spilled records in
/// memory defeats the memory budget it exists to enforce.
#[derive(Debug, Default)]
pub struct MemorySpillStore {
    spills: HashMap<SpillId, Vec<Bytes>>,
    appended_bytes: u64,
    appended_records: u64,
}

impl MemorySpillStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spills currently held.
    pub fn live_spills(&self) -> usize {
        self.spills.len()
    }

    /// Total record bytes ever appended.
    pub fn appended_bytes(&self) -> u64 {
        self.appended_bytes
    }

    /// Total records ever appended.
    pub fn appended_records(&self) -> u64 {
        self.appended_records
    }
}

/// Reader of a [`MemorySpillStore`] spill.
#[derive(Debug)]
pub struct MemoryReader(std::vec::IntoIter<Bytes>);

impl Iterator for MemoryReader {
    type Item = Result<Bytes, SpillStoreError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(Ok)
    }
}

impl SpillStore for MemorySpillStore {
    type Reader = MemoryReader;

    fn append(&mut self, id: SpillId, record: &[u8]) -> Result<(), SpillStoreError> {
        self.appended_bytes += record.len() as u64;
        self.appended_records += 1;
        self.spills
            .entry(id)
            .or_default()
            .push(Bytes::copy_from_slice(record));
        Ok(())
    }

    fn take(&mut self, id: SpillId) -> Result<MemoryReader, SpillStoreError> {
        self.spills
            .remove(&id)
            .map(|v| MemoryReader(v.into_iter()))
            .ok_or(SpillStoreError::Unknown { id })
    }

    fn discard(&mut self, id: SpillId) -> Result<(), SpillStoreError> {
        self.spills
            .remove(&id)
            .map(drop)
            .ok_or(SpillStoreError::Unknown { id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_semantics() {
        let mut s = MemorySpillStore::new();
        s.append(SpillId(1), b"a").expect("append");
        s.append(SpillId(1), b"bc").expect("append");
        s.append(SpillId(2), b"x").expect("append");
        assert_eq!(s.live_spills(), 2);
        let got: Vec<_> = s
            .take(SpillId(1))
            .expect("take")
            .map(|r| r.expect("record"))
            .collect();
        assert_eq!(
            got,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"bc")]
        );
        assert!(matches!(
            s.take(SpillId(1)),
            Err(SpillStoreError::Unknown { id: SpillId(1) })
        ));
        s.discard(SpillId(2)).expect("discard");
        let err = s.discard(SpillId(2)).expect_err("gone");
        assert!(!err.is_transient());
        assert!(err.to_string().contains("spill-0000000000000002"));
        assert_eq!(s.appended_records(), 3);
        assert_eq!(s.appended_bytes(), 4);
        let io = SpillStoreError::Io {
            id: SpillId(3),
            source: std::io::Error::other("disk full"),
        };
        assert!(io.is_transient());
        let perm = SpillStoreError::Io {
            id: SpillId(3),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert!(!perm.is_transient());
    }
}
