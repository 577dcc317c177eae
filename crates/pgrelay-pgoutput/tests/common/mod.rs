//! Shared helpers for the integration tests: loading captured fixtures and
//! building pgoutput messages from parts (so multi-message scenarios stay
//! readable; the per-message byte layouts are pinned by byte literals in
//! `decode.rs`).

#![allow(dead_code)]

use std::path::PathBuf;

use bytes::{BufMut, Bytes, BytesMut};
use pgrelay_pgoutput::{
    Committed, Decoder, DecoderConfig, MemorySpillStore, ProtocolVersion, Reassembled, Reassembler,
    SpillStore, Streaming,
};
use pgrelay_types::Transaction;

pub fn config(v: ProtocolVersion, streaming: Streaming) -> DecoderConfig {
    DecoderConfig {
        proto_version: v,
        streaming,
    }
}

/// Reads a capture: records of u64 lsn, u32 length, payload.
pub fn load_fixture(name: &str) -> Vec<(u64, Bytes)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let data = Bytes::from(std::fs::read(&path).expect("fixture readable"));
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let lsn = u64::from_be_bytes(data[i..i + 8].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(data[i + 8..i + 12].try_into().expect("4 bytes")) as usize;
        out.push((lsn, data.slice(i + 12..i + 12 + len)));
        i += 12 + len;
    }
    out
}

/// Everything a stream produced, with transactions collected.
#[derive(Debug, Default)]
pub struct Outcome {
    pub transactions: Vec<Transaction>,
    pub messages: Vec<pgrelay_types::LogicalMessage>,
    pub spilled_transactions: usize,
    /// Eager mode: what came out as it arrived, as text lines.
    pub eager: Vec<String>,
}

pub fn collect<S: SpillStore>(out: Reassembled<S::Reader>, into: &mut Outcome) {
    match out {
        Reassembled::Transaction(c) => {
            if c.is_spilled() {
                into.spilled_transactions += 1;
            }
            into.transactions.push(drain(c));
        }
        Reassembled::Message(m) => into.messages.push(m),
        Reassembled::StreamChange {
            xid,
            subxid,
            change,
        } => {
            let id = match &change {
                pgrelay_types::Change::Insert { new, .. } => {
                    String::from_utf8_lossy(new.0[0].bytes().map_or(&b""[..], |b| &b[..]))
                        .into_owned()
                }
                other => format!("{other:?}"),
            };
            into.eager
                .push(format!("change {} {} {id}", xid.0, subxid.0));
        }
        Reassembled::StreamAbort { xid, subxid } => {
            into.eager.push(format!("abort {} {}", xid.0, subxid.0))
        }
        Reassembled::StreamCommit(info) => into
            .eager
            .push(format!("commit {} {}", info.xid.0, info.commit_lsn)),
    }
}

pub fn drain<R>(c: Committed<R>) -> Transaction
where
    R: Iterator<Item = Result<Bytes, pgrelay_pgoutput::SpillStoreError>>,
{
    c.into_transaction().expect("changes readable")
}

/// Decodes and reassembles `payloads` with the given budget.
pub fn run(
    cfg: DecoderConfig,
    payloads: &[Bytes],
    budget: usize,
) -> (Outcome, Reassembler<MemorySpillStore>) {
    let mut dec = Decoder::new(cfg);
    let mut re = Reassembler::new(MemorySpillStore::new(), budget);
    let mut outcome = Outcome::default();
    for (i, p) in payloads.iter().enumerate() {
        let msg = dec
            .decode(p)
            .unwrap_or_else(|e| panic!("message {i} ({:?}): {e}", p.first().map(|b| *b as char)));
        if let Some(out) = re.push(msg).unwrap_or_else(|e| panic!("message {i}: {e}")) {
            collect::<MemorySpillStore>(out, &mut outcome);
        }
    }
    (outcome, re)
}

/// Builds pgoutput messages.
#[derive(Default)]
pub struct Msg(BytesMut);

