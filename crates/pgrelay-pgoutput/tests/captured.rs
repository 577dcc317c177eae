//! Decodes and reassembles real pgoutput streams captured from PostgreSQL 15
//! (see tests/fixtures/README.md for the workload) and checks the resulting
//! transactions, under several protocol versions and memory budgets.

mod common;

use bytes::Bytes;
use common::{config, load_fixture, run, Outcome};
use pgrelay_pgoutput::{DecoderConfig, ProtocolVersion, Streaming};
use pgrelay_types::{Change, Lsn, OldTuple, Transaction, TransactionKind, Value, Xid};

fn payloads(name: &str) -> Vec<Bytes> {
    load_fixture(name).into_iter().map(|(_, p)| p).collect()
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::Text(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

fn row(values: &[Value]) -> Vec<Option<&str>> {
    values.iter().map(text).collect()
}

fn inserted_ids(t: &Transaction) -> Vec<i64> {
    t.changes
        .iter()
        .map(|c| match c {
            Change::Insert { new, .. } => text(&new.0[0]).and_then(|s| s.parse().ok()).expect("id"),
            other => panic!("expected insert, got {other:?}"),
        })
        .collect()
}

/// The expectations every full capture of the workload must meet.
fn check_workload(o: &Outcome, streamed: bool) {
    let t = &o.transactions;
    assert_eq!(
        t.len(),
        20,
        "transactions: {:#?}",
        t.iter().map(|t| &t.info).collect::<Vec<_>>()
    );

    // 1. two inserts, the second with a NULL; the enum column arrives as text.
    let [Change::Insert { relation, new: a }, Change::Insert { new: b, .. }] = &t[0].changes[..]
    else {
        panic!("{:?}", t[0].changes)
    };
    assert_eq!(
        (relation.schema.as_str(), relation.name.as_str()),
        ("public", "t_default")
    );
    assert_eq!(
        relation
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["id", "v", "m"]
    );
    assert_eq!(row(&a.0), [Some("1"), Some("one"), Some("happy")]);
    assert_eq!(row(&b.0), [Some("2"), None, Some("sad")]);
    assert_eq!(t[0].info.kind, TransactionKind::Plain);

    // 2. update non-key (no old tuple), update key (old key), delete (old key).
    let [Change::Update {
        old: None, new: n1, ..
    }, Change::Update {
        old: Some(OldTuple::Key(k)),
        new: n2,
        ..
    }, Change::Delete {
        old: OldTuple::Key(d),
        ..
    }] = &t[1].changes[..]
    else {
        panic!("{:?}", t[1].changes)
    };
    assert_eq!(row(&n1.0), [Some("1"), Some("uno"), Some("happy")]);
    assert_eq!(row(&k.0), [Some("2"), None, None]);
    assert_eq!(row(&n2.0), [Some("3"), None, Some("sad")]);
    assert_eq!(row(&d.0), [Some("1"), None, None]);

    // 3-5. REPLICA IDENTITY FULL sends whole old rows.
    assert_eq!(t[2].changes.len(), 2);
    let [Change::Update {
        relation,
        old: Some(OldTuple::Full(old)),
        new,
    }] = &t[3].changes[..]
    else {
        panic!("{:?}", t[3].changes)
    };
    assert_eq!(
        relation.replica_identity,
        pgrelay_types::ReplicaIdentity::Full
    );
    assert_eq!(
        (row(&old.0), row(&new.0)),
        (vec![Some("1"), Some("a")], vec![Some("1"), Some("aa")])
    );
    assert!(matches!(
        &t[4].changes[..],
        [Change::Delete {
            old: OldTuple::Full(_),
            ..
        }]
    ));

    // 6-7. TOAST: the update leaves the external value unchanged.
    let [Change::Insert { new, .. }] = &t[5].changes[..] else {
        panic!()
    };
    assert_eq!(new.0[2].bytes().map(Bytes::len), Some(3000));
    let [Change::Update { old: None, new, .. }] = &t[6].changes[..] else {
        panic!()
    };
    assert_eq!(new.0[2], Value::UnchangedToast);
    assert_eq!(row(&new.0[..2]), [Some("1"), Some("1")]);

    // 8-11. truncates.
    let [Change::Truncate { relations, options }] = &t[9].changes[..] else {
        panic!("{:?}", t[9].changes)
    };
    assert_eq!(
        relations
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["parent", "child"]
    );
    assert!(options.cascade && options.restart_identity);
    let [Change::Truncate { relations, options }] = &t[10].changes[..] else {
        panic!()
    };
    assert_eq!(relations[0].name.as_str(), "t_full");
    assert!(!options.cascade && !options.restart_identity);

    // 12. a transactional message inside the transaction, in order.
    let [Change::Insert { .. }, Change::Message(m)] = &t[11].changes[..] else {
        panic!("{:?}", t[11].changes)
    };
    assert!(m.transactional);
    assert_eq!(
        (m.prefix.as_str(), &m.content[..]),
        ("pgrelay", &b"transactional payload"[..])
    );
    // ... and the non-transactional one on its own.
    assert_eq!(o.messages.len(), 1);
    assert!(!o.messages[0].transactional);
    assert_eq!(&o.messages[0].content[..], b"non-transactional payload");

    // 13. COMMIT PREPARED surfaces the prepared transaction; the rolled back
    // one never appears.
    let TransactionKind::TwoPhase(p) = &t[12].info.kind else {
        panic!("{:?}", t[12].info)
    };
    assert_eq!(p.gid.as_str(), "gid-commit");
    assert!(!p.streamed);
    assert!(p.prepare_lsn < t[12].info.commit_lsn);
    assert_eq!(inserted_ids(&t[12]), [20]);

    // 14-15. ALTER TABLE ADD COLUMN between two inserts.
    assert_eq!(inserted_ids(&t[13]), [30]);
    assert_eq!(
        t[13].changes[0].relation().map(|r| r.columns.len()),
        Some(3)
    );
    assert_eq!(
        t[14].changes[0].relation().map(|r| r.columns.len()),
        Some(4)
    );
    let [Change::Insert { new, .. }] = &t[14].changes[..] else {
        panic!()
    };
    assert_eq!(
        row(&new.0),
        [Some("31"), Some("after"), Some("ok"), Some("7")]
    );

    // 16. replication origin.
    let origin = t[15].info.origin.as_ref().expect("origin");
    assert_eq!(
        (origin.name.as_str(), origin.lsn),
        ("upstream", Lsn(0xAB_CDEF))
    );

    // 17. big_a: the rolled-back savepoint's rows are gone, order is kept.
    assert_eq!(t[16].info.xid, Xid(754));
    let expected: Vec<i64> = (1..=500).chain(1001..=1050).collect();
    assert_eq!(inserted_ids(&t[16]), expected);
    // 18. big_b: the column added mid-transaction shows up from row 501 on.
    assert_eq!(t[17].info.xid, Xid(755));
    assert_eq!(inserted_ids(&t[17]), (1..=550).collect::<Vec<i64>>());
    let widths: Vec<usize> = t[17]
        .changes
        .iter()
        .filter_map(|c| c.relation())
        .map(|r| r.columns.len())
        .collect();
    assert_eq!(widths.iter().filter(|w| **w == 2).count(), 500);
    assert_eq!(widths[500..], [3; 50]);
    let expected_kind = if streamed {
        TransactionKind::Streamed
    } else {
        TransactionKind::Plain
    };
    assert_eq!(t[16].info.kind, expected_kind);
    assert_eq!(t[17].info.kind, expected_kind);
    // 19. a big prepared transaction.
    let TransactionKind::TwoPhase(p) = &t[18].info.kind else {
        panic!()
    };
    assert_eq!((p.gid.as_str(), p.streamed), ("gid-big", streamed));
    assert_eq!(inserted_ids(&t[18]), (2001..=2600).collect::<Vec<i64>>());
    // 20. the aborted transaction 759 is absent; the last insert follows.
    assert!(t.iter().all(|t| t.info.xid != Xid(759)));
    assert_eq!(inserted_ids(&t[19]), [50]);

    // Commit order is WAL order.
    assert!(t.windows(2).all(|w| w[0].info.end_lsn <= w[1].info.end_lsn
        || matches!(w[1].info.kind, TransactionKind::TwoPhase(_))));
}

/// Same transactions regardless of delivery (plain vs streamed), ignoring
/// the delivery kind.
fn same_transactions(a: &Outcome, b: &Outcome) {
    assert_eq!(a.transactions.len(), b.transactions.len());
    for (x, y) in a.transactions.iter().zip(&b.transactions) {
        assert_eq!(
            (
                x.info.xid,
                x.info.commit_lsn,
                x.info.end_lsn,
                x.info.commit_ts
            ),
            (
                y.info.xid,
                y.info.commit_lsn,
                y.info.end_lsn,
                y.info.commit_ts
            )
        );
        assert_eq!(x.info.origin, y.info.origin);
        assert_eq!(x.changes, y.changes, "xid {}", x.info.xid);
    }
    assert_eq!(a.messages, b.messages);
}

const BUDGETS: [usize; 4] = [0, 4 << 10, 64 << 10, usize::MAX];

#[test]
fn v1_capture() {
    let p = payloads("v1.bin");
    let (reference, re) = run(config(ProtocolVersion::V1, Streaming::Off), &p, usize::MAX);
    check_workload(&reference, false);
    assert_eq!(reference.spilled_transactions, 0);
    assert_eq!(re.store().appended_records(), 0);
    for budget in BUDGETS {
        let (o, re) = run(config(ProtocolVersion::V1, Streaming::Off), &p, budget);
        check_workload(&o, false);
        same_transactions(&reference, &o);
        assert_eq!(re.store().live_spills(), 0, "every spill was taken");
        assert_eq!(re.stats().buffered_bytes, 0);
        if budget == 0 {
            assert_eq!(o.spilled_transactions, 20);
        }
        if budget == 64 << 10 {
            assert!(o.spilled_transactions >= 2, "the big transactions spill");
        }
    }
}

#[test]
fn v2_streaming_capture_under_every_budget_and_version() {
    let p = payloads("v2-streaming.bin");
    let (plain, _) = run(
        config(ProtocolVersion::V1, Streaming::Off),
        &payloads("v1.bin"),
        usize::MAX,
    );
    let configs: [DecoderConfig; 3] = [
        config(ProtocolVersion::V2, Streaming::On),
        // The same bytes are what versions 3 and 4 (streaming = on) send.
        config(ProtocolVersion::V3, Streaming::On),
        config(ProtocolVersion::V4, Streaming::On),
    ];
    for cfg in configs {
        for budget in BUDGETS {
            let (o, re) = run(cfg, &p, budget);
            check_workload(&o, true);
            same_transactions(&plain, &o);
            let stats = re.stats();
            assert_eq!(
                (
                    stats.open_streams,
                    stats.pending_prepared,
                    stats.buffered_bytes
                ),
                (0, 0, 0)
            );
            assert_eq!(
                re.store().live_spills(),
                0,
                "aborted transactions' spills were discarded"
            );
            assert_eq!(re.flush_limit(), None);
            if budget == 0 {
                assert!(stats.spilled_changes > 2000, "{stats:?}");
            }
        }
    }
}

#[test]
fn v1_binary_capture() {
    let (o, _) = run(
        config(ProtocolVersion::V1, Streaming::Off),
        &payloads("v1-binary.bin"),
        usize::MAX,
    );
    assert_eq!(o.transactions.len(), 16);
    let [Change::Insert { new, .. }, ..] = &o.transactions[0].changes[..] else {
        panic!()
    };
    // int4 in binary send format, text and enum as their bytes.
    assert_eq!(new.0[0], Value::Binary(Bytes::from_static(&[0, 0, 0, 1])));
    assert_eq!(new.0[1], Value::Binary(Bytes::from_static(b"one")));
    let [Change::Update { new, .. }] = &o.transactions[6].changes[..] else {
        panic!()
    };
    assert_eq!(new.0[2], Value::UnchangedToast);
    let (text, _) = run(
        config(ProtocolVersion::V1, Streaming::Off),
        &payloads("v1.bin"),
        usize::MAX,
    );
    for (b, t) in o.transactions.iter().zip(&text.transactions) {
        assert_eq!(b.info, t.info);
        assert_eq!(b.changes.len(), t.changes.len());
    }
}

#[test]
fn stream_blocks_interleave_in_the_capture() {
    use pgrelay_pgoutput::{Decoder, Message};
    let mut d = Decoder::new(config(ProtocolVersion::V2, Streaming::On));
    let mut starts = Vec::new();
    let mut aborts = Vec::new();
    for p in payloads("v2-streaming.bin") {
        match d.decode(&p).expect("decodes") {
            Message::StreamStart(s) => starts.push((s.xid.0, s.first_segment)),
            Message::StreamAbort(a) => aborts.push((a.xid.0, a.subxid.0)),
            _ => {}
        }
    }
    assert_eq!(
        starts[..4],
        [(754, true), (755, true), (754, false), (754, false)]
    );
    assert_eq!(aborts, [(754, 756), (759, 759)]);
}
