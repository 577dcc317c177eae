//! Byte-literal tests for every pgoutput message of protocol versions 1-4,
//! and regressions for malformed input.

mod common;

use bytes::Bytes;
use common::{config, v1, v2};
use pgrelay_pgoutput::{
    DecodeError, DecodeErrorKind, Decoder, DecoderConfig, Message, ProtocolVersion, Streaming,
};
use pgrelay_types::{ByteStr, Lsn, Oid, OldTuple, PgTimestamp, ReplicaIdentity, Tuple, Value, Xid};
use pgrelay_wire::CursorErrorKind;

/// public.t (oid 16384): id int4 (key), v text; replica identity default.
const REL: &[u8] = b"R\x00\x00\x40\x00public\0t\0d\x00\x02\x01id\0\x00\x00\x00\x17\xff\xff\xff\xff\x00v\0\x00\x00\x00\x19\xff\xff\xff\xff";
/// The same relation sent inside a stream block by subtransaction 0x2f4.
const REL_IN_STREAM: &[u8] = b"R\x00\x00\x02\xf4\x00\x00\x40\x00public\0t\0d\x00\x02\x01id\0\x00\x00\x00\x17\xff\xff\xff\xff\x00v\0\x00\x00\x00\x19\xff\xff\xff\xff";
const BEGIN: &[u8] =
    b"B\x00\x00\x00\x16\xb3\x74\xd8\x48\x00\x02\xb5\x4a\x3c\x1f\x00\x00\x00\x00\x02\xe6";
const STREAM_START: &[u8] = b"S\x00\x00\x02\xf2\x01";

fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

fn decoder(cfg: DecoderConfig) -> Decoder {
    let mut d = Decoder::new(cfg);
    d.decode(&b(REL)).expect("relation");
    d
}

fn in_stream(cfg: DecoderConfig) -> Decoder {
    let mut d = decoder(cfg);
    d.decode(&b(STREAM_START)).expect("stream start");
    d
}

fn ok(d: &mut Decoder, bytes: &'static [u8]) -> Message {
    d.decode(&b(bytes))
        .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(bytes)))
}

fn err(d: &mut Decoder, bytes: &'static [u8]) -> DecodeError {
    match d.decode(&b(bytes)) {
        Ok(m) => panic!(
            "decoded {m:?} from malformed {:?}",
            String::from_utf8_lossy(bytes)
        ),
        Err(e) => {
            assert!(!e.is_transient());
            assert!(
                e.to_string().contains(&format!("at byte {}", e.offset)),
                "{e}"
            );
            e
        }
    }
}

fn text(s: &'static str) -> Value {
    Value::Text(Bytes::from_static(s.as_bytes()))
}

// ---------------------------------------------------------------- version 1

#[test]
fn begin_and_commit() {
    let mut d = Decoder::new(v1());
    let Message::Begin(m) = ok(&mut d, BEGIN) else {
        panic!()
    };
    assert_eq!(m.final_lsn.to_string(), "16/B374D848");
    assert_eq!(m.commit_ts, PgTimestamp(0x0002_b54a_3c1f_0000));
    assert_eq!(m.xid, Xid(742));
    let Message::Commit(m) = ok(
        &mut d,
        b"C\x00\x00\x00\x00\x16\xb3\x74\xd8\x48\x00\x00\x00\x16\xb3\x74\xd8\x78\x00\x02\xb5\x4a\x3c\x1f\x00\x00",
    ) else {
        panic!()
    };
    assert_eq!(
        (m.flags, m.commit_lsn, m.end_lsn),
        (0, Lsn(0x16_b374_d848), Lsn(0x16_b374_d878))
    );
}

#[test]
fn origin() {
    let mut d = Decoder::new(v1());
    let Message::Origin(o) = ok(&mut d, b"O\x00\x00\x00\x00\x00\xab\xcd\xefupstream\0") else {
        panic!()
    };
    assert_eq!((o.lsn, o.name.as_str()), (Lsn(0xAB_CDEF), "upstream"));
}

