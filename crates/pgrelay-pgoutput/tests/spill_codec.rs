//! The spill record codec: round trips, and byte-literal regressions for
//! every way a record can be malformed.

use std::sync::Arc;

use bytes::Bytes;
use pgrelay_pgoutput::spill::codec::{
    crc32c, encode_change, encode_relation, SpillDecodeErrorKind, SpillDecoder, SpillRecord,
};
use pgrelay_types::{
    ByteStr, Change, Column, LogicalMessage, Lsn, Oid, OldTuple, RelationInfo, ReplicaIdentity,
    TruncateOptions, Tuple, Value, Xid,
};
use pgrelay_wire::CursorErrorKind;

fn rel() -> Arc<RelationInfo> {
    Arc::new(RelationInfo {
        oid: Oid(7),
        schema: ByteStr::from_static("s"),
        name: ByteStr::from_static("t\u{e9}"),
        replica_identity: ReplicaIdentity::Index,
        columns: vec![
            Column {
                name: ByteStr::from_static("a"),
                type_oid: Oid(23),
                type_modifier: -1,
                is_key: true,
            },
            Column {
                name: ByteStr::from_static("b"),
                type_oid: Oid(1043),
                type_modifier: 14,
                is_key: false,
            },
        ],
    })
}

fn tuple(a: Value, b: Value) -> Tuple {
    Tuple(vec![a, b])
}

fn t(s: &'static [u8]) -> Value {
    Value::Text(Bytes::from_static(s))
}

/// Appends the CRC so a hand-written body is a well-formed record.
fn seal(body: &[u8]) -> Bytes {
    let mut v = body.to_vec();
    v.extend_from_slice(&crc32c(body).to_be_bytes());
    Bytes::from(v)
}

fn decoder_with_rel() -> SpillDecoder {
    let mut out = Vec::new();
    encode_relation(&rel(), &mut out).expect("encode");
    let mut d = SpillDecoder::new();
    assert_eq!(
        d.decode(&Bytes::from(out)).expect("decode"),
        SpillRecord::Relation(rel())
    );
    d
}

#[test]
fn crc32c_known_answer() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(b""), 0);
}

#[test]
fn round_trips_every_change_kind() {
    let r = rel();
    let changes = [
        Change::Insert {
            relation: r.clone(),
            new: tuple(t(b"1"), Value::Null),
        },
        Change::Insert {
            relation: r.clone(),
            new: tuple(
                Value::Binary(Bytes::from_static(b"\0\x01")),
                Value::UnchangedToast,
            ),
        },
        Change::Update {
            relation: r.clone(),
            old: None,
            new: tuple(t(b"1"), t(b"")),
        },
        Change::Update {
            relation: r.clone(),
            old: Some(OldTuple::Key(tuple(t(b"1"), Value::Null))),
            new: tuple(t(b"2"), t(b"x")),
        },
        Change::Update {
            relation: r.clone(),
            old: Some(OldTuple::Full(tuple(t(b"1"), t(b"y")))),
            new: tuple(t(b"1"), t(b"z")),
        },
        Change::Delete {
            relation: r.clone(),
            old: OldTuple::Key(tuple(t(b"1"), Value::Null)),
        },
        Change::Delete {
            relation: r.clone(),
            old: OldTuple::Full(tuple(t(b"1"), t(b"q"))),
        },
        Change::Truncate {
            relations: vec![r.clone(), r.clone()],
            options: TruncateOptions {
                cascade: true,
                restart_identity: false,
            },
        },
        Change::Truncate {
            relations: vec![],
            options: TruncateOptions {
                cascade: false,
                restart_identity: true,
            },
        },
        Change::Message(LogicalMessage {
            transactional: true,
            lsn: Lsn(u64::MAX),
            prefix: ByteStr::from_static("p\u{1f600}"),
            content: Bytes::from_static(b"\0\xff"),
        }),
    ];
    let mut d = decoder_with_rel();
    let mut buf = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        encode_change(Xid(i as u32), c, &mut buf).expect("encode");
        let rec = Bytes::from(buf.clone());
        let SpillRecord::Change { subxid, change } = d.decode(&rec).expect("decode") else {
            panic!()
        };
        assert_eq!((subxid, &change), (Xid(i as u32), c));
        // Payloads are slices of the record.
        if let Change::Insert { new, .. } = &change {
            if let Some(b) = new.0[0].bytes() {
                let range = rec.as_ptr() as usize..rec.as_ptr() as usize + rec.len();
                assert!(range.contains(&(b.as_ptr() as usize)));
            }
        }
    }
}

