//! The streamer's configuration: the YAML file (`pgrelay.yml`) and the
//! command-line flags that can replace or override it.
//!
//! Invariants: every key is known (unknown keys are errors naming their
//! path and line, through pgrelay-config); URLs are parsed once here, so a
//! bad one fails before anything connects; [`StreamConfig`]'s `Debug`
//! never shows a password. The same top-level shape (`source`, `targets`,
//! `tables`, `listen`) is read by `pgrelay native`, which owns the
//! `native:` section this parser accepts and ignores.
//!
//! `databases:` (or `--database`/`--exclude-database`) makes the file
//! describe one pipeline per matching source database; [`load`] keeps the
//! selection in [`StreamConfig::databases`] and [`crate::databases::expand`]
//! turns it into the per-database configurations once the source's
//! database list is known. Without it nothing changes: one pipeline, the
//! slot named as written.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgrelay_config::ByteSize;
use pgrelay_source::Config;
use serde::Deserialize;

use crate::databases::DatabaseSelection;
use crate::select::TableSelection;

/// Where `--config` is looked for when not given.
pub const SEARCH_ORDER: &[&str] = &["./pgrelay.yml", "/etc/pgrelay/pgrelay.yml"];
/// Environment variable naming the file.
pub const CONFIG_ENV: &str = "PGRELAY_CONFIG";

/// The file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The source database.
    pub source: SourceSection,
    /// Target databases.
    #[serde(default)]
    pub targets: Vec<TargetSection>,
    /// Tables to replicate.
    #[serde(default)]
    pub tables: Option<TablesSection>,
    /// Source databases, one pipeline each (default: the source URL's).
    #[serde(default)]
    pub databases: Option<TablesSection>,
    /// Batching, queues and spilling.
    #[serde(default)]
    pub apply: ApplySection,
    /// `/metrics` and `/health` address.
    #[serde(default)]
    pub listen: Option<String>,
    /// Owned by `pgrelay native`.
    #[serde(default)]
    pub native: Option<serde::de::IgnoredAny>,
}

/// `source:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// Connection URL or key=value string.
    pub url: String,
    /// Replication slot (also the pipeline's name on targets).
    #[serde(default)]
    pub slot: Option<String>,
    /// Publication.
    #[serde(default)]
    pub publication: Option<String>,
}

/// One of `targets:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// Short name used in metrics, logs and /health.
    pub name: String,
    /// Connection URL or key=value string.
    pub url: String,
    /// Overrides `apply.session_replication_role` for this target.
    #[serde(default)]
    pub session_replication_role: Option<ReplicationRole>,
    /// Settings used by `pgrelay native`, accepted and ignored here.
    #[serde(default)]
    pub subscription: Option<serde::de::IgnoredAny>,
    /// Settings used by `pgrelay native`, accepted and ignored here.
    #[serde(default)]
    pub settings: Option<serde::de::IgnoredAny>,
}

/// `tables:` (and `databases:`) — either `{include, exclude}` or a plain
/// list of includes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TablesSection {
    /// `[a, b]`.
    List(Vec<String>),
    /// `{include: [...], exclude: [...]}`.
    Map(TablesMap),
}

/// `tables: {include, exclude}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablesMap {
    /// Globs over `schema.table` (a name without a dot means `public.`).
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs removed from the included set.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// `session_replication_role` on target sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationRole {
    /// Triggers and FK checks behave as under native replication.
    #[default]
    Replica,
    /// Ordinary triggers fire and FKs are checked.
    Origin,
}

/// `apply:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplySection {
    /// Rows per target transaction.
    pub max_batch_rows: usize,
    /// Bytes of changes per target transaction.
    pub max_batch_bytes: ByteSize,
    /// Longest time a target transaction stays open.
    #[serde(with = "pgrelay_config::duration")]
    pub max_batch_delay: Duration,
    /// Where backlogs and large transactions spill.
    pub spill_dir: Option<PathBuf>,
    /// Disk the spills may use, all targets together.
    pub spill_budget: ByteSize,
    /// Memory per target queue before it spills.
    pub queue_memory: ByteSize,
    /// Memory for transactions being received before they spill.
    pub transaction_memory: ByteSize,
    /// Default for every target.
    pub session_replication_role: ReplicationRole,
    /// Parallel source connections during the initial copy.
    pub copy_workers: usize,
    /// Longest wait between reconnect attempts.
    #[serde(with = "pgrelay_config::duration")]
    pub max_retry_delay: Duration,
}

