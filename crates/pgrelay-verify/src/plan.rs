//! Planning one table's verification: its columns on both sides, the key
//! that orders it into ranges, and the split points of those ranges.
//!
//! Invariants: the row text is built from the SOURCE column list, in source
//! order, selected by name on both sides, so a target whose columns were
//! created in another order still compares equal. Ranges are half-open
//! intervals of the key, `[lo, hi)`, in the key's btree order; the first
//! has no lower bound and the last no upper bound, so together they cover
//! every possible key exactly once, whatever rows appear later. They are
//! only used when the key orders the same way on both sides (same
//! effective collation for every collatable key column) and the target can
//! scan them through a btree index; otherwise the table is checked as one
//! range (correct, just not split).
//!
//! Split points come from a `TABLESAMPLE SYSTEM` block sample of the
//! source's key (a few thousand pages at most), sorted by the server and
//! cut into equal-row slices, so they need no statistics and cost a tiny
//! fraction of the full scan.
//!
//! PostgreSQL docs: "System Catalogs" (pg_index, pg_attribute,
//! pg_collation), "SELECT … TABLESAMPLE" (sql-select), "Row Constructor
//! Comparison" (functions-comparisons), "Collation Support" (collation).

use tokio_postgres::Client;

use crate::error::{Side, VerifyError};

/// Pages read (at most) by the split-point sample.
const SAMPLE_PAGES: f64 = 2000.0;
/// Upper bound on ranges per table.
const MAX_RANGES: usize = 10_000;

pub(crate) use pgrelay_types::sql::{quote_ident, quote_literal};

/// One column: name, `format_type` spelling, effective collation.
#[derive(Clone, Debug)]
pub(crate) struct Column {
    pub name: String,
    pub ty: String,
    pub collation: String,
}

/// A table as one side sees it.
#[derive(Clone, Debug)]
pub(crate) struct SideTable {
    pub oid: u32,
    pub qualified: String,
    pub columns: Vec<Column>,
    /// Leading key columns of every valid btree index, with whether the
    /// index can serve as the row key (primary key, or unique over NOT NULL
    /// columns, not partial, no expressions).
    pub indexes: Vec<(bool, Vec<String>)>,
}

/// The SQL for one side: from-clause, hash expression, key columns.
#[derive(Clone, Debug)]
pub(crate) struct SideSql {
    pub from: String,
    pub hash: String,
    pub key: Vec<(String, String)>,
    /// The key is one column of a type without collation, so one
    /// sequential scan can sort every row into its range with
    /// `width_bucket` (see [`SideSql::bucket_query`]).
    pub bucketable: bool,
}

impl SideSql {
    /// `SELECT count(*), <sum of row hashes> FROM t [WHERE key >= $lo AND
    /// key < $hi]`; the parameters are the bounds' text, lower first.
    pub fn range_query(&self, lo: bool, hi: bool) -> String {
        let mut sql = format!(
            "SELECT count(*), coalesce(sum({}), 0)::text FROM {}",
            self.hash, self.from
        );
        let mut conds = Vec::new();
        let mut n = 0;
        let mut bound = |op: &str| {
            let cols: Vec<&str> = self.key.iter().map(|(c, _)| c.as_str()).collect();
            let vals: Vec<String> = self
                .key
                .iter()
                .map(|(_, ty)| {
                    n += 1;
                    format!("${n}::text::{ty}")
                })
                .collect();
            if cols.len() == 1 {
                format!("{} {op} {}", cols[0], vals[0])
            } else {
                format!("({}) {op} ({})", cols.join(", "), vals.join(", "))
            }
        };
        if lo {
            conds.push(bound(">="));
        }
        if hi {
            conds.push(bound("<"));
        }
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(" AND "));
        }
        sql
    }

    /// Every range of the table in ONE sequential scan: `SELECT
    /// width_bucket(key, ARRAY[<points>]), count(*), <sum> … GROUP BY 1`.
    /// `width_bucket` with a thresholds array puts a key below the first
    /// point in bucket 0 and a key in `[points[i-1], points[i])` in bucket
    /// `i`, which is exactly range `i` of the split, so the result rows are
    /// the per-range aggregates (ranges without rows are absent). The
    /// points are inlined as a constant (cast once at plan time to this
    /// side's key type), not bound: a parameter would be cast per row.
    /// Only for a one-column key of a type without collation
    /// (`bucketable`): the bucket order is then the type's btree order on
    /// both sides, with no collation to agree on.
    ///
    /// `blocks` limits the scan to a slice of the heap (`ctid` between
    /// `(lo,0)` and `(hi,0)`, a TID range scan): a large table is read as
    /// several slices at once in one snapshot, since the planner will not
    /// parallelize this query itself (it expects one group per key).
    pub fn bucket_query(&self, points: &[Vec<String>], blocks: BlockRange) -> String {
        let (col, ty) = &self.key[0];
        let items: Vec<String> = points
            .iter()
            .map(|p| quote_literal(p.first().map_or("", String::as_str)))
            .collect();
        let mut conds = Vec::new();
        if let Some(lo) = blocks.0 {
            conds.push(format!("ctid >= '({lo},0)'::tid"));
        }
        if let Some(hi) = blocks.1 {
            conds.push(format!("ctid < '({hi},0)'::tid"));
        }
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        };
        format!(
            "SELECT width_bucket({col}, ARRAY[{}]::text[]::{ty}[]), count(*), \
             coalesce(sum({}), 0)::text FROM {}{filter} GROUP BY 1",
            items.join(", "),
            self.hash,
            self.from
        )
    }
}

