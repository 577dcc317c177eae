//! Several source databases in one configuration: `databases:` (or
//! `--database`/`--exclude-database`) expands into one pipeline per
//! matching source database.
//!
//! A logical replication slot belongs to one database, so a migration of
//! several databases is several pipelines: each reads the source database
//! of its name and writes the database of the same name on every target
//! (the URLs' dbname replaced), with its own slot and publication named
//! `<slot>_<database>` and its targets named `TARGET/DATABASE` (in logs,
//! metrics, `/health` and `status`). Table patterns qualified with a
//! database (`db.schema.table`) apply in the databases they name.
//!
//! Invariants: candidates are the source's `pg_database` rows that allow
//! connections and are not templates; `postgres` is only selected when an
//! include names it literally (it is the maintenance database, rarely what
//! a "every database" migration means); a literal include that matches no
//! database is an error, not an empty run; pipeline names are valid slot
//! names (`a-z`, `0-9`, `_`, at most 63 bytes), stable for a database
//! whatever other databases exist, and unique (checked). Without a
//! database selection nothing changes: one pipeline, the slot as written.
//! PostgreSQL docs: "pg_database", "Replication Slots" (slot names),
//! "Logical Replication: Restrictions" (one database per subscription).

use pgrelay_source::Config;

use crate::config::{ConfigError, StreamConfig};
use crate::select::glob;
use crate::StreamError;

/// Include/exclude globs over source database names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatabaseSelection {
    include: Vec<String>,
    exclude: Vec<String>,
}

/// A source database a selection can choose from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseInfo {
    /// `datname`.
    pub name: String,
    /// `pg_database_size`, when the role may connect to it.
    pub bytes: Option<i64>,
}

fn has_glob(p: &str) -> bool {
    p.contains(['*', '?'])
}

impl DatabaseSelection {
    /// From patterns; no includes means every database but `postgres`.
    pub fn new(include: Vec<String>, exclude: Vec<String>) -> Result<Self, String> {
        let clean = |v: Vec<String>| -> Result<Vec<String>, String> {
            v.into_iter()
                .map(|p| {
                    let p = p.trim().to_owned();
                    if p.is_empty() {
                        Err("empty database pattern".to_owned())
                    } else {
                        Ok(p)
                    }
                })
                .collect()
        };
        Ok(DatabaseSelection {
            include: clean(include)?,
            exclude: clean(exclude)?,
        })
    }

    /// Whether the database `name` is selected.
    pub fn matches(&self, name: &str) -> bool {
        if name == "postgres" && !self.include.iter().any(|p| p == "postgres") {
            return false;
        }
        let inc = self.include.is_empty() || self.include.iter().any(|p| glob(p, name));
        inc && !self.exclude.iter().any(|p| glob(p, name))
    }

    /// Includes naming a database literally that is not among `found`.
    pub fn literal_misses(&self, found: &[String]) -> Vec<String> {
        self.include
            .iter()
            .filter(|p| !has_glob(p) && !found.contains(p))
            .cloned()
            .collect()
    }
}

/// The source's databases that a selection may choose from, by name.
pub async fn list(source: &Config) -> Result<Vec<DatabaseInfo>, StreamError> {
    let client = pgrelay_source::connect_sql(source).await?;
    let rows = client
        .query(
            "SELECT datname::text,
                    CASE WHEN has_database_privilege(oid, 'CONNECT') THEN pg_database_size(oid) END
               FROM pg_database
              WHERE datallowconn AND NOT datistemplate
              ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| StreamError::Fatal(format!("listing the source's databases: {e}")))?;
    Ok(rows
        .iter()
        .map(|r| DatabaseInfo {
            name: r.get(0),
            bytes: r.get(1),
        })
        .collect())
}

/// 32-bit FNV-1a: a stable, dependency-free hash for name suffixes.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// `<base>_<database>` as a valid slot/publication name. A database name
/// that is already lower-case letters, digits and `_` and fits is used as
/// is; otherwise it is folded (upper case lowered, anything else `_`),
/// truncated, and a hash of the original name is appended, so two
/// databases that fold alike still get different names and a database's
/// name never depends on which other databases exist.
pub fn pipeline_name(base: &str, database: &str) -> String {
    const MAX: usize = 63;
    let folded: String = database
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let plain = format!("{base}_{folded}");
    if folded == database && plain.len() <= MAX {
        return plain;
    }
    let hash = format!("{:08x}", fnv1a(database.as_bytes()));
    // base (<= 40 bytes here) + '_' + part + '_' + 8 hex digits.
    let base: String = base.chars().take(40).collect();
    let room = MAX - base.len() - 2 - hash.len();
    let part: String = folded.chars().take(room).collect();
    format!("{base}_{part}_{hash}")
}

/// The pipeline of `database`: source and targets pointed at it, slot and
/// publication suffixed, targets named `TARGET/DATABASE`, table patterns
/// bound to it.
pub fn for_database(config: &StreamConfig, database: &str) -> StreamConfig {
    let mut c = config.clone();
    c.source.dbname = database.to_owned();
    c.slot = pipeline_name(&config.slot, database);
    c.publication = pipeline_name(&config.publication, database);
    for t in &mut c.targets {
        t.config.dbname = database.to_owned();
        t.name = format!("{}/{database}", t.name);
    }
    c.tables = config.tables.for_database(database);
    c.databases = None;
    c.database = Some(database.to_owned());
    c
}