#[test]
fn insert_record_layout() {
    // version 1, change, subxid 5, 'I', oid 7, two values: text "1", null.
    let rec = seal(b"\x01C\x00\x00\x00\x05I\x00\x00\x00\x07\x00\x02t\x00\x00\x00\x011n");
    let mut out = Vec::new();
    encode_change(
        Xid(5),
        &Change::Insert {
            relation: rel(),
            new: tuple(t(b"1"), Value::Null),
        },
        &mut out,
    )
    .expect("encode");
    assert_eq!(&out[..], &rec[..]);
}

fn decode_err(d: &mut SpillDecoder, rec: &Bytes) -> (usize, SpillDecodeErrorKind) {
    let e = d.decode(rec).expect_err("malformed");
    assert!(!e.is_transient());
    assert!(e.to_string().contains(&format!("byte {}", e.offset)));
    (e.offset, e.kind)
}

#[test]
fn malformed_records() {
    let mut d = decoder_with_rel();
    let cases: Vec<(Bytes, usize, SpillDecodeErrorKind)> = vec![
        (Bytes::from_static(b""), 0, SpillDecodeErrorKind::TooShort { len: 0 }),
        (Bytes::from_static(b"\x01C\x00\x00\x00"), 0, SpillDecodeErrorKind::TooShort { len: 5 }),
        (seal(b"\x02C"), 0, SpillDecodeErrorKind::Version(2)),
        (seal(b"\x01X"), 1, SpillDecodeErrorKind::InvalidByte { field: "record kind", value: b'X' }),
        (seal(b"\x01C\x00\x00\x00\x05Z"), 6, SpillDecodeErrorKind::InvalidByte { field: "change tag", value: b'Z' }),
        (seal(b"\x01C\x00\x00\x00\x05I\x00\x00\x00\x08\x00\x00"), 7, SpillDecodeErrorKind::UnknownRelation(Oid(8))),
        (seal(b"\x01C\x00\x00\x00\x05I\x00\x00\x00\x07\x00\x01n"), 11, SpillDecodeErrorKind::ColumnCountMismatch { oid: Oid(7), expected: 2, found: 1 }),
        (seal(b"\x01C\x00\x00\x00\x05I\x00\x00\x00\x07\x00\x02nnX"), 15, SpillDecodeErrorKind::Field(CursorErrorKind::TrailingBytes { count: 1 })),
        (seal(b"\x01C\x00\x00\x00\x05I\x00\x00\x00\x07\x00\x02nx"), 14, SpillDecodeErrorKind::InvalidByte { field: "value kind", value: b'x' }),
        (seal(b"\x01C\x00\x00\x00\x05I\x00\x00\x00\x07\x00\x02t\xff\xff\xff\xffn"), 18, SpillDecodeErrorKind::Field(CursorErrorKind::UnexpectedEnd { field: "column value", needed: 0xffff_ffff, available: 1 })),
        (seal(b"\x01C\x00\x00\x00\x05U\x00\x00\x00\x07?"), 11, SpillDecodeErrorKind::InvalidByte { field: "old tuple marker", value: b'?' }),
        (seal(b"\x01C\x00\x00\x00\x05D\x00\x00\x00\x07-"), 11, SpillDecodeErrorKind::InvalidByte { field: "old tuple marker", value: b'-' }),
        (seal(b"\x01C\x00\x00\x00\x05T\x04\x00\x00\x00\x00"), 7, SpillDecodeErrorKind::InvalidByte { field: "truncate options", value: 4 }),
        (seal(b"\x01C\x00\x00\x00\x05T\x00\xff\xff\xff\xff"), 12, SpillDecodeErrorKind::Field(CursorErrorKind::UnexpectedEnd { field: "relation oid", needed: 4, available: 0 })),
        (seal(b"\x01C\x00\x00\x00\x05M\x02"), 7, SpillDecodeErrorKind::InvalidByte { field: "transactional flag", value: 2 }),
        (seal(b"\x01C\x00\x00\x00\x05M\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\xff\x00\x00\x00\x00"), 20, SpillDecodeErrorKind::Field(CursorErrorKind::InvalidUtf8 { field: "message prefix" })),
        (seal(b"\x01R\x00\x00\x00\x09\x00\x00\x00\x00\x00\x00\x00\x02a\xc3d\x00\x00"), 15, SpillDecodeErrorKind::Field(CursorErrorKind::InvalidUtf8 { field: "relation name" })),
        (seal(b"\x01R\x00\x00\x00\x09\x00\x00\x00\x00\x00\x00\x00\x00z\x00\x00"), 14, SpillDecodeErrorKind::InvalidByte { field: "replica identity", value: b'z' }),
        (seal(b"\x01R\x00\x00\x00\x09\x00\x00\x00\x00\x00\x00\x00\x00d\x00\x01\x02"), 17, SpillDecodeErrorKind::InvalidByte { field: "column flags", value: 2 }),
        (seal(b"\x01R\x00\x00\x00\x09\x00\x00\x00\x00\x00\x00\x00\x00d\x00\x05"), 17, SpillDecodeErrorKind::Field(CursorErrorKind::UnexpectedEnd { field: "column flags", needed: 1, available: 0 })),
    ];
    for (rec, offset, kind) in cases {
        assert_eq!(decode_err(&mut d, &rec), (offset, kind), "{rec:?}");
    }
    // A flipped bit anywhere is caught by the checksum.
    let good = seal(b"\x01C\x00\x00\x00\x05I\x00\x00\x00\x07\x00\x02nn");
    assert!(d.decode(&good).is_ok());
    for i in 0..good.len() {
        let mut bad = good.to_vec();
        bad[i] ^= 0x01;
        let (offset, kind) = decode_err(&mut d, &Bytes::from(bad));
        assert!(
            matches!(kind, SpillDecodeErrorKind::Checksum { .. }),
            "byte {i}: {kind}"
        );
        assert_eq!(offset, good.len() - 4);
    }
    // A failed relation record does not register the relation.
    let mut fresh = SpillDecoder::new();
    let _ = fresh.decode(&seal(
        b"\x01R\x00\x00\x00\x09\x00\x00\x00\x00\x00\x00\x00\x00d\x00\x01\x02",
    ));
    let (_, kind) = decode_err(
        &mut fresh,
        &seal(b"\x01C\x00\x00\x00\x05I\x00\x00\x00\x09\x00\x00"),
    );
    assert_eq!(kind, SpillDecodeErrorKind::UnknownRelation(Oid(9)));
}

#[test]
fn crc32c_matches_the_bytewise_definition_at_every_length() {
    // Reflected CRC-32C one bit at a time: the definition, independent of
    // the table-driven implementation.
    fn reference(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    0x82F6_3B78 ^ (crc >> 1)
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let data: Vec<u8> = (0..300u32).map(|i| (i * 131 + 7) as u8).collect();
    for len in 0..data.len() {
        for start in 0..3.min(data.len() - len) {
            let s = &data[start..start + len];
            assert_eq!(crc32c(s), reference(s), "length {len} at {start}");
        }
    }
}