#[test]
fn relation_and_cache() {
    let mut d = Decoder::new(v1());
    let Message::Relation(r) = ok(&mut d, REL) else {
        panic!()
    };
    assert_eq!(r.xid, None);
    let rel = &r.relation;
    assert_eq!(
        (rel.oid, rel.schema.as_str(), rel.name.as_str()),
        (Oid(16384), "public", "t")
    );
    assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
    assert_eq!(rel.columns.len(), 2);
    assert!(rel.columns[0].is_key && !rel.columns[1].is_key);
    assert_eq!(
        (
            rel.columns[1].name.as_str(),
            rel.columns[1].type_oid,
            rel.columns[1].type_modifier
        ),
        ("v", Oid(25), -1)
    );
    assert!(d
        .relation(Oid(16384))
        .is_some_and(|c| std::sync::Arc::ptr_eq(c, rel)));
    // pg_catalog is sent as an empty namespace; zero columns is legal.
    let Message::Relation(r) = ok(&mut d, b"R\x00\x00\x00\x01\0pg_class\0n\x00\x00") else {
        panic!()
    };
    assert_eq!(r.relation.schema_name(), "pg_catalog");
    assert_eq!(r.relation.replica_identity, ReplicaIdentity::Nothing);
    assert!(r.relation.columns.is_empty());
    // Unknown flag bits on a column are ignored; replica identities f and i.
    let Message::Relation(r) = ok(
        &mut d,
        b"R\x00\x00\x00\x02s\0r\0f\x00\x01\x03c\0\x00\x00\x00\x17\x00\x00\x00\x08",
    ) else {
        panic!()
    };
    assert!(r.relation.columns[0].is_key);
    assert_eq!(r.relation.columns[0].type_modifier, 8);
    assert_eq!(r.relation.replica_identity, ReplicaIdentity::Full);
    let Message::Relation(r) = ok(&mut d, b"R\x00\x00\x00\x03s\0r\0i\x00\x00") else {
        panic!()
    };
    assert_eq!(r.relation.replica_identity, ReplicaIdentity::Index);
}

#[test]
fn relation_replacement_mid_stream() {
    let mut d = decoder(v1());
    let Message::Insert(before) = ok(&mut d, b"I\x00\x00\x40\x00N\x00\x02t\x00\x00\x00\x011n")
    else {
        panic!()
    };
    // ALTER TABLE t ADD COLUMN extra int: a new definition replaces the old.
    ok(&mut d, b"R\x00\x00\x40\x00public\0t\0d\x00\x03\x01id\0\x00\x00\x00\x17\xff\xff\xff\xff\x00v\0\x00\x00\x00\x19\xff\xff\xff\xff\x00extra\0\x00\x00\x00\x17\xff\xff\xff\xff");
    let Message::Insert(after) = ok(
        &mut d,
        b"I\x00\x00\x40\x00N\x00\x03t\x00\x00\x00\x012nt\x00\x00\x00\x017",
    ) else {
        panic!()
    };
    assert_eq!(
        before.relation.columns.len(),
        2,
        "old changes keep their definition"
    );
    assert_eq!(after.relation.columns.len(), 3);
    // A tuple of the old width no longer fits.
    let e = err(&mut d, b"I\x00\x00\x40\x00N\x00\x02t\x00\x00\x00\x011n");
    assert_eq!(e.offset, 6);
    assert!(matches!(
        e.kind,
        DecodeErrorKind::ColumnCountMismatch {
            expected: 3,
            found: 2,
            ..
        }
    ));
    assert!(e.to_string().contains("public.t"));
}

#[test]
fn type_message() {
    let mut d = Decoder::new(v1());
    let Message::Type(t) = ok(&mut d, b"Y\x00\x00\x40\x01public\0mood\0") else {
        panic!()
    };
    assert_eq!(
        (t.xid, t.oid, t.schema.as_str(), t.name.as_str()),
        (None, Oid(16385), "public", "mood")
    );
}

#[test]
fn insert_all_value_kinds() {
    let mut d = decoder(v1());
    let payload = b(b"I\x00\x00\x40\x00N\x00\x02t\x00\x00\x00\x0242n");
    let Message::Insert(m) = d.decode(&payload).expect("insert") else {
        panic!()
    };
    assert_eq!(m.xid, None);
    assert_eq!(m.new, Tuple(vec![text("42"), Value::Null]));
    // Zero copy: the value is a slice of the payload.
    assert_eq!(
        m.new.get(0).and_then(Value::bytes).map(|v| v.as_ptr()),
        Some(payload[13..].as_ptr())
    );
    // Binary format (binary = true) and an empty text value.
    let Message::Insert(m) = ok(
        &mut d,
        b"I\x00\x00\x40\x00N\x00\x02b\x00\x00\x00\x04\x00\x00\x00\x2at\x00\x00\x00\x00",
    ) else {
        panic!()
    };
    assert_eq!(
        m.new,
        Tuple(vec![Value::Binary(b(b"\x00\x00\x00\x2a")), text("")])
    );
}

#[test]
fn update_variants() {
    let mut d = decoder(v1());
    // New tuple only, with an unchanged TOAST value.
    let Message::Update(m) = ok(&mut d, b"U\x00\x00\x40\x00N\x00\x02t\x00\x00\x00\x011u") else {
        panic!()
    };
    assert_eq!(
        (m.old, m.new),
        (None, Tuple(vec![text("1"), Value::UnchangedToast]))
    );
    // Key changed: old key 'K' (non-key columns null), then 'N'.
    let Message::Update(m) = ok(&mut d, b"U\x00\x00\x40\x00K\x00\x02t\x00\x00\x00\x011nN\x00\x02t\x00\x00\x00\x012t\x00\x00\x00\x01x") else { panic!() };
    assert_eq!(
        m.old,
        Some(OldTuple::Key(Tuple(vec![text("1"), Value::Null])))
    );
    assert_eq!(m.new, Tuple(vec![text("2"), text("x")]));
    // REPLICA IDENTITY FULL: old tuple 'O'.
    let Message::Update(m) = ok(&mut d, b"U\x00\x00\x40\x00O\x00\x02t\x00\x00\x00\x011t\x00\x00\x00\x01aN\x00\x02t\x00\x00\x00\x011t\x00\x00\x00\x01b") else { panic!() };
    assert_eq!(
        m.old,
        Some(OldTuple::Full(Tuple(vec![text("1"), text("a")])))
    );
}

