//! Helpers shared by pgrelay-copy's integration tests: an exported snapshot
//! from a real logical slot, copy targets, the table list as the lead
//! builds it (non-generated columns in source order), and a copy run that
//! collects its events.
#![allow(dead_code)]

use pgrelay_copy::{
    copy_tables, CopyError, CopyEvent, CopyOptions, CopyReport, CopyTarget, SnapshotSpec, TableCopy,
};
use pgrelay_source::{Config, CreateSlotOptions, ReplicationClient, SnapshotAction};
use pgrelay_testkit::{unique_name, Cluster, SUPERUSER};

/// A config from `conninfo` alone: no PG* variable or ~/.pgpass of the
/// machine leaks in.
pub fn config(conninfo: &str) -> Config {
    Config::parse_with_env(conninfo, |_| None).unwrap_or_else(|e| panic!("{conninfo}: {e}"))
}

pub fn conninfo(port: u16, db: &str) -> String {
    format!("host=127.0.0.1 port={port} user={SUPERUSER} dbname={db} sslmode=disable")
}

pub fn target(name: &str, port: u16, db: &str) -> CopyTarget {
    CopyTarget {
        name: name.to_string(),
        config: config(&conninfo(port, db)),
    }
}

/// Creates a temporary logical slot exporting its snapshot, the way the
/// streamer does. The returned connection must stay open (and idle) while
/// the snapshot is used.
pub async fn export_snapshot(source: &Cluster, db: &str) -> (ReplicationClient, SnapshotSpec) {
    let mut repl = ReplicationClient::connect(&config(&conninfo(source.port(), db)))
        .await
        .expect("replication connection");
    let slot = repl
        .create_replication_slot(
            &unique_name("copy"),
            &CreateSlotOptions {
                temporary: true,
                snapshot: SnapshotAction::Export,
                ..Default::default()
            },
        )
        .await
        .expect("create a slot exporting its snapshot");
    let spec = SnapshotSpec {
        snapshot: slot.snapshot_name.expect("exported snapshot"),
        lsn: slot.consistent_point,
    };
    (repl, spec)
}

/// Every user table of `db` that is not a partition, with its
/// non-generated columns in order.
pub async fn user_tables(client: &tokio_postgres::Client) -> Vec<TableCopy> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text,
                    array_agg(a.attname::text ORDER BY a.attnum)
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
                                  AND NOT a.attisdropped AND a.attgenerated = ''
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgrelay')
                AND n.nspname NOT LIKE 'pg_toast%'
              GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await
        .expect("list tables");
    rows.iter()
        .map(|r| TableCopy {
            schema: r.get(0),
            name: r.get(1),
            columns: r.get(2),
        })
        .collect()
}

pub fn options(pipeline: &str, workers: usize, chunk_pages: u64) -> CopyOptions {
    CopyOptions {
        workers,
        chunk_pages,
        ..CopyOptions::new(pipeline)
    }
}

/// Runs a copy with no shutdown, collecting every event.
pub async fn run_copy(
    source: &Cluster,
    db: &str,
    snapshot: &SnapshotSpec,
    targets: &[CopyTarget],
    tables: &[TableCopy],
    options: &CopyOptions,
) -> (Result<CopyReport, CopyError>, Vec<CopyEvent>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(e) = rx.recv().await {
            all.push(e);
        }
        all
    });
    let result = copy_tables(
        &config(&conninfo(source.port(), db)),
        snapshot,
        targets,
        tables,
        options,
        tx,
        std::future::pending(),
    )
    .await;
    (result, collector.await.expect("event collector"))
}

/// `pgrelay.table_sync` rows of `pipeline` as (schema.table, state,
/// sync_lsn, rows_copied), ordered.
pub async fn sync_rows(
    client: &tokio_postgres::Client,
    pipeline: &str,
) -> Vec<(String, String, Option<String>, i64)> {
    client
        .query(
            "SELECT schema_name || '.' || table_name, state, sync_lsn::text, rows_copied
               FROM pgrelay.table_sync WHERE pipeline = $1 ORDER BY 1",
            &[&pipeline],
        )
        .await
        .expect("read table_sync")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Row count of a table.
pub async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap_or_else(|e| panic!("count {table}: {e}"))
        .get(0)
}

/// The process-wide Prometheus recorder of this test binary, rendered.
pub fn metrics_text() -> String {
    use std::sync::OnceLock;
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("install the Prometheus recorder")
        })
        .render()
}
