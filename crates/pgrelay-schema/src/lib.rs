//! Schema copy for migrations: the DDL a target needs before the data
//! (pre-data) and after it (post-data), plus what logical replication does
//! not carry (roles and grants, large objects, sequence values).
//!
//! [`dump_schema`] uses a `pg_dump` whose major is at least the source's
//! (the oldest such one found, so its output suits older targets too) and
//! otherwise generates the DDL from the source's catalogs (always when
//! [`SchemaOptions::force_catalog`] is set). Either way the result is a list
//! of single statements, each with an [`ObjectKind`], run with simple
//! queries: pre-data in one transaction on one connection
//! ([`apply_pre_data`]), post-data on several connections after the rows are
//! loaded ([`apply_post_data`]: indexes and key constraints concurrently
//! across tables, then partition index attachments, then foreign keys, then
//! the rest in order). Invariants: every identifier that reaches SQL text is
//! quoted by the server (`quote_ident`, `pg_get_*def`) or by
//! [`split::quote_ident`]; role password verifiers are never logged or put
//! into errors ([`Statement`]'s `Debug` redacts them).
//! PostgreSQL docs: pg_dump (app-pgdump), "System Catalogs" (catalogs),
//! "System Information Functions" (functions-info), "Large Objects"
//! (largeobjects), "Sequence Manipulation Functions" (functions-sequence).

mod catalog;
mod data;
mod pgdump;
mod post;
mod roles;
pub mod split;

use std::fmt;
use std::path::PathBuf;

pub use data::{copy_large_objects, sync_sequences};
pub use pgdump::{find_pg_dump, pg_dump_major};
pub use post::{apply_post_data, apply_statements, PostDataReport};
pub use roles::{dump_roles, dump_roles_selected};

use pgrelay_source::SourceError;
use tokio_postgres::Client;

/// What the schema copy covers.
#[derive(Debug, Clone, Default)]
pub struct SchemaOptions {
    /// Schemas to copy; `None` = every user schema (not `pg_*`,
    /// `information_schema`, or pgrelay's own `pgrelay`).
    pub schemas: Option<Vec<String>>,
    /// `(schema, table)` pairs left out (with their indexes, constraints and
    /// triggers).
    pub exclude_tables: Vec<(String, String)>,
    /// Keep owners and privileges in the pg_dump output (the roles must
    /// exist on the target: apply [`dump_roles`] first). Without it the
    /// target's objects belong to the role that applies them.
    pub roles: bool,
    /// An explicit `pg_dump`; else `$PGRELAY_PG_DUMP`, `PATH`, `.pg/*/bin`
    /// and `/usr/lib/postgresql/*/bin` are searched.
    pub pg_dump: Option<PathBuf>,
    /// Generate the DDL from the catalogs even if a usable pg_dump exists.
    pub force_catalog: bool,
}

/// What a statement creates or changes; drives the order of the post-data
/// build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `SET ...` / `set_config(...)`: session settings, run first on every
    /// connection.
    Setting,
    Schema,
    Extension,
    /// Enum, domain, composite or other type.
    Type,
    Function,
    Sequence,
    Table,
    /// A partition (`PARTITION OF` / `ATTACH PARTITION`).
    Partition,
    /// A column default.
    Default,
    /// `ALTER SEQUENCE ... OWNED BY` and identity columns added afterwards.
    SequenceOwnedBy,
    View,
    MaterializedView,
    /// CHECK or exclusion constraint.
    Constraint,
    PrimaryKey,
    Unique,
    Index,
    /// `ALTER INDEX parent ATTACH PARTITION child`.
    IndexAttach,
    ReplicaIdentity,
    ForeignKey,
    Trigger,
    /// `REFRESH MATERIALIZED VIEW`.
    Refresh,
    Comment,
    /// `CREATE ROLE` / `ALTER ROLE` (may carry a password verifier).
    Role,
    /// `GRANT role TO role`.
    Membership,
    /// `GRANT ... ON object`.
    Grant,
    /// Anything else pg_dump writes (rules, policies, statistics, ...).
    Other,
}

