//! pgrelay's apply layer: applies decoded source transactions to ONE target
//! database, many source transactions per target transaction, exactly once.
//!
//! Invariants:
//! - Exactly once. The target transaction that applies a group of source
//!   transactions also upserts `pgrelay.progress` (last statement before
//!   COMMIT), so data and progress become durable together. On restart a
//!   source transaction with `commit_lsn <= progress.commit_lsn` is skipped.
//!   A target transaction only ever ends at a source transaction boundary.
//! - Order. Statements reach the target in source order (one connection,
//!   pipelined in order); a run of inserts into one table is buffered and
//!   sent as one COPY (or as pipelined INSERTs when short) before any other
//!   change is sent.
//! - Failure. Any error poisons the `Applier` and rolls the open target
//!   transaction back; the caller builds a new one on a new connection and
//!   replays from `progress()`. `ApplyError::is_transient` says whether that
//!   can succeed without a human.
//! - Semantics follow native logical replication: `session_replication_role
//!   = replica` by default, columns matched by name, unchanged TOAST columns
//!   left alone, REPLICA IDENTITY FULL matches exactly one row NULL-safely,
//!   an UPDATE/DELETE without a matching row is logged and skipped.
//!
//! It knows nothing of pgoutput: it consumes `pgrelay-types` changes.
//! PostgreSQL reference: "Logical Replication" (logical-replication), in
//! particular "Architecture" (logical-replication-architecture) for what the
//! native apply worker does, and "Replication Progress Tracking"
//! (replication-origins) for the progress-in-the-same-transaction idea.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod check;
mod error;
pub mod meta;
mod pipeline;
mod sql;
mod table;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use pgrelay_types::{
    Change, Lsn, OldTuple, PgTimestamp, RelationInfo, TransactionInfo, TruncateOptions, Tuple,
    Value,
};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

pub use error::{ApplyError, ErrorContext};
pub use sql::{display_ident, display_qualified, quote_ident, quote_qualified};

use pipeline::{Job, Op, PgFuture, Pipeline};
use sql::{copy_escape_into, Param};
use table::{
    Sync, Table, K_COPY, K_DELETE, K_DELETE_ONE, K_INSERT, K_UPDATE, K_UPDATE_ONE, K_UPDATE_SET,
};
use table::{W_NULL, W_PARAM, W_SKIP};

/// `session_replication_role` of the target session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionRole {
    /// Like a native subscription: ordinary triggers and foreign-key checks
    /// do not fire; `ENABLE REPLICA` / `ENABLE ALWAYS` triggers do. Needs a
    /// superuser or (PostgreSQL 15+) `GRANT SET ON PARAMETER
    /// session_replication_role`.
    #[default]
    Replica,
    /// Like an ordinary client: every trigger and FK check fires.
    Origin,
}

/// How the applier batches and labels its work.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Pipeline name: the key of this pipeline's rows in the `pgrelay` schema.
    pub pipeline: String,
    /// Target name, the `target` label of metrics.
    pub target: String,
    /// `session_replication_role` for the target session.
    pub session_replication_role: SessionRole,
    /// `should_flush` once the open target transaction holds this many changes.
    pub max_batch_rows: usize,
    /// ... or this many bytes of change data.
    pub max_batch_bytes: usize,
    /// ... or has been open this long.
    pub max_batch_delay: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            pipeline: "pgrelay".to_string(),
            target: "target".to_string(),
            session_replication_role: SessionRole::Replica,
            max_batch_rows: 20_000,
            max_batch_bytes: 32 << 20,
            max_batch_delay: Duration::from_millis(100),
        }
    }
}

/// The last source transaction applied to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Its commit LSN: every source transaction at or before it is applied.
    pub commit_lsn: Lsn,
    /// Its end LSN: the slot may be confirmed up to here.
    pub end_lsn: Lsn,
    /// Its commit time on the source.
    pub commit_ts: PgTimestamp,
}

/// Runs of at least this many inserts into one table go through COPY;
/// shorter ones through pipelined multi-row INSERTs (COPY costs two extra
/// round trips and an emptied pipeline; measured crossover in docs/apply.md).
const COPY_MIN_ROWS: usize = 64;
/// Rows per multi-row INSERT for runs shorter than `COPY_MIN_ROWS`.
const INSERT_ROWS: [usize; 3] = [16, 4, 1];
/// The protocol's limit on bind parameters per statement.
const MAX_PARAMS: usize = 65_535;
/// An insert run is sent when it reaches this many rows or bytes, so a huge
/// source transaction never sits in memory.
const RUN_MAX_ROWS: usize = 20_000;
const RUN_MAX_BYTES: usize = 8 << 20;
/// Statements in flight on the connection at most.
const PIPELINE_WINDOW: usize = 512;
/// ... and at most about this many bytes of parameters.
const PIPELINE_MAX_BYTES: usize = 16 << 20;
/// Forget pointer-keyed relation lookups past this many (the tables
/// themselves stay cached by value).
const MAX_REL_POINTERS: usize = 4096;
/// Deferred (merged) updates are sent once this many keys are pending.
const MAX_DEFERRED: usize = 10_000;
/// At least this many merged updates of one table and shape go out as one
/// set-based UPDATE (one statement instead of one per row: the target's
/// per-statement cost dominates pgbench-like apply).
const SET_UPDATE_MIN_ROWS: usize = 16;
/// Rows per set-based UPDATE at most.
const SET_UPDATE_MAX_ROWS: usize = 5_000;

struct Current {
    commit_lsn: Lsn,
    skip: bool,
}

/// Merged pending updates of one table: the newest full row per key, in
/// first-update order, with the commit LSN of the newest update.
#[derive(Default)]
struct Deferred {
    rows: Vec<(Lsn, Tuple)>,
    index: HashMap<Vec<Value>, usize>,
}

