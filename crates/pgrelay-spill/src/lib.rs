//! Disk spills: append-only sequences of byte records, one file each, for
//! data that does not fit a memory budget (a large streamed transaction
//! being reassembled, later a slow target's backlog).
//!
//! Invariants: every process writes into its own directory
//! (`pgrelay-spill-<pid>-…` under the configured spill dir) that is removed
//! on Drop; directories left by a process that died (kill -9) are removed
//! by the next [`SpillDir::open`] in the same spill dir. Spill data is
//! disposable: it is never needed after a restart, because the source
//! resends everything not yet confirmed, so nothing is fsynced. Records are
//! framed as a 4-byte big-endian length and the bytes; a reader rejects a
//! truncated or oversized frame with its byte offset instead of guessing.
//! The byte budget bounds the disk use of live spills; `take`n and
//! discarded spills give their bytes back.
//!
//! PostgreSQL reference: none directly; the server's own reorder buffer
//! spills the same way ("Streaming of Large Transactions for Logical
//! Decoding", logicaldecoding-streaming).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// Largest record accepted; a frame claiming more is corrupt.
pub const MAX_RECORD: usize = 1 << 30;

/// What can go wrong with a spill.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error(
        "spill I/O failed on {path}: {source}; check free space and permissions of the spill \
         directory (apply.spill_dir)"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "spill budget of {budget} bytes is used up ({used} bytes live); raise spill_budget or \
         let the slow consumer catch up"
    )]
    BudgetExceeded { budget: u64, used: u64 },
    #[error("no spill {id}: it was already taken or discarded")]
    Unknown { id: u64 },
    #[error(
        "spill {id} is damaged at byte {offset}: {reason}; the spill file was modified or the \
         disk is failing: restart pgrelay (spills are rebuilt from the source)"
    )]
    Corrupt {
        id: u64,
        offset: u64,
        reason: &'static str,
    },
}

impl SpillError {
    /// A full budget or disk can clear up; bad paths, permissions and
    /// damaged data need an operator.
    pub fn is_transient(&self) -> bool {
        match self {
            SpillError::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::InvalidInput
            ),
            SpillError::BudgetExceeded { .. } => true,
            SpillError::Unknown { .. } | SpillError::Corrupt { .. } => false,
        }
    }
}

struct Open {
    writer: BufWriter<File>,
    path: PathBuf,
    bytes: u64,
}

/// A process-private directory of spills.
pub struct SpillDir {
    dir: tempfile::TempDir,
    budget: Option<u64>,
    used: u64,
    open: HashMap<u64, Open>,
}

const PREFIX: &str = "pgrelay-spill-";