/// One SQL statement of the copy.
#[derive(Clone, PartialEq, Eq)]
pub struct Statement {
    pub kind: ObjectKind,
    /// The object's name, schema-qualified where it has a schema (as pg_dump
    /// or the catalogs name it); for messages.
    pub name: String,
    pub sql: String,
    /// The table it works on (post-data grouping), as written in `sql`.
    pub table: Option<String>,
}

impl Statement {
    pub fn new(kind: ObjectKind, name: impl Into<String>, sql: impl Into<String>) -> Statement {
        let sql = sql.into();
        let table = match kind {
            ObjectKind::PrimaryKey
            | ObjectKind::Unique
            | ObjectKind::Constraint
            | ObjectKind::Index
            | ObjectKind::ForeignKey
            | ObjectKind::Trigger => split::statement_table(&sql),
            _ => None,
        };
        Statement {
            kind,
            name: name.into(),
            sql,
            table,
        }
    }

    /// The SQL text safe to show: role statements may carry a password
    /// verifier and are never shown.
    pub fn display_sql(&self) -> String {
        if self.kind == ObjectKind::Role {
            return format!("(role statement for {}, redacted)", self.name);
        }
        let mut s: String = self.sql.chars().take(300).collect();
        if s.len() < self.sql.len() {
            s.push_str(" ...");
        }
        s
    }
}

impl fmt::Debug for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Statement")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("sql", &self.display_sql())
            .field("table", &self.table)
            .finish()
    }
}

/// Where the DDL came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpSource {
    PgDump { path: PathBuf, major: u32 },
    Catalog,
}

/// The schema of the source, split at the data.
#[derive(Debug, Clone)]
pub struct SchemaDump {
    pub pre_data: Vec<Statement>,
    pub post_data: Vec<Statement>,
    /// Every copied sequence (serial, identity and free-standing) as
    /// `(schema, name)`, for [`sync_sequences`].
    pub sequences: Vec<(String, String)>,
    pub source: DumpSource,
}

/// Errors of the schema copy. [`SchemaError::is_transient`] says whether
/// retrying the same step can help.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("connect: {0}")]
    Connect(#[from] SourceError),

    #[error("{context}: {source}")]
    Query {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("{message}")]
    PgDump { message: String },

    #[error(
        "applying {kind:?} {name} on the target failed: {detail}; statement: {sql}. \
         Fix the object on the source or the target (or leave it out) and rerun; \
         pre-data is applied in one transaction, so nothing of it was kept"
    )]
    Apply {
        kind: ObjectKind,
        name: String,
        sql: String,
        detail: String,
        transient: bool,
    },

    #[error("{0}")]
    Unsupported(String),
}

impl SchemaError {
    pub fn is_transient(&self) -> bool {
        match self {
            SchemaError::Connect(e) => e.is_transient(),
            SchemaError::Query { source, .. } => pgrelay_source::is_transient_sql_error(source),
            SchemaError::Apply { transient, .. } => *transient,
            SchemaError::PgDump { .. } | SchemaError::Unsupported(_) => false,
        }
    }

    pub(crate) fn query(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| SchemaError::Query { context, source }
    }

    pub(crate) fn apply(statement: &Statement, e: &tokio_postgres::Error) -> Self {
        let detail = match e.as_db_error() {
            Some(db) => {
                let mut d = format!("{} ({})", db.message(), db.code().code());
                if let Some(h) = db.hint() {
                    d.push_str("; hint: ");
                    d.push_str(h);
                }
                d
            }
            None => e.to_string(),
        };
        SchemaError::Apply {
            kind: statement.kind,
            name: statement.name.clone(),
            sql: statement.display_sql(),
            detail,
            transient: pgrelay_source::is_transient_sql_error(e),
        }
    }
}

/// The source's major version (`server_version_num / 10000`).
pub async fn server_major(client: &Client) -> Result<u32, SchemaError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(SchemaError::query("read server_version_num"))?;
    let num: i32 = row.get(0);
    Ok((num / 10000) as u32)
}

