//! Replication commands and the logical stream against real servers, every
//! major 14–18.
//!
//! `commands`: IDENTIFY_SYSTEM and SHOW against SQL's view of the same
//! facts; a temporary slot whose exported snapshot a second, ordinary
//! connection adopts with SET TRANSACTION SNAPSHOT (it must not see a row
//! committed after the slot); USE_SNAPSHOT inside a transaction on the
//! replication connection; errors that leave the connection usable; TWO_PHASE
//! (15+) and FAILOVER (17+) slots, refused client-side on older majors;
//! DROP_REPLICATION_SLOT WAIT.
//!
//! `streaming`: START_REPLICATION with every pgoutput option the major has,
//! a transaction with inserts and a logical message arriving as
//! 'B', 'R', 'I', 'I', 'M', 'C'; set_flushed at the commit's end LSN and a
//! clean shutdown leave the slot inactive with exactly that
//! confirmed_flush_lsn; the returned client restarts streaming from the slot
//! and gets only the next transaction.

mod common;

use std::path::Path;

use pgrelay_source::{
    Config, CreateSlotOptions, FeedbackSettings, Lsn, OriginFilter, PgOutputOptions,
    ReplicationClient, SnapshotAction, SourceError, Streaming,
};
use pgrelay_testkit::{simple_rows, unique_name, Cluster, SUPERUSER};

fn config(pg: &Cluster, home: &Path) -> Config {
    let conninfo = format!(
        "host=127.0.0.1 port={} user={SUPERUSER} dbname=postgres sslmode=disable application_name=pgrelay-source-test",
        pg.port()
    );
    common::isolated_config(&conninfo, home)
}

