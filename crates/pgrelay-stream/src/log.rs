//! One target's backlog: the ordered events it has not yet durably
//! applied, in memory up to a limit and spilled to local disk beyond it.
//!
//! Job: decouple targets. The source dispatches every event to every
//! target's log without waiting for any target; a slow or unreachable
//! target only makes its own log grow — first in memory (events share the
//! decoded changes with the other targets through `Arc`s), then on disk in
//! sealed segments under the pipeline's spill budget. Only when the
//! budget is used up does [`TargetLog::push`] report `Full`, and the
//! source waits.
//!
//! Invariants:
//! * Order: every in-memory event precedes every on-disk event; once an
//!   event went to disk, later ones follow it there until the disk part
//!   is drained.
//! * Nothing is dropped before it is durable on the target: reading moves
//!   a read cursor; [`TargetLog::commit`] (after the target committed a
//!   batch) drops what was read; [`TargetLog::rewind`] (after a failed
//!   batch) moves the cursor back to the last commit so the batch is
//!   replayed on a new connection.
//! * Disk segments are self-contained (a relation record precedes the
//!   first change that uses it in each segment), so a rewind can re-read
//!   one from its start.
//! * Spill data is disposable: after a crash the source resends everything
//!   the slot has not confirmed, and the slot is never confirmed past what
//!   every target durably applied.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes};
use pgrelay_pgoutput::spill::codec::{encode_change, encode_relation, SpillDecoder, SpillRecord};
use pgrelay_spill::{Sealed, SpillDir, SpillError, SpillReader};
use pgrelay_types::{
    Change, Lsn, PgTimestamp, RelationInfo, TransactionInfo, TransactionKind, Xid,
};

/// What flows from the source to a target, in source commit order.
#[derive(Clone, Debug)]
pub enum Event {
    /// A source transaction starts.
    Begin(Arc<TransactionInfo>),
    /// Some of its changes (large transactions arrive in many chunks).
    Changes(Arc<Vec<Change>>),
    /// It ends; `confirm` is how far the slot may be confirmed once it is
    /// durable (its end LSN, or less while an earlier streamed
    /// transaction is still open on the source).
    Commit(Arc<TransactionInfo>, Lsn),
    /// The source is idle and has sent everything before this position.
    Position(Lsn),
    /// Changes of the streamed transaction `xid` that is applied while it
    /// streams (made by subtransaction `subxid`, `xid` outside
    /// subtransactions). At most one such transaction is open at a time;
    /// its events interleave with whole transactions committing meanwhile.
    StreamChanges {
        /// Top-level transaction.
        xid: Xid,
        /// The (sub)transaction that made them.
        subxid: Xid,
        /// The changes.
        changes: Arc<Vec<Change>>,
    },
    /// It (`subxid == xid`) or one of its subtransactions aborted.
    StreamAbort {
        /// Top-level transaction.
        xid: Xid,
        /// The aborted (sub)transaction.
        subxid: Xid,
    },
    /// It committed; `confirm` as for [`Event::Commit`].
    StreamCommit(Arc<TransactionInfo>, Lsn),
}

impl Event {
    fn mem_size(&self) -> usize {
        match self {
            Event::Changes(c) | Event::StreamChanges { changes: c, .. } => {
                c.iter().map(Change::approx_size).sum::<usize>() + 64
            }
            _ => 128,
        }
    }
}

/// The result of [`TargetLog::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Kept in memory.
    Memory,
    /// Written to the spill.
    Disk,
}

/// A spill failure of a log; `BudgetExceeded` means wait and retry.
pub type LogError = SpillError;

/// Shared spill directory of a pipeline.
pub type SharedSpill = Arc<Mutex<SpillDir>>;

const TAG_BEGIN: u8 = b'B';
const TAG_COMMIT: u8 = b'C';
const TAG_POSITION: u8 = b'P';
const TAG_RELATION: u8 = b'R';
const TAG_CHANGE: u8 = b'X';
const TAG_STREAM_CHANGE: u8 = b'S';
const TAG_STREAM_ABORT: u8 = b'A';
const TAG_STREAM_COMMIT: u8 = b'K';
/// Changes handed to the applier per event when reading back from disk.
const DISK_CHUNK: usize = 2000;

struct Segment {
    sealed: Sealed,
    /// Records (not events) in the segment.
    records: u64,
}

struct OpenSegment {
    id: u64,
    records: u64,
    /// Relations already written into this segment.
    relations: Vec<Arc<RelationInfo>>,
}

