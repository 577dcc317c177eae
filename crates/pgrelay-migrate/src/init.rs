//! `pgrelay init`: one-shot setup of the targets before streaming.
//!
//! Order (each target): create the database (or recreate it with
//! `--drop-existing`), roles when asked, pre-data (schemas, extensions,
//! types, sequences, tables with defaults, identity and generated columns,
//! partitioning), the data (the streamer's consistent snapshot copy: the
//! slot is created with an exported snapshot, so `pgrelay stream` continues
//! exactly where the copy ends), then post-data (primary keys, unique and
//! foreign keys, indexes, triggers) built after the data, in parallel,
//! and large objects, which logical replication does not carry. Before
//! anything is changed: a size estimate per table with an ETA from a short
//! measured copy rate, and a confirmation (`--yes` skips it).
//! PostgreSQL docs: "pg_dump" (sections), "CREATE DATABASE", "Large
//! Objects".

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pgrelay_schema::{SchemaDump, SchemaOptions};
use pgrelay_stream::select::quote_ident;
use pgrelay_stream::{Pipeline, StreamConfig};
use serde::Serialize;

use crate::MigrateError;

/// `init` options.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Drop and recreate the target databases.
    pub drop_existing: bool,
    /// Copy roles and grants.
    pub roles: bool,
    /// Copy large objects.
    pub large_objects: bool,
    /// Parallel connections for post-data.
    pub parallel: usize,
}

/// One table of the estimate.
#[derive(Debug, Clone, Serialize)]
pub struct TablePlan {
    /// `schema.table`.
    pub table: String,
    /// Estimated rows.
    pub rows: i64,
    /// Bytes on disk.
    pub bytes: i64,
}

/// What `init` is about to do.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Per table.
    pub tables: Vec<TablePlan>,
    /// All tables.
    pub total_bytes: i64,
    /// Measured source read rate, bytes per second.
    pub measured_rate: f64,
    /// Estimated copy time.
    pub eta_seconds: f64,
    /// Where the schema comes from.
    pub schema_source: String,
}

/// What `init` did.
#[derive(Debug, Serialize)]
pub struct InitReport {
    /// Pre-data statements run per target.
    pub pre_data: usize,
    /// Post-data statements run per target.
    pub post_data: usize,
    /// Large objects copied per target.
    pub large_objects: u64,
    /// Seconds per phase.
    pub phases: Vec<(String, f64)>,
}

