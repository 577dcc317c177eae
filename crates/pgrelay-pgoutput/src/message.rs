//! The pgoutput message set of protocol versions 1 to 4, and the pure
//! function that decodes one XLogData payload into a [`Message`].
//!
//! Invariants: decoding never panics, reads every length and count through
//! checked, sign-aware accessors, rejects bytes after the last field, and
//! keeps payloads (column values, message contents, names) as `Bytes`
//! slices of the input. Row messages are resolved against the relation
//! cache at decode time and checked to have exactly as many values as the
//! relation has columns, so consumers can zip values with columns blindly.
//! Whether the transaction-id field that streamed transactions add to
//! Insert/Update/Delete/Truncate/Relation/Type/Message is present is decided
//! by the caller's stream state, never guessed from the length.
//!
//! PostgreSQL reference: "Logical Replication Message Formats"
//! (protocol-logicalrep-message-formats), and pgoutput's options in
//! "Logical Decoding Output Plugins" (logicaldecoding-output-plugin).

use std::sync::Arc;

use bytes::Bytes;
use pgrelay_types::{
    ByteStr, Column, LogicalMessage, Lsn, Oid, OldTuple, Origin, PgTimestamp, RelationInfo,
    ReplicaIdentity, TruncateOptions, Tuple, Value, Xid,
};
use pgrelay_wire::{Cursor, CursorError};

use crate::error::{DecodeError, DecodeErrorKind};
use crate::relation_cache::RelationCache;

/// pgoutput `proto_version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// PostgreSQL 10+.
    V1 = 1,
    /// PostgreSQL 14+: streaming of in-progress transactions.
    V2 = 2,
    /// PostgreSQL 15+: two-phase commit.
    V3 = 3,
    /// PostgreSQL 16+: parallel streaming (abort LSN and timestamp).
    V4 = 4,
}

impl ProtocolVersion {
    /// The number passed as `proto_version`.
    pub const fn number(self) -> u8 {
        self as u8
    }
}

impl TryFrom<u32> for ProtocolVersion {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            1 => Ok(Self::V1),
            2 => Ok(Self::V2),
            3 => Ok(Self::V3),
            4 => Ok(Self::V4),
            other => Err(other),
        }
    }
}

/// pgoutput `streaming` option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Streaming {
    /// `off`: large transactions arrive whole at commit.
    #[default]
    Off,
    /// `on`: large transactions arrive in Stream Start/Stop blocks.
    On,
    /// `parallel`: like `on`, and Stream Abort carries the abort LSN and
    /// timestamp (protocol version 4).
    Parallel,
}

/// The options the replication stream was started with that change the
/// byte layout of messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecoderConfig {
    /// `proto_version`.
    pub proto_version: ProtocolVersion,
    /// `streaming`.
    pub streaming: Streaming,
}

impl DecoderConfig {
    /// Stream Abort has its two extra fields only with version 4 and
    /// `streaming = parallel`.
    fn abort_has_lsn(&self) -> bool {
        self.proto_version >= ProtocolVersion::V4 && self.streaming == Streaming::Parallel
    }
}

/// 'B': start of a transaction sent whole at commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record.
    pub final_lsn: Lsn,
    /// Commit time.
    pub commit_ts: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
}

/// 'C': end of a transaction started by Begin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Currently unused flags, kept as sent.
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the transaction.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_ts: PgTimestamp,
}

/// 'R': a relation's definition, sent before its first row change and
/// again whenever it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationMessage {
    /// Sending (sub)transaction inside a stream block.
    pub xid: Option<Xid>,
    /// The definition.
    pub relation: Arc<RelationInfo>,
}

/// 'Y': a non-built-in type used by a replicated column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeMessage {
    /// Sending (sub)transaction inside a stream block.
    pub xid: Option<Xid>,
    /// The type's oid.
    pub oid: Oid,
    /// Schema (empty for `pg_catalog`).
    pub schema: ByteStr,
    /// Type name.
    pub name: ByteStr,
}