struct DiskCursor {
    /// Index into `segments`.
    segment: usize,
    reader: SpillReader,
    decoder: SpillDecoder,
    /// Records of this segment handed out (decoded and returned).
    record: u64,
    /// A record read ahead and not yet handed out.
    peeked: Option<Bytes>,
}

/// See the module docs.
pub struct TargetLog {
    spill: SharedSpill,
    /// Distinct per log: spill ids are `(log_id << 40) | n`.
    log_id: u64,
    next_segment: u64,
    memory_limit: usize,
    mem: VecDeque<(Event, usize)>,
    mem_bytes: usize,
    mem_read: usize,
    segments: VecDeque<Segment>,
    open: Option<OpenSegment>,
    cursor: Option<DiskCursor>,
    /// Records of `segments[0]` that were committed (skipped on rewind).
    committed_records: u64,
    scratch: Vec<u8>,
    spilled_events: u64,
}

impl TargetLog {
    /// An empty log keeping up to `memory_limit` bytes of events in memory.
    pub fn new(spill: SharedSpill, log_id: u64, memory_limit: usize) -> Self {
        TargetLog {
            spill,
            log_id,
            next_segment: 0,
            memory_limit,
            mem: VecDeque::new(),
            mem_bytes: 0,
            mem_read: 0,
            segments: VecDeque::new(),
            open: None,
            cursor: None,
            committed_records: 0,
            scratch: Vec::new(),
            spilled_events: 0,
        }
    }