#[test]
fn delete_variants() {
    let mut d = decoder(v1());
    let Message::Delete(m) = ok(&mut d, b"D\x00\x00\x40\x00K\x00\x02t\x00\x00\x00\x011n") else {
        panic!()
    };
    assert_eq!(m.old, OldTuple::Key(Tuple(vec![text("1"), Value::Null])));
    let Message::Delete(m) = ok(
        &mut d,
        b"D\x00\x00\x40\x00O\x00\x02t\x00\x00\x00\x011t\x00\x00\x00\x01a",
    ) else {
        panic!()
    };
    assert_eq!(m.old, OldTuple::Full(Tuple(vec![text("1"), text("a")])));
}

#[test]
fn truncate_options() {
    let mut d = decoder(v1());
    ok(&mut d, b"R\x00\x00\x40\x01public\0child\0d\x00\x00");
    let Message::Truncate(m) = ok(
        &mut d,
        b"T\x00\x00\x00\x02\x03\x00\x00\x40\x00\x00\x00\x40\x01",
    ) else {
        panic!()
    };
    assert_eq!(
        m.relations
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["t", "child"]
    );
    assert!(m.options.cascade && m.options.restart_identity);
    let Message::Truncate(m) = ok(&mut d, b"T\x00\x00\x00\x01\x01\x00\x00\x40\x00") else {
        panic!()
    };
    assert!(m.options.cascade && !m.options.restart_identity);
    let Message::Truncate(m) = ok(&mut d, b"T\x00\x00\x00\x01\x02\x00\x00\x40\x00") else {
        panic!()
    };
    assert!(!m.options.cascade && m.options.restart_identity);
    let Message::Truncate(m) = ok(&mut d, b"T\x00\x00\x00\x00\x00") else {
        panic!()
    };
    assert!(m.relations.is_empty());
}

#[test]
fn logical_messages() {
    let mut d = Decoder::new(v1());
    let Message::Message(m) = ok(
        &mut d,
        b"M\x01\x00\x00\x00\x00\x01\x55\x35\xc8pgrelay\0\x00\x00\x00\x05hello",
    ) else {
        panic!()
    };
    assert_eq!(m.xid, None);
    assert!(m.message.transactional);
    assert_eq!(
        (
            m.message.lsn,
            m.message.prefix.as_str(),
            &m.message.content[..]
        ),
        (Lsn(0x155_35c8), "pgrelay", &b"hello"[..])
    );
    let Message::Message(m) = ok(
        &mut d,
        b"M\x00\x00\x00\x00\x00\x00\x00\x00\x01p\0\x00\x00\x00\x00",
    ) else {
        panic!()
    };
    assert!(!m.message.transactional);
    assert!(m.message.content.is_empty());
}

#[test]
fn two_phase_messages_are_accepted_at_version_1() {
    // Captured from PostgreSQL 15: a two_phase slot sends these even with
    // proto_version 1.
    let mut d = Decoder::new(v1());
    let Message::BeginPrepare(m) = ok(&mut d, b"b\x00\x00\x00\x00\x01\x55\x36\xe0\x00\x00\x00\x00\x01\x55\x37\xe0\x00\x03\x03\xbb\xfc\xa7\xd2\xba\x00\x00\x02\xecgid-commit\0") else { panic!() };
    assert_eq!(
        (m.prepare_lsn, m.end_lsn, m.xid, m.gid.as_str()),
        (Lsn(0x155_36e0), Lsn(0x155_37e0), Xid(748), "gid-commit")
    );
    assert_eq!(m.prepare_ts, PgTimestamp(0x0003_03bb_fca7_d2ba));
}

// ---------------------------------------------------------------- version 2

