//! Transaction reassembly scenarios: plain, interleaved streams with
//! subtransaction aborts, two-phase, spilling, and protocol violations.

mod common;

use bytes::Bytes;
use common::*;
use pgrelay_pgoutput::spill::codec::crc32c;
use pgrelay_pgoutput::{
    Decoder, DecoderConfig, MemorySpillStore, ReassembleError, Reassembled, Reassembler, SpillId,
    SpillStore, SpillStoreError,
};
use pgrelay_types::{Change, Lsn, TransactionKind, Xid};

fn ids(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match c {
            Change::Insert { new, .. } => {
                String::from_utf8_lossy(new.0[0].bytes().expect("text")).into_owned()
            }
            Change::Message(m) => format!("msg:{}", String::from_utf8_lossy(&m.content)),
            other => format!("{other:?}"),
        })
        .collect()
}

/// Feeds messages one by one, expecting success, and returns what came out.
fn feed(dec: &mut Decoder, re: &mut Reassembler<MemorySpillStore>, msgs: &[Bytes]) -> Outcome {
    let mut o = Outcome::default();
    for m in msgs {
        let msg = dec.decode(m).expect("decode");
        if let Some(out) = re.push(msg).expect("push") {
            collect::<MemorySpillStore>(out, &mut o);
        }
    }
    o
}

fn rel() -> Bytes {
    relation(None, 100, "t", &["id", "v"])
}

#[test]
fn plain_transaction() {
    for budget in [0, usize::MAX] {
        let (o, re) = run(
            v1(),
            &[
                rel(),
                begin(0x500, 9),
                insert(None, 100, &[v("1"), None]),
                insert(None, 100, &[v("2"), v("x")]),
                commit(0x500, 0x528),
            ],
            budget,
        );
        let [t] = &o.transactions[..] else { panic!() };
        assert_eq!(ids(&t.changes), ["1", "2"]);
        assert_eq!(
            (t.info.xid, t.info.commit_lsn, t.info.end_lsn),
            (Xid(9), Lsn(0x500), Lsn(0x528))
        );
        assert_eq!(t.info.kind, TransactionKind::Plain);
        assert_eq!(re.stats().transactions, 1);
        assert_eq!(re.store().live_spills(), 0);
    }
}

/// Two streamed transactions interleave; one aborts a subtransaction after
/// part of it was streamed (and, with a zero budget, spilled).
#[test]
fn interleaved_streams_with_subtransaction_abort() {
    let msgs = [
        rel(),
        stream_start(10, true),
        insert(Some(10), 100, &[v("10a"), None]),
        insert(Some(11), 100, &[v("11a"), None]),
        stream_stop(),
        stream_start(20, true),
        insert(Some(20), 100, &[v("20a"), None]),
        stream_stop(),
        stream_start(10, false),
        insert(Some(11), 100, &[v("11b"), None]),
        insert(Some(12), 100, &[v("12a"), None]),
        message(Some(12), true, "p", b"m"),
        stream_stop(),
        stream_abort(10, 11),
        stream_commit(20, 0x900, 0x928),
        stream_start(10, false),
        insert(Some(10), 100, &[v("10b"), None]),
        stream_stop(),
        stream_commit(10, 0xa00, 0xa28),
    ];
    for budget in [0, 100, 400, usize::MAX] {
        let (o, re) = run(v2(), &msgs, budget);
        let [t20, t10] = &o.transactions[..] else {
            panic!("{o:?}")
        };
        assert_eq!(
            (t20.info.xid, t20.info.kind.clone()),
            (Xid(20), TransactionKind::Streamed)
        );
        assert_eq!(ids(&t20.changes), ["20a"]);
        assert_eq!(t10.info.xid, Xid(10));
        assert_eq!(
            ids(&t10.changes),
            ["10a", "12a", "msg:m", "10b"],
            "budget {budget}"
        );
        assert_eq!(re.store().live_spills(), 0);
        if budget == 0 {
            assert_eq!(o.spilled_transactions, 2);
        }
    }
}

