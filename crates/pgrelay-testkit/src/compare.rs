//! The one equality check every replication test ends with.
//!
//! Two databases are equal when they hold the same user tables and, per
//! table, the same row count and the same hash over every row's text form.
//! Rows are hashed one by one (`md5(t::text)`) and the row hashes are
//! aggregated in sorted order, so physical order does not matter but every
//! byte of every value does, and memory stays at 32 bytes per row. Both
//! sessions pin the settings that change text output (TimeZone, DateStyle,
//! IntervalStyle, extra_float_digits, bytea_output), so servers of different
//! majors and configurations compare equal when their data is.

use std::collections::BTreeMap;
use std::fmt;

use tokio_postgres::Client;

use crate::cluster::describe;

/// Schemas never compared: catalogs, and pgrelay's own progress schema.
const SKIPPED_SCHEMAS: &[&str] = &["pg_catalog", "information_schema", "pgrelay"];

const PIN_OUTPUT: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'";

/// Row count and ordered row hash of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDigest {
    pub rows: i64,
    pub hash: String,
}

/// What differs between two databases; empty when they are equal.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub tables_compared: usize,
    pub differences: Vec<TableDifference>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableDifference {
    OnlyLeft(String),
    OnlyRight(String),
    Rows {
        table: String,
        left: TableDigest,
        right: TableDigest,
    },
}

impl Comparison {
    pub fn is_equal(&self) -> bool {
        self.differences.is_empty()
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_equal() {
            return write!(f, "{} tables equal", self.tables_compared);
        }
        writeln!(
            f,
            "{} of {} tables differ:",
            self.differences.len(),
            self.tables_compared
        )?;
        for d in &self.differences {
            match d {
                TableDifference::OnlyLeft(t) => writeln!(f, "  {t}: only on the left")?,
                TableDifference::OnlyRight(t) => writeln!(f, "  {t}: only on the right")?,
                TableDifference::Rows { table, left, right } => writeln!(
                    f,
                    "  {table}: left {} rows (hash {}), right {} rows (hash {})",
                    left.rows, left.hash, right.rows, right.hash
                )?,
            }
        }
        Ok(())
    }
}

/// Digest of every user table, keyed by `schema.table` (quoted only where
/// needed by `regclass` output).
pub async fn digest_database(
    client: &Client,
) -> Result<BTreeMap<String, TableDigest>, tokio_postgres::Error> {
    client.batch_execute(PIN_OUTPUT).await?;
    let skipped: Vec<String> = SKIPPED_SCHEMAS.iter().map(|s| s.to_string()).collect();
    let tables = client
        .query(
            "SELECT c.oid::regclass::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND NOT (n.nspname = ANY($1))
                AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
              ORDER BY 1",
            &[&skipped],
        )
        .await?;
    let mut out = BTreeMap::new();
    for row in tables {
        let table: String = row.get(0);
        let sql = format!(
            "SELECT count(*), coalesce(md5(string_agg(h, '' ORDER BY h)), '') \
               FROM (SELECT md5(t::text) AS h FROM ONLY {table} t) s"
        );
        let r = client.query_one(&sql, &[]).await?;
        out.insert(
            table,
            TableDigest {
                rows: r.get(0),
                hash: r.get(1),
            },
        );
    }
    Ok(out)
}

/// Compares every user table of two databases.
pub async fn compare_databases(
    left: &Client,
    right: &Client,
) -> Result<Comparison, tokio_postgres::Error> {
    let (l, r) = tokio::try_join!(digest_database(left), digest_database(right))?;
    let mut cmp = Comparison::default();
    let names: std::collections::BTreeSet<&String> = l.keys().chain(r.keys()).collect();
    cmp.tables_compared = names.len();
    for name in names {
        match (l.get(name), r.get(name)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => cmp.differences.push(TableDifference::Rows {
                table: name.clone(),
                left: a.clone(),
                right: b.clone(),
            }),
            (Some(_), None) => cmp
                .differences
                .push(TableDifference::OnlyLeft(name.clone())),
            (None, Some(_)) => cmp
                .differences
                .push(TableDifference::OnlyRight(name.clone())),
            (None, None) => {}
        }
    }
    Ok(cmp)
}

/// Panics with the differing tables unless both databases are equal.
pub async fn assert_databases_equal(left: &Client, right: &Client) {
    let cmp = compare_databases(left, right)
        .await
        .unwrap_or_else(|e| panic!("comparing databases failed: {}", describe(&e)));
    assert!(cmp.is_equal(), "databases differ: {cmp}");
}