/// The source's tables the selection leaves out (a partition goes with its
/// root), so that the schema copy leaves them out as well: an excluded
/// table is not created empty on the targets. Unless something that is
/// copied needs it: a table a view reads, or one a kept table's foreign
/// key references (and, in turn, what such a table references), keeps its
/// definition (empty on the targets, as before), with a warning — else
/// the view or the key could not be created. Unlogged tables are never
/// streamed and keep having their definition copied.
async fn excluded_tables(
    config: &StreamConfig,
    source: &tokio_postgres::Client,
) -> Result<Vec<(String, String)>, MigrateError> {
    use std::collections::{BTreeSet, HashMap};
    let rows = source
        .query(
            "SELECT n.nspname::text, c.relname::text, rn.nspname::text, r.relname::text,
                    c.oid::int8, r.oid::int8
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_class r ON r.oid = coalesce(pg_partition_root(c.oid), c.oid)
               JOIN pg_namespace rn ON rn.oid = r.relnamespace
              WHERE c.relkind IN ('r','p') AND c.relpersistence = 'p'
                AND n.nspname NOT IN ('pg_catalog','information_schema','pgrelay')
                AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
              ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| MigrateError::sql("listing the tables left out", e))?;
    let root_of: HashMap<i64, i64> = rows.iter().map(|r| (r.get(4), r.get(5))).collect();
    let mut excluded: BTreeSet<i64> = rows
        .iter()
        .filter(|r| !config.tables.matches(r.get(2), r.get(3)))
        .map(|r| r.get(5))
        .collect();
    if excluded.is_empty() {
        return Ok(Vec::new());
    }
    // (needing relation, needed table): views' rules and foreign keys.
    let edges = source
        .query(
            "SELECT DISTINCT r.ev_class::int8, d.refobjid::int8
               FROM pg_rewrite r
               JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class
             UNION
             SELECT conrelid::int8, confrelid::int8 FROM pg_constraint WHERE contype = 'f'",
            &[],
        )
        .await
        .map_err(|e| MigrateError::sql("reading what depends on the tables left out", e))?;
    let root = |oid: i64| root_of.get(&oid).copied().unwrap_or(oid);
    let edges: Vec<(i64, i64)> = edges
        .iter()
        .map(|r| (root(r.get(0)), root(r.get(1))))
        .filter(|(a, b)| a != b)
        .collect();
    let mut kept_back = BTreeSet::new();
    loop {
        let needed: Vec<i64> = edges
            .iter()
            .filter(|(by, t)| excluded.contains(t) && !excluded.contains(by))
            .map(|(_, t)| *t)
            .collect();
        if needed.is_empty() {
            break;
        }
        for t in needed {
            excluded.remove(&t);
            kept_back.insert(t);
        }
    }
    for r in rows
        .iter()
        .filter(|r| kept_back.contains(&r.get::<_, i64>(4)))
    {
        tracing::warn!(
            table = %pgrelay_types::sql::display_qualified(r.get(0), r.get(1)),
            "left out of the copy, but a view or foreign key that is copied needs it: its definition is created (empty) on the targets"
        );
    }
    Ok(rows
        .iter()
        .filter(|r| excluded.contains(&r.get::<_, i64>(5)))
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Estimates sizes and measures the copy rate.
pub async fn plan(config: &StreamConfig) -> Result<(Plan, SchemaDump), MigrateError> {
    let source = pgrelay_source::connect_sql(&config.source).await?;
    let options = SchemaOptions {
        exclude_tables: excluded_tables(config, &source).await?,
        ..SchemaOptions::default()
    };
    let dump = pgrelay_schema::dump_schema(&config.source, &source, &options)
        .await
        .map_err(|e| MigrateError::Fatal(format!("reading the source schema: {e}")))?;
    let names = config
        .tables
        .resolve(&source)
        .await
        .map_err(|e| MigrateError::sql("listing tables", e))?;
    let mut tables = Vec::new();
    for t in &names {
        let q = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
        let row = source
            .query_one(
                "SELECT GREATEST(c.reltuples, 0)::bigint,
                        (SELECT coalesce(sum(pg_table_size(i.inhrelid)), 0) FROM pg_inherits i WHERE i.inhparent = c.oid)::bigint
                          + pg_table_size(c.oid)
                   FROM pg_class c WHERE c.oid = $1::text::regclass",
                &[&q],
            )
            .await
            .map_err(|e| MigrateError::sql("estimating table sizes", e))?;
        tables.push(TablePlan {
            table: q,
            rows: row.get(0),
            bytes: row.get(1),
        });
    }
    let total: i64 = tables.iter().map(|t| t.bytes).sum();
    // A short COPY of the largest table to measure what this network and
    // source deliver.
    let rate = match tables.iter().max_by_key(|t| t.bytes) {
        Some(big) if big.bytes > 0 => {
            let started = Instant::now();
            let sql = format!("COPY (SELECT * FROM {} LIMIT 200000) TO STDOUT", big.table);
            let stream = source
                .copy_out(sql.as_str())
                .await
                .map_err(|e| MigrateError::sql("measuring the copy rate", e))?;
            futures_util::pin_mut!(stream);
            let mut bytes = 0usize;
            while let Some(chunk) = stream.next().await {
                bytes += chunk
                    .map_err(|e| MigrateError::sql("measuring the copy rate", e))?
                    .len();
                if started.elapsed() > Duration::from_secs(3) {
                    break;
                }
            }
            bytes as f64 / started.elapsed().as_secs_f64().max(0.001)
        }
        _ => 0.0,
    };
    // Text COPY bytes are close to heap bytes; the copy runs in parallel
    // but also writes, so the single-stream read rate is a fair guess.
    let eta = if rate > 0.0 { total as f64 / rate } else { 0.0 };
    Ok((
        Plan {
            tables,
            total_bytes: total,
            measured_rate: rate,
            eta_seconds: eta,
            schema_source: format!("{:?}", dump.source),
        },
        dump,
    ))
}

/// Creates (or recreates) each target's database.
async fn ensure_databases(config: &StreamConfig, drop_existing: bool) -> Result<(), MigrateError> {
    for t in &config.targets {
        let mut admin = t.config.clone();
        admin.dbname = "postgres".into();
        let c = pgrelay_source::connect_sql(&admin).await?;
        let db = &t.config.dbname;
        let exists = c
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[db])
            .await
            .map_err(|e| MigrateError::sql("reading pg_database", e))?
            .is_some();
        if exists && drop_existing {
            c.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", quote_ident(db)))
                .await
                .map_err(|e| MigrateError::sql("dropping the target database", e))?;
            tracing::info!(target_name = %t.name, database = %db, "dropped the target database");
        }
        if !exists || drop_existing {
            c.batch_execute(&format!("CREATE DATABASE {}", quote_ident(db)))
                .await
                .map_err(|e| MigrateError::sql("creating the target database", e))?;
            tracing::info!(target_name = %t.name, database = %db, "created the target database");
        }
    }
    Ok(())
}

/// Runs init after the operator accepted `plan`.
pub async fn init(
    config: &StreamConfig,
    dump: &SchemaDump,
    options: &InitOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<InitReport, MigrateError> {
    let mut phases = Vec::new();
    let started = Instant::now();
    ensure_databases(config, options.drop_existing).await?;
    let source = pgrelay_source::connect_sql(&config.source).await?;
    let mut targets = Vec::new();
    for t in &config.targets {
        let c = pgrelay_source::connect_sql(&t.config).await?;
        crate::phase::set(&c, &config.slot, "copying schema", None)
            .await
            .map_err(|e| MigrateError::sql("recording the phase", e))?;
        targets.push(c);
    }
    if options.roles {
        let roles = pgrelay_schema::dump_roles(&source)
            .await
            .map_err(|e| MigrateError::Fatal(format!("reading roles: {e}")))?;
        for (t, c) in config.targets.iter().zip(&targets) {
            for s in &roles {
                if let Err(e) = c.batch_execute(&s.sql).await {
                    // An existing role is fine; anything else is reported.
                    if e.code().map(|c| c.code()) != Some("42710") {
                        return Err(MigrateError::Fatal(format!(
                            "target {}: {}: {e}",
                            t.name, s.name
                        )));
                    }
                }
            }
        }
    }
    for (t, c) in config.targets.iter().zip(&targets) {
        pgrelay_schema::apply_pre_data(c, dump)
            .await
            .map_err(|e| MigrateError::Fatal(format!("target {}: pre-data: {e}", t.name)))?;
    }
    phases.push((
        "schema (pre-data)".to_owned(),
        started.elapsed().as_secs_f64(),
    ));

    let t0 = Instant::now();
    for c in &targets {
        let _ = crate::phase::set(c, &config.slot, "copying data", None).await;
    }
    Pipeline::new(config.clone()).prepare(shutdown).await?;
    phases.push(("data".to_owned(), t0.elapsed().as_secs_f64()));

    let t0 = Instant::now();
    for c in &targets {
        let _ = crate::phase::set(c, &config.slot, "building indexes and constraints", None).await;
    }
    let mut post = 0;
    for t in &config.targets {
        let report = pgrelay_schema::apply_post_data(&t.config, dump, options.parallel.max(1))
            .await
            .map_err(|e| MigrateError::Fatal(format!("target {}: post-data: {e}", t.name)))?;
        let _ = report;
        post = dump.post_data.len();
    }
    phases.push(("post-data".to_owned(), t0.elapsed().as_secs_f64()));

    let mut los = 0;
    if options.large_objects {
        let t0 = Instant::now();
        for (t, c) in config.targets.iter().zip(&targets) {
            los = pgrelay_schema::copy_large_objects(&source, c)
                .await
                .map_err(|e| {
                    MigrateError::Fatal(format!("target {}: large objects: {e}", t.name))
                })?;
        }
        phases.push(("large objects".to_owned(), t0.elapsed().as_secs_f64()));
    }
    for c in &targets {
        let _ = crate::phase::set(c, &config.slot, "initialized", None).await;
    }
    Ok(InitReport {
        pre_data: dump.pre_data.len(),
        post_data: post,
        large_objects: los,
        phases,
    })
}