#[test]
fn stream_block_messages_carry_xids() {
    let mut d = in_stream(v2());
    assert_eq!(d.stream_xid(), Some(Xid(0x2f2)));
    // Relation sent by subtransaction 0x2f4 inside the block.
    let Message::Relation(r) = ok(&mut d, REL_IN_STREAM) else {
        panic!()
    };
    assert_eq!(r.xid, Some(Xid(0x2f4)));
    let Message::Type(t) = ok(&mut d, b"Y\x00\x00\x02\xf2\x00\x00\x40\x01public\0mood\0") else {
        panic!()
    };
    assert_eq!(t.xid, Some(Xid(0x2f2)));
    let Message::Insert(m) = ok(
        &mut d,
        b"I\x00\x00\x02\xf4\x00\x00\x40\x00N\x00\x02t\x00\x00\x00\x017n",
    ) else {
        panic!()
    };
    assert_eq!(m.xid, Some(Xid(0x2f4)));
    let Message::Update(m) = ok(
        &mut d,
        b"U\x00\x00\x02\xf2\x00\x00\x40\x00N\x00\x02t\x00\x00\x00\x017u",
    ) else {
        panic!()
    };
    assert_eq!(m.xid, Some(Xid(0x2f2)));
    let Message::Delete(m) = ok(
        &mut d,
        b"D\x00\x00\x02\xf2\x00\x00\x40\x00K\x00\x02t\x00\x00\x00\x017n",
    ) else {
        panic!()
    };
    assert_eq!(m.xid, Some(Xid(0x2f2)));
    let Message::Truncate(m) = ok(
        &mut d,
        b"T\x00\x00\x02\xf2\x00\x00\x00\x01\x00\x00\x00\x40\x00",
    ) else {
        panic!()
    };
    assert_eq!((m.xid, m.relations.len()), (Some(Xid(0x2f2)), 1));
    let Message::Message(m) = ok(
        &mut d,
        b"M\x00\x00\x02\xf2\x01\x00\x00\x00\x00\x00\x00\x00\x09p\0\x00\x00\x00\x01!",
    ) else {
        panic!()
    };
    assert_eq!(m.xid, Some(Xid(0x2f2)));
    let Message::Origin(_) = ok(&mut d, b"O\x00\x00\x00\x00\x00\x00\x00\x00up\0") else {
        panic!()
    };
    assert_eq!(ok(&mut d, b"E"), Message::StreamStop);
    assert_eq!(d.stream_xid(), None);
    // Outside the block the same insert has no xid field.
    let Message::Insert(m) = ok(&mut d, b"I\x00\x00\x40\x00N\x00\x02t\x00\x00\x00\x017n") else {
        panic!()
    };
    assert_eq!(m.xid, None);
}

#[test]
fn stream_start_commit_abort() {
    let mut d = Decoder::new(v2());
    let Message::StreamStart(s) = ok(&mut d, b"S\x00\x00\x02\xf2\x00") else {
        panic!()
    };
    assert_eq!((s.xid, s.first_segment), (Xid(0x2f2), false));
    ok(&mut d, b"E");
    let Message::StreamCommit(c) = ok(&mut d, b"c\x00\x00\x02\xf2\x00\x00\x00\x00\x00\x01\x58\x82\x48\x00\x00\x00\x00\x01\x58\x82\x80\x00\x03\x03\xbb\xfc\xe6\x22\x7b") else { panic!() };
    assert_eq!(
        (c.xid, c.commit_lsn, c.end_lsn),
        (Xid(0x2f2), Lsn(0x158_8248), Lsn(0x158_8280))
    );
    assert_eq!(c.commit_ts, PgTimestamp(0x0003_03bb_fce6_227b));
    let Message::StreamAbort(a) = ok(&mut d, b"A\x00\x00\x02\xf2\x00\x00\x02\xf4") else {
        panic!()
    };
    assert_eq!(
        (a.xid, a.subxid, a.abort_lsn, a.abort_ts),
        (Xid(0x2f2), Xid(0x2f4), None, None)
    );
}

#[test]
fn relations_sent_in_a_stream_are_private_until_commit() {
    let mut d = decoder(v2());
    ok(&mut d, STREAM_START);
    // The streamed transaction altered t: three columns, visible only inside
    // its own blocks.
    ok(&mut d, b"R\x00\x00\x02\xf2\x00\x00\x40\x00public\0t\0d\x00\x03\x01id\0\x00\x00\x00\x17\xff\xff\xff\xff\x00v\0\x00\x00\x00\x19\xff\xff\xff\xff\x00x\0\x00\x00\x00\x17\xff\xff\xff\xff");
    ok(&mut d, b"I\x00\x00\x02\xf2\x00\x00\x40\x00N\x00\x03nnn");
    ok(&mut d, b"E");
    assert_eq!(d.relation(Oid(16384)).map(|r| r.columns.len()), Some(2));
    // A concurrent plain transaction still uses the committed definition.
    ok(&mut d, BEGIN);
    ok(&mut d, b"I\x00\x00\x40\x00N\x00\x02nn");
    ok(&mut d, b"C\x00\x00\x00\x00\x16\xb3\x74\xd8\x48\x00\x00\x00\x16\xb3\x74\xd8\x78\x00\x02\xb5\x4a\x3c\x1f\x00\x00");
    ok(&mut d, b"c\x00\x00\x02\xf2\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x03");
    assert_eq!(d.relation(Oid(16384)).map(|r| r.columns.len()), Some(3));
    // An aborted stream's definitions are forgotten.
    ok(&mut d, b"S\x00\x00\x02\xf3\x01");
    ok(
        &mut d,
        b"R\x00\x00\x02\xf3\x00\x00\x40\x00public\0t\0d\x00\x00",
    );
    ok(&mut d, b"E");
    ok(&mut d, b"A\x00\x00\x02\xf3\x00\x00\x02\xf3");
    assert_eq!(d.relation(Oid(16384)).map(|r| r.columns.len()), Some(3));
}

