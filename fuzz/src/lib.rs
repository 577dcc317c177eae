//! Fuzz target bodies for pgrelay's parsers, as plain functions so that
//! three drivers share them: the libFuzzer binaries in `fuzz_targets/`
//! (nightly / `cargo fuzz`), the corpus replay run by CI on stable
//! (`tests/replay.rs`, `src/bin/replay.rs`), and a stable random-mutation
//! loop (`src/bin/smoke.rs`).
//!
//! Invariants checked beyond "does not panic": the frame decoder accounts
//! for every byte; decoders leave their state untouched on error; row
//! messages always match their relation's width; a reassembler with a zero
//! memory budget (everything spilled) produces exactly what an unbounded
//! one does; spill records re-encode to the same bytes.
//!
//! Multi-message inputs use the framing of [`split_messages`]: a sequence
//! of big-endian `u16` lengths each followed by that many bytes.
//!
//! PostgreSQL reference: "Message Formats" (protocol-message-formats),
//! "Streaming Replication Protocol" (protocol-replication), "Logical
//! Replication Message Formats" (protocol-logicalrep-message-formats).

use bytes::{Bytes, BytesMut};
use pgrelay_pgoutput::spill::codec::{
    crc32c, encode_change, encode_relation, SpillDecoder, SpillRecord,
};
use pgrelay_pgoutput::spill::MemoryReader;
use pgrelay_pgoutput::{
    Decoder, DecoderConfig, MemorySpillStore, Message, ProtocolVersion, ReassembleError,
    Reassembled, Reassembler, Streaming,
};
use pgrelay_types::{Change, LogicalMessage, Transaction};
use pgrelay_wire::{ErrorResponse, FrameDecoder, ReplicationMessage};

/// A target body.
pub type Target = fn(&[u8]);

/// Every target, by corpus directory name.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("copy_data", copy_data),
    ("pgoutput", pgoutput),
    ("pgoutput_stream", pgoutput_stream),
    ("reassembler", reassembler),
    ("spill_codec", spill_codec),
];

/// Looks a target up by name.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Splits `data` into `u16`-length-prefixed messages; a short last message
/// takes whatever is left.
pub fn split_messages(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let [a, b, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
        let (msg, after) = tail.split_at(len);
        out.push(msg);
        rest = after;
    }
    out
}

/// Inverse of [`split_messages`] (messages must be shorter than 64 KiB).
pub fn join_messages<'a>(msgs: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        let len = u16::try_from(m.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&m[..usize::from(len)]);
    }
    out
}

/// Decoder options from one selector byte (the first input byte of the
/// pgoutput targets): bits 0-1 version - 1, bits 2-3 streaming mode.
pub fn config_from(b: u8) -> DecoderConfig {
    let proto_version = match b & 3 {
        0 => ProtocolVersion::V1,
        1 => ProtocolVersion::V2,
        2 => ProtocolVersion::V3,
        _ => ProtocolVersion::V4,
    };
    let streaming = match (b >> 2) & 3 {
        0 => Streaming::Off,
        1 | 3 => Streaming::On,
        _ => Streaming::Parallel,
    };
    DecoderConfig {
        proto_version,
        streaming,
    }
}

/// The selector byte for a configuration (inverse of [`config_from`]).
pub fn config_byte(cfg: DecoderConfig) -> u8 {
    let v = cfg.proto_version.number() - 1;
    let s = match cfg.streaming {
        Streaming::Off => 0,
        Streaming::On => 1,
        Streaming::Parallel => 2,
    };
    v | (s << 2)
}

/// Backend byte stream → frames, fed in chunks; every frame body is then
/// parsed as what its tag says it is.
pub fn frame(data: &[u8]) {
    let Some((&knobs, stream)) = data.split_first() else {
        return;
    };
    let chunk = 1 + usize::from(knobs & 0x3f);
    let max = 16usize << (knobs >> 6);
    let mut dec = if knobs & 0x80 != 0 {
        FrameDecoder::with_max_message_len(max)
    } else {
        FrameDecoder::new()
    };
    let mut buf = BytesMut::new();
    let mut fed = 0usize;
    let mut framed = 0usize;
    let mut failed = None;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => {
                    let start = framed + 5;
                    assert_eq!(
                        &stream[start..start + f.body.len()],
                        &f.body[..],
                        "frame body is the input"
                    );
                    framed = start + f.body.len();
                    match f.tag {
                        b'E' | b'N' => {
                            drop(ErrorResponse::parse(&f.body).map(|e| e.is_transient()))
                        }
                        b'd' => copy_data(&f.body),
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(
                        failed.is_none_or(|f| f == e),
                        "a failed decoder repeats its error"
                    );
                    assert_eq!(e.offset, framed as u64);
                    failed = Some(e);
                    break;
                }
            }
        }
        assert_eq!(dec.stream_offset(), framed as u64);
        assert_eq!(framed + buf.len(), fed, "every byte is framed or buffered");
    }
}