/// 'I'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insert {
    /// Sending (sub)transaction inside a stream block.
    pub xid: Option<Xid>,
    /// Definition the row was decoded against.
    pub relation: Arc<RelationInfo>,
    /// The new row.
    pub new: Tuple,
}

/// 'U'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// Sending (sub)transaction inside a stream block.
    pub xid: Option<Xid>,
    /// Definition the row was decoded against.
    pub relation: Arc<RelationInfo>,
    /// 'K' (key changed) or 'O' (replica identity full) old row.
    pub old: Option<OldTuple>,
    /// The new row.
    pub new: Tuple,
}

/// 'D'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    /// Sending (sub)transaction inside a stream block.
    pub xid: Option<Xid>,
    /// Definition the row was decoded against.
    pub relation: Arc<RelationInfo>,
    /// 'K' or 'O' old row.
    pub old: OldTuple,
}

/// 'T'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncate {
    /// Sending (sub)transaction inside a stream block.
    pub xid: Option<Xid>,
    /// Truncated relations.
    pub relations: Vec<Arc<RelationInfo>>,
    /// CASCADE / RESTART IDENTITY.
    pub options: TruncateOptions,
}

/// 'M': `pg_logical_emit_message()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmittedMessage {
    /// Sending (sub)transaction inside a stream block.
    pub xid: Option<Xid>,
    /// The message.
    pub message: LogicalMessage,
}

/// 'S': start of a block of changes of an in-progress transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamStart {
    /// Top-level transaction id.
    pub xid: Xid,
    /// First block of this transaction.
    pub first_segment: bool,
}

/// 'c': a streamed transaction committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamCommit {
    /// Top-level transaction id.
    pub xid: Xid,
    /// Currently unused flags, kept as sent.
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the transaction.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_ts: PgTimestamp,
}

/// 'A': a streamed transaction, or one of its subtransactions, aborted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamAbort {
    /// Top-level transaction id.
    pub xid: Xid,
    /// Aborted subtransaction; equal to `xid` when the whole transaction
    /// aborted.
    pub subxid: Xid,
    /// Abort LSN (version 4 with `streaming = parallel` only).
    pub abort_lsn: Option<Lsn>,
    /// Abort time (version 4 with `streaming = parallel` only).
    pub abort_ts: Option<PgTimestamp>,
}

/// 'b': start of a transaction being prepared for two-phase commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BeginPrepare {
    /// LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// End LSN of the prepared transaction.
    pub end_lsn: Lsn,
    /// Prepare time.
    pub prepare_ts: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction identifier.
    pub gid: ByteStr,
}

/// 'P' (Prepare) and 'p' (Stream Prepare).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepare {
    /// Currently unused flags, kept as sent.
    pub flags: u8,
    /// LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// End LSN of the prepared transaction.
    pub end_lsn: Lsn,
    /// Prepare time.
    pub prepare_ts: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction identifier.
    pub gid: ByteStr,
}

/// 'K': COMMIT PREPARED.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitPrepared {
    /// Currently unused flags, kept as sent.
    pub flags: u8,
    /// LSN of the commit-prepared record.
    pub commit_lsn: Lsn,
    /// End LSN of the commit-prepared transaction.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_ts: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction identifier.
    pub gid: ByteStr,
}