/// Eager mode: the first streamed transaction comes out as it arrives
/// (changes tagged with their subtransaction, then its aborts and commit);
/// one that starts while it is open is buffered as usual; once the eager
/// one ended, the next stream is eager again.
#[test]
fn eager_stream_is_handed_out_as_it_arrives() {
    let msgs = [
        rel(),
        stream_start(10, true),
        insert(Some(10), 100, &[v("10a"), None]),
        insert(Some(11), 100, &[v("11a"), None]),
        stream_stop(),
        stream_start(20, true),
        insert(Some(20), 100, &[v("20a"), None]),
        stream_stop(),
        stream_start(10, false),
        insert(Some(12), 100, &[v("12a"), None]),
        stream_stop(),
        stream_abort(10, 11),
        stream_commit(10, 0xa00, 0xa28),
        stream_commit(20, 0xb00, 0xb28),
        stream_start(30, true),
        insert(Some(30), 100, &[v("30a"), None]),
        stream_stop(),
        stream_abort(30, 30),
    ];
    let mut dec = Decoder::new(v2());
    let mut re = Reassembler::new(MemorySpillStore::default(), usize::MAX);
    re.set_eager_streams(true);
    let mut o = Outcome::default();
    let mut open_during = Vec::new();
    for m in &msgs {
        let msg = dec.decode(m).expect("decode");
        if let Some(out) = re.push(msg).expect("push") {
            collect::<MemorySpillStore>(out, &mut o);
        }
        open_during.push(re.stats().open_streams);
    }
    assert_eq!(
        o.eager,
        [
            "change 10 10 10a",
            "change 10 11 11a",
            "change 10 12 12a",
            "abort 10 11",
            "commit 10 0/A00",
            "change 30 30 30a",
            "abort 30 30",
        ]
    );
    let [t20] = &o.transactions[..] else {
        panic!("{o:?}")
    };
    assert_eq!(ids(&t20.changes), ["20a"]);
    assert_eq!(re.eager_stream(), None);
    assert_eq!(re.stats().open_streams, 0);
    assert_eq!(open_during.iter().max(), Some(&2));
}

#[test]
fn toplevel_stream_abort_drops_everything() {
    for budget in [0, usize::MAX] {
        let (o, re) = run(
            v2(),
            &[
                rel(),
                stream_start(10, true),
                insert(Some(10), 100, &[v("1"), None]),
                insert(Some(11), 100, &[v("2"), None]),
                stream_stop(),
                stream_abort(10, 10),
                // Aborts of unknown transactions are harmless.
                stream_abort(99, 99),
                stream_abort(98, 97),
            ],
            budget,
        );
        assert!(o.transactions.is_empty());
        assert_eq!(re.store().live_spills(), 0);
        assert_eq!(re.stats().open_streams, 0);
        assert_eq!(re.stats().buffered_bytes, 0);
    }
}

#[test]
fn two_phase_commit_and_rollback() {
    let mut dec = Decoder::new(v1());
    for budget in [0, usize::MAX] {
        let mut re = Reassembler::new(MemorySpillStore::new(), budget);
        let o = feed(
            &mut dec,
            &mut re,
            &[
                rel(),
                begin_prepare(0x700, 0x728, 5, "g1"),
                insert(None, 100, &[v("1"), None]),
                prepare(b'P', 0x700, 0x728, 5, "g1"),
            ],
        );
        assert!(o.transactions.is_empty());
        assert_eq!(re.flush_limit(), Some(Lsn(0x700)));
        assert_eq!(
            re.pending_prepared()
                .map(|p| p.gid.to_string())
                .collect::<Vec<_>>(),
            ["g1"]
        );
        // A plain transaction commits while g1 is pending.
        let o = feed(
            &mut dec,
            &mut re,
            &[
                begin(0x750, 6),
                insert(None, 100, &[v("2"), None]),
                commit(0x750, 0x778),
            ],
        );
        assert_eq!(ids(&o.transactions[0].changes), ["2"]);
        assert_eq!(re.flush_limit(), Some(Lsn(0x700)));
        let o = feed(&mut dec, &mut re, &[commit_prepared(0x800, 0x828, 5, "g1")]);
        let [t] = &o.transactions[..] else { panic!() };
        let TransactionKind::TwoPhase(p) = &t.info.kind else {
            panic!()
        };
        assert_eq!(
            (p.gid.as_str(), p.prepare_lsn, p.prepare_end_lsn, p.streamed),
            ("g1", Lsn(0x700), Lsn(0x728), false)
        );
        assert_eq!(
            (t.info.commit_lsn, t.info.end_lsn),
            (Lsn(0x800), Lsn(0x828))
        );
        assert_eq!(ids(&t.changes), ["1"]);
        assert_eq!(re.flush_limit(), None);
        // Rolled back: nothing comes out, the spill is discarded.
        let o = feed(
            &mut dec,
            &mut re,
            &[
                begin_prepare(0x900, 0x928, 7, "g2"),
                insert(None, 100, &[v("3"), None]),
                prepare(b'P', 0x900, 0x928, 7, "g2"),
                rollback_prepared(7, "g2"),
            ],
        );
        assert!(o.transactions.is_empty());
        assert_eq!(re.store().live_spills(), 0);
        // ROLLBACK PREPARED of something never prepared here is ignored.
        let o = feed(&mut dec, &mut re, &[rollback_prepared(8, "never")]);
        assert!(o.transactions.is_empty());
    }
}