/// Heap blocks `[lo, hi)`; `None` bounds are open. The first slice of a
/// table starts at block 0 and the last is open above, so rows in blocks
/// added after planning are still read.
pub(crate) type BlockRange = (Option<u64>, Option<u64>);

/// `n` slices of a heap of `blocks` blocks (one open slice when `n` is 1).
pub(crate) fn block_slices(blocks: u64, n: usize) -> Vec<BlockRange> {
    let n = u64::try_from(n.max(1)).unwrap_or(1);
    let cut = |i: u64| blocks * i / n;
    (0..n)
        .map(|i| {
            let lo = (i > 0).then(|| cut(i));
            let hi = (i + 1 < n).then(|| cut(i + 1));
            (lo, hi)
        })
        .collect()
}

/// The relations holding the rows of table `$1`: itself, or the leaf
/// partitions of a partitioned table.
const LEAVES: &str =
    "SELECT $1::oid WHERE (SELECT relkind FROM pg_class WHERE oid = $1::oid) <> 'p' \
     UNION SELECT relid FROM pg_partition_tree($1::oid::regclass) WHERE isleaf";

/// Heap blocks of a table (all leaf partitions of a partitioned one) now.
pub(crate) async fn heap_blocks(client: &Client, side: Side, oid: u32) -> Result<u64, VerifyError> {
    let blocks: i64 = client
        .query_one(
            &format!(
                "SELECT (coalesce(sum(pg_relation_size(c.oid)), 0) \
                        / current_setting('block_size')::int)::int8 \
                 FROM pg_class c WHERE c.oid IN ({LEAVES})"
            ),
            &[&oid],
        )
        .await
        .map_err(|e| VerifyError::sql(side, "sizing a table", e))?
        .get(0);
    Ok(u64::try_from(blocks).unwrap_or(0))
}

/// The effective collation of the database default, e.g. `libc:C`.
pub(crate) async fn default_collation(client: &Client, side: Side) -> Result<String, VerifyError> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| VerifyError::sql(side, "reading the server version", e))?
        .get(0);
    let sql = if version >= 170000 {
        "SELECT CASE datlocprovider WHEN 'i' THEN 'icu:' || datlocale \
         WHEN 'b' THEN 'builtin:' || datlocale ELSE 'libc:' || datcollate END \
         FROM pg_database WHERE datname = current_database()"
    } else if version >= 150000 {
        "SELECT CASE datlocprovider WHEN 'i' THEN 'icu:' || daticulocale \
         ELSE 'libc:' || datcollate END FROM pg_database WHERE datname = current_database()"
    } else {
        "SELECT 'libc:' || datcollate FROM pg_database WHERE datname = current_database()"
    };
    let c: String = client
        .query_one(sql, &[])
        .await
        .map_err(|e| VerifyError::sql(side, "reading the database collation", e))?
        .get(0);
    Ok(normalize_collation(&c))
}

fn normalize_collation(c: &str) -> String {
    match c {
        "C" | "POSIX" | "libc:C" | "libc:POSIX" | "libc:C.UTF-8" | "libc:C.utf8" => {
            "libc:C".to_string()
        }
        other => other.to_string(),
    }
}

