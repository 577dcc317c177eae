//! Reconcile: bring the source's publication and every target's
//! subscription to the configured state, or tear them down.
//!
//! [`plan`] reads the catalogs and returns the SQL that closes the gap;
//! nothing changes until [`execute`] runs it, so `--dry-run` prints exactly
//! what `apply` would do. Checks come first and stop the plan with one
//! error naming everything to fix: the source must have `wal_level=logical`
//! and free slots and senders, targets need logical replication workers,
//! and every published table must exist on every target with the source's
//! columns and types and a primary key.
//!
//! Publication membership is read from `pg_publication_rel` (what `ADD`
//! and `DROP TABLE` change; `pg_publication_tables` expands partitions);
//! a subscription's table set from `pg_subscription_rel`. When a target's
//! set differs from the publication's, `REFRESH PUBLICATION` adds and
//! removes tables (copying new ones when `enable_initial_sync`).
//!
//! With `disable_triggers_during_sync`, the user triggers of tables about
//! to be copied are disabled one by one and remembered, with their firing
//! mode (`O`, `A`, `R`), in `pgrelay.native_disabled_triggers` on the
//! target; every later reconcile (and `apply`'s wait) re-enables those of
//! tables whose state is `r` (ready) exactly as they were. Apply workers
//! run with `session_replication_role = replica`, so only `ALWAYS` and
//! `REPLICA` triggers would fire during the copy; all user triggers are
//! handled alike so a trigger's mode never matters.
//!
//! Statements that cannot run in a transaction block (`CREATE`/`DROP
//! SUBSCRIPTION`, `REFRESH PUBLICATION`) are always sent alone.
//! PostgreSQL docs: "Logical Replication" (logical-replication-subscription,
//! -config, -restrictions), "ALTER SUBSCRIPTION", "ALTER TABLE" (DISABLE
//! TRIGGER), "pg_subscription_rel".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use pgrelay_source::{connect_sql, SourceError};
use tokio_postgres::Client;

use crate::config::{table_matches, NativeConfig, Settings, TableSpec};
use crate::sql::{ident, literal, subscription_conninfo, TableName};
use crate::NativeError;

/// A connected server.
pub struct Server {
    /// `source` or `target NAME`.
    pub label: String,
    /// The SQL connection.
    pub client: Client,
    /// `server_version_num / 10000`.
    pub major: u32,
}

impl Server {
    fn err(&self, e: tokio_postgres::Error) -> NativeError {
        NativeError::Server {
            server: self.label.clone(),
            source: Box::new(SourceError::from_sql(&self.label, e)),
        }
    }

    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, NativeError> {
        self.client
            .query(sql, params)
            .await
            .map_err(|e| self.err(e))
    }
}

/// The source and the targets (in configuration order).
pub struct Servers {
    /// The source.
    pub source: Server,
    /// One per configured target.
    pub targets: Vec<Server>,
}

/// Connects to `config` trying up to `settings.max_wait_attempts` times,
/// `wait_interval` apart, while the error is transient (refused, starting
/// up, too many connections).
pub async fn connect_server(
    label: &str,
    config: &pgrelay_source::Config,
    settings: &Settings,
) -> Result<Server, NativeError> {
    let mut attempt = 1;
    loop {
        match connect_sql(config).await {
            Ok(client) => {
                let v: i32 = client
                    .query_one("SELECT current_setting('server_version_num')::int", &[])
                    .await
                    .map_err(|e| NativeError::Server {
                        server: label.to_owned(),
                        source: Box::new(SourceError::from_sql(label, e)),
                    })?
                    .get(0);
                return Ok(Server {
                    label: label.to_owned(),
                    client,
                    major: (v / 10000) as u32,
                });
            }
            Err(e) if e.is_transient() && attempt < settings.max_wait_attempts => {
                tracing::info!(server = label, attempt, error = %e, "waiting for server");
                tokio::time::sleep(settings.wait_interval).await;
                attempt += 1;
            }
            Err(e) => {
                return Err(NativeError::Unreachable {
                    server: format!("{label} ({})", config.redacted()),
                    source: Box::new(e),
                })
            }
        }
    }
}

/// Connects to every server of `config` (concurrently, each waiting as
/// its settings say).
pub async fn connect_all(config: &NativeConfig) -> Result<Servers, NativeError> {
    let source = connect_server("source", &config.source, &config.settings);
    let targets = config.targets.iter().map(|t| {
        let label = format!("target {}", t.name);
        async move { connect_server(&label, &t.conn, &t.settings).await }
    });
    let (source, targets) = tokio::join!(source, futures_join_all(targets));
    Ok(Servers {
        source: source?,
        targets: targets.into_iter().collect::<Result<_, _>>()?,
    })
}