/// 'r': ROLLBACK PREPARED.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollbackPrepared {
    /// Currently unused flags, kept as sent.
    pub flags: u8,
    /// End LSN of the prepared transaction.
    pub prepare_end_lsn: Lsn,
    /// End LSN of the rollback-prepared transaction.
    pub rollback_end_lsn: Lsn,
    /// Prepare time.
    pub prepare_ts: PgTimestamp,
    /// Rollback time.
    pub rollback_ts: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction identifier.
    pub gid: ByteStr,
}

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// 'B'.
    Begin(Begin),
    /// 'C'.
    Commit(Commit),
    /// 'O': the transaction was replayed from another node.
    Origin(Origin),
    /// 'R'.
    Relation(RelationMessage),
    /// 'Y'.
    Type(TypeMessage),
    /// 'I'.
    Insert(Insert),
    /// 'U'.
    Update(Update),
    /// 'D'.
    Delete(Delete),
    /// 'T'.
    Truncate(Truncate),
    /// 'M'.
    Message(EmittedMessage),
    /// 'S' (v2+).
    StreamStart(StreamStart),
    /// 'E' (v2+).
    StreamStop,
    /// 'c' (v2+).
    StreamCommit(StreamCommit),
    /// 'A' (v2+).
    StreamAbort(StreamAbort),
    /// 'b' (v3+, or any version on a two_phase slot).
    BeginPrepare(BeginPrepare),
    /// 'P' (v3+, or any version on a two_phase slot).
    Prepare(Prepare),
    /// 'K' (v3+, or any version on a two_phase slot).
    CommitPrepared(CommitPrepared),
    /// 'r' (v3+, or any version on a two_phase slot).
    RollbackPrepared(RollbackPrepared),
    /// 'p' (v3+; streaming needs v2 at least).
    StreamPrepare(Prepare),
}

impl Message {
    /// The message type's name as the PostgreSQL documentation spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Begin(_) => "Begin",
            Message::Commit(_) => "Commit",
            Message::Origin(_) => "Origin",
            Message::Relation(_) => "Relation",
            Message::Type(_) => "Type",
            Message::Insert(_) => "Insert",
            Message::Update(_) => "Update",
            Message::Delete(_) => "Delete",
            Message::Truncate(_) => "Truncate",
            Message::Message(_) => "Message",
            Message::StreamStart(_) => "Stream Start",
            Message::StreamStop => "Stream Stop",
            Message::StreamCommit(_) => "Stream Commit",
            Message::StreamAbort(_) => "Stream Abort",
            Message::BeginPrepare(_) => "Begin Prepare",
            Message::Prepare(_) => "Prepare",
            Message::CommitPrepared(_) => "Commit Prepared",
            Message::RollbackPrepared(_) => "Rollback Prepared",
            Message::StreamPrepare(_) => "Stream Prepare",
        }
    }
}

/// Name and minimum protocol version of a message type byte.
pub(crate) fn describe_tag(tag: u8) -> Option<(&'static str, ProtocolVersion)> {
    use ProtocolVersion::*;
    Some(match tag {
        b'B' => ("Begin", V1),
        b'C' => ("Commit", V1),
        b'O' => ("Origin", V1),
        b'R' => ("Relation", V1),
        b'Y' => ("Type", V1),
        b'I' => ("Insert", V1),
        b'U' => ("Update", V1),
        b'D' => ("Delete", V1),
        b'T' => ("Truncate", V1),
        b'M' => ("Message", V1),
        b'S' => ("Stream Start", V2),
        b'E' => ("Stream Stop", V2),
        b'c' => ("Stream Commit", V2),
        b'A' => ("Stream Abort", V2),
        // The documentation lists the two-phase messages as protocol
        // version 3, but a PostgreSQL 15 slot created with two_phase = true
        // sends them at any proto_version (captured in
        // tests/fixtures/v1.bin), so they are accepted everywhere.
        b'b' => ("Begin Prepare", V1),
        b'P' => ("Prepare", V1),
        b'K' => ("Commit Prepared", V1),
        b'r' => ("Rollback Prepared", V1),
        b'p' => ("Stream Prepare", V2),
        _ => return None,
    })
}

/// Reads one message's fields; owns the error context (message name) so
/// field readers stay one-liners.
struct Reader<'a> {
    c: Cursor<'a>,
    name: &'static str,
}

