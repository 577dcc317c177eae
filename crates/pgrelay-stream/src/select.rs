//! Which source tables a pipeline replicates: include and exclude globs
//! over `schema.table`, resolved against the source catalog.
//!
//! A pattern is `table` (schema `public`), `schema.table`, or
//! `database.schema.table`: the three-part form applies only in the
//! databases its first part matches (a multi-database migration is one
//! pipeline per database, and each pipeline's selection is bound to its
//! database with [`TableSelection::for_database`]). When the includes are
//! not empty but none applies to a database, nothing is selected there:
//! `app.public.*` must not mean "everything" in `billing`.
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
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
    /// The database this selection is applied in; patterns qualified with
    /// another database are ignored (and never match while unbound).
    database: Option<String>,
}

/// One parsed pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    database: Option<String>,
    schema: String,
    table: String,
}

impl Pattern {
    fn is_literal(&self) -> bool {
        !self.schema.contains(['*', '?'])
            && !self.table.contains(['*', '?'])
            && !self
                .database
                .as_deref()
                .is_some_and(|d| d.contains(['*', '?']))
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(d) = &self.database {
            write!(f, "{d}.")?;
        }
        write!(f, "{}.{}", self.schema, self.table)
    }
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

fn split(pattern: &str) -> Result<Pattern, String> {
    let p = pattern.trim();
    if p.is_empty() {
        return Err("empty table pattern".into());
    }
    let parts: Vec<&str> = p.split('.').collect();
    if parts.iter().any(|s| s.is_empty()) || parts.len() > 3 {
        return Err(format!(
            "table pattern {pattern:?} must be table, schema.table or database.schema.table"
        ));
    }
    let own = |s: &str| s.to_owned();
    Ok(match parts[..] {
        [t] => Pattern {
            database: None,
            schema: "public".to_owned(),
            table: own(t),
        },
        [s, t] => Pattern {
            database: None,
            schema: own(s),
            table: own(t),
        },
        [d, s, t] => Pattern {
            database: Some(own(d)),
            schema: own(s),
            table: own(t),
        },
        _ => unreachable!("checked above"),
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
            database: None,
        })
    }

    /// The same patterns, applied in `database`.
    pub fn for_database(&self, database: &str) -> Self {
        TableSelection {
            database: Some(database.to_owned()),
            ..self.clone()
        }
    }

    /// Leaves out one table of this selection's database (the interactive
    /// choices), taken literally rather than parsed as a pattern.
    pub fn exclude_table(&mut self, schema: &str, name: &str) {
        self.exclude.push(Pattern {
            database: None,
            schema: schema.to_owned(),
            table: name.to_owned(),
        });
    }

    /// Whether the pattern applies in this selection's database.
    fn applies(&self, p: &Pattern) -> bool {
        match (&p.database, &self.database) {
            (None, _) => true,
            (Some(d), Some(db)) => glob(d, db),
            (Some(_), None) => false,
        }
    }

    fn hit(&self, p: &Pattern, schema: &str, name: &str) -> bool {
        self.applies(p) && glob(&p.schema, schema) && glob(&p.table, name)
    }

    /// Whether `schema.name` is selected.
    pub fn matches(&self, schema: &str, name: &str) -> bool {
        if schema == "pgrelay" {
            return false;
        }
        let inc = self.include.is_empty() || self.include.iter().any(|p| self.hit(p, schema, name));
        inc && !self.exclude.iter().any(|p| self.hit(p, schema, name))
    }

    /// Patterns that name a table literally (no glob) but match nothing:
    /// most likely a typo, reported before anything starts. A pattern
    /// qualified with a database glob is not literal: the table may well
    /// exist in only some of those databases.
    pub fn literal_misses(&self, found: &[TableName]) -> Vec<String> {
        self.include
            .iter()
            .filter(|p| p.is_literal() && self.applies(p))
            .filter(|p| {
                !found
                    .iter()
                    .any(|f| f.schema == p.schema && f.name == p.table)
            })
            .map(|p| p.to_string())
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
        assert!(TableSelection::new(vec!["a.b.c.d".into()], vec![]).is_err());
        assert!(TableSelection::new(vec!["a..c".into()], vec![]).is_err());
    }

    #[test]
    fn database_qualified() {
        let s = TableSelection::new(
            vec![],
            vec!["app.public.audit".into(), "bill*.*.tmp_*".into()],
        )
        .unwrap();
        let app = s.for_database("app");
        assert!(!app.matches("public", "audit"));
        assert!(app.matches("public", "tmp_x"));
        let billing = s.for_database("billing");
        assert!(billing.matches("public", "audit"));
        assert!(!billing.matches("other", "tmp_x"));
        // Unbound: qualified patterns never apply.
        assert!(s.matches("public", "audit"));

        // Includes for another database select nothing here.
        let inc = TableSelection::new(vec!["app.public.*".into()], vec![]).unwrap();
        assert!(inc.for_database("app").matches("public", "t"));
        assert!(!inc.for_database("billing").matches("public", "t"));
        let lit = TableSelection::new(vec!["app.public.users".into()], vec![]).unwrap();
        assert_eq!(
            lit.for_database("app").literal_misses(&[]),
            vec!["app.public.users".to_string()]
        );
        assert!(lit.for_database("billing").literal_misses(&[]).is_empty());
        let mut more = TableSelection::default().for_database("app");
        more.exclude_table("public", "big");
        assert!(!more.matches("public", "big"));
    }
}