/// A CopyData body during replication, and the same bytes as an
/// ErrorResponse body.
pub fn copy_data(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    match ReplicationMessage::decode(&body) {
        Ok(ReplicationMessage::XLogData(x)) => {
            assert_eq!(x.data.len(), body.len() - 25);
            // XLogData carries pgoutput; give it a go as well.
            let mut d = Decoder::new(config_from(0));
            drop(d.decode(&x.data));
        }
        Ok(ReplicationMessage::PrimaryKeepalive(_)) => assert_eq!(body.len(), 18),
        Err(e) => assert!(e.offset() <= body.len() && !e.is_transient()),
    }
    if let Ok(e) = ErrorResponse::parse(&body) {
        let _ = (e.to_string(), e.is_transient());
    }
}

/// Relation 16384 (`public.t(id, v)`), preloaded so single-message inputs
/// can reach the tuple decoder.
const PRELOADED_RELATION: &[u8] = b"R\x00\x00\x40\x00public\0t\0d\x00\x02\x01id\0\x00\x00\x00\x17\xff\xff\xff\xff\x00v\0\x00\x00\x00\x19\xff\xff\xff\xff";

fn decode_all(mut d: Decoder, msgs: &[&[u8]]) {
    for m in msgs {
        let before = (d.stream_xid(), d.relations().len());
        match d.decode(&Bytes::copy_from_slice(m)) {
            Ok(msg) => check_message(&msg),
            Err(e) => {
                assert!(
                    e.offset <= m.len(),
                    "offset {} beyond {} bytes: {e}",
                    e.offset,
                    m.len()
                );
                assert_eq!(
                    (d.stream_xid(), d.relations().len()),
                    before,
                    "state unchanged on error"
                );
            }
        }
    }
}

fn check_message(msg: &Message) {
    let width = |r: &pgrelay_types::RelationInfo| r.columns.len();
    match msg {
        Message::Insert(m) => assert_eq!(m.new.len(), width(&m.relation)),
        Message::Update(m) => {
            assert_eq!(m.new.len(), width(&m.relation));
            if let Some(o) = &m.old {
                assert_eq!(o.tuple().len(), width(&m.relation));
            }
        }
        Message::Delete(m) => assert_eq!(m.old.tuple().len(), width(&m.relation)),
        _ => {}
    }
}

/// pgoutput messages outside any stream block: a config byte, then
/// length-prefixed messages decoded in sequence by one decoder.
pub fn pgoutput(data: &[u8]) {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let mut d = Decoder::new(config_from(cfg));
    if d.decode(&Bytes::from_static(PRELOADED_RELATION)).is_err() {
        return;
    }
    decode_all(d, &split_messages(rest));
}

/// Like [`pgoutput`], but starting inside the Stream Start block of
/// transaction 0x2f2 (protocol version 2 at least).
pub fn pgoutput_stream(data: &[u8]) {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let mut cfg = config_from(cfg);
    if cfg.proto_version == ProtocolVersion::V1 {
        cfg.proto_version = ProtocolVersion::V2;
    }
    let mut d = Decoder::new(cfg);
    if d.decode(&Bytes::from_static(PRELOADED_RELATION)).is_err()
        || d.decode(&Bytes::from_static(b"S\x00\x00\x02\xf2\x01"))
            .is_err()
    {
        return;
    }
    decode_all(d, &split_messages(rest));
}

/// Memory budgets the reassembler target picks from (second input byte).
pub const BUDGETS: [usize; 5] = [0, 64, 1024, 64 << 10, usize::MAX];

#[derive(Debug, PartialEq)]
enum Out {
    Tx(Transaction),
    Msg(LogicalMessage),
}

fn drain(
    r: Result<Option<Reassembled<MemoryReader>>, ReassembleError>,
) -> Result<Option<Out>, String> {
    match r {
        Ok(None) => Ok(None),
        Ok(Some(Reassembled::Message(m))) => Ok(Some(Out::Msg(m))),
        Ok(Some(Reassembled::Transaction(c))) => {
            // Spilled data we wrote ourselves must always read back.
            let t = c
                .into_transaction()
                .unwrap_or_else(|e| panic!("spill read-back failed: {e}"));
            Ok(Some(Out::Tx(t)))
        }
        Ok(Some(other)) => panic!("eager output without eager mode: {other:?}"),
        Err(e) => Err(e.to_string()),
    }
}

/// Rebuilds whole transactions from an eager reassembler's output, with
/// the buffering reassembler's rules (a subtransaction abort drops that
/// subtransaction's changes), so the two can be compared.
#[derive(Default)]
struct Rebuild {
    open: Option<(
        pgrelay_types::Xid,
        Vec<(pgrelay_types::Xid, pgrelay_types::Change)>,
    )>,
}

