//! The `pgrelay` schema on a target: per-pipeline apply progress and
//! per-table initial-copy state.
//!
//! Invariants: the DDL is exactly the shared contract (the copy engine and
//! `pgrelay cleanup` create and read the same tables), always with
//! `IF NOT EXISTS` so any component may create it first. A progress row is
//! only ever written by the applier as the last statement of the target
//! transaction that applied the source transactions it names, so the row
//! and the data are durable together: `commit_lsn` is the last source
//! transaction whose changes are in the target.
//!
//! PostgreSQL reference: "pg_lsn Type" (datatype-pg-lsn), "INSERT ... ON
//! CONFLICT" (sql-insert), "CREATE SCHEMA" (sql-createschema).

use pgrelay_types::{Lsn, PgTimestamp};
use tokio_postgres::Client;

use crate::error::{ApplyError, ErrorContext};
use crate::Progress;

/// The shared DDL of the `pgrelay` schema.
pub const DDL: &str = "\
CREATE SCHEMA IF NOT EXISTS pgrelay;
CREATE TABLE IF NOT EXISTS pgrelay.progress (
  pipeline    text PRIMARY KEY,
  commit_lsn  pg_lsn NOT NULL,
  end_lsn     pg_lsn NOT NULL,
  commit_time timestamptz,
  applied_at  timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS pgrelay.table_sync (
  pipeline    text NOT NULL,
  schema_name text NOT NULL,
  table_name  text NOT NULL,
  state       text NOT NULL CHECK (state IN ('copying','ready')),
  sync_lsn    pg_lsn,
  rows_copied bigint NOT NULL DEFAULT 0,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pipeline, schema_name, table_name));";

/// The statement that records progress; `$1` pipeline, `$2` commit LSN,
/// `$3` end LSN (both pg_lsn, binary), `$4` commit time (timestamptz, binary).
pub(crate) const UPSERT_PROGRESS: &str = "\
INSERT INTO pgrelay.progress AS p (pipeline, commit_lsn, end_lsn, commit_time, applied_at) \
VALUES ($1, $2, $3, $4, now()) \
ON CONFLICT (pipeline) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, \
end_lsn = EXCLUDED.end_lsn, commit_time = EXCLUDED.commit_time, applied_at = now()";

/// Copy state of one table (`pgrelay.table_sync.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncState {
    /// The initial copy is running or was interrupted.
    Copying,
    /// The copy is complete up to `sync_lsn`.
    Ready,
}

/// One row of `pgrelay.table_sync`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSync {
    /// Schema name (unquoted).
    pub schema: String,
    /// Table name (unquoted).
    pub table: String,
    /// Copy state.
    pub state: SyncState,
    /// Source transactions with `commit_lsn < sync_lsn` are already in the copy.
    pub sync_lsn: Option<Lsn>,
    /// Rows the copy wrote.
    pub rows_copied: i64,
}

fn ctx(operation: &str) -> ErrorContext {
    ErrorContext {
        table: None,
        commit_lsn: None,
        operation: operation.to_string(),
    }
}

/// Creates the `pgrelay` schema and its tables if missing. Safe to run
/// concurrently with other components doing the same.
pub async fn ensure_schema(client: &Client) -> Result<(), ApplyError> {
    let mut attempt = 0;
    loop {
        match client.batch_execute(DDL).await {
            Ok(()) => return Ok(()),
            // Two sessions racing on IF NOT EXISTS: one of them gets a unique
            // violation on the catalog; the objects exist now, so run again.
            Err(e)
                if attempt < 3
                    && e.code().is_some_and(|c| {
                        matches!(c.code(), "23505" | "42P06" | "42P07" | "XX000")
                    }) =>
            {
                attempt += 1;
            }
            Err(e) => {
                let mut err = ApplyError::from_pg(&e, ctx("creating the pgrelay schema"));
                if let ApplyError::Fatal { fix, sqlstate, .. } = &mut err {
                    if sqlstate.as_deref() == Some("42501") {
                        *fix = "grant the target role CREATE on the database (GRANT CREATE ON \
                                DATABASE ... TO ...), or create the pgrelay schema as its owner"
                            .to_string();
                    }
                }
                return Err(err);
            }
        }
    }
}

fn parse_lsn(text: &str, what: &str) -> Result<Lsn, ApplyError> {
    text.parse().map_err(|e| {
        ApplyError::fatal(
            ctx(what),
            format!("unreadable pg_lsn {text:?}: {e}"),
            "the pgrelay schema on the target is damaged; run `pgrelay cleanup` and resync"
                .to_string(),
        )
    })
}