impl Msg {
    pub fn new(tag: u8) -> Self {
        let mut b = BytesMut::new();
        b.put_u8(tag);
        Msg(b)
    }
    pub fn u8(mut self, v: u8) -> Self {
        self.0.put_u8(v);
        self
    }
    pub fn i16(mut self, v: i16) -> Self {
        self.0.put_i16(v);
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.put_u32(v);
        self
    }
    pub fn i32(mut self, v: i32) -> Self {
        self.0.put_i32(v);
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.put_u64(v);
        self
    }
    pub fn s(mut self, v: &str) -> Self {
        self.0.put_slice(v.as_bytes());
        self.0.put_u8(0);
        self
    }
    pub fn raw(mut self, v: &[u8]) -> Self {
        self.0.put_slice(v);
        self
    }
    /// TupleData of text values (None = null).
    pub fn tuple(mut self, vals: &[Option<&str>]) -> Self {
        self.0.put_i16(vals.len() as i16);
        for v in vals {
            match v {
                None => self.0.put_u8(b'n'),
                Some(t) => {
                    self.0.put_u8(b't');
                    self.0.put_i32(t.len() as i32);
                    self.0.put_slice(t.as_bytes());
                }
            }
        }
        self
    }
    pub fn done(self) -> Bytes {
        self.0.freeze()
    }
}

pub fn begin(final_lsn: u64, xid: u32) -> Bytes {
    Msg::new(b'B').u64(final_lsn).u64(1_000).u32(xid).done()
}

pub fn commit(commit_lsn: u64, end_lsn: u64) -> Bytes {
    Msg::new(b'C')
        .u8(0)
        .u64(commit_lsn)
        .u64(end_lsn)
        .u64(1_000)
        .done()
}

/// Relation `public.<name>` with the given text columns; the first is the key.
pub fn relation(xid: Option<u32>, oid: u32, name: &str, cols: &[&str]) -> Bytes {
    let mut m = Msg::new(b'R');
    if let Some(x) = xid {
        m = m.u32(x);
    }
    m = m
        .u32(oid)
        .s("public")
        .s(name)
        .u8(b'd')
        .i16(cols.len() as i16);
    for (i, c) in cols.iter().enumerate() {
        m = m.u8(u8::from(i == 0)).s(c).u32(25).i32(-1);
    }
    m.done()
}

pub fn insert(xid: Option<u32>, oid: u32, vals: &[Option<&str>]) -> Bytes {
    let mut m = Msg::new(b'I');
    if let Some(x) = xid {
        m = m.u32(x);
    }
    m.u32(oid).u8(b'N').tuple(vals).done()
}

pub fn stream_start(xid: u32, first: bool) -> Bytes {
    Msg::new(b'S').u32(xid).u8(u8::from(first)).done()
}

pub fn stream_stop() -> Bytes {
    Msg::new(b'E').done()
}

pub fn stream_commit(xid: u32, commit_lsn: u64, end_lsn: u64) -> Bytes {
    Msg::new(b'c')
        .u32(xid)
        .u8(0)
        .u64(commit_lsn)
        .u64(end_lsn)
        .u64(1_000)
        .done()
}

pub fn stream_abort(xid: u32, subxid: u32) -> Bytes {
    Msg::new(b'A').u32(xid).u32(subxid).done()
}

pub fn begin_prepare(prepare_lsn: u64, end_lsn: u64, xid: u32, gid: &str) -> Bytes {
    Msg::new(b'b')
        .u64(prepare_lsn)
        .u64(end_lsn)
        .u64(1_000)
        .u32(xid)
        .s(gid)
        .done()
}

pub fn prepare(tag: u8, prepare_lsn: u64, end_lsn: u64, xid: u32, gid: &str) -> Bytes {
    Msg::new(tag)
        .u8(0)
        .u64(prepare_lsn)
        .u64(end_lsn)
        .u64(1_000)
        .u32(xid)
        .s(gid)
        .done()
}

pub fn commit_prepared(commit_lsn: u64, end_lsn: u64, xid: u32, gid: &str) -> Bytes {
    Msg::new(b'K')
        .u8(0)
        .u64(commit_lsn)
        .u64(end_lsn)
        .u64(2_000)
        .u32(xid)
        .s(gid)
        .done()
}

pub fn rollback_prepared(xid: u32, gid: &str) -> Bytes {
    Msg::new(b'r')
        .u8(0)
        .u64(10)
        .u64(20)
        .u64(1_000)
        .u64(2_000)
        .u32(xid)
        .s(gid)
        .done()
}

pub fn message(xid: Option<u32>, transactional: bool, prefix: &str, content: &[u8]) -> Bytes {
    let mut m = Msg::new(b'M');
    if let Some(x) = xid {
        m = m.u32(x);
    }
    m.u8(u8::from(transactional))
        .u64(77)
        .s(prefix)
        .i32(content.len() as i32)
        .raw(content)
        .done()
}

pub fn v(s: &str) -> Option<&str> {
    Some(s)
}

pub fn v1() -> DecoderConfig {
    config(ProtocolVersion::V1, Streaming::Off)
}

pub fn v2() -> DecoderConfig {
    config(ProtocolVersion::V2, Streaming::On)
}