async fn sql_one(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let rows = simple_rows(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", pgrelay_testkit::describe(&e)));
    rows.into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .flatten()
}

pgrelay_testkit::per_major!(commands, |major| async move {
    let pg = Cluster::start(major);
    let home = tempfile::tempdir().expect("home");
    let sql = pg.connect("postgres").await;
    sql.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'before')",
    )
    .await
    .expect("setup");
    let mut c = ReplicationClient::connect(&config(&pg, home.path()))
        .await
        .expect("connect");

    let id = c.identify_system().await.expect("IDENTIFY_SYSTEM");
    let sysid = sql_one(
        &sql,
        "SELECT system_identifier::text FROM pg_control_system()",
    )
    .await;
    assert_eq!(Some(id.system_id.to_string()), sysid);
    assert_eq!(id.timeline, 1);
    assert_eq!(id.dbname.as_deref(), Some("postgres"));
    let now: Lsn = sql_one(&sql, "SELECT pg_current_wal_lsn()::text")
        .await
        .expect("lsn")
        .parse()
        .expect("parse lsn");
    assert!(
        id.xlog_pos.is_valid() && id.xlog_pos <= now,
        "{:?} vs {now}",
        id.xlog_pos
    );
    assert_eq!(c.show("wal_level").await.expect("SHOW"), "logical");
    assert!(matches!(
        c.show("wal_level; DROP TABLE items").await,
        Err(SourceError::InvalidArgument { .. })
    ));

    // A temporary slot exporting its snapshot.
    let temp = unique_name("tmp");
    let slot = c
        .create_replication_slot(
            &temp,
            &CreateSlotOptions {
                temporary: true,
                snapshot: SnapshotAction::Export,
                ..Default::default()
            },
        )
        .await
        .expect("create temporary slot");
    assert_eq!(slot.slot_name, temp);
    assert_eq!(slot.output_plugin.as_deref(), Some("pgoutput"));
    assert!(slot.consistent_point.is_valid());
    let snapshot = slot.snapshot_name.clone().expect("exported snapshot");
    sql.batch_execute("INSERT INTO items VALUES (2, 'after the slot')")
        .await
        .expect("insert");
    let reader = pg.connect("postgres").await;
    let seen = simple_rows(
        &reader,
        &format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}'; \
             SELECT string_agg(id::text, ',' ORDER BY id) FROM items; COMMIT"
        ),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "SET TRANSACTION SNAPSHOT: {}",
            pgrelay_testkit::describe(&e)
        )
    });
    assert_eq!(
        seen,
        vec![vec![Some("1".to_owned())]],
        "the snapshot saw a later row"
    );
    assert_eq!(
        sql_one(
            &sql,
            &format!("SELECT temporary::text FROM pg_replication_slots WHERE slot_name = '{temp}'")
        )
        .await
        .as_deref(),
        Some("true")
    );
    c.drop_replication_slot(&temp, false)
        .await
        .expect("drop temporary slot");

    // USE_SNAPSHOT: the transaction on this connection reads at the slot's
    // consistent point.
    let used = unique_name("use");
    c.simple_query("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ")
        .await
        .expect("BEGIN");
    c.create_replication_slot(
        &used,
        &CreateSlotOptions {
            snapshot: SnapshotAction::Use,
            ..Default::default()
        },
    )
    .await
    .expect("create slot USE_SNAPSHOT");
    sql.batch_execute("INSERT INTO items VALUES (3, 'invisible')")
        .await
        .expect("insert");
    assert_eq!(
        common::repl_value(&mut c, "SELECT count(*)::text FROM items")
            .await
            .as_deref(),
        Some("2")
    );
    c.simple_query("COMMIT").await.expect("COMMIT");
    assert_eq!(
        common::repl_value(&mut c, "SELECT count(*)::text FROM items")
            .await
            .as_deref(),
        Some("3")
    );

    // Errors are reported and leave the connection usable.
    let err = c
        .create_replication_slot(&used, &CreateSlotOptions::default())
        .await
        .expect_err("duplicate slot");
    assert_eq!(
        err.sqlstate().map(|s| s.as_str().to_owned()).as_deref(),
        Some("42710"),
        "{err}"
    );
    assert!(!err.is_transient());
    let err = c
        .simple_query("SELECT 1/0")
        .await
        .expect_err("division by zero");
    assert!(err.to_string().contains("22012"), "{err}");
    assert_eq!(
        common::repl_value(&mut c, "SELECT 'still usable'")
            .await
            .as_deref(),
        Some("still usable")
    );
    let err = c
        .drop_replication_slot("no_such_slot", false)
        .await
        .expect_err("missing slot");
    assert_eq!(
        err.sqlstate().map(|s| s.as_str().to_owned()).as_deref(),
        Some("42704"),
        "{err}"
    );
    c.drop_replication_slot(&used, true)
        .await
        .expect("DROP ... WAIT");

    // TWO_PHASE (15+) and FAILOVER (17+).
    let two = unique_name("twophase");
    let opts = CreateSlotOptions {
        two_phase: true,
        ..Default::default()
    };
    match c.create_replication_slot(&two, &opts).await {
        Ok(_) => {
            assert!(major >= 15);
            assert_eq!(
                sql_one(&sql, &format!("SELECT two_phase::text FROM pg_replication_slots WHERE slot_name = '{two}'")).await.as_deref(),
                Some("true")
            );
            c.drop_replication_slot(&two, false).await.expect("drop");
        }
        Err(SourceError::Unsupported {
            minimum_major: 15,
            server_major,
            ..
        }) => {
            assert_eq!((major, server_major), (14, 14));
        }
        Err(e) => panic!("TWO_PHASE on {major}: {e}"),
    }
    let fo = unique_name("failover");
    let opts = CreateSlotOptions {
        failover: true,
        ..Default::default()
    };
    match c.create_replication_slot(&fo, &opts).await {
        Ok(_) => {
            assert!(major >= 17);
            assert_eq!(
                sql_one(
                    &sql,
                    &format!(
                        "SELECT failover::text FROM pg_replication_slots WHERE slot_name = '{fo}'"
                    )
                )
                .await
                .as_deref(),
                Some("true")
            );
            c.drop_replication_slot(&fo, false).await.expect("drop");
        }
        Err(SourceError::Unsupported {
            minimum_major: 17, ..
        }) => assert!(major < 17),
        Err(e) => panic!("FAILOVER on {major}: {e}"),
    }
    c.close().await.expect("close");
});

/// Every pgoutput option the major supports.
fn all_options(major: u32, publication: &str) -> PgOutputOptions {
    PgOutputOptions {
        proto_version: None,
        publication_names: vec![publication.to_owned()],
        binary: true,
        messages: true,
        streaming: if major >= 16 {
            Streaming::Parallel
        } else {
            Streaming::On
        },
        two_phase: major >= 15,
        origin: (major >= 16).then_some(OriginFilter::Any),
    }
}