    /// Bytes of events held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.mem_bytes
    }

    /// Bytes of this log on disk.
    pub fn disk_bytes(&self) -> u64 {
        let sealed: u64 = self.segments.iter().map(|s| s.sealed.bytes()).sum();
        let open = self.open.as_ref().map_or(0, |o| {
            self.spill.lock().map(|s| s.spill_bytes(o.id)).unwrap_or(0)
        });
        sealed + open
    }

    /// Whether every event was read (not necessarily committed).
    pub fn fully_read(&self) -> bool {
        self.mem_read == self.mem.len()
            && self.open.as_ref().is_none_or(|o| o.records == 0)
            && match &self.cursor {
                None => self.segments.is_empty(),
                Some(c) => {
                    c.peeked.is_none()
                        && c.segment + 1 == self.segments.len()
                        && c.record == self.segments[c.segment].records
                }
            }
    }

    /// Whether the log holds nothing, read or not.
    pub fn is_empty(&self) -> bool {
        self.mem.is_empty() && self.segments.is_empty() && self.open.is_none()
    }

    /// Whether part of the log is on disk (later events then go there too).
    pub fn spilling(&self) -> bool {
        !self.segments.is_empty() || self.open.is_some()
    }

    /// Whether events in memory wait to be read.
    pub fn has_unread_memory(&self) -> bool {
        self.mem_read < self.mem.len()
    }

    /// Whether [`TargetLog::push`] would keep `event` in memory now.
    pub fn fits_in_memory(&self, event: &Event) -> bool {
        let disk_in_use = !self.segments.is_empty() || self.open.is_some();
        !disk_in_use
            && (self.mem_bytes + event.mem_size() <= self.memory_limit || self.mem.is_empty())
    }

    /// Appends an event.
    pub fn push(&mut self, event: &Event) -> Result<Pushed, LogError> {
        let size = event.mem_size();
        if self.fits_in_memory(event) {
            self.mem.push_back((event.clone(), size));
            self.mem_bytes += size;
            return Ok(Pushed::Memory);
        }
        self.write_disk(event)?;
        self.spilled_events += 1;
        Ok(Pushed::Disk)
    }

    fn write_disk(&mut self, event: &Event) -> Result<(), LogError> {
        let mut spill = self.spill.lock().expect("spill lock");
        let open = match &mut self.open {
            Some(o) => o,
            None => {
                self.next_segment += 1;
                self.open.insert(OpenSegment {
                    id: (self.log_id << 40) | self.next_segment,
                    records: 0,
                    relations: Vec::new(),
                })
            }
        };
        let mut records = Vec::new();
        match event {
            Event::Begin(info) => records.push(encode_info(TAG_BEGIN, info, None)),
            Event::Commit(info, confirm) => {
                records.push(encode_info(TAG_COMMIT, info, Some(*confirm)))
            }
            Event::Position(lsn) => {
                let mut r = Vec::with_capacity(9);
                r.push(TAG_POSITION);
                r.put_u64(lsn.0);
                records.push(r);
            }
            Event::StreamAbort { xid, subxid } => {
                let mut r = Vec::with_capacity(9);
                r.push(TAG_STREAM_ABORT);
                r.put_u32(xid.0);
                r.put_u32(subxid.0);
                records.push(r);
            }
            Event::StreamCommit(info, confirm) => {
                records.push(encode_info(TAG_STREAM_COMMIT, info, Some(*confirm)))
            }
            Event::Changes(_) | Event::StreamChanges { .. } => {
                // Plain changes: `X` + change; streamed: `S` + top xid +
                // change (which carries the subtransaction).
                let (changes, stream) = match event {
                    Event::StreamChanges {
                        xid,
                        subxid,
                        changes,
                    } => (changes, Some((*xid, *subxid))),
                    Event::Changes(changes) => (changes, None),
                    _ => unreachable!("matched above"),
                };
                for change in changes.iter() {
                    let rels: Vec<&Arc<RelationInfo>> = match change {
                        Change::Truncate { relations, .. } => relations.iter().collect(),
                        c => c.relation().into_iter().collect(),
                    };
                    for rel in rels {
                        if !open.relations.iter().any(|r| Arc::ptr_eq(r, rel)) {
                            encode_relation(rel, &mut self.scratch)
                                .map_err(|e| corrupt(e.to_string()))?;
                            let mut r = Vec::with_capacity(self.scratch.len() + 1);
                            r.push(TAG_RELATION);
                            r.extend_from_slice(&self.scratch);
                            records.push(r);
                            open.relations.push(rel.clone());
                        }
                    }
                    let subxid = stream.map_or(Xid(0), |(_, sub)| sub);
                    encode_change(subxid, change, &mut self.scratch)
                        .map_err(|e| corrupt(e.to_string()))?;
                    let mut r = Vec::with_capacity(self.scratch.len() + 5);
                    match stream {
                        Some((xid, _)) => {
                            r.push(TAG_STREAM_CHANGE);
                            r.put_u32(xid.0);
                        }
                        None => r.push(TAG_CHANGE),
                    }
                    r.extend_from_slice(&self.scratch);
                    records.push(r);
                }
            }
        }
        for r in &records {
            spill.append(open.id, r)?;
            open.records += 1;
        }
        Ok(())
    }

    /// The next unread event, or `None` when everything was read.
    pub fn next_event(&mut self) -> Result<Option<Event>, LogError> {
        if let Some((event, _)) = self.mem.get(self.mem_read) {
            self.mem_read += 1;
            return Ok(Some(event.clone()));
        }
        loop {
            let at_end = match &self.cursor {
                None => true,
                Some(c) => c.peeked.is_none() && c.record == self.segments[c.segment].records,
            };
            if at_end {
                let next_index = self.cursor.as_ref().map_or(0, |c| c.segment + 1);
                if next_index == self.segments.len() {
                    // Nothing sealed left: seal the open segment if it has
                    // anything, so the reader can get at it.
                    match self.open.take() {
                        Some(o) if o.records > 0 => {
                            let sealed = self.spill.lock().expect("spill lock").seal(o.id)?;
                            self.segments.push_back(Segment {
                                sealed,
                                records: o.records,
                            });
                        }
                        other => {
                            self.open = other;
                            return Ok(None);
                        }
                    }
                }
                let mut cursor = DiskCursor {
                    segment: next_index,
                    reader: self.segments[next_index].sealed.reader()?,
                    decoder: SpillDecoder::new(),
                    record: 0,
                    peeked: None,
                };
                if next_index == 0 {
                    // After a rewind: skip what was committed, but keep the
                    // relation definitions it carried.
                    while cursor.record < self.committed_records {
                        let record = read_record(&mut cursor)?;
                        if record.first() == Some(&TAG_RELATION) {
                            cursor
                                .decoder
                                .decode(&record.slice(1..))
                                .map_err(|e| corrupt(e.to_string()))?;
                        }
                        cursor.record += 1;
                    }
                }
                self.cursor = Some(cursor);
                continue;
            }
            if let Some(event) = self.read_disk_event()? {
                return Ok(Some(event));
            }
        }
    }

    /// Reads one event from the current segment; `None` at its end.
    /// Consecutive change records of one kind (plain, or one streamed
    /// (sub)transaction) come out as one event of up to [`DISK_CHUNK`].
    fn read_disk_event(&mut self) -> Result<Option<Event>, LogError> {
        let cursor = self.cursor.as_mut().expect("cursor set");
        let total = self.segments[cursor.segment].records;
        let mut changes = Vec::new();
        // None: plain changes; Some: the streamed (xid, subxid).
        let mut kind: Option<Option<(Xid, Xid)>> = None;
        while cursor.record < total {
            let record = match cursor.peeked.take() {
                Some(r) => r,
                None => read_record(cursor)?,
            };
            let tag = record.first().copied().unwrap_or(0);
            match tag {
                TAG_RELATION | TAG_CHANGE | TAG_STREAM_CHANGE => {
                    let (body, top) = if tag == TAG_STREAM_CHANGE {
                        let Some(x) = record.get(1..5) else {
                            return Err(corrupt("short streamed change record".into()));
                        };
                        let x = Xid(u32::from_be_bytes(x.try_into().expect("4 bytes")));
                        (record.slice(5..), Some(x))
                    } else {
                        (record.slice(1..), None)
                    };
                    let decoded = cursor
                        .decoder
                        .decode(&body)
                        .map_err(|e| corrupt(e.to_string()))?;
                    let SpillRecord::Change { change, subxid } = decoded else {
                        cursor.record += 1;
                        continue;
                    };
                    let this = top.map(|x| (x, subxid));
                    if kind.is_some_and(|k| k != this) {
                        // Another kind of change: hand out what we have;
                        // this record is read again next time (its
                        // relation definitions are already known).
                        cursor.peeked = Some(record);
                        break;
                    }
                    cursor.record += 1;
                    kind = Some(this);
                    changes.push(change);
                    if changes.len() >= DISK_CHUNK {
                        break;
                    }
                }
                TAG_BEGIN | TAG_COMMIT | TAG_POSITION | TAG_STREAM_ABORT | TAG_STREAM_COMMIT => {
                    if !changes.is_empty() {
                        // Hand out the changes first; the control record
                        // comes next time.
                        cursor.peeked = Some(record);
                        break;
                    }
                    cursor.record += 1;
                    return decode_event(tag, record.slice(1..)).map(Some);
                }
                _ => return Err(corrupt(format!("unknown record tag {tag}"))),
            }
        }
        if changes.is_empty() {
            return Ok(None);
        }
        let changes = Arc::new(changes);
        Ok(Some(match kind.flatten() {
            None => Event::Changes(changes),
            Some((xid, subxid)) => Event::StreamChanges {
                xid,
                subxid,
                changes,
            },
        }))
    }

    /// Everything read so far is durable on the target: forget it.
    pub fn commit(&mut self) -> Result<(), LogError> {
        for (_, size) in self.mem.drain(..self.mem_read) {
            self.mem_bytes -= size;
        }
        self.mem_read = 0;
        let Some(cursor) = self.cursor.as_mut() else {
            return Ok(());
        };
        let mut spill = self.spill.lock().expect("spill lock");
        for _ in 0..cursor.segment {
            if let Some(seg) = self.segments.pop_front() {
                spill.release(seg.sealed)?;
            }
        }
        cursor.segment = 0;
        let consumed = cursor.record;
        if cursor.peeked.is_none() && consumed == self.segments[0].records {
            if let Some(seg) = self.segments.pop_front() {
                spill.release(seg.sealed)?;
            }
            self.cursor = None;
            self.committed_records = 0;
        } else {
            self.committed_records = consumed;
        }
        Ok(())
    }

    /// The last batch failed: read again from the last commit.
    pub fn rewind(&mut self) {
        self.mem_read = 0;
        self.cursor = None;
    }

    /// Events that went to disk since the log was created.
    pub fn spilled_events(&self) -> u64 {
        self.spilled_events
    }

    /// Deletes every segment (the target is given up on).
    pub fn clear(&mut self) {
        self.mem.clear();
        self.mem_bytes = 0;
        self.mem_read = 0;
        self.cursor = None;
        self.committed_records = 0;
        let mut spill = self.spill.lock().expect("spill lock");
        for seg in self.segments.drain(..) {
            let _ = spill.release(seg.sealed);
        }
        if let Some(o) = self.open.take() {
            let _ = spill.discard(o.id);
        }
    }
}