/// Loads a table's columns and indexes; `None` when it does not exist.
pub(crate) async fn load_table(
    client: &Client,
    side: Side,
    default_collation: &str,
    schema: &str,
    name: &str,
) -> Result<Option<SideTable>, VerifyError> {
    let what = || format!("reading the catalog for {schema}.{name}");
    let Some(row) = client
        .query_opt(
            "SELECT c.oid, format('%I.%I', n.nspname, c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'm', 'f')",
            &[&schema, &name],
        )
        .await
        .map_err(|e| VerifyError::sql(side, what(), e))?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let qualified: String = row.get(1);
    let columns = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    coalesce(co.collname::text, '') \
             FROM pg_attribute a LEFT JOIN pg_collation co ON co.oid = a.attcollation \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(|e| VerifyError::sql(side, what(), e))?
        .into_iter()
        .map(|r| {
            let coll: String = r.get(2);
            Column {
                name: r.get(0),
                ty: r.get(1),
                collation: match coll.as_str() {
                    "" => String::new(),
                    "default" => default_collation.to_string(),
                    other => normalize_collation(other),
                },
            }
        })
        .collect();
    let indexes = client
        .query(
            "SELECT i.indisprimary OR (i.indisunique AND bool_and(a.attnotnull) \
                    AND i.indpred IS NULL AND i.indexprs IS NULL), \
                    array_agg(a.attname::text ORDER BY k.ord) \
             FROM pg_index i \
             JOIN pg_class ic ON ic.oid = i.indexrelid \
             JOIN pg_am am ON am.oid = ic.relam AND am.amname = 'btree' \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisvalid AND k.ord <= i.indnkeyatts \
             GROUP BY i.indexrelid, i.indisprimary, i.indisunique, i.indpred IS NULL, \
                      i.indexprs IS NULL \
             ORDER BY i.indisprimary DESC, count(*), i.indexrelid",
            &[&oid],
        )
        .await
        .map_err(|e| VerifyError::sql(side, what(), e))?
        .into_iter()
        .map(|r| (r.get::<_, bool>(0), r.get::<_, Vec<String>>(1)))
        .collect();
    Ok(Some(SideTable {
        oid,
        qualified,
        columns,
        indexes,
    }))
}

/// What the two sides agree on for one table.
pub(crate) struct Pairing {
    pub source: SideSql,
    pub target: SideSql,
    /// Key column names (empty: checked as one range).
    pub key: Vec<String>,
    /// Why the table is not split although it has a key, for the log.
    pub unsplit_reason: Option<String>,
}

/// Builds both sides' SQL from the source column list; `Err(problem)` when
/// the target lacks source columns.
pub(crate) fn pair(src: &SideTable, tgt: &SideTable) -> Result<Pairing, String> {
    let mut tcols = Vec::with_capacity(src.columns.len());
    let mut missing = Vec::new();
    for c in &src.columns {
        match tgt.columns.iter().find(|t| t.name == c.name) {
            Some(t) => tcols.push(t.clone()),
            None => missing.push(c.name.clone()),
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "the target table lacks column(s) {}; add them (or copy the schema again)",
            missing.join(", ")
        ));
    }
    // Per column, a native hash when both sides have the same type and it
    // has one that is exact and stable across servers, else its text.
    let native: Vec<bool> = src
        .columns
        .iter()
        .zip(&tcols)
        .map(|(s, t)| s.ty == t.ty && native_hash(&s.ty, "c", 0).is_some())
        .collect();
    let hash = |cols: &[Column]| row_hash(cols, &native);
    let mut key: Vec<String> = src
        .indexes
        .iter()
        .find(|(usable, _)| *usable)
        .map(|(_, cols)| cols.clone())
        .unwrap_or_default();
    let mut unsplit_reason = None;
    if !key.is_empty() {
        let same_order = key.iter().all(|k| {
            let s = src.columns.iter().find(|c| &c.name == k);
            let t = tgt.columns.iter().find(|c| &c.name == k);
            matches!((s, t), (Some(s), Some(t)) if s.collation == t.collation)
        });
        let indexed = tgt
            .indexes
            .iter()
            .any(|(_, cols)| cols.len() >= key.len() && cols[..key.len()] == key[..]);
        if !same_order {
            unsplit_reason = Some(format!(
                "key ({}) has a different collation on the target, so key ranges would not \
                 hold the same rows; checking the whole table as one range",
                key.join(", ")
            ));
            key.clear();
        } else if !indexed {
            unsplit_reason = Some(format!(
                "the target has no btree index on ({}); checking the whole table as one range",
                key.join(", ")
            ));
            key.clear();
        }
    }
    let bucketable = key.len() == 1
        && [&src.columns, &tgt.columns].iter().all(|cols| {
            cols.iter()
                .find(|c| c.name == key[0])
                .is_some_and(|c| c.collation.is_empty())
        });
    let key_types = |cols: &[Column]| -> Vec<(String, String)> {
        key.iter()
            .map(|k| {
                let c = cols
                    .iter()
                    .find(|c| &c.name == k)
                    .expect("key column exists");
                (quote_ident(k), c.ty.clone())
            })
            .collect()
    };
    Ok(Pairing {
        source: SideSql {
            from: src.qualified.clone(),
            hash: hash(&src.columns),
            key: key_types(&src.columns),
            bucketable,
        },
        target: SideSql {
            from: tgt.qualified.clone(),
            hash: hash(&tcols),
            key: key_types(&tgt.columns),
            bucketable,
        },
        key,
        unsplit_reason,
    })
}

