//! Before streaming: preflight checks, the publication, the slot, and the
//! initial copy of every table into every target.
//!
//! Invariants:
//! * Nothing is created before every problem was found: missing tables or
//!   columns on targets, type mismatches, tables without a usable replica
//!   identity — all reported together, each with its fix.
//! * The publication exists before the slot (pgoutput needs it), and lists
//!   exactly the selected tables (partitioned tables via their root).
//! * First start: the slot is created with an exported snapshot, every
//!   table is copied from that snapshot, and streaming starts at the
//!   slot's consistent point — no gap, no duplicate.
//! * Restart with tables not yet copied to some target (a crash during
//!   the copy, a table or target added later): they are copied from a
//!   fresh snapshot of a temporary slot, and their `sync_lsn` makes the
//!   applier skip changes already contained in that copy. Finished tables
//!   are never copied again.
//!
//! PostgreSQL docs: "CREATE PUBLICATION", "Replication Slots"
//! (logicaldecoding-explanation), "SET TRANSACTION" (snapshot import),
//! "Logical Replication: Initial Snapshot" (logical-replication-architecture).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use pgrelay_apply::check::{self, TableSpec};
use pgrelay_copy::{CopyEvent, CopyOptions, CopyTarget, SnapshotSpec, TableCopy};
use pgrelay_source::{CreateSlotOptions, ReplicationClient, SnapshotAction};
use pgrelay_types::Lsn;
use tokio_postgres::Client;

use crate::config::StreamConfig;
use crate::select::{quote_ident, TableName};
use crate::StreamError;

/// What preflight found on the source.
pub struct Prepared {
    /// The selected tables with their source definitions.
    pub tables: Vec<TableSpec>,
    /// Whether the slot already existed.
    pub slot_existed: bool,
}

fn sql_err(what: &str) -> impl Fn(tokio_postgres::Error) -> StreamError + '_ {
    move |e| {
        let transient = pgrelay_source::is_transient_sql_error(&e);
        let msg = match e.as_db_error() {
            Some(db) => format!("{what}: {} (SQLSTATE {})", db.message(), db.code().code()),
            None => format!("{what}: {e}"),
        };
        if transient {
            StreamError::Transient(msg)
        } else {
            StreamError::Fatal(msg)
        }
    }
}

/// Checks source and targets; returns every problem at once.
pub async fn preflight(
    config: &StreamConfig,
    source: &Client,
    targets: &[(String, Client)],
) -> Result<Vec<TableSpec>, StreamError> {
    let mut problems = Vec::new();
    let wal_level: String = source
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(sql_err("reading wal_level on the source"))?
        .get(0);
    if wal_level != "logical" {
        problems.push(format!(
            "source: wal_level is {wal_level}; fix: ALTER SYSTEM SET wal_level = logical; then restart the source server"
        ));
    }
    let names = config
        .tables
        .resolve(source)
        .await
        .map_err(sql_err("listing tables on the source"))?;
    for miss in config.tables.literal_misses(&names) {
        problems.push(format!(
            "source: table {miss} does not exist; fix: correct the name in tables.include (or --table)"
        ));
    }
    if names.is_empty() {
        problems.push(
            "source: no table matches the selection; fix: check tables.include/exclude".into(),
        );
    }
    let pairs: Vec<(String, String)> = names
        .iter()
        .map(|t| (t.schema.clone(), t.name.clone()))
        .collect();
    let specs = check::describe_tables(source, &pairs)
        .await
        .map_err(|e| StreamError::Fatal(format!("describing source tables: {e}")))?;
    let specs: Vec<TableSpec> = specs.into_iter().flatten().collect();
    for (name, client) in targets {
        let found = check::describe_tables(client, &pairs)
            .await
            .map_err(|e| StreamError::Fatal(format!("describing tables on target {name}: {e}")))?;
        for p in check::compare(&specs, &found) {
            problems.push(format!("target {name}: {p}"));
        }
    }
    // compare() reports source-side replica identity problems once per
    // target; keep each line once.
    let mut seen = HashSet::new();
    problems.retain(|p| {
        let key = p
            .split_once(": ")
            .map(|(_, rest)| rest.to_owned())
            .unwrap_or_else(|| p.clone());
        !p.contains("REPLICA IDENTITY") || seen.insert(key)
    });
    if !problems.is_empty() {
        return Err(StreamError::Preflight(problems));
    }
    Ok(specs)
}

