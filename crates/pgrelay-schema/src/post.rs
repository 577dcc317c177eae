//! Building the post-data objects after the rows are loaded, on several
//! connections.
//!
//! Order: (1) primary keys, unique and exclusion constraints and indexes,
//! grouped per table and run concurrently across tables (one table's
//! builds run one after another, since `ADD CONSTRAINT` locks the table
//! exclusively anyway); (2) `ALTER INDEX ... ATTACH PARTITION` and `REPLICA
//! IDENTITY USING INDEX`, which need the indexes of step 1; (3) foreign
//! keys, grouped per table and concurrent across tables (they need the
//! referenced keys of steps 1-2; a deadlock between two of them, which
//! SHARE ROW EXCLUSIVE locks on both tables allow, is retried); (4)
//! everything else (triggers, comments, grants, refreshes, rules) in the
//! dump's order on one connection. Every connection first runs the dump's
//! session settings. A failure stops the other workers from starting new
//! work and is returned with the statement it came from. Rerunning after an
//! interruption keeps the indexes, constraints and triggers the earlier run
//! built (their names are taken: duplicate errors count as done) and builds
//! the rest.
//! PostgreSQL docs: "Populating a Database" (populate: "Add Indexes and
//! Foreign Key Constraints afterward"), "Explicit Locking" (explicit-locking).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::{ObjectKind, SchemaDump, SchemaError, Statement};

/// Settings every applying session starts with: fully qualified DDL, no
/// function-body checks (a function may mention tables created later), no
/// server-side timeouts cutting a long index build.
pub(crate) const SESSION_SETTINGS: &str = "SET search_path = pg_catalog; \
     SET check_function_bodies = false; SET standard_conforming_strings = on; \
     SET statement_timeout = 0; SET lock_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0; SET client_min_messages = warning";

/// What [`apply_post_data`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostDataReport {
    /// Statements run, settings not counted.
    pub applied: usize,
    /// Primary keys, unique and exclusion constraints and indexes.
    pub indexes: usize,
    pub foreign_keys: usize,
    /// Everything after the foreign keys (triggers, refreshes, ...).
    pub other: usize,
    /// Connections used.
    pub connections: usize,
    /// Deadlocks between foreign keys that were retried.
    pub deadlock_retries: usize,
    /// Indexes, constraints and triggers that already existed (an earlier,
    /// interrupted run built them) and were kept.
    pub already_present: usize,
    pub elapsed: Duration,
}

/// Runs `statements` in order on `target` (each as a simple query), after
/// the session settings, which are `RESET ALL` afterwards. For role,
/// membership and grant statements from [`crate::dump_roles`].
pub async fn apply_statements(
    target: &Client,
    statements: &[Statement],
) -> Result<(), SchemaError> {
    target
        .batch_execute(SESSION_SETTINGS)
        .await
        .map_err(SchemaError::query("set session settings"))?;
    let mut result = Ok(());
    for s in statements {
        if let Err(e) = target.batch_execute(&s.sql).await {
            result = Err(SchemaError::apply(s, &e));
            break;
        }
    }
    let reset = target
        .batch_execute("RESET ALL")
        .await
        .map_err(SchemaError::query("reset session settings"));
    result.and(reset)
}

async fn connect(
    config: &pgrelay_source::Config,
    settings: &[Statement],
) -> Result<Client, SchemaError> {
    let client = pgrelay_source::connect_sql(config).await?;
    client
        .batch_execute(SESSION_SETTINGS)
        .await
        .map_err(SchemaError::query("set session settings"))?;
    for s in settings {
        client
            .batch_execute(&s.sql)
            .await
            .map_err(|e| SchemaError::apply(s, &e))?;
    }
    Ok(client)
}

fn by_table(statements: Vec<Statement>) -> Vec<Vec<Statement>> {
    let mut groups: BTreeMap<String, Vec<Statement>> = BTreeMap::new();
    let mut loose = Vec::new();
    for s in statements {
        match s.table.clone() {
            Some(t) => groups.entry(t).or_default().push(s),
            None => loose.push(vec![s]),
        }
    }
    // Tables with the most work first, so the longest chain starts early.
    let mut out: Vec<Vec<Statement>> = groups.into_values().collect();
    out.sort_by_key(|g| std::cmp::Reverse(g.len()));
    out.extend(loose);
    out
}

const DEADLOCK: &str = "40P01";