/// The schemas the options select, in creation order, checked to exist.
pub(crate) async fn selected_schemas(
    source: &Client,
    options: &SchemaOptions,
) -> Result<Vec<String>, SchemaError> {
    let rows = source
        .query(
            "SELECT n.nspname FROM pg_catalog.pg_namespace n \
             WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname NOT IN ('information_schema', 'pgrelay') \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                   WHERE d.classid = 'pg_catalog.pg_namespace'::pg_catalog.regclass \
                     AND d.objid = n.oid AND d.deptype = 'e') \
             ORDER BY n.oid",
            &[],
        )
        .await
        .map_err(SchemaError::query("list schemas"))?;
    let all: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    match &options.schemas {
        None => Ok(all),
        Some(wanted) => {
            for w in wanted {
                if !all.contains(w) {
                    return Err(SchemaError::Unsupported(format!(
                        "schema {w:?} does not exist on the source (or belongs to an extension); \
                         check the schema list"
                    )));
                }
            }
            Ok(all.into_iter().filter(|s| wanted.contains(s)).collect())
        }
    }
}

/// Reads the source's schema. The catalog path runs in one REPEATABLE READ
/// read-only transaction on `source` (so every query sees one state), which
/// is why `source` must not be inside a transaction of the caller's.
pub async fn dump_schema(
    source_config: &pgrelay_source::Config,
    source: &Client,
    options: &SchemaOptions,
) -> Result<SchemaDump, SchemaError> {
    let major = server_major(source).await?;
    let schemas = selected_schemas(source, options).await?;
    let sequences = catalog::sequence_list(source, &schemas, &options.exclude_tables).await?;
    let tool = if options.force_catalog {
        None
    } else {
        pgdump::find_pg_dump(options.pg_dump.as_deref(), major).await?
    };
    let (pre_data, post_data, dump_source) = match tool {
        Some((path, tool_major)) => {
            tracing::info!(pg_dump = %path.display(), pg_dump_major = tool_major, source_major = major, "schema from pg_dump");
            let listed = options.schemas.is_some().then_some(&schemas[..]);
            let mut pg_dump_options = options.clone();
            pg_dump_options
                .exclude_tables
                .extend(catalog::sequences_of_excluded(source, &options.exclude_tables).await?);
            let (mut pre, mut post) =
                pgdump::dump(&path, source_config, &pg_dump_options, listed).await?;
            post.extend(catalog::refreshes(source, &schemas, &options.exclude_tables).await?);
            if listed.is_some() {
                // pg_dump --schema leaves extensions out; they go after
                // pg_dump's session settings.
                let at = pre
                    .iter()
                    .position(|s| s.kind != ObjectKind::Setting)
                    .unwrap_or(pre.len());
                let ext = catalog::extensions(source, &schemas).await?;
                pre.splice(at..at, ext);
            }
            (
                pre,
                post,
                DumpSource::PgDump {
                    path,
                    major: tool_major,
                },
            )
        }
        None => {
            tracing::info!(source_major = major, "schema generated from the catalogs");
            let (pre, post) = catalog::generate(source, &schemas, &options.exclude_tables).await?;
            (pre, post, DumpSource::Catalog)
        }
    };
    Ok(SchemaDump {
        pre_data,
        post_data,
        sequences,
        source: dump_source,
    })
}

/// Applies the pre-data statements on `target` in one transaction: either
/// all objects exist afterwards or none do. The session's settings are
/// `RESET ALL` afterwards (the dump sets `search_path` and others).
pub async fn apply_pre_data(target: &Client, dump: &SchemaDump) -> Result<(), SchemaError> {
    target
        .batch_execute("BEGIN")
        .await
        .map_err(SchemaError::query("begin the pre-data transaction"))?;
    let result = async {
        target
            .batch_execute(post::SESSION_SETTINGS)
            .await
            .map_err(SchemaError::query("set session settings"))?;
        for s in &dump.pre_data {
            target
                .batch_execute(&s.sql)
                .await
                .map_err(|e| SchemaError::apply(s, &e))?;
        }
        Ok::<(), SchemaError>(())
    }
    .await;
    match result {
        Ok(()) => {
            target
                .batch_execute("COMMIT")
                .await
                .map_err(SchemaError::query("commit the pre-data transaction"))?;
            target
                .batch_execute("RESET ALL")
                .await
                .map_err(SchemaError::query("reset session settings"))
        }
        Err(e) => {
            let _ = target.batch_execute("ROLLBACK").await;
            let _ = target.batch_execute("RESET ALL").await;
            Err(e)
        }
    }
}
