//! Source-side planning: which relations hold a table's rows, how they are
//! cut into ctid chunks, and whether the table can travel in binary COPY
//! format.
//!
//! Invariants:
//! * A table's chunks cover every page of every heap that holds its rows:
//!   the last chunk of each heap is open-ended, so pages added after the
//!   size was read are still scanned (rows on them are invisible to the
//!   snapshot anyway, but nothing depends on that).
//! * Partitioned tables are copied leaf by leaf (each leaf cut into its
//!   own chunks, read with `FROM ONLY leaf`) into the *parent* on the
//!   target, so the target routes every row itself and may partition
//!   differently, or not at all. Foreign-table partitions are not copied.
//! * Binary format is chosen only when the bytes mean the same thing on
//!   every server: every type involved has binary send/receive functions,
//!   and no user-defined type sits inside an array or a composite (the
//!   binary forms of those embed type OIDs, which differ between servers;
//!   `array_recv`/`record_recv` reject them). Otherwise text format.
//!
//! PostgreSQL docs: "COPY" (sql-copy, binary format), "System Information
//! Functions" (`pg_partition_tree`), "Database Object Management
//! Functions" (`pg_relation_size`, `pg_table_size`), "pg_type" catalog.

use tokio_postgres::Client;

use crate::error::CopyError;
use crate::TableCopy;

pub(crate) use pgrelay_types::sql::{quote_ident, quote_qualified as qualified};

/// One heap (a plain table or a leaf partition) on the source.
#[derive(Debug, Clone)]
pub(crate) struct Heap {
    /// Quoted `schema.name`.
    pub quoted: String,
    /// Pages at planning time.
    pub pages: u64,
}

/// A table as the source holds it.
#[derive(Debug, Clone)]
pub(crate) struct SourceTable {
    pub heaps: Vec<Heap>,
    /// `format_type` of each requested column, in request order.
    pub column_types: Vec<String>,
    /// Every column's type is safe for binary COPY between servers.
    pub binary_ok: bool,
    /// `schema.name` of every partitioned ancestor, for a partition.
    pub ancestors: Vec<(String, String)>,
}

/// The closure of the types a set of columns uses (domains' base types,
/// arrays' element types, composites' attribute types, ranges' subtypes),
/// and whether each of them is safe for binary COPY. `nested` marks types
/// whose OID the binary form of an enclosing array or record embeds.
const BINARY_SAFE: &str = "
WITH RECURSIVE closure(oid, nested) AS (
    SELECT t, false FROM unnest($1::oid[]) AS t
  UNION
    SELECT x.oid, x.nested
      FROM closure c
      JOIN pg_type ty ON ty.oid = c.oid
     CROSS JOIN LATERAL (
           SELECT ty.typelem AS oid, true AS nested
            WHERE ty.typelem <> 0 AND ty.typlen = -1
           UNION ALL
           SELECT ty.typbasetype, c.nested WHERE ty.typbasetype <> 0
           UNION ALL
           SELECT a.atttypid, true
             FROM pg_attribute a
            WHERE ty.typrelid <> 0 AND a.attrelid = ty.typrelid
              AND a.attnum > 0 AND NOT a.attisdropped
           UNION ALL
           SELECT r.rngsubtype, c.nested FROM pg_range r WHERE r.rngtypid = ty.oid
     ) x
)
SELECT coalesce(bool_and(ty.typsend::oid <> 0 AND ty.typreceive::oid <> 0
                         AND (NOT c.nested OR c.oid < 16384)), true)
  FROM closure c JOIN pg_type ty ON ty.oid = c.oid";

/// Multiranges (PostgreSQL 14+) send their ranges without OIDs; their
/// range type is found through pg_range.rngmultitypid.
const MULTIRANGE_RANGES: &str = "
SELECT coalesce(array_agg(r.rngtypid), '{}') FROM pg_range r WHERE r.rngmultitypid = ANY($1::oid[])";