/// `join_all` without the futures crate: spawn-free, polls in order.
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// Where an action runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// The source.
    Source,
    /// The target at this index of the configuration.
    Target(usize),
}

/// One step of a plan: SQL for one server.
#[derive(Clone)]
pub struct Action {
    /// Where it runs.
    pub on: On,
    /// The SQL (may hold a password in a subscription's connection string).
    sql: String,
    /// The SQL as shown to people (password replaced by `***`).
    pub shown: String,
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Action")
            .field("on", &self.on)
            .field("sql", &self.shown)
            .finish()
    }
}

impl Action {
    fn new(on: On, sql: String) -> Action {
        Action {
            on,
            shown: sql.clone(),
            sql,
        }
    }

    fn secret(on: On, sql: String, shown: String) -> Action {
        Action { on, sql, shown }
    }
}

/// What a reconcile (or teardown) would do.
#[derive(Debug, Default)]
pub struct Plan {
    /// The steps, in order.
    pub actions: Vec<Action>,
    /// Warnings worth printing (they do not stop the plan).
    pub warnings: Vec<String>,
    /// The publication's tables once applied.
    pub tables: Vec<TableName>,
    /// Indexes of targets whose triggers this plan disables (their initial
    /// copy must finish before they are re-enabled).
    pub triggers_disabled: Vec<usize>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// `-- label` headers and statements, passwords redacted.
    pub fn display(&self, config: &NativeConfig) -> String {
        let mut out = String::new();
        let mut last = None;
        for a in &self.actions {
            if last != Some(a.on) {
                out.push_str(&match a.on {
                    On::Source => format!("-- source {}\n", config.source.redacted()),
                    On::Target(i) => format!(
                        "-- target {} {}\n",
                        config.targets[i].name,
                        config.targets[i].conn.redacted()
                    ),
                });
                last = Some(a.on);
            }
            out.push_str(&a.shown);
            out.push_str(";\n");
        }
        out
    }
}

const STATE_TABLE: &str = "pgrelay.native_disabled_triggers";