pgrelay_testkit::per_major!(streaming, |major| async move {
    let pg = Cluster::start(major);
    let home = tempfile::tempdir().expect("home");
    let sql = pg.connect("postgres").await;
    let publication = unique_name("pub");
    sql.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, v text); CREATE TABLE other (id int); \
         CREATE PUBLICATION {publication} FOR TABLE items"
    ))
    .await
    .expect("setup");
    let mut c = ReplicationClient::connect(&config(&pg, home.path()))
        .await
        .expect("connect");
    let slot = unique_name("slot");
    c.create_replication_slot(&slot, &CreateSlotOptions::default())
        .await
        .expect("create slot");

    let feedback = FeedbackSettings {
        confirm_idle_keepalives: false,
        ..FeedbackSettings::default()
    };
    let options = all_options(major, &publication);
    let mut stream = c
        .start_logical_replication(&slot, Lsn::INVALID, &options, feedback)
        .await
        .expect("START_REPLICATION");
    assert_eq!(stream.slot(), slot);
    sql.batch_execute(
        "BEGIN; INSERT INTO items VALUES (10, 'x'), (11, 'y'); INSERT INTO other VALUES (1); \
         SELECT pg_logical_emit_message(true, 'pgrelay', 'hello'); COMMIT",
    )
    .await
    .expect("write");
    let txn = common::transaction(&mut stream).await;
    let kinds: String = txn.iter().map(|m| char::from(m.data[0])).collect();
    assert_eq!(kinds, "BRIIMC", "message types");
    let commit = txn.last().expect("commit");
    let end = common::commit_end(commit);
    assert_eq!(
        commit.wal_start, end,
        "pgoutput sends Commit at the end LSN"
    );
    for m in &txn {
        assert!(m.send_time.0 > 0, "{:?}", m.send_time);
    }
    assert_eq!(stream.received_lsn(), end);
    stream.set_flushed(end);
    stream.set_flushed(Lsn(1)); // ignored: never backwards
    assert_eq!(stream.flushed_lsn(), end);

    let mut c = stream.shutdown().await.expect("clean shutdown");
    let state = simple_rows(
        &sql,
        &format!("SELECT active::text, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '{slot}'"),
    )
    .await
    .expect("slot state");
    assert_eq!(
        state,
        vec![vec![Some("false".to_owned()), Some(end.to_string())]],
        "slot after shutdown"
    );

    // The returned client runs commands, but streaming again needs a new
    // connection (the walsender would end it at once).
    sql.batch_execute("INSERT INTO items VALUES (12, 'next')")
        .await
        .expect("write");
    let id = c.identify_system().await.expect("usable after shutdown");
    assert_eq!(id.timeline, 1);
    let err = c
        .start_logical_replication(&slot, Lsn::INVALID, &options, FeedbackSettings::default())
        .await
        .expect_err("second START_REPLICATION on one connection");
    assert!(
        matches!(err, SourceError::InvalidArgument { .. }),
        "{err:?}"
    );
    // A new connection streams from the confirmed position.
    let c = ReplicationClient::connect(&config(&pg, home.path()))
        .await
        .expect("reconnect");
    let mut stream = c
        .start_logical_replication(&slot, Lsn::INVALID, &options, FeedbackSettings::default())
        .await
        .expect("restart");
    let txn = common::transaction(&mut stream).await;
    let kinds: String = txn.iter().map(|m| char::from(m.data[0])).collect();
    assert_eq!(kinds, "BRIC", "only the new transaction is sent again");
    assert!(txn[0].wal_start >= end, "{:?} < {end}", txn[0].wal_start);
    let end2 = common::commit_end(txn.last().expect("commit"));
    stream.set_flushed(end2);
    stream
        .shutdown()
        .await
        .expect("shutdown")
        .close()
        .await
        .expect("close");
    let confirmed: Lsn = sql_one(
        &sql,
        &format!(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ),
    )
    .await
    .expect("confirmed")
    .parse()
    .expect("lsn");
    assert!(confirmed >= end2, "{confirmed} < {end2}");

    // A START_REPLICATION the server refuses is a server error.
    let c = ReplicationClient::connect(&config(&pg, home.path()))
        .await
        .expect("reconnect");
    let err = c
        .start_logical_replication(
            "no_such_slot",
            Lsn::INVALID,
            &options,
            FeedbackSettings::default(),
        )
        .await
        .expect_err("missing slot");
    assert_eq!(
        err.sqlstate().map(|s| s.as_str().to_owned()).as_deref(),
        Some("42704"),
        "{err}"
    );
});
