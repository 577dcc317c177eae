//! The transaction reassembler: turns the decoded pgoutput message sequence
//! into whole committed transactions, in commit order, whatever way the
//! server delivered them.
//!
//! * Begin .. Commit: buffered, emitted at Commit.
//! * Stream Start/Stop blocks (interleaved across top-level xids, with
//!   changes tagged by subtransaction xid): buffered per top-level xid,
//!   emitted at Stream Commit. Stream Abort of a subtransaction drops only
//!   that subtransaction's changes; of the top-level xid, everything.
//! * Begin Prepare .. Prepare and Stream Prepare: buffered by GID, emitted at
//!   Commit Prepared, dropped at Rollback Prepared.
//! * Non-transactional logical messages: emitted immediately.
//!
//! Invariants: memory held by buffered changes is tracked (approximately,
//! see `Change::approx_size`) and kept within the configured budget by
//! handing the largest buffered transaction's changes to the `SpillStore`.
//! Within a transaction, spilled changes always precede in-memory ones, so
//! order is preserved; changes of subtransactions aborted after being
//! spilled are skipped on read-back. Any error poisons the reassembler:
//! its buffers may be inconsistent, so it refuses further input and must be
//! rebuilt while replication restarts from the last confirmed LSN (the
//! server then resends everything not confirmed).
//!
//! Buffered prepared transactions exist only in this process. The server
//! does not resend a prepared transaction once the confirmed flush LSN has
//! passed its prepare LSN, so the feedback sent to the server must stay at
//! or below [`Reassembler::flush_limit`].
//!
//! PostgreSQL reference: "Logical Streaming Replication Protocol"
//! (protocol-logical-replication), "Logical Replication Message Formats"
//! (protocol-logicalrep-message-formats), "Streaming of Large Transactions
//! for Logical Decoding" (logicaldecoding-streaming) and "Two-phase Commit
//! Support for Logical Decoding" (logicaldecoding-two-phase-commits).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use pgrelay_types::{
    ByteStr, Change, LogicalMessage, Lsn, Origin, PrepareInfo, RelationInfo, Transaction,
    TransactionInfo, TransactionKind, Xid,
};

use crate::message::{Begin, BeginPrepare, Message};
use crate::relation_cache::IdMap;
use crate::spill::codec::{
    encode_change, encode_relation, EncodeError, SpillDecodeError, SpillDecoder, SpillRecord,
};
use crate::spill::{SpillId, SpillStore, SpillStoreError};