struct InsertRun {
    table: usize,
    /// Each row with the commit LSN of its source transaction, while the
    /// run is too short for COPY (it may still be sent as INSERTs).
    rows: Vec<(Lsn, Tuple)>,
    bytes: usize,
    all_text: bool,
    /// Once the run is long enough for COPY (and all text): the COPY text
    /// of its rows, encoded as they arrive (`rows` is then empty), so the
    /// rows need not be cloned and kept.
    copy: BytesMut,
    /// Rows encoded into `copy`.
    copied: usize,
    first_lsn: Lsn,
    last_lsn: Lsn,
}

impl InsertRun {
    fn len(&self) -> usize {
        self.rows.len() + self.copied
    }
}

/// Appends `row` to `buf` as one line of COPY text format.
fn encode_copy_row(buf: &mut BytesMut, row: &Tuple) {
    for (i, v) in row.values().iter().enumerate() {
        if i > 0 {
            buf.put_u8(b'\t');
        }
        match v {
            Value::Text(b) => copy_escape_into(buf, b),
            _ => buf.put_slice(b"\\N"),
        }
    }
    buf.put_u8(b'\n');
}

/// Applies source transactions to one target. See the crate docs.
pub struct Applier {
    client: Arc<Client>,
    options: ApplyOptions,
    durable: Option<Progress>,
    pending: Option<Progress>,
    current: Option<Current>,
    in_tx: bool,
    batch_started: Option<Instant>,
    batch_rows: usize,
    batch_bytes: usize,
    /// insert, update, delete, truncate, transactions
    batch_counts: [u64; 5],
    table_sync: HashMap<(String, String), meta::TableSync>,
    tables: Vec<Table>,
    by_ptr: HashMap<usize, (Arc<RelationInfo>, usize)>,
    run: Option<InsertRun>,
    pipeline: Pipeline,
    progress_stmt: Statement,
    key: Vec<u8>,
    /// Updates by unchanged key of independent tables, merged per key and
    /// not yet sent (see `Table::independent`).
    deferred: HashMap<usize, Deferred>,
    deferred_len: usize,
    copy_min_rows: usize,
    multi_row: bool,
    poisoned: bool,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("pipeline", &self.options.pipeline)
            .field("target", &self.options.target)
            .field("durable", &self.durable)
            .field("pending", &self.pending)
            .field("in_tx", &self.in_tx)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

fn ctx(operation: &str) -> ErrorContext {
    ErrorContext {
        table: None,
        commit_lsn: None,
        operation: operation.to_string(),
    }
}

fn param(v: &Value) -> Param {
    match v {
        Value::Text(b) => Param::Text(b.clone()),
        Value::Binary(b) => Param::Binary(b.clone()),
        Value::Null | Value::UnchangedToast => Param::Null,
    }
}

impl Applier {
    /// Takes a connected client; sets up the session, ensures the `pgrelay`
    /// schema, loads this pipeline's progress and table_sync rows.
    pub async fn new(client: Client, options: ApplyOptions) -> Result<Applier, ApplyError> {
        let role = match options.session_replication_role {
            SessionRole::Replica => "replica",
            SessionRole::Origin => "origin",
        };
        // datestyle/intervalstyle as the native apply worker sets them, so
        // text values print the same way they are parsed.
        let setup = format!(
            "SET session_replication_role = {role}; SET datestyle = 'ISO'; \
             SET intervalstyle = 'postgres'"
        );
        if let Err(e) = client.batch_execute(&setup).await {
            let mut err = ApplyError::from_pg(&e, ctx("setting up the target session"));
            if let ApplyError::Fatal { fix, sqlstate, .. } = &mut err {
                if sqlstate.as_deref() == Some("42501") {
                    *fix = "session_replication_role = replica needs a superuser target role, \
                            or on PostgreSQL 15+: GRANT SET ON PARAMETER \
                            session_replication_role TO <role>; or configure \
                            session_replication_role: origin (triggers and FK checks then fire)"
                        .to_string();
                }
            }
            return Err(err);
        }
        meta::ensure_schema(&client).await?;
        let durable = meta::load_progress(&client, &options.pipeline).await?;
        let table_sync = meta::load_table_sync(&client, &options.pipeline)
            .await?
            .into_iter()
            .map(|t| ((t.schema.clone(), t.table.clone()), t))
            .collect();
        let progress_stmt = client
            .prepare_typed(
                meta::UPSERT_PROGRESS,
                &[Type::TEXT, Type::PG_LSN, Type::PG_LSN, Type::TIMESTAMPTZ],
            )
            .await
            .map_err(|e| ApplyError::from_pg(&e, ctx("preparing the progress update")))?;
        tracing::info!(
            pipeline = %options.pipeline,
            target_db = %options.target,
            lsn = %durable.map(|p| p.commit_lsn).unwrap_or_default(),
            "applier ready"
        );
        let target = options.target.clone();
        Ok(Applier {
            client: Arc::new(client),
            options,
            durable,
            pending: None,
            current: None,
            in_tx: false,
            batch_started: None,
            batch_rows: 0,
            batch_bytes: 0,
            batch_counts: [0; 5],
            table_sync,
            tables: Vec::new(),
            by_ptr: HashMap::new(),
            run: None,
            pipeline: Pipeline::new(PIPELINE_WINDOW, PIPELINE_MAX_BYTES, target),
            progress_stmt,
            key: Vec::new(),
            deferred: HashMap::new(),
            deferred_len: 0,
            copy_min_rows: COPY_MIN_ROWS,
            multi_row: true,
            poisoned: false,
        })
    }

    /// The last DURABLE progress: what the target holds after a crash now.
    pub fn progress(&self) -> Option<Progress> {
        self.durable
    }

    /// The options this applier was built with.
    pub fn options(&self) -> &ApplyOptions {
        &self.options
    }

    /// Overrides the run length from which inserts go through COPY (for
    /// the benchmark that measures the crossover; `usize::MAX` = never).
    #[doc(hidden)]
    pub fn set_copy_min_rows(&mut self, rows: usize) {
        self.copy_min_rows = rows.max(1);
    }

    /// Turns multi-row INSERTs off (single-row INSERTs only), for the
    /// benchmark that compares them.
    #[doc(hidden)]
    pub fn set_multi_row_inserts(&mut self, on: bool) {
        self.multi_row = on;
    }

