//! The applier against real targets: synthetic source transactions (with
//! `RelationInfo` read from a real catalog) applied to real servers of every
//! supported major, then the target's contents checked.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use pgrelay_apply::{meta, ApplyError, SessionRole};
use pgrelay_testkit::{per_major, Cluster};
use pgrelay_types::{
    ByteStr, Change, Column, Oid, OldTuple, RelationInfo, ReplicaIdentity, TruncateOptions, Value,
};

per_major!(dml_by_name_copy_toast_key_change, |major| async move {
    let cluster = Cluster::start(major);
    cluster.create_database("src");
    // The source and the target define the table with different column
    // orders, the target has an extra column, and the enum's OID differs.
    cluster.execute_blocking(
        "src",
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TABLE public.items (id int PRIMARY KEY, name text, mood mood, big text,
                                    n numeric, tags text[]);",
    );
    cluster.execute_blocking(
        "postgres",
        "CREATE TYPE filler AS ENUM ('x');
         CREATE TYPE mood AS ENUM ('happy', 'ok', 'sad');
         CREATE TABLE public.items (extra text DEFAULT 'x', big text, tags text[], n numeric,
                                    mood mood, name text, id int PRIMARY KEY);",
    );
    let src = cluster.connect("src").await;
    let rel = relation(&src, "public", "items").await;
    let target = cluster.connect("postgres").await;
    let target_mood: u32 = target
        .query_one("SELECT 'mood'::regtype::oid", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(
        rel.columns[2].type_oid,
        Oid(target_mood),
        "OIDs must differ"
    );

    let mut a = applier(&cluster, "postgres", options("dml")).await;
    assert_eq!(a.progress(), None);
    let big = "x".repeat(20_000);
    let odd = [
        "tab\there",
        "nl\nx",
        "back\\slash",
        "cr\rx",
        "héllo ✓",
        "\\N",
        "\\.",
    ];
    // Txn 1: a long run of inserts (the COPY path).
    let mut changes = Vec::new();
    for i in 1..=100 {
        let name = match i {
            10..=16 => t(odd[i - 10]),
            17 => Value::Null,
            _ => t(&format!("name {i}")),
        };
        let bigv = if i == 1 { t(&big) } else { t("small") };
        changes.push(insert(
            &rel,
            vec![
                t(&i.to_string()),
                name,
                t("happy"),
                bigv,
                t("1.50"),
                t(r#"{a,"b c"}"#),
            ],
        ));
    }
    apply(&mut a, 1, changes).await;
    // Txn 2: a short run (pipelined INSERTs), one value in binary format.
    apply(
        &mut a,
        2,
        vec![
            insert(
                &rel,
                vec![
                    t("1001"),
                    t("odd\tone"),
                    t("sad"),
                    Value::Null,
                    t("2"),
                    Value::Null,
                ],
            ),
            insert(
                &rel,
                vec![
                    Value::Binary(Bytes::copy_from_slice(&1002i32.to_be_bytes())),
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                ],
            ),
            insert(
                &rel,
                vec![t("1003"), t("c"), t("ok"), t("z"), t("3"), t("{}")],
            ),
        ],
    )
    .await;
    // Txn 2b: with txn 2 a run of 21 rows (multi-row INSERTs of 16, 4, 1).
    let more = (3001..3019)
        .map(|i| {
            insert(
                &rel,
                vec![
                    t(&i.to_string()),
                    t("m"),
                    t("ok"),
                    t("b"),
                    t(&i.to_string()),
                    t("{x}"),
                ],
            )
        })
        .collect::<Vec<_>>();
    let mid = pgrelay_types::TransactionInfo {
        commit_lsn: pgrelay_types::Lsn(0x280),
        end_lsn: pgrelay_types::Lsn(0x2a8),
        ..info(2)
    };
    assert!(a.begin(&mid).await.unwrap());
    a.changes(&more).await.unwrap();
    a.commit(&mid).await.unwrap();
    // Txn 3: update leaving the TOASTed column alone.
    apply(
        &mut a,
        3,
        vec![update(
            &rel,
            None,
            vec![
                t("1"),
                t("renamed"),
                t("sad"),
                Value::UnchangedToast,
                t("9"),
                t("{}"),
            ],
        )],
    )
    .await;
    // Txn 4: the key changes (old key sent), then a delete by key, then an
    // update and a delete of rows that do not exist (warned, skipped).
    let key = |id: &str| {
        OldTuple::Key(row(vec![
            t(id),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ]))
    };
    apply(
        &mut a,
        4,
        vec![
            update(
                &rel,
                Some(key("2")),
                vec![t("2000"), t("moved"), t("ok"), t("b"), t("4"), t("{}")],
            ),
            delete(&rel, key("3")),
            update(
                &rel,
                None,
                vec![t("99999"), t("ghost"), t("ok"), t("b"), t("4"), t("{}")],
            ),
            delete(&rel, key("99998")),
            Change::Message(pgrelay_types::LogicalMessage {
                transactional: true,
                lsn: pgrelay_types::Lsn(1),
                prefix: ByteStr::from_static("p"),
                content: Bytes::from_static(b"ignored"),
            }),
        ],
    )
    .await;
    let p = a.flush().await.expect("flush").expect("progress");
    assert_eq!(p.commit_lsn, info(4).commit_lsn);
    assert_eq!(p.end_lsn, info(4).end_lsn);
    assert_eq!(a.progress(), Some(p));
    assert_eq!(a.flush().await.expect("idle flush"), None);

    assert_eq!(scalar(&target, "SELECT count(*) FROM items").await, "120");
    assert_eq!(
        rows(
            &target,
            "SELECT count(*), sum(n), min(tags::text), max(mood::text) FROM items \
             WHERE id BETWEEN 3001 AND 3018"
        )
        .await,
        vec![vec!["18", "54171", "{x}", "ok"]]
    );
    let r = rows(
        &target,
        "SELECT name, mood::text, length(big), md5(big) = md5(repeat('x', 20000)), n, extra \
         FROM items WHERE id = 1",
    )
    .await;
    assert_eq!(r, vec![vec!["renamed", "sad", "20000", "t", "9", "x"]]);
    for (i, want) in odd.iter().enumerate() {
        let got: Option<String> = target
            .query_one("SELECT name FROM items WHERE id = $1", &[&(i as i32 + 10)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got.as_deref(), Some(*want), "row {}", i + 10);
    }
    let r = rows(
        &target,
        "SELECT id, name, mood::text, tags::text FROM items WHERE id IN (17, 9, 1001, 1002, 2000) \
         ORDER BY id",
    )
    .await;
    assert_eq!(
        r,
        vec![
            vec!["9", "name 9", "happy", r#"{a,"b c"}"#],
            vec!["17", "NULL", "happy", r#"{a,"b c"}"#],
            vec!["1001", "odd\tone", "sad", "NULL"],
            vec!["1002", "NULL", "NULL", "NULL"],
            vec!["2000", "moved", "ok", "{}"],
        ]
    );
    assert_eq!(
        scalar(
            &target,
            "SELECT count(*) FROM items WHERE id IN (2, 3, 99999)"
        )
        .await,
        "0"
    );
    let prog = rows(
        &target,
        "SELECT commit_lsn::text, end_lsn::text, commit_time = '2000-01-01 00:00:04+00' \
         FROM pgrelay.progress WHERE pipeline = 'dml'",
    )
    .await;
    assert_eq!(prog, vec![vec!["0/400", "0/428", "t"]]);
});

per_major!(
    replica_identity_full_duplicates_nulls_json,
    |major| async move {
        let cluster = Cluster::start(major);
        cluster.execute_blocking(
            "postgres",
            r#"CREATE TABLE public.logs (a int, b text, j json, p point, x xml);
           ALTER TABLE public.logs REPLICA IDENTITY FULL;
           INSERT INTO public.logs VALUES
             (1, 'x', '{"k": 1}', '(1,2)', '<a/>'), (1, 'x', '{"k": 1}', '(1,2)', '<a/>'),
             (1, 'x', '{"k": 1}', '(1,2)', '<a/>'),
             (2, NULL, NULL, NULL, NULL), (2, NULL, NULL, NULL, NULL),
             (3, 'keep', '[1, 2]', '(0,0)', NULL);"#,
        );
        let target = cluster.connect("postgres").await;
        let rel = relation(&target, "public", "logs").await;
        assert!(rel.columns.iter().all(|c| c.is_key));
        let dup = || vec![t("1"), t("x"), t(r#"{"k": 1}"#), t("(1,2)"), t("<a/>")];
        let nul = || vec![t("2"), Value::Null, Value::Null, Value::Null, Value::Null];
        let mut a = applier(&cluster, "postgres", options("full")).await;
        apply(
            &mut a,
            1,
            vec![
                // Exactly one of three identical rows changes.
                update(
                    &rel,
                    Some(OldTuple::Full(row(dup()))),
                    vec![t("1"), t("y"), t(r#"{"k": 1}"#), t("(1,2)"), t("<a/>")],
                ),
                // NULLs match NULLs, and only one of two duplicates goes.
                delete(&rel, OldTuple::Full(row(nul()))),
                delete(&rel, OldTuple::Full(row(dup()))),
                // An update setting a column to NULL, matched via json text.
                update(
                    &rel,
                    Some(OldTuple::Full(row(vec![
                        t("3"),
                        t("keep"),
                        t("[1, 2]"),
                        t("(0,0)"),
                        Value::Null,
                    ]))),
                    vec![t("3"), Value::Null, t("[1, 2]"), t("(0,0)"), t("<b/>")],
                ),
            ],
        )
        .await;
        a.flush().await.expect("flush");
        let r = rows(
            &target,
            "SELECT a, b, j::text, p::text, x::text FROM logs ORDER BY a, b NULLS LAST",
        )
        .await;
        assert_eq!(
            r,
            vec![
                vec!["1", "x", r#"{"k": 1}"#, "(1,2)", "<a/>"],
                vec!["1", "y", r#"{"k": 1}"#, "(1,2)", "<a/>"],
                vec!["2", "NULL", "NULL", "NULL", "NULL"],
                vec!["3", "NULL", "[1, 2]", "(0,0)", "<b/>"],
            ]
        );
    }
);

per_major!(
    truncate_cascade_restart_identity_and_add_column,
    |major| async move {
        let cluster = Cluster::start(major);
        cluster.execute_blocking(
        "postgres",
        "CREATE TABLE public.parent (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text);
         CREATE TABLE public.child (id int PRIMARY KEY, parent_id int REFERENCES public.parent);
         CREATE TABLE public.other (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY);
         INSERT INTO public.parent (v) VALUES ('a'), ('b');
         INSERT INTO public.child VALUES (1, 1);
         INSERT INTO public.other DEFAULT VALUES;
         CREATE TABLE public.evolve (id int PRIMARY KEY, a text);",
    );
        let target = cluster.connect("postgres").await;
        let parent = relation(&target, "public", "parent").await;
        let other = relation(&target, "public", "other").await;
        let evolve1 = relation(&target, "public", "evolve").await;
        let mut a = applier(&cluster, "postgres", options("trunc")).await;
        apply(
            &mut a,
            1,
            vec![
                Change::Truncate {
                    relations: vec![parent.clone()],
                    options: TruncateOptions {
                        cascade: true,
                        restart_identity: true,
                    },
                },
                Change::Truncate {
                    relations: vec![other.clone()],
                    options: TruncateOptions::default(),
                },
                insert(&evolve1, vec![t("1"), t("a")]),
            ],
        )
        .await;
        a.flush().await.expect("flush");
        assert_eq!(scalar(&target, "SELECT count(*) FROM child").await, "0");
        assert_eq!(scalar(&target, "SELECT count(*) FROM parent").await, "0");
        assert_eq!(
            scalar(&target, "INSERT INTO parent (v) VALUES ('c') RETURNING id").await,
            "1",
            "RESTART IDENTITY"
        );
        assert_eq!(
            scalar(&target, "INSERT INTO other DEFAULT VALUES RETURNING id").await,
            "2",
            "no RESTART IDENTITY"
        );

        // Source and target both add a column; the new relation definition
        // arrives mid-stream and is used without restarting.
        target
            .batch_execute("ALTER TABLE public.evolve ADD COLUMN b int")
            .await
            .unwrap();
        let evolve2 = relation(&target, "public", "evolve").await;
        assert_eq!(evolve2.columns.len(), 3);
        apply(
            &mut a,
            2,
            vec![
                insert(&evolve2, vec![t("2"), t("b"), t("22")]),
                update(&evolve2, None, vec![t("1"), t("a"), t("11")]),
            ],
        )
        .await;
        // An old-definition change still applies (it sets only its columns).
        apply(&mut a, 3, vec![insert(&evolve1, vec![t("3"), t("c")])]).await;
        a.flush().await.expect("flush");
        assert_eq!(
            rows(&target, "SELECT id, a, b FROM evolve ORDER BY id").await,
            vec![
                vec!["1", "a", "11"],
                vec!["2", "b", "22"],
                vec!["3", "c", "NULL"]
            ]
        );
    }
);

per_major!(session_replication_role, |major| async move {
    let cluster = Cluster::start(major);
    cluster.execute_blocking(
        "postgres",
        "CREATE TABLE public.audit (n int);
         CREATE TABLE public.guarded (id int PRIMARY KEY);
         CREATE FUNCTION public.trg() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO public.audit VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER t BEFORE INSERT ON public.guarded FOR EACH ROW EXECUTE FUNCTION public.trg();
         CREATE TABLE public.par (id int PRIMARY KEY);
         CREATE TABLE public.kid (id int PRIMARY KEY, par_id int REFERENCES public.par);",
    );
    let target = cluster.connect("postgres").await;
    let guarded = relation(&target, "public", "guarded").await;
    let kid = relation(&target, "public", "kid").await;

    // Replica (default): the trigger does not fire, the FK is not checked.
    let mut a = applier(&cluster, "postgres", options("replica")).await;
    apply(
        &mut a,
        1,
        vec![
            insert(&guarded, vec![t("1")]),
            insert(&kid, vec![t("1"), t("42")]),
        ],
    )
    .await;
    a.flush().await.expect("flush");
    assert_eq!(scalar(&target, "SELECT count(*) FROM audit").await, "0");
    assert_eq!(scalar(&target, "SELECT count(*) FROM kid").await, "1");

    // Origin: the trigger fires and the FK is enforced (a fatal error
    // naming the table and the source transaction).
    let mut o = applier(
        &cluster,
        "postgres",
        pgrelay_apply::ApplyOptions {
            session_replication_role: SessionRole::Origin,
            ..options("origin")
        },
    )
    .await;
    apply(&mut o, 1, vec![insert(&guarded, vec![t("2")])]).await;
    o.flush().await.expect("flush");
    assert_eq!(scalar(&target, "SELECT count(*) FROM audit").await, "1");
    let i = info(2);
    o.begin(&i).await.unwrap();
    o.changes(&[insert(&kid, vec![t("2"), t("43")])])
        .await
        .unwrap();
    o.commit(&i).await.unwrap();
    let e = o.flush().await.expect_err("FK violation");
    assert!(!e.is_transient(), "{e}");
    assert_eq!(e.sqlstate(), Some("23503"), "{e}");
    let s = e.to_string();
    assert!(
        s.contains("public.kid") && s.contains("0/200") && s.contains("fix:"),
        "{s}"
    );
});

per_major!(batching_crash_safety_and_replay, |major| async move {
    let cluster = Cluster::start(major);
    cluster.execute_blocking(
        "postgres",
        "CREATE TABLE public.nokey (a int, b text);
         CREATE TABLE public.kv (id int PRIMARY KEY, v text);",
    );
    let target = cluster.connect("postgres").await;
    let nokey = relation(&target, "public", "nokey").await;
    let kv = relation(&target, "public", "kv").await;
    let txn = |n: u64| {
        vec![
            insert(&nokey, vec![t(&n.to_string()), t("r")]),
            insert(&kv, vec![t(&n.to_string()), t("v")]),
            update(&kv, None, vec![t(&n.to_string()), t("v2")]),
        ]
    };

    // Applied but never flushed: nothing is visible, during or after.
    let mut a = applier(&cluster, "postgres", options("crash")).await;
    for n in 1..=50 {
        apply(&mut a, n, txn(n)).await;
    }
    assert_eq!(scalar(&target, "SELECT count(*) FROM nokey").await, "0");
    drop(a);
    assert_eq!(scalar(&target, "SELECT count(*) FROM nokey").await, "0");

    // A new applier starts from nothing and applies everything in ONE
    // target transaction.
    let mut b = applier(&cluster, "postgres", options("crash")).await;
    assert_eq!(b.progress(), None);
    for n in 1..=50 {
        apply(&mut b, n, txn(n)).await;
    }
    let p = b.flush().await.unwrap().unwrap();
    assert_eq!(p.commit_lsn, info(50).commit_lsn);
    assert_eq!(scalar(&target, "SELECT count(*) FROM nokey").await, "50");
    assert_eq!(
        scalar(
            &target,
            "SELECT count(DISTINCT x) FROM (SELECT xmin::text AS x FROM nokey UNION ALL \
             SELECT xmin::text FROM kv UNION ALL \
             SELECT xmin::text FROM pgrelay.progress WHERE pipeline = 'crash') s"
        )
        .await,
        "1",
        "50 source transactions and the progress row in one target transaction"
    );

    // Replay of applied transactions is skipped, even when fed.
    for n in [10, 50] {
        let i = info(n);
        assert!(!b.begin(&i).await.unwrap());
        b.changes(&txn(n)).await.unwrap();
        b.commit(&i).await.unwrap();
    }
    apply(&mut b, 51, txn(51)).await;
    // Skipped and pending transactions count too.
    assert!(!b.begin(&info(51)).await.unwrap());
    b.commit(&info(51)).await.unwrap();
    b.flush().await.unwrap();
    drop(b);

    // After a "restart": progress is loaded, old transactions are skipped.
    let mut c = applier(
        &cluster,
        "postgres",
        pgrelay_apply::ApplyOptions {
            max_batch_rows: 5,
            max_batch_delay: std::time::Duration::from_secs(3600),
            ..options("crash")
        },
    )
    .await;
    assert_eq!(
        c.progress().map(|p| p.commit_lsn),
        Some(info(51).commit_lsn)
    );
    let i = info(30);
    assert!(!c.begin(&i).await.unwrap());
    c.changes(&txn(30)).await.unwrap();
    c.commit(&i).await.unwrap();
    assert_eq!(c.flush().await.unwrap(), None, "nothing pending");
    assert!(!c.should_flush());
    apply(&mut c, 52, txn(52)).await;
    assert!(!c.should_flush(), "3 changes < max_batch_rows 5");
    let i = info(53);
    c.begin(&i).await.unwrap();
    c.changes(&txn(53)).await.unwrap();
    assert!(!c.should_flush(), "never inside a source transaction");
    assert_eq!(
        c.flush().await.unwrap(),
        None,
        "mid-transaction flush commits nothing"
    );
    c.commit(&i).await.unwrap();
    assert!(c.should_flush(), "6 changes >= 5");
    c.flush().await.unwrap();
    assert_eq!(scalar(&target, "SELECT count(*) FROM nokey").await, "53");
    assert_eq!(
        scalar(
            &target,
            "SELECT count(*) FROM (SELECT a FROM nokey GROUP BY a HAVING count(*) > 1) d"
        )
        .await,
        "0",
        "nothing doubled"
    );
    assert_eq!(
        scalar(&target, "SELECT count(*) FROM kv WHERE v = 'v2'").await,
        "53"
    );
});

per_major!(transient_and_fatal_errors, |major| async move {
    let mut cluster = Cluster::start(major);
    cluster.execute_blocking(
        "postgres",
        "CREATE TABLE public.uq (id int PRIMARY KEY, v text);
         INSERT INTO public.uq VALUES (1, 'pre');",
    );
    let target = cluster.connect("postgres").await;
    let uq = relation(&target, "public", "uq").await;

    // A missing table: fatal, naming the table and the source LSN.
    let ghost = Arc::new(RelationInfo {
        oid: Oid(99_999),
        schema: ByteStr::from_static("public"),
        name: ByteStr::from_static("ghost"),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![Column {
            name: ByteStr::from_static("id"),
            type_oid: Oid(23),
            type_modifier: -1,
            is_key: true,
        }],
    });
    let mut a = applier(&cluster, "postgres", options("errors")).await;
    let i = info(7);
    a.begin(&i).await.unwrap();
    let e = a
        .changes(&[insert(&ghost, vec![t("1")])])
        .await
        .expect_err("missing table");
    assert!(!e.is_transient());
    assert_eq!(e.sqlstate(), Some("42P01"));
    let s = e.to_string();
    assert!(
        s.contains("public.ghost") && s.contains("0/700") && s.contains("fix:"),
        "{s}"
    );
    assert!(
        matches!(a.flush().await, Err(ApplyError::Usage(_))),
        "poisoned"
    );

    // A duplicate key found only when the pipelined results are read:
    // fatal, attributed to the right table and transaction, and the whole
    // target transaction is rolled back.
    let mut a = applier(&cluster, "postgres", options("errors")).await;
    apply(&mut a, 1, vec![insert(&uq, vec![t("2"), t("ok")])]).await;
    apply(&mut a, 2, vec![insert(&uq, vec![t("1"), t("dup")])]).await;
    let e = a.flush().await.expect_err("unique violation");
    assert!(!e.is_transient());
    assert_eq!(e.sqlstate(), Some("23505"));
    let s = e.to_string();
    assert!(s.contains("public.uq") && s.contains("0/200"), "{s}");
    drop(a);
    assert_eq!(scalar(&target, "SELECT count(*) FROM uq").await, "1");
    assert!(meta::load_progress(&target, "errors")
        .await
        .unwrap()
        .is_none());

    // The target restarts mid-batch: transient.
    let mut a = applier(&cluster, "postgres", options("errors")).await;
    apply(&mut a, 1, vec![insert(&uq, vec![t("2"), t("ok")])]).await;
    let i = info(2);
    a.begin(&i).await.unwrap();
    a.changes(&[insert(&uq, vec![t("3"), t("ok")])])
        .await
        .unwrap();
    a.flush().await.unwrap(); // sends and waits, commits nothing
    drop(target);
    cluster.restart();
    a.commit(&i).await.unwrap();
    let e = a.flush().await.expect_err("server restarted");
    assert!(e.is_transient(), "{e}");
    // Replay on a new connection from the durable progress (none).
    let mut b = applier(&cluster, "postgres", options("errors")).await;
    assert_eq!(b.progress(), None);
    apply(&mut b, 1, vec![insert(&uq, vec![t("2"), t("ok")])]).await;
    apply(&mut b, 2, vec![insert(&uq, vec![t("3"), t("ok")])]).await;
    b.flush().await.unwrap();
    let target = cluster.connect("postgres").await;
    assert_eq!(
        rows(&target, "SELECT id FROM uq ORDER BY id").await,
        vec![vec!["1"], vec!["2"], vec!["3"]]
    );
});

per_major!(table_sync_filter_and_drop_pipeline, |major| async move {
    let cluster = Cluster::start(major);
    cluster.execute_blocking(
        "postgres",
        "CREATE TABLE public.synced (id int PRIMARY KEY);
         CREATE TABLE public.copying_t (id int PRIMARY KEY);
         CREATE TABLE public.plain (id int PRIMARY KEY);",
    );
    let target = cluster.connect("postgres").await;
    meta::ensure_schema(&target).await.unwrap();
    target
        .batch_execute(
            "INSERT INTO pgrelay.table_sync (pipeline, schema_name, table_name, state, sync_lsn) \
             VALUES ('ts', 'public', 'synced', 'ready', '0/500'), \
                    ('ts', 'public', 'copying_t', 'copying', NULL), \
                    ('other', 'public', 'plain', 'ready', '0/FFFF')",
        )
        .await
        .unwrap();
    let ts = meta::load_table_sync(&target, "ts").await.unwrap();
    assert_eq!(ts.len(), 2);
    assert_eq!(ts[1].table, "synced");
    assert_eq!(ts[1].sync_lsn, Some(pgrelay_types::Lsn(0x500)));
    let synced = relation(&target, "public", "synced").await;
    let plain = relation(&target, "public", "plain").await;
    let copying = relation(&target, "public", "copying_t").await;
    let mut a = applier(&cluster, "postgres", options("ts")).await;
    // Committed before the copy's snapshot: already in the copy.
    apply(
        &mut a,
        3,
        vec![insert(&synced, vec![t("1")]), insert(&plain, vec![t("1")])],
    )
    .await;
    apply(&mut a, 6, vec![insert(&synced, vec![t("2")])]).await;
    a.flush().await.unwrap();
    assert_eq!(
        rows(&target, "SELECT id FROM synced").await,
        vec![vec!["2"]]
    );
    assert_eq!(rows(&target, "SELECT id FROM plain").await, vec![vec!["1"]]);
    let i = info(7);
    a.begin(&i).await.unwrap();
    let e = a
        .changes(&[insert(&copying, vec![t("1")])])
        .await
        .expect_err("copying");
    assert!(matches!(e, ApplyError::Usage(_)) && e.to_string().contains("public.copying_t"));
    drop(a);

    meta::drop_pipeline(&target, "ts").await.unwrap();
    assert!(meta::load_progress(&target, "ts").await.unwrap().is_none());
    assert!(meta::load_table_sync(&target, "ts")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        scalar(&target, "SELECT to_regnamespace('pgrelay') IS NOT NULL").await,
        "t",
        "another pipeline is left"
    );
    meta::drop_pipeline(&target, "other").await.unwrap();
    assert_eq!(
        scalar(&target, "SELECT to_regnamespace('pgrelay') IS NULL").await,
        "t"
    );
    meta::drop_pipeline(&target, "other").await.unwrap();
});

per_major!(
    repeated_updates_merge_only_when_unobservable,
    |major| async move {
        let cluster = Cluster::start(major);
        cluster.execute_blocking(
            "postgres",
            "CREATE TABLE public.branch (id int PRIMARY KEY, bal int, note text);
         INSERT INTO public.branch VALUES (1, 0, repeat('n', 10000));
         CREATE TABLE public.acct (id int PRIMARY KEY, bal int);
         CREATE TABLE public.hist (id int, delta int);
         CREATE TABLE public.u (id int PRIMARY KEY, code int UNIQUE);
         INSERT INTO public.u VALUES (1, 10), (2, 20);",
        );
        let target = cluster.connect("postgres").await;
        let branch = relation(&target, "public", "branch").await;
        let acct = relation(&target, "public", "acct").await;
        let hist = relation(&target, "public", "hist").await;
        let u = relation(&target, "public", "u").await;
        let mut a = applier(&cluster, "postgres", options("merge")).await;
        let mut n = 0;
        for i in 1..=50 {
            n += 1;
            let mut changes = vec![
                update(
                    &branch,
                    None,
                    vec![t("1"), t(&i.to_string()), Value::UnchangedToast],
                ),
                insert(&hist, vec![t(&i.to_string()), t("1")]),
            ];
            if i == 1 {
                changes.push(insert(&acct, vec![t("7"), t("0")]));
            }
            changes.push(update(&acct, None, vec![t("7"), t(&i.to_string())]));
            if i == 25 {
                // Delete and re-insert of a key between merged updates.
                changes.push(delete(&acct, OldTuple::Key(row(vec![t("7"), Value::Null]))));
                changes.push(insert(&acct, vec![t("7"), t("1000")]));
                // A key change.
                changes.push(update(
                    &acct,
                    Some(OldTuple::Key(row(vec![t("7"), Value::Null]))),
                    vec![t("8"), t("2000")],
                ));
                changes.push(insert(&acct, vec![t("7"), t("25")]));
            }
            apply(&mut a, n, changes).await;
        }
        // A table with another unique constraint keeps source order: merging
        // id 1's updates would collide with id 2 on code 20.
        n += 1;
        apply(
            &mut a,
            n,
            vec![
                update(&u, None, vec![t("1"), t("15")]),
                update(&u, None, vec![t("2"), t("30")]),
                update(&u, None, vec![t("1"), t("20")]),
            ],
        )
        .await;
        // A deferred update must not move past changes made through a new
        // definition of the same table (here: same columns, new source OID).
        let acct2 = Arc::new(RelationInfo {
            oid: Oid(acct.oid.0 + 1_000_000),
            ..(*acct).clone()
        });
        n += 1;
        apply(&mut a, n, vec![update(&acct, None, vec![t("8"), t("-1")])]).await;
        n += 1;
        apply(
            &mut a,
            n,
            vec![
                delete(&acct2, OldTuple::Key(row(vec![t("8"), Value::Null]))),
                insert(&acct2, vec![t("8"), t("3000")]),
            ],
        )
        .await;
        a.flush().await.unwrap();
        // Each row version of the one-row table takes the next line pointer
        // of its page: 50 updates sent one by one would end at 51; merged,
        // only a few are sent (once more whenever a table is first mapped).
        let r = rows(
            &target,
            "SELECT bal, length(note), split_part(trim(both '()' FROM ctid::text), ',', 2)::int < 6 \
             FROM branch",
        )
        .await;
        assert_eq!(
            r,
            vec![vec!["50", "10000", "t"]],
            "50 updates of one row in one batch became one"
        );
        assert_eq!(
            rows(&target, "SELECT id, bal FROM acct ORDER BY id").await,
            vec![vec!["7", "50"], vec!["8", "3000"]]
        );
        assert_eq!(scalar(&target, "SELECT count(*) FROM hist").await, "50");
        assert_eq!(
            rows(&target, "SELECT id, code FROM u ORDER BY id").await,
            vec![vec!["1", "20"], vec!["2", "30"]]
        );
    }
);

per_major!(
    many_merged_updates_go_out_as_one_set_update,
    |major| async move {
        let cluster = Cluster::start(major);
        cluster.execute_blocking(
            "postgres",
            "CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy');
             CREATE TABLE public.acc (id int PRIMARY KEY, bal numeric(12,2), note text,
                 tags text[], doc jsonb, m public.mood, at timestamptz, big text);
             INSERT INTO public.acc
                 SELECT g, 0, 'n', '{}', '{}', 'ok', '2020-01-01', repeat('b', 5000)
                 FROM generate_series(1, 40) g;",
        );
        let target = cluster.connect("postgres").await;
        let acc = relation(&target, "public", "acc").await;
        let mut a = applier(&cluster, "postgres", options("setupd")).await;
        // Values that an array literal must keep as one element each.
        let notes = [
            "plain",
            "with \"quotes\"",
            "back\\slash",
            "{braces},commas",
            "NULL",
            "  spaced  ",
            "",
            "tab\tnew\nline",
        ];
        let mut changes = Vec::new();
        // Keys 1..=30 exist; 41 and 42 do not (missing rows are skipped).
        // Every key is updated twice: the merged row is the second one.
        for round in 0..2 {
            for id in (1..=30).chain(41..=42) {
                let note = if id % 9 == 0 {
                    Value::Null
                } else {
                    t(notes[id % notes.len()])
                };
                // Odd keys leave the TOASTed column alone (a second shape).
                let big = if id % 2 == 1 {
                    Value::UnchangedToast
                } else {
                    t(&format!("big{id}"))
                };
                changes.push(update(
                    &acc,
                    None,
                    vec![
                        t(&id.to_string()),
                        t(&format!("{}.5{round}", id * 10)),
                        note,
                        t(&format!("{{a,\"b c\",{id}}}")),
                        t(&format!("{{\"k\": \"v\\\\\\\"{id}\"}}")),
                        t(if id % 3 == 0 { "happy" } else { "sad" }),
                        t("2024-02-29 12:00:00+00"),
                        big,
                    ],
                ));
            }
        }
        apply(&mut a, 1, changes).await;
        a.flush().await.unwrap();
        let got = rows(
            &target,
            "SELECT id, bal, coalesce(note, '<null>'), tags[2], tags[3], doc->>'k', m, \
             at = '2024-02-29 12:00:00+00', CASE WHEN length(big) = 5000 THEN left(big, 4) ELSE big END FROM acc WHERE id <= 31 ORDER BY id",
        )
        .await;
        assert_eq!(got.len(), 31);
        for (n, r) in got.iter().enumerate() {
            let id = n + 1;
            if id == 31 {
                assert_eq!(r[1], "0.00", "untouched row 31");
                continue;
            }
            let note = if id % 9 == 0 {
                "<null>".to_string()
            } else {
                notes[id % notes.len()].to_string()
            };
            let want = vec![
                id.to_string(),
                format!("{}.51", id * 10),
                note,
                "b c".to_string(),
                id.to_string(),
                format!("v\\\"{id}"),
                if id % 3 == 0 { "happy" } else { "sad" }.to_string(),
                "t".to_string(),
                if id % 2 == 1 {
                    "bbbb".to_string()
                } else {
                    format!("big{id}")
                },
            ];
            assert_eq!(*r, want, "row {id}");
        }
        // One statement per shape (TOAST column set or not): the new row
        // versions carry the command id of the statement that wrote them,
        // so row-by-row updates would show 30 distinct ones.
        assert_eq!(
            scalar(
                &target,
                "SELECT count(DISTINCT cmin::text) FROM acc WHERE id <= 30"
            )
            .await,
            "2"
        );
    }
);