impl Default for ApplySection {
    fn default() -> Self {
        ApplySection {
            max_batch_rows: 10_000,
            max_batch_bytes: ByteSize(16 << 20),
            max_batch_delay: Duration::from_millis(100),
            spill_dir: None,
            spill_budget: ByteSize(4 << 30),
            queue_memory: ByteSize(32 << 20),
            transaction_memory: ByteSize(64 << 20),
            session_replication_role: ReplicationRole::Replica,
            copy_workers: 4,
            max_retry_delay: Duration::from_secs(30),
        }
    }
}

/// A target, resolved.
#[derive(Clone)]
pub struct TargetConfig {
    /// Its name.
    pub name: String,
    /// Its connection settings.
    pub config: Config,
    /// Role for its sessions.
    pub role: ReplicationRole,
}

impl std::fmt::Debug for TargetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.config.redacted())
    }
}

/// Everything the streamer needs, resolved and validated.
#[derive(Clone)]
pub struct StreamConfig {
    /// Source connection.
    pub source: Config,
    /// Slot name; also names the pipeline on targets.
    pub slot: String,
    /// Publication name.
    pub publication: String,
    /// Targets, in file order.
    pub targets: Vec<TargetConfig>,
    /// Tables (bound to the source database, see [`TableSelection::for_database`]).
    pub tables: TableSelection,
    /// `databases:`: still to be expanded into one pipeline per database
    /// ([`crate::databases::expand`]); `None` for a single database and
    /// for the expanded pipelines.
    pub databases: Option<DatabaseSelection>,
    /// The source database of a pipeline expanded from `databases:`
    /// (its targets are named `TARGET/DATABASE`); `None` otherwise.
    pub database: Option<String>,
    /// Batching and spilling.
    pub apply: ApplyConfig,
    /// HTTP listen address.
    pub listen: Option<SocketAddr>,
}

/// `apply:` resolved.
#[derive(Clone, Debug)]
pub struct ApplyConfig {
    /// See [`ApplySection`].
    pub max_batch_rows: usize,
    /// See [`ApplySection`].
    pub max_batch_bytes: usize,
    /// See [`ApplySection`].
    pub max_batch_delay: Duration,
    /// See [`ApplySection`].
    pub spill_dir: PathBuf,
    /// See [`ApplySection`].
    pub spill_budget: u64,
    /// See [`ApplySection`].
    pub queue_memory: usize,
    /// See [`ApplySection`].
    pub transaction_memory: usize,
    /// See [`ApplySection`].
    pub copy_workers: usize,
    /// See [`ApplySection`].
    pub max_retry_delay: Duration,
}

impl std::fmt::Debug for StreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamConfig")
            .field("source", &self.source.redacted())
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("targets", &self.targets)
            .field("tables", &self.tables)
            .field("databases", &self.databases)
            .field("database", &self.database)
            .field("apply", &self.apply)
            .field("listen", &self.listen)
            .finish()
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed.
    #[error(transparent)]
    File(#[from] pgrelay_config::ConfigFileError),
    /// A value is wrong.
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// Never: configuration needs an operator.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// Command-line values that replace or extend the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--source`.
    pub source: Option<String>,
    /// `--target NAME=URL`.
    pub targets: Vec<(String, String)>,
    /// `--slot`.
    pub slot: Option<String>,
    /// `--publication`.
    pub publication: Option<String>,
    /// `--table`.
    pub include: Vec<String>,
    /// `--exclude`.
    pub exclude: Vec<String>,
    /// `--database` (replaces `databases.include`).
    pub databases: Vec<String>,
    /// `--exclude-database` (adds to `databases.exclude`).
    pub exclude_databases: Vec<String>,
    /// `--listen`.
    pub listen: Option<String>,
}

/// The file to read: `--config`, then `$PGRELAY_CONFIG`, then the search
/// order; `None` when none exists (flags alone may suffice).
pub fn locate(explicit: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(p) = explicit {
        if !p.is_file() {
            return Err(ConfigError::Invalid(format!(
                "--config {}: no such file",
                p.display()
            )));
        }
        return Ok(Some(p.to_owned()));
    }
    if let Ok(p) = std::env::var(CONFIG_ENV) {
        if !p.is_empty() {
            let p = PathBuf::from(p);
            if !p.is_file() {
                return Err(ConfigError::Invalid(format!(
                    "${CONFIG_ENV}={}: no such file",
                    p.display()
                )));
            }
            return Ok(Some(p));
        }
    }
    Ok(pgrelay_config::find(SEARCH_ORDER.iter().copied()))
}

/// Reads the file (if any) and applies the overrides.
pub fn load(file: Option<&Path>, o: &Overrides) -> Result<StreamConfig, ConfigError> {
    let parsed: Option<FileConfig> = match file {
        Some(p) => Some(pgrelay_config::load_file(p)?),
        None => None,
    };
    resolve(parsed, o)
}