    /// The target connection (e.g. for `check` or status queries between
    /// batches; never use it while a batch is open).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A source transaction begins. Returns false if it is already applied
    /// (`commit_lsn <=` durable or pending progress); its changes may then be
    /// skipped by the caller and are ignored if fed.
    pub async fn begin(&mut self, info: &TransactionInfo) -> Result<bool, ApplyError> {
        self.usable()?;
        if let Some(cur) = &self.current {
            let msg = format!(
                "begin of source transaction {} while transaction {} is still open; call \
                 commit() first",
                info.commit_lsn, cur.commit_lsn
            );
            return Err(self.fail(ApplyError::Usage(msg)));
        }
        let last = self.pending.or(self.durable).map(|p| p.commit_lsn);
        let skip = last.is_some_and(|l| info.commit_lsn <= l);
        if skip {
            tracing::debug!(lsn = %info.commit_lsn, "source transaction already applied; skipping");
        }
        self.current = Some(Current {
            commit_lsn: info.commit_lsn,
            skip,
        });
        Ok(!skip)
    }

    /// Changes of the current source transaction, in order; may be called
    /// many times per transaction.
    pub async fn changes(&mut self, changes: &[Change]) -> Result<(), ApplyError> {
        self.usable()?;
        let r = self.changes_inner(changes).await;
        self.guard(r)
    }