/// `<hash function>(<col>, seed)` for a type whose hash opclass function
/// is exact (equal hashes only for equal values, up to collisions) and
/// stable across servers and majors (it decides hash-partition routing,
/// which pg_upgrade keeps); text types hash their bytes (`COLLATE "C"`:
/// a nondeterministic collation would hash equal-comparing strings alike).
/// `None`: hash the value's text instead (enums hash their OID, numeric
/// ignores display scale, floats fold -0, and most types have no such
/// function callable from SQL).
fn native_hash(ty: &str, col: &str, seed: usize) -> Option<String> {
    let f = match ty {
        "smallint" => format!("hashint2extended({col}, {seed})"),
        "integer" => format!("hashint4extended({col}, {seed})"),
        "bigint" => format!("hashint8extended({col}, {seed})"),
        "uuid" => format!("uuid_hash_extended({col}, {seed})"),
        "text" => format!("hashtextextended({col} COLLATE \"C\", {seed})"),
        t if t == "character varying" || t.starts_with("character varying(") => {
            format!("hashtextextended({col}::text COLLATE \"C\", {seed})")
        }
        // Blank-padded: trailing blanks are insignificant to char(n)
        // equality and to its hash alike (its ::text cast is slow, too).
        t if t == "character" || t.starts_with("character(") => {
            format!("hashbpcharextended({col} COLLATE \"C\", {seed})")
        }
        _ => return None,
    };
    Some(f)
}

/// The row hash: every column hashed with its own seed (its position), a
/// NULL replaced by a per-position constant, the results XORed and mixed
/// once more by `hashint8extended`, so the sum over rows keeps each row's
/// values together (a plain sum of column hashes would not notice values
/// swapped between rows). About 3× cheaper per row than hashing
/// `ROW(…)::text`, whose text output dominates a scan (docs/verify.md).
fn row_hash(cols: &[Column], native: &[bool]) -> String {
    let parts: Vec<String> = cols
        .iter()
        .zip(native)
        .enumerate()
        .map(|(i, (c, &native))| {
            let col = quote_ident(&c.name);
            let seed = i + 1;
            let h = if native {
                native_hash(&c.ty, &col, seed).expect("checked native")
            } else {
                format!("hashtextextended({col}::text, {seed})")
            };
            format!("coalesce({h}, {})", -(seed as i64))
        })
        .collect();
    if parts.is_empty() {
        return "0::bigint".to_string();
    }
    format!("hashint8extended({}, 0)", parts.join(" # "))
}

