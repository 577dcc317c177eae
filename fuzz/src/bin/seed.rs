//! Regenerates the seed corpus from the pgoutput captures in
//! crates/pgrelay-pgoutput/tests/fixtures (see the README there):
//! `cargo run --bin seed`. Long runs of row messages are thinned so seeds
//! stay small enough for fuzzing; files are named by content hash, so
//! re-running only adds what is new.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use pgrelay_fuzz::{config_byte, join_messages};
use pgrelay_pgoutput::spill::codec::{encode_change, encode_relation};
use pgrelay_pgoutput::{
    Decoder, DecoderConfig, MemorySpillStore, ProtocolVersion, Reassembled, Reassembler, Streaming,
};
use pgrelay_types::{Lsn, PgTimestamp, Xid};
use pgrelay_wire::{copy_data, StandbyStatusUpdate};

fn load(path: &Path) -> Vec<Bytes> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let data = Bytes::from(data);
    let mut out = Vec::new();
    let mut i = 0;
    while i + 12 <= data.len() {
        let len =
            u32::from_be_bytes([data[i + 8], data[i + 9], data[i + 10], data[i + 11]]) as usize;
        out.push(data.slice(i + 12..i + 12 + len));
        i += 12 + len;
    }
    out
}

/// Keeps at most the first 3 and last 2 messages of each run of row
/// changes.
fn thin(msgs: &[Bytes]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut run: Vec<Bytes> = Vec::new();
    let flush = |run: &mut Vec<Bytes>, out: &mut Vec<Bytes>| {
        if run.len() > 5 {
            out.extend(run[..3].iter().cloned());
            out.extend(run[run.len() - 2..].iter().cloned());
        } else {
            out.append(run);
        }
        run.clear();
    };
    for m in msgs {
        if matches!(m.first(), Some(b'I' | b'U' | b'D')) {
            run.push(m.clone());
        } else {
            flush(&mut run, &mut out);
            out.push(m.clone());
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Splits a message sequence into groups ending at transaction or stream
/// block boundaries.
fn groups(msgs: &[Bytes]) -> Vec<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for m in msgs {
        cur.push(m.clone());
        if matches!(
            m.first(),
            Some(b'C' | b'E' | b'P' | b'K' | b'r' | b'c' | b'A' | b'p' | b'M')
        ) && !matches!(m.first(), Some(b'M') if cur.len() > 1)
        {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

struct Corpus {
    root: PathBuf,
    written: BTreeMap<&'static str, usize>,
}

impl Corpus {
    fn add(&mut self, target: &'static str, data: &[u8]) {
        // FNV-1a: stable names without a hashing dependency.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in data {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        let path = dir.join(format!("seed-{h:016x}"));
        if !path.exists() {
            std::fs::write(&path, data).expect("write seed");
            *self.written.entry(target).or_default() += 1;
        }
    }
}

fn cfg(v: ProtocolVersion, s: Streaming) -> DecoderConfig {
    DecoderConfig {
        proto_version: v,
        streaming: s,
    }
}

fn xlogdata(payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(b'w');
    b.put_u64(0x0155_36e0);
    b.put_u64(0x0155_3800);
    b.put_i64(760_000_000_000_000);
    b.put_slice(payload);
    b.to_vec()
}

fn main() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixtures = manifest.join("../crates/pgrelay-pgoutput/tests/fixtures");
    let mut corpus = Corpus {
        root: manifest.join("corpus"),
        written: BTreeMap::new(),
    };
    let captures = [
        ("v1.bin", cfg(ProtocolVersion::V1, Streaming::Off)),
        ("v1-binary.bin", cfg(ProtocolVersion::V1, Streaming::Off)),
        ("v2-streaming.bin", cfg(ProtocolVersion::V2, Streaming::On)),
    ];
    let keepalive: &[u8] = b"k\x00\x00\x00\x00\x01\x55\x38\x00\x00\x02\xb5\x4a\x3c\x1f\x00\x00\x01";
    let error: &[u8] = b"SERROR\0VERROR\0C55006\0Mreplication slot \"s\" is active for PID 42\0Fslot.c\0L504\0RReplicationSlotAcquire\0\0";
    for (file, config) in captures {
        let msgs = load(&fixtures.join(file));
        let thinned = thin(&msgs);
        let c = config_byte(config);

        // Whole (thinned) streams for the reassembler, under two budgets and,
        // for the streaming capture, every version that sends these bytes.
        let versions: &[DecoderConfig] = if config.streaming == Streaming::On {
            &[
                config,
                cfg(ProtocolVersion::V3, Streaming::On),
                cfg(ProtocolVersion::V4, Streaming::On),
            ]
        } else {
            &[config]
        };
        for (i, v) in versions.iter().enumerate() {
            let mut seed = vec![config_byte(*v), if i == 0 { 0 } else { 2 }];
            seed.extend(join_messages(thinned.iter().map(|m| &m[..])));
            corpus.add("reassembler", &seed);
        }

        // Transaction-sized pieces for the decoder targets.
        let mut in_stream = false;
        for g in groups(&thinned) {
            let starts_stream = g.first().is_some_and(|m| m.first() == Some(&b'S'));
            if starts_stream || in_stream {
                // The stream target starts inside a block: drop the Stream
                // Start and keep the block's contents.
                let body: Vec<&[u8]> = g
                    .iter()
                    .skip(usize::from(starts_stream))
                    .map(|m| &m[..])
                    .collect();
                let mut seed = vec![c];
                seed.extend(join_messages(body));
                corpus.add("pgoutput_stream", &seed);
                in_stream = g.last().is_some_and(|m| m.first() != Some(&b'E'));
            } else {
                let mut seed = vec![c];
                seed.extend(join_messages(g.iter().map(|m| &m[..])));
                corpus.add("pgoutput", &seed);
                let mut seed = vec![c, 1];
                seed.extend(join_messages(g.iter().map(|m| &m[..])));
                corpus.add("reassembler", &seed);
            }
        }

        // One XLogData per distinct message type, for the CopyData and
        // frame targets.
        let mut seen = std::collections::BTreeSet::new();
        let mut frames = Vec::new();
        for m in &thinned {
            let Some(&tag) = m.first() else { continue };
            if !seen.insert(tag) {
                continue;
            }
            let body = xlogdata(m);
            corpus.add("copy_data", &body);
            let mut f = BytesMut::new();
            copy_data(&body, &mut f).expect("small");
            frames.extend_from_slice(&f);
        }
        let mut f = BytesMut::new();
        copy_data(keepalive, &mut f).expect("small");
        frames.extend_from_slice(&f);
        frames.extend_from_slice(b"E");
        frames.extend_from_slice(&(error.len() as u32 + 4).to_be_bytes());
        frames.extend_from_slice(error);
        frames.extend_from_slice(b"c\x00\x00\x00\x04");
        for knobs in [0x00u8, 0x07, 0x3f, 0xc3] {
            let mut seed = vec![knobs];
            seed.extend_from_slice(&frames);
            corpus.add("frame", &seed);
        }

        // Spill records of every reassembled (thinned) transaction.
        let mut dec = Decoder::new(config);
        let mut re = Reassembler::new(MemorySpillStore::new(), usize::MAX);
        for m in &thinned {
            let msg = dec.decode(m).expect("captured message decodes");
            let Some(Reassembled::Transaction(t)) =
                re.push(msg).expect("captured stream reassembles")
            else {
                continue;
            };
            let t = t.into_transaction().expect("in memory");
            let mut records: Vec<Vec<u8>> = Vec::new();
            let mut written = std::collections::BTreeSet::new();
            let mut buf = Vec::new();
            for change in t.changes.iter().take(8) {
                let rels: Vec<_> = match change {
                    pgrelay_types::Change::Truncate { relations, .. } => relations.clone(),
                    other => other.relation().cloned().into_iter().collect(),
                };
                for r in rels {
                    if written.insert(r.oid) {
                        encode_relation(&r, &mut buf).expect("encode");
                        records.push(buf.clone());
                    }
                }
                encode_change(Xid(t.info.xid.0), change, &mut buf).expect("encode");
                records.push(buf.clone());
            }
            for mode in [0u8, 1] {
                let mut seed = vec![mode];
                seed.extend(join_messages(records.iter().map(|r| &r[..])));
                corpus.add("spill_codec", &seed);
            }
        }
    }
    corpus.add("copy_data", keepalive);
    corpus.add("copy_data", error);
    let mut status = BytesMut::new();
    StandbyStatusUpdate {
        write: Lsn(1),
        flush: Lsn(1),
        apply: Lsn(1),
        client_time: PgTimestamp(0),
        reply_requested: false,
    }
    .encode(&mut status);
    corpus.add("copy_data", &status);
    for (target, n) in &corpus.written {
        println!("{target}: {n} new seeds");
    }
}