// ---------------------------------------------------------------- version 3

#[test]
fn prepare_family() {
    let mut d = Decoder::new(config(ProtocolVersion::V3, Streaming::On));
    let Message::Prepare(p) = ok(&mut d, b"P\x00\x00\x00\x00\x00\x01\x55\x36\xe0\x00\x00\x00\x00\x01\x55\x37\xe0\x00\x03\x03\xbb\xfc\xa7\xd2\xba\x00\x00\x02\xecgid-commit\0") else { panic!() };
    assert_eq!(
        (p.flags, p.prepare_lsn, p.end_lsn, p.xid, p.gid.as_str()),
        (0, Lsn(0x155_36e0), Lsn(0x155_37e0), Xid(748), "gid-commit")
    );
    let Message::CommitPrepared(c) = ok(&mut d, b"K\x00\x00\x00\x00\x00\x01\x55\x37\xe0\x00\x00\x00\x00\x01\x55\x38\x20\x00\x03\x03\xbb\xfc\xa7\xd3\x34\x00\x00\x02\xecgid-commit\0") else { panic!() };
    assert_eq!(
        (c.commit_lsn, c.end_lsn, c.commit_ts, c.xid),
        (
            Lsn(0x155_37e0),
            Lsn(0x155_3820),
            PgTimestamp(0x0003_03bb_fca7_d334),
            Xid(748)
        )
    );
    let Message::RollbackPrepared(r) = ok(&mut d, b"r\x00\x00\x00\x00\x00\x01\x55\x39\xb0\x00\x00\x00\x00\x01\x55\x39\xf0\x00\x03\x03\xbb\xfc\xa7\xd4\x35\x00\x03\x03\xbb\xfc\xa7\xd4\x8e\x00\x00\x02\xedgid-rollback\0") else { panic!() };
    assert_eq!(
        (r.prepare_end_lsn, r.rollback_end_lsn, r.xid, r.gid.as_str()),
        (Lsn(0x155_39b0), Lsn(0x155_39f0), Xid(749), "gid-rollback")
    );
    assert_eq!(
        (r.prepare_ts, r.rollback_ts),
        (
            PgTimestamp(0x0003_03bb_fca7_d435),
            PgTimestamp(0x0003_03bb_fca7_d48e)
        )
    );
    let Message::StreamPrepare(p) = ok(&mut d, b"p\x00\x00\x00\x00\x00\x01\x59\xc8\xa8\x00\x00\x00\x00\x01\x59\xc9\xa0\x00\x03\x03\xbb\xfc\xf6\x5a\xc8\x00\x00\x02\xf6gid-big\0") else { panic!() };
    assert_eq!(
        (p.xid, p.gid.as_str(), p.prepare_lsn),
        (Xid(0x2f6), "gid-big", Lsn(0x159_c8a8))
    );
    // A non-ASCII GID survives intact.
    let Message::BeginPrepare(bp) = ok(&mut d, b"b\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x04g\xc3\xa9\0") else { panic!() };
    assert_eq!(bp.gid, ByteStr::from_static("g\u{e9}"));
}

// ---------------------------------------------------------------- version 4

#[test]
fn stream_abort_v4_parallel_has_lsn_and_timestamp() {
    let mut d = Decoder::new(config(ProtocolVersion::V4, Streaming::Parallel));
    let Message::StreamAbort(a) = ok(&mut d, b"A\x00\x00\x02\xf2\x00\x00\x02\xf4\x00\x00\x00\x00\x01\x58\x82\x48\x00\x03\x03\xbb\xfc\xe6\x22\x7b") else { panic!() };
    assert_eq!(
        (a.abort_lsn, a.abort_ts),
        (
            Some(Lsn(0x158_8248)),
            Some(PgTimestamp(0x0003_03bb_fce6_227b))
        )
    );
    // Without the fields the message is short.
    let e = err(&mut d, b"A\x00\x00\x02\xf2\x00\x00\x02\xf4");
    assert_eq!(e.offset, 9);
    assert!(matches!(
        e.kind,
        DecodeErrorKind::Field(CursorErrorKind::UnexpectedEnd {
            field: "abort LSN",
            ..
        })
    ));
    // Version 4 with streaming = on: no extra fields, and they are trailing bytes.
    let mut d = Decoder::new(config(ProtocolVersion::V4, Streaming::On));
    assert!(matches!(
        ok(&mut d, b"A\x00\x00\x02\xf2\x00\x00\x02\xf4"),
        Message::StreamAbort(_)
    ));
    let e = err(&mut d, b"A\x00\x00\x02\xf2\x00\x00\x02\xf4\x00\x00\x00\x00\x01\x58\x82\x48\x00\x03\x03\xbb\xfc\xe6\x22\x7b");
    assert_eq!(
        e.kind,
        DecodeErrorKind::Field(CursorErrorKind::TrailingBytes { count: 16 })
    );
    // Parallel is meaningless below version 4.
    let mut d = Decoder::new(config(ProtocolVersion::V3, Streaming::Parallel));
    assert!(matches!(
        ok(&mut d, b"A\x00\x00\x02\xf2\x00\x00\x02\xf4"),
        Message::StreamAbort(_)
    ));
}