impl SpillDir {
    /// Creates this process's spill directory under `parent` (created if
    /// missing), after removing those of dead processes. `budget` caps the
    /// bytes of live spills (None: no cap).
    pub fn open(parent: &Path, budget: Option<u64>) -> Result<SpillDir, SpillError> {
        let io = |source| SpillError::Io {
            path: parent.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(parent).map_err(io)?;
        remove_stale(parent);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir_in(parent)
            .map_err(io)?;
        Ok(SpillDir {
            dir,
            budget,
            used: 0,
            open: HashMap::new(),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes held by live spills.
    pub fn used_bytes(&self) -> u64 {
        self.used
    }

    pub fn live_spills(&self) -> usize {
        self.open.len()
    }

    /// Appends one record to spill `id`, creating it on first use.
    pub fn append(&mut self, id: u64, record: &[u8]) -> Result<(), SpillError> {
        let frame = 4 + record.len() as u64;
        if let Some(budget) = self.budget {
            if self.used + frame > budget {
                return Err(SpillError::BudgetExceeded {
                    budget,
                    used: self.used,
                });
            }
        }
        let len = u32::try_from(record.len())
            .ok()
            .filter(|&l| (l as usize) <= MAX_RECORD)
            .ok_or(SpillError::Corrupt {
                id,
                offset: 0,
                reason: "record larger than 1 GiB",
            })?;
        let open = match self.open.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let path = self.dir.path().join(format!("{id:016x}.spill"));
                let file = File::create(&path).map_err(|source| SpillError::Io {
                    path: path.clone(),
                    source,
                })?;
                e.insert(Open {
                    writer: BufWriter::with_capacity(256 * 1024, file),
                    path,
                    bytes: 0,
                })
            }
        };
        let io = |source| SpillError::Io {
            path: open.path.clone(),
            source,
        };
        open.writer.write_all(&len.to_be_bytes()).map_err(io)?;
        open.writer.write_all(record).map_err(io)?;
        open.bytes += frame;
        self.used += frame;
        Ok(())
    }

    /// Hands over every record of `id` in append order and forgets `id`.
    /// The file is unlinked at once; its space is freed when the reader is
    /// dropped.
    pub fn take(&mut self, id: u64) -> Result<SpillReader, SpillError> {
        let open = self.open.remove(&id).ok_or(SpillError::Unknown { id })?;
        self.used -= open.bytes;
        let io = |source| SpillError::Io {
            path: open.path.clone(),
            source,
        };
        let mut file = open.writer.into_inner().map_err(|e| io(e.into_error()))?;
        file.flush().map_err(io)?;
        let reader = File::open(&open.path).map_err(io)?;
        std::fs::remove_file(&open.path).map_err(io)?;
        Ok(SpillReader {
            id,
            reader: BufReader::with_capacity(256 * 1024, reader),
            offset: 0,
            len: open.bytes,
            failed: false,
        })
    }

    /// Ends appending to `id` and hands back a handle that can be read
    /// any number of times (a slow target's backlog is read again after
    /// a failed batch). Its bytes stay counted against the budget until
    /// [`SpillDir::release`].
    pub fn seal(&mut self, id: u64) -> Result<Sealed, SpillError> {
        let open = self.open.remove(&id).ok_or(SpillError::Unknown { id })?;
        let io = |source| SpillError::Io {
            path: open.path.clone(),
            source,
        };
        let mut file = open.writer.into_inner().map_err(|e| io(e.into_error()))?;
        file.flush().map_err(io)?;
        Ok(Sealed {
            id,
            path: open.path,
            bytes: open.bytes,
        })
    }

    /// Deletes a sealed spill and gives its bytes back to the budget.
    pub fn release(&mut self, sealed: Sealed) -> Result<(), SpillError> {
        self.used = self.used.saturating_sub(sealed.bytes);
        std::fs::remove_file(&sealed.path).map_err(|source| SpillError::Io {
            path: sealed.path,
            source,
        })
    }

    /// Bytes appended to the unsealed spill `id` so far (0 if unknown).
    pub fn spill_bytes(&self, id: u64) -> u64 {
        self.open.get(&id).map_or(0, |o| o.bytes)
    }

    /// Forgets `id` without reading it.
    pub fn discard(&mut self, id: u64) -> Result<(), SpillError> {
        let open = self.open.remove(&id).ok_or(SpillError::Unknown { id })?;
        self.used -= open.bytes;
        drop(open.writer);
        std::fs::remove_file(&open.path).map_err(|source| SpillError::Io {
            path: open.path,
            source,
        })
    }
}

/// A spill that no longer grows; see [`SpillDir::seal`].
#[derive(Debug)]
pub struct Sealed {
    id: u64,
    path: PathBuf,
    bytes: u64,
}

impl Sealed {
    /// Bytes on disk, framing included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A reader from the first record.
    pub fn reader(&self) -> Result<SpillReader, SpillError> {
        let file = File::open(&self.path).map_err(|source| SpillError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(SpillReader {
            id: self.id,
            reader: BufReader::with_capacity(256 * 1024, file),
            offset: 0,
            len: self.bytes,
            failed: false,
        })
    }
}

/// Removes spill directories of processes that no longer run.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Reads one spill's records back in order.
pub struct SpillReader {
    id: u64,
    reader: BufReader<File>,
    offset: u64,
    len: u64,
    failed: bool,
}

impl SpillReader {
    fn next_record(&mut self) -> Result<Option<Bytes>, SpillError> {
        if self.offset == self.len {
            return Ok(None);
        }
        let id = self.id;
        let corrupt = move |offset, reason| SpillError::Corrupt { id, offset, reason };
        if self.len - self.offset < 4 {
            return Err(corrupt(self.offset, "truncated length prefix"));
        }
        let mut len = [0u8; 4];
        self.read(&mut len)?;
        let len = u32::from_be_bytes(len);
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_RECORD)
            .ok_or(corrupt(self.offset, "record length over 1 GiB"))?;
        if self.len - self.offset - 4 < len as u64 {
            return Err(corrupt(
                self.offset,
                "record runs past the end of the spill",
            ));
        }
        let mut buf = vec![0u8; len];
        self.read(&mut buf)?;
        self.offset += 4 + len as u64;
        Ok(Some(Bytes::from(buf)))
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), SpillError> {
        self.reader
            .read_exact(buf)
            .map_err(|source| SpillError::Io {
                path: PathBuf::from(format!("<spill {}>", self.id)),
                source,
            })
    }
}

impl Iterator for SpillReader {
    type Item = Result<Bytes, SpillError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let r = self.next_record().transpose();
        if matches!(r, Some(Err(_))) {
            self.failed = true;
        }
        r
    }
}

#[cfg(feature = "pgoutput")]
mod pgoutput_store {
    //! The reassembler's view of a [`SpillDir`].

    use super::{SpillDir, SpillError, SpillReader};
    use bytes::Bytes;
    use pgrelay_pgoutput::{SpillId, SpillStore, SpillStoreError};

    fn convert(id: SpillId, e: SpillError) -> SpillStoreError {
        match e {
            SpillError::Io { source, .. } => SpillStoreError::Io { id, source },
            SpillError::BudgetExceeded { .. } => SpillStoreError::Io {
                id,
                source: std::io::Error::new(std::io::ErrorKind::StorageFull, e.to_string()),
            },
            SpillError::Unknown { .. } => SpillStoreError::Unknown { id },
            SpillError::Corrupt { offset, reason, .. } => {
                SpillStoreError::Corrupt { id, offset, reason }
            }
        }
    }