/// Resolves the configured tables against the source's catalog.
pub async fn resolve_tables(
    source: &Server,
    spec: &TableSpec,
) -> Result<Vec<TableName>, NativeError> {
    let mut out = BTreeSet::new();
    match spec {
        TableSpec::Names(names) => {
            let mut missing = Vec::new();
            for name in names {
                let regclass = match name.split_once('.') {
                    Some((s, n)) => format!("{}.{}", ident(s), ident(n)),
                    None => ident(name),
                };
                let rows = source
                    .rows(
                        "SELECT n.nspname::text, c.relname::text FROM pg_class c \
                         JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')",
                        &[&regclass],
                    )
                    .await?;
                match rows.first() {
                    Some(r) => {
                        out.insert(TableName {
                            schema: r.get(0),
                            name: r.get(1),
                        });
                    }
                    None => missing.push(name.clone()),
                }
            }
            if !missing.is_empty() {
                return Err(NativeError::Precondition(format!(
                    "source: configured table(s) not found: {}; create them on the source or \
                     remove them from the configuration",
                    missing.join(", ")
                )));
            }
        }
        TableSpec::Globs { include, exclude } => {
            let rows = source
                .rows(
                    "SELECT n.nspname::text, c.relname::text FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
                       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgrelay') \
                       AND n.nspname NOT LIKE 'pg\\_%'",
                    &[],
                )
                .await?;
            for r in rows {
                let (s, n): (String, String) = (r.get(0), r.get(1));
                if include.iter().any(|p| table_matches(p, &s, &n))
                    && !exclude.iter().any(|p| table_matches(p, &s, &n))
                {
                    out.insert(TableName { schema: s, name: n });
                }
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// The tables that receive rows: each table itself, or the leaf
/// partitions of a partitioned table.
pub async fn leaf_tables(
    source: &Server,
    tables: &[TableName],
) -> Result<Vec<TableName>, NativeError> {
    let mut out = BTreeSet::new();
    for t in tables {
        // pg_partition_tree gives nothing for a table outside any tree,
        // and a partitioned table's own row is not a leaf.
        for r in source
            .rows(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid IN (SELECT relid FROM pg_partition_tree(to_regclass($1)) WHERE isleaf) \
                    OR (c.oid = to_regclass($1) AND c.relkind = 'r')",
                &[&t.quoted()],
            )
            .await?
        {
            out.insert(TableName {
                schema: r.get(0),
                name: r.get(1),
            });
        }
    }
    Ok(out.into_iter().collect())
}

/// The publication's tables (`None`: no such publication).
pub async fn publication_tables(
    source: &Server,
    publication: &str,
) -> Result<Option<Vec<TableName>>, NativeError> {
    let p = source
        .rows(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    let Some(p) = p.first() else { return Ok(None) };
    if p.get::<_, bool>(0) {
        return Err(NativeError::Precondition(format!(
            "source: publication {publication} is FOR ALL TABLES, which pgrelay does not manage; \
             use another publication_name or drop it"
        )));
    }
    let rows = source
        .rows(
            "SELECT n.nspname::text, c.relname::text FROM pg_publication_rel pr \
             JOIN pg_publication p ON p.oid = pr.prpubid \
             JOIN pg_class c ON c.oid = pr.prrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE p.pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await?;
    Ok(Some(
        rows.iter()
            .map(|r| TableName {
                schema: r.get(0),
                name: r.get(1),
            })
            .collect(),
    ))
}

async fn setting_i32(s: &Server, name: &str) -> Result<i32, NativeError> {
    Ok(s.rows("SELECT current_setting($1)::int", &[&name]).await?[0].get(0))
}

async fn check_source(config: &NativeConfig, servers: &Servers) -> Result<(), NativeError> {
    let src = &servers.source;
    let mut problems = Vec::new();
    let wal_level: String = src.rows("SELECT current_setting('wal_level')", &[]).await?[0].get(0);
    if wal_level != "logical" {
        problems.push(format!(
            "wal_level is {wal_level}; set wal_level = logical and restart the source"
        ));
    }
    let subs: Vec<String> = config
        .targets
        .iter()
        .map(|t| t.subscription.clone())
        .collect();
    let max_slots = setting_i32(src, "max_replication_slots").await?;
    let max_senders = setting_i32(src, "max_wal_senders").await?;
    let row = &src
        .rows(
            "SELECT (SELECT count(*) FROM pg_replication_slots)::int, \
                    (SELECT count(*) FROM pg_replication_slots WHERE slot_name = ANY($1))::int, \
                    (SELECT count(*) FROM pg_stat_replication \
                      WHERE application_name <> ALL($1))::int",
            &[&subs],
        )
        .await?[0];
    let (slots, ours, other_senders): (i32, i32, i32) = (row.get(0), row.get(1), row.get(2));
    let new_slots = subs.len() as i32 - ours;
    if slots + new_slots > max_slots {
        problems.push(format!(
            "max_replication_slots is {max_slots} with {slots} in use, and {new_slots} more are \
             needed (one per subscription); raise it and restart the source"
        ));
    }
    if other_senders + subs.len() as i32 > max_senders {
        problems.push(format!(
            "max_wal_senders is {max_senders} with {other_senders} used by others, and each of \
             the {} subscriptions needs one; raise it and restart the source",
            subs.len()
        ));
    }
    if !problems.is_empty() {
        return Err(NativeError::Precondition(format!(
            "source is not ready for logical replication: {}",
            problems.join("; ")
        )));
    }
    Ok(())
}

#[derive(Debug)]
struct Column {
    name: String,
    ty: String,
}

async fn columns(s: &Server, t: &TableName) -> Result<Option<(Vec<Column>, bool)>, NativeError> {
    let rc = t.quoted();
    let exists = s
        .rows(
            "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = c.oid AND indisprimary) \
             FROM pg_class c WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')",
            &[&rc],
        )
        .await?;
    let Some(e) = exists.first() else {
        return Ok(None);
    };
    let pk: bool = e.get(0);
    let rows = s
        .rows(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped \
               AND attgenerated = '' ORDER BY attnum",
            &[&rc],
        )
        .await?;
    Ok(Some((
        rows.iter()
            .map(|r| Column {
                name: r.get(0),
                ty: r.get(1),
            })
            .collect(),
        pk,
    )))
}

/// Checks that every table exists on every target with the source's
/// columns and types and a primary key; warns about source tables without
/// a replica identity (their UPDATE and DELETE would fail once published).
async fn check_tables(
    config: &NativeConfig,
    servers: &Servers,
    tables: &[TableName],
    warnings: &mut Vec<String>,
) -> Result<(), NativeError> {
    let mut source_cols = BTreeMap::new();
    for t in tables {
        let Some((cols, _)) = columns(&servers.source, t).await? else {
            return Err(NativeError::Precondition(format!(
                "source: table {t} disappeared while planning; apply again"
            )));
        };
        source_cols.insert(t.clone(), cols);
        let ident_ok: bool = servers
            .source
            .rows(
                "SELECT CASE c.relreplident WHEN 'f' THEN true WHEN 'n' THEN false \
                   WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_index WHERE indrelid = c.oid AND indisprimary) \
                   ELSE EXISTS (SELECT 1 FROM pg_index WHERE indrelid = c.oid AND indisreplident) END \
                 FROM pg_class c WHERE c.oid = to_regclass($1)",
                &[&t.quoted()],
            )
            .await?
            .first()
            .map(|r| r.get(0))
            .unwrap_or(true);
        if !ident_ok {
            warnings.push(format!(
                "source table {t} has no primary key or replica identity: UPDATE and DELETE on \
                 it will fail once it is published; add a primary key or ALTER TABLE ... \
                 REPLICA IDENTITY"
            ));
        }
    }
    let mut report = Vec::new();
    for (i, target) in servers.targets.iter().enumerate() {
        let mut problems = Vec::new();
        let mut missing = Vec::new();
        for t in tables {
            match columns(target, t).await? {
                None => missing.push(t.to_string()),
                Some((cols, pk)) => {
                    let mut col_problems = Vec::new();
                    for c in &source_cols[t] {
                        match cols.iter().find(|x| x.name == c.name) {
                            None => col_problems
                                .push(format!("column {} ({}) is missing", c.name, c.ty)),
                            Some(x) if x.ty != c.ty => col_problems.push(format!(
                                "column {} is {} here but {} on the source",
                                c.name, x.ty, c.ty
                            )),
                            Some(_) => {}
                        }
                    }
                    if !pk {
                        col_problems.push("it has no primary key".into());
                    }
                    if !col_problems.is_empty() {
                        problems.push(format!("table {t}: {}", col_problems.join(", ")));
                    }
                }
            }
        }
        if !missing.is_empty() {
            problems.insert(0, format!("missing table(s) {}", missing.join(", ")));
        }
        if !problems.is_empty() {
            report.push(format!(
                "target {}: {}",
                config.targets[i].name,
                problems.join("; ")
            ));
        }
    }
    if !report.is_empty() {
        return Err(NativeError::Precondition(format!(
            "{}; create the tables on the targets as they are on the source (for example with \
             pg_dump --schema-only --table ... of the source) and apply again",
            report.join("; ")
        )));
    }
    Ok(())
}

async fn check_target(t: &Server) -> Result<(), NativeError> {
    let workers = setting_i32(t, "max_logical_replication_workers").await?;
    let origins_setting = if t.major >= 18 {
        "max_active_replication_origins"
    } else {
        "max_replication_slots"
    };
    let origins = setting_i32(t, origins_setting).await?;
    let mut problems = Vec::new();
    if workers < 1 {
        problems.push("max_logical_replication_workers is 0; set it to at least 2 (one apply worker per subscription plus table sync workers) and restart".to_string());
    }
    if origins < 1 {
        problems.push(format!(
            "{origins_setting} is 0; subscriptions need one replication origin each: raise it and restart"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(NativeError::Precondition(format!(
            "{} is not ready to subscribe: {}",
            t.label,
            problems.join("; ")
        )))
    }
}

/// A subscription as found on a target.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Its oid.
    pub oid: u32,
    /// `subenabled`.
    pub enabled: bool,
    /// `subpublications`.
    pub publications: Vec<String>,
    /// `subconninfo`, when readable (superusers only since PostgreSQL 15).
    pub conninfo: Option<String>,
    /// Tables and their `srsubstate`.
    pub tables: BTreeMap<TableName, String>,
}

/// The subscription `name` in the target's current database.
pub async fn find_subscription(
    target: &Server,
    name: &str,
) -> Result<Option<Subscription>, NativeError> {
    let rows = target
        .rows(
            "SELECT oid, subenabled, subpublications::text[] FROM pg_subscription \
             WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND subname = $1",
            &[&name],
        )
        .await?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    let oid: u32 = r.get(0);
    let conninfo = match target
        .client
        .query_one(
            "SELECT subconninfo FROM pg_subscription WHERE oid = $1",
            &[&oid],
        )
        .await
    {
        Ok(row) => Some(row.get(0)),
        Err(_) => None,
    };
    let tables = target
        .rows(
            "SELECT n.nspname::text, c.relname::text, r.srsubstate::text \
             FROM pg_subscription_rel r JOIN pg_class c ON c.oid = r.srrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.srsubid = $1",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| {
            (
                TableName {
                    schema: r.get(0),
                    name: r.get(1),
                },
                r.get::<_, String>(2),
            )
        })
        .collect();
    Ok(Some(Subscription {
        oid,
        enabled: r.get(1),
        publications: r.get(2),
        conninfo,
        tables,
    }))
}

/// Triggers recorded as disabled by pgrelay for `subscription`:
/// (table, trigger, mode).
async fn recorded_triggers(
    target: &Server,
    subscription: &str,
) -> Result<Vec<(TableName, String, String)>, NativeError> {
    let exists: bool = target
        .rows("SELECT to_regclass($1) IS NOT NULL", &[&STATE_TABLE])
        .await?[0]
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    Ok(target
        .rows(
            &format!(
                "SELECT table_schema, table_name, trigger_name, mode FROM {STATE_TABLE} \
                 WHERE subscription = $1 ORDER BY 1, 2, 3"
            ),
            &[&subscription],
        )
        .await?
        .iter()
        .map(|r| {
            (
                TableName {
                    schema: r.get(0),
                    name: r.get(1),
                },
                r.get(2),
                r.get(3),
            )
        })
        .collect())
}

fn enable_sql(subscription: &str, table: &TableName, triggers: &[(String, String)]) -> String {
    let mut sql = String::from("BEGIN; ");
    for (trigger, mode) in triggers {
        let how = match mode.as_str() {
            "A" => "ENABLE ALWAYS TRIGGER",
            "R" => "ENABLE REPLICA TRIGGER",
            _ => "ENABLE TRIGGER",
        };
        sql.push_str(&format!(
            "ALTER TABLE {} {how} {}; ",
            table.quoted(),
            ident(trigger)
        ));
    }
    sql.push_str(&format!(
        "DELETE FROM {STATE_TABLE} WHERE subscription = {} AND table_schema = {} \
         AND table_name = {}; COMMIT",
        literal(subscription),
        literal(&table.schema),
        literal(&table.name)
    ));
    sql
}

/// Re-enable actions for recorded triggers of tables that are ready (or
/// no longer subscribed, or `all`).
async fn reenable_actions(
    i: usize,
    target: &Server,
    subscription: &str,
    states: &BTreeMap<TableName, String>,
    all: bool,
) -> Result<Vec<Action>, NativeError> {
    let mut by_table: BTreeMap<TableName, Vec<(String, String)>> = BTreeMap::new();
    for (t, trg, mode) in recorded_triggers(target, subscription).await? {
        by_table.entry(t).or_default().push((trg, mode));
    }
    Ok(by_table
        .into_iter()
        .filter(|(t, _)| all || states.get(t).is_none_or(|s| s == "r"))
        .map(|(t, trgs)| Action::new(On::Target(i), enable_sql(subscription, &t, &trgs)))
        .collect())
}

/// Warns about target tables that already hold rows before their initial
/// copy: rows the source also has make the copy fail on duplicate keys.
async fn warn_non_empty(
    target: &Server,
    name: &str,
    tables: &[TableName],
    warnings: &mut Vec<String>,
) -> Result<(), NativeError> {
    for t in tables {
        let q = format!("SELECT EXISTS (SELECT 1 FROM {})", t.quoted());
        if target.rows(&q, &[]).await?[0].get::<_, bool>(0) {
            warnings.push(format!(
                "target {name}: table {t} already holds rows and is about to get its initial \
                 copy; rows the source also has will make the copy fail on duplicate keys \
                 (empty the table first, or set enable_initial_sync: false for this target)"
            ));
        }
    }
    Ok(())
}

/// Disable actions for the enabled user triggers of `tables`.
async fn disable_actions(
    i: usize,
    target: &Server,
    subscription: &str,
    tables: &[TableName],
) -> Result<Vec<Action>, NativeError> {
    let mut actions = Vec::new();
    for t in tables {
        let trgs = target
            .rows(
                "SELECT tgname::text, tgenabled::text FROM pg_trigger \
                 WHERE tgrelid = to_regclass($1) AND NOT tgisinternal AND tgenabled <> 'D' \
                 ORDER BY 1",
                &[&t.quoted()],
            )
            .await?;
        if trgs.is_empty() {
            continue;
        }
        if actions.is_empty() {
            actions.push(Action::new(
                On::Target(i),
                format!(
                    "CREATE SCHEMA IF NOT EXISTS pgrelay; CREATE TABLE IF NOT EXISTS {STATE_TABLE} \
                     (subscription text NOT NULL, table_schema text NOT NULL, table_name text NOT NULL, \
                     trigger_name text NOT NULL, mode text NOT NULL, \
                     PRIMARY KEY (subscription, table_schema, table_name, trigger_name))"
                ),
            ));
        }
        let mut sql = String::from("BEGIN; ");
        for r in &trgs {
            let (name, mode): (String, String) = (r.get(0), r.get(1));
            sql.push_str(&format!(
                "INSERT INTO {STATE_TABLE} VALUES ({}, {}, {}, {}, {}) ON CONFLICT DO NOTHING; \
                 ALTER TABLE {} DISABLE TRIGGER {}; ",
                literal(subscription),
                literal(&t.schema),
                literal(&t.name),
                literal(&name),
                literal(&mode),
                t.quoted(),
                ident(&name)
            ));
        }
        sql.push_str("COMMIT");
        actions.push(Action::new(On::Target(i), sql));
    }
    Ok(actions)
}

/// Reads every server and returns what `apply` must run.
pub async fn plan(config: &NativeConfig, servers: &Servers) -> Result<Plan, NativeError> {
    check_source(config, servers).await?;
    for t in &servers.targets {
        check_target(t).await?;
    }
    let mut plan = Plan::default();
    let desired = resolve_tables(&servers.source, &config.tables).await?;
    // Subscriptions hold the leaves of partitioned tables (the default
    // publish_via_partition_root = false), so targets are checked, and
    // subscription table sets compared, at that level.
    let leaves = leaf_tables(&servers.source, &desired).await?;
    check_tables(config, servers, &leaves, &mut plan.warnings).await?;
    let pubname = ident(&config.publication);
    let list = |ts: &[&TableName]| ts.iter().map(|t| t.quoted()).collect::<Vec<_>>().join(", ");
    match publication_tables(&servers.source, &config.publication).await? {
        None if desired.is_empty() => plan.actions.push(Action::new(
            On::Source,
            format!("CREATE PUBLICATION {pubname}"),
        )),
        None => plan.actions.push(Action::new(
            On::Source,
            format!(
                "CREATE PUBLICATION {pubname} FOR TABLE {}",
                list(&desired.iter().collect::<Vec<_>>())
            ),
        )),
        Some(actual) => {
            let add: Vec<&TableName> = desired.iter().filter(|t| !actual.contains(t)).collect();
            let drop: Vec<&TableName> = actual.iter().filter(|t| !desired.contains(t)).collect();
            if !drop.is_empty() {
                plan.actions.push(Action::new(
                    On::Source,
                    format!("ALTER PUBLICATION {pubname} DROP TABLE {}", list(&drop)),
                ));
            }
            if !add.is_empty() {
                plan.actions.push(Action::new(
                    On::Source,
                    format!("ALTER PUBLICATION {pubname} ADD TABLE {}", list(&add)),
                ));
            }
        }
    }
    let (conninfo, shown_conninfo) = subscription_conninfo(&config.source);
    let slots: Vec<String> = servers
        .source
        .rows("SELECT slot_name::text FROM pg_replication_slots", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (i, (tc, target)) in config.targets.iter().zip(&servers.targets).enumerate() {
        let sub = ident(&tc.subscription);
        let copy = tc.settings.enable_initial_sync;
        let with_triggers = copy && tc.settings.disable_triggers_during_sync;
        match find_subscription(target, &tc.subscription).await? {
            None => {
                if slots.contains(&tc.subscription) {
                    return Err(NativeError::Precondition(format!(
                        "source: replication slot {0} exists but target {1} has no \
                         subscription {0}; it is left over from an earlier subscription. Drop it \
                         on the source with SELECT pg_drop_replication_slot({2}) (or use another \
                         subscription name) and apply again",
                        tc.subscription,
                        tc.name,
                        literal(&tc.subscription)
                    )));
                }
                plan.actions.extend(
                    reenable_actions(i, target, &tc.subscription, &BTreeMap::new(), true).await?,
                );
                if copy {
                    warn_non_empty(target, &tc.name, &leaves, &mut plan.warnings).await?;
                }
                if with_triggers {
                    let d = disable_actions(i, target, &tc.subscription, &leaves).await?;
                    if !d.is_empty() {
                        plan.triggers_disabled.push(i);
                    }
                    plan.actions.extend(d);
                }
                plan.actions.push(Action::secret(
                    On::Target(i),
                    format!(
                        "CREATE SUBSCRIPTION {sub} CONNECTION {} PUBLICATION {pubname} \
                         WITH (copy_data = {copy})",
                        literal(&conninfo)
                    ),
                    format!(
                        "CREATE SUBSCRIPTION {sub} CONNECTION {} PUBLICATION {pubname} \
                         WITH (copy_data = {copy})",
                        literal(&shown_conninfo)
                    ),
                ));
            }
            Some(s) => {
                plan.actions
                    .extend(reenable_actions(i, target, &tc.subscription, &s.tables, false).await?);
                if s.conninfo.as_deref().is_some_and(|c| c != conninfo) {
                    plan.actions.push(Action::secret(
                        On::Target(i),
                        format!("ALTER SUBSCRIPTION {sub} CONNECTION {}", literal(&conninfo)),
                        format!(
                            "ALTER SUBSCRIPTION {sub} CONNECTION {}",
                            literal(&shown_conninfo)
                        ),
                    ));
                }
                let mut refresh = false;
                if s.publications != [config.publication.clone()] {
                    plan.actions.push(Action::new(
                        On::Target(i),
                        format!(
                            "ALTER SUBSCRIPTION {sub} SET PUBLICATION {pubname} WITH (refresh = false)"
                        ),
                    ));
                    refresh = true;
                }
                let current: BTreeSet<&TableName> = s.tables.keys().collect();
                let wanted: BTreeSet<&TableName> = leaves.iter().collect();
                if current != wanted {
                    tracing::info!(target = %tc.name, subscribed = ?current, published = ?wanted, "table sets differ; refreshing");
                    refresh = true;
                }
                if !s.enabled {
                    plan.actions.push(Action::new(
                        On::Target(i),
                        format!("ALTER SUBSCRIPTION {sub} ENABLE"),
                    ));
                }
                if refresh {
                    let new: Vec<TableName> = leaves
                        .iter()
                        .filter(|t| !s.tables.contains_key(t))
                        .cloned()
                        .collect();
                    if copy {
                        warn_non_empty(target, &tc.name, &new, &mut plan.warnings).await?;
                    }
                    if with_triggers {
                        let d = disable_actions(i, target, &tc.subscription, &new).await?;
                        if !d.is_empty() {
                            plan.triggers_disabled.push(i);
                        }
                        plan.actions.extend(d);
                    }
                    plan.actions.push(Action::new(
                        On::Target(i),
                        format!(
                            "ALTER SUBSCRIPTION {sub} REFRESH PUBLICATION WITH (copy_data = {copy})"
                        ),
                    ));
                }
            }
        }
    }
    plan.tables = desired;
    Ok(plan)
}

/// Runs the plan's statements in order, each alone.
pub async fn execute(plan: &Plan, servers: &Servers) -> Result<(), NativeError> {
    for a in &plan.actions {
        let server = match a.on {
            On::Source => &servers.source,
            On::Target(i) => &servers.targets[i],
        };
        tracing::info!(server = %server.label, sql = %a.shown, "running");
        server
            .client
            .batch_execute(&a.sql)
            .await
            .map_err(|e| server.err(e))?;
    }
    Ok(())
}

/// Waits until every table of the targets `which` is ready (`r`), then
/// re-enables the triggers pgrelay disabled there. An initial copy takes
/// as long as the data needs, so time is not limited; failures are (on
/// 15+, `pg_stat_subscription_stats.sync_error_count`): after
/// `max_wait_attempts` failed copies this gives up with an error. The
/// caller stops it on shutdown (the next reconcile re-enables what is left).
pub async fn wait_for_sync(
    config: &NativeConfig,
    servers: &Servers,
    which: &[usize],
    poll: Duration,
) -> Result<(), NativeError> {
    for &i in which {
        let tc = &config.targets[i];
        let target = &servers.targets[i];
        let (mut first_errors, mut last_errors): (i64, i64) = (-1, -1);
        loop {
            let Some(s) = find_subscription(target, &tc.subscription).await? else {
                break;
            };
            let pending: Vec<String> = s
                .tables
                .iter()
                .filter(|(_, st)| st.as_str() != "r")
                .map(|(t, st)| format!("{t} ({st})"))
                .collect();
            if pending.is_empty() {
                let actions =
                    reenable_actions(i, target, &tc.subscription, &s.tables, false).await?;
                execute(
                    &Plan {
                        actions,
                        ..Plan::default()
                    },
                    servers,
                )
                .await?;
                break;
            }
            if target.major >= 15 {
                let errors: i64 = target
                    .rows(
                        "SELECT coalesce(sum(sync_error_count), 0)::int8 FROM pg_stat_subscription_stats \
                         WHERE subid = $1",
                        &[&s.oid],
                    )
                    .await?
                    .first()
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                if first_errors < 0 {
                    first_errors = errors;
                } else if errors > last_errors {
                    tracing::warn!(target = %tc.name, errors, "initial table copy failed and is being retried; see the target's server log");
                }
                last_errors = errors;
                if errors - first_errors >= i64::from(tc.settings.max_wait_attempts) {
                    return Err(NativeError::Precondition(format!(
                        "target {}: the initial copy of {} failed {} times (see the target's \
                         server log, e.g. duplicate keys in a table that was not empty); the \
                         subscription keeps retrying, and the triggers pgrelay disabled stay \
                         disabled until the copy succeeds (the next apply or run re-enables \
                         them)",
                        tc.name,
                        pending.join(", "),
                        errors - first_errors
                    )));
                }
            }
            tracing::info!(target = %tc.name, pending = %pending.join(", "), "waiting for initial sync");
            tokio::time::sleep(poll).await;
        }
    }
    Ok(())
}

/// Re-enables the triggers pgrelay disabled on tables whose initial copy
/// is done; returns how many tables still wait for theirs.
pub async fn reenable_ready(
    config: &NativeConfig,
    servers: &Servers,
) -> Result<usize, NativeError> {
    let mut waiting = 0;
    for (i, (tc, target)) in config.targets.iter().zip(&servers.targets).enumerate() {
        let states = match find_subscription(target, &tc.subscription).await? {
            Some(s) => s.tables,
            None => continue,
        };
        let actions = reenable_actions(i, target, &tc.subscription, &states, false).await?;
        let recorded: BTreeSet<TableName> = recorded_triggers(target, &tc.subscription)
            .await?
            .into_iter()
            .map(|(t, _, _)| t)
            .collect();
        waiting += recorded.len().saturating_sub(actions.len());
        execute(
            &Plan {
                actions,
                ..Plan::default()
            },
            servers,
        )
        .await?;
    }
    Ok(waiting)
}

/// Plans and runs one reconcile (`dry_run`: plan only). Returns the plan.
pub async fn apply(
    config: &NativeConfig,
    servers: &Servers,
    dry_run: bool,
) -> Result<Plan, NativeError> {
    let plan = plan(config, servers).await?;
    if !dry_run {
        execute(&plan, servers).await?;
    }
    Ok(plan)
}

/// What `teardown` drops: each target's subscription (which drops its slot
/// on the source) after re-enabling triggers pgrelay disabled, slots left
/// over on the source, then the publication.
pub async fn teardown_plan(config: &NativeConfig, servers: &Servers) -> Result<Plan, NativeError> {
    let mut plan = Plan::default();
    let mut gone = Vec::new();
    for (i, (tc, target)) in config.targets.iter().zip(&servers.targets).enumerate() {
        plan.actions
            .extend(reenable_actions(i, target, &tc.subscription, &BTreeMap::new(), true).await?);
        if find_subscription(target, &tc.subscription).await?.is_some() {
            plan.actions.push(Action::new(
                On::Target(i),
                format!("DROP SUBSCRIPTION {}", ident(&tc.subscription)),
            ));
        } else {
            gone.push(tc.subscription.clone());
        }
    }
    for slot in servers
        .source
        .rows(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name = ANY($1) AND NOT active",
            &[&gone],
        )
        .await?
    {
        let slot: String = slot.get(0);
        plan.actions.push(Action::new(
            On::Source,
            format!("SELECT pg_drop_replication_slot({})", literal(&slot)),
        ));
    }
    if publication_tables(&servers.source, &config.publication)
        .await
        .map(|p| p.is_some())
        .unwrap_or(true)
    {
        plan.actions.push(Action::new(
            On::Source,
            format!("DROP PUBLICATION IF EXISTS {}", ident(&config.publication)),
        ));
    }
    Ok(plan)
}