// ---------------------------------------------------------------- malformed

#[test]
fn empty_and_unknown_tags() {
    let mut d = Decoder::new(v1());
    let e = err(&mut d, b"");
    assert_eq!((e.offset, e.kind), (0, DecodeErrorKind::Empty));
    let e = err(&mut d, b"Z\x00");
    assert_eq!(
        e.kind,
        DecodeErrorKind::UnknownTag {
            tag: 'Z',
            byte: b'Z'
        }
    );
    let e = err(&mut d, b"\xff");
    assert_eq!(
        e.kind,
        DecodeErrorKind::UnknownTag {
            tag: '\u{ff}',
            byte: 0xff
        }
    );
    assert!(e.to_string().contains("proto_version"));
}

#[test]
fn stream_messages_need_version_2() {
    let mut d = Decoder::new(v1());
    for m in [
        &b"S\x00\x00\x00\x01\x01"[..],
        b"E",
        b"A\x00\x00\x00\x01\x00\x00\x00\x01",
        b"p\x00",
    ] {
        let e = d.decode(&Bytes::copy_from_slice(m)).expect_err("v1");
        assert_eq!(e.offset, 0);
        assert!(
            matches!(
                e.kind,
                DecodeErrorKind::NotInProtocolVersion {
                    required: 2,
                    configured: 1,
                    ..
                }
            ),
            "{e}"
        );
    }
}

#[test]
fn short_buffers() {
    let mut d = Decoder::new(v1());
    let e = err(&mut d, b"B\x00\x00");
    assert_eq!(e.offset, 1);
    assert!(matches!(
        e.kind,
        DecodeErrorKind::Field(CursorErrorKind::UnexpectedEnd {
            field: "final LSN",
            needed: 8,
            available: 2
        })
    ));
    let mut d = decoder(v1());
    // Value length says 9 bytes but only 2 follow.
    let e = err(&mut d, b"I\x00\x00\x40\x00N\x00\x02t\x00\x00\x00\x09ab");
    assert_eq!(e.offset, 13);
    assert!(matches!(
        e.kind,
        DecodeErrorKind::Field(CursorErrorKind::UnexpectedEnd {
            field: "column value",
            needed: 9,
            available: 2
        })
    ));
    // Relation without its column list.
    let e = err(&mut d, b"R\x00\x00\x40\x00public\0t\0d\x00\x01");
    assert_eq!(e.offset, 17);
    // Gid without terminator.
    let e = err(&mut d, b"b\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x04gid");
    assert_eq!(e.offset, 29);
    assert_eq!(
        e.kind,
        DecodeErrorKind::Field(CursorErrorKind::MissingNul { field: "gid" })
    );
}

/// Every strict prefix of every valid message is an error, never a panic
/// and never a successful decode.
#[test]
fn every_truncation_fails() {
    let samples: &[(&[u8], bool)] = &[
        (BEGIN, false),
        (b"C\x00\x00\x00\x00\x16\xb3\x74\xd8\x48\x00\x00\x00\x16\xb3\x74\xd8\x78\x00\x02\xb5\x4a\x3c\x1f\x00\x00", false),
        (b"O\x00\x00\x00\x00\x00\xab\xcd\xefupstream\0", false),
        (REL, false),
        (b"Y\x00\x00\x40\x01public\0mood\0", false),
        (b"I\x00\x00\x40\x00N\x00\x02t\x00\x00\x00\x0242n", false),
        (b"U\x00\x00\x40\x00O\x00\x02t\x00\x00\x00\x011t\x00\x00\x00\x01aN\x00\x02t\x00\x00\x00\x011t\x00\x00\x00\x01b", false),
        (b"D\x00\x00\x40\x00K\x00\x02t\x00\x00\x00\x011n", false),
        (b"T\x00\x00\x00\x01\x03\x00\x00\x40\x00", false),
        (b"M\x01\x00\x00\x00\x00\x01\x55\x35\xc8pgrelay\0\x00\x00\x00\x05hello", false),
        (b"S\x00\x00\x02\xf2\x01", false),
        (b"c\x00\x00\x02\xf2\x00\x00\x00\x00\x00\x01\x58\x82\x48\x00\x00\x00\x00\x01\x58\x82\x80\x00\x03\x03\xbb\xfc\xe6\x22\x7b", false),
        (b"A\x00\x00\x02\xf2\x00\x00\x02\xf4", false),
        (b"b\x00\x00\x00\x00\x01\x55\x36\xe0\x00\x00\x00\x00\x01\x55\x37\xe0\x00\x03\x03\xbb\xfc\xa7\xd2\xba\x00\x00\x02\xecgid-commit\0", false),
        (b"r\x00\x00\x00\x00\x00\x01\x55\x39\xb0\x00\x00\x00\x00\x01\x55\x39\xf0\x00\x03\x03\xbb\xfc\xa7\xd4\x35\x00\x03\x03\xbb\xfc\xa7\xd4\x8e\x00\x00\x02\xedgid-rollback\0", false),
        (b"I\x00\x00\x02\xf4\x00\x00\x40\x00N\x00\x02t\x00\x00\x00\x017n", true),
        (b"T\x00\x00\x02\xf2\x00\x00\x00\x01\x00\x00\x00\x40\x00", true),
    ];
    for (msg, streamed) in samples {
        let cfg = config(ProtocolVersion::V3, Streaming::On);
        let mut full = if *streamed {
            in_stream(cfg)
        } else {
            decoder(cfg)
        };
        full.decode(&Bytes::from_static(msg))
            .expect("full message decodes");
        for cut in 0..msg.len() {
            let mut d = if *streamed {
                in_stream(cfg)
            } else {
                decoder(cfg)
            };
            let e = d
                .decode(&Bytes::copy_from_slice(&msg[..cut]))
                .expect_err("truncated message must not decode");
            assert!(
                e.offset <= cut,
                "offset {} beyond input {cut}: {e}",
                e.offset
            );
        }
    }
}