    /// The current source transaction is complete.
    pub async fn commit(&mut self, info: &TransactionInfo) -> Result<(), ApplyError> {
        self.usable()?;
        let Some(cur) = self.current.take() else {
            let msg = format!("commit of {} without begin", info.commit_lsn);
            return Err(self.fail(ApplyError::Usage(msg)));
        };
        if cur.commit_lsn != info.commit_lsn {
            let msg = format!(
                "commit of {} but the open transaction is {}",
                info.commit_lsn, cur.commit_lsn
            );
            return Err(self.fail(ApplyError::Usage(msg)));
        }
        if cur.skip {
            return Ok(());
        }
        self.pending = Some(Progress {
            commit_lsn: info.commit_lsn,
            end_lsn: info.end_lsn,
            commit_ts: info.commit_ts,
        });
        self.batch_counts[4] += 1;
        self.batch_started.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// A source transaction streamed while still in progress (pgoutput
    /// Stream Start .. Stream Commit) begins: its changes are applied as
    /// they arrive, in a target transaction of its own that commits (with
    /// progress) at [`Applier::commit_streamed`] or is rolled back by
    /// [`Applier::abort_streamed`]. Its commit LSN is not known yet, so
    /// whether it was applied before is decided at commit. Use an applier
    /// (connection) of its own for it: the caller's other transactions keep
    /// committing meanwhile, in source commit order, on another one.
    pub async fn begin_streamed(&mut self) -> Result<(), ApplyError> {
        self.usable()?;
        if self.current.is_some() || self.pending.is_some() {
            let msg = "begin_streamed() while a transaction is open or pending; commit or \
                       flush it first"
                .to_string();
            return Err(self.fail(ApplyError::Usage(msg)));
        }
        // Its commit is after everything seen so far: it must not be
        // mistaken for a transaction an initial copy already holds (the
        // caller only streams transactions that started after every
        // table's sync point).
        self.current = Some(Current {
            commit_lsn: Lsn(u64::MAX),
            skip: false,
        });
        Ok(())
    }

    /// Marks where a subtransaction of the streamed transaction starts:
    /// everything buffered is sent first, then `SAVEPOINT <name>`, so a
    /// later [`Applier::rollback_to`] undoes exactly what came after.
    pub async fn savepoint(&mut self, name: &str) -> Result<(), ApplyError> {
        self.usable()?;
        let r = self.savepoint_inner("SAVEPOINT", name).await;
        self.guard(r)
    }

    /// A subtransaction aborted on the source: undo everything since its
    /// savepoint (including later, nested ones). Buffered, unsent work all
    /// came after the newest savepoint, so it is dropped unsent.
    pub async fn rollback_to(&mut self, name: &str) -> Result<(), ApplyError> {
        self.usable()?;
        self.run = None;
        self.deferred.clear();
        self.deferred_len = 0;
        let r = self.savepoint_inner("ROLLBACK TO SAVEPOINT", name).await;
        self.guard(r)
    }

    async fn savepoint_inner(&mut self, verb: &str, name: &str) -> Result<(), ApplyError> {
        self.flush_run().await?;
        self.flush_deferred_all().await?;
        self.ensure_tx().await?;
        let sql = format!("{verb} {}", quote_ident(name));
        let c = self.client.clone();
        let fut: PgFuture = Box::pin(async move { c.batch_execute(&sql).await.map(|_| 0) });
        let job = Job {
            op: Op::Savepoint,
            table: None,
            commit_lsn: None,
            bytes: 0,
            rows: 0,
        };
        self.pipeline.push(fut, job).await
    }

    /// The streamed transaction aborted on the source (or must be dropped
    /// because the source will send it again): roll back everything it
    /// applied.
    pub async fn abort_streamed(&mut self) -> Result<(), ApplyError> {
        self.usable()?;
        self.current = None;
        self.run = None;
        self.deferred.clear();
        self.deferred_len = 0;
        self.batch_counts = [0; 5];
        self.batch_rows = 0;
        self.batch_bytes = 0;
        self.batch_started = None;
        if !self.in_tx {
            return Ok(());
        }
        let c = self.client.clone();
        let fut: PgFuture = Box::pin(async move { c.batch_execute("ROLLBACK").await.map(|_| 0) });
        let job = Job {
            op: Op::Commit,
            table: None,
            commit_lsn: None,
            bytes: 0,
            rows: 0,
        };
        let r = async {
            self.pipeline.push(fut, job).await?;
            self.pipeline.drain().await
        }
        .await;
        self.in_tx = false;
        self.guard(r)
    }

    /// The streamed transaction committed on the source at `info`: commit
    /// it on the target together with its progress, unless `info` is at or
    /// before `applied` (the caller's newest durable progress) or this
    /// applier's own, which means a previous run applied it already; then
    /// it is rolled back. Returns whether it was committed.
    pub async fn commit_streamed(
        &mut self,
        info: &TransactionInfo,
        applied: Option<Lsn>,
    ) -> Result<bool, ApplyError> {
        self.usable()?;
        let last = applied.max(self.durable.map(|p| p.commit_lsn));
        if last.is_some_and(|l| info.commit_lsn <= l) {
            tracing::debug!(lsn = %info.commit_lsn, "streamed transaction already applied; rolling it back");
            self.abort_streamed().await?;
            return Ok(false);
        }
        if let Some(cur) = &mut self.current {
            cur.commit_lsn = info.commit_lsn;
        }
        self.commit(info).await?;
        self.flush().await?;
        Ok(true)
    }

    /// True when the open target transaction reached `max_batch_rows` or
    /// `max_batch_bytes`, or has been open longer than `max_batch_delay`.
    /// Always false inside a source transaction: a target transaction can
    /// only commit at a source transaction boundary.
    pub fn should_flush(&self) -> bool {
        if self.current.is_some() || self.poisoned || self.pending.is_none() {
            return false;
        }
        self.batch_rows >= self.options.max_batch_rows
            || self.batch_bytes >= self.options.max_batch_bytes
            || self
                .batch_started
                .is_some_and(|t| t.elapsed() >= self.options.max_batch_delay)
    }

    /// Writes progress (last committed source transaction) in the open
    /// target transaction, then COMMIT. Returns the new durable progress;
    /// `None` if nothing was pending. Called inside a source transaction it
    /// only sends what is buffered and waits for it (nothing can commit
    /// before the source transaction does) and returns `None`.
    pub async fn flush(&mut self) -> Result<Option<Progress>, ApplyError> {
        self.usable()?;
        let r = self.flush_inner().await;
        self.guard(r)
    }

    fn usable(&self) -> Result<(), ApplyError> {
        if self.poisoned {
            return Err(ApplyError::Usage(
                "the applier failed earlier; build a new one on a new connection and replay \
                 from its progress()"
                    .to_string(),
            ));
        }
        Ok(())
    }

    fn guard<T>(&mut self, r: Result<T, ApplyError>) -> Result<T, ApplyError> {
        r.map_err(|e| self.fail(e))
    }

    /// Poisons the applier and rolls the target transaction back.
    fn fail(&mut self, e: ApplyError) -> ApplyError {
        if !self.poisoned {
            self.poisoned = true;
            self.pipeline.clear();
            self.run = None;
            self.deferred.clear();
            self.deferred_len = 0;
            if self.in_tx && !self.client.is_closed() {
                // Queue a ROLLBACK without waiting for it: it is sent after
                // everything already queued, and the transaction is aborted
                // anyway; waiting could hang on a dead connection.
                let c = self.client.clone();
                let mut fut: PgFuture =
                    Box::pin(async move { c.batch_execute("ROLLBACK").await.map(|_| 0) });
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                let _ = std::future::Future::poll(fut.as_mut(), &mut cx);
            }
            self.in_tx = false;
            match &e {
                ApplyError::Fatal { .. } => tracing::error!(
                    target_db = %self.options.target, error = %e, "apply failed"
                ),
                _ => tracing::warn!(
                    target_db = %self.options.target, error = %e, "apply failed"
                ),
            }
        }
        e
    }

    async fn changes_inner(&mut self, changes: &[Change]) -> Result<(), ApplyError> {
        let lsn = match &self.current {
            None => {
                return Err(ApplyError::Usage(
                    "changes() outside a source transaction; call begin() first".to_string(),
                ))
            }
            Some(c) if c.skip => return Ok(()),
            Some(c) => c.commit_lsn,
        };
        for change in changes {
            match change {
                Change::Message(_) => {}
                Change::Insert { relation, new } => {
                    let ti = self.table_index(relation, lsn).await?;
                    if self.filtered(ti, lsn)? {
                        continue;
                    }
                    self.check_len(ti, new, lsn)?;
                    self.account(change);
                    self.batch_counts[0] += 1;
                    self.ensure_tx().await?;
                    self.before_change_to(ti).await?;
                    self.add_insert(ti, new, lsn).await?;
                }
                Change::Update { relation, old, new } => {
                    let ti = self.table_index(relation, lsn).await?;
                    if self.filtered(ti, lsn)? {
                        continue;
                    }
                    self.check_len(ti, new, lsn)?;
                    if let Some(o) = old {
                        self.check_len(ti, o.tuple(), lsn)?;
                    }
                    self.account(change);
                    self.batch_counts[1] += 1;
                    self.ensure_tx().await?;
                    if let Some(key) = self.deferrable(ti, old.as_ref(), new) {
                        self.defer_update(ti, key, new, lsn).await?;
                    } else {
                        self.flush_run().await?;
                        self.before_change_to(ti).await?;
                        self.update(ti, old.as_ref(), new, lsn).await?;
                    }
                }
                Change::Delete { relation, old } => {
                    let ti = self.table_index(relation, lsn).await?;
                    if self.filtered(ti, lsn)? {
                        continue;
                    }
                    self.check_len(ti, old.tuple(), lsn)?;
                    self.account(change);
                    self.batch_counts[2] += 1;
                    self.ensure_tx().await?;
                    self.flush_run().await?;
                    self.before_change_to(ti).await?;
                    self.delete(ti, old, lsn).await?;
                }
                Change::Truncate { relations, options } => {
                    let mut tables = Vec::with_capacity(relations.len());
                    for rel in relations {
                        let ti = self.table_index(rel, lsn).await?;
                        if !self.filtered(ti, lsn)? {
                            tables.push(ti);
                        }
                    }
                    if tables.is_empty() {
                        continue;
                    }
                    self.account(change);
                    self.batch_counts[3] += 1;
                    self.ensure_tx().await?;
                    self.flush_run().await?;
                    self.flush_deferred_all().await?;
                    self.truncate(&tables, *options, lsn).await?;
                }
            }
        }
        Ok(())
    }

    /// Before a change to table `ti` that is sent in source order: pending
    /// deferred updates it could observe go first (only `ti`'s own for an
    /// independent table, all of them otherwise).
    async fn before_change_to(&mut self, ti: usize) -> Result<(), ApplyError> {
        if self.deferred_len == 0 {
            return Ok(());
        }
        if self.tables[ti].independent {
            self.flush_deferred_table(ti).await
        } else {
            self.flush_deferred_all().await
        }
    }

    /// The key of an update that may be deferred and merged: an
    /// independent table, a key-based identity, and a key that does not
    /// change.
    fn deferrable(&self, ti: usize, old: Option<&OldTuple>, new: &Tuple) -> Option<Vec<Value>> {
        let t = &self.tables[ti];
        if !t.mergeable {
            return None;
        }
        let mut key = Vec::new();
        for (i, c) in t.rel.columns.iter().enumerate() {
            if c.is_key {
                let v = &new.values()[i];
                if !matches!(v, Value::Text(_) | Value::Binary(_)) {
                    return None;
                }
                if let Some(o) = old {
                    match o {
                        OldTuple::Key(o) if o.values()[i] == *v => {}
                        _ => return None,
                    }
                }
                key.push(v.clone());
            }
        }
        (!key.is_empty()).then_some(key)
    }

    async fn defer_update(
        &mut self,
        ti: usize,
        key: Vec<Value>,
        new: &Tuple,
        lsn: Lsn,
    ) -> Result<(), ApplyError> {
        // The buffered insert run goes first if this update could observe
        // it: same table, or a table whose changes must stay in order.
        if let Some(run) = &self.run {
            if run.table == ti || !self.tables[run.table].independent {
                self.flush_run().await?;
            }
        }
        let d = self.deferred.entry(ti).or_default();
        match d.index.get(&key) {
            Some(&i) => {
                let (l, row) = &mut d.rows[i];
                *l = lsn;
                for (slot, v) in row.0.iter_mut().zip(new.values()) {
                    if !matches!(v, Value::UnchangedToast) {
                        *slot = v.clone();
                    }
                }
            }
            None => {
                d.index.insert(key, d.rows.len());
                d.rows.push((lsn, new.clone()));
                self.deferred_len += 1;
            }
        }
        if self.deferred_len >= MAX_DEFERRED {
            self.flush_deferred_all().await?;
        }
        Ok(())
    }

    async fn flush_deferred_table(&mut self, ti: usize) -> Result<(), ApplyError> {
        let Some(d) = self.deferred.remove(&ti) else {
            return Ok(());
        };
        self.deferred_len -= d.rows.len();
        // Rows with the same SET columns go out as one set-based UPDATE when
        // there are enough of them; the rest row by row.
        let mut shapes: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
        let mut single = Vec::new();
        if d.rows.len() >= SET_UPDATE_MIN_ROWS {
            for (i, (_, row)) in d.rows.iter().enumerate() {
                match self.set_shape(ti, row) {
                    Some(shape) => shapes.entry(shape).or_default().push(i),
                    None => single.push(i),
                }
            }
        } else {
            single.extend(0..d.rows.len());
        }
        let mut shapes: Vec<(Vec<u8>, Vec<usize>)> = shapes.into_iter().collect();
        shapes.sort_unstable();
        for (shape, rows) in shapes {
            if rows.len() < SET_UPDATE_MIN_ROWS {
                single.extend(rows);
                continue;
            }
            let mut start = 0;
            while start < rows.len() {
                let mut end = start;
                let mut bytes = 0;
                while end < rows.len() && end - start < SET_UPDATE_MAX_ROWS && bytes < RUN_MAX_BYTES
                {
                    bytes += d.rows[rows[end]].1.payload_len();
                    end += 1;
                }
                let chunk: Vec<&(Lsn, Tuple)> =
                    rows[start..end].iter().map(|&i| &d.rows[i]).collect();
                self.update_set(ti, &shape, &chunk).await?;
                start = end;
            }
        }
        single.sort_unstable();
        for i in single {
            let (lsn, row) = &d.rows[i];
            self.update(ti, None, row, *lsn).await?;
        }
        Ok(())
    }

    /// The statement key of a set-based update of `row` (see
    /// `Table::build`), or `None` when it must go row by row: a binary
    /// value, or no column to set.
    fn set_shape(&self, ti: usize, row: &Tuple) -> Option<Vec<u8>> {
        let t = &self.tables[ti];
        let mut shape = Vec::with_capacity(1 + row.len());
        shape.push(K_UPDATE_SET);
        let mut any = false;
        for (i, v) in row.values().iter().enumerate() {
            let col = t.cols.get(i)?;
            let is_key = t.rel.columns.get(i)?.is_key;
            match v {
                Value::Binary(_) => return None,
                Value::UnchangedToast => shape.push(0),
                _ if is_key => {
                    if !col.has_eq {
                        return None;
                    }
                    shape.push(2)
                }
                _ if col.identity_always => shape.push(0),
                _ => {
                    any = true;
                    shape.push(1)
                }
            }
        }
        any.then_some(shape)
    }

    /// One UPDATE for many merged rows of one shape: every column travels
    /// as one text[] parameter (an array literal of the values' text
    /// output), unnested and cast to the target column's type; the rows
    /// are matched on the key. Keys are distinct (merged), and the table
    /// is independent, so the order among these rows is unobservable.
    async fn update_set(
        &mut self,
        ti: usize,
        shape: &[u8],
        rows: &[&(Lsn, Tuple)],
    ) -> Result<(), ApplyError> {
        let lsn = rows.iter().map(|(l, _)| *l).max().unwrap_or_default();
        let mut params = Vec::new();
        for (i, &code) in shape[1..].iter().enumerate() {
            if code == 0 {
                continue;
            }
            let mut buf = BytesMut::with_capacity(2 + rows.len() * 8);
            buf.put_u8(b'{');
            for (n, (_, row)) in rows.iter().enumerate() {
                if n > 0 {
                    buf.put_u8(b',');
                }
                match row.values().get(i) {
                    Some(Value::Text(b)) => sql::array_element_escape_into(b, &mut buf),
                    _ => buf.put_slice(b"NULL"),
                }
            }
            buf.put_u8(b'}');
            params.push(Param::Text(buf.freeze()));
        }
        let stmt = self.statement(ti, shape, lsn).await?;
        self.execute(stmt, params, Op::Update, ti, lsn, rows.len() as u64)
            .await
    }

    async fn flush_deferred_all(&mut self) -> Result<(), ApplyError> {
        if self.deferred_len == 0 {
            return Ok(());
        }
        let mut tables: Vec<usize> = self.deferred.keys().copied().collect();
        tables.sort_unstable();
        for ti in tables {
            self.flush_deferred_table(ti).await?;
        }
        Ok(())
    }

    fn account(&mut self, change: &Change) {
        self.batch_rows += 1;
        self.batch_bytes += change.approx_size();
    }

    async fn table_index(
        &mut self,
        rel: &Arc<RelationInfo>,
        lsn: Lsn,
    ) -> Result<usize, ApplyError> {
        let ptr = Arc::as_ptr(rel) as usize;
        if let Some((_, i)) = self.by_ptr.get(&ptr) {
            return Ok(*i);
        }
        // The same definition may arrive in a new Arc (e.g. after the
        // stream reconnects); only a different definition needs the catalog.
        let found = self
            .tables
            .iter()
            .position(|t| t.rel.oid == rel.oid && *t.rel == **rel);
        let i = match found {
            Some(i) => i,
            None => {
                // A new definition of a table may be a second `Table` for
                // the same target table: send everything buffered so no
                // change of the old definition can be reordered after one
                // of the new.
                self.flush_run().await?;
                self.flush_deferred_all().await?;
                self.pipeline.drain().await?;
                let replica = self.options.session_replication_role == SessionRole::Replica;
                let t =
                    Table::lookup(&self.client, rel, &self.table_sync, Some(lsn), replica).await?;
                tracing::debug!(table = %t.display, columns = t.cols.len(), "target table mapped");
                self.tables.push(t);
                self.tables.len() - 1
            }
        };
        if self.by_ptr.len() >= MAX_REL_POINTERS {
            self.by_ptr.clear();
        }
        self.by_ptr.insert(ptr, (rel.clone(), i));
        Ok(i)
    }

    /// Whether changes of the transaction at `lsn` to table `ti` are already
    /// in its initial copy.
    fn filtered(&self, ti: usize, lsn: Lsn) -> Result<bool, ApplyError> {
        match self.tables[ti].sync {
            Sync::None | Sync::Ready(None) => Ok(false),
            Sync::Ready(Some(sync_lsn)) => Ok(lsn < sync_lsn),
            Sync::Copying => Err(ApplyError::Usage(format!(
                "change for {} (source transaction {lsn}) while its initial copy is not finished \
                 (pgrelay.table_sync state 'copying'); finish the copy before streaming",
                self.tables[ti].display
            ))),
        }
    }

    fn check_len(&self, ti: usize, tuple: &Tuple, lsn: Lsn) -> Result<(), ApplyError> {
        let n = self.tables[ti].cols.len();
        if tuple.len() != n {
            return Err(ApplyError::Usage(format!(
                "tuple of {} values for {} which has {n} replicated columns (source transaction \
                 {lsn})",
                tuple.len(),
                self.tables[ti].display
            )));
        }
        Ok(())
    }

    async fn ensure_tx(&mut self) -> Result<(), ApplyError> {
        if self.in_tx {
            return Ok(());
        }
        let c = self.client.clone();
        let fut: PgFuture = Box::pin(async move { c.batch_execute("BEGIN").await.map(|_| 0) });
        self.pipeline
            .push(
                fut,
                Job {
                    op: Op::Begin,
                    table: None,
                    commit_lsn: None,
                    bytes: 0,
                    rows: 0,
                },
            )
            .await?;
        self.in_tx = true;
        self.batch_started.get_or_insert_with(Instant::now);
        Ok(())
    }

    async fn statement(
        &mut self,
        ti: usize,
        key: &[u8],
        lsn: Lsn,
    ) -> Result<Statement, ApplyError> {
        if let Some(s) = self.tables[ti].stmts.get(key) {
            return Ok(s.clone());
        }
        // Results of everything in flight must be read before we wait for
        // the Parse response behind them.
        self.pipeline.drain().await?;
        let (sql, types) = self.tables[ti].build(key);
        tracing::debug!(table = %self.tables[ti].display, sql = %sql, "preparing");
        let stmt = self.client.prepare_typed(&sql, &types).await.map_err(|e| {
            ApplyError::from_pg(
                &e,
                ErrorContext {
                    table: Some(self.tables[ti].display.to_string()),
                    commit_lsn: Some(lsn),
                    operation: "preparing a statement".to_string(),
                },
            )
        })?;
        self.tables[ti].stmts.insert(key.to_vec(), stmt.clone());
        Ok(stmt)
    }

    /// Sends `stmt`; `rows` is how many rows an update or delete should
    /// touch (see `Job::rows`).
    async fn execute(
        &mut self,
        stmt: Statement,
        params: Vec<Param>,
        op: Op,
        ti: usize,
        lsn: Lsn,
        rows: u64,
    ) -> Result<(), ApplyError> {
        let bytes = params
            .iter()
            .map(|p| match p {
                Param::Text(b) | Param::Binary(b) => b.len(),
                Param::Null => 0,
            })
            .sum();
        let c = self.client.clone();
        let fut: PgFuture = Box::pin(async move { c.execute_raw(&stmt, params).await });
        let job = Job {
            op,
            table: Some(self.tables[ti].display.clone()),
            commit_lsn: Some(lsn),
            bytes,
            rows,
        };
        self.pipeline.push(fut, job).await
    }

    fn unchanged_toast_error(&self, ti: usize, lsn: Lsn, what: &str) -> ApplyError {
        ApplyError::fatal(
            ErrorContext {
                table: Some(self.tables[ti].display.to_string()),
                commit_lsn: Some(lsn),
                operation: what.to_string(),
            },
            "the source sent an unchanged-TOAST placeholder where a full value is needed"
                .to_string(),
            format!(
                "on the source: ALTER TABLE {} REPLICA IDENTITY FULL (so full old rows are \
                 sent), then resync the table",
                self.tables[ti].display
            ),
        )
    }

    async fn add_insert(&mut self, ti: usize, new: &Tuple, lsn: Lsn) -> Result<(), ApplyError> {
        if new
            .values()
            .iter()
            .any(|v| matches!(v, Value::UnchangedToast))
        {
            return Err(self.unchanged_toast_error(ti, lsn, "insert"));
        }
        let binary = new.values().iter().any(|v| matches!(v, Value::Binary(_)));
        // Another table's run, or a binary row after rows already encoded
        // as COPY text: send what is buffered first (order is kept).
        if self
            .run
            .as_ref()
            .is_some_and(|r| r.table != ti || (binary && r.copied > 0))
        {
            self.flush_run().await?;
        }
        let copy_min_rows = self.copy_min_rows;
        let run = self.run.get_or_insert_with(|| InsertRun {
            table: ti,
            rows: Vec::new(),
            bytes: 0,
            all_text: true,
            copy: BytesMut::new(),
            copied: 0,
            first_lsn: lsn,
            last_lsn: lsn,
        });
        run.bytes += new.payload_len();
        run.all_text &= !binary;
        run.last_lsn = lsn;
        if run.copied > 0 {
            encode_copy_row(&mut run.copy, new);
            run.copied += 1;
        } else {
            run.rows.push((lsn, new.clone()));
            if run.rows.len() >= copy_min_rows && run.all_text {
                // Long enough for COPY: encode from now on.
                let mut buf = BytesMut::with_capacity(RUN_MAX_BYTES.min(run.bytes * 4));
                for (_, row) in run.rows.drain(..) {
                    encode_copy_row(&mut buf, &row);
                    run.copied += 1;
                }
                run.copy = buf;
            }
        }
        if run.len() >= RUN_MAX_ROWS || run.bytes >= RUN_MAX_BYTES {
            self.flush_run().await?;
        }
        Ok(())
    }

    /// Sends the buffered run of inserts: COPY when long enough and all
    /// values are text, pipelined INSERTs otherwise.
    async fn flush_run(&mut self) -> Result<(), ApplyError> {
        let Some(run) = self.run.take() else {
            return Ok(());
        };
        let ti = run.table;
        if run.copied > 0 || (run.rows.len() >= self.copy_min_rows && run.all_text) {
            return self.copy_run(run).await;
        }
        // Multi-row INSERTs of INSERT_ROWS[i] rows, largest first: fewer
        // statements for the server to start and finish than single rows.
        let mut rest = &run.rows[..];
        let ncols = self.tables[ti].cols.len().max(1);
        while !rest.is_empty() {
            let size = INSERT_ROWS
                .iter()
                .copied()
                .find(|&n| n <= rest.len() && n * ncols <= MAX_PARAMS && (self.multi_row || n == 1))
                .unwrap_or(1);
            let (chunk, tail) = rest.split_at(size);
            rest = tail;
            let stmt = self
                .statement(ti, &[K_INSERT, size as u8], chunk[0].0)
                .await?;
            let params = chunk
                .iter()
                .flat_map(|(_, row)| row.values().iter().map(param))
                .collect();
            // A failing row is attributed to the chunk's last transaction.
            let lsn = chunk[chunk.len() - 1].0;
            self.execute(stmt, params, Op::Insert, ti, lsn, 0).await?;
        }
        Ok(())
    }

    async fn copy_run(&mut self, mut run: InsertRun) -> Result<(), ApplyError> {
        let ti = run.table;
        let (first_lsn, last_lsn, count) = (run.first_lsn, run.last_lsn, run.len());
        let stmt = self.statement(ti, &[K_COPY], first_lsn).await?;
        self.pipeline.drain().await?;
        let mut buf = std::mem::take(&mut run.copy);
        for (_, row) in &run.rows {
            encode_copy_row(&mut buf, row);
        }
        let client = self.client.clone();
        let data = buf.freeze();
        let result = async move {
            let sink = client.copy_in::<_, Bytes>(&stmt).await?;
            futures_util::pin_mut!(sink);
            sink.send(data).await?;
            sink.finish().await
        }
        .await;
        result.map(|_| ()).map_err(|e| {
            ApplyError::from_pg(
                &e,
                ErrorContext {
                    table: Some(self.tables[ti].display.to_string()),
                    commit_lsn: Some(first_lsn),
                    operation: format!(
                        "COPY of {count} inserted rows (source transactions {first_lsn} to {last_lsn})"
                    ),
                },
            )
        })
    }

    /// Fills `self.key` with WHERE codes for `tuple` and pushes the values
    /// to compare onto `params`. `all` = REPLICA IDENTITY FULL (every sent
    /// column); otherwise only the replica identity key columns.
    fn where_codes(
        &mut self,
        ti: usize,
        tuple: &Tuple,
        all: bool,
        params: &mut Vec<Param>,
        lsn: Lsn,
        what: &str,
    ) -> Result<(), ApplyError> {
        let rel = &self.tables[ti].rel;
        let mut any = false;
        for (i, v) in tuple.values().iter().enumerate() {
            if !all && !rel.columns[i].is_key {
                self.key.push(W_SKIP);
                continue;
            }
            match v {
                Value::Null => {
                    self.key.push(W_NULL);
                    any = true;
                }
                Value::UnchangedToast if all => self.key.push(W_SKIP),
                Value::UnchangedToast => return Err(self.unchanged_toast_error(ti, lsn, what)),
                Value::Text(_) | Value::Binary(_) => {
                    self.key.push(W_PARAM);
                    params.push(param(v));
                    any = true;
                }
            }
        }
        if !any {
            let t = &self.tables[ti].display;
            return Err(ApplyError::fatal(
                ErrorContext {
                    table: Some(t.to_string()),
                    commit_lsn: Some(lsn),
                    operation: what.to_string(),
                },
                format!("the {what} carries no replica identity columns to find the row by"),
                format!(
                    "on the source: give {t} a primary key, or ALTER TABLE {t} REPLICA \
                     IDENTITY FULL; then resync the table"
                ),
            ));
        }
        Ok(())
    }

    async fn update(
        &mut self,
        ti: usize,
        old: Option<&OldTuple>,
        new: &Tuple,
        lsn: Lsn,
    ) -> Result<(), ApplyError> {
        let (kind, ident, all) = match old {
            Some(OldTuple::Full(o)) => (K_UPDATE_ONE, o, true),
            Some(OldTuple::Key(o)) => (K_UPDATE, o, false),
            None => (K_UPDATE, new, false),
        };
        let mut params: Vec<Param> = Vec::with_capacity(new.len() * 2);
        self.key.clear();
        self.key.push(kind);
        for (i, v) in new.values().iter().enumerate() {
            // An ALWAYS identity column cannot be assigned by UPDATE; it is
            // the row's key, which practically never changes.
            let identity = self.tables[ti]
                .cols
                .get(i)
                .is_some_and(|c| c.identity_always);
            if matches!(v, Value::UnchangedToast) || identity {
                self.key.push(0);
            } else {
                self.key.push(1);
                params.push(param(v));
            }
        }
        if params.is_empty() {
            // Nothing but unchanged TOAST values: the row stays as it is.
            return Ok(());
        }
        self.where_codes(ti, ident, all, &mut params, lsn, "update")?;
        let key = std::mem::take(&mut self.key);
        let stmt = self.statement(ti, &key, lsn).await;
        self.key = key;
        self.execute(stmt?, params, Op::Update, ti, lsn, 1).await
    }

    async fn delete(&mut self, ti: usize, old: &OldTuple, lsn: Lsn) -> Result<(), ApplyError> {
        let (kind, all) = match old {
            OldTuple::Full(_) => (K_DELETE_ONE, true),
            OldTuple::Key(_) => (K_DELETE, false),
        };
        let mut params: Vec<Param> = Vec::with_capacity(old.tuple().len());
        self.key.clear();
        self.key.push(kind);
        self.where_codes(ti, old.tuple(), all, &mut params, lsn, "delete")?;
        let key = std::mem::take(&mut self.key);
        let stmt = self.statement(ti, &key, lsn).await;
        self.key = key;
        self.execute(stmt?, params, Op::Delete, ti, lsn, 1).await
    }

    async fn truncate(
        &mut self,
        tables: &[usize],
        options: TruncateOptions,
        lsn: Lsn,
    ) -> Result<(), ApplyError> {
        let mut sql = String::from("TRUNCATE ");
        for (n, &ti) in tables.iter().enumerate() {
            if n > 0 {
                sql.push_str(", ");
            }
            // ONLY like the source's per-table truncate; a partitioned
            // target table cannot be truncated ONLY.
            if !self.tables[ti].partitioned {
                sql.push_str("ONLY ");
            }
            sql.push_str(&self.tables[ti].qualified);
        }
        if options.restart_identity {
            sql.push_str(" RESTART IDENTITY");
        }
        if options.cascade {
            sql.push_str(" CASCADE");
        }
        let names: Vec<&str> = tables.iter().map(|&ti| &*self.tables[ti].display).collect();
        let job = Job {
            op: Op::Truncate,
            table: Some(names.join(", ").into()),
            commit_lsn: Some(lsn),
            bytes: 0,
            rows: 0,
        };
        let c = self.client.clone();
        let fut: PgFuture = Box::pin(async move { c.batch_execute(&sql).await.map(|_| 0) });
        self.pipeline.push(fut, job).await
    }

    async fn flush_inner(&mut self) -> Result<Option<Progress>, ApplyError> {
        if self.current.is_some() {
            self.flush_run().await?;
            self.flush_deferred_all().await?;
            self.pipeline.drain().await?;
            return Ok(None);
        }
        let Some(p) = self.pending else {
            return Ok(None);
        };
        self.flush_run().await?;
        self.flush_deferred_all().await?;
        self.ensure_tx().await?;
        let params = vec![
            Param::Text(Bytes::from(self.options.pipeline.clone())),
            Param::Binary(Bytes::copy_from_slice(&p.commit_lsn.0.to_be_bytes())),
            Param::Binary(Bytes::copy_from_slice(&p.end_lsn.0.to_be_bytes())),
            Param::Binary(Bytes::copy_from_slice(&p.commit_ts.0.to_be_bytes())),
        ];
        let c = self.client.clone();
        let stmt = self.progress_stmt.clone();
        let fut: PgFuture = Box::pin(async move { c.execute_raw(&stmt, params).await });
        let job = |op| Job {
            op,
            table: None,
            commit_lsn: Some(p.commit_lsn),
            bytes: 0,
            rows: 0,
        };
        self.pipeline.push(fut, job(Op::Progress)).await?;
        let c = self.client.clone();
        let fut: PgFuture = Box::pin(async move { c.batch_execute("COMMIT").await.map(|_| 0) });
        self.pipeline.push(fut, job(Op::Commit)).await?;
        self.pipeline.drain().await?;
        self.in_tx = false;
        self.durable = Some(p);
        self.pending = None;
        let target = &self.options.target;
        for (i, op) in ["insert", "update", "delete", "truncate"]
            .iter()
            .enumerate()
        {
            if self.batch_counts[i] > 0 {
                metrics::counter!(
                    "pgrelay_applied_changes_total",
                    "target" => target.clone(),
                    "op" => *op
                )
                .increment(self.batch_counts[i]);
            }
        }
        metrics::counter!("pgrelay_applied_transactions_total", "target" => target.clone())
            .increment(self.batch_counts[4]);
        tracing::debug!(
            target_db = %target,
            lsn = %p.commit_lsn,
            transactions = self.batch_counts[4],
            changes = self.batch_rows,
            "batch committed"
        );
        self.batch_counts = [0; 5];
        self.batch_rows = 0;
        self.batch_bytes = 0;
        self.batch_started = None;
        Ok(Some(p))
    }
}
