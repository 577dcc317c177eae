//! Schema compatibility check between source and target tables, run before
//! anything is copied or streamed so every problem is reported at once,
//! each with the SQL that fixes it.
//!
//! Invariants: `describe_tables` reads only the catalogs (one round trip for
//! the tables, one for their columns) and returns one entry per requested
//! table, `None` when it does not exist (only ordinary and partitioned
//! tables count). `compare` is pure. Columns are matched by name, as the
//! applier does; types are compared by `format_type()` text, which names
//! user types by name, so an enum or domain of the same name on both sides
//! matches even though its OID differs. Generated source columns are not
//! replicated and are ignored.
//!
//! PostgreSQL reference: "pg_attribute" (catalog-pg-attribute),
//! "pg_class.relreplident" (catalog-pg-class), "REPLICA IDENTITY" in ALTER
//! TABLE (sql-altertable), and "Publication" (logical-replication-publication)
//! for why UPDATE/DELETE need a replica identity.

use std::collections::HashMap;
use std::fmt;

use tokio_postgres::Client;

use crate::error::{ApplyError, ErrorContext};
use crate::sql::{display_ident, display_qualified};

/// One column as the catalog describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, e.g. `character varying(20)`.
    pub type_name: String,
    /// `attnotnull`.
    pub not_null: bool,
    /// A generated column (`attgenerated <> ''`).
    pub generated: bool,
}

/// One table as the catalog describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Live columns in attribute order.
    pub columns: Vec<ColumnSpec>,
    /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: char,
    /// Has a primary key.
    pub has_primary_key: bool,
    /// For identity `i`: the chosen index still exists. For `d`: the
    /// primary key exists. For `f`: true. For `n`: false.
    pub identity_index_ok: bool,
}

/// One incompatibility, with its fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `schema.table`.
    pub table: String,
    /// What is wrong.
    pub message: String,
    /// The SQL (or action) that fixes it, and where to run it.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; fix: {}", self.table, self.message, self.fix)
    }
}

const TABLES: &str = "\
SELECT t.ord::int4, c.oid, c.relreplident::text, \
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) \
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(s, n, ord) \
JOIN pg_namespace ns ON ns.nspname = t.s \
JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = t.n AND c.relkind IN ('r', 'p')";

const COLUMNS: &str = "\
SELECT a.attrelid, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
       a.attgenerated <> '' \
FROM pg_attribute a \
WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped \
ORDER BY a.attrelid, a.attnum";

/// Describes `tables` (schema, name) on the server behind `client`; `None`
/// for a table that does not exist.
pub async fn describe_tables(
    client: &Client,
    tables: &[(String, String)],
) -> Result<Vec<Option<TableSpec>>, ApplyError> {
    let ctx = || ErrorContext {
        table: None,
        commit_lsn: None,
        operation: "reading table definitions from the catalog".to_string(),
    };
    let schemas: Vec<&str> = tables.iter().map(|(s, _)| s.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|(_, n)| n.as_str()).collect();
    let rows = client
        .query(TABLES, &[&schemas, &names])
        .await
        .map_err(|e| ApplyError::from_pg(&e, ctx()))?;
    let mut out: Vec<Option<TableSpec>> = vec![None; tables.len()];
    let mut by_oid: HashMap<u32, usize> = HashMap::new();
    for r in &rows {
        let ord: i32 = r.get(0);
        let idx = (ord - 1) as usize;
        let oid: u32 = r.get(1);
        let ident: String = r.get(2);
        let replica_identity = ident.chars().next().unwrap_or('d');
        let has_primary_key: bool = r.get(3);
        let has_ident_index: bool = r.get(4);
        let identity_index_ok = match replica_identity {
            'f' => true,
            'i' => has_ident_index,
            'd' => has_primary_key,
            _ => false,
        };
        by_oid.insert(oid, idx);
        out[idx] = Some(TableSpec {
            schema: tables[idx].0.clone(),
            name: tables[idx].1.clone(),
            columns: Vec::new(),
            replica_identity,
            has_primary_key,
            identity_index_ok,
        });
    }
    if by_oid.is_empty() {
        return Ok(out);
    }
    let oids: Vec<u32> = by_oid.keys().copied().collect();
    let cols = client
        .query(COLUMNS, &[&oids])
        .await
        .map_err(|e| ApplyError::from_pg(&e, ctx()))?;
    for r in &cols {
        let oid: u32 = r.get(0);
        if let Some(spec) = by_oid.get(&oid).and_then(|&i| out[i].as_mut()) {
            spec.columns.push(ColumnSpec {
                name: r.get(1),
                type_name: r.get(2),
                not_null: r.get(3),
                generated: r.get(4),
            });
        }
    }
    Ok(out)
}