/// Runs one post-data statement; `Ok(true)` when the object it builds is
/// already there. A rerun after an interruption then finishes the rest
/// instead of failing on the first object the earlier run built. Only the
/// errors that mean "this name is taken" count, and only for objects named
/// by the dump itself.
async fn execute_post(client: &Client, s: &Statement) -> Result<bool, tokio_postgres::Error> {
    match client.batch_execute(&s.sql).await {
        Ok(()) => Ok(false),
        Err(e) => {
            let code = e.code().map(|c| c.code()).unwrap_or("");
            let duplicate = match s.kind {
                ObjectKind::Index
                | ObjectKind::Unique
                | ObjectKind::Constraint
                | ObjectKind::ForeignKey
                | ObjectKind::Trigger => code == "42P07" || code == "42710",
                ObjectKind::PrimaryKey => {
                    code == "42P07"
                        || code == "42710"
                        || (code == "42P16"
                            && e.as_db_error()
                                .is_some_and(|d| d.message().contains("multiple primary keys")))
                }
                _ => false,
            };
            if duplicate {
                tracing::info!(kind = ?s.kind, object = %s.name, "already built by an earlier run; kept");
                Ok(true)
            } else {
                Err(e)
            }
        }
    }
}

/// Runs groups of statements concurrently on `clients` (one group at a time
/// per client); returns the number of deadlock retries and of objects
/// already present.
async fn run_groups(
    clients: &[Arc<Client>],
    groups: Vec<Vec<Statement>>,
) -> Result<(usize, usize), SchemaError> {
    let queue = Arc::new(Mutex::new(VecDeque::from(groups)));
    let failed = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let client = Arc::clone(client);
        let queue = Arc::clone(&queue);
        let failed = Arc::clone(&failed);
        tasks.spawn(async move {
            let mut retries = 0usize;
            let mut present = 0usize;
            loop {
                if failed.load(Ordering::Relaxed) {
                    return Ok((retries, present));
                }
                let group = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
                let Some(group) = group else {
                    return Ok((retries, present));
                };
                for s in &group {
                    let started = Instant::now();
                    let mut attempt = 0;
                    loop {
                        match execute_post(&client, s).await {
                            Ok(existed) => {
                                present += usize::from(existed);
                                break;
                            }
                            Err(e)
                                if attempt < 5
                                    && e.code().is_some_and(|c| c.code() == DEADLOCK) =>
                            {
                                attempt += 1;
                                retries += 1;
                                tracing::info!(object = %s.name, attempt, "deadlock building post-data; retrying");
                                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                            }
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err(SchemaError::apply(s, &e));
                            }
                        }
                    }
                    tracing::debug!(kind = ?s.kind, object = %s.name, elapsed_ms = started.elapsed().as_millis() as u64, "post-data object built");
                }
            }
        });
    }
    let mut retries = 0;
    let mut present = 0;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((r, p))) => {
                retries += r;
                present += p;
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(join) => {
                first_error.get_or_insert(SchemaError::Unsupported(format!(
                    "a post-data worker failed: {join}"
                )));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok((retries, present)),
    }
}

/// Builds the post-data objects of `dump` on the database `target` names,
/// with up to `parallel` connections.
pub async fn apply_post_data(
    target: &pgrelay_source::Config,
    dump: &SchemaDump,
    parallel: usize,
) -> Result<PostDataReport, SchemaError> {
    let started = Instant::now();
    let mut settings = Vec::new();
    let mut indexes = Vec::new();
    let mut attach = Vec::new();
    let mut fks = Vec::new();
    let mut rest = Vec::new();
    for s in &dump.post_data {
        match s.kind {
            ObjectKind::Setting => settings.push(s.clone()),
            ObjectKind::PrimaryKey
            | ObjectKind::Unique
            | ObjectKind::Index
            | ObjectKind::Constraint
                if s.table.is_some() =>
            {
                indexes.push(s.clone())
            }
            ObjectKind::IndexAttach | ObjectKind::ReplicaIdentity => attach.push(s.clone()),
            ObjectKind::ForeignKey => fks.push(s.clone()),
            _ => rest.push(s.clone()),
        }
    }
    let mut report = PostDataReport {
        indexes: indexes.len(),
        foreign_keys: fks.len(),
        other: rest.len() + attach.len(),
        ..PostDataReport::default()
    };
    report.applied = report.indexes + report.foreign_keys + report.other;
    let tables = indexes
        .iter()
        .chain(&fks)
        .filter_map(|s| s.table.as_ref())
        .collect::<std::collections::HashSet<_>>()
        .len();
    let n = parallel.max(1).min(tables.max(1));
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(Arc::new(connect(target, &settings).await?));
    }
    report.connections = n;
    tracing::info!(
        indexes = report.indexes,
        foreign_keys = report.foreign_keys,
        other = report.other,
        connections = n,
        "building post-data"
    );
    let (retries, present) = run_groups(&clients, by_table(indexes)).await?;
    report.deadlock_retries += retries;
    report.already_present += present;
    for s in &attach {
        clients[0]
            .batch_execute(&s.sql)
            .await
            .map_err(|e| SchemaError::apply(s, &e))?;
    }
    let (retries, present) = run_groups(&clients, by_table(fks)).await?;
    report.deadlock_retries += retries;
    report.already_present += present;
    for s in &rest {
        let existed = execute_post(&clients[0], s)
            .await
            .map_err(|e| SchemaError::apply(s, &e))?;
        report.already_present += usize::from(existed);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}