/// Creates the publication or brings its table list to `tables`.
pub async fn ensure_publication(
    source: &Client,
    publication: &str,
    tables: &[TableSpec],
) -> Result<(), StreamError> {
    let list = tables
        .iter()
        .map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let exists = source
        .query_opt(
            "SELECT pubviaroot FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql_err("reading pg_publication"))?;
    match exists {
        None => {
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {list} WITH (publish_via_partition_root = true)",
                quote_ident(publication)
            );
            source
                .batch_execute(&sql)
                .await
                .map_err(sql_err("creating the publication"))?;
            tracing::info!(publication, tables = tables.len(), "created publication");
        }
        Some(_) => {
            let rows = source
                .query(
                    "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                    &[&publication],
                )
                .await
                .map_err(sql_err("reading pg_publication_tables"))?;
            let have: HashSet<(String, String)> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let want: HashSet<(String, String)> = tables
                .iter()
                .map(|t| (t.schema.clone(), t.name.clone()))
                .collect();
            if have != want {
                let sql = format!(
                    "ALTER PUBLICATION {} SET TABLE {list}",
                    quote_ident(publication)
                );
                source
                    .batch_execute(&sql)
                    .await
                    .map_err(sql_err("updating the publication's tables"))?;
                tracing::info!(
                    publication,
                    tables = tables.len(),
                    "updated publication tables"
                );
            }
        }
    }
    Ok(())
}

/// The slot's confirmed position, or `None` when it does not exist.
pub async fn slot_position(source: &Client, slot: &str) -> Result<Option<Lsn>, StreamError> {
    let row = source
        .query_opt(
            "SELECT plugin::text, database::text, confirmed_flush_lsn::text, current_database()::text
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql_err("reading pg_replication_slots"))?;
    let Some(row) = row else { return Ok(None) };
    let plugin: Option<String> = row.get(0);
    let db: Option<String> = row.get(1);
    let here: String = row.get(3);
    if plugin.as_deref() != Some("pgoutput") || db.as_deref() != Some(here.as_str()) {
        return Err(StreamError::Fatal(format!(
            "slot {slot} exists but is not a pgoutput slot of database {here} (plugin {plugin:?}, database {db:?}); choose another slot name (source.slot)"
        )));
    }
    let lsn: Option<String> = row.get(2);
    Ok(Some(
        lsn.and_then(|l| l.parse().ok()).unwrap_or(Lsn::INVALID),
    ))
}

/// Tables (by target) whose copy is not finished.
pub async fn unfinished(
    pipeline: &str,
    targets: &[(String, Client)],
    tables: &[TableSpec],
) -> Result<BTreeMap<String, Vec<String>>, StreamError> {
    let mut out = BTreeMap::new();
    for (name, client) in targets {
        let sync = pgrelay_apply::meta::load_table_sync(client, pipeline)
            .await
            .map_err(|e| {
                StreamError::Fatal(format!("reading pgrelay.table_sync on {name}: {e}"))
            })?;
        let ready: HashSet<(String, String)> = sync
            .iter()
            .filter(|s| s.state == pgrelay_apply::meta::SyncState::Ready)
            .map(|s| (s.schema.clone(), s.table.clone()))
            .collect();
        let missing: Vec<String> = tables
            .iter()
            .filter(|t| !ready.contains(&(t.schema.clone(), t.name.clone())))
            .map(|t| {
                TableName {
                    schema: t.schema.clone(),
                    name: t.name.clone(),
                }
                .to_string()
            })
            .collect();
        if !missing.is_empty() {
            out.insert(name.clone(), missing);
        }
    }
    Ok(out)
}