impl Reader<'_> {
    fn err(&self, e: CursorError) -> DecodeError {
        DecodeError::field(self.name, e)
    }
    fn at(&self, offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError::new(self.name, offset, kind)
    }
    fn u8(&mut self, f: &'static str) -> Result<u8, DecodeError> {
        self.c.u8(f).map_err(|e| self.err(e))
    }
    fn u32(&mut self, f: &'static str) -> Result<u32, DecodeError> {
        self.c.u32(f).map_err(|e| self.err(e))
    }
    fn i32(&mut self, f: &'static str) -> Result<i32, DecodeError> {
        self.c.i32(f).map_err(|e| self.err(e))
    }
    fn lsn(&mut self, f: &'static str) -> Result<Lsn, DecodeError> {
        self.c.u64(f).map(Lsn).map_err(|e| self.err(e))
    }
    fn ts(&mut self, f: &'static str) -> Result<PgTimestamp, DecodeError> {
        self.c.i64(f).map(PgTimestamp).map_err(|e| self.err(e))
    }
    fn xid(&mut self, f: &'static str) -> Result<Xid, DecodeError> {
        self.u32(f).map(Xid)
    }
    fn oid(&mut self, f: &'static str) -> Result<Oid, DecodeError> {
        self.u32(f).map(Oid)
    }
    fn string(&mut self, f: &'static str) -> Result<ByteStr, DecodeError> {
        self.c.cstr(f).map_err(|e| self.err(e))
    }
    fn bool(&mut self, f: &'static str) -> Result<bool, DecodeError> {
        let offset = self.c.position();
        match self.u8(f)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(self.at(offset, DecodeErrorKind::InvalidByte { field: f, value })),
        }
    }
    fn finish(&self) -> Result<(), DecodeError> {
        self.c.finish().map_err(|e| self.err(e))
    }

    /// The xid field that exists only inside stream blocks.
    fn stream_xid(&mut self, in_stream: bool) -> Result<Option<Xid>, DecodeError> {
        if in_stream {
            self.xid("transaction id").map(Some)
        } else {
            Ok(None)
        }
    }

    fn relation(
        &mut self,
        relations: &RelationCache,
        stream: Option<Xid>,
    ) -> Result<Arc<RelationInfo>, DecodeError> {
        let offset = self.c.position();
        let oid = self.oid("relation oid")?;
        relations
            .get(oid, stream)
            .cloned()
            .ok_or_else(|| self.at(offset, DecodeErrorKind::UnknownRelation { oid }))
    }

    /// TupleData, checked against the relation's column count.
    fn tuple(&mut self, relation: &RelationInfo) -> Result<Tuple, DecodeError> {
        let offset = self.c.position();
        let n = self.c.count_i16("column count").map_err(|e| self.err(e))?;
        if n != relation.columns.len() {
            return Err(self.at(
                offset,
                DecodeErrorKind::ColumnCountMismatch {
                    relation: relation.to_string(),
                    oid: relation.oid,
                    expected: relation.columns.len(),
                    found: n,
                },
            ));
        }
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            let kind_offset = self.c.position();
            let value = match self.u8("column kind")? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                b't' => Value::Text(self.value_bytes()?),
                b'b' => Value::Binary(self.value_bytes()?),
                value => {
                    return Err(self.at(
                        kind_offset,
                        DecodeErrorKind::InvalidByte {
                            field: "column kind",
                            value,
                        },
                    ))
                }
            };
            values.push(value);
        }
        Ok(Tuple(values))
    }

    fn value_bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = self
            .c
            .len_i32("column value length")
            .map_err(|e| self.err(e))?;
        self.c.bytes(len, "column value").map_err(|e| self.err(e))
    }

    /// The 'K'/'O' marker and tuple of an old row.
    fn old_tuple(&mut self, marker: u8, relation: &RelationInfo) -> Result<OldTuple, DecodeError> {
        let t = self.tuple(relation)?;
        Ok(if marker == b'K' {
            OldTuple::Key(t)
        } else {
            OldTuple::Full(t)
        })
    }

    fn marker(&mut self, field: &'static str, allowed: &[u8]) -> Result<u8, DecodeError> {
        let offset = self.c.position();
        let b = self.u8(field)?;
        if allowed.contains(&b) {
            Ok(b)
        } else {
            Err(self.at(offset, DecodeErrorKind::InvalidByte { field, value: b }))
        }
    }
}