impl Drop for TargetLog {
    fn drop(&mut self) {
        self.clear();
    }
}

fn read_record(cursor: &mut DiskCursor) -> Result<Bytes, LogError> {
    match cursor.reader.next() {
        Some(r) => r,
        None => Err(corrupt("segment shorter than recorded".into())),
    }
}

fn corrupt(reason: String) -> LogError {
    SpillError::Io {
        path: std::path::PathBuf::from("<target log>"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
    }
}

fn encode_info(tag: u8, info: &TransactionInfo, confirm: Option<Lsn>) -> Vec<u8> {
    let mut r = Vec::with_capacity(45);
    r.push(tag);
    r.put_u32(info.xid.0);
    r.put_u64(info.commit_lsn.0);
    r.put_u64(info.end_lsn.0);
    r.put_i64(info.commit_ts.0);
    r.put_u64(confirm.map_or(0, |l| l.0));
    r
}

fn decode_event(tag: u8, mut body: Bytes) -> Result<Event, LogError> {
    if tag == TAG_STREAM_ABORT {
        if body.len() != 8 {
            return Err(corrupt("bad stream abort record".into()));
        }
        return Ok(Event::StreamAbort {
            xid: Xid(body.get_u32()),
            subxid: Xid(body.get_u32()),
        });
    }
    if tag == TAG_POSITION {
        if body.len() != 8 {
            return Err(corrupt("bad position record".into()));
        }
        return Ok(Event::Position(Lsn(body.get_u64())));
    }
    if body.len() != 36 {
        return Err(corrupt("bad transaction record".into()));
    }
    let info = Arc::new(TransactionInfo {
        xid: Xid(body.get_u32()),
        commit_lsn: Lsn(body.get_u64()),
        end_lsn: Lsn(body.get_u64()),
        commit_ts: PgTimestamp(body.get_i64()),
        origin: None,
        kind: TransactionKind::Plain,
    });
    let confirm = Lsn(body.get_u64());
    Ok(match tag {
        TAG_BEGIN => Event::Begin(info),
        TAG_STREAM_COMMIT => Event::StreamCommit(info, confirm),
        _ => Event::Commit(info, confirm),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pgrelay_types::{ByteStr, Column, Oid, ReplicaIdentity, Tuple, Value};

    fn rel(cols: usize) -> Arc<RelationInfo> {
        Arc::new(RelationInfo {
            oid: Oid(16384),
            schema: ByteStr::from_static("public"),
            name: ByteStr::from_static("t"),
            replica_identity: ReplicaIdentity::Default,
            columns: (0..cols)
                .map(|i| Column {
                    name: ByteStr::from_utf8(Bytes::from(format!("c{i}"))).unwrap(),
                    type_oid: Oid(25),
                    type_modifier: -1,
                    is_key: i == 0,
                })
                .collect(),
        })
    }

    fn txn(n: u64, rel: &Arc<RelationInfo>, rows: usize) -> Vec<Event> {
        let info = Arc::new(TransactionInfo {
            xid: Xid(n as u32),
            commit_lsn: Lsn(n * 100),
            end_lsn: Lsn(n * 100 + 8),
            commit_ts: PgTimestamp(n as i64),
            origin: None,
            kind: TransactionKind::Plain,
        });
        let changes = (0..rows)
            .map(|r| Change::Insert {
                relation: rel.clone(),
                new: Tuple(
                    (0..rel.columns.len())
                        .map(|c| Value::Text(Bytes::from(format!("{n}-{r}-{c}"))))
                        .collect(),
                ),
            })
            .collect();
        vec![
            Event::Begin(info.clone()),
            Event::Changes(Arc::new(changes)),
            Event::Commit(info.clone(), info.end_lsn),
        ]
    }

    /// Flattens events into comparable lines (chunking may differ between
    /// memory and disk).
    fn lines(events: &[Event]) -> Vec<String> {
        let mut out = Vec::new();
        for e in events {
            match e {
                Event::Begin(i) => out.push(format!("B {} {}", i.commit_lsn, i.commit_ts.0)),
                Event::Commit(i, c) => out.push(format!("C {} {}", i.end_lsn, c)),
                Event::Position(l) => out.push(format!("P {l}")),
                Event::Changes(cs) => {
                    for c in cs.iter() {
                        out.push(format!("{c:?}"));
                    }
                }
                Event::StreamChanges {
                    xid,
                    subxid,
                    changes,
                } => {
                    for c in changes.iter() {
                        out.push(format!("S {xid} {subxid} {c:?}"));
                    }
                }
                Event::StreamAbort { xid, subxid } => out.push(format!("A {xid} {subxid}")),
                Event::StreamCommit(i, c) => out.push(format!("K {} {} {}", i.xid, i.end_lsn, c)),
            }
        }
        out
    }

    #[test]
    fn streamed_events_survive_the_disk_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Arc::new(Mutex::new(
            SpillDir::open(dir.path(), Some(64 << 20)).unwrap(),
        ));
        let mut log = TargetLog::new(spill, 1, 1024);
        let r = rel(2);
        let chunk = |xid: u32, subxid: u32, rows: usize| {
            let Event::Changes(c) = txn(u64::from(subxid), &r, rows).swap_remove(1) else {
                unreachable!()
            };
            Event::StreamChanges {
                xid: Xid(xid),
                subxid: Xid(subxid),
                changes: c,
            }
        };
        let mut pushed = vec![chunk(7, 7, 30), chunk(7, 8, 30)];
        pushed.extend(txn(1, &r, 10));
        pushed.push(chunk(7, 8, 5));
        pushed.push(chunk(7, 9, 40));
        pushed.push(Event::StreamAbort {
            xid: Xid(7),
            subxid: Xid(8),
        });
        pushed.extend(txn(2, &r, 3));
        let mut done = txn(3, &r, 0).swap_remove(2);
        if let Event::Commit(info, confirm) = done {
            done = Event::StreamCommit(info, confirm);
        }
        pushed.push(done);
        for e in &pushed {
            log.push(e).unwrap();
        }
        assert!(log.spilled_events() > 0, "nothing went to disk");
        let read = drain(&mut log);
        assert_eq!(lines(&read), lines(&pushed));
        // Each streamed event read back carries one (sub)transaction.
        assert!(read.iter().any(|e| matches!(e, Event::StreamAbort { .. })));
        assert!(matches!(read.last(), Some(Event::StreamCommit(..))));
    }

    fn drain(log: &mut TargetLog) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = log.next_event().unwrap() {
            out.push(e);
        }
        out
    }

    #[test]
    fn spills_past_the_memory_limit_and_replays_after_rewind() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Arc::new(Mutex::new(
            SpillDir::open(dir.path(), Some(64 << 20)).unwrap(),
        ));
        let mut log = TargetLog::new(spill.clone(), 1, 4096);
        let narrow = rel(2);
        let wide = rel(3); // a column added mid-stream
        let mut pushed = Vec::new();
        for n in 1..=30 {
            let r = if n > 15 { &wide } else { &narrow };
            for e in txn(n, r, 20) {
                log.push(&e).unwrap();
                pushed.push(e);
            }
        }
        log.push(&Event::Position(Lsn(99_999))).unwrap();
        pushed.push(Event::Position(Lsn(99_999)));
        assert!(log.spilled_events() > 0, "nothing went to disk");
        assert!(log.memory_bytes() <= 4096 + 8192);
        let first = drain(&mut log);
        assert_eq!(lines(&first), lines(&pushed));
        assert!(log.fully_read());
        // A failed batch: everything comes again, identical.
        log.rewind();
        let again = drain(&mut log);
        assert_eq!(lines(&again), lines(&pushed));
        // Commit part-way, fail, rewind: only the rest comes back.
        log.rewind();
        let mut read = Vec::new();
        for _ in 0..40 {
            read.push(log.next_event().unwrap().unwrap());
        }
        log.commit().unwrap();
        log.rewind();
        let rest = drain(&mut log);
        let mut all = read.clone();
        all.extend(rest);
        assert_eq!(lines(&all), lines(&pushed));
        log.commit().unwrap();
        assert!(log.is_empty(), "committed log keeps data");
        assert_eq!(spill.lock().unwrap().used_bytes(), 0, "disk not given back");
        // Memory is used again once the disk part drained.
        log.push(&Event::Position(Lsn(100_000))).unwrap();
        assert!(matches!(
            log.next_event().unwrap(),
            Some(Event::Position(Lsn(100_000)))
        ));
    }

    #[test]
    fn a_full_budget_is_reported_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Arc::new(Mutex::new(SpillDir::open(dir.path(), Some(2048)).unwrap()));
        let mut log = TargetLog::new(spill, 1, 256);
        let r = rel(2);
        let mut full = false;
        for n in 1..=50 {
            for e in txn(n, &r, 5) {
                if matches!(log.push(&e), Err(SpillError::BudgetExceeded { .. })) {
                    full = true;
                }
            }
        }
        assert!(full, "the budget was never reached");
    }
}