/// Parses YAML text (for tests and `pgrelay demo`).
pub fn from_yaml(text: &str, origin: &str, o: &Overrides) -> Result<StreamConfig, ConfigError> {
    resolve(Some(pgrelay_config::from_yaml_str(text, origin)?), o)
}

fn parse_url(what: &str, url: &str) -> Result<Config, ConfigError> {
    Config::parse(url).map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))
}

fn resolve(file: Option<FileConfig>, o: &Overrides) -> Result<StreamConfig, ConfigError> {
    let (source_url, mut slot, mut publication, file_targets, tables, databases, apply, listen) =
        match file {
            Some(f) => (
                Some(f.source.url),
                f.source.slot,
                f.source.publication,
                f.targets,
                f.tables,
                f.databases,
                f.apply,
                f.listen,
            ),
            None => (
                None,
                None,
                None,
                Vec::new(),
                None,
                None,
                ApplySection::default(),
                None,
            ),
        };
    let source_url = o.source.clone().or(source_url).ok_or_else(|| {
        ConfigError::Invalid(
            "no source: pass --source URL or write source.url in pgrelay.yml (--config FILE)"
                .into(),
        )
    })?;
    let source = parse_url("source.url", &source_url)?;
    if o.slot.is_some() {
        slot = o.slot.clone();
    }
    if o.publication.is_some() {
        publication = o.publication.clone();
    }
    let slot = slot.unwrap_or_else(|| "pgrelay".to_owned());
    let publication = publication.unwrap_or_else(|| slot.clone());
    for (what, name) in [("slot", &slot), ("publication", &publication)] {
        let ok = !name.is_empty()
            && name.len() < 64
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(ConfigError::Invalid(format!(
                "{what} name {name:?} must be 1-63 characters of a-z, 0-9 and _"
            )));
        }
    }

    let mut targets = Vec::new();
    for t in &file_targets {
        let config = parse_url(&format!("targets[{}].url", t.name), &t.url)?;
        targets.push(TargetConfig {
            name: t.name.clone(),
            config,
            role: t
                .session_replication_role
                .unwrap_or(apply.session_replication_role),
        });
    }
    for (name, url) in &o.targets {
        let config = parse_url(&format!("--target {name}"), url)?;
        match targets.iter_mut().find(|t| &t.name == name) {
            Some(t) => t.config = config,
            None => targets.push(TargetConfig {
                name: name.clone(),
                config,
                role: apply.session_replication_role,
            }),
        }
    }
    if targets.is_empty() {
        return Err(ConfigError::Invalid(
            "no targets: pass --target NAME=URL or list targets in pgrelay.yml".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for t in &targets {
        let ok = !t.name.is_empty()
            && t.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(ConfigError::Invalid(format!(
                "target name {:?} must be letters, digits, - and _",
                t.name
            )));
        }
        if !seen.insert(&t.name) {
            return Err(ConfigError::Invalid(format!(
                "target name {:?} is used twice",
                t.name
            )));
        }
    }

    let (mut include, mut exclude) = match tables {
        None => (Vec::new(), Vec::new()),
        Some(TablesSection::List(l)) => (l, Vec::new()),
        Some(TablesSection::Map(m)) => (m.include, m.exclude),
    };
    if !o.include.is_empty() {
        include = o.include.clone();
    }
    exclude.extend(o.exclude.iter().cloned());
    let tables = TableSelection::new(include, exclude).map_err(ConfigError::Invalid)?;

    let databases = match (
        databases,
        o.databases.is_empty() && o.exclude_databases.is_empty(),
    ) {
        (None, true) => None,
        (file, _) => {
            let (mut include, mut exclude) = match file {
                None => (Vec::new(), Vec::new()),
                Some(TablesSection::List(l)) => (l, Vec::new()),
                Some(TablesSection::Map(m)) => (m.include, m.exclude),
            };
            if !o.databases.is_empty() {
                include = o.databases.clone();
            }
            exclude.extend(o.exclude_databases.iter().cloned());
            Some(DatabaseSelection::new(include, exclude).map_err(ConfigError::Invalid)?)
        }
    };
    // A single database: qualified table patterns apply when they name it.
    let tables = match databases {
        None => tables.for_database(&source.dbname),
        Some(_) => tables,
    };

    let listen = o.listen.clone().or(listen);
    let listen = match listen {
        None => None,
        Some(s) => Some(s.parse::<SocketAddr>().map_err(|_| {
            ConfigError::Invalid(format!(
                "listen address {s:?} is not HOST:PORT (e.g. 127.0.0.1:9187)"
            ))
        })?),
    };
    if apply.max_batch_rows == 0 || apply.copy_workers == 0 {
        return Err(ConfigError::Invalid(
            "apply.max_batch_rows and apply.copy_workers must be at least 1".into(),
        ));
    }
    Ok(StreamConfig {
        source,
        slot,
        publication,
        targets,
        tables,
        databases,
        database: None,
        apply: ApplyConfig {
            max_batch_rows: apply.max_batch_rows,
            max_batch_bytes: usize::try_from(apply.max_batch_bytes.0).unwrap_or(usize::MAX),
            max_batch_delay: apply.max_batch_delay,
            spill_dir: apply.spill_dir.unwrap_or_else(std::env::temp_dir),
            spill_budget: apply.spill_budget.0,
            queue_memory: usize::try_from(apply.queue_memory.0).unwrap_or(usize::MAX),
            transaction_memory: usize::try_from(apply.transaction_memory.0).unwrap_or(usize::MAX),
            copy_workers: apply.copy_workers,
            max_retry_delay: apply.max_retry_delay,
        },
        listen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file() {
        let text = r#"
source: { url: "postgres://u:secret@h/db", slot: s1, publication: p1 }
targets:
  - { name: east, url: "postgres://u@e/db" }
  - { name: west, url: "postgres://u@w/db", session_replication_role: origin }
tables: { include: ["public.*"], exclude: ["public.audit_log"] }
apply: { max_batch_rows: 500, max_batch_delay: 50ms, spill_budget: 1GiB }
listen: "127.0.0.1:9187"
"#;
        let c = from_yaml(text, "pgrelay.yml", &Overrides::default()).unwrap();
        assert_eq!(c.slot, "s1");
        assert_eq!(c.publication, "p1");
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.targets[1].role, ReplicationRole::Origin);
        assert_eq!(c.apply.max_batch_rows, 500);
        assert_eq!(c.apply.max_batch_delay, Duration::from_millis(50));
        assert_eq!(c.apply.spill_budget, 1 << 30);
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn unknown_key_is_named() {
        let text =
            "source: { url: \"host=h\" }\ntargets:\n  - { name: a, url: \"host=x\", ur: 1 }\n";
        let e = from_yaml(text, "f.yml", &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f.yml: line 3") && e.contains("targets[0].ur"),
            "{e}"
        );
    }

    #[test]
    fn flags_alone() {
        let o = Overrides {
            source: Some("host=h dbname=d".into()),
            targets: vec![("a".into(), "host=t".into())],
            ..Default::default()
        };
        let c = load(None, &o).unwrap();
        assert_eq!(c.slot, "pgrelay");
        assert_eq!(c.publication, "pgrelay");
        assert!(load(
            None,
            &Overrides {
                source: Some("host=h".into()),
                ..Default::default()
            }
        )
        .unwrap_err()
        .to_string()
        .contains("no targets"));
    }

    #[test]
    fn databases_key() {
        let text = r#"
source: { url: "postgres://u@h/postgres" }
targets: [{ name: new, url: "postgres://u@t/postgres" }]
databases: { include: ["app*"], exclude: ["app_old"] }
"#;
        let c = from_yaml(text, "f.yml", &Overrides::default()).unwrap();
        let d = c.databases.expect("databases");
        assert!(d.matches("app1"));
        assert!(!d.matches("app_old"));
        assert!(!d.matches("billing"));
        let list = "source: { url: \"host=h\" }\ntargets: [{ name: n, url: \"host=t\" }]\ndatabases: [a, b]\n";
        let c = from_yaml(list, "f.yml", &Overrides::default()).unwrap();
        assert!(c.databases.as_ref().unwrap().matches("b"));
        // Flags alone switch it on; --database replaces the file's includes.
        let o = Overrides {
            exclude_databases: vec!["b".into()],
            ..Default::default()
        };
        let c = from_yaml(list, "f.yml", &o).unwrap();
        let d = c.databases.unwrap();
        assert!(d.matches("a") && !d.matches("b"));
        let o = Overrides {
            databases: vec!["x".into()],
            ..Default::default()
        };
        let c = from_yaml(list, "f.yml", &o).unwrap();
        assert!(c.databases.unwrap().matches("x"));
        // Without databases: nothing changes.
        let single = "source: { url: \"host=h dbname=app\" }\ntargets: [{ name: n, url: \"host=t\" }]\ntables: { exclude: [app.public.a, other.public.b] }\n";
        let c = from_yaml(single, "f.yml", &Overrides::default()).unwrap();
        assert!(c.databases.is_none() && c.database.is_none());
        assert_eq!(c.slot, "pgrelay");
        assert!(!c.tables.matches("public", "a"));
        assert!(c.tables.matches("public", "b"));
    }
}