/// Decodes one pgoutput message.
///
/// `stream` is the top-level xid of the Stream Start block the message is
/// inside of, if any; it decides whether row messages carry an xid and
/// which relation definitions they see.
pub(crate) fn decode(
    payload: &Bytes,
    config: &DecoderConfig,
    stream: Option<Xid>,
    relations: &RelationCache,
) -> Result<Message, DecodeError> {
    let mut c = Cursor::new(payload);
    let Ok(tag) = c.u8("message type") else {
        return Err(DecodeError::new("unknown", 0, DecodeErrorKind::Empty));
    };
    let Some((name, min_version)) = describe_tag(tag) else {
        return Err(DecodeError::new(
            "unknown",
            0,
            DecodeErrorKind::UnknownTag {
                tag: char::from(tag),
                byte: tag,
            },
        ));
    };
    if config.proto_version < min_version {
        return Err(DecodeError::new(
            name,
            0,
            DecodeErrorKind::NotInProtocolVersion {
                message: name,
                required: min_version.number(),
                configured: config.proto_version.number(),
            },
        ));
    }
    let in_stream = stream.is_some();
    let mut r = Reader { c, name };
    let msg = match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_ts: r.ts("commit timestamp")?,
            xid: r.xid("transaction id")?,
        }),
        b'C' => Message::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_ts: r.ts("commit timestamp")?,
        }),
        b'O' => Message::Origin(Origin {
            lsn: r.lsn("origin commit LSN")?,
            name: r.string("origin name")?,
        }),
        b'R' => {
            let xid = r.stream_xid(in_stream)?;
            let oid = r.oid("relation oid")?;
            let schema = r.string("namespace")?;
            let rel_name = r.string("relation name")?;
            let ri_offset = r.c.position();
            let ri = r.u8("replica identity")?;
            let replica_identity = ReplicaIdentity::from_byte(ri).ok_or_else(|| {
                r.at(
                    ri_offset,
                    DecodeErrorKind::InvalidByte {
                        field: "replica identity",
                        value: ri,
                    },
                )
            })?;
            let n = r.c.count_i16("column count").map_err(|e| r.err(e))?;
            // Each column takes at least 10 bytes; don't let a lying count
            // reserve memory the payload cannot back.
            let mut columns = Vec::with_capacity(n.min(r.c.remaining() / 10));
            for _ in 0..n {
                // Only bit 0 (key) is defined; later servers may add bits that
                // do not change how the column is applied, so others are ignored.
                let flags = r.u8("column flags")?;
                columns.push(Column {
                    is_key: flags & 1 != 0,
                    name: r.string("column name")?,
                    type_oid: r.oid("column type oid")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            Message::Relation(RelationMessage {
                xid,
                relation: Arc::new(RelationInfo {
                    oid,
                    schema,
                    name: rel_name,
                    replica_identity,
                    columns,
                }),
            })
        }
        b'Y' => Message::Type(TypeMessage {
            xid: r.stream_xid(in_stream)?,
            oid: r.oid("type oid")?,
            schema: r.string("namespace")?,
            name: r.string("type name")?,
        }),
        b'I' => {
            let xid = r.stream_xid(in_stream)?;
            let relation = r.relation(relations, stream)?;
            r.marker("new tuple marker", b"N")?;
            let new = r.tuple(&relation)?;
            Message::Insert(Insert { xid, relation, new })
        }
        b'U' => {
            let xid = r.stream_xid(in_stream)?;
            let relation = r.relation(relations, stream)?;
            let marker = r.marker("tuple marker", b"KON")?;
            let old = if marker == b'N' {
                None
            } else {
                let old = r.old_tuple(marker, &relation)?;
                r.marker("new tuple marker", b"N")?;
                Some(old)
            };
            let new = r.tuple(&relation)?;
            Message::Update(Update {
                xid,
                relation,
                old,
                new,
            })
        }
        b'D' => {
            let xid = r.stream_xid(in_stream)?;
            let relation = r.relation(relations, stream)?;
            let marker = r.marker("old tuple marker", b"KO")?;
            let old = r.old_tuple(marker, &relation)?;
            Message::Delete(Delete { xid, relation, old })
        }
        b'T' => {
            let xid = r.stream_xid(in_stream)?;
            let n = r.c.len_i32("relation count").map_err(|e| r.err(e))?;
            let opt_offset = r.c.position();
            let bits = r.u8("truncate options")?;
            if bits & !3 != 0 {
                return Err(r.at(
                    opt_offset,
                    DecodeErrorKind::InvalidByte {
                        field: "truncate options",
                        value: bits,
                    },
                ));
            }
            let mut rels = Vec::with_capacity(n.min(r.c.remaining() / 4));
            for _ in 0..n {
                rels.push(r.relation(relations, stream)?);
            }
            Message::Truncate(Truncate {
                xid,
                relations: rels,
                options: TruncateOptions {
                    cascade: bits & 1 != 0,
                    restart_identity: bits & 2 != 0,
                },
            })
        }
        b'M' => {
            let xid = r.stream_xid(in_stream)?;
            let transactional = r.bool("flags")?;
            let lsn = r.lsn("message LSN")?;
            let prefix = r.string("prefix")?;
            let len = r.c.len_i32("content length").map_err(|e| r.err(e))?;
            let content = r.c.bytes(len, "content").map_err(|e| r.err(e))?;
            Message::Message(EmittedMessage {
                xid,
                message: LogicalMessage {
                    transactional,
                    lsn,
                    prefix,
                    content,
                },
            })
        }
        b'S' => Message::StreamStart(StreamStart {
            xid: r.xid("transaction id")?,
            first_segment: r.bool("first segment")?,
        }),
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit(StreamCommit {
            xid: r.xid("transaction id")?,
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_ts: r.ts("commit timestamp")?,
        }),
        b'A' => {
            let xid = r.xid("transaction id")?;
            let subxid = r.xid("subtransaction id")?;
            let (abort_lsn, abort_ts) = if config.abort_has_lsn() {
                (Some(r.lsn("abort LSN")?), Some(r.ts("abort timestamp")?))
            } else {
                (None, None)
            };
            Message::StreamAbort(StreamAbort {
                xid,
                subxid,
                abort_lsn,
                abort_ts,
            })
        }
        b'b' => Message::BeginPrepare(BeginPrepare {
            prepare_lsn: r.lsn("prepare LSN")?,
            end_lsn: r.lsn("end LSN")?,
            prepare_ts: r.ts("prepare timestamp")?,
            xid: r.xid("transaction id")?,
            gid: r.string("gid")?,
        }),
        b'P' | b'p' => {
            let p = Prepare {
                flags: r.u8("flags")?,
                prepare_lsn: r.lsn("prepare LSN")?,
                end_lsn: r.lsn("end LSN")?,
                prepare_ts: r.ts("prepare timestamp")?,
                xid: r.xid("transaction id")?,
                gid: r.string("gid")?,
            };
            if tag == b'P' {
                Message::Prepare(p)
            } else {
                Message::StreamPrepare(p)
            }
        }
        b'K' => Message::CommitPrepared(CommitPrepared {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_ts: r.ts("commit timestamp")?,
            xid: r.xid("transaction id")?,
            gid: r.string("gid")?,
        }),
        b'r' => Message::RollbackPrepared(RollbackPrepared {
            flags: r.u8("flags")?,
            prepare_end_lsn: r.lsn("prepare end LSN")?,
            rollback_end_lsn: r.lsn("rollback end LSN")?,
            prepare_ts: r.ts("prepare timestamp")?,
            rollback_ts: r.ts("rollback timestamp")?,
            xid: r.xid("transaction id")?,
            gid: r.string("gid")?,
        }),
        // describe_tag() admitted only the tags matched above.
        _ => {
            return Err(DecodeError::new(
                name,
                0,
                DecodeErrorKind::UnknownTag {
                    tag: char::from(tag),
                    byte: tag,
                },
            ))
        }
    };
    r.finish()?;
    Ok(msg)
}