/// One configuration per selected database among `available` (the
/// source's connectable, non-template databases); `config` itself when it
/// has no database selection.
pub fn expand_with(
    config: &StreamConfig,
    available: &[String],
) -> Result<Vec<StreamConfig>, ConfigError> {
    let Some(selection) = &config.databases else {
        return Ok(vec![config.clone()]);
    };
    let misses = selection.literal_misses(available);
    if !misses.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "database(s) {} not found on the source (it has: {}); fix databases.include or --database",
            misses.join(", "),
            available.join(", ")
        )));
    }
    let chosen: Vec<&String> = available.iter().filter(|d| selection.matches(d)).collect();
    if chosen.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "no source database matches the database selection (the source has: {}); fix databases.include/exclude or --database/--exclude-database",
            available.join(", ")
        )));
    }
    let out: Vec<StreamConfig> = chosen.iter().map(|d| for_database(config, d)).collect();
    let mut seen = std::collections::HashSet::new();
    for c in &out {
        if !seen.insert(c.slot.clone()) {
            return Err(ConfigError::Invalid(format!(
                "two databases would share the slot name {}; exclude one of them",
                c.slot
            )));
        }
    }
    Ok(out)
}

/// Lists the source's databases (when the configuration selects several)
/// and returns one configuration per selected database.
pub async fn expand(config: &StreamConfig) -> Result<Vec<StreamConfig>, StreamError> {
    if config.databases.is_none() {
        return Ok(vec![config.clone()]);
    }
    let names: Vec<String> = list(&config.source)
        .await?
        .into_iter()
        .map(|d| d.name)
        .collect();
    Ok(expand_with(config, &names)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{from_yaml, Overrides};

    #[test]
    fn selection() {
        let all = DatabaseSelection::new(vec![], vec!["template*".into()]).unwrap();
        assert!(all.matches("app"));
        assert!(!all.matches("postgres"));
        assert!(!all.matches("template_x"));
        let explicit =
            DatabaseSelection::new(vec!["postgres".into(), "a*".into()], vec![]).unwrap();
        assert!(explicit.matches("postgres"));
        assert!(explicit.matches("ab"));
        assert!(!explicit.matches("b"));
        let glob_only = DatabaseSelection::new(vec!["*".into()], vec![]).unwrap();
        assert!(!glob_only.matches("postgres"));
        assert_eq!(
            explicit.literal_misses(&["ab".into()]),
            vec!["postgres".to_string()]
        );
    }

    #[test]
    fn names() {
        assert_eq!(pipeline_name("pgrelay", "app"), "pgrelay_app");
        let weird = pipeline_name("pgrelay", "App-Prod");
        assert!(weird.starts_with("pgrelay_app_prod_"), "{weird}");
        assert_ne!(weird, pipeline_name("pgrelay", "app_prod"));
        assert_ne!(weird, pipeline_name("pgrelay", "App_Prod"));
        let long = pipeline_name(&"s".repeat(63), &"d".repeat(70));
        assert!(long.len() <= 63, "{long}");
        for n in [weird, long, pipeline_name("p", "ünïcødé db")] {
            assert!(n
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        }
    }

    #[test]
    fn expansion() {
        let text = r#"
source: { url: "postgres://u:secret@h/postgres", slot: mig }
targets: [{ name: new, url: "postgres://u@t/postgres" }]
databases: { exclude: ["skip*"] }
tables: { exclude: ["app.public.audit"] }
"#;
        let c = from_yaml(text, "f.yml", &Overrides::default()).unwrap();
        let available: Vec<String> = ["app", "billing", "postgres", "skip_me"]
            .map(String::from)
            .to_vec();
        let out = expand_with(&c, &available).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].slot, "mig_app");
        assert_eq!(out[0].publication, "mig_app");
        assert_eq!(out[0].source.dbname, "app");
        assert_eq!(out[0].targets[0].config.dbname, "app");
        assert_eq!(out[0].targets[0].name, "new/app");
        assert_eq!(out[0].database.as_deref(), Some("app"));
        assert!(!out[0].tables.matches("public", "audit"));
        assert!(out[1].tables.matches("public", "audit"));
        assert_eq!(out[1].slot, "mig_billing");
        assert!(out.iter().all(|c| c.databases.is_none()));

        let o = Overrides {
            databases: vec!["nope".into()],
            ..Default::default()
        };
        let c = from_yaml(text, "f.yml", &o).unwrap();
        let e = expand_with(&c, &available).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("billing"), "{e}");
        let o = Overrides {
            databases: vec!["x*".into()],
            ..Default::default()
        };
        let c = from_yaml(text, "f.yml", &o).unwrap();
        assert!(expand_with(&c, &available)
            .unwrap_err()
            .to_string()
            .contains("no source database matches"));
    }
}