#[test]
fn negative_lengths() {
    let mut d = decoder(v1());
    let e = err(&mut d, b"I\x00\x00\x40\x00N\x00\x02t\xff\xff\xff\xffn");
    assert_eq!(e.offset, 9);
    assert_eq!(
        e.kind,
        DecodeErrorKind::Field(CursorErrorKind::NegativeLength {
            field: "column value length",
            length: -1
        })
    );
    let e = err(&mut d, b"I\x00\x00\x40\x00N\xff\xff");
    assert_eq!(e.offset, 6);
    assert!(matches!(
        e.kind,
        DecodeErrorKind::Field(CursorErrorKind::NegativeLength {
            field: "column count",
            ..
        })
    ));
    let e = err(&mut d, b"R\x00\x00\x40\x00public\0t\0d\xff\xfe");
    assert_eq!(e.offset, 15);
    assert!(matches!(
        e.kind,
        DecodeErrorKind::Field(CursorErrorKind::NegativeLength { length: -2, .. })
    ));
    let e = err(
        &mut d,
        b"M\x01\x00\x00\x00\x00\x00\x00\x00\x01p\0\xff\xff\xff\xff",
    );
    assert_eq!(e.offset, 12);
    let e = err(&mut d, b"T\xff\xff\xff\xff\x00");
    assert_eq!(e.offset, 1);
    assert!(matches!(
        e.kind,
        DecodeErrorKind::Field(CursorErrorKind::NegativeLength {
            field: "relation count",
            ..
        })
    ));
    // A huge but positive count is bounded by the bytes actually present.
    let e = err(&mut d, b"T\x7f\xff\xff\xff\x00\x00\x00\x40\x00");
    assert_eq!(e.offset, 10);
}

#[test]
fn trailing_bytes() {
    let mut d = decoder(v2());
    for (bytes, at) in [
        (&b"B\x00\x00\x00\x16\xb3\x74\xd8\x48\x00\x02\xb5\x4a\x3c\x1f\x00\x00\x00\x00\x02\xe6\x00"[..], 21),
        (b"I\x00\x00\x40\x00N\x00\x02t\x00\x00\x00\x011nXY", 15),
        (b"E\x00", 1),
        (b"M\x00\x00\x00\x00\x00\x00\x00\x00\x01p\0\x00\x00\x00\x01!!", 17),
        (b"O\x00\x00\x00\x00\x00\x00\x00\x00up\0\0", 12),
    ] {
        let e = d.decode(&Bytes::copy_from_slice(bytes)).expect_err("trailing");
        assert_eq!(e.offset, at, "{e}");
        assert!(matches!(e.kind, DecodeErrorKind::Field(CursorErrorKind::TrailingBytes { .. })), "{e}");
    }
}

#[test]
fn bad_utf8_in_names() {
    let mut d = decoder(config(ProtocolVersion::V3, Streaming::On));
    let cases: &[(&[u8], usize, &str)] = &[
        (b"R\x00\x00\x40\x00public\0t\xff\0d\x00\x00", 13, "relation name"),
        (b"R\x00\x00\x40\x00pub\xc3\0t\0d\x00\x00", 8, "namespace"),
        (b"R\x00\x00\x40\x00public\0t\0d\x00\x01\x01i\xe9d\0\x00\x00\x00\x17\xff\xff\xff\xff", 19, "column name"),
        (b"Y\x00\x00\x40\x01public\0mo\x80od\0", 14, "type name"),
        (b"M\x01\x00\x00\x00\x00\x00\x00\x00\x01p\xfe\0\x00\x00\x00\x00", 11, "prefix"),
        (b"O\x00\x00\x00\x00\x00\x00\x00\x00\xc0\xafup\0", 9, "origin name"),
        (b"K\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x04\xed\xa0\x80\0", 30, "gid"),
    ];
    for (bytes, offset, field) in cases {
        let e = d
            .decode(&Bytes::copy_from_slice(bytes))
            .expect_err("bad utf8");
        assert_eq!(e.offset, *offset, "{e}");
        assert_eq!(
            e.kind,
            DecodeErrorKind::Field(CursorErrorKind::InvalidUtf8 { field }),
            "{e}"
        );
    }
    // The failed Relation messages did not touch the cache.
    assert_eq!(d.relation(Oid(16384)).map(|r| r.columns.len()), Some(2));
}