#[test]
fn stream_prepare_then_commit_prepared() {
    let (o, re) = run(
        v2(),
        &[
            rel(),
            stream_start(30, true),
            insert(Some(30), 100, &[v("1"), None]),
            stream_stop(),
            prepare(b'p', 0x600, 0x628, 30, "big"),
            commit_prepared(0x700, 0x728, 30, "big"),
        ],
        0,
    );
    let [t] = &o.transactions[..] else { panic!() };
    let TransactionKind::TwoPhase(p) = &t.info.kind else {
        panic!()
    };
    assert!(p.streamed);
    assert_eq!(ids(&t.changes), ["1"]);
    assert_eq!(re.store().live_spills(), 0);
}

#[test]
fn non_transactional_message_is_immediate_and_origin_attaches() {
    let mut dec = Decoder::new(v1());
    let mut re = Reassembler::new(MemorySpillStore::new(), usize::MAX);
    let out = re
        .push(
            dec.decode(&message(None, false, "hb", b"now"))
                .expect("decode"),
        )
        .expect("push");
    let Some(Reassembled::Message(m)) = out else {
        panic!("{out:?}")
    };
    assert_eq!((m.prefix.as_str(), &m.content[..]), ("hb", &b"now"[..]));
    let o = feed(
        &mut dec,
        &mut re,
        &[
            rel(),
            begin(0x10, 1),
            Msg::new(b'O').u64(0xABC).s("up").done(),
            insert(None, 100, &[v("1"), None]),
            commit(0x10, 0x20),
        ],
    );
    let origin = o.transactions[0].info.origin.as_ref().expect("origin");
    assert_eq!((origin.name.as_str(), origin.lsn), ("up", Lsn(0xABC)));
}

