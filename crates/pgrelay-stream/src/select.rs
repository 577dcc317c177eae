//! Which source tables a pipeline replicates: include and exclude globs
//! over `schema.table`, resolved against the source catalog.
//!
//! Invariants: system schemas and pgrelay's own `pgrelay` schema are never
//! selected; partitions are represented by their root (the publication is
//! created with `publish_via_partition_root` where available), so a
//! partitioned table is one selected table. PostgreSQL docs: "pg_class",
//! "CREATE PUBLICATION".

use tokio_postgres::Client;

/// Include/exclude globs (`*` any run, `?` one character).
#[derive(Clone, Debug, Default)]
pub struct TableSelection {
    include: Vec<(String, String)>,
    exclude: Vec<(String, String)>,
}

/// A selected table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// Schema.
    pub schema: String,
    /// Table.
    pub name: String,
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // For messages: quoted only where a human would quote.
        f.write_str(&display_qualified(&self.schema, &self.name))
    }
}

pub use pgrelay_types::sql::{display_qualified, quote_ident, quote_literal};

fn split(pattern: &str) -> Result<(String, String), String> {
    let p = pattern.trim();
    if p.is_empty() {
        return Err("empty table pattern".into());
    }
    Ok(match p.split_once('.') {
        Some((s, t)) if !s.is_empty() && !t.is_empty() => (s.to_owned(), t.to_owned()),
        Some(_) => return Err(format!("table pattern {pattern:?} must be schema.table")),
        None => ("public".to_owned(), p.to_owned()),
    })
}

/// Glob match of `*` and `?`.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

impl TableSelection {
    /// From patterns; no includes means every user table.
    pub fn new(include: Vec<String>, exclude: Vec<String>) -> Result<Self, String> {
        Ok(TableSelection {
            include: include.iter().map(|p| split(p)).collect::<Result<_, _>>()?,
            exclude: exclude.iter().map(|p| split(p)).collect::<Result<_, _>>()?,
        })
    }

    /// Whether `schema.name` is selected.
    pub fn matches(&self, schema: &str, name: &str) -> bool {
        if schema == "pgrelay" {
            return false;
        }
        let inc = self.include.is_empty()
            || self
                .include
                .iter()
                .any(|(s, t)| glob(s, schema) && glob(t, name));
        inc && !self
            .exclude
            .iter()
            .any(|(s, t)| glob(s, schema) && glob(t, name))
    }

    /// Patterns that name a table literally (no glob) but match nothing:
    /// most likely a typo, reported before anything starts.
    pub fn literal_misses(&self, found: &[TableName]) -> Vec<String> {
        self.include
            .iter()
            .filter(|(s, t)| !s.contains(['*', '?']) && !t.contains(['*', '?']))
            .filter(|(s, t)| !found.iter().any(|f| &f.schema == s && &f.name == t))
            .map(|(s, t)| format!("{s}.{t}"))
            .collect()
    }

    /// The selected tables of the connected database: ordinary tables and
    /// partitioned roots, not partitions, not in system schemas.
    pub async fn resolve(&self, client: &Client) -> Result<Vec<TableName>, tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT n.nspname::text, c.relname::text
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind IN ('r','p') AND NOT c.relispartition
                    AND n.nspname NOT IN ('pg_catalog','information_schema','pgrelay')
                    AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
                    AND c.relpersistence = 'p'
                  ORDER BY 1, 2",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| TableName {
                schema: r.get(0),
                name: r.get(1),
            })
            .filter(|t| self.matches(&t.schema, &t.name))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "abc"));
        assert!(glob("a*c", "abbbc"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(glob("audit_*", "audit_log"));
        assert!(!glob("audit_*", "xaudit_log"));
    }

    #[test]
    fn selection() {
        let s =
            TableSelection::new(vec!["public.*".into()], vec!["public.audit_log".into()]).unwrap();
        assert!(s.matches("public", "users"));
        assert!(!s.matches("public", "audit_log"));
        assert!(!s.matches("other", "users"));
        let all = TableSelection::new(vec![], vec![]).unwrap();
        assert!(all.matches("x", "y"));
        assert!(!all.matches("pgrelay", "progress"));
        let plain = TableSelection::new(vec!["users".into()], vec![]).unwrap();
        assert!(plain.matches("public", "users"));
        assert_eq!(plain.literal_misses(&[]), vec!["public.users".to_string()]);
        let t = |s: &str, n: &str| TableName {
            schema: s.into(),
            name: n.into(),
        };
        assert_eq!(t("public", "Users").to_string(), "public.\"Users\"");
        assert_eq!(t("public", "users").to_string(), "public.users");
    }
}