/// Plans one table on a source connection (inside the snapshot
/// transaction, though catalogs are read with a fresh catalog snapshot).
pub(crate) async fn plan_table(
    client: &Client,
    table: &TableCopy,
) -> Result<SourceTable, CopyError> {
    let display = format!("{}.{}", table.schema, table.name);
    let step = |what: &str| format!("planning {display}: {what}");
    let rel = client
        .query_opt(
            "SELECT c.oid, c.relkind::text FROM pg_class c \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(|e| CopyError::source(step("find the table"), e))?
        .ok_or_else(|| {
            CopyError::Invalid(format!(
                "table {display} does not exist on the source; check the table selection"
            ))
        })?;
    let oid: u32 = rel.get(0);
    let relkind: String = rel.get(1);
    let heaps_sql = match relkind.as_str() {
        "r" => {
            "SELECT format('%I.%I', n.nspname, c.relname), \
                    (pg_relation_size(c.oid) / current_setting('block_size')::bigint)::bigint \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1"
        }
        "p" => {
            "SELECT format('%I.%I', n.nspname, c.relname), \
                    (pg_relation_size(c.oid) / current_setting('block_size')::bigint)::bigint \
               FROM pg_partition_tree($1::oid::regclass) t \
               JOIN pg_class c ON c.oid = t.relid \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE t.isleaf AND c.relkind = 'r' ORDER BY 2 DESC"
        }
        other => {
            return Err(CopyError::Invalid(format!(
                "{display} on the source is not a table (relkind {other}); only tables and \
                 partitioned tables can be copied"
            )))
        }
    };
    let heaps = client
        .query(heaps_sql, &[&oid])
        .await
        .map_err(|e| CopyError::source(step("read its size"), e))?
        .iter()
        .map(|r| Heap {
            quoted: r.get(0),
            pages: r.get::<_, i64>(1).max(0) as u64,
        })
        .collect();

    let cols = client
        .query(
            "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod) \
               FROM pg_attribute a \
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&oid],
        )
        .await
        .map_err(|e| CopyError::source(step("read its columns"), e))?;
    let mut type_oids = Vec::with_capacity(table.columns.len());
    let mut column_types = Vec::with_capacity(table.columns.len());
    for name in &table.columns {
        let row = cols
            .iter()
            .find(|r| r.get::<_, String>(0) == *name)
            .ok_or_else(|| {
                CopyError::Invalid(format!(
                    "column {name:?} of {display} does not exist on the source; check the \
                     column list"
                ))
            })?;
        type_oids.push(row.get::<_, u32>(1));
        column_types.push(row.get::<_, String>(2));
    }
    if table.columns.is_empty() {
        return Err(CopyError::Invalid(format!(
            "{display}: no columns to copy; a table needs at least one non-generated column"
        )));
    }
    let ranges: Vec<u32> = client
        .query_one(MULTIRANGE_RANGES, &[&type_oids])
        .await
        .map_err(|e| CopyError::source(step("check multirange types"), e))?
        .get(0);
    type_oids.extend(ranges);
    let binary_ok: bool = client
        .query_one(BINARY_SAFE, &[&type_oids])
        .await
        .map_err(|e| CopyError::source(step("check binary I/O of its types"), e))?
        .get(0);
    let ancestors = client
        .query(
            "SELECT n.nspname::text, c.relname::text \
               FROM pg_partition_ancestors($1::oid::regclass) a \
               JOIN pg_class c ON c.oid = a.relid \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.oid <> $1",
            &[&oid],
        )
        .await
        .map_err(|e| CopyError::source(step("read its partition ancestors"), e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(SourceTable {
        heaps,
        column_types,
        binary_ok,
        ancestors,
    })
}

/// Size estimate of one table, for progress bars and ETAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableEstimate {
    /// `pg_class.reltuples` summed over the table's heaps; 0 for a table
    /// never vacuumed or analyzed (PostgreSQL 14+ reports -1 there).
    pub rows: u64,
    /// `pg_table_size` (heap, TOAST, free space and visibility maps)
    /// summed over the table's heaps.
    pub bytes: u64,
}

/// Estimates every table in `tables`, in order, from catalog statistics
/// (cheap: no table is scanned). A table missing on the source is an
/// error.
pub async fn estimate(
    source: &pgrelay_source::Config,
    tables: &[TableCopy],
) -> Result<Vec<TableEstimate>, CopyError> {
    let client = pgrelay_source::connect_sql(source)
        .await
        .map_err(|e| CopyError::Source {
            step: "connect to the source to estimate table sizes".into(),
            source: Box::new(e),
        })?;
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let row = client
            .query_opt(
                "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::float8, \
                        coalesce(sum(pg_table_size(c.oid)), 0)::bigint \
                   FROM pg_class p JOIN pg_namespace n ON n.oid = p.relnamespace \
                   CROSS JOIN LATERAL (SELECT relid FROM pg_partition_tree(p.oid) \
                                        WHERE p.relkind = 'p' AND isleaf \
                                       UNION ALL SELECT p.oid WHERE p.relkind <> 'p') l \
                   JOIN pg_class c ON c.oid = l.relid \
                  WHERE n.nspname = $1 AND p.relname = $2 \
                  GROUP BY p.oid",
                &[&t.schema, &t.name],
            )
            .await
            .map_err(|e| CopyError::source(format!("estimate {}.{}", t.schema, t.name), e))?
            .ok_or_else(|| {
                CopyError::Invalid(format!(
                    "table {}.{} does not exist on the source; check the table selection",
                    t.schema, t.name
                ))
            })?;
        out.push(TableEstimate {
            rows: row.get::<_, f64>(0) as u64,
            bytes: row.get::<_, i64>(1).max(0) as u64,
        });
    }
    Ok(out)
}
