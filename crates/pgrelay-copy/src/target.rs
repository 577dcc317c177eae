//! Target-side bookkeeping: the `pgrelay.table_sync` table shared with the
//! apply crate, the session settings of copy sessions, and the
//! copying → ready state changes around a table's chunks.
//!
//! Invariants:
//! * A table is `ready` for a pipeline on a target only after every one of
//!   its chunks committed there; `ready` is committed with
//!   `synchronous_commit = on`, chunk transactions with `off`. WAL is
//!   sequential, so a durable `ready` implies durable chunks, and a crash
//!   that loses chunks also loses the `ready` (the table is copied again).
//! * Before the first chunk, a table that is not `ready` is marked
//!   `copying` and emptied in the same transaction, so a partial copy left
//!   by a crashed run never survives into a new one.
//! * Tables `ready` for this pipeline are never touched again.
//!
//! PostgreSQL docs: "TRUNCATE" (sql-truncate), "COPY" (sql-copy),
//! "session_replication_role" and "synchronous_commit"
//! (runtime-config-client, runtime-config-wal).

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::error::CopyError;
use crate::plan::{qualified, quote_ident};
use crate::TableCopy;

/// The meta DDL, byte for byte what pgrelay-apply creates too.
pub(crate) const META_DDL: &str = "
CREATE SCHEMA IF NOT EXISTS pgrelay;
CREATE TABLE IF NOT EXISTS pgrelay.table_sync (
  pipeline text NOT NULL, schema_name text NOT NULL, table_name text NOT NULL,
  state text NOT NULL CHECK (state IN ('copying','ready')),
  sync_lsn pg_lsn, rows_copied bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pipeline, schema_name, table_name));";

/// Output settings both ends of a text-format COPY agree on, so every value
/// reads back as it was written whatever the servers' defaults.
pub(crate) const PIN_TEXT_IO: &str = "SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; \
     SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET bytea_output = 'hex'; \
     SET statement_timeout = 0; SET lock_timeout = 0";

/// Settings of every target copy session.
pub(crate) fn session_setup(replica_role: bool) -> String {
    let mut s = format!("{PIN_TEXT_IO}; SET synchronous_commit = off");
    if replica_role {
        s.push_str("; SET session_replication_role = replica");
    }
    s
}

/// How one target holds one table.
#[derive(Debug, Clone)]
pub(crate) struct TargetTable {
    /// Already copied for this pipeline: nothing to do on this target.
    pub ready: bool,
    /// The target table is partitioned: TRUNCATE without ONLY.
    pub partitioned: bool,
    /// `format_type` of each requested column, in request order.
    pub column_types: Vec<String>,
}

/// Creates the meta table (racing pgrelay-apply's identical DDL is fine:
/// a unique violation from the concurrent CREATE is retried once).
pub(crate) async fn ensure_meta(client: &Client, target: &str) -> Result<(), CopyError> {
    match client.batch_execute(META_DDL).await {
        Ok(()) => Ok(()),
        Err(e)
            if e.code()
                .is_some_and(|c| matches!(c.code(), "23505" | "42P06" | "42P07")) =>
        {
            client
                .batch_execute(META_DDL)
                .await
                .map_err(|e| CopyError::target(target, "create pgrelay.table_sync", e))
        }
        Err(e) => Err(CopyError::target(
            target,
            "create pgrelay.table_sync (the copy role needs CREATE on the database)",
            e,
        )),
    }
}

/// Reads state, kind and column types of every table on one target.
pub(crate) async fn inspect(
    client: &Client,
    target: &str,
    pipeline: &str,
    tables: &[TableCopy],
) -> Result<Vec<TargetTable>, CopyError> {
    let states: HashMap<(String, String), String> = client
        .query(
            "SELECT schema_name, table_name, state FROM pgrelay.table_sync WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .map_err(|e| CopyError::target(target, "read pgrelay.table_sync", e))?
        .into_iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let display = format!("{}.{}", t.schema, t.name);
        let rows = client
            .query(
                "SELECT c.relkind::text, a.attname::text, format_type(a.atttypid, a.atttypmod) \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                   LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 \
                                           AND NOT a.attisdropped \
                  WHERE n.nspname = $1 AND c.relname = $2",
                &[&t.schema, &t.name],
            )
            .await
            .map_err(|e| CopyError::target(target, format!("inspect {display}"), e))?;
        let Some(first) = rows.first() else {
            return Err(CopyError::Invalid(format!(
                "table {display} does not exist on target {target}; create the schema on the \
                 target first (pgrelay init does)"
            )));
        };
        let relkind: String = first.get(0);
        if relkind != "r" && relkind != "p" {
            return Err(CopyError::Invalid(format!(
                "{display} on target {target} is not a table (relkind {relkind})"
            )));
        }
        let mut column_types = Vec::with_capacity(t.columns.len());
        for c in &t.columns {
            let ty = rows
                .iter()
                .find(|r| r.get::<_, Option<String>>(1).as_deref() == Some(c.as_str()))
                .map(|r| r.get::<_, String>(2))
                .ok_or_else(|| {
                    CopyError::Invalid(format!(
                        "column {c:?} of {display} does not exist on target {target}; make the \
                         target schema match the source"
                    ))
                })?;
            column_types.push(ty);
        }
        out.push(TargetTable {
            ready: states
                .get(&(t.schema.clone(), t.name.clone()))
                .is_some_and(|s| s == "ready"),
            partitioned: relkind == "p",
            column_types,
        });
    }
    Ok(out)
}

