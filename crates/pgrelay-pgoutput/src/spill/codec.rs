//! The spill record encoding: a compact, versioned, checksummed byte form of
//! a relation definition or of one buffered change, and its strict decoder.
//!
//! Layout of every record (integers big-endian):
//!
//! ```text
//! u8 version (= 1) | u8 kind ('R' relation, 'C' change) | body | u32 CRC-32C of all preceding bytes
//!
//! relation body: u32 oid, str schema, str name, u8 replica identity ('d','n','f','i'),
//!                u16 ncols, ncols x (u8 flags (1 = key), str name, u32 type oid, i32 typmod)
//! change body:   u32 subxid, u8 tag, then by tag
//!   'I' u32 oid, tuple                 'D' u32 oid, u8 old ('K'|'O'), tuple
//!   'U' u32 oid, u8 old ('-'|'K'|'O'), [tuple if not '-'], tuple
//!   'T' u8 options (1 cascade, 2 restart identity), u32 n, n x u32 oid
//!   'M' u8 transactional (0|1), u64 lsn, str prefix, bytes content
//! tuple: u16 n, n x value; value: 'n' | 'u' | 't' bytes | 'b' bytes
//! str / bytes: u32 length, then the bytes (str must be UTF-8)
//! ```
//!
//! Changes refer to relations by oid; a spill stream is self-describing
//! because the writer emits a relation record before the first change that
//! uses each definition, and the decoder resolves oids against the relation
//! records it has seen in the same stream, never against live state (which
//! may have moved on by the time the spill is read back).
//!
//! Invariants: the decoder is a parser of untrusted bytes like any other in
//! pgrelay: it never panics, verifies the checksum before looking at the
//! body, rejects unknown versions, kinds and enum bytes, negative or
//! overlong lengths, trailing bytes and tuples whose width differs from
//! their relation's, and returns payloads as `Bytes` slices of the record.
//!
//! PostgreSQL reference: none (pgrelay's own format); the data model follows
//! "Logical Replication Message Formats" (protocol-logicalrep-message-formats).

use std::sync::Arc;

use bytes::Bytes;
use pgrelay_types::{
    ByteStr, Change, Column, LogicalMessage, Lsn, Oid, OldTuple, RelationInfo, ReplicaIdentity,
    TruncateOptions, Tuple, Value, Xid,
};
use pgrelay_wire::{Cursor, CursorError, CursorErrorKind};

use crate::relation_cache::IdMap;

/// Current record format version.
pub const FORMAT_VERSION: u8 = 1;
const KIND_RELATION: u8 = b'R';
const KIND_CHANGE: u8 = b'C';
const HEADER_LEN: usize = 2;
const CRC_LEN: usize = 4;

/// A change too large for the format's length fields (4 GiB values, 65535
/// columns), which no PostgreSQL server can produce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot spill {what} of size {len}: it exceeds the spill format's limit; this change did not \
     come from PostgreSQL, report it as a pgrelay bug"
)]
pub struct EncodeError {
    /// What was too large.
    pub what: &'static str,
    /// Its size.
    pub len: usize,
}

impl EncodeError {
    /// Retrying cannot shrink the change: fatal.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// What was wrong with a spill record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpillDecodeErrorKind {
    /// A field was short, negative, unterminated, not UTF-8, or trailing.
    #[error("{0}")]
    Field(CursorErrorKind),
    /// Shorter than header plus checksum.
    #[error("record of {len} bytes is shorter than the minimum of 6")]
    TooShort {
        /// Record length.
        len: usize,
    },
    /// The checksum does not match.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Stored value.
        stored: u32,
        /// Computed value.
        computed: u32,
    },
    /// Written by another pgrelay version.
    #[error("unsupported format version {0}")]
    Version(u8),
    /// An enumerated byte had an undefined value.
    #[error("{field} has undefined value {value:#04x}")]
    InvalidByte {
        /// Field name.
        field: &'static str,
        /// The byte.
        value: u8,
    },
    /// A change referenced a relation no earlier record described.
    #[error("relation {0} has no preceding relation record")]
    UnknownRelation(Oid),
    /// A tuple's width differs from its relation's.
    #[error("tuple has {found} values but relation {oid} has {expected} columns")]
    ColumnCountMismatch {
        /// Relation oid.
        oid: Oid,
        /// Its column count.
        expected: usize,
        /// Values found.
        found: usize,
    },
}

/// A spill record that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "spill record damaged at byte {offset}: {kind}; spill files must not be shared between \
     pgrelay versions or modified: restart pgrelay, which rebuilds spills from the server"
)]
pub struct SpillDecodeError {
    /// Offset in the record.
    pub offset: usize,
    /// What was wrong.
    pub kind: SpillDecodeErrorKind,
}