/// Why the reassembler stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReassembleError {
    /// A message arrived where the protocol does not allow it.
    #[error(
        "{message} arrived {context}; the message sequence is corrupt or messages were lost: \
         restart replication from the last confirmed LSN"
    )]
    Unexpected {
        /// Message type name.
        message: &'static str,
        /// Where it arrived.
        context: &'static str,
    },
    /// Commit's LSN differs from the one Begin announced.
    #[error(
        "Commit at {commit} does not match Begin's final LSN {begin}; messages were lost or \
         reordered: restart replication from the last confirmed LSN"
    )]
    CommitMismatch {
        /// From Begin.
        begin: Lsn,
        /// From Commit.
        commit: Lsn,
    },
    /// Prepare does not close the transaction Begin Prepare opened.
    #[error(
        "Prepare of {gid:?} (xid {xid}) does not match the open Begin Prepare of {open_gid:?} \
         (xid {open_xid}); restart replication from the last confirmed LSN"
    )]
    PrepareMismatch {
        /// From Begin Prepare.
        open_gid: ByteStr,
        /// From Begin Prepare.
        open_xid: Xid,
        /// From Prepare.
        gid: ByteStr,
        /// From Prepare.
        xid: Xid,
    },
    /// A first stream segment for a transaction that is already streaming.
    #[error(
        "Stream Start marks the first segment of transaction {xid}, which is already being \
         streamed; restart replication from the last confirmed LSN"
    )]
    DuplicateStream {
        /// Top-level xid.
        xid: Xid,
    },
    /// A stream message for a transaction whose first segment we never saw.
    #[error(
        "{message} for streamed transaction {xid}, whose first segment was not received in this \
         session; restart replication from the last confirmed LSN"
    )]
    UnknownStream {
        /// Message type name.
        message: &'static str,
        /// Top-level xid.
        xid: Xid,
    },
    /// Two pending prepared transactions with the same GID.
    #[error(
        "transaction {gid:?} was prepared again while still pending; restart replication from \
         the last confirmed LSN"
    )]
    DuplicatePrepared {
        /// The GID.
        gid: ByteStr,
    },
    /// COMMIT PREPARED for a transaction whose PREPARE we never received.
    #[error(
        "COMMIT PREPARED of {gid:?} (xid {xid}) but its PREPARE was not received in this session: \
         the confirmed flush LSN was moved past its prepare LSN, so the server will not resend \
         its changes; keep feedback at or below Reassembler::flush_limit, and resynchronise the \
         tables that transaction touched"
    )]
    UnknownPrepared {
        /// The GID.
        gid: ByteStr,
        /// The xid.
        xid: Xid,
    },
    /// The prepared transaction's xid differs from the committed one.
    #[error(
        "COMMIT PREPARED of {gid:?} names xid {xid} but it was prepared as xid {prepared_xid}; \
         restart replication from the last confirmed LSN"
    )]
    PreparedXidMismatch {
        /// The GID.
        gid: ByteStr,
        /// From Commit Prepared.
        xid: Xid,
        /// From Prepare.
        prepared_xid: Xid,
    },
    /// The spill store failed.
    #[error(transparent)]
    Store(#[from] SpillStoreError),
    /// A change could not be encoded for spilling.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Spilled data came back damaged.
    #[error(transparent)]
    Corrupt(#[from] SpillDecodeError),
    /// Input after an earlier error.
    #[error(
        "the reassembler stopped after an earlier error; build a new one and restart replication \
         from the last confirmed LSN"
    )]
    Poisoned,
}

