//! Decoding and reassembly throughput on a synthesized stream of inserts
//! whose row values total 100 bytes, the shape of a typical OLTP table.
//!
//! Run: `cargo bench -p pgrelay-pgoutput --bench decode`. Each workload is
//! measured twice so criterion reports throughput both in row changes per
//! second (elements) and in bytes of pgoutput payload per second.

use std::hint::black_box;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgrelay_pgoutput::{
    Decoder, DecoderConfig, MemorySpillStore, ProtocolVersion, Reassembled, Reassembler, Streaming,
};

const ROWS_PER_TXN: usize = 100;
const TXNS: usize = 100;

/// One relation message, then TXNS transactions of ROWS_PER_TXN inserts.
/// Every payload is a slice of one buffer, like frames from a socket.
fn stream() -> (Vec<Bytes>, usize) {
    let mut buf = BytesMut::new();
    let mut bounds = Vec::new();
    let mark = |buf: &BytesMut, bounds: &mut Vec<(usize, usize)>, start: usize| {
        bounds.push((start, buf.len()));
    };
    // public.orders(id int8 key, customer int4, status text, note text)
    let start = buf.len();
    buf.put_u8(b'R');
    buf.put_u32(16_400);
    buf.put_slice(b"public\0orders\0d");
    buf.put_i16(4);
    for (key, name, typ) in [
        (1u8, "id", 20u32),
        (0, "customer", 23),
        (0, "status", 25),
        (0, "note", 25),
    ] {
        buf.put_u8(key);
        buf.put_slice(name.as_bytes());
        buf.put_u8(0);
        buf.put_u32(typ);
        buf.put_i32(-1);
    }
    mark(&buf, &mut bounds, start);
    let note = [b'x'; 71];
    let mut row_bytes = 0;
    for t in 0..TXNS {
        let lsn = 0x1000_0000 + (t as u64) * 0x10_0000;
        let start = buf.len();
        buf.put_u8(b'B');
        buf.put_u64(lsn);
        buf.put_i64(760_000_000_000_000);
        buf.put_u32(1_000 + t as u32);
        mark(&buf, &mut bounds, start);
        for r in 0..ROWS_PER_TXN {
            let id = format!("{:012}", t * ROWS_PER_TXN + r);
            let values: [&[u8]; 4] = [id.as_bytes(), b"4242424242", b"shipped", &note[..]];
            let start = buf.len();
            buf.put_u8(b'I');
            buf.put_u32(16_400);
            buf.put_u8(b'N');
            buf.put_i16(4);
            for v in values {
                buf.put_u8(b't');
                buf.put_i32(v.len() as i32);
                buf.put_slice(v);
                row_bytes += v.len();
            }
            mark(&buf, &mut bounds, start);
        }
        let start = buf.len();
        buf.put_u8(b'C');
        buf.put_u8(0);
        buf.put_u64(lsn);
        buf.put_u64(lsn + 0x28);
        buf.put_i64(760_000_000_000_000);
        mark(&buf, &mut bounds, start);
    }
    assert_eq!(
        row_bytes,
        TXNS * ROWS_PER_TXN * 100,
        "rows are 100 bytes of values"
    );
    let all = buf.freeze();
    let payloads: Vec<Bytes> = bounds.iter().map(|(s, e)| all.slice(*s..*e)).collect();
    let total = payloads.iter().map(Bytes::len).sum();
    (payloads, total)
}

fn config() -> DecoderConfig {
    DecoderConfig {
        proto_version: ProtocolVersion::V2,
        streaming: Streaming::On,
    }
}

fn decode_only(payloads: &[Bytes]) -> usize {
    let mut d = Decoder::new(config());
    let mut n = 0;
    for p in payloads {
        let m = d.decode(p).expect("valid");
        n += usize::from(matches!(m, pgrelay_pgoutput::Message::Insert(_)));
        black_box(m);
    }
    n
}

fn decode_and_reassemble(payloads: &[Bytes]) -> usize {
    let mut d = Decoder::new(config());
    let mut re = Reassembler::new(MemorySpillStore::new(), 256 << 20);
    let mut n = 0;
    for p in payloads {
        let m = d.decode(p).expect("valid");
        if let Some(Reassembled::Transaction(c)) = re.push(m).expect("valid") {
            for change in c {
                black_box(change.expect("in memory"));
                n += 1;
            }
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let (payloads, bytes) = stream();
    let rows = (TXNS * ROWS_PER_TXN) as u64;
    assert_eq!(decode_only(&payloads) as u64, rows);
    assert_eq!(decode_and_reassemble(&payloads) as u64, rows);
    let mut g = c.benchmark_group("pgoutput");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(30);
    for (unit, throughput) in [
        ("rows", Throughput::Elements(rows)),
        ("bytes", Throughput::Bytes(bytes as u64)),
    ] {
        g.throughput(throughput);
        g.bench_function(format!("decode/{unit}"), |b| {
            b.iter(|| decode_only(black_box(&payloads)))
        });
        g.bench_function(format!("decode+reassemble/{unit}"), |b| {
            b.iter(|| decode_and_reassemble(black_box(&payloads)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