impl Rebuild {
    fn feed(
        &mut self,
        r: Result<Option<Reassembled<MemoryReader>>, ReassembleError>,
    ) -> Result<Option<Out>, String> {
        match r {
            Ok(Some(Reassembled::StreamChange {
                xid,
                subxid,
                change,
            })) => {
                let open = self.open.get_or_insert_with(|| (xid, Vec::new()));
                assert_eq!(open.0, xid, "changes of two eager transactions interleave");
                open.1.push((subxid, change));
                Ok(None)
            }
            Ok(Some(Reassembled::StreamAbort { xid, subxid })) => {
                if let Some(open) = &mut self.open {
                    assert_eq!(open.0, xid, "abort of another eager transaction");
                    if xid == subxid {
                        self.open = None;
                    } else {
                        open.1.retain(|(s, _)| *s != subxid);
                    }
                }
                Ok(None)
            }
            Ok(Some(Reassembled::StreamCommit(info))) => {
                let changes = self.open.take().map(|o| o.1).unwrap_or_default();
                Ok(Some(Out::Tx(Transaction {
                    info,
                    changes: changes.into_iter().map(|(_, c)| c).collect(),
                })))
            }
            other => drain(other),
        }
    }
}

/// A message sequence through the decoder and two reassemblers: one with
/// the budget chosen by the second byte, one unbounded. Both must agree on
/// every output and every error.
pub fn reassembler(data: &[u8]) {
    let [cfg, budget, rest @ ..] = data else {
        return;
    };
    let mut d = Decoder::new(config_from(*cfg));
    let budget = BUDGETS[usize::from(*budget) % BUDGETS.len()];
    let mut small = Reassembler::new(MemorySpillStore::new(), budget);
    let mut big = Reassembler::new(MemorySpillStore::new(), usize::MAX);
    // Eager mode hands a streamed transaction out as it arrives; rebuilt,
    // it must equal what buffering produces.
    let mut eager = Reassembler::new(MemorySpillStore::new(), usize::MAX);
    eager.set_eager_streams(true);
    let mut rebuild = Some(Rebuild::default());
    for m in split_messages(rest) {
        let Ok(msg) = d.decode(&Bytes::copy_from_slice(m)) else {
            continue;
        };
        if let Message::Insert(_) | Message::Update(_) | Message::Delete(_) | Message::Truncate(_) =
            msg
        {
            check_message(&msg);
        }
        let e = eager.push(msg.clone());
        let a = drain(small.push(msg.clone()));
        let b = drain(big.push(msg));
        assert_eq!(a, b, "spilling changed the outcome (budget {budget})");
        if let Some(r) = &mut rebuild {
            match r.feed(e) {
                // Only eager mode rejects a Stream Prepare of an eager
                // transaction: stop comparing there.
                Err(_) => rebuild = None,
                e if b.is_ok() => assert_eq!(e, b, "eager mode changed the outcome"),
                _ => rebuild = None,
            }
        }
        if a.is_err() {
            let again = small.push(Message::StreamStop);
            assert!(matches!(again, Err(ReassembleError::Poisoned)));
            return;
        }
        let stats = small.stats();
        assert!(stats.buffered_bytes <= budget, "over budget: {stats:?}");
    }
}

/// Spill records in sequence; with bit 0 of the first byte set, each
/// record's checksum is recomputed first so mutations reach the body
/// parser. Accepted records must re-encode to the same bytes.
pub fn spill_codec(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut dec = SpillDecoder::new();
    let mut scratch = Vec::new();
    for rec in split_messages(rest) {
        let mut rec = rec.to_vec();
        if mode & 1 != 0 && rec.len() >= 4 {
            let body = rec.len() - 4;
            let crc = crc32c(&rec[..body]);
            rec[body..].copy_from_slice(&crc.to_be_bytes());
        }
        let bytes = Bytes::from(rec);
        match dec.decode(&bytes) {
            Ok(SpillRecord::Relation(r)) => {
                encode_relation(&r, &mut scratch).expect("decoded relations re-encode");
                assert_eq!(&scratch[..], &bytes[..], "relation record is canonical");
            }
            Ok(SpillRecord::Change { subxid, change }) => {
                encode_change(subxid, &change, &mut scratch).expect("decoded changes re-encode");
                assert_eq!(&scratch[..], &bytes[..], "change record is canonical");
                let again = dec
                    .decode(&Bytes::from(scratch.clone()))
                    .expect("re-encoded record decodes");
                assert_eq!(
                    again,
                    SpillRecord::Change {
                        subxid,
                        change: change.clone()
                    }
                );
                if let Change::Insert { relation, new } = &change {
                    assert_eq!(new.len(), relation.columns.len());
                }
            }
            Err(e) => assert!(e.offset <= bytes.len() && !e.is_transient()),
        }
    }
}

/// Runs every file in `dir` through `f`; returns how many ran.
pub fn replay_dir(dir: &std::path::Path, f: Target) -> std::io::Result<usize> {
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        if e.file_type()?.is_file() {
            f(&std::fs::read(e.path())?);
            n += 1;
        }
    }
    Ok(n)
}