/// The durable progress of `pipeline`, if it has applied anything.
pub async fn load_progress(
    client: &Client,
    pipeline: &str,
) -> Result<Option<Progress>, ApplyError> {
    let rows = client
        .query(
            "SELECT commit_lsn::text, end_lsn::text, \
             ((extract(epoch FROM commit_time) - 946684800) * 1000000)::int8 \
             FROM pgrelay.progress WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .map_err(|e| ApplyError::from_pg(&e, ctx("reading pgrelay.progress")))?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let commit: String = row.get(0);
    let end: String = row.get(1);
    let ts: Option<i64> = row.get(2);
    Ok(Some(Progress {
        commit_lsn: parse_lsn(&commit, "reading pgrelay.progress")?,
        end_lsn: parse_lsn(&end, "reading pgrelay.progress")?,
        commit_ts: PgTimestamp(ts.unwrap_or(0)),
    }))
}

/// Every table_sync row of `pipeline`.
pub async fn load_table_sync(
    client: &Client,
    pipeline: &str,
) -> Result<Vec<TableSync>, ApplyError> {
    let rows = client
        .query(
            "SELECT schema_name, table_name, state, sync_lsn::text, rows_copied \
             FROM pgrelay.table_sync WHERE pipeline = $1 ORDER BY schema_name, table_name",
            &[&pipeline],
        )
        .await
        .map_err(|e| ApplyError::from_pg(&e, ctx("reading pgrelay.table_sync")))?;
    rows.iter()
        .map(|r| {
            let state: String = r.get(2);
            let sync: Option<String> = r.get(3);
            Ok(TableSync {
                schema: r.get(0),
                table: r.get(1),
                state: if state == "ready" {
                    SyncState::Ready
                } else {
                    SyncState::Copying
                },
                sync_lsn: sync
                    .map(|s| parse_lsn(&s, "reading pgrelay.table_sync"))
                    .transpose()?,
                rows_copied: r.get(4),
            })
        })
        .collect()
}

/// Deletes `pipeline`'s rows; when no pipeline is left, drops the tables and
/// the schema (not CASCADE: objects someone else put in the schema keep it
/// alive). A target without the schema is left as it is.
pub async fn drop_pipeline(client: &Client, pipeline: &str) -> Result<(), ApplyError> {
    let c = || ctx("dropping the pipeline's rows in the pgrelay schema");
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('pgrelay.progress') IS NOT NULL \
             AND to_regclass('pgrelay.table_sync') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| ApplyError::from_pg(&e, c()))?
        .get(0);
    if !exists {
        return Ok(());
    }
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|e| ApplyError::from_pg(&e, c()))?;
    let result = async {
        client
            .execute(
                "DELETE FROM pgrelay.progress WHERE pipeline = $1",
                &[&pipeline],
            )
            .await?;
        client
            .execute(
                "DELETE FROM pgrelay.table_sync WHERE pipeline = $1",
                &[&pipeline],
            )
            .await?;
        let left: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pgrelay.progress) \
                 OR EXISTS (SELECT 1 FROM pgrelay.table_sync)",
                &[],
            )
            .await?
            .get(0);
        if to_regclass(client, "pgrelay.verify_pause").await? {
            client
                .execute(
                    "DELETE FROM pgrelay.verify_pause WHERE pipeline = $1",
                    &[&pipeline],
                )
                .await?;
        }
        if !left {
            // verify_pause is pgrelay's too (the streamer's handshake with
            // `pgrelay verify`): without a pipeline it has no use.
            client
                .batch_execute(
                    "DROP TABLE pgrelay.progress, pgrelay.table_sync; \
                     DROP TABLE IF EXISTS pgrelay.verify_pause",
                )
                .await?;
            let others: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_namespace n \
                     ON d.refobjid = n.oid AND d.refclassid = 'pg_namespace'::regclass \
                     WHERE n.nspname = 'pgrelay')",
                    &[],
                )
                .await?
                .get(0);
            if others {
                tracing::warn!(
                    "schema pgrelay holds objects pgrelay did not create; dropped only its tables"
                );
            } else {
                client.batch_execute("DROP SCHEMA pgrelay").await?;
            }
        }
        client.batch_execute("COMMIT").await
    }
    .await;
    if let Err(e) = result {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(ApplyError::from_pg(&e, c()));
    }
    Ok(())
}

async fn to_regclass(client: &Client, name: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await?
        .get(0))
}