/// Marks `tables` (with their target kinds) `copying` and empties them, in
/// one transaction. TRUNCATE refuses a table that a table outside the list
/// references by a foreign key; those are emptied with DELETE instead
/// (FK triggers do not fire under `session_replication_role = replica`,
/// and the referencing table is already copied).
pub(crate) async fn begin_tables(
    client: &mut Client,
    target: &str,
    pipeline: &str,
    tables: &[(&TableCopy, bool)],
) -> Result<(), CopyError> {
    if tables.is_empty() {
        return Ok(());
    }
    let err = |what: &str| {
        let what = what.to_owned();
        move |e| CopyError::target(target, what, e)
    };
    let tx = client
        .transaction()
        .await
        .map_err(err("begin marking tables copying"))?;
    let upsert = tx
        .prepare(
            "INSERT INTO pgrelay.table_sync (pipeline, schema_name, table_name, state) \
             VALUES ($1, $2, $3, 'copying') \
             ON CONFLICT (pipeline, schema_name, table_name) DO UPDATE \
             SET state = 'copying', sync_lsn = NULL, rows_copied = 0, updated_at = now()",
        )
        .await
        .map_err(err("prepare the table_sync upsert"))?;
    for (t, _) in tables {
        tx.execute(&upsert, &[&pipeline, &t.schema, &t.name])
            .await
            .map_err(err("mark table copying"))?;
    }
    let list: Vec<String> = tables
        .iter()
        .map(|(t, partitioned)| {
            // ONLY on a partitioned table is an error; its partitions are
            // the table's own data, so they go too.
            let only = if *partitioned { "" } else { "ONLY " };
            format!("{only}{}", qualified(&t.schema, &t.name))
        })
        .collect();
    tx.batch_execute("SAVEPOINT pgrelay_truncate")
        .await
        .map_err(err("savepoint"))?;
    match tx
        .batch_execute(&format!("TRUNCATE {}", list.join(", ")))
        .await
    {
        Ok(()) => {}
        Err(e) if e.code().is_some_and(|c| c.code() == "0A000") => {
            tracing::warn!(target = target, error = %e, "TRUNCATE refused (foreign keys from tables outside this copy); emptying with DELETE");
            tx.batch_execute("ROLLBACK TO SAVEPOINT pgrelay_truncate")
                .await
                .map_err(err("rollback to savepoint"))?;
            for (t, partitioned) in tables {
                let only = if *partitioned { "" } else { "ONLY " };
                tx.batch_execute(&format!(
                    "DELETE FROM {only}{}",
                    qualified(&t.schema, &t.name)
                ))
                .await
                .map_err(err("empty a partially copied table"))?;
            }
        }
        Err(e) => return Err(err("truncate partially copied tables")(e)),
    }
    tx.commit()
        .await
        .map_err(err("commit marking tables copying"))
}

/// Marks one table `ready` at `lsn` with its row count, durably.
pub(crate) async fn finish_table(
    client: &Client,
    target: &str,
    pipeline: &str,
    table: &TableCopy,
    lsn: pgrelay_types::Lsn,
    rows: u64,
) -> Result<(), CopyError> {
    let err = |e| CopyError::target(target, "mark table ready", e);
    client
        .batch_execute("BEGIN; SET LOCAL synchronous_commit = on")
        .await
        .map_err(err)?;
    let updated = client
        .execute(
            "UPDATE pgrelay.table_sync \
                SET state = 'ready', sync_lsn = $4::text::pg_lsn, rows_copied = $5, \
                    updated_at = now() \
              WHERE pipeline = $1 AND schema_name = $2 AND table_name = $3",
            &[
                &pipeline,
                &table.schema,
                &table.name,
                &lsn.to_string(),
                &(rows as i64),
            ],
        )
        .await;
    match updated {
        Ok(1) => client.batch_execute("COMMIT").await.map_err(err),
        Ok(n) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(CopyError::Invalid(format!(
                "target {target}: the table_sync row of {}.{} for pipeline {pipeline} was \
                 removed during the copy ({n} rows matched); is another pgrelay copying the same \
                 pipeline? Run again once it is done",
                table.schema, table.name
            )))
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(err(e))
        }
    }
}

/// `COPY "s"."t" ("a", "b") FROM STDIN`.
pub(crate) fn copy_in_sql(table: &TableCopy, binary: bool) -> String {
    let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(c)).collect();
    format!(
        "COPY {} ({}) FROM STDIN{}",
        qualified(&table.schema, &table.name),
        cols.join(", "),
        if binary { " (FORMAT binary)" } else { "" }
    )
}