    /// Records of one taken spill, with errors in the reassembler's terms.
    pub struct StoreReader {
        id: SpillId,
        inner: SpillReader,
    }

    impl Iterator for StoreReader {
        type Item = Result<Bytes, SpillStoreError>;
        fn next(&mut self) -> Option<Self::Item> {
            let id = self.id;
            self.inner.next().map(|r| r.map_err(|e| convert(id, e)))
        }
    }

    impl SpillStore for SpillDir {
        type Reader = StoreReader;

        fn append(&mut self, id: SpillId, record: &[u8]) -> Result<(), SpillStoreError> {
            SpillDir::append(self, id.0, record).map_err(|e| convert(id, e))
        }

        fn take(&mut self, id: SpillId) -> Result<Self::Reader, SpillStoreError> {
            let inner = SpillDir::take(self, id.0).map_err(|e| convert(id, e))?;
            Ok(StoreReader { id, inner })
        }

        fn discard(&mut self, id: SpillId) -> Result<(), SpillStoreError> {
            SpillDir::discard(self, id.0).map_err(|e| convert(id, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_space_is_returned() {
        let parent = tempfile::tempdir().unwrap();
        let mut s = SpillDir::open(parent.path(), None).unwrap();
        for i in 0..1000u32 {
            s.append(7, &i.to_be_bytes()).unwrap();
        }
        s.append(8, b"other").unwrap();
        s.append(7, b"").unwrap();
        assert_eq!(s.used_bytes(), 1000 * 8 + 9 + 4);
        let got: Vec<Bytes> = s.take(7).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), 1001);
        assert_eq!(&got[999][..], &999u32.to_be_bytes());
        assert!(got[1000].is_empty());
        assert_eq!(s.used_bytes(), 9);
        assert!(matches!(s.take(7), Err(SpillError::Unknown { id: 7 })));
        s.discard(8).unwrap();
        assert_eq!(s.used_bytes(), 0);
        assert_eq!(
            std::fs::read_dir(s.path()).unwrap().count(),
            0,
            "files left behind"
        );
    }

    #[test]
    fn sealed_spills_read_twice_and_release_their_budget() {
        let parent = tempfile::tempdir().unwrap();
        let mut s = SpillDir::open(parent.path(), Some(100)).unwrap();
        s.append(1, b"abc").unwrap();
        s.append(1, b"de").unwrap();
        assert_eq!(s.spill_bytes(1), 13);
        let sealed = s.seal(1).unwrap();
        assert_eq!(sealed.bytes(), 13);
        assert_eq!(s.used_bytes(), 13, "sealed bytes stay counted");
        for _ in 0..2 {
            let got: Vec<Bytes> = sealed.reader().unwrap().collect::<Result<_, _>>().unwrap();
            assert_eq!(
                got,
                vec![Bytes::from_static(b"abc"), Bytes::from_static(b"de")]
            );
        }
        s.release(sealed).unwrap();
        assert_eq!(s.used_bytes(), 0);
        assert_eq!(std::fs::read_dir(s.path()).unwrap().count(), 0);
    }

    #[test]
    fn budget_is_enforced() {
        let parent = tempfile::tempdir().unwrap();
        let mut s = SpillDir::open(parent.path(), Some(20)).unwrap();
        s.append(1, &[0; 10]).unwrap();
        let e = s.append(1, &[0; 10]).unwrap_err();
        assert!(matches!(
            e,
            SpillError::BudgetExceeded {
                budget: 20,
                used: 14
            }
        ));
        assert!(e.is_transient());
        s.discard(1).unwrap();
        s.append(2, &[0; 10]).unwrap();
    }

    #[test]
    fn damaged_spill_reports_offset() {
        let parent = tempfile::tempdir().unwrap();
        let mut s = SpillDir::open(parent.path(), None).unwrap();
        s.append(1, b"abcd").unwrap();
        // Overwrite the length prefix of the only record with a huge value
        // before reading back.
        let path = s.path().join(format!("{:016x}.spill", 1));
        s.open.get_mut(&1).unwrap().writer.flush().unwrap();
        std::fs::write(&path, [0xff, 0xff, 0xff, 0xff, b'a', b'b', b'c', b'd']).unwrap();
        let mut r = s.take(1).unwrap();
        match r.next() {
            Some(Err(SpillError::Corrupt { offset: 0, .. })) => {}
            other => panic!("expected corruption at 0, got {other:?}"),
        }
        assert!(r.next().is_none());
    }

    #[test]
    fn stale_dirs_of_dead_processes_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        // pid 0 never names a user process in /proc.
        let stale = parent.path().join(format!("{PREFIX}0-abc"));
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("x.spill"), b"old").unwrap();
        let mine = SpillDir::open(parent.path(), None).unwrap();
        assert!(!stale.exists());
        assert!(mine.path().exists());
        let path = mine.path().to_path_buf();
        drop(mine);
        assert!(!path.exists(), "spill dir not removed on drop");
    }
}