#[test]
fn column_count_mismatch_and_unknown_relation() {
    let mut d = decoder(v1());
    let e = err(&mut d, b"I\x00\x00\x40\x00N\x00\x03nnn");
    assert_eq!(e.offset, 6);
    assert_eq!(
        e.kind,
        DecodeErrorKind::ColumnCountMismatch {
            relation: "public.t".into(),
            oid: Oid(16384),
            expected: 2,
            found: 3
        }
    );
    let e = err(&mut d, b"U\x00\x00\x40\x00K\x00\x01nN\x00\x02nn");
    assert_eq!(e.offset, 6);
    let e = err(&mut d, b"U\x00\x00\x40\x00O\x00\x02nnN\x00\x01n");
    assert_eq!(e.offset, 11);
    let e = err(&mut d, b"I\x00\x00\x40\x01N\x00\x00");
    assert_eq!(
        (e.offset, e.kind),
        (1, DecodeErrorKind::UnknownRelation { oid: Oid(16385) })
    );
    let e = err(
        &mut d,
        b"T\x00\x00\x00\x02\x00\x00\x00\x40\x00\x00\x00\x40\x09",
    );
    assert_eq!(
        (e.offset, e.kind),
        (10, DecodeErrorKind::UnknownRelation { oid: Oid(16393) })
    );
}

#[test]
fn undefined_enum_bytes() {
    let mut d = decoder(v2());
    let cases: &[(&[u8], usize, &str, u8)] = &[
        (
            b"R\x00\x00\x40\x00public\0t\0x\x00\x00",
            14,
            "replica identity",
            b'x',
        ),
        (b"I\x00\x00\x40\x00N\x00\x02z\x00", 8, "column kind", b'z'),
        (b"I\x00\x00\x40\x00K\x00\x02nn", 5, "new tuple marker", b'K'),
        (b"U\x00\x00\x40\x00X\x00\x02nn", 5, "tuple marker", b'X'),
        (
            b"U\x00\x00\x40\x00K\x00\x02nnO\x00\x02nn",
            10,
            "new tuple marker",
            b'O',
        ),
        (b"D\x00\x00\x40\x00N\x00\x02nn", 5, "old tuple marker", b'N'),
        (
            b"M\x02\x00\x00\x00\x00\x00\x00\x00\x01p\0\x00\x00\x00\x00",
            1,
            "flags",
            2,
        ),
        (b"S\x00\x00\x00\x01\x02", 5, "first segment", 2),
        (
            b"T\x00\x00\x00\x01\x04\x00\x00\x40\x00",
            5,
            "truncate options",
            4,
        ),
    ];
    for (bytes, offset, field, value) in cases {
        let e = d
            .decode(&Bytes::copy_from_slice(bytes))
            .expect_err("invalid byte");
        assert_eq!(e.offset, *offset, "{e}");
        assert_eq!(
            e.kind,
            DecodeErrorKind::InvalidByte {
                field,
                value: *value
            },
            "{e}"
        );
    }
}

#[test]
fn stream_framing_violations() {
    let mut d = in_stream(v2());
    let e = err(&mut d, b"S\x00\x00\x02\xf3\x01");
    assert_eq!(
        e.kind,
        DecodeErrorKind::NestedStream {
            xid: Xid(0x2f3),
            open: Xid(0x2f2)
        }
    );
    for bytes in [
        BEGIN,
        &b"c\x00\x00\x02\xf2\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x03"[..],
        b"A\x00\x00\x02\xf2\x00\x00\x02\xf2",
        b"b\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x04g\0",
    ] {
        let e = d.decode(&Bytes::copy_from_slice(bytes)).expect_err("inside stream");
        assert!(matches!(e.kind, DecodeErrorKind::UnexpectedMessage { context: "inside a stream block", .. }), "{e}");
    }
    assert_eq!(
        d.stream_xid(),
        Some(Xid(0x2f2)),
        "errors do not change state"
    );
    ok(&mut d, b"E");
    let e = err(&mut d, b"E");
    assert!(matches!(
        e.kind,
        DecodeErrorKind::UnexpectedMessage {
            message: "Stream Stop",
            ..
        }
    ));
}

#[test]
fn stream_xid_missing_is_detected() {
    // A non-stream Insert decoded inside a block reads the oid as the xid
    // and then fails; it must not decode into something plausible.
    let mut d = in_stream(v2());
    assert!(d.decode(&b(b"I\x00\x00\x40\x00N\x00\x02nn")).is_err());
}
