//! An idle source on PostgreSQL 14 and 17 with `wal_sender_timeout = 2s`:
//! for 30 s the database only writes a table outside the publication. The
//! stream must keep the walsender alive (status updates from inside
//! `next()`, here called with a short timeout so it is also cancelled
//! constantly), and the slot's `confirmed_flush_lsn` must keep up with the
//! WAL, so a quiet or filtered source never pins WAL. On 14 pgoutput sends
//! an empty Begin/Commit per transaction, which the consumer confirms; on
//! 17 nothing is sent and keepalive positions are confirmed while idle.

mod common;

use std::time::{Duration, Instant};

use pgrelay_source::{
    CreateSlotOptions, FeedbackSettings, Lsn, PgOutputOptions, ReplicationClient,
};
use pgrelay_testkit::{simple_rows, unique_name, Cluster, SUPERUSER};

async fn lsn(client: &tokio_postgres::Client, sql: &str) -> Lsn {
    let rows = simple_rows(client, sql).await.expect(sql);
    rows[0][0]
        .as_deref()
        .unwrap_or_else(|| panic!("{sql}: NULL"))
        .parse()
        .expect("lsn")
}

async fn idle_source(major: u32) {
    let pg = Cluster::builder(major)
        .setting("wal_sender_timeout", "'2s'")
        .start();
    let sql = pg.connect("postgres").await;
    let publication = unique_name("pub");
    sql.batch_execute(&format!(
        "CREATE TABLE published (id int PRIMARY KEY); CREATE TABLE quiet (id serial, at timestamptz DEFAULT now()); \
         CREATE PUBLICATION {publication} FOR TABLE published"
    ))
    .await
    .expect("setup");
    let home = tempfile::tempdir().expect("home");
    let config = common::isolated_config(
        &format!(
            "host=127.0.0.1 port={} user={SUPERUSER} dbname=postgres sslmode=disable",
            pg.port()
        ),
        home.path(),
    );
    let mut c = ReplicationClient::connect(&config).await.expect("connect");
    let slot = unique_name("idle");
    let created = c
        .create_replication_slot(&slot, &CreateSlotOptions::default())
        .await
        .expect("slot");
    let pid = c.backend_pid();
    let mut stream = c
        .start_logical_replication(
            &slot,
            Lsn::INVALID,
            &PgOutputOptions::new([publication.as_str()]),
            FeedbackSettings::default(),
        )
        .await
        .expect("START_REPLICATION");

    let writer = {
        let client = pg.connect("postgres").await;
        tokio::spawn(async move {
            loop {
                client
                    .batch_execute("INSERT INTO quiet DEFAULT VALUES")
                    .await
                    .expect("insert into quiet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let started = Instant::now();
    let mut checkpoint: Option<Lsn> = None;
    let mut empty_transactions = 0;
    while started.elapsed() < Duration::from_secs(30) {
        match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
            Err(_) => {}
            Ok(Ok(Some(msg))) => match msg.data[0] {
                b'B' => {}
                b'C' => {
                    empty_transactions += 1;
                    stream.set_flushed(common::commit_end(&msg));
                }
                other => panic!("unexpected {:?} from a filtered source", char::from(other)),
            },
            Ok(Ok(None)) => panic!("the server ended the stream"),
            Ok(Err(e)) => panic!("stream failed after {:?}: {e}", started.elapsed()),
        }
        if checkpoint.is_none() && started.elapsed() > Duration::from_secs(22) {
            checkpoint = Some(lsn(&sql, "SELECT pg_current_wal_lsn()::text").await);
        }
    }
    writer.abort();

    let state = simple_rows(
        &sql,
        &format!("SELECT state FROM pg_stat_replication WHERE pid = {pid}"),
    )
    .await
    .expect("pg_stat_replication");
    assert_eq!(
        state,
        vec![vec![Some("streaming".to_owned())]],
        "same walsender still streaming"
    );
    let confirmed = lsn(
        &sql,
        &format!(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ),
    )
    .await;
    let checkpoint = checkpoint.expect("checkpoint taken");
    assert!(confirmed > created.consistent_point, "slot never advanced");
    assert!(
        confirmed >= checkpoint,
        "confirmed_flush_lsn {confirmed} lags the WAL position {checkpoint} of 8 s earlier"
    );
    if major < 15 {
        assert!(
            empty_transactions > 50,
            "{empty_transactions} empty transactions on 14"
        );
    } else {
        assert_eq!(
            empty_transactions, 0,
            "pgoutput 15+ skips empty transactions"
        );
    }
    stream.shutdown().await.expect("shutdown");
}

// Every major: the tests mostly sleep, so they share the two cores well.
pgrelay_testkit::per_major!(idle_source_keeps_slot_moving, |major| async move {
    idle_source(major).await;
});