impl SpillDecodeError {
    /// Damaged data stays damaged: fatal.
    pub fn is_transient(&self) -> bool {
        false
    }
}

impl From<CursorError> for SpillDecodeError {
    fn from(e: CursorError) -> Self {
        SpillDecodeError {
            offset: e.offset,
            kind: SpillDecodeErrorKind::Field(e.kind),
        }
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpillRecord {
    /// A relation definition used by later change records.
    Relation(Arc<RelationInfo>),
    /// A buffered change and the (sub)transaction that made it.
    Change {
        /// Subtransaction id (the top-level id if not in a subtransaction).
        subxid: Xid,
        /// The change.
        change: Change,
    },
}

/// Replaces `out` with the record for a relation definition.
pub fn encode_relation(rel: &RelationInfo, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.clear();
    out.extend_from_slice(&[FORMAT_VERSION, KIND_RELATION]);
    out.extend_from_slice(&rel.oid.0.to_be_bytes());
    put_bytes(out, rel.schema.as_bytes(), "schema name")?;
    put_bytes(out, rel.name.as_bytes(), "relation name")?;
    out.push(rel.replica_identity.as_byte());
    put_u16_len(out, rel.columns.len(), "column list")?;
    for col in &rel.columns {
        out.push(u8::from(col.is_key));
        put_bytes(out, col.name.as_bytes(), "column name")?;
        out.extend_from_slice(&col.type_oid.0.to_be_bytes());
        out.extend_from_slice(&col.type_modifier.to_be_bytes());
    }
    seal(out);
    Ok(())
}

/// Replaces `out` with the record for a change made by `subxid`.
pub fn encode_change(subxid: Xid, change: &Change, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.clear();
    out.extend_from_slice(&[FORMAT_VERSION, KIND_CHANGE]);
    out.extend_from_slice(&subxid.0.to_be_bytes());
    match change {
        Change::Insert { relation, new } => {
            out.push(b'I');
            out.extend_from_slice(&relation.oid.0.to_be_bytes());
            put_tuple(out, new)?;
        }
        Change::Update { relation, old, new } => {
            out.push(b'U');
            out.extend_from_slice(&relation.oid.0.to_be_bytes());
            match old {
                None => out.push(b'-'),
                Some(old) => put_old(out, old)?,
            }
            put_tuple(out, new)?;
        }
        Change::Delete { relation, old } => {
            out.push(b'D');
            out.extend_from_slice(&relation.oid.0.to_be_bytes());
            put_old(out, old)?;
        }
        Change::Truncate { relations, options } => {
            out.push(b'T');
            out.push(u8::from(options.cascade) | (u8::from(options.restart_identity) << 1));
            put_u32_len(out, relations.len(), "truncate relation list")?;
            for r in relations {
                out.extend_from_slice(&r.oid.0.to_be_bytes());
            }
        }
        Change::Message(m) => {
            out.push(b'M');
            out.push(u8::from(m.transactional));
            out.extend_from_slice(&m.lsn.0.to_be_bytes());
            put_bytes(out, m.prefix.as_bytes(), "message prefix")?;
            put_bytes(out, &m.content, "message content")?;
        }
    }
    seal(out);
    Ok(())
}

fn put_u16_len(out: &mut Vec<u8>, len: usize, what: &'static str) -> Result<(), EncodeError> {
    let n = u16::try_from(len).map_err(|_| EncodeError { what, len })?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

fn put_u32_len(out: &mut Vec<u8>, len: usize, what: &'static str) -> Result<(), EncodeError> {
    let n = u32::try_from(len).map_err(|_| EncodeError { what, len })?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8], what: &'static str) -> Result<(), EncodeError> {
    put_u32_len(out, b.len(), what)?;
    out.extend_from_slice(b);
    Ok(())
}

fn put_old(out: &mut Vec<u8>, old: &OldTuple) -> Result<(), EncodeError> {
    match old {
        OldTuple::Key(t) => {
            out.push(b'K');
            put_tuple(out, t)
        }
        OldTuple::Full(t) => {
            out.push(b'O');
            put_tuple(out, t)
        }
    }
}

fn put_tuple(out: &mut Vec<u8>, t: &Tuple) -> Result<(), EncodeError> {
    put_u16_len(out, t.len(), "tuple")?;
    for v in t.values() {
        match v {
            Value::Null => out.push(b'n'),
            Value::UnchangedToast => out.push(b'u'),
            Value::Text(b) => {
                out.push(b't');
                put_bytes(out, b, "column value")?;
            }
            Value::Binary(b) => {
                out.push(b'b');
                put_bytes(out, b, "column value")?;
            }
        }
    }
    Ok(())
}

fn seal(out: &mut Vec<u8>) {
    let crc = crc32c(out);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Decodes the records of one spill stream, in order.
#[derive(Debug, Clone, Default)]
pub struct SpillDecoder {
    relations: IdMap<Oid, Arc<RelationInfo>>,
}

impl SpillDecoder {
    /// A decoder that has seen no relation records yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one record; relation records are remembered for the change
    /// records that follow.
    pub fn decode(&mut self, record: &Bytes) -> Result<SpillRecord, SpillDecodeError> {
        let len = record.len();
        let body_end = len
            .checked_sub(CRC_LEN)
            .filter(|end| *end >= HEADER_LEN)
            .ok_or(SpillDecodeError {
                offset: 0,
                kind: SpillDecodeErrorKind::TooShort { len },
            })?;
        let (sealed, stored) = record.split_at(body_end);
        let stored = u32::from_be_bytes(stored.try_into().unwrap_or_default());
        let computed = crc32c(sealed);
        if stored != computed {
            return Err(SpillDecodeError {
                offset: body_end,
                kind: SpillDecodeErrorKind::Checksum { stored, computed },
            });
        }
        let body = record.slice(..body_end);
        let mut c = Cursor::new(&body);
        let version = c.u8("format version")?;
        if version != FORMAT_VERSION {
            return Err(SpillDecodeError {
                offset: 0,
                kind: SpillDecodeErrorKind::Version(version),
            });
        }
        let kind = c.u8("record kind")?;
        let out = match kind {
            KIND_RELATION => {
                let rel = Arc::new(decode_relation(&mut c)?);
                self.relations.insert(rel.oid, rel.clone());
                SpillRecord::Relation(rel)
            }
            KIND_CHANGE => {
                let subxid = Xid(c.u32("subtransaction id")?);
                let change = self.decode_change(&mut c)?;
                SpillRecord::Change { subxid, change }
            }
            value => return Err(invalid(1, "record kind", value)),
        };
        c.finish()?;
        Ok(out)
    }

    fn relation(&self, c: &mut Cursor<'_>) -> Result<Arc<RelationInfo>, SpillDecodeError> {
        let offset = c.position();
        let oid = Oid(c.u32("relation oid")?);
        self.relations.get(&oid).cloned().ok_or(SpillDecodeError {
            offset,
            kind: SpillDecodeErrorKind::UnknownRelation(oid),
        })
    }

    fn decode_change(&self, c: &mut Cursor<'_>) -> Result<Change, SpillDecodeError> {
        let tag_offset = c.position();
        Ok(match c.u8("change tag")? {
            b'I' => {
                let relation = self.relation(c)?;
                let new = tuple(c, &relation)?;
                Change::Insert { relation, new }
            }
            b'U' => {
                let relation = self.relation(c)?;
                let old = match old_marker(c, b"-KO")? {
                    b'-' => None,
                    marker => Some(old_tuple(c, marker, &relation)?),
                };
                let new = tuple(c, &relation)?;
                Change::Update { relation, old, new }
            }
            b'D' => {
                let relation = self.relation(c)?;
                let marker = old_marker(c, b"KO")?;
                let old = old_tuple(c, marker, &relation)?;
                Change::Delete { relation, old }
            }
            b'T' => {
                let opt_offset = c.position();
                let bits = c.u8("truncate options")?;
                if bits & !3 != 0 {
                    return Err(invalid(opt_offset, "truncate options", bits));
                }
                let n = u32_len(c, "truncate relation count")?;
                let mut relations = Vec::with_capacity(n.min(c.remaining() / 4));
                for _ in 0..n {
                    relations.push(self.relation(c)?);
                }
                Change::Truncate {
                    relations,
                    options: TruncateOptions {
                        cascade: bits & 1 != 0,
                        restart_identity: bits & 2 != 0,
                    },
                }
            }
            b'M' => {
                let flag_offset = c.position();
                let transactional = match c.u8("transactional flag")? {
                    0 => false,
                    1 => true,
                    v => return Err(invalid(flag_offset, "transactional flag", v)),
                };
                let lsn = Lsn(c.u64("message LSN")?);
                let prefix = string(c, "message prefix")?;
                let content = bytes(c, "message content")?;
                Change::Message(LogicalMessage {
                    transactional,
                    lsn,
                    prefix,
                    content,
                })
            }
            v => return Err(invalid(tag_offset, "change tag", v)),
        })
    }
}

fn invalid(offset: usize, field: &'static str, value: u8) -> SpillDecodeError {
    SpillDecodeError {
        offset,
        kind: SpillDecodeErrorKind::InvalidByte { field, value },
    }
}

fn u32_len(c: &mut Cursor<'_>, field: &'static str) -> Result<usize, SpillDecodeError> {
    let offset = c.position();
    let n = c.u32(field)?;
    usize::try_from(n).map_err(|_| SpillDecodeError {
        offset,
        kind: SpillDecodeErrorKind::Field(CursorErrorKind::UnexpectedEnd {
            field,
            needed: usize::MAX,
            available: c.remaining(),
        }),
    })
}

fn bytes(c: &mut Cursor<'_>, field: &'static str) -> Result<Bytes, SpillDecodeError> {
    let len = u32_len(c, field)?;
    Ok(c.bytes(len, field)?)
}

fn string(c: &mut Cursor<'_>, field: &'static str) -> Result<ByteStr, SpillDecodeError> {
    let start = c.position() + 4;
    let raw = bytes(c, field)?;
    ByteStr::from_utf8(raw).map_err(|e| SpillDecodeError {
        offset: start + e.valid_up_to(),
        kind: SpillDecodeErrorKind::Field(CursorErrorKind::InvalidUtf8 { field }),
    })
}

fn decode_relation(c: &mut Cursor<'_>) -> Result<RelationInfo, SpillDecodeError> {
    let oid = Oid(c.u32("relation oid")?);
    let schema = string(c, "schema name")?;
    let name = string(c, "relation name")?;
    let ri_offset = c.position();
    let ri = c.u8("replica identity")?;
    let replica_identity =
        ReplicaIdentity::from_byte(ri).ok_or_else(|| invalid(ri_offset, "replica identity", ri))?;
    let n = usize::from(c.u16("column count")?);
    let mut columns = Vec::with_capacity(n.min(c.remaining() / 13));
    for _ in 0..n {
        let flag_offset = c.position();
        let is_key = match c.u8("column flags")? {
            0 => false,
            1 => true,
            v => return Err(invalid(flag_offset, "column flags", v)),
        };
        columns.push(Column {
            is_key,
            name: string(c, "column name")?,
            type_oid: Oid(c.u32("column type oid")?),
            type_modifier: c.i32("column type modifier")?,
        });
    }
    Ok(RelationInfo {
        oid,
        schema,
        name,
        replica_identity,
        columns,
    })
}

fn old_marker(c: &mut Cursor<'_>, allowed: &[u8]) -> Result<u8, SpillDecodeError> {
    let offset = c.position();
    let m = c.u8("old tuple marker")?;
    if allowed.contains(&m) {
        Ok(m)
    } else {
        Err(invalid(offset, "old tuple marker", m))
    }
}

fn old_tuple(
    c: &mut Cursor<'_>,
    marker: u8,
    rel: &RelationInfo,
) -> Result<OldTuple, SpillDecodeError> {
    let t = tuple(c, rel)?;
    Ok(if marker == b'K' {
        OldTuple::Key(t)
    } else {
        OldTuple::Full(t)
    })
}

fn tuple(c: &mut Cursor<'_>, rel: &RelationInfo) -> Result<Tuple, SpillDecodeError> {
    let offset = c.position();
    let n = usize::from(c.u16("tuple width")?);
    if n != rel.columns.len() {
        return Err(SpillDecodeError {
            offset,
            kind: SpillDecodeErrorKind::ColumnCountMismatch {
                oid: rel.oid,
                expected: rel.columns.len(),
                found: n,
            },
        });
    }
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let kind_offset = c.position();
        values.push(match c.u8("value kind")? {
            b'n' => Value::Null,
            b'u' => Value::UnchangedToast,
            b't' => Value::Text(bytes(c, "column value")?),
            b'b' => Value::Binary(bytes(c, "column value")?),
            v => return Err(invalid(kind_offset, "value kind", v)),
        });
    }
    Ok(Tuple(values))
}

/// CRC-32C (Castagnoli), the checksum PostgreSQL itself uses for WAL.
pub fn crc32c(data: &[u8]) -> u32 {
    // Slicing-by-8: eight table lookups per 8 input bytes instead of one
    // per byte; every record is checksummed when spilled and again when
    // read back, so this is on the path of every spilled change.
    let t = &CRC32C_TABLES;
    let mut crc = !0u32;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        let at = |k: usize, v: u32, shift: u32| t[k][usize::from((v >> shift) as u8)];
        crc = at(7, lo, 0)
            ^ at(6, lo, 8)
            ^ at(5, lo, 16)
            ^ at(4, lo, 24)
            ^ at(3, hi, 0)
            ^ at(2, hi, 8)
            ^ at(1, hi, 16)
            ^ at(0, hi, 24);
    }
    for &b in chunks.remainder() {
        crc = t[0][usize::from((crc ^ u32::from(b)) as u8)] ^ (crc >> 8);
    }
    !crc
}

/// `CRC32C_TABLES[0]` is the byte-wise table of the reflected polynomial
/// 0x82F63B78; table k advances a byte's contribution by k more bytes.
const CRC32C_TABLES: [[u32; 256]; 8] = {
    let mut tables = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        tables[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = tables[k - 1][i];
            tables[k][i] = (prev >> 8) ^ tables[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    tables
};