impl ReassembleError {
    /// Only spill store I/O can be transient; everything else means the
    /// input or the spill data is wrong and will stay wrong.
    pub fn is_transient(&self) -> bool {
        match self {
            ReassembleError::Store(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// What the reassembler hands out.
#[derive(Debug)]
pub enum Reassembled<R> {
    /// A committed transaction; iterate it for its changes.
    Transaction(Committed<R>),
    /// A non-transactional `pg_logical_emit_message()`, delivered as soon
    /// as it was decoded (it belongs to no transaction).
    Message(LogicalMessage),
    /// In eager mode ([`Reassembler::set_eager_streams`]): a change of the
    /// streamed transaction `xid`, made by subtransaction `subxid` (`xid`
    /// itself outside subtransactions), handed out as it arrives.
    StreamChange {
        /// Top-level transaction.
        xid: Xid,
        /// The (sub)transaction that made the change.
        subxid: Xid,
        /// The change.
        change: Change,
    },
    /// In eager mode: the streamed transaction `xid` aborted (`subxid ==
    /// xid`), or only its subtransaction `subxid` did; undo what was
    /// handed out for it.
    StreamAbort {
        /// Top-level transaction.
        xid: Xid,
        /// The aborted (sub)transaction.
        subxid: Xid,
    },
    /// In eager mode: the streamed transaction committed; every change of
    /// it was handed out before.
    StreamCommit(TransactionInfo),
}

/// Buffered changes of one transaction.
#[derive(Debug, Default)]
struct Buffer {
    changes: Vec<Change>,
    /// Subtransaction of each change, kept only for streamed transactions
    /// (the only ones whose subtransactions can abort separately); parallel
    /// to `changes` when non-empty.
    subxids: Vec<Xid>,
    bytes: usize,
    spill: Option<SpillState>,
    /// Subtransactions aborted after some of their changes were spilled,
    /// with the number of change records spilled at the time: only
    /// records before that point belong to the aborted subtransaction
    /// (xids are never reused by the server, but a corrupt stream must not
    /// make spilled and in-memory buffering disagree).
    aborted: Vec<(Xid, u64)>,
    spilled_changes: u64,
}

#[derive(Debug)]
struct SpillState {
    id: SpillId,
    /// Last definition written to this spill, per relation, so each is
    /// written once (and again only when it changes).
    relations: IdMap<pgrelay_types::Oid, Arc<RelationInfo>>,
}

impl Buffer {
    fn push(&mut self, subxid: Option<Xid>, change: Change, size: usize) {
        if let Some(x) = subxid {
            self.subxids.push(x);
        }
        if self.changes.capacity() == 0 {
            // Skip the 1-2-4-8 growth steps; transactions rarely have a
            // single change and the vector is handed out whole at commit.
            self.changes.reserve(16);
        }
        self.changes.push(change);
        self.bytes += size;
    }

    /// Drops `subxid`'s in-memory changes (and marks spilled ones for
    /// skipping); returns the bytes freed.
    fn abort_subxact(&mut self, subxid: Xid) -> usize {
        if self.spill.is_some() {
            self.aborted.push((subxid, self.spilled_changes));
        }
        if !self.subxids.contains(&subxid) {
            return 0;
        }
        let mut freed = 0;
        let mut keep_x = Vec::with_capacity(self.subxids.len());
        let mut keep_c = Vec::with_capacity(self.changes.len());
        for (x, c) in self.subxids.drain(..).zip(self.changes.drain(..)) {
            if x == subxid {
                freed += c.approx_size();
            } else {
                keep_x.push(x);
                keep_c.push(c);
            }
        }
        self.subxids = keep_x;
        self.changes = keep_c;
        self.bytes -= freed.min(self.bytes);
        freed
    }
}

fn prepare_info(p: crate::message::Prepare, streamed: bool) -> PrepareInfo {
    PrepareInfo {
        gid: p.gid,
        prepare_lsn: p.prepare_lsn,
        prepare_end_lsn: p.end_lsn,
        prepare_ts: p.prepare_ts,
        streamed,
    }
}

fn relations_of(change: &Change) -> &[Arc<RelationInfo>] {
    match change {
        Change::Insert { relation, .. }
        | Change::Update { relation, .. }
        | Change::Delete { relation, .. } => std::slice::from_ref(relation),
        Change::Truncate { relations, .. } => relations,
        Change::Message(_) => &[],
    }
}

/// Moves all of `buf`'s in-memory changes to `store`; returns bytes freed.
fn spill_buffer<S: SpillStore>(
    buf: &mut Buffer,
    store: &mut S,
    next_id: &mut u64,
    scratch: &mut Vec<u8>,
) -> Result<usize, ReassembleError> {
    if buf.changes.is_empty() {
        return Ok(0);
    }
    let state = buf.spill.get_or_insert_with(|| {
        let id = SpillId(*next_id);
        *next_id += 1;
        SpillState {
            id,
            relations: IdMap::default(),
        }
    });
    for (i, change) in buf.changes.iter().enumerate() {
        for rel in relations_of(change) {
            let known = state
                .relations
                .get(&rel.oid)
                .is_some_and(|r| Arc::ptr_eq(r, rel) || **r == **rel);
            if !known {
                encode_relation(rel, scratch)?;
                store.append(state.id, scratch)?;
                state.relations.insert(rel.oid, rel.clone());
            }
        }
        let subxid = buf.subxids.get(i).copied().unwrap_or(Xid::INVALID);
        encode_change(subxid, change, scratch)?;
        store.append(state.id, scratch)?;
    }
    buf.spilled_changes += buf.changes.len() as u64;
    buf.changes.clear();
    buf.subxids.clear();
    Ok(std::mem::take(&mut buf.bytes))
}

#[derive(Debug)]
enum OpenKind {
    Plain(Begin),
    Prepare(BeginPrepare),
}

#[derive(Debug)]
struct OpenTxn {
    kind: OpenKind,
    origin: Option<Origin>,
    buf: Buffer,
}

#[derive(Debug)]
struct StreamTxn {
    origin: Option<Origin>,
    buf: Buffer,
}

#[derive(Debug)]
struct PreparedTxn {
    xid: Xid,
    info: PrepareInfo,
    origin: Option<Origin>,
    buf: Buffer,
}

enum Target {
    Open,
    Stream(Xid),
    Prepared(ByteStr),
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblerStats {
    /// Bytes of changes currently buffered in memory.
    pub buffered_bytes: usize,
    /// Changes handed to the spill store so far.
    pub spilled_changes: u64,
    /// Transactions emitted so far.
    pub transactions: u64,
    /// Streamed transactions currently open (eager one included).
    pub open_streams: usize,
    /// Prepared transactions waiting for COMMIT/ROLLBACK PREPARED.
    pub pending_prepared: usize,
}

/// Reassembles transactions from decoded pgoutput messages.
#[derive(Debug)]
pub struct Reassembler<S: SpillStore> {
    store: S,
    budget: usize,
    buffered: usize,
    open: Option<OpenTxn>,
    stream: Option<Xid>,
    streams: IdMap<Xid, StreamTxn>,
    prepared: HashMap<ByteStr, PreparedTxn>,
    /// Whether a streamed transaction may be handed out as it arrives.
    eager_enabled: bool,
    /// The streamed transaction handed out as it arrives (at most one at
    /// a time: the consumer applies it on a connection of its own), and
    /// its origin.
    eager: Option<(Xid, Option<Origin>)>,
    next_spill: u64,
    scratch: Vec<u8>,
    spilled_changes: u64,
    transactions: u64,
    poisoned: bool,
}

impl<S: SpillStore> Reassembler<S> {
    /// A reassembler that keeps at most about `memory_budget` bytes of
    /// buffered changes in memory and spills the rest to `store`.
    pub fn new(store: S, memory_budget: usize) -> Self {
        Reassembler {
            store,
            budget: memory_budget,
            buffered: 0,
            open: None,
            stream: None,
            streams: IdMap::default(),
            prepared: HashMap::new(),
            eager_enabled: false,
            eager: None,
            next_spill: 0,
            scratch: Vec::new(),
            spilled_changes: 0,
            transactions: 0,
            poisoned: false,
        }
    }

    /// Eager mode: the first streamed transaction that starts while no
    /// other is eager is not buffered; its changes, subtransaction aborts
    /// and commit come out as [`Reassembled::StreamChange`],
    /// [`Reassembled::StreamAbort`] and [`Reassembled::StreamCommit`] as
    /// they arrive, so the consumer can apply it while the server is still
    /// sending it (no spill, decode and apply overlap). Streamed
    /// transactions that start while one is eager are buffered as usual.
    /// Its Stream Prepare (two-phase) is rejected: enable one or the other.
    pub fn set_eager_streams(&mut self, on: bool) {
        self.eager_enabled = on;
    }

    /// The streamed transaction currently handed out as it arrives.
    pub fn eager_stream(&self) -> Option<Xid> {
        self.eager.as_ref().map(|(x, _)| *x)
    }

    /// The spill store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Current counters.
    pub fn stats(&self) -> ReassemblerStats {
        ReassemblerStats {
            buffered_bytes: self.buffered,
            spilled_changes: self.spilled_changes,
            transactions: self.transactions,
            open_streams: self.streams.len() + usize::from(self.eager.is_some()),
            pending_prepared: self.prepared.len(),
        }
    }

    /// The highest LSN that may be confirmed as flushed to the server while
    /// prepared transactions are held here: the lowest pending prepare LSN.
    /// `None` when nothing is pending.
    pub fn flush_limit(&self) -> Option<Lsn> {
        self.prepared.values().map(|p| p.info.prepare_lsn).min()
    }

    /// Prepared transactions waiting for COMMIT/ROLLBACK PREPARED.
    pub fn pending_prepared(&self) -> impl Iterator<Item = &PrepareInfo> {
        self.prepared.values().map(|p| &p.info)
    }

    /// Feeds one decoded message; returns a transaction when one commits,
    /// or a non-transactional logical message.
    pub fn push(
        &mut self,
        msg: Message,
    ) -> Result<Option<Reassembled<S::Reader>>, ReassembleError> {
        if self.poisoned {
            return Err(ReassembleError::Poisoned);
        }
        let out = self.step(msg);
        if out.is_err() {
            self.poisoned = true;
        }
        out
    }

    fn unexpected<T>(message: &'static str, context: &'static str) -> Result<T, ReassembleError> {
        Err(ReassembleError::Unexpected { message, context })
    }

    /// Transaction-framing messages arrive only between transactions and
    /// outside stream blocks.
    fn expect_idle(&self, message: &'static str) -> Result<(), ReassembleError> {
        if self.open.is_some() {
            return Self::unexpected(message, "inside an open transaction");
        }
        if self.stream.is_some() {
            return Self::unexpected(message, "inside a stream block");
        }
        Ok(())
    }

    fn step(&mut self, msg: Message) -> Result<Option<Reassembled<S::Reader>>, ReassembleError> {
        match msg {
            Message::Begin(b) => {
                self.expect_idle("Begin")?;
                self.open = Some(OpenTxn {
                    kind: OpenKind::Plain(b),
                    origin: None,
                    buf: Buffer::default(),
                });
                Ok(None)
            }
            Message::BeginPrepare(b) => {
                self.expect_idle("Begin Prepare")?;
                self.open = Some(OpenTxn {
                    kind: OpenKind::Prepare(b),
                    origin: None,
                    buf: Buffer::default(),
                });
                Ok(None)
            }
            Message::Commit(c) => {
                let Some(OpenTxn {
                    kind: OpenKind::Plain(begin),
                    origin,
                    buf,
                }) = self.open.take()
                else {
                    return Self::unexpected("Commit", "without a matching Begin");
                };
                if c.commit_lsn != begin.final_lsn {
                    return Err(ReassembleError::CommitMismatch {
                        begin: begin.final_lsn,
                        commit: c.commit_lsn,
                    });
                }
                let info = TransactionInfo {
                    xid: begin.xid,
                    commit_lsn: c.commit_lsn,
                    end_lsn: c.end_lsn,
                    commit_ts: c.commit_ts,
                    origin,
                    kind: TransactionKind::Plain,
                };
                self.emit(info, buf).map(Some)
            }
            Message::Prepare(p) => {
                let Some(OpenTxn {
                    kind: OpenKind::Prepare(begin),
                    origin,
                    buf,
                }) = self.open.take()
                else {
                    return Self::unexpected("Prepare", "without a matching Begin Prepare");
                };
                if begin.gid != p.gid || begin.xid != p.xid {
                    return Err(ReassembleError::PrepareMismatch {
                        open_gid: begin.gid,
                        open_xid: begin.xid,
                        gid: p.gid,
                        xid: p.xid,
                    });
                }
                self.hold_prepared(p.xid, prepare_info(p, false), origin, buf)?;
                Ok(None)
            }
            Message::StreamPrepare(p) => {
                self.expect_idle("Stream Prepare")?;
                if self.eager_stream() == Some(p.xid) {
                    return Self::unexpected(
                        "Stream Prepare",
                        "for a transaction handed out eagerly (two-phase decoding and eager \
                         streams do not mix)",
                    );
                }
                let Some(t) = self.streams.remove(&p.xid) else {
                    return Err(ReassembleError::UnknownStream {
                        message: "Stream Prepare",
                        xid: p.xid,
                    });
                };
                self.hold_prepared(p.xid, prepare_info(p, true), t.origin, t.buf)?;
                Ok(None)
            }
            Message::CommitPrepared(c) => {
                self.expect_idle("Commit Prepared")?;
                let Some(p) = self.prepared.remove(&c.gid) else {
                    return Err(ReassembleError::UnknownPrepared {
                        gid: c.gid,
                        xid: c.xid,
                    });
                };
                if p.xid != c.xid {
                    return Err(ReassembleError::PreparedXidMismatch {
                        gid: c.gid,
                        xid: c.xid,
                        prepared_xid: p.xid,
                    });
                }
                let info = TransactionInfo {
                    xid: c.xid,
                    commit_lsn: c.commit_lsn,
                    end_lsn: c.end_lsn,
                    commit_ts: c.commit_ts,
                    origin: p.origin,
                    kind: TransactionKind::TwoPhase(p.info),
                };
                self.emit(info, p.buf).map(Some)
            }
            Message::RollbackPrepared(r) => {
                self.expect_idle("Rollback Prepared")?;
                // The server also sends this for transactions prepared before
                // two-phase decoding was enabled, whose PREPARE we never saw:
                // nothing to drop then.
                if let Some(p) = self.prepared.remove(&r.gid) {
                    self.drop_buffer(p.buf)?;
                }
                Ok(None)
            }
            Message::Origin(o) => {
                if let Some(open) = &mut self.open {
                    open.origin = Some(o);
                } else if let Some((_, origin)) =
                    self.eager.as_mut().filter(|(x, _)| Some(*x) == self.stream)
                {
                    *origin = Some(o);
                } else if let Some(t) = self.stream.and_then(|x| self.streams.get_mut(&x)) {
                    t.origin = Some(o);
                } else {
                    return Self::unexpected("Origin", "outside any transaction");
                }
                Ok(None)
            }
            // Definitions are tracked by the decoder, which attaches them to
            // every row change.
            Message::Relation(_) | Message::Type(_) => Ok(None),
            Message::Insert(m) => self.buffer(
                "Insert",
                m.xid,
                Change::Insert {
                    relation: m.relation,
                    new: m.new,
                },
            ),
            Message::Update(m) => self.buffer(
                "Update",
                m.xid,
                Change::Update {
                    relation: m.relation,
                    old: m.old,
                    new: m.new,
                },
            ),
            Message::Delete(m) => self.buffer(
                "Delete",
                m.xid,
                Change::Delete {
                    relation: m.relation,
                    old: m.old,
                },
            ),
            Message::Truncate(m) => self.buffer(
                "Truncate",
                m.xid,
                Change::Truncate {
                    relations: m.relations,
                    options: m.options,
                },
            ),
            Message::Message(m) if !m.message.transactional => {
                Ok(Some(Reassembled::Message(m.message)))
            }
            Message::Message(m) => self.buffer("Message", m.xid, Change::Message(m.message)),
            Message::StreamStart(s) => {
                if self.open.is_some() {
                    return Self::unexpected("Stream Start", "inside an open transaction");
                }
                if self.stream.is_some() {
                    return Self::unexpected("Stream Start", "inside another stream block");
                }
                let known = self.streams.contains_key(&s.xid) || self.eager_stream() == Some(s.xid);
                match (s.first_segment, known) {
                    (true, true) => return Err(ReassembleError::DuplicateStream { xid: s.xid }),
                    (false, false) => {
                        return Err(ReassembleError::UnknownStream {
                            message: "Stream Start",
                            xid: s.xid,
                        })
                    }
                    (true, false) if self.eager_enabled && self.eager.is_none() => {
                        self.eager = Some((s.xid, None));
                    }
                    (true, false) => {
                        self.streams.insert(
                            s.xid,
                            StreamTxn {
                                origin: None,
                                buf: Buffer::default(),
                            },
                        );
                    }
                    (false, true) => {}
                }
                self.stream = Some(s.xid);
                Ok(None)
            }
            Message::StreamStop => {
                if self.stream.take().is_none() {
                    return Self::unexpected("Stream Stop", "outside a stream block");
                }
                Ok(None)
            }
            Message::StreamCommit(c) => {
                self.expect_idle("Stream Commit")?;
                if self.eager_stream() == Some(c.xid) {
                    let origin = self.eager.take().and_then(|(_, o)| o);
                    self.transactions += 1;
                    return Ok(Some(Reassembled::StreamCommit(TransactionInfo {
                        xid: c.xid,
                        commit_lsn: c.commit_lsn,
                        end_lsn: c.end_lsn,
                        commit_ts: c.commit_ts,
                        origin,
                        kind: TransactionKind::Streamed,
                    })));
                }
                let Some(t) = self.streams.remove(&c.xid) else {
                    return Err(ReassembleError::UnknownStream {
                        message: "Stream Commit",
                        xid: c.xid,
                    });
                };
                let info = TransactionInfo {
                    xid: c.xid,
                    commit_lsn: c.commit_lsn,
                    end_lsn: c.end_lsn,
                    commit_ts: c.commit_ts,
                    origin: t.origin,
                    kind: TransactionKind::Streamed,
                };
                self.emit(info, t.buf).map(Some)
            }
            Message::StreamAbort(a) => {
                self.expect_idle("Stream Abort")?;
                // Aborts of transactions we hold nothing for are harmless:
                // there is nothing to drop.
                if self.eager_stream() == Some(a.xid) {
                    if a.xid == a.subxid {
                        self.eager = None;
                    }
                    return Ok(Some(Reassembled::StreamAbort {
                        xid: a.xid,
                        subxid: a.subxid,
                    }));
                }
                if a.xid == a.subxid {
                    if let Some(t) = self.streams.remove(&a.xid) {
                        self.drop_buffer(t.buf)?;
                    }
                } else if let Some(t) = self.streams.get_mut(&a.xid) {
                    let freed = t.buf.abort_subxact(a.subxid);
                    self.buffered -= freed.min(self.buffered);
                }
                Ok(None)
            }
        }
    }

    fn hold_prepared(
        &mut self,
        xid: Xid,
        info: PrepareInfo,
        origin: Option<Origin>,
        buf: Buffer,
    ) -> Result<(), ReassembleError> {
        if self.prepared.contains_key(&info.gid) {
            return Err(ReassembleError::DuplicatePrepared { gid: info.gid });
        }
        self.prepared.insert(
            info.gid.clone(),
            PreparedTxn {
                xid,
                info,
                origin,
                buf,
            },
        );
        Ok(())
    }

    fn buffer(
        &mut self,
        message: &'static str,
        xid: Option<Xid>,
        change: Change,
    ) -> Result<Option<Reassembled<S::Reader>>, ReassembleError> {
        if let (Some(top), Some((eager, _))) = (self.stream, &self.eager) {
            if top == *eager {
                return Ok(Some(Reassembled::StreamChange {
                    xid: top,
                    subxid: xid.unwrap_or(top),
                    change,
                }));
            }
        }
        let size = change.approx_size();
        if let Some(open) = &mut self.open {
            open.buf.push(None, change, size);
        } else if let Some(top) = self.stream {
            let Some(t) = self.streams.get_mut(&top) else {
                return Err(ReassembleError::UnknownStream { message, xid: top });
            };
            t.buf.push(Some(xid.unwrap_or(top)), change, size);
        } else {
            return Self::unexpected(message, "outside any transaction");
        }
        self.buffered += size;
        if self.buffered > self.budget {
            self.enforce_budget()?;
        }
        Ok(None)
    }

    /// Spills the largest buffered transactions until under budget.
    fn enforce_budget(&mut self) -> Result<(), ReassembleError> {
        while self.buffered > self.budget {
            let mut best: Option<(usize, Target)> = None;
            let mut consider = |bytes: usize, t: Target| {
                if bytes > 0 && best.as_ref().is_none_or(|(b, _)| bytes > *b) {
                    best = Some((bytes, t));
                }
            };
            if let Some(o) = &self.open {
                consider(o.buf.bytes, Target::Open);
            }
            for (xid, t) in &self.streams {
                consider(t.buf.bytes, Target::Stream(*xid));
            }
            for (gid, p) in &self.prepared {
                consider(p.buf.bytes, Target::Prepared(gid.clone()));
            }
            let Some((_, target)) = best else {
                // Accounting drifted (can only be rounding); nothing is left
                // in memory, so resynchronise rather than loop forever.
                self.buffered = 0;
                break;
            };
            let buf = match target {
                Target::Open => self.open.as_mut().map(|o| &mut o.buf),
                Target::Stream(x) => self.streams.get_mut(&x).map(|t| &mut t.buf),
                Target::Prepared(g) => self.prepared.get_mut(&g).map(|p| &mut p.buf),
            };
            let Some(buf) = buf else { break };
            let before = buf.spilled_changes;
            let freed = spill_buffer(
                buf,
                &mut self.store,
                &mut self.next_spill,
                &mut self.scratch,
            )?;
            self.spilled_changes += buf.spilled_changes - before;
            self.buffered -= freed.min(self.buffered);
        }
        Ok(())
    }

    fn drop_buffer(&mut self, buf: Buffer) -> Result<(), ReassembleError> {
        self.buffered -= buf.bytes.min(self.buffered);
        if let Some(s) = buf.spill {
            self.store.discard(s.id)?;
        }
        Ok(())
    }

    fn emit(
        &mut self,
        info: TransactionInfo,
        buf: Buffer,
    ) -> Result<Reassembled<S::Reader>, ReassembleError> {
        self.buffered -= buf.bytes.min(self.buffered);
        self.transactions += 1;
        let spilled = match buf.spill {
            Some(s) => Some(SpilledPart {
                reader: self.store.take(s.id)?,
                decoder: SpillDecoder::new(),
                aborted: buf.aborted,
                index: 0,
            }),
            None => None,
        };
        Ok(Reassembled::Transaction(Committed {
            info,
            spilled,
            spilled_changes: buf.spilled_changes,
            memory: buf.changes.into_iter(),
        }))
    }
}

#[derive(Debug)]
struct SpilledPart<R> {
    reader: R,
    decoder: SpillDecoder,
    aborted: Vec<(Xid, u64)>,
    /// Change records read so far.
    index: u64,
}

/// A committed transaction. Iterating yields its changes in order, reading
/// spilled ones back from the store first; `info` describes it.
#[derive(Debug)]
pub struct Committed<R> {
    /// Identity and commit position.
    pub info: TransactionInfo,
    spilled: Option<SpilledPart<R>>,
    spilled_changes: u64,
    memory: std::vec::IntoIter<Change>,
}

impl<R: Iterator<Item = Result<Bytes, SpillStoreError>>> Committed<R> {
    /// Whether some changes come from the spill store (so iterating may do
    /// I/O through it and may fail).
    pub fn is_spilled(&self) -> bool {
        self.spilled.is_some()
    }

    /// Changes written to the spill store (including any later skipped as
    /// part of an aborted subtransaction).
    pub fn spilled_changes(&self) -> u64 {
        self.spilled_changes
    }

    /// Changes still held in memory.
    pub fn in_memory_changes(&self) -> usize {
        self.memory.len()
    }

    /// Collects every change. Fine for transactions that were never
    /// spilled; for spilled ones this brings them back into memory, so
    /// prefer iterating.
    pub fn into_transaction(self) -> Result<Transaction, ReassembleError> {
        if self.spilled.is_none() {
            return Ok(Transaction {
                info: self.info,
                changes: self.memory.collect(),
            });
        }
        let mut changes = Vec::new();
        let mut this = self;
        for c in this.by_ref() {
            changes.push(c?);
        }
        Ok(Transaction {
            info: this.info,
            changes,
        })
    }
}

impl<R: Iterator<Item = Result<Bytes, SpillStoreError>>> Iterator for Committed<R> {
    type Item = Result<Change, ReassembleError>;

    fn next(&mut self) -> Option<Self::Item> {
        while let Some(part) = &mut self.spilled {
            let record = match part.reader.next() {
                None => {
                    self.spilled = None;
                    break;
                }
                Some(Err(e)) => {
                    self.fuse();
                    return Some(Err(e.into()));
                }
                Some(Ok(record)) => record,
            };
            match part.decoder.decode(&record) {
                Ok(SpillRecord::Relation(_)) => {}
                Ok(SpillRecord::Change { subxid, change }) => {
                    let index = part.index;
                    part.index += 1;
                    let aborted = part
                        .aborted
                        .iter()
                        .any(|(x, before)| *x == subxid && index < *before);
                    if !aborted {
                        return Some(Ok(change));
                    }
                }
                Err(e) => {
                    self.fuse();
                    return Some(Err(e.into()));
                }
            }
        }
        self.memory.next().map(Ok)
    }
}

impl<R> Committed<R> {
    /// After an error nothing more is yielded: a partial transaction must
    /// not look complete.
    fn fuse(&mut self) {
        self.spilled = None;
        self.memory = Vec::new().into_iter();
    }
}