/// Split points (each a key as text, one value per key column) cutting the
/// source table into ranges of about `range_rows` rows (empty: one range),
/// and the table's heap blocks (0 when it has no key and was not sized).
pub(crate) async fn split_points(
    client: &Client,
    table: &SideTable,
    key: &[String],
    range_rows: u64,
) -> Result<(Vec<Vec<String>>, u64), VerifyError> {
    if key.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let what = || format!("sizing {}", table.qualified);
    let row = client
        .query_one(
            &format!(
                "SELECT coalesce(sum(pg_relation_size(c.oid)), 0)::float8 \
                    / current_setting('block_size')::float8, \
                    coalesce(sum(greatest(c.reltuples, 0)), 0)::float8, \
                    coalesce(bool_and(c.reltuples >= 0), false) \
             FROM pg_class c WHERE c.oid IN ({LEAVES})"
            ),
            &[&table.oid],
        )
        .await
        .map_err(|e| VerifyError::sql(Side::Source, what(), e))?;
    let pages: f64 = row.get(0);
    // Whole blocks: relation sizes are multiples of the block size.
    let blocks = pages as u64;
    let tuples: f64 = row.get(1);
    let tuples_known: bool = row.get(2);
    let range_rows = range_rows.max(1) as f64;
    // Small tables: one range, no sample. Without statistics, a table under
    // ~8 MB is small whatever its rows.
    if (tuples_known && tuples < 1.5 * range_rows) || (!tuples_known && pages < 1000.0) {
        return Ok((Vec::new(), blocks));
    }
    let pct = if pages <= SAMPLE_PAGES {
        100.0
    } else {
        (100.0 * SAMPLE_PAGES / pages).max(0.0001)
    };
    let cols: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    // Aliased, so ORDER BY sorts by the key columns, not by their text.
    let texts: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c}::text AS pgrelay_k{i}"))
        .collect();
    let sql = format!(
        "SELECT {} FROM {} TABLESAMPLE SYSTEM ({pct:.6}) REPEATABLE (0) ORDER BY {}",
        texts.join(", "),
        table.qualified,
        cols.join(", ")
    );
    let rows = match client.query(&sql, &[]).await {
        Ok(rows) => rows,
        Err(e) if e.code().is_some() => {
            // e.g. a relation kind TABLESAMPLE does not support: still
            // correct as one range.
            tracing::warn!(table = %table.qualified, error = %e, "cannot sample the key; checking as one range");
            return Ok((Vec::new(), blocks));
        }
        Err(e) => return Err(VerifyError::sql(Side::Source, what(), e)),
    };
    let sample: Vec<Vec<String>> = rows
        .iter()
        .map(|r| (0..key.len()).map(|i| r.get::<_, String>(i)).collect())
        .collect();
    let estimated = sample.len() as f64 * 100.0 / pct;
    let n = ((estimated / range_rows).ceil() as usize)
        .clamp(1, MAX_RANGES)
        .min(sample.len().max(1));
    let mut points: Vec<Vec<String>> = (1..n)
        .map(|i| sample[i * sample.len() / n].clone())
        .collect();
    points.dedup();
    tracing::debug!(table = %table.qualified, pages, estimated, ranges = points.len() + 1, "split points");
    Ok((points, blocks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_query_shapes() {
        let s = SideSql {
            from: "\"s\".\"t\"".into(),
            hash: "h".into(),
            key: vec![
                ("\"a\"".into(), "integer".into()),
                ("\"b\"".into(), "text".into()),
            ],
            bucketable: false,
        };
        assert_eq!(
            s.range_query(true, true),
            "SELECT count(*), coalesce(sum(h), 0)::text FROM \"s\".\"t\" WHERE (\"a\", \"b\") >= ($1::text::integer, $2::text::text) AND (\"a\", \"b\") < ($3::text::integer, $4::text::text)"
        );
        assert_eq!(
            s.range_query(false, false),
            "SELECT count(*), coalesce(sum(h), 0)::text FROM \"s\".\"t\""
        );
        let one = SideSql {
            key: vec![("\"id\"".into(), "bigint".into())],
            ..s
        };
        assert!(one
            .range_query(false, true)
            .ends_with("WHERE \"id\" < $1::text::bigint"));
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn bucket_query_inlines_quoted_points() {
        let s = SideSql {
            from: "t".into(),
            hash: "h".into(),
            key: vec![("\"id\"".into(), "bigint".into())],
            bucketable: true,
        };
        assert_eq!(
            s.bucket_query(&[vec!["10".into()], vec!["2'0".into()]], (None, None)),
            "SELECT width_bucket(\"id\", ARRAY['10', '2''0']::text[]::bigint[]), count(*), \
             coalesce(sum(h), 0)::text FROM t GROUP BY 1"
        );
        assert!(s
            .bucket_query(&[vec!["1".into()]], (Some(5), Some(9)))
            .ends_with("FROM t WHERE ctid >= '(5,0)'::tid AND ctid < '(9,0)'::tid GROUP BY 1"));
    }

    #[test]
    fn block_slices_cover_the_heap_and_beyond() {
        assert_eq!(block_slices(100, 1), vec![(None, None)]);
        assert_eq!(
            block_slices(100, 3),
            vec![(None, Some(33)), (Some(33), Some(66)), (Some(66), None)]
        );
        // Fewer blocks than slices: empty slices, still disjoint and open
        // at both ends.
        assert_eq!(block_slices(1, 2), vec![(None, Some(0)), (Some(0), None)]);
    }
}