/// Every problem that would stop replication of `source` tables into
/// `target` (same order, `None` = missing on the target).
pub fn compare(source: &[TableSpec], target: &[Option<TableSpec>]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (i, src) in source.iter().enumerate() {
        let table = display_qualified(&src.schema, &src.name);
        let mut problem = |message: String, fix: String| {
            problems.push(Problem {
                table: table.clone(),
                message,
                fix,
            })
        };
        // Source side: updates and deletes need a way to find the row.
        match src.replica_identity {
            'n' => problem(
                "REPLICA IDENTITY NOTHING on the source: its UPDATEs and DELETEs cannot be \
                 replicated"
                    .to_string(),
                format!(
                    "on the source: ALTER TABLE {table} REPLICA IDENTITY FULL; (or DEFAULT \
                     with a primary key)"
                ),
            ),
            'd' if !src.has_primary_key => problem(
                "no primary key and REPLICA IDENTITY DEFAULT on the source: its UPDATEs and \
                 DELETEs cannot be replicated"
                    .to_string(),
                format!(
                    "on the source: ALTER TABLE {table} ADD PRIMARY KEY (...); or ALTER TABLE \
                     {table} REPLICA IDENTITY FULL;"
                ),
            ),
            'i' if !src.identity_index_ok => problem(
                "REPLICA IDENTITY USING INDEX on the source, but that index no longer exists"
                    .to_string(),
                format!(
                    "on the source: ALTER TABLE {table} REPLICA IDENTITY USING INDEX <a unique \
                     index on NOT NULL columns>; or ALTER TABLE {table} REPLICA IDENTITY FULL;"
                ),
            ),
            _ => {}
        }
        let Some(tgt) = target.get(i).and_then(Option::as_ref) else {
            problem(
                "table does not exist on the target".to_string(),
                format!(
                    "create it on the target with the source's definition, e.g. pg_dump \
                     --schema-only --table={table} SOURCE_URL | psql TARGET_URL"
                ),
            );
            continue;
        };
        let target_cols: HashMap<&str, &ColumnSpec> =
            tgt.columns.iter().map(|c| (c.name.as_str(), c)).collect();
        for col in src.columns.iter().filter(|c| !c.generated) {
            let name = display_ident(&col.name);
            match target_cols.get(col.name.as_str()) {
                None => problem(
                    format!(
                        "column {name} ({}) does not exist on the target",
                        col.type_name
                    ),
                    format!(
                        "on the target: ALTER TABLE {table} ADD COLUMN {name} {};",
                        col.type_name
                    ),
                ),
                Some(t) if t.generated => problem(
                    format!("column {name} is generated on the target but not on the source"),
                    format!(
                        "on the target: ALTER TABLE {table} ALTER COLUMN {name} DROP EXPRESSION;"
                    ),
                ),
                Some(t) if t.type_name != col.type_name => problem(
                    format!(
                        "column {name} is {} on the source but {} on the target",
                        col.type_name, t.type_name
                    ),
                    format!(
                        "on the target: ALTER TABLE {table} ALTER COLUMN {name} TYPE {};",
                        col.type_name
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            type_name: ty.into(),
            not_null: false,
            generated: false,
        }
    }

    fn spec(name: &str, ident: char, pk: bool, cols: Vec<ColumnSpec>) -> TableSpec {
        TableSpec {
            schema: "public".into(),
            name: name.into(),
            columns: cols,
            replica_identity: ident,
            has_primary_key: pk,
            identity_index_ok: pk || ident == 'f',
        }
    }

    #[test]
    fn compare_reports_each_problem_with_a_fix() {
        let src = vec![
            spec("a", 'd', true, vec![col("id", "integer"), col("v", "text")]),
            spec("b", 'd', false, vec![col("x", "integer")]),
            spec("c", 'f', false, vec![col("x", "integer")]),
        ];
        let tgt = vec![
            Some(spec("a", 'd', true, vec![col("id", "bigint")])),
            Some(spec("b", 'd', false, vec![col("x", "integer")])),
            None,
        ];
        let p: Vec<String> = compare(&src, &tgt)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].starts_with("public.a: column id is integer on the source but bigint"));
        assert!(p[0].ends_with("ALTER TABLE public.a ALTER COLUMN id TYPE integer;"));
        assert!(p[1].contains("ADD COLUMN v text;"));
        assert!(p[2].contains("REPLICA IDENTITY FULL"));
        assert!(p[3].starts_with("public.c: table does not exist on the target"));
    }
}