/// Copies the tables not yet copied, from the snapshot of a new slot:
/// the pipeline's slot itself on first start (`create_slot`), a temporary
/// one otherwise.
pub async fn initial_copy(
    config: &StreamConfig,
    tables: &[TableSpec],
    create_slot: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<Lsn, StreamError> {
    let mut repl = ReplicationClient::connect(&config.source).await?;
    let (name, temporary) = if create_slot {
        (config.slot.clone(), false)
    } else {
        (format!("{}_sync_{}", config.slot, std::process::id()), true)
    };
    let created = repl
        .create_replication_slot(
            &name,
            &CreateSlotOptions {
                temporary,
                snapshot: SnapshotAction::Export,
                ..CreateSlotOptions::default()
            },
        )
        .await?;
    let snapshot = SnapshotSpec {
        snapshot: created.snapshot_name.clone().ok_or_else(|| {
            StreamError::Fatal("the server exported no snapshot for the new slot".into())
        })?,
        lsn: created.consistent_point,
    };
    let copies: Vec<TableCopy> = tables
        .iter()
        .map(|t| TableCopy {
            schema: t.schema.clone(),
            name: t.name.clone(),
            columns: t
                .columns
                .iter()
                .filter(|c| !c.generated)
                .map(|c| c.name.clone())
                .collect(),
        })
        .collect();
    let targets: Vec<CopyTarget> = config
        .targets
        .iter()
        .map(|t| CopyTarget {
            name: t.name.clone(),
            config: t.config.clone(),
        })
        .collect();
    let options = CopyOptions {
        workers: config.apply.copy_workers,
        ..CopyOptions::new(config.slot.clone())
    };
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let progress = tokio::spawn(show_progress(rx, tables.len()));
    let started = Instant::now();
    let result = pgrelay_copy::copy_tables(
        &config.source,
        &snapshot,
        &targets,
        &copies,
        &options,
        tx,
        shutdown,
    )
    .await;
    let _ = progress.await;
    let report = result.map_err(|e| {
        if e.is_transient() {
            StreamError::Transient(format!("initial copy: {e}"))
        } else {
            StreamError::Fatal(format!("initial copy: {e}"))
        }
    })?;
    tracing::info!(elapsed = ?started.elapsed(), report = ?report, lsn = %snapshot.lsn, "initial copy done");
    // Ends the exported snapshot; a temporary slot goes with the session.
    let _ = repl.close().await;
    Ok(created.consistent_point)
}

/// A progress line on a terminal, log lines otherwise.
async fn show_progress(mut rx: tokio::sync::mpsc::Receiver<CopyEvent>, total: usize) {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut done = 0usize;
    let mut rows = 0u64;
    let mut bytes = 0u64;
    let mut last_draw = Instant::now();
    while let Some(ev) = rx.recv().await {
        match &ev {
            CopyEvent::TableDone {
                table,
                rows: r,
                bytes: b,
                elapsed,
                ..
            } => {
                done += 1;
                tracing::info!(table = %table, rows = r, bytes = b, elapsed = ?elapsed, "table copied");
                if tty {
                    eprintln!(
                        "\r\x1b[2Kcopied {table}: {r} rows in {:.1}s",
                        elapsed.as_secs_f64()
                    );
                }
            }
            CopyEvent::Progress {
                rows: r, bytes: b, ..
            } => {
                rows = rows.max(*r);
                bytes = bytes.max(*b);
            }
            _ => {}
        }
        if tty && last_draw.elapsed().as_millis() >= 250 {
            last_draw = Instant::now();
            let secs = started.elapsed().as_secs_f64().max(0.001);
            let rate = bytes as f64 / secs / 1e6;
            let eta = if done > 0 {
                let per_table = secs / done as f64;
                format!("{:.0}s", per_table * (total - done) as f64)
            } else {
                "?".into()
            };
            eprint!("\r\x1b[2Kinitial copy: {done}/{total} tables, {rows} rows, {rate:.1} MB/s, ETA {eta}");
            let _ = std::io::stderr().flush();
        }
    }
    if tty {
        eprintln!(
            "\r\x1b[2Kinitial copy: {done}/{total} tables done in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
}