#[test]
fn relation_change_inside_a_spilled_transaction() {
    let (o, re) = run(
        v1(),
        &[
            rel(),
            begin(0x10, 1),
            insert(None, 100, &[v("1"), None]),
            relation(None, 100, "t", &["id", "v", "extra"]),
            insert(None, 100, &[v("2"), None, v("e")]),
            Msg::new(b'T').u32(1).u8(1).u32(100).done(),
            commit(0x10, 0x20),
        ],
        0,
    );
    let t = &o.transactions[0];
    let widths: Vec<_> = t
        .changes
        .iter()
        .map(|c| match c {
            Change::Insert { relation, .. } => relation.columns.len(),
            Change::Truncate { relations, .. } => relations[0].columns.len(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(widths, [2, 3, 3]);
    // Two definitions plus three changes were written.
    assert_eq!(re.store().appended_records(), 5);
}

#[test]
fn order_is_kept_when_spilling_part_of_a_transaction() {
    let mut msgs = vec![rel(), begin(0x10, 1)];
    for i in 0..50 {
        msgs.push(insert(None, 100, &[Some(&i.to_string()), v("payload")]));
    }
    msgs.push(commit(0x10, 0x20));
    let (o, re) = run(v1(), &msgs, 1_000);
    let t = &o.transactions[0];
    assert_eq!(
        ids(&t.changes),
        (0..50).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(o.spilled_transactions, 1);
    assert!(
        re.stats().spilled_changes > 0 && re.stats().spilled_changes < 50,
        "{:?}",
        re.stats()
    );
}

#[test]
fn committed_iterates_lazily_and_reports_spill() {
    let mut dec = Decoder::new(v1());
    let mut re = Reassembler::new(MemorySpillStore::new(), 0);
    for m in [rel(), begin(0x10, 1), insert(None, 100, &[v("1"), None])] {
        assert!(re
            .push(dec.decode(&m).expect("decode"))
            .expect("push")
            .is_none());
    }
    let Some(Reassembled::Transaction(mut c)) = re
        .push(dec.decode(&commit(0x10, 0x20)).expect("decode"))
        .expect("push")
    else {
        panic!()
    };
    assert!(c.is_spilled());
    assert_eq!((c.spilled_changes(), c.in_memory_changes()), (1, 0));
    assert!(matches!(c.next(), Some(Ok(Change::Insert { .. }))));
    assert!(c.next().is_none());
}

fn expect_error(cfg: DecoderConfig, msgs: &[Bytes]) -> ReassembleError {
    let mut dec = Decoder::new(cfg);
    let mut re = Reassembler::new(MemorySpillStore::new(), usize::MAX);
    let (last, init) = msgs.split_last().expect("messages");
    for m in init {
        re.push(dec.decode(m).expect("decode")).expect("setup");
    }
    let e = re
        .push(dec.decode(last).expect("decode"))
        .expect_err("violation");
    assert!(!e.is_transient());
    // Poisoned from now on.
    let again = re
        .push(dec.decode(&rel()).expect("decode"))
        .expect_err("poisoned");
    assert!(matches!(again, ReassembleError::Poisoned), "{again}");
    e
}

#[test]
fn protocol_violations() {
    let e = expect_error(v1(), &[commit(1, 2)]);
    assert!(
        matches!(
            e,
            ReassembleError::Unexpected {
                message: "Commit",
                ..
            }
        ),
        "{e}"
    );
    let e = expect_error(v1(), &[begin(1, 1), begin(2, 2)]);
    assert!(matches!(
        e,
        ReassembleError::Unexpected {
            message: "Begin",
            context: "inside an open transaction"
        }
    ));
    let e = expect_error(v1(), &[begin(1, 1), commit(2, 3)]);
    assert!(matches!(
        e,
        ReassembleError::CommitMismatch {
            begin: Lsn(1),
            commit: Lsn(2)
        }
    ));
    let e = expect_error(v1(), &[rel(), insert(None, 100, &[None, None])]);
    assert!(matches!(
        e,
        ReassembleError::Unexpected {
            message: "Insert",
            context: "outside any transaction"
        }
    ));
    let e = expect_error(v1(), &[Msg::new(b'O').u64(1).s("x").done()]);
    assert!(matches!(
        e,
        ReassembleError::Unexpected {
            message: "Origin",
            ..
        }
    ));
    let e = expect_error(v2(), &[stream_commit(5, 1, 2)]);
    assert!(matches!(
        e,
        ReassembleError::UnknownStream { xid: Xid(5), .. }
    ));
    let e = expect_error(v2(), &[stream_start(5, false)]);
    assert!(matches!(
        e,
        ReassembleError::UnknownStream {
            message: "Stream Start",
            ..
        }
    ));
    let e = expect_error(
        v2(),
        &[stream_start(5, true), stream_stop(), stream_start(5, true)],
    );
    assert!(matches!(
        e,
        ReassembleError::DuplicateStream { xid: Xid(5) }
    ));
    let e = expect_error(v2(), &[begin(1, 1), stream_start(5, true)]);
    assert!(matches!(
        e,
        ReassembleError::Unexpected {
            message: "Stream Start",
            ..
        }
    ));
    let e = expect_error(
        v1(),
        &[begin_prepare(1, 2, 3, "a"), prepare(b'P', 1, 2, 3, "b")],
    );
    assert!(matches!(e, ReassembleError::PrepareMismatch { .. }));
    let e = expect_error(v1(), &[begin(1, 1), prepare(b'P', 1, 2, 3, "b")]);
    assert!(matches!(
        e,
        ReassembleError::Unexpected {
            message: "Prepare",
            ..
        }
    ));
    let e = expect_error(v1(), &[commit_prepared(1, 2, 3, "nope")]);
    assert!(matches!(e, ReassembleError::UnknownPrepared { .. }));
    assert!(e.to_string().contains("flush_limit"));
    let e = expect_error(
        v1(),
        &[
            begin_prepare(1, 2, 3, "g"),
            prepare(b'P', 1, 2, 3, "g"),
            begin_prepare(4, 5, 6, "g"),
            prepare(b'P', 4, 5, 6, "g"),
        ],
    );
    assert!(matches!(e, ReassembleError::DuplicatePrepared { .. }));
    let e = expect_error(
        v1(),
        &[
            begin_prepare(1, 2, 3, "g"),
            prepare(b'P', 1, 2, 3, "g"),
            commit_prepared(4, 5, 9, "g"),
        ],
    );
    assert!(matches!(
        e,
        ReassembleError::PreparedXidMismatch {
            xid: Xid(9),
            prepared_xid: Xid(3),
            ..
        }
    ));
    let e = expect_error(v1(), &[begin(1, 1), commit_prepared(4, 5, 9, "g")]);
    assert!(matches!(
        e,
        ReassembleError::Unexpected {
            message: "Commit Prepared",
            ..
        }
    ));
}

/// A store whose data rots or whose disk fails.
#[derive(Default)]
struct FaultyStore {
    inner: MemorySpillStore,
    flip_byte: bool,
    fail_append: bool,
}

impl SpillStore for FaultyStore {
    type Reader = std::vec::IntoIter<Result<Bytes, SpillStoreError>>;
    fn append(&mut self, id: SpillId, record: &[u8]) -> Result<(), SpillStoreError> {
        if self.fail_append {
            return Err(SpillStoreError::Io {
                id,
                source: std::io::Error::other("No space left on device"),
            });
        }
        let mut r = record.to_vec();
        if self.flip_byte {
            if let Some(b) = r.get_mut(3) {
                *b ^= 0x40;
            }
        }
        self.inner.append(id, &r)
    }
    fn take(&mut self, id: SpillId) -> Result<Self::Reader, SpillStoreError> {
        Ok(self.inner.take(id)?.collect::<Vec<_>>().into_iter())
    }
    fn discard(&mut self, id: SpillId) -> Result<(), SpillStoreError> {
        self.inner.discard(id)
    }
}

#[test]
fn spill_store_failures() {
    let mut dec = Decoder::new(v1());
    let mut re = Reassembler::new(
        FaultyStore {
            fail_append: true,
            ..Default::default()
        },
        0,
    );
    re.push(dec.decode(&rel()).expect("decode"))
        .expect("relation");
    re.push(dec.decode(&begin(1, 1)).expect("decode"))
        .expect("begin");
    let e = re
        .push(
            dec.decode(&insert(None, 100, &[None, None]))
                .expect("decode"),
        )
        .expect_err("disk full");
    assert!(matches!(
        e,
        ReassembleError::Store(SpillStoreError::Io { .. })
    ));
    assert!(e.is_transient(), "a full disk can clear up");
    assert!(e.to_string().contains("free space"));

    let mut dec = Decoder::new(v1());
    let mut re = Reassembler::new(
        FaultyStore {
            flip_byte: true,
            ..Default::default()
        },
        0,
    );
    for m in [rel(), begin(1, 1), insert(None, 100, &[None, None])] {
        re.push(dec.decode(&m).expect("decode")).expect("push");
    }
    let Some(Reassembled::Transaction(mut c)) = re
        .push(dec.decode(&commit(1, 2)).expect("decode"))
        .expect("commit")
    else {
        panic!()
    };
    let e = c.next().expect("an item").expect_err("corrupt");
    assert!(matches!(e, ReassembleError::Corrupt(_)), "{e}");
    assert!(!e.is_transient());
    assert!(
        c.next().is_none(),
        "a failed transaction yields nothing more"
    );
    let _ = crc32c(b"");
}

/// Fuzz regression (smoke, reassembler target): a subtransaction xid that
/// reappears after its Stream Abort. The server never reuses xids, but a
/// spilled transaction used to drop the later changes on read-back while an
/// in-memory one kept them; both must agree.
#[test]
fn fuzz_regression_xid_reused_after_subxact_abort() {
    let msgs: [&'static [u8]; 10] = [
        b"R\x00\x00\x00\x64public\0t\0d\x00\x01\x01id\0\x00\x00\x00\x19\xff\xff\xff\xff",
        b"S\x00\x00\x00\x0a\x01",
        b"I\x00\x00\x00\x0b\x00\x00\x00\x64N\x00\x01t\x00\x00\x00\x01a",
        b"E",
        b"A\x00\x00\x00\x0a\x00\x00\x00\x0b",
        b"S\x00\x00\x00\x0a\x00",
        b"I\x00\x00\x00\x0b\x00\x00\x00\x64N\x00\x01t\x00\x00\x00\x01b",
        b"I\x00\x00\x00\x0a\x00\x00\x00\x64N\x00\x01t\x00\x00\x00\x01c",
        b"E",
        b"c\x00\x00\x00\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x03",
    ];
    let payloads: Vec<Bytes> = msgs.iter().map(|m| Bytes::from_static(m)).collect();
    for budget in [0, usize::MAX] {
        let (o, _) = run(v2(), &payloads, budget);
        assert_eq!(
            ids(&o.transactions[0].changes),
            ["b", "c"],
            "budget {budget}"
        );
    }
}
