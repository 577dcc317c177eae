//! Lost connections mid-stream, every major 14–18: a FaultProxy cut
//! (both sides reset, like a dropped NAT entry) and a server crash (kill -9
//! of every server process) each end the stream with a transient
//! `SourceError::Io`, the stream then only reports `Closed` (also
//! transient), and after reconnecting the unconfirmed transaction is sent
//! again (at-least-once).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use pgrelay_source::{
    Config, CreateSlotOptions, FeedbackSettings, LogicalStream, Lsn, PgOutputOptions,
    ReplicationClient, SourceError, XLogData,
};
use pgrelay_testkit::{unique_name, Cluster, FaultProxy, SUPERUSER};

fn config(port: u16, home: &Path) -> Config {
    let conninfo = format!(
        "host=127.0.0.1 port={port} user={SUPERUSER} dbname=postgres sslmode=disable connect_timeout=10"
    );
    common::isolated_config(&conninfo, home)
}

/// Starts streaming, retrying while the previous walsender still holds the
/// slot (SQLSTATE 55006, transient) or the server is still starting.
async fn start(port: u16, home: &Path, slot: &str, publication: &str) -> LogicalStream {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            ReplicationClient::connect(&config(port, home))
                .await?
                .start_logical_replication(
                    slot,
                    Lsn::INVALID,
                    &PgOutputOptions::new([publication]),
                    FeedbackSettings::default(),
                )
                .await
        };
        match attempt.await {
            Ok(stream) => return stream,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("START_REPLICATION: {e}"),
        }
    }
}

fn kinds(txn: &[XLogData]) -> String {
    txn.iter().map(|m| char::from(m.data[0])).collect()
}

async fn expect_lost(stream: &mut LogicalStream, what: &str) {
    let err = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: not noticed within 30 s"))
        .expect_err(what);
    assert!(matches!(err, SourceError::Io { .. }), "{what}: {err:?}");
    assert!(err.is_transient(), "{what}: {err}");
    let again = stream.next().await.expect_err("stream used after failure");
    assert!(matches!(again, SourceError::Closed { .. }), "{again:?}");
    assert!(again.is_transient());
}

pgrelay_testkit::per_major!(lost_connections, |major| async move {
    let mut pg = Cluster::start(major);
    let home = tempfile::tempdir().expect("home");
    let home = home.path();
    let sql = pg.connect("postgres").await;
    let publication = unique_name("pub");
    sql.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY); CREATE PUBLICATION {publication} FOR TABLE items"
    ))
    .await
    .expect("setup");
    let slot = unique_name("slot");
    let mut c = ReplicationClient::connect(&config(pg.port(), home))
        .await
        .expect("connect");
    c.create_replication_slot(&slot, &CreateSlotOptions::default())
        .await
        .expect("slot");
    c.close().await.expect("close");

    // Through the proxy, then cut.
    let proxy = FaultProxy::start(([127, 0, 0, 1], pg.port()).into());
    let mut stream = start(proxy.port(), home, &slot, &publication).await;
    sql.batch_execute("INSERT INTO items VALUES (1)")
        .await
        .expect("insert");
    assert_eq!(kinds(&common::transaction(&mut stream).await), "BRIC");
    proxy.cut_all();
    expect_lost(&mut stream, "proxy cut").await;

    // Directly; the transaction was never confirmed, so it comes again.
    let mut stream = start(pg.port(), home, &slot, &publication).await;
    assert_eq!(
        kinds(&common::transaction(&mut stream).await),
        "BRIC",
        "resent after the cut"
    );
    sql.batch_execute("INSERT INTO items VALUES (2)")
        .await
        .expect("insert");
    assert_eq!(kinds(&common::transaction(&mut stream).await), "BIC");
    drop(sql);
    pg.crash();
    expect_lost(&mut stream, "server crash").await;

    pg.start_again();
    let mut stream = start(pg.port(), home, &slot, &publication).await;
    let first = common::transaction(&mut stream).await;
    assert_eq!(kinds(&first), "BRIC", "resent after the crash");
    stream.shutdown().await.expect("shutdown");
});
